"""Store faults: the database runs out of space (a full filesystem, or SQLite's page cap).

While nothing can be committed, every deliver_sm is answered with the temporary error
(ESME_RX_T_APPN) and the SMSC resends it; what was acknowledged before stays queued and
is delivered; once space is back everything recovers by itself, with no duplicate.
In process under the autojump clock, the store inline.
"""

from __future__ import annotations

import collections
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from gatewayd.smpp import pdu as P
from gatewayd.smpp.simulator import Simulator, SimulatorSettings
from gatewayd.store import JobState, SqliteStore
from gatewayd.webhook_receiver import ReceivedRequest, Reply, open_webhook_receiver
from tests.faults.harness import (
    carrier_yaml,
    config_yaml,
    daemon_running,
    mo_fields,
    wait_until,
)

BEFORE = 5  # MOs acknowledged before the disk fills (their webhook is down meanwhile)
DURING = 6  # MOs the SMSC offers while it is full
BIG = 5000  # characters per MO: every event needs fresh pages


def big_mo(i: int) -> tuple[str, dict[str, int | bytes | str], tuple[P.Tlv, ...]]:
    text = f"MO {i:02d} " + "x" * BIG
    fields = mo_fields("")
    fields["short_message"] = b""
    return text, fields, (P.Tlv(tag=0x0424, value=text.encode("latin-1")),)  # message_payload


class CappedStore(SqliteStore):
    """A real store whose write connection can be capped with ``PRAGMA max_page_count``."""

    def cap(self) -> None:
        (pages,) = self._wconn.execute("PRAGMA page_count").fetchone()
        self._wconn.execute(f"PRAGMA max_page_count = {pages}")

    def uncap(self) -> None:
        self._wconn.execute("PRAGMA max_page_count = 1073741823")


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 16 MB tmpfs (root only; skipped where mounting is not allowed)."""
    mnt = tmp_path / "fs"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(directory: Path) -> Path:
    """Write a file until the filesystem has no byte left."""
    filler = directory / "filler"
    with filler.open("wb", buffering=0) as f:
        for chunk in (1 << 20, 1 << 16, 1 << 12, 1 << 9, 1):
            try:
                while True:
                    f.write(b"\0" * chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
    return filler


async def full_store_scenario(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    *,
    store: str,
    factory: Any,
    make_full: Any,
    make_room: Any,
) -> None:
    sim = Simulator(
        SimulatorSettings(port=0, password="pw", resend_delay=5.0, resend_attempts=1000)
    )
    healthy = False
    delivered: collections.Counter[str] = collections.Counter()

    def answer(req: ReceivedRequest) -> Reply:
        if not healthy:
            return Reply(status=503)
        delivered[req.json()["text"][:5]] += 1
        return Reply(status=200)

    async with open_webhook_receiver() as rx, trio.open_nursery() as nursery:
        rx.respond_with(answer)
        port = await nursery.start(sim.serve)
        text = config_yaml(
            carrier_yaml(port),
            f"""\
            destinations:
              crm:
                type: url
                url: {rx.url}/crm
                retry: {{attempts: 100, interval: 10s}}
            routes:
              a2p: crm
            drain_grace: 1s
            """,
            store=store,
        )
        async with daemon_running(tmp_path, text, store_factory=factory) as run:
            with trio.fail_after(600):
                for i in range(BEFORE):
                    key, fields, tlvs = big_mo(i)
                    assert await sim.deliver(key, fields, tlvs) == P.ESME_ROK
                await rx.wait_for(BEFORE)  # first attempts failed: retries are queued
                make_full(run.store)
                async with trio.open_nursery() as offers:
                    for i in range(BEFORE, BEFORE + DURING):
                        offers.start_soon(sim.deliver, *big_mo(i))
                    # every offer is refused with the temporary error, twice, while full
                    while not all(
                        sum(1 for d in sim.deliveries if d.key == big_mo(i)[0]) >= 2
                        for i in range(BEFORE, BEFORE + DURING)
                    ):
                        await trio.sleep(1)
                    await trio.sleep(30)  # retries of the stored jobs fail to record, too
                    # every temporary error the daemon answered has reached the SMSC (each
                    # crosses a real socket): none is still on its way when space is back
                    await wait_until(
                        lambda: (
                            len(sim.deliveries) - BEFORE >= run.daemon.acks.get(P.ESME_RX_T_APPN, 0)
                        )
                    )
                    full_status = [d.status for d in sim.deliveries[BEFORE:]]
                    make_room(run.store)
                    healthy = True
                while len(delivered) < BEFORE + DURING:
                    await trio.sleep(1)
                # the SMSC has read its acks (a webhook can be out before the last one is)
                await wait_until(lambda: len(sim.acked) >= BEFORE + DURING)
            await trio.sleep(60)  # nothing more arrives
            stats = await run.store.stats()
            assert stats.events == BEFORE + DURING
            assert {(c.state, c.count) for c in stats.jobs} == {
                (JobState.DELIVERED, BEFORE + DURING)
            }
            assert run.daemon.acks[P.ESME_RX_T_APPN] == len(full_status)
        nursery.cancel_scope.cancel()

    failures = {r.getMessage() for r in caplog.records if r.name == "gatewayd.store"}
    assert failures
    assert all("database or disk is full" in m for m in failures), failures
    assert set(full_status) == {P.ESME_RX_T_APPN}  # nothing acknowledged while full
    assert len(full_status) >= 2 * DURING
    assert len(sim.acked) == BEFORE + DURING  # the SMSC's resends got in once space was back
    assert delivered == collections.Counter(f"MO {i:02d}" for i in range(BEFORE + DURING))


async def test_full_filesystem_answers_temporary_error_and_recovers(
    tmp_path: Path,
    small_fs: Path,
    caplog: pytest.LogCaptureFixture,
    autojump_clock: trio.testing.MockClock,
) -> None:
    filler: list[Path] = []

    def make_full(store: SqliteStore) -> None:
        filler.append(fill(small_fs))

    def make_room(store: SqliteStore) -> None:
        filler[0].unlink()

    await full_store_scenario(
        tmp_path,
        caplog,
        store=str(small_fs / "gw.db"),
        factory=SqliteStore,
        make_full=make_full,
        make_room=make_room,
    )


async def test_page_cap_answers_temporary_error_and_recovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, autojump_clock: trio.testing.MockClock
) -> None:
    def make_full(store: SqliteStore) -> None:
        assert isinstance(store, CappedStore)
        store.cap()

    def make_room(store: SqliteStore) -> None:
        assert isinstance(store, CappedStore)
        store.uncap()

    await full_store_scenario(
        tmp_path,
        caplog,
        store="./gw.db",
        factory=CappedStore,
        make_full=make_full,
        make_room=make_room,
    )
