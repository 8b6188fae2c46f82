"""Forward: P2P MOs relayed as submit_sm by a ``forward`` destination, end to end.

Two processes besides this one, on the same machine:

- the SMSC (``bench/smsc.py``): gatewayd's simulator; after ``go`` it pushes N MOs
  ``TEXT <i> <send epoch>`` from 447700900001 to 447700900123 (a long number: P2P),
  window W per bind, paced at ``--rate`` (0: as fast as the window allows), and records
  each ``submit_sm`` it receives (arrival time, text). Receipts are off by default
  (``--dlr`` turns them on: they then come back in, are correlated and routed too);
- the system under test: ``python -m gatewayd run`` with one carrier (the SMSC,
  transceiver) and one destination ``fwd: {type: forward, to: "{{to}}", carrier: sim}``
  that every P2P MO is routed to, ``synchronous: FULL`` store.

Measured: MO/s end to end (first deliver_sm sent -> last submit_sm received),
deliver_sm_resp/s, latency per MO (deliver_sm sent -> its submit_sm at the SMSC)
p50/p99, gatewayd CPU per MO, peak RSS, exactly-once by text (submit_sm per MO:
forwarded, duplicated, missing).

    .venv/bin/python bench/bench_forward.py --mo 5000 --concurrency 10
    .venv/bin/python bench/bench_forward.py --mo 5000 --concurrency 1 --tag c1

Prints one line per run and a summary line; writes bench/results/forward[-TAG].json.
"""

from __future__ import annotations

import argparse
import json
import os
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
    Proc,
    add_run_args,
    cpu_seconds,
    gatewayd_config,
    keep_or_remove,
    latency_stats,
    ms,
    peak_rss_mb,
    port_of,
    rate_label,
    routes_to,
    run_and_save,
    start_gatewayd,
    start_smsc,
)

FORWARD = """\
fwd:
  type: forward
  to: "{{{{to}}}}"
  carrier: sim
  concurrency: {concurrency}
"""


def run_once(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="bench-forward-"))
    load = os.getloadavg()
    n = args.mo
    smsc_argv = ["--mo", str(n)]
    smsc_argv += ["--window", str(args.window), "--sessions", str(args.sessions)]
    smsc_argv += ["--rate", str(args.rate), "--ids", args.ids]
    smsc_argv += ["--dlr-delay", "0.1"] if args.dlr else ["--no-dlr"]
    smsc = start_smsc(smsc_argv, stderr=workdir / "smsc.log")
    gw: Proc | None = None
    try:
        sim_port = port_of(smsc.expect("listening on", 10))
        config = gatewayd_config(
            "bench/bench_forward.py",
            store=workdir / "gatewayd.db",
            sim_port=sim_port,
            sessions=args.sessions,
            window=args.window,
            destinations=FORWARD.format(concurrency=args.concurrency),
            routes=routes_to("fwd"),
        )
        gw = start_gatewayd(config, workdir, args.log_level)
        smsc.expect("bound", 60)
        time.sleep(0.5)
        cpu0 = cpu_seconds(gw.pid)
        smsc_cpu0 = cpu_seconds(smsc.pid)
        smsc.send("go")
        done: dict[str, Any] | None = None
        last_count, last_change = -1, time.monotonic()
        while True:
            time.sleep(0.2)
            smsc.send("count")
            while True:  # "done ..." may come before the answer
                line = smsc.expect("", 10)
                if line.startswith("done "):
                    done = json.loads(line[5:])
                elif line.startswith("ok count"):
                    break
            count = int(line.split()[2])
            if count != last_count:
                last_count, last_change = count, time.monotonic()
            if count >= n and done is not None:
                break
            if time.monotonic() - last_change > args.stall:
                break
        time.sleep(0.3)
        cpu = cpu_seconds(gw.pid) - cpu0
        smsc_cpu = cpu_seconds(smsc.pid) - smsc_cpu0
        rss = peak_rss_mb(gw.pid)
        if done is None:
            done = json.loads(smsc.expect("done", 30)[5:])
        dump = workdir / "submits.json"
        smsc.send(f"dump {dump}")
        smsc.expect("ok dump", 30)
        submits = json.loads(dump.read_text())["submits"]
    finally:
        if gw is not None:
            gw.stop(signal.SIGTERM)
        smsc.stop(signal.SIGTERM)

    first: dict[int, tuple[float, float]] = {}
    total = 0
    for arrived, text in submits:
        parts = text.split()
        if len(parts) == 3 and parts[0] == "TEXT" and 1 <= int(parts[1]) <= n:
            total += 1
            i = int(parts[1])
            if i not in first:
                first[i] = (float(parts[2]), arrived)
    forwarded = len(first)
    latencies = [(a - s) * 1000.0 for s, a in first.values()]
    t0 = done["first_sent"]
    t_last = max((a for _, a in first.values()), default=t0)
    result: dict[str, Any] = {
        "mo": n,
        "window": args.window,
        "sessions": args.sessions,
        "concurrency": args.concurrency,
        "rate_offered": args.rate,
        "dlr": args.dlr,
        "mo_per_s": forwarded / (t_last - t0) if t_last > t0 else 0.0,
        "resp_per_s": done["acked"] / (done["last_ack"] - t0) if done["last_ack"] > t0 else 0.0,
        "latency_ms": latency_stats(latencies),
        "cpu_ms_per_mo": cpu / forwarded * 1000.0 if forwarded else None,
        "cpu_s": cpu,
        "smsc_cpu_ms_per_mo": smsc_cpu / n * 1000.0,
        "peak_rss_mb": rss,
        "acked": done["acked"],
        "forwarded": forwarded,
        "duplicated": total - forwarded,
        "missing": n - forwarded,
        "loadavg_before": [round(x, 2) for x in load],
    }
    keep_or_remove(result, workdir, args.keep)
    return result


def fmt(r: dict[str, Any]) -> str:
    rate = rate_label(r["rate_offered"])
    lat = r["latency_ms"]
    cpu = "-" if r["cpu_ms_per_mo"] is None else f"{r['cpu_ms_per_mo']:.3f}"
    return (
        f"forward rate={rate} N={r['mo']} W={r['window']} S={r['sessions']} "
        f"C={r['concurrency']}: {r['mo_per_s']:.0f} MO/s e2e, {r['resp_per_s']:.0f} resp/s, "
        f"deliver_sm->submit_sm p50 {ms(lat['p50'])} ms p99 {ms(lat['p99'])} ms, "
        f"CPU {cpu} ms/MO, RSS {r['peak_rss_mb']:.0f} MB, forwarded {r['forwarded']} "
        f"dup {r['duplicated']} missing {r['missing']}, load {r['loadavg_before'][0]}"
    )


def median_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out = dict(rows[0])
    for key in ("mo_per_s", "resp_per_s", "cpu_ms_per_mo", "peak_rss_mb", "forwarded"):
        out[key] = statistics.median(r[key] for r in rows if r[key] is not None)
    out["latency_ms"] = {
        k: statistics.median(r["latency_ms"][k] for r in rows if r["latency_ms"][k] is not None)
        for k in ("p50", "p99", "max")
    }
    out["duplicated"] = max(r["duplicated"] for r in rows)
    out["missing"] = max(r["missing"] for r in rows)
    out["runs"] = len(rows)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mo", type=int, default=5000, help="MOs per run")
    parser.add_argument("--window", type=int, default=10, help="SMPP window per bind")
    parser.add_argument("--sessions", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=10, help="the forward destination's")
    parser.add_argument("--rate", type=float, default=0.0, help="MO/s offered; 0: max")
    parser.add_argument("--dlr", action="store_true", help="the SMSC sends receipts too")
    parser.add_argument("--ids", choices=["hex", "decimal"], default="hex")
    add_run_args(parser)
    args = parser.parse_args(argv)
    run_and_save("forward", args, run_once, fmt, median_row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
