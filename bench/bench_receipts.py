"""Receipts -> status URL, end to end, through ``gatewayd run`` and its send API.

Four processes besides this one, on the same machine:

- the API client (``python bench/bench_receipts.py client``): raw asyncio HTTP/1.1,
  ``--concurrency`` keep-alive connections, one ``POST /v1/messages`` per message with
  ``status_url`` pointing at the receiver and ``custom`` = ``TEXT <i> <send epoch>``
  (gatewayd echoes ``custom`` in every receipt push, so the receiver can tell which
  message a push is for and when it was sent, without parsing logs);
- the SMSC (``bench/smsc.py``): gatewayd's simulator, answering each ``submit_sm`` and
  sending its receipt ``--dlr-delay`` seconds later; it records each submit_sm's arrival;
- the receiver (``bench/receiver.py``): the status URL, records each push's arrival;
- the system under test: ``python -m gatewayd run`` (carrier = the SMSC, ``api:`` with a
  send token and ``status_url_allow: [127.0.0.0/8]``, ``synchronous: FULL`` store).

Measured: sends/s accepted (202s, first POST -> last 202), submit_sm/s at the SMSC,
receipts pushed/s (first -> last push, and end to end: first POST -> last push),
latency per message send -> receipt push p50/p99 (and minus the receipt delay), send ->
submit_sm, gatewayd CPU per message (``/proc`` utime+stime from the first POST to the
last push: API, submit, receipt ingest and push together), peak RSS, exactly-once
(receipt pushes per message: delivered, duplicated, missing).

    .venv/bin/python bench/bench_receipts.py --messages 5000 --runs 1
    .venv/bin/python bench/bench_receipts.py --messages 5000 --rate 500 --tag r500

Prints one line per run and a summary line; writes bench/results/receipts[-TAG].json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import queue
import signal
import statistics
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
    add_run_args,
    cpu_seconds,
    first_arrivals,
    free_port,
    gatewayd_config,
    keep_or_remove,
    latency_stats,
    ms,
    peak_rss_mb,
    percentile,
    port_of,
    rate_label,
    receiver_destination,
    routes_to,
    run_and_save,
    start_gatewayd,
    start_receiver,
    start_smsc,
    wait_port,
)

TOKEN = "bench-send-token"

API = """\
listen: 127.0.0.1:{api_port}
tokens: [{token}]
status_url_allow: [127.0.0.0/8]
"""

# --- the API client (a subprocess: `bench_receipts.py client`) ---------------------------


async def _client(args: argparse.Namespace) -> dict[str, Any]:
    host, port = "127.0.0.1", args.port
    next_i = iter(range(1, args.messages + 1))
    interval = 1.0 / args.rate if args.rate > 0 else 0.0
    records: list[tuple[int, float, float, int]] = []
    loop = asyncio.get_running_loop()
    start = loop.time()
    head = (
        f"POST /v1/messages HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Authorization: Bearer {args.token}\r\nContent-Type: application/json\r\n"
    )

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            for i in next_i:
                if interval:
                    delay = start + (i - 1) * interval - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                sent = time.time()
                body = json.dumps(
                    {
                        "from": args.from_,
                        "to": args.to,
                        "text": f"TEXT {i} {sent:.6f}",
                        "status_url": args.status_url,
                        "custom": f"TEXT {i} {sent:.6f}",
                    }
                ).encode()
                writer.write(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
                response = await reader.readuntil(b"\r\n\r\n")
                status = int(response.split(b" ", 2)[1])
                length = 0
                close = False
                for line in response.lower().split(b"\r\n"):
                    if line.startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                    elif line.startswith(b"connection:") and b"close" in line:
                        close = True
                if length:
                    await reader.readexactly(length)
                records.append((i, sent, time.time(), status))
                if close:
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, port)
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    accepted = [r for r in records if r[3] == 202]
    statuses: dict[str, int] = {}
    for r in records:
        statuses[str(r[3])] = statuses.get(str(r[3]), 0) + 1
    api_ms = [(r[2] - r[1]) * 1000.0 for r in accepted]
    first = min((r[1] for r in records), default=0.0)
    return {
        "first_sent": first,
        "last_accept": max((r[2] for r in accepted), default=first),
        "accepted": len(accepted),
        "statuses": statuses,
        "api_latency_ms": {"p50": percentile(api_ms, 0.5), "p99": percentile(api_ms, 0.99)},
    }


def client_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench_receipts.py client")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--token", default=TOKEN)
    parser.add_argument("--messages", type=int, required=True)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rate", type=float, default=0.0)
    parser.add_argument("--status-url", required=True)
    parser.add_argument("--from", dest="from_", default="447700900001")
    parser.add_argument("--to", default="447700900123")
    args = parser.parse_args(argv)
    print("ready", flush=True)
    sys.stdin.readline()
    summary = asyncio.run(_client(args))
    print("done " + json.dumps(summary), flush=True)
    sys.stdin.readline()  # stay until told (the harness reads the summary first)
    return 0


# --- one run ------------------------------------------------------------------------------


def run_once(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="bench-receipts-"))
    load = os.getloadavg()
    n = args.messages
    rx = start_receiver()
    smsc: Proc | None = None
    gw: Proc | None = None
    client: Proc | None = None
    try:
        rx_port = port_of(rx.expect("listening on", 10))
        smsc_argv = ["--dlr-delay", str(args.dlr_delay)]
        smsc_argv += ["--window", str(args.window), "--sessions", str(args.sessions)]
        smsc_argv += ["--ids", args.ids]
        smsc = start_smsc(smsc_argv, stderr=workdir / "smsc.log")
        sim_port = port_of(smsc.expect("listening on", 10))
        api_port = free_port()
        config = gatewayd_config(
            "bench/bench_receipts.py",
            store=workdir / "gatewayd.db",
            api=API.format(api_port=api_port, token=TOKEN),
            sim_port=sim_port,
            sessions=args.sessions,
            window=args.window,
            destinations=receiver_destination(rx_port),
            routes=routes_to("receiver"),
        )
        gw = start_gatewayd(config, workdir, args.log_level)
        smsc.expect("bound", 60)
        wait_port(api_port, 30)
        time.sleep(0.5)
        client_argv = [PYTHON, str(Path(__file__).resolve()), "client", "--port", str(api_port)]
        client_argv += ["--messages", str(n), "--concurrency", str(args.concurrency)]
        client_argv += ["--rate", str(args.rate)]
        client_argv += ["--status-url", f"http://127.0.0.1:{rx_port}/status"]
        client = Proc(client_argv, stdin=True, cwd=ROOT)
        client.expect("ready", 30)
        cpu0 = cpu_seconds(gw.pid)
        harness0 = [cpu_seconds(p.pid) for p in (smsc, rx, client)]
        client.send("go")
        done: dict[str, Any] | None = None
        last_count, last_change = -1, time.monotonic()
        while True:
            time.sleep(0.2)
            if done is None:
                with contextlib.suppress(queue.Empty):
                    line = client.lines.get_nowait()
                    if line.startswith("done "):
                        done = json.loads(line[5:])
            rx.send("count")
            count = int(rx.expect("ok count", 10).split()[2])
            if count != last_count:
                last_count, last_change = count, time.monotonic()
            if done is not None and count >= done["accepted"]:
                break
            if time.monotonic() - last_change > args.stall:
                break
        time.sleep(0.3)
        cpu = cpu_seconds(gw.pid) - cpu0
        harness = [
            cpu_seconds(p.pid) - c0 for p, c0 in zip((smsc, rx, client), harness0, strict=True)
        ]
        rss = peak_rss_mb(gw.pid)
        if done is None:
            done = json.loads(client.expect("done", 60)[5:])
        rx_dump, smsc_dump = workdir / "pushes.json", workdir / "submits.json"
        rx.send(f"dump {rx_dump}")
        rx.expect("ok dump", 30)
        smsc.send(f"dump {smsc_dump}")
        smsc.expect("ok dump", 30)
        pushes = json.loads(rx_dump.read_text())
        submits = json.loads(smsc_dump.read_text())["submits"]
    finally:
        for proc in (client, gw, smsc):
            if proc is not None:
                proc.stop(signal.SIGTERM)
        rx.stop(signal.SIGTERM)

    first, total = first_arrivals(pushes["arrivals"], n)
    submitted: dict[int, float] = {}
    submit_total = 0
    for arrived, text in submits:
        parts = text.split()
        if len(parts) == 3 and parts[0] == "TEXT":
            submit_total += 1
            i = int(parts[1])
            submitted.setdefault(i, arrived - float(parts[2]))
    delivered = len(first)
    latencies = [(a - s) * 1000.0 for s, a in first.values()]
    t0 = done["first_sent"]
    pushed = sorted(a for _, a in first.values())
    submit_times = sorted(a for a, _ in submits)

    def rate(count: int, start: float, end: float) -> float:
        return count / (end - start) if end > start else 0.0

    result = {
        "messages": n,
        "concurrency": args.concurrency,
        "rate_offered": args.rate,
        "window": args.window,
        "sessions": args.sessions,
        "dlr_delay_s": args.dlr_delay,
        "ids": args.ids,
        "accepted": done["accepted"],
        "api_statuses": done["statuses"],
        "sends_per_s": rate(done["accepted"], t0, done["last_accept"]),
        "api_latency_ms": done["api_latency_ms"],
        "submits_per_s": rate(len(submit_times), t0, submit_times[-1] if submit_times else t0),
        "pushes_per_s": rate(len(pushed) - 1, pushed[0], pushed[-1]) if pushed else 0.0,
        "pushes_per_s_e2e": rate(delivered, t0, pushed[-1] if pushed else t0),
        "latency_ms": latency_stats(latencies),
        "latency_minus_dlr_delay_ms": {
            "p50": None if not latencies else percentile(latencies, 0.5) - args.dlr_delay * 1e3,
            "p99": None if not latencies else percentile(latencies, 0.99) - args.dlr_delay * 1e3,
        },
        "send_to_submit_ms": {
            "p50": percentile([v * 1e3 for v in submitted.values()], 0.5),
            "p99": percentile([v * 1e3 for v in submitted.values()], 0.99),
        },
        "cpu_ms_per_message": cpu / delivered * 1000.0 if delivered else None,
        "cpu_s": cpu,
        "harness_cpu_ms_per_message": {
            k: v / n * 1000.0 for k, v in zip(("smsc", "receiver", "client"), harness, strict=True)
        },
        "peak_rss_mb": rss,
        "submitted": len(submitted),
        "submit_duplicates": submit_total - len(submitted),
        "delivered": delivered,
        "duplicated": total - delivered,
        "missing": n - delivered,
        "other_requests": pushes["other"],
        "loadavg_before": [round(x, 2) for x in load],
    }
    keep_or_remove(result, workdir, args.keep)
    return result


def fmt(r: dict[str, Any]) -> str:
    rate = rate_label(r["rate_offered"])
    lat, own = r["latency_ms"], r["latency_minus_dlr_delay_ms"]
    return (
        f"receipts rate={rate} N={r['messages']} C={r['concurrency']} "
        f"dlr-delay={r['dlr_delay_s']:g}s ids={r['ids']}: {r['sends_per_s']:.0f} sends/s accepted, "
        f"{r['submits_per_s']:.0f} submit_sm/s, {r['pushes_per_s']:.0f} pushes/s "
        f"({r['pushes_per_s_e2e']:.0f} e2e), send->push p50 {ms(lat['p50'])} ms "
        f"p99 {ms(lat['p99'])} ms (minus delay {ms(own['p50'])}/{ms(own['p99'])}), "
        f"CPU {r['cpu_ms_per_message']:.3f} ms/msg, RSS {r['peak_rss_mb']:.0f} MB, "
        f"pushed {r['delivered']} dup {r['duplicated']} missing {r['missing']} "
        f"(submit dup {r['submit_duplicates']}), load {r['loadavg_before'][0]}"
    )


def median_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out = dict(rows[0])
    for key in ("sends_per_s", "submits_per_s", "pushes_per_s", "pushes_per_s_e2e"):
        out[key] = statistics.median(r[key] for r in rows)
    for key in ("cpu_ms_per_message", "peak_rss_mb"):
        out[key] = statistics.median(r[key] for r in rows if r[key] is not None)
    for name in ("latency_ms", "latency_minus_dlr_delay_ms", "send_to_submit_ms"):
        out[name] = {
            k: statistics.median(r[name][k] for r in rows if r[name][k] is not None)
            for k in rows[0][name]
        }
    for key in ("duplicated", "missing", "submit_duplicates"):
        out[key] = max(r[key] for r in rows)
    out["runs"] = len(rows)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["client"]:
        return client_main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=5000, help="messages per run")
    parser.add_argument("--concurrency", type=int, default=16, help="API client connections")
    parser.add_argument("--rate", type=float, default=0.0, help="sends/s offered; 0: max")
    parser.add_argument("--window", type=int, default=10, help="SMPP window per bind")
    parser.add_argument("--sessions", type=int, default=1)
    parser.add_argument("--dlr-delay", type=float, default=0.1, help="s before each receipt")
    parser.add_argument(
        "--ids", choices=["hex", "decimal"], default="hex", help="the SMSC's message ids"
    )
    add_run_args(parser)
    args = parser.parse_args(argv)
    run_and_save("receipts", args, run_once, fmt, median_row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
