"""Command line: argv -> command. The only place that configures logging."""

from __future__ import annotations

import argparse
import gc
import sys
from collections.abc import Sequence
from typing import Literal

import trio

from gatewayd import logs

DEFAULT_CONFIG = "/etc/gatewayd/gatewayd.yaml"


def _duration(text: str) -> float:
    """config.parse_duration as an argparse type."""
    from gatewayd.config import parse_duration

    try:
        return parse_duration(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a duration: {text!r} (e.g. 500ms, 30s, 5m)"
        ) from None


def parseargs(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse ``argv`` (without the program name); testable without a subprocess."""
    common = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    common.add_argument(
        "--log-format",
        choices=["json", "text"],
        default=None,
        help="json lines (default when stderr is not a terminal) or text for humans",
    )
    common.add_argument("--log-level", default="INFO")
    parser = argparse.ArgumentParser(
        prog="gatewayd", description="SMPP routing daemon", allow_abbrev=False
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, parents=[common], allow_abbrev=False)

    sim = command("simulate", "run the built-in SMSC simulator")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=2775, help="0 picks a free port")
    sim.add_argument("--system-id", default="gatewayd-sim")
    sim.add_argument("--password", default=None, help="accept binds only with this password")
    sim.add_argument("--mo", type=int, default=0, help="MOs to send at the first receiver bind")
    sim.add_argument("--from", dest="mo_from", default="447700900001")
    sim.add_argument("--to", dest="mo_to", default="12345")
    sim.add_argument("--text", default="TEXT", help="MO texts are 'TEXT 1'..'TEXT N'")
    sim.add_argument("--data-coding", type=int, default=0)
    sim.add_argument("--window", type=int, default=10)
    sim.add_argument("--rate", type=float, default=0.0, help="MOs per second (0: unlimited)")
    sim.add_argument("--dlr-status", default="DELIVRD")
    sim.add_argument("--dlr-delay", type=_duration, default=1.0)
    sim.add_argument("--resend-delay", type=_duration, default=5.0)
    sim.add_argument("--log", default=None, help="JSON lines of what it received ('-': stdout)")

    dec = command("decode", "decode hex PDUs (arguments or stdin) to JSON events")
    dec.add_argument("hex", nargs="*", help="PDUs in hex; lines from stdin if none")

    chk = command("check", "validate a config file")
    chk.add_argument("--config", default=DEFAULT_CONFIG)

    run = command("run", "run the daemon in the foreground (systemd Type=notify)")
    run.add_argument("--config", default=DEFAULT_CONFIG)
    run.add_argument(
        "--log-text",
        action="store_true",
        help="with --log-level DEBUG, log message text (never logged otherwise)",
    )

    from gatewayd import history

    history.add_commands(command, DEFAULT_CONFIG)

    probe = command("test-destination", "send a sample MO or receipt to a destination; show both")
    probe.add_argument("name", metavar="NAME", help="a destination in the config")
    probe.add_argument("--dlr", action="store_true", help="a sample receipt instead of an MO")
    probe.add_argument("--config", default=DEFAULT_CONFIG)
    probe.add_argument("--json", action="store_true", help="one JSON object instead of text")

    command("demo", "run the simulator, a webhook receiver and the daemon; show what arrives")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parseargs(argv)
    fmt: Literal["json", "text"] = args.log_format or ("text" if sys.stderr.isatty() else "json")
    logs.configure(fmt, args.log_level)
    try:
        if args.command == "simulate":
            return _simulate(args)
        if args.command == "decode":
            from gatewayd import decode

            return decode.main(args.hex, sys.stdin, sys.stdout)
        if args.command == "check":
            from gatewayd import config

            return config.check_main(args.config, sys.stdout)
        if args.command == "run":
            return _run(args)
        if args.command in ("history", "replay"):
            from gatewayd import history

            return history.main(args, sys.stdout)
        if args.command == "test-destination":
            from gatewayd import probe

            return probe.main(args)
        if args.command == "demo":
            from gatewayd.demo import run_demo

            if args.log_level == "INFO":  # the demo prints its own story; logs only if asked
                logs.configure(fmt, "WARNING")
            return trio.run(run_demo, sys.stdout)
    except KeyboardInterrupt:
        return 130
    print(f"gatewayd {args.command}: not implemented", file=sys.stderr)
    return 2


def _simulate(args: argparse.Namespace) -> int:
    from gatewayd.smpp.simulator import SimulatorSettings, run_simulator

    settings = SimulatorSettings(
        host=args.host,
        port=args.port,
        system_id=args.system_id,
        password=args.password,
        mo=args.mo,
        mo_from=args.mo_from,
        mo_to=args.mo_to,
        text=args.text,
        data_coding=args.data_coding,
        window=args.window,
        rate=args.rate,
        dlr_status=args.dlr_status,
        dlr_delay=args.dlr_delay,
        resend_delay=args.resend_delay,
    )
    if args.log == "-":
        trio.run(run_simulator, settings, sys.stdout, sys.stdout)
    elif args.log:
        with open(args.log, "a", encoding="utf-8") as log_file:
            trio.run(run_simulator, settings, sys.stdout, log_file)
    else:
        trio.run(run_simulator, settings, sys.stdout, None)
    return 0


def _run(args: argparse.Namespace) -> int:
    from gatewayd.config import ConfigError, load_config
    from gatewayd.store import StoreError

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    try:
        trio.run(_serve, config, args.log_text and args.log_level.upper() == "DEBUG")
    except StoreError as exc:
        print(f"gatewayd: {exc}", file=sys.stderr)
        return 1
    return 0


def _tune_gc() -> None:
    """Fewer, cheaper garbage collections for a long-running daemon.

    Everything built at start-up (modules, config, routing tables) moves to the permanent
    generation, so no full collection walks it again; the first generation is collected
    every 50,000 net allocations instead of 700: the hot path makes short-lived objects
    that reference counting frees, and collecting them every few hundred MOs cost about
    9% of the CPU per MO (bench_pipeline.py A/B, --gatewayd-root).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)


async def _serve(config: object, log_text: bool = False) -> None:
    import signal

    from gatewayd.app import Daemon
    from gatewayd.config import Config
    from gatewayd.sdnotify import Notifier

    assert isinstance(config, Config)
    daemon = Daemon(config)
    daemon.log_text = log_text
    _tune_gc()
    notifier = Notifier()  # systemd Type=notify; does nothing without NOTIFY_SOCKET
    async with trio.open_nursery() as nursery:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:

            async def reload() -> None:
                notifier.reloading()
                ok = await daemon.reload_from_file()
                notifier.ready("running" if ok else "reload failed: old configuration kept")

            async def on_signals() -> None:
                async for signum in signals:
                    if signum == signal.SIGHUP:
                        nursery.start_soon(reload)  # SIGTERM must not wait for a reload
                        continue
                    notifier.stopping()
                    daemon.stop()

            nursery.start_soon(on_signals)
            await nursery.start(daemon.run)
            notifier.ready("running")
            nursery.start_soon(notifier.watchdog_loop)
            await daemon.stopped.wait()
            nursery.cancel_scope.cancel()
    notifier.close()
