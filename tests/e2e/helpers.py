"""Whole-daemon test harness: the simulator, a real webhook receiver, a real store."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import attrs
import trio

from gatewayd.app import Daemon
from gatewayd.config import Config, loads_config
from gatewayd.smpp.simulator import Simulator, SimulatorSettings
from gatewayd.store import SqliteStore
from gatewayd.webhook_receiver import WebhookReceiver, open_webhook_receiver

JWT_SECRET = "e2e-secret-0123456789abcdef0123456789"


@attrs.define
class Harness:
    sim: Simulator
    rx: WebhookReceiver
    daemon: Daemon
    config: Config
    store: SqliteStore


def config_text(sim_port: int, rx_url: str, extra: str = "") -> str:
    return (
        textwrap.dedent(
            f"""\
        store: ./gw.db
        carriers:
          sim:
            host: 127.0.0.1
            port: {sim_port}
            system_id: gw
            password: pw
            window: 10
            enquire_link: 30s
        destinations:
          crm:
            type: url
            url: {rx_url}/crm
            auth: {{jwt: {{secret: {JWT_SECRET}}}}}
            retry: {{attempts: 3, interval: 10s}}
          status:
            type: url
            url: {rx_url}/status?id={{{{message_id}}}}&status={{{{status}}}}
            method: GET
          legacy:
            type: url
            url: {rx_url}/legacy.php?msg={{{{text}}}}
            format: form
            body: {{to: "{{{{to}}}}", from: "{{{{from}}}}", msg: "{{{{text}}}}", uid: "{{{{id}}}}"}}
          getter:
            type: url
            url: {rx_url}/get
            method: GET
          drop:
            type: none
        numbers:
          "12345":
            incoming: crm
            delivery: status
            keywords:
              STOP: [crm, legacy]
              INFO: getter
        routes:
          a2p: crm
          p2p: drop
          delivery: status
        """
        )
        # the admin API on any free port, unless the test configures it itself
        + (extra if "api:" in extra else 'api: {listen: "127.0.0.1:0"}\n' + extra)
    )


@contextlib.asynccontextmanager
async def running(
    tmp_path: Path,
    *,
    sim_settings: SimulatorSettings | None = None,
    extra: str = "",
    text: Callable[[int, str], str] | None = None,
) -> AsyncIterator[Harness]:
    """Simulator + receiver + daemon (inline store writes: deterministic under autojump).

    ``text(sim_port, receiver_url)`` replaces the whole config text; the admin API is put
    on a free port either way.
    """
    sim = Simulator(sim_settings or SimulatorSettings(port=0, password="pw", resend_delay=5.0))
    async with open_webhook_receiver() as rx, trio.open_nursery() as nursery:
        port = await nursery.start(sim.serve)
        source = text(port, rx.url) if text is not None else config_text(port, rx.url, extra)
        config = loads_config(source, base_dir=tmp_path)
        config = attrs.evolve(config, api=attrs.evolve(config.api, port=0))
        base = time.time()

        def wall() -> float:  # wall time that follows trio's (autojump) clock
            return base + trio.current_time()

        store = SqliteStore(
            config.store, dedup_window=config.dedup_window, use_thread=False, wall_clock=wall
        )
        daemon = Daemon(config, store=store, wall_clock=wall)
        await nursery.start(daemon.run)
        try:
            yield Harness(sim=sim, rx=rx, daemon=daemon, config=config, store=store)
        finally:
            daemon.stop()
            with trio.move_on_after(60):
                await daemon.stopped.wait()
            nursery.cancel_scope.cancel()


def mo_fields(
    text: bytes, *, source: str = "447700900001", to: str = "12345", dc: int = 0, esm: int = 0
) -> dict[str, int | bytes | str]:
    return {
        "source_addr_ton": 1,
        "source_addr_npi": 1,
        "source_addr": source,
        "dest_addr_ton": 0,
        "dest_addr_npi": 1,
        "destination_addr": to,
        "esm_class": esm,
        "data_coding": dc,
        "short_message": text,
    }


def free_port() -> int:
    """A free loopback port, for a subprocess's listener."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def start_daemon(
    config: Path, *, stderr: Path | None = None, env: dict[str, str] | None = None
) -> trio.Process:
    """``python -m gatewayd run --config CONFIG`` as a real process."""
    with contextlib.ExitStack() as stack:
        err = subprocess.DEVNULL if stderr is None else stack.enter_context(stderr.open("ab"))
        return await trio.lowlevel.open_process(
            [sys.executable, "-m", "gatewayd", "run", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=env,
        )
