"""SIGKILL the daemon at seeded random moments across one long stream of MOs and receipts.

The daemon runs as a real process (``python -m gatewayd run``); the SMSC simulator and a
webhook receiver that fails a random 30% of requests run in this test process, in real
time, with deadlines on every wait. After the last restart every event the simulator saw
acknowledged must be delivered (answered 2xx), and a second 2xx for the same event is only
allowed for an attempt that was in flight when a kill landed.
"""

from __future__ import annotations

import collections
import datetime as dt
import itertools
import json
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from gatewayd.smpp import pdu as P
from gatewayd.smpp.simulator import Simulator, SimulatorSettings, receipt_text
from gatewayd.webhook_receiver import ReceivedRequest, Reply, open_webhook_receiver
from tests.e2e.helpers import free_port

pytestmark = pytest.mark.slow

SEED = 20240607
N_MO = 2500
N_DLR = 800
KILLS = 22
CONCURRENCY = 4  # per destination
FAIL_RATE = 0.3


def write_config(path: Path, sim_port: int, rx_url: str) -> None:
    path.write_text(
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
                reconnect: {{min: 50ms, max: 200ms}}
            destinations:
              crm:
                type: url
                url: {rx_url}/mo
                timeout: 5s
                concurrency: {CONCURRENCY}
                retry: {{attempts: 1000, interval: 150ms}}
              status:
                type: url
                url: {rx_url}/dlr
                timeout: 5s
                concurrency: {CONCURRENCY}
                retry: {{attempts: 1000, interval: 150ms}}
            routes:
              a2p: crm
              delivery: status
            drain_grace: 1s
            api: {{listen: "127.0.0.1:{free_port()}"}}
            """
        ),
        encoding="utf-8",
    )


@attrs.frozen
class Answer:
    destination: str  # "mo" or "dlr"
    key: str  # the simulator's key: "TEXT n" or "dlr:<id>"
    status: int
    at: float


def receipt(message_id: str) -> tuple[dict[str, int | bytes | str], tuple[P.Tlv, ...]]:
    when = dt.datetime(2026, 1, 2, 3, 4, tzinfo=dt.UTC)
    fields: dict[str, int | bytes | str] = {
        "source_addr_ton": 1,
        "source_addr_npi": 1,
        "source_addr": "447700900123",
        "dest_addr_ton": 0,
        "dest_addr_npi": 1,
        "destination_addr": "12345",
        "esm_class": 0x04,  # SMSC delivery receipt (SMPP 3.4 §5.2.12)
        "data_coding": 0,
        "short_message": receipt_text(message_id, "DELIVRD", when, when, "hello"),
    }
    tlvs = (
        P.Tlv(tag=0x001E, value=message_id.encode("latin-1") + b"\0"),  # receipted_message_id
        P.Tlv(tag=0x0427, value=bytes([2])),  # message_state DELIVERED
    )
    return fields, tlvs


def task_stacks(match: str) -> list[str]:
    """The await chains of this trio run's tasks that mention ``match`` (for a hang)."""
    found: list[str] = []

    def walk(task: trio.lowlevel.Task) -> None:
        frames: list[str] = []
        coro: Any = task.coro
        while coro is not None:
            frame = getattr(coro, "cr_frame", None) or getattr(coro, "ag_frame", None)
            if frame is None:
                break
            name = frame.f_code.co_filename.rsplit("/", 1)[-1]
            frames.append(f"{name}:{frame.f_lineno}:{frame.f_code.co_name}")
            coro = getattr(coro, "cr_await", None) or getattr(coro, "ag_await", None)
        if any(match in f for f in frames):
            found.append(" > ".join(frames[-6:]))
        for nursery in task.child_nurseries:
            for child in nursery.child_tasks:
                walk(child)

    root = trio.lowlevel.current_root_task()
    if root is not None:
        walk(root)
    return found


def stuck_report(sim: Simulator, answers: list[Answer], kills: int, where: Path) -> str:
    expected = {f"TEXT {i}" for i in range(1, N_MO + 1)} | {f"dlr:K{i:07d}" for i in range(N_DLR)}
    got = {a.key for a in answers if 200 <= a.status < 300}
    unacked = sorted(expected - set(sim.acked))
    lines = [
        f"stuck after {kills} kills: acked {len(sim.acked)}/{len(expected)}, "
        f"delivered {len(got)}; acked, not delivered: {sorted(set(sim.acked) - got)[:10]}; "
        f"never acked: {unacked[:10]}; daemon logs in {where}",
        *(f"  {k} attempts: {[d for d in sim.deliveries if d.key == k]}" for k in unacked[:5]),
        *(f"  task: {stack}" for stack in task_stacks("deliver")),
    ]
    return "\n".join(lines)


async def test_twenty_sigkills_lose_nothing_acknowledged(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    rx_rng = random.Random(SEED + 1)
    total = N_MO + N_DLR
    sim = Simulator(
        SimulatorSettings(
            port=0,
            password="pw",
            mo=N_MO,
            window=10,
            resend_delay=0.2,
            resend_attempts=100_000,
        )
    )
    answers: list[Answer] = []

    def answer(req: ReceivedRequest) -> Reply:
        body = json.loads(req.body)
        if req.path == "/mo":
            key = body["text"]
        else:
            key = "dlr:" + body["message_id"]
        status = 503 if rx_rng.random() < FAIL_RATE else 200
        answers.append(Answer(req.path[1:], key, status, trio.current_time()))
        return Reply(status=status)

    receipts_done = trio.Event()

    async def send_receipts() -> None:
        limiter = trio.CapacityLimiter(4)

        async def one(i: int) -> None:
            try:
                mid = f"K{i:07d}"
                fields, tlvs = receipt(mid)
                await sim.deliver(f"dlr:{mid}", fields, tlvs)
            finally:
                limiter.release_on_behalf_of(i)

        async with trio.open_nursery() as nursery:
            for i in range(N_DLR):
                await limiter.acquire_on_behalf_of(i)
                nursery.start_soon(one, i)
        receipts_done.set()

    def bound_count() -> int:
        return sum(1 for b in sim.binds if b[2] == P.ESME_ROK)

    kill_times: list[float] = []
    progress: list[int] = []  # events acknowledged at each kill
    logs: list[Path] = []

    async def start_daemon(config: Path) -> trio.Process:
        log = tmp_path / f"daemon-{len(logs)}.log"
        logs.append(log)
        with log.open("wb") as err:
            return await trio.lowlevel.open_process(
                [sys.executable, "-m", "gatewayd", "run", "--config", str(config)],
                stdout=subprocess.DEVNULL,
                stderr=err,
            )

    # Kill points spread over the whole stream (by progress), each with a random delay.
    thresholds = sorted(int(rng.uniform(0.02, 0.8) * total) for _ in range(KILLS))
    async with open_webhook_receiver() as rx, trio.open_nursery() as nursery:
        rx.respond_with(answer)
        port = await nursery.start(sim.serve)
        config = tmp_path / "gatewayd.yaml"
        write_config(config, port, rx.url)
        nursery.start_soon(send_receipts)
        with trio.move_on_after(150) as deadline:
            proc = await start_daemon(config)
            for threshold in thresholds:
                binds_before = bound_count()
                if rng.random() < 0.15:
                    # during start-up: maybe before the bind, maybe while restoring
                    await trio.sleep(rng.uniform(0.05, 0.6))
                else:
                    while bound_count() <= binds_before or len(sim.acked) < threshold:
                        assert proc.returncode is None, logs[-1].read_text()
                        await trio.sleep(0.005)
                    await trio.sleep(rng.uniform(0.0, 0.15))
                proc.send_signal(signal.SIGKILL)
                await proc.wait()
                # Requests the dead process wrote before it died may still sit in the
                # receiver's socket buffers: let the receiver answer them before taking
                # the kill's time, or an attempt in flight at this kill (answered, never
                # recorded) would look answered after it, its resend an unexplained dup.
                await trio.testing.wait_all_tasks_blocked(cushion=0.05)
                kill_times.append(trio.current_time())
                progress.append(len(sim.acked))
                proc = await start_daemon(config)
            await sim.mo_done.wait()
            await receipts_done.wait()
            acked = set(sim.acked)
            assert len(acked) == total  # everything was eventually acknowledged

            def delivered() -> set[str]:
                return {a.key for a in answers if 200 <= a.status < 300}

            while delivered() != acked:
                assert proc.returncode is None, logs[-1].read_text()
                await trio.sleep(0.05)
            await trio.sleep(1.0)  # anything more now would be an unexplained duplicate
            proc.send_signal(signal.SIGTERM)
            assert await proc.wait() == 0
        if deadline.cancelled_caught:
            proc.kill()
            pytest.fail(stuck_report(sim, answers, len(kill_times), tmp_path))
        nursery.cancel_scope.cancel()

    assert len(kill_times) == KILLS >= 20
    assert progress[-1] < total  # every kill landed while the stream was still flowing
    ok = [a for a in answers if 200 <= a.status < 300]
    failed = [a for a in answers if a.status == 503]
    assert len(failed) >= 0.2 * len(answers)  # the receiver really failed part of the time
    assert {a.key for a in ok if a.destination == "mo"} == {f"TEXT {i}" for i in range(1, 1 + N_MO)}
    assert {a.key for a in ok if a.destination == "dlr"} == {f"dlr:K{i:07d}" for i in range(N_DLR)}

    # Duplicates: a second 2xx for an event, allowed only across a kill (the attempt was in
    # flight: answered, but not yet recorded when the process died).
    by_key: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
    for a in ok:
        by_key[(a.destination, a.key)].append(a.at)
    duplicates = collections.Counter[str]()
    for (destination, _), times in by_key.items():
        for first, again in itertools.pairwise(times):
            assert any(first <= k <= again for k in kill_times), (destination, times, kill_times)
            duplicates[destination] += 1
    for destination in ("mo", "dlr"):
        assert duplicates[destination] <= KILLS * CONCURRENCY, duplicates

    # The store holds each acknowledged event exactly once, every job delivered.
    db = sqlite3.connect(tmp_path / "gw.db")
    try:
        assert db.execute("SELECT count(*) FROM events").fetchone() == (total,)
        states = dict(db.execute("SELECT state, count(*) FROM jobs GROUP BY state").fetchall())
        assert states == {"delivered": total}
    finally:
        db.close()
    print(
        f"kills={len(kill_times)} events={total} requests={len(answers)} "
        f"503s={len(failed)} duplicates={dict(duplicates)} acked_at_kills={progress}"
    )
