"""Store throughput: rows/s through ``SqliteStore.persist`` with group commit.

N concurrent waiters (like N SMPP windows' worth of deliver_sm) each persist an MO with
one delivery job and wait for the commit, as the SMPP driver does before it answers
``deliver_sm_resp``. Reports rows/s, p50/p99/max persist latency, commits, and the
longest event-loop stall seen by a 1 ms ticker, for the commit in a worker thread and
inline. Prints one summary line per mode and writes JSON to bench/results/store.json.

With ``--dispatch`` the store's whole share of an MO is measured instead: persist, the
hand-off to a :class:`~gatewayd.dispatch.Dispatcher` lane, an attempt at a destination
that answers at once (``DELIVERED``), the recorded attempt and the metrics hook; the CPU
per MO is counted until every attempt is recorded (no HTTP, no SMPP).

    .venv/bin/python bench/bench_store.py [--rows 40000] [--waiters 200] [--mode both]
    .venv/bin/python bench/bench_store.py --rows 10000 --rate 1000   # fixed offered rate
    .venv/bin/python bench/bench_store.py --rows 10000 --dispatch --mode inline
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from gatewayd.config import RetryPolicy
from gatewayd.destinations.base import AttemptResult, Job, Outcome
from gatewayd.dispatch import Dispatcher
from gatewayd.events import Address, Event, MessageClass, MoMessage, new_event_id
from gatewayd.metrics import Metrics
from gatewayd.store import PersistItem, SqliteStore, Synchronous


class InstantDestination:
    """Answers every attempt at once, like a receiver with zero latency."""

    name = "crm"

    def __init__(self) -> None:
        self.delivered = 0

    async def deliver(self, event: Event, job: Job) -> AttemptResult:
        await trio.lowlevel.checkpoint()
        self.delivered += 1
        return AttemptResult(outcome=Outcome.DELIVERED, target="http://bench", status_code=200)

    async def aclose(self) -> None:
        return


class _BenchDaemon:
    """What :class:`Metrics` reads from a daemon here: the store and the wall clock."""

    def __init__(self, store: SqliteStore) -> None:
        self.store = store
        self.wall_clock = time.time


def make_items(n: int) -> list[PersistItem]:
    now = dt.datetime.now(dt.UTC)
    return [
        PersistItem(
            event=MoMessage(
                id=new_event_id(),
                carrier="acme",
                source=Address(addr=f"4915{i:09d}", ton=1, npi=1),
                destination=Address(addr="12345678"),
                text=f"benchmark message number {i}",
                raw=f"benchmark message number {i}".encode(),
                data_coding=0,
                message_class=MessageClass.A2P,
                received_at=now,
            ),
            destinations=("crm",),
            dedup_key=f"acme:{i}",
        )
        for i in range(n)
    ]


async def run_one(
    path: Path,
    items: list[PersistItem],
    waiters: int,
    use_thread: bool,
    sync: Synchronous,
    rate: float = 0.0,
    dispatch: bool = False,
    concurrency: int = 8,
) -> dict[str, Any]:
    store = SqliteStore(path, synchronous=sync, use_thread=use_thread)
    dest = InstantDestination()
    recorded = 0
    all_recorded = trio.Event()
    metrics = Metrics(_BenchDaemon(store))  # type: ignore[arg-type]

    def on_attempt(*args: Any) -> None:
        nonlocal recorded
        metrics.attempt_recorded(*args)
        recorded += 1
        if recorded == len(items):
            all_recorded.set()

    dispatcher = Dispatcher(
        store,
        {"crm": (dest, RetryPolicy(), concurrency)},
        poll_interval=1.0,
        on_attempt=on_attempt,
    )
    latencies: list[float] = []
    stalls: list[float] = []
    it = iter(items)

    async def waiter() -> None:
        for entry in it:
            t0 = time.perf_counter()
            await store.persist(entry)
            latencies.append(time.perf_counter() - t0)

    async def one(entry: PersistItem) -> None:
        t0 = time.perf_counter()
        await store.persist(entry)
        latencies.append(time.perf_counter() - t0)

    async def offered() -> None:
        # A fixed offered rate: one persist every 1/rate s, each in its own task.
        async with trio.open_nursery() as tasks:
            start = trio.current_time()
            for i, entry in enumerate(items):
                await trio.sleep_until(start + i / rate)
                tasks.start_soon(one, entry)

    async def ticker() -> None:
        while True:
            t0 = time.perf_counter()
            await trio.sleep(0.001)
            stalls.append(time.perf_counter() - t0 - 0.001)

    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        if dispatch:
            await nursery.start(dispatcher.run)
            # Let the lane find the store empty first (as when MOs start after bind-up).
            await trio.sleep(0.1)
        nursery.start_soon(ticker)
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        async with trio.open_nursery() as workers:
            if rate:
                workers.start_soon(offered)
            else:
                for _ in range(waiters):
                    workers.start_soon(waiter)
        if dispatch:
            await all_recorded.wait()
        elapsed = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        nursery.cancel_scope.cancel()
    batches = store.batches
    store.close()
    q = statistics.quantiles(latencies, n=100)
    return {
        "mode": "thread" if use_thread else "inline",
        "dispatch": dispatch,
        "synchronous": sync,
        "rows": len(latencies),
        "waiters": 0 if rate else waiters,
        "offered_rate": rate,
        "seconds": round(elapsed, 3),
        "rows_per_s": round(len(latencies) / elapsed),
        "cpu_us_per_row": round(cpu / len(latencies) * 1e6, 1),
        "p50_ms": round(q[49] * 1000, 2),
        "p99_ms": round(q[98] * 1000, 2),
        "max_ms": round(max(latencies) * 1000, 2),
        "commits": batches,
        "rows_per_commit": round(len(latencies) / max(batches, 1), 1),
        "loop_stall_max_ms": round(max(stalls, default=0.0) * 1000, 2),
        "loop_stall_p99_ms": round(
            statistics.quantiles(stalls, n=100)[98] * 1000 if len(stalls) > 1 else 0.0, 2
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=40_000)
    parser.add_argument("--waiters", type=int, default=200)
    parser.add_argument("--mode", choices=["thread", "inline", "both"], default="both")
    parser.add_argument(
        "--rate", type=float, default=0.0, help="offered persists/s (0: closed loop)"
    )
    parser.add_argument(
        "--dispatch", action="store_true", help="also deliver and record every job (see above)"
    )
    parser.add_argument("--concurrency", type=int, default=8, help="lane concurrency (--dispatch)")
    parser.add_argument("--synchronous", default="FULL", choices=["OFF", "NORMAL", "FULL"])
    parser.add_argument("--dir", default=None, help="where the database goes (default: tmp)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "store.json"))
    args = parser.parse_args()
    modes = [True, False] if args.mode == "both" else [args.mode == "thread"]
    results = []
    for use_thread in modes:
        with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
            items = make_items(args.rows)
            r = trio.run(
                run_one,
                Path(tmp) / "bench.db",
                items,
                args.waiters,
                use_thread,
                args.synchronous,
                args.rate,
                args.dispatch,
                args.concurrency,
            )
        results.append(r)
        print(
            f"store{'+dispatch' if args.dispatch else ''} {r['mode']:6} sync={r['synchronous']} "
            + (f"offered={args.rate:g}/s: " if args.rate else f"waiters={r['waiters']}: ")
            + f"{r['rows_per_s']} rows/s, {r['cpu_us_per_row']} µs CPU/row, "
            f"p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, max {r['max_ms']} ms, "
            f"{r['rows_per_commit']} rows/commit, loop stall max {r['loop_stall_max_ms']} ms"
        )
    out = Path(args.out)
    if args.out == parser.get_default("out"):
        stem = "store-dispatch" if args.dispatch else "store"
        out = out.with_name(f"{stem}-rate{args.rate:g}.json" if args.rate else f"{stem}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps({"cpus": os.cpu_count(), "results": results, "at": time.time()}, indent=2) + "\n"
    )


if __name__ == "__main__":
    main()
