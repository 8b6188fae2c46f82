"""Benchmark: CPU per request of HttpDestination, httpx's stock transport vs ours (lean).

A minimal keep-alive HTTP server runs in a subprocess (pinned to another core when there
is one) so that the client's CPU time (``time.process_time``) is the destination's alone.
Each case runs ``--repeat`` times (default 5) for each transport, interleaved so that
drift in the machine's load hits both alike; the rows hold the medians.

    .venv/bin/python bench/bench_http.py            # full run
    .venv/bin/python bench/bench_http.py --quick    # smaller counts
    .venv/bin/python bench/bench_http.py --transport lean --repeat 3

Prints one line per run and per median, a summary, and writes bench/results/http.json.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gatewayd.config import JwtAuth, UrlDestination  # noqa: E402
from gatewayd.destinations.base import Job, Outcome  # noqa: E402
from gatewayd.destinations.http import HttpDestination, make_client  # noqa: E402
from gatewayd.payloads import build_request, sample_event  # noqa: E402

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"


# --- the server (subprocess) --------------------------------------------------------------


async def _serve_connection(stream: trio.SocketStream) -> None:
    buffer = b""
    try:
        while True:
            while b"\r\n\r\n" not in buffer:
                data = await stream.receive_some(65536)
                if not data:
                    return
                buffer += data
            head, _, buffer = buffer.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            while len(buffer) < length:
                data = await stream.receive_some(65536)
                if not data:
                    return
                buffer += data
            buffer = buffer[length:]
            await stream.send_all(RESPONSE)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return


async def _serve() -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    print(listeners[0].socket.getsockname()[1], flush=True)
    await trio.serve_listeners(_serve_connection, listeners)


# --- the client ---------------------------------------------------------------------------


def _pin(cpu: int) -> bool:
    try:
        if len(os.sched_getaffinity(0)) > 1:
            os.sched_setaffinity(0, {cpu})
            return True
    except (AttributeError, OSError):
        pass
    return False


async def _run_case(
    name: str,
    url: str,
    *,
    requests: int,
    destinations: int,
    concurrency: int,
    jwt: bool,
    transport: str = "stock",
) -> dict[str, Any]:
    auth = JwtAuth(secret="bench-secret-0123456789-0123456789-xx") if jwt else None
    factory = functools.partial(make_client, stock=transport == "stock")
    dests = [
        HttpDestination(
            UrlDestination(name=f"d{i}", url=url, concurrency=concurrency, auth=auth, timeout=10),
            client_factory=factory,
        )
        for i in range(destinations)
    ]
    event = sample_event("mo")
    job = Job(id=1, event_id=event.id, destination="d", attempt=1)
    latencies: list[float] = []
    failures = 0

    async def worker(dest: HttpDestination, count: int) -> None:
        nonlocal failures
        for _ in range(count):
            result = await dest.deliver(event, job)
            if result.outcome is not Outcome.DELIVERED:
                failures += 1
            latencies.append(result.latency_ms)

    async def run(total: int) -> None:
        workers = destinations * concurrency
        async with trio.open_nursery() as nursery:
            for w in range(workers):
                nursery.start_soon(worker, dests[w % destinations], total // workers)

    await run(max(destinations * concurrency * 20, 200))  # warm up: connections, caches
    latencies.clear()
    times0, cpu0, wall0 = os.times(), time.process_time(), time.perf_counter()
    await run(requests)
    cpu, wall, times = time.process_time() - cpu0, time.perf_counter() - wall0, os.times()
    for dest in dests:
        await dest.aclose()
    done = len(latencies)
    latencies.sort()
    row = {
        "case": name,
        "transport": transport,
        "requests": done,
        "failures": failures,
        "destinations": destinations,
        "concurrency_per_destination": concurrency,
        "jwt": jwt,
        "req_per_s": round(done / wall, 1),
        "cpu_us_per_req": round(cpu / done * 1e6, 1),
        "user_us_per_req": round((times.user - times0.user) / done * 1e6, 1),
        "sys_us_per_req": round((times.system - times0.system) / done * 1e6, 1),
        "latency_ms_p50": round(statistics.median(latencies), 3),
        "latency_ms_p99": round(latencies[int(done * 0.99) - 1], 3),
    }
    _print_row(row, "  run")
    return row


def _print_row(row: dict[str, Any], prefix: str) -> None:
    print(
        f"{prefix} {row['transport']:<5} {row['case']:<24} {row['req_per_s']:>8} req/s  "
        f"{row['cpu_us_per_req']:>8} µs CPU/req (user {row['user_us_per_req']}, sys "
        f"{row['sys_us_per_req']})  p50 {row['latency_ms_p50']} ms  "
        f"p99 {row['latency_ms_p99']} ms  failures {row['failures']}",
        flush=True,
    )


def _median_row(runs: list[dict[str, Any]]) -> dict[str, Any]:
    row = dict(runs[0])
    keys = ("req_per_s", "cpu_us_per_req", "user_us_per_req", "sys_us_per_req")
    for key in (*keys, "latency_ms_p50", "latency_ms_p99"):
        row[key] = round(statistics.median(r[key] for r in runs), 3)
    row["failures"] = sum(r["failures"] for r in runs)
    row["runs"] = len(runs)
    row["cpu_us_per_req_runs"] = [r["cpu_us_per_req"] for r in runs]
    return row


def _bench_build(count: int, jwt: bool) -> dict[str, Any]:
    auth = JwtAuth(secret="bench-secret-0123456789-0123456789-xx") if jwt else None
    dest = UrlDestination(name="d", url="https://h.example/in?id={{id}}", auth=auth)
    event = sample_event("mo")
    cpu0 = time.process_time()
    for _ in range(count):
        build_request(dest, event, now=1_760_000_000.0)
    cpu = time.process_time() - cpu0
    name = "build_request" + (" +jwt" if jwt else "")
    row = {"case": name, "requests": count, "cpu_us_per_req": round(cpu / count * 1e6, 1)}
    print(f"{name:<28} {'':>8}        {row['cpu_us_per_req']:>8} µs CPU/req")
    return row


# (name, destinations, concurrency per destination, jwt)
CASES: list[tuple[str, int, int, bool]] = [
    ("sequential", 1, 1, False),
    ("sequential +jwt", 1, 1, True),
    ("1 dest x 8 concurrent", 1, 8, False),
    ("8 dests x 4 concurrent", 8, 4, False),
    ("1 dest x 32 concurrent", 1, 32, False),
]


async def _client(
    port: int, quick: bool, transports: list[str], repeat: int
) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{port}/in"
    n = 1000 if quick else 4000
    rows = [_bench_build(n * 5, jwt=False), _bench_build(n * 5, jwt=True)]
    for name, destinations, concurrency, jwt in CASES:
        runs: dict[str, list[dict[str, Any]]] = {t: [] for t in transports}
        for _ in range(repeat):
            for transport in transports:
                runs[transport].append(
                    await _run_case(
                        name,
                        url,
                        requests=n,
                        destinations=destinations,
                        concurrency=concurrency,
                        jwt=jwt,
                        transport=transport,
                    )
                )
        for transport in transports:
            row = _median_row(runs[transport])
            _print_row(row, "median")
            rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="smaller counts")
    parser.add_argument(
        "--transport", choices=["both", "stock", "lean"], default="both", help="what to run"
    )
    parser.add_argument("--repeat", type=int, default=5, help="runs per case (median)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "http.json"))
    args = parser.parse_args()
    if args.serve:
        _pin(1)
        trio.run(_serve)
        return
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        pinned = _pin(0)
        transports = ["stock", "lean"] if args.transport == "both" else [args.transport]
        rows = trio.run(_client, port, args.quick, transports, args.repeat)
    finally:
        server.terminate()
        server.wait()
    medians = {(r["case"], r["transport"]): r for r in rows if "transport" in r}
    parts = []
    for transport in transports:
        cpu = [
            f"{medians[(case, transport)]['cpu_us_per_req']:g}"
            for case in ("sequential", "1 dest x 8 concurrent", "1 dest x 32 concurrent")
        ]
        rate = medians[("sequential", transport)]["req_per_s"]
        parts.append(f"{transport} {' / '.join(cpu)} µs ({rate:g} req/s sequential)")
    print(
        f"summary: HttpDestination CPU per POST at concurrency 1 / 8 / 32 (median of "
        f"{args.repeat}, httpx {_httpx_version()}, client{' pinned to' if pinned else ' on'} "
        f"one core): {'; '.join(parts)}; build_request alone {rows[0]['cpu_us_per_req']} µs, "
        f"+JWT {rows[1]['cpu_us_per_req']} µs"
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "benchmark": "http",
                "python": platform.python_version(),
                "httpx": _httpx_version(),
                "cpus": os.cpu_count(),
                "client_pinned": pinned,
                "repeat": args.repeat,
                "command": " ".join(["bench/bench_http.py", *sys.argv[1:]]),
                "rows": rows,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {out}")


def _httpx_version() -> str:
    import httpx

    return httpx.__version__


if __name__ == "__main__":
    main()
