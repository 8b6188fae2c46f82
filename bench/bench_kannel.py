"""gatewayd vs Kannel 1.4.5 on the same MO -> webhook harness, in the same run.

The harness is ``bench/bench_pipeline.py``'s (same simulator, same receiver, same N, W,
offered rates and measurements); this file adds Kannel as a second system under test:
``bearerbox`` (binds to the simulator as a transceiver, store on: ``store-type = file``)
and ``smsbox`` (an ``sms-service`` that POSTs each MO to the receiver), configured from
``bench/kannel/kannel.conf``. CPU and peak RSS are of bearerbox + smsbox together. The
systems alternate within each run so that drift in the machine's load hits both alike.

    apt-get install -y kannel          # Debian's 1.4.5: /usr/sbin/bearerbox, smsbox
    .venv/bin/python bench/bench_kannel.py --mo 20000 --rates 0,500,1000 --runs 3

Prints one line per run, the medians, the ratios gatewayd/Kannel, and writes
bench/results/kannel[-TAG].json. Run by hand; never from pytest.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_pipeline import Gatewayd, common_args, run_matrix, summarize
from bench.harness import ROOT, Proc, free_port, machine, save_results, wait_port

TEMPLATE = ROOT / "bench" / "kannel" / "kannel.conf"


class Kannel:
    name = "kannel"

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.bearerbox: Proc | None = None
        self.smsbox: Proc | None = None

    def start(self, sim_port: int, rx_port: int, workdir: Path, args: argparse.Namespace) -> None:
        smsbox_port = free_port()
        config = workdir / "kannel.conf"
        text = TEMPLATE.read_text()
        # --sessions N: N smsc groups with the same smsc-id (Kannel's way to open N binds)
        i, j = text.index("group = smsc\n"), text.index("group = smsbox\n")
        text = text[:i] + text[i:j] * max(1, args.sessions) + text[j:]
        config.write_text(
            text.format(
                workdir=workdir,
                sim_port=sim_port,
                rx_port=rx_port,
                admin_port=free_port(),
                smsbox_port=smsbox_port,
                sendsms_port=free_port(),
                window=args.window,
                pending=args.kannel_pending,
                log_level=args.kannel_log_level,
            )
        )
        quiet = ["-v", str(args.kannel_log_level)]  # the console's level (default: debug)
        # smsbox first in line: bearerbox starts, smsbox connects, and only then can MOs
        # flow on (the bench waits for the bind and then sleeps before the start signal).
        self.bearerbox = Proc(
            [str(self.bindir / "bearerbox"), *quiet, str(config)], stderr=workdir / "bearerbox.err"
        )
        wait_port(smsbox_port, 15)
        self.smsbox = Proc(
            [str(self.bindir / "smsbox"), *quiet, str(config)], stderr=workdir / "smsbox.err"
        )
        time.sleep(1.0)

    def pids(self) -> list[int]:
        assert self.bearerbox is not None
        assert self.smsbox is not None
        return [self.bearerbox.pid, self.smsbox.pid]

    def stop(self) -> None:
        for proc in (self.smsbox, self.bearerbox):
            if proc is not None:
                proc.stop(signal.SIGTERM)


def ratios(gw: dict[str, Any], k: dict[str, Any]) -> dict[str, float | None]:
    def div(a: float | None, b: float | None) -> float | None:
        return None if a is None or not b else a / b

    return {
        "mo_per_s": div(gw["mo_per_s"], k["mo_per_s"]),
        "resp_per_s": div(gw["resp_per_s"], k["resp_per_s"]),
        "cpu_per_mo": div(gw["cpu_s_per_1000"], k["cpu_s_per_1000"]),
        "p50": div(gw["latency_ms"]["p50"], k["latency_ms"]["p50"]),
        "p99": div(gw["latency_ms"]["p99"], k["latency_ms"]["p99"]),
        "rss": div(sum(gw["peak_rss_mb"]), sum(k["peak_rss_mb"])),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common_args(parser)
    parser.add_argument("--concurrency", type=int, default=8, help="gatewayd url concurrency")
    parser.add_argument("--log-level", default="INFO", help="gatewayd's --log-level")
    parser.add_argument("--kannel-log-level", type=int, default=3, help="0 debug .. 4 panic")
    parser.add_argument("--kannel-pending", type=int, default=512, help="max-pending-requests")
    parser.add_argument("--only", choices=["both", "gatewayd", "kannel"], default="both")
    args = parser.parse_args(argv)
    found = shutil.which("bearerbox") or shutil.which("bearerbox", path="/usr/sbin:/usr/bin")
    if found is None:
        print("bearerbox not found: apt-get install -y kannel", file=sys.stderr)
        return 2
    systems: list[Any] = []
    if args.only in ("both", "gatewayd"):
        systems.append(Gatewayd())
    if args.only in ("both", "kannel"):
        systems.append(Kannel(Path(found).parent))
    rows = run_matrix(systems, args)
    summary = summarize(rows)
    compared: dict[str, dict[str, float | None]] = {}
    for rate in args.rates.split(","):
        gw, k = summary.get(f"gatewayd@{float(rate):g}"), summary.get(f"kannel@{float(rate):g}")
        if gw is None or k is None:
            continue
        r = compared[f"{float(rate):g}"] = ratios(gw, k)

        def x(v: float | None) -> str:
            return "-" if v is None else f"{v:.2f}x"

        print(
            f"  gatewayd/kannel rate={float(rate):g}: MO/s {x(r['mo_per_s'])}, "
            f"resp/s {x(r['resp_per_s'])}, CPU/MO {x(r['cpu_per_mo'])}, "
            f"p50 {x(r['p50'])}, p99 {x(r['p99'])}, RSS {x(r['rss'])}"
        )
    save_results(
        "kannel",
        args.tag,
        {
            "args": vars(args),
            "machine": machine(),
            "summary": summary,
            "ratios_gatewayd_over_kannel": compared,
            "runs": rows,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
