"""What the end-to-end benchmarks share: processes, ``/proc`` readings, gatewayd, results.

Used by ``bench_pipeline.py``, ``bench_kannel.py``, ``bench_forward.py``,
``bench_receipts.py``, ``bench_backlog.py`` (the harness side: child processes,
``/proc`` CPU and RSS, percentiles, ports, the gatewayd config and process, the results
file) and by the two simulators (``bench_pipeline.py simulate``, ``smsc.py``: the paced,
windowed MO sender). Not a benchmark itself.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gatewayd.smpp.simulator import Simulator

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PYTHON = sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- processes ----------------------------------------------------------------------------


class Proc:
    """A child process whose stdout lines are read by a thread (``expect`` waits for one)."""

    def __init__(
        self, argv: Sequence[str], *, stdin: bool = False, stderr: Path | None = None, **kw: Any
    ) -> None:
        self.argv = list(argv)
        self._err = open(stderr, "wb") if stderr else subprocess.DEVNULL  # noqa: SIM115
        self.popen = subprocess.Popen(
            self.argv,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._err,
            text=True,
            bufsize=1,
            **kw,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    @property
    def pid(self) -> int:
        return self.popen.pid

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.put(line.rstrip("\n"))

    def expect(self, prefix: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.argv[:4]}: no line starting {prefix!r} in {timeout}s")
            try:
                line = self.lines.get(timeout=min(left, 0.5))
            except queue.Empty:
                if self.popen.poll() is not None:
                    raise RuntimeError(
                        f"{self.argv[:4]} exited ({self.popen.returncode}) waiting for {prefix!r}"
                    ) from None
                continue
            if line.startswith(prefix):
                return line

    def send(self, line: str) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write(line + "\n")
        self.popen.stdin.flush()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        if self.popen.poll() is None:
            try:
                self.popen.send_signal(sig)
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        if self.popen.stdin is not None:
            with contextlib.suppress(BrokenPipeError, OSError):
                self.popen.stdin.close()
        if hasattr(self._err, "close"):
            self._err.close()
        return self.popen.returncode


def cpu_seconds(pid: int) -> float:
    """utime + stime of a live process (``/proc/PID/stat`` fields 14 and 15)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def port_of(line: str) -> int:
    """``listening on HOST:PORT`` -> PORT."""
    return int(line.rsplit(":", 1)[1])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port} after {timeout}s")


def start_receiver(*args: str) -> Proc:
    """``bench/receiver.py`` (its stdin is the control channel)."""
    return Proc([PYTHON, str(ROOT / "bench" / "receiver.py"), *args], stdin=True)


def start_smsc(args: Sequence[str], stderr: Path | None = None) -> Proc:
    """``bench/smsc.py`` with ``args`` (its stdin is the control channel)."""
    return Proc(
        [PYTHON, str(ROOT / "bench" / "smsc.py"), *args], stdin=True, stderr=stderr, cwd=ROOT
    )


# --- gatewayd -----------------------------------------------------------------------------


def _section(name: str, body: str) -> str:
    return f"{name}:\n" + textwrap.indent(textwrap.dedent(body).strip("\n"), "  ") + "\n"


def gatewayd_config(
    writer: str,
    *,
    store: Path | str,
    sim_port: int,
    window: int,
    destinations: str,
    routes: str,
    sessions: int | None = None,
    api: str | None = None,
) -> str:
    """gatewayd's YAML: one carrier ``sim`` (the simulator at ``sim_port``, transceiver,
    ``window`` per bind, ``sessions`` binds when given), a ``synchronous: FULL`` store, and
    the ``destinations``, ``routes`` and optional ``api`` sections (their bodies, unindented).
    """
    sessions_line = f"    sessions: {sessions}\n" if sessions is not None else ""
    return (
        f"# written by {writer}\n"
        f"store: {store}\n"
        "synchronous: FULL\n" + (_section("api", api) if api is not None else "") + "carriers:\n"
        "  sim:\n"
        "    host: 127.0.0.1\n"
        f"    port: {sim_port}\n"
        "    system_id: bench\n"
        "    password: bench\n"
        "    bind: transceiver\n"
        f"{sessions_line}"
        f"    window: {window}\n"
        "    enquire_link: 30s\n"
        + _section("destinations", destinations)
        + _section("routes", routes)
    )


def receiver_destination(rx_port: int, **options: object) -> str:
    """The ``destinations`` entry ``receiver``: a ``url`` destination to ``bench/receiver.py``
    at ``rx_port``, with ``options`` (``concurrency``, ``timeout``, ...) in the order given."""
    lines = ["receiver:", "  type: url", f"  url: http://127.0.0.1:{rx_port}/sms/in"]
    lines += [f"  {key}: {value}" for key, value in options.items()]
    return "\n".join(lines) + "\n"


def routes_to(destination: str) -> str:
    """The ``routes`` section that sends A2P and P2P alike to ``destination``."""
    return f"a2p: {destination}\np2p: {destination}\n"


def start_gatewayd(
    config_text: str,
    workdir: Path,
    log_level: str,
    *,
    gatewayd_root: Path | str | None = None,
) -> Proc:
    """``python -m gatewayd run`` on ``config_text`` (written to WORKDIR/gatewayd.yaml),
    JSON logs at ``log_level`` to WORKDIR/gatewayd.log. With ``gatewayd_root``, the package
    is run from that tree (``PYTHONPATH`` and working directory); otherwise from this one.
    """
    config = workdir / "gatewayd.yaml"
    config.write_text(config_text)
    argv = [PYTHON, "-m", "gatewayd", "run", "--config", str(config)]
    argv += ["--log-format", "json", "--log-level", log_level]
    if gatewayd_root is None:
        return Proc(argv, stderr=workdir / "gatewayd.log", cwd=ROOT)
    root = Path(gatewayd_root).resolve()
    env = dict(os.environ, PYTHONPATH=str(root))
    return Proc(argv, stderr=workdir / "gatewayd.log", cwd=root, env=env)


# --- measurements -------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def latency_stats(values: Sequence[float]) -> dict[str, float | None]:
    """``{"p50", "p99", "max"}`` of ``values`` (None for each when there are none)."""
    return {
        "p50": percentile(values, 0.5),
        "p99": percentile(values, 0.99),
        "max": max(values, default=None),
    }


def ms(v: float | None) -> str:
    """A latency for a summary line: one decimal, or ``-``."""
    return "-" if v is None else f"{v:.1f}"


def rate_label(rate_offered: float) -> str:
    """An offered rate for a summary line: ``max`` (0) or ``R/s``."""
    return "max" if not rate_offered else f"{rate_offered:g}/s"


def first_arrivals(
    arrivals: Sequence[Sequence[Any]], n: int
) -> tuple[dict[int, tuple[float, float]], int]:
    """The receiver's ``[i, sent, arrived]`` rows -> ({i: (sent, first arrival)}, rows for
    1 <= i <= n, duplicates included)."""
    first: dict[int, tuple[float, float]] = {}
    total = 0
    for i, sent, arrived in arrivals:
        if 1 <= i <= n:
            total += 1
            if i not in first or arrived < first[i][1]:
                first[i] = (sent, arrived)
    return first, total


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "python": sys.version.split()[0], "when": time.time()}


def keep_or_remove(result: dict[str, Any], workdir: Path, keep: bool) -> None:
    """``--keep``: note the work directory in the result; otherwise delete it."""
    if keep:
        result["workdir"] = str(workdir)
    else:
        shutil.rmtree(workdir, ignore_errors=True)


# --- results ------------------------------------------------------------------------------


def write_results(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def save_results(stem: str, tag: str, payload: dict[str, Any]) -> Path:
    """Write ``bench/results/STEM[-TAG].json`` and print ``wrote ...``."""
    path = write_results(f"{stem}-{tag}.json" if tag else f"{stem}.json", payload)
    print(f"wrote {path.relative_to(ROOT)}")
    return path


def add_run_args(parser: argparse.ArgumentParser) -> None:
    """``--runs``, ``--stall``, ``--log-level``, ``--tag``, ``--keep`` (for ``run_and_save``)."""
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--stall", type=float, default=20.0, help="give up after s idle")
    parser.add_argument("--log-level", default="INFO", help="gatewayd's --log-level")
    parser.add_argument("--tag", default="")
    parser.add_argument("--keep", action="store_true", help="keep the work directories")


def run_and_save(
    stem: str,
    args: argparse.Namespace,
    run_once: Callable[[argparse.Namespace], dict[str, Any]],
    fmt: Callable[[dict[str, Any]], str],
    median_row: Callable[[list[dict[str, Any]]], dict[str, Any]],
) -> None:
    """``args.runs`` runs, each numbered (``run``) and printed with ``fmt``; then the
    ``median_row`` summary, printed, and ``bench/results/STEM[-TAG].json``."""
    rows = []
    for run in range(args.runs):
        r = run_once(args)
        r["run"] = run + 1
        print("  " + fmt(r), flush=True)
        rows.append(r)
    summary = median_row(rows)
    print("summary (medians): " + fmt(summary))
    save_results(
        stem, args.tag, {"args": vars(args), "machine": machine(), "summary": summary, "runs": rows}
    )


# --- the simulator side (inside the simulator processes) -----------------------------------


async def serve_until_bound(sim: Simulator, nursery: Any, sessions: int) -> None:
    """Start ``sim`` in ``nursery``, print ``listening on ...``, wait for ``sessions``
    binds, print ``bound N``."""
    import trio

    port = await nursery.start(sim.serve)
    print(f"listening on 127.0.0.1:{port}", flush=True)
    # Polling public state: the simulator's "connections changed" event is private.
    while len(sim.receivers()) < sessions:  # noqa: ASYNC110
        await trio.sleep(0.01)
    print(f"bound {len(sim.receivers())}", flush=True)


async def send_mos(
    sim: Simulator,
    count: int,
    *,
    window: int,
    rate: float,
    acks: list[tuple[float, float]],
    source: str | None = None,
    dest: str | None = None,
) -> dict[str, Any]:
    """MOs 1..count, texts ``TEXT <i> <send epoch>``, through ``sim.deliver``.

    Paced (``rate`` MO/s from the start; 0: as fast as the window allows) and windowed
    (``window`` per bound receiver; a new MO waits for a free slot) like
    ``Simulator._send_mos``. Each acknowledged MO appends (sent, acked) to ``acks`` as it
    happens; returns ``{"first_sent", "last_ack", "acked", "failed"}``.
    """
    import trio

    from gatewayd.smpp.pdu import ESME_ROK

    limiter = trio.CapacityLimiter(window * max(1, len(sim.receivers())))
    interval = 1.0 / rate if rate > 0 else 0.0
    failed = 0

    async def one(i: int) -> None:
        nonlocal failed
        try:
            sent = time.time()
            fields = sim.mo_fields(f"TEXT {i} {sent:.6f}", source=source, dest=dest)
            status = await sim.deliver(f"TEXT {i}", fields)
            if status == ESME_ROK:
                acks.append((sent, time.time()))
            else:
                failed += 1
        finally:
            limiter.release_on_behalf_of(i)

    first_sent = time.time()
    start = trio.current_time()
    async with trio.open_nursery() as senders:
        for i in range(1, count + 1):
            if interval:
                await trio.sleep_until(start + (i - 1) * interval)
            await limiter.acquire_on_behalf_of(i)
            senders.start_soon(one, i)
    return {
        "first_sent": first_sent,
        "last_ack": max((a for _, a in acks), default=first_sent),
        "acked": len(acks),
        "failed": failed,
    }
