"""End-to-end benchmark: MO -> store -> webhook, through ``gatewayd run`` as users run it.

Three processes besides this one, all on the same machine:

- the receiver (``bench/receiver.py``): a raw asyncio HTTP server that answers 200 and
  records each MO's number, send time and arrival time;
- the SMSC: gatewayd's own simulator (``gatewayd.smpp.simulator.Simulator``, the code
  behind ``gatewayd simulate``) driven by ``python bench/bench_pipeline.py simulate``,
  which only adds what a benchmark needs: the send time in each MO's text
  (``TEXT <i> <epoch>``), a start signal on stdin once every bind is up (so CPU is
  counted from the first deliver_sm, not from process start-up) and a JSON summary of
  the acks (``deliver_sm_resp`` times);
- the system under test: ``python -m gatewayd run --config <generated>`` (carrier = the
  simulator, one ``url`` destination = the receiver, ``synchronous: FULL`` store in a
  temporary directory). ``bench/bench_kannel.py`` plugs Kannel in at the same place.

Measured per run: end-to-end MO/s (first deliver_sm sent -> last MO received by the
receiver), deliver_sm_resp/s (first sent -> last acknowledged), p50/p99/max latency
(receiver arrival - simulator send time, per MO), CPU seconds per 1,000 MOs of the system
(``/proc/PID/stat`` utime+stime, from the start signal to the end), peak RSS
(``VmHWM``), exactly-once counts (delivered, duplicated, missing) and the load average.
With ``--runs K`` each scenario runs K times and the summary holds the medians.

    .venv/bin/python bench/bench_pipeline.py --mo 20000 --rates 0,500,1000 --runs 3
    .venv/bin/python bench/bench_pipeline.py --mo 10000 --sessions 2 --window 50 --tag s2
    .venv/bin/python bench/bench_pipeline.py --mo 20000 --rates 0 --profile /tmp/prof

Prints one line per run, one summary line per scenario, and writes
bench/results/pipeline[-TAG].json. Run by hand; never from pytest.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import (
    PYTHON,
    ROOT,
    Proc,
    cpu_seconds,
    first_arrivals,
    gatewayd_config,
    keep_or_remove,
    latency_stats,
    machine,
    ms,
    peak_rss_mb,
    percentile,
    port_of,
    rate_label,
    receiver_destination,
    routes_to,
    save_results,
    serve_until_bound,
    start_gatewayd,
    start_receiver,
)

# --- the systems under test ---------------------------------------------------------------


class System(Protocol):
    name: str

    def start(self, sim_port: int, rx_port: int, workdir: Path, args: argparse.Namespace) -> None:
        """Start it; it must bind to the simulator at ``sim_port`` on its own."""

    def pids(self) -> list[int]: ...

    def stop(self) -> None: ...


class Gatewayd:
    name = "gatewayd"

    def __init__(self) -> None:
        self.proc: Proc | None = None

    def start(self, sim_port: int, rx_port: int, workdir: Path, args: argparse.Namespace) -> None:
        config = gatewayd_config(
            "bench/bench_pipeline.py",
            store=workdir / "gatewayd.db",
            sim_port=sim_port,
            sessions=args.sessions,
            window=args.window,
            destinations=receiver_destination(
                rx_port,
                concurrency=args.concurrency,
                timeout="10s",
                retry="{attempts: 3, interval: 5s}",
            ),
            routes=routes_to("receiver"),
        )
        self.proc = start_gatewayd(
            config, workdir, args.log_level, gatewayd_root=args.gatewayd_root or ROOT
        )

    def pids(self) -> list[int]:
        assert self.proc is not None
        return [self.proc.pid]

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(signal.SIGTERM)


# --- one run ------------------------------------------------------------------------------


def run_once(
    system: System,
    args: argparse.Namespace,
    rate: float,
    *,
    profile: Path | None = None,
) -> dict[str, Any]:
    """One scenario run with fresh processes and a fresh store; returns the measurements."""
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-{system.name}-"))
    load = os.getloadavg()
    rx = start_receiver()
    sim: Proc | None = None
    spy: subprocess.Popen[bytes] | None = None
    try:
        rx_port = port_of(rx.expect("listening on", 10))
        sim_argv = [PYTHON, str(Path(__file__).resolve()), "simulate", "--mo", str(args.mo)]
        sim_argv += ["--window", str(args.window), "--rate", str(rate)]
        sim_argv += ["--sessions", str(args.sessions)]
        sim = Proc(sim_argv, stdin=True, stderr=workdir / "simulator.log", cwd=ROOT)
        sim_port = port_of(sim.expect("listening on", 10))
        system.start(sim_port, rx_port, workdir, args)
        sim.expect("bound", 60)
        time.sleep(0.5)  # let start-up work (recovery, first claims) settle
        pids = system.pids()
        if profile is not None:
            profile.parent.mkdir(parents=True, exist_ok=True)
            spy = subprocess.Popen(
                [
                    str(Path(PYTHON).parent / "py-spy"),
                    "record",
                    "--pid",
                    str(pids[0]),
                    "--rate",
                    "250",
                    "--format",
                    "raw",
                    *(["--gil"] if getattr(args, "profile_gil", False) else []),
                    "--output",
                    str(profile),
                ],
                stdout=subprocess.DEVNULL,
                stderr=(workdir / "py-spy.log").open("wb"),
            )
            time.sleep(1.0)
        cpu0 = sum(cpu_seconds(p) for p in pids)
        harness0 = (cpu_seconds(sim.pid), cpu_seconds(rx.pid))
        sim.send("go")
        # Wait until every MO arrived, or nothing arrived for `stall` seconds.
        last_count, last_change = -1, time.monotonic()
        done: dict[str, Any] | None = None
        while True:
            time.sleep(0.2)
            if done is None:
                with contextlib.suppress(queue.Empty):
                    done = json.loads(sim.lines.get_nowait().partition(" ")[2])
            rx.send("count")
            count = int(rx.expect("ok count", 10).split()[2])
            if count != last_count:
                last_count, last_change = count, time.monotonic()
            if count >= args.mo and done is not None:
                break
            if time.monotonic() - last_change > args.stall:
                break
        time.sleep(0.3)  # the last attempts get recorded in the store
        cpu1 = sum(cpu_seconds(p) for p in pids)
        harness1 = (cpu_seconds(sim.pid), cpu_seconds(rx.pid))
        rss = [peak_rss_mb(p) for p in pids]
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(30)
        if done is None:
            done = json.loads(sim.expect("done", 30).partition(" ")[2])
        dump = workdir / "arrivals.json"
        rx.send(f"dump {dump}")
        rx.expect("ok dump", 30)
        received = json.loads(dump.read_text())
    finally:
        system.stop()
        if sim is not None:
            sim.stop(signal.SIGTERM)
        rx.stop(signal.SIGTERM)
    first, total = first_arrivals(received["arrivals"], args.mo)
    delivered = len(first)
    latencies = [(arrived - sent) * 1000.0 for sent, arrived in first.values()]
    t_first = done["first_sent"]
    # At a fixed rate MO i is due at t_first + (i-1)/rate; when the window is full it is
    # sent later. Latency from the schedule counts that wait (no coordinated omission).
    scheduled = (
        [(a - (t_first + (i - 1) / rate)) * 1000.0 for i, (_, a) in first.items()]
        if rate
        else latencies
    )
    t_last_rx = max((a for _, a in first.values()), default=t_first)
    cpu = cpu1 - cpu0
    result = {
        "system": system.name,
        "mo": args.mo,
        "window": args.window,
        "sessions": args.sessions,
        "rate_offered": rate,
        "mo_per_s": delivered / (t_last_rx - t_first) if t_last_rx > t_first else 0.0,
        "resp_per_s": done["acked"] / (done["last_ack"] - t_first)
        if done["last_ack"] > t_first
        else 0.0,
        "latency_ms": latency_stats(latencies),
        "latency_from_schedule_ms": latency_stats(scheduled),
        "ack_latency_ms": done["ack_latency_ms"],
        "cpu_s_per_1000": cpu / delivered * 1000.0 if delivered else None,
        "cpu_s": cpu,
        "harness_cpu_s_per_1000": {
            "simulator": (harness1[0] - harness0[0]) / args.mo * 1000.0,
            "receiver": (harness1[1] - harness0[1]) / args.mo * 1000.0,
        },
        "peak_rss_mb": rss,
        "delivered": delivered,
        "duplicated": total - delivered,
        "missing": args.mo - delivered,
        "acked": done["acked"],
        "other_requests": received["other"],
        "loadavg_before": [round(x, 2) for x in load],
    }
    keep_or_remove(result, workdir, args.keep)
    return result


def fmt(r: dict[str, Any]) -> str:
    lat = r["latency_ms"]
    sched = r.get("latency_from_schedule_ms", lat)
    rss = "+".join(f"{x:.0f}" for x in r["peak_rss_mb"])
    rate = rate_label(r["rate_offered"])
    return (
        f"{r['system']:9s} rate={rate:7s} N={r['mo']} W={r['window']} S={r['sessions']}: "
        f"{r['mo_per_s']:7.0f} MO/s e2e, {r['resp_per_s']:7.0f} resp/s, "
        f"p50 {ms(lat['p50'])} ms p99 {ms(lat['p99'])} ms (sched p99 {ms(sched['p99'])}), "
        f"CPU {r['cpu_s_per_1000']:.3f} s/1000 MO, RSS {rss} MB, "
        f"delivered {r['delivered']} dup {r['duplicated']} missing {r['missing']}, "
        f"load {r['loadavg_before'][0]}"
    )


def median_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The medians of a scenario's runs (each metric on its own)."""

    def med(get: Callable[[dict[str, Any]], Any]) -> Any:
        values = [get(r) for r in rows if get(r) is not None]
        return statistics.median(values) if values else None

    out = dict(rows[0])
    for key in ("mo_per_s", "resp_per_s", "cpu_s_per_1000", "cpu_s", "delivered", "acked"):
        out[key] = med(lambda r, k=key: r[k])  # type: ignore[misc]
    out["duplicated"] = max(r["duplicated"] for r in rows)
    out["missing"] = max(r["missing"] for r in rows)
    for name in ("latency_ms", "latency_from_schedule_ms"):
        out[name] = {
            k: med(lambda r, k=k, n=name: r[n][k])  # type: ignore[misc]
            for k in ("p50", "p99", "max")
        }
    out["peak_rss_mb"] = [
        med(lambda r, i=i: r["peak_rss_mb"][i])  # type: ignore[misc]
        for i in range(len(rows[0]["peak_rss_mb"]))
    ]
    out["loadavg_before"] = [med(lambda r, i=i: r["loadavg_before"][i]) for i in range(3)]  # type: ignore[misc]
    out["runs"] = len(rows)
    out.pop("workdir", None)
    return out


def common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mo", type=int, default=20000, help="MOs per run (N)")
    parser.add_argument("--window", type=int, default=10, help="SMPP window per session (W)")
    parser.add_argument("--sessions", type=int, default=1, help="binds to the simulator")
    parser.add_argument(
        "--rates",
        default="0,500,1000",
        help="offered MO/s, comma-separated; 0: as fast as W allows",
    )
    parser.add_argument("--runs", type=int, default=3, help="runs per scenario (medians)")
    parser.add_argument("--stall", type=float, default=15.0, help="give up after s of no progress")
    parser.add_argument("--tag", default="", help="results file suffix")
    parser.add_argument("--keep", action="store_true", help="keep the work directories")
    parser.add_argument(
        "--gatewayd-root", default=None, help="run gatewayd from this tree (a patched copy)"
    )


# --- the simulator side (a subprocess: `bench_pipeline.py simulate`) ------------------------


def simulate_main(argv: Sequence[str]) -> int:
    """gatewayd's simulator, plus send times in the texts, a start signal and a summary."""
    parser = argparse.ArgumentParser(prog="bench_pipeline.py simulate")
    parser.add_argument("--mo", type=int, required=True)
    parser.add_argument("--window", type=int, default=10)
    parser.add_argument("--rate", type=float, default=0.0)
    parser.add_argument("--sessions", type=int, default=1)
    args = parser.parse_args(argv)

    import trio

    from bench.harness import send_mos
    from gatewayd.smpp.simulator import Simulator, SimulatorSettings

    async def main() -> None:
        # mo=0: the simulator does not start on its own; send_mos sends instead, with the
        # same pacing and windowing as Simulator._send_mos (W per bind).
        sim = Simulator(
            SimulatorSettings(host="127.0.0.1", port=0, mo=0, window=args.window, dlr=False)
        )
        async with trio.open_nursery() as nursery:
            await serve_until_bound(sim, nursery, args.sessions)
            await trio.to_thread.run_sync(sys.stdin.readline)
            acks: list[tuple[float, float]] = []
            summary = await send_mos(sim, args.mo, window=args.window, rate=args.rate, acks=acks)
            ack_ms = [(a - s) * 1000.0 for s, a in acks]
            summary["ack_latency_ms"] = {
                "p50": percentile(ack_ms, 0.5),
                "p99": percentile(ack_ms, 0.99),
            }
            print("done " + json.dumps(summary), flush=True)
            await trio.sleep_forever()

    with contextlib.suppress(KeyboardInterrupt):
        trio.run(main)
    return 0


# --- main ---------------------------------------------------------------------------------


def run_matrix(
    systems: Sequence[System], args: argparse.Namespace, profile: Path | None = None
) -> dict[str, list[dict[str, Any]]]:
    """Every rate x run, the systems interleaved within each run (same load for both)."""
    rows: dict[str, list[dict[str, Any]]] = {}
    rates = [float(x) for x in args.rates.split(",")]
    for rate in rates:
        for run in range(args.runs):
            for system in systems:
                prof = None
                if profile is not None and run == 0:
                    prof = profile.with_name(f"{profile.name}-{system.name}-{rate:g}.txt")
                r = run_once(system, args, rate, profile=prof)
                r["run"] = run + 1
                print("  " + fmt(r), flush=True)
                rows.setdefault(f"{system.name}@{rate:g}", []).append(r)
    return rows


def summarize(rows: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Each scenario's medians (``median_row``), printed one line each."""
    summary = {key: median_row(runs) for key, runs in rows.items()}
    print("summary (medians):")
    for row in summary.values():
        print("  " + fmt(row))
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["simulate"]:
        return simulate_main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common_args(parser)
    parser.add_argument("--concurrency", type=int, default=8, help="url destination concurrency")
    parser.add_argument("--log-level", default="INFO", help="gatewayd's --log-level")
    parser.add_argument("--profile", type=Path, default=None, help="py-spy raw output prefix")
    parser.add_argument("--profile-gil", action="store_true", help="py-spy: GIL holders only")
    args = parser.parse_args(argv)
    rows = run_matrix([Gatewayd()], args, args.profile)
    summary = summarize(rows)
    save_results(
        "pipeline",
        args.tag,
        {
            "args": vars(args) | {"profile": str(args.profile)},
            "machine": machine(),
            "summary": summary,
            "runs": rows,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
