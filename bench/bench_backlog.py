"""Memory under backlog, and the drain: gatewayd on a big store with a destination down.

1. **fill** (a process of its own, ``bench_backlog.py fill``): writes ``--events`` MO
   events through gatewayd's own code, so the rows are what the daemon writes: each is a
   ``deliver_sm`` PDU (the simulator's fields) decoded by ``decode_deliver`` with its
   ``dedup_key``, persisted by ``SqliteStore.persist`` (group commit, many concurrent
   writers). The first ``events - backlog`` are history: their job is handed over in
   memory (written ``inflight``, as the dispatcher's hand-off does) and then recorded
   delivered by ``record_attempts`` (one attempt row each), like a delivered MO. The last
   ``--backlog`` have one job each, ``queued``, for the destination ``receiver``.
   ``synchronous = OFF`` while filling (a connection setting: the rows are the same).
2. **down**: ``gatewayd run`` on that store; ``receiver`` is a ``url`` destination on a
   port nothing listens on (connection refused), ``retry: {attempts: 1000, interval:
   --retry-interval}`` so nothing is dead-lettered. For ``--idle`` seconds: VmRSS
   (sampled every 0.5 s), VmHWM, CPU, and the attempts made (read from the store).
3. **drain**: the receiver (``bench/receiver.py``) starts on that port. Jobs delivered
   per second (distinct backlog MOs received / time from the receiver's start to the
   last arrival; and the steady rate between the 10% and 90% arrivals), RSS and CPU
   per job during the drain, exactly-once counts.

Jobs that failed while the destination was down wait for their next retry
(``next_at``): the drain can only be as fast as they fall due. With a short
``--retry-interval`` they are all due by the time the receiver is up.

    .venv/bin/python bench/bench_backlog.py --events 200000 --backlog 20000
    .venv/bin/python bench/bench_backlog.py --events 1000000 --backlog 100000 --tag 1m

Prints one summary line; writes bench/results/backlog[-TAG].json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import signal
import sqlite3
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import (
    PYTHON,
    ROOT,
    Proc,
    cpu_seconds,
    free_port,
    gatewayd_config,
    machine,
    port_of,
    receiver_destination,
    routes_to,
    save_results,
    start_gatewayd,
    start_receiver,
    start_smsc,
)

DESTINATION = "receiver"

# --- fill (a subprocess: `bench_backlog.py fill`) -----------------------------------------


def fill_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench_backlog.py fill")
    parser.add_argument("--store", required=True)
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--backlog", type=int, required=True)
    parser.add_argument("--writers", type=int, default=2000, help="concurrent persists")
    args = parser.parse_args(argv)

    import trio

    from gatewayd.destinations.base import AttemptResult, Outcome
    from gatewayd.events import MoMessage
    from gatewayd.smpp import pdu as P
    from gatewayd.smpp.receive import ReceiveOptions, decode_deliver, dedup_key
    from gatewayd.store import ClaimedJob, JobState, PersistItem, RecordItem, SqliteStore

    store = SqliteStore(args.store, synchronous="OFF")
    options = ReceiveOptions()
    history = args.events - args.backlog
    delivered = AttemptResult(
        outcome=Outcome.DELIVERED,
        target=f"http://127.0.0.1/{DESTINATION}",
        status_code=200,
        latency_ms=1.0,
        response_excerpt="ok",
    )

    class Taker:
        """The dispatcher's hand-off, reduced to collecting the job ids."""

        def __init__(self) -> None:
            self.jobs: list[int] = []

        def reserve(self, destination: str) -> object | None:
            return object()

        def accept(self, token: object, job: ClaimedJob) -> None:
            self.jobs.append(job.job.id)

        def cancel(self, token: object) -> None:
            return None

    taker = Taker()

    def item(i: int) -> PersistItem:
        sent = time.time()
        pdu = P.make(
            "deliver_sm",
            sequence=i % 0x7FFFFFFF + 1,
            service_type="",
            source_addr_ton=1,
            source_addr_npi=1,
            source_addr="447700900001",
            dest_addr_ton=1,
            dest_addr_npi=1,
            destination_addr="447700900123",
            esm_class=0,
            data_coding=0,
            short_message=f"TEXT {i} {sent:.6f}".encode("latin-1"),
        )
        event = decode_deliver(
            pdu, carrier="sim", received_at=dt.datetime.fromtimestamp(sent, dt.UTC), options=options
        )
        assert isinstance(event, MoMessage)  # one short, whole MO
        return PersistItem(
            event=event, destinations=(DESTINATION,), dedup_key=dedup_key(pdu, "sim")
        )

    async def record(ids: list[int]) -> None:
        for k in range(0, len(ids), 4000):
            await store.record_attempts(
                [
                    RecordItem(
                        job_id=j, result=delivered, next_at=None, final_state=JobState.DELIVERED
                    )
                    for j in ids[k : k + 4000]
                ]
            )

    async def persist_range(lo: int, hi: int) -> None:
        numbers = iter(range(lo, hi))

        async def writer() -> None:
            for i in numbers:
                await store.persist(item(i))

        async with trio.open_nursery() as nursery:
            for _ in range(args.writers):
                nursery.start_soon(writer)

    async def main() -> None:
        t0 = time.monotonic()
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run)
            store.set_job_taker(taker)
            chunk = 50_000
            # History: backlog numbers come after it (1 .. backlog are the backlog MOs).
            for lo in range(args.backlog + 1, args.events + 1, chunk):
                hi = min(lo + chunk, args.events + 1)
                await persist_range(lo, hi)
                ids, taker.jobs = taker.jobs, []
                await record(ids)
                print(f"history {hi - 1 - args.backlog}/{history}", file=sys.stderr, flush=True)
            store.set_job_taker(None)
            await persist_range(1, args.backlog + 1)
            nursery.cancel_scope.cancel()
        store.close()
        print(
            "done " + json.dumps({"seconds": time.monotonic() - t0, "events": args.events}),
            flush=True,
        )

    trio.run(main)
    return 0


# --- /proc ----------------------------------------------------------------------------------


def rss_mb(pid: int) -> dict[str, float]:
    out: dict[str, float] = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line[:5]] = int(line.split()[1]) / 1024.0
    return out


def job_counts(store: Path) -> dict[str, int]:
    conn = sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=10)
    try:
        rows = conn.execute(
            "SELECT state, count(*) FROM jobs WHERE destination = ? AND state != 'delivered'"
            " GROUP BY state",
            (DESTINATION,),
        ).fetchall()
        retries = conn.execute(
            "SELECT count(*) FROM attempts WHERE destination = ? AND outcome != 'delivered'",
            (DESTINATION,),
        ).fetchone()[0]
    finally:
        conn.close()
    return {str(state): int(count) for state, count in rows} | {"failed_attempts": int(retries)}


# --- main -----------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["fill"]:
        return fill_main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=200_000, help="events in the store")
    parser.add_argument("--backlog", type=int, default=20_000, help="of which jobs queued")
    parser.add_argument("--concurrency", type=int, default=32, help="the url destination's")
    parser.add_argument("--retry-interval", type=float, default=5.0, help="seconds (fixed)")
    parser.add_argument("--idle", type=float, default=30.0, help="s with the destination down")
    parser.add_argument("--stall", type=float, default=30.0, help="give up after s idle")
    parser.add_argument("--store", default=None, help="reuse (a copy of) this filled store")
    parser.add_argument("--log-level", default="WARNING", help="gatewayd's --log-level")
    parser.add_argument("--tag", default="")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="bench-backlog-"))
    store = workdir / "gatewayd.db"
    result: dict[str, Any] = {"events": args.events, "backlog": args.backlog}
    if args.store:
        shutil.copy(args.store, store)
        result["fill_seconds"] = None
    else:
        t0 = time.monotonic()
        filler = Proc(
            [
                *(PYTHON, str(Path(__file__).resolve()), "fill", "--store", str(store)),
                *("--events", str(args.events), "--backlog", str(args.backlog)),
            ],
            stderr=workdir / "fill.log",
            cwd=ROOT,
        )
        filler.expect("done", 3600)
        filler.stop()
        result["fill_seconds"] = time.monotonic() - t0
    result["store_mb"] = sum(p.stat().st_size for p in workdir.glob("gatewayd.db*")) / 2**20
    print(f"filled: {result['fill_seconds']} s, {result['store_mb']:.0f} MB", flush=True)

    rx_port = free_port()  # nothing listens there yet: connection refused
    smsc = start_smsc(["--no-dlr"])
    gw: Proc | None = None
    rx: Proc | None = None
    try:
        sim_port = port_of(smsc.expect("listening on", 10))
        config = gatewayd_config(
            "bench/bench_backlog.py",
            store=store,
            sim_port=sim_port,
            window=10,
            destinations=receiver_destination(
                rx_port,
                concurrency=args.concurrency,
                timeout="10s",
                retry=f"{{attempts: 1000, interval: {args.retry_interval}s}}",
            ),
            routes=routes_to(DESTINATION),
        )
        started = time.monotonic()
        gw = start_gatewayd(config, workdir, args.log_level)
        smsc.expect("bound", 120)
        result["bound_after_s"] = time.monotonic() - started
        # --- down
        samples: list[float] = []
        cpu0 = cpu_seconds(gw.pid)
        end = time.monotonic() + args.idle
        while time.monotonic() < end:
            samples.append(rss_mb(gw.pid)["VmRSS"])
            time.sleep(0.5)
        down = rss_mb(gw.pid)
        result["down"] = {
            "seconds": args.idle,
            "vmrss_max_mb": max(samples),
            "vmrss_end_mb": down["VmRSS"],
            "vmhwm_mb": down["VmHWM"],
            "cpu_s": cpu_seconds(gw.pid) - cpu0,
            "jobs": job_counts(store),
        }
        # --- drain
        cpu0 = cpu_seconds(gw.pid)
        rx_start = time.time()
        rx = start_receiver("--port", str(rx_port))
        rx.expect("listening on", 10)
        samples = []
        last_count, last_change = -1, time.monotonic()
        while True:
            time.sleep(0.5)
            samples.append(rss_mb(gw.pid)["VmRSS"])
            rx.send("count")
            count = int(rx.expect("ok count", 10).split()[2])
            if count != last_count:
                last_count, last_change = count, time.monotonic()
            if count >= args.backlog or time.monotonic() - last_change > args.stall:
                break
        time.sleep(0.5)
        cpu = cpu_seconds(gw.pid) - cpu0
        after = rss_mb(gw.pid)
        dump = workdir / "arrivals.json"
        rx.send(f"dump {dump}")
        rx.expect("ok dump", 30)
        arrivals = json.loads(dump.read_text())["arrivals"]
        jobs_after = job_counts(store)
    finally:
        for proc in (gw, smsc, rx):
            if proc is not None:
                proc.stop(signal.SIGTERM)
    first: dict[int, float] = {}
    for i, _sent, arrived in arrivals:
        if 1 <= i <= args.backlog and (i not in first or arrived < first[i]):
            first[i] = arrived
    times = sorted(first.values())
    delivered = len(times)
    t_last = times[-1] if times else rx_start
    lo, hi = (times[len(times) // 10], times[len(times) * 9 // 10]) if len(times) >= 10 else (0, 0)
    result["drain"] = {
        "delivered": delivered,
        "duplicated": len(arrivals) - delivered,
        "missing": args.backlog - delivered,
        "seconds": t_last - rx_start,
        "jobs_per_s": delivered / (t_last - rx_start) if t_last > rx_start else 0.0,
        "steady_jobs_per_s": (len(times) * 8 // 10) / (hi - lo) if hi > lo else None,
        "vmrss_max_mb": max(samples, default=0.0),
        "vmhwm_mb": after["VmHWM"],
        "cpu_ms_per_job": cpu / delivered * 1000.0 if delivered else None,
        "jobs_after": jobs_after,
    }
    result["args"] = vars(args)
    result["machine"] = machine()
    d, dn = result["drain"], result["down"]
    print(
        f"backlog events={args.events} backlog={args.backlog} C={args.concurrency} "
        f"retry={args.retry_interval:g}s: fill {result['fill_seconds'] or 0:.0f} s "
        f"({result['store_mb']:.0f} MB), bound after {result['bound_after_s']:.1f} s; "
        f"down {args.idle:g} s: RSS max {dn['vmrss_max_mb']:.0f} MB HWM {dn['vmhwm_mb']:.0f} MB, "
        f"{dn['jobs'].get('failed_attempts', 0)} refused attempts, CPU {dn['cpu_s']:.1f} s; "
        f"drain: {d['jobs_per_s']:.0f} jobs/s ({d['steady_jobs_per_s'] or 0:.0f} steady), "
        f"{d['seconds']:.1f} s, RSS max {d['vmrss_max_mb']:.0f} MB HWM {d['vmhwm_mb']:.0f} MB, "
        f"CPU {d['cpu_ms_per_job'] or 0:.3f} ms/job, delivered {d['delivered']} "
        f"dup {d['duplicated']} missing {d['missing']}"
    )
    save_results("backlog", args.tag, result)
    if args.keep:
        print(f"kept {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
