"""SqliteStore: group commit, ack-after-persist failure handling, jobs, history."""

from __future__ import annotations

import datetime as dt
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path

import attrs
import pytest
import trio
import trio.testing

from gatewayd.destinations.base import AttemptResult, Outcome
from gatewayd.events import Address, MessageClass, MoMessage, new_event_id
from gatewayd.store import (
    ClaimedJob,
    ConcatPart,
    EventNotFound,
    EventStatus,
    JobState,
    MessagePartRecord,
    MessageRecord,
    PersistItem,
    PersistStatus,
    RecordItem,
    SqliteStore,
    StoreClosed,
    StoreError,
    Synchronous,
)

WALL0 = 1_700_000_000.0


class FakeWall:
    """A wall clock the test moves by hand."""

    def __init__(self, t: float = WALL0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def make_mo(
    text: str = "hello", *, source: str = "4915112345678", dest: str = "12345678"
) -> MoMessage:
    return MoMessage(
        id=new_event_id(),
        carrier="acme",
        source=Address(addr=source, ton=1, npi=1),
        destination=Address(addr=dest),
        text=text,
        raw=text.encode(),
        data_coding=0,
        message_class=MessageClass.A2P,
        received_at=dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
    )


def item(event: MoMessage | None = None, *dests: str, dedup: str | None = None) -> PersistItem:
    return PersistItem(
        event=event if event is not None else make_mo(),
        destinations=dests or ("crm",),
        dedup_key=dedup,
    )


@pytest.fixture
def wall() -> FakeWall:
    return FakeWall()


@pytest.fixture
async def store(tmp_path: Path, wall: FakeWall) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(tmp_path / "g.db", wall_clock=wall, busy_timeout=0)
    async with trio.open_nursery() as nursery:
        await nursery.start(s.run)
        yield s
        nursery.cancel_scope.cancel()
    s.close()


async def test_persist_stores_event_and_jobs(store: SqliteStore, wall: FakeWall) -> None:
    mo = make_mo("héllo ✓")
    res = await store.persist(item(mo, "crm", "legacy"))
    assert res.status is PersistStatus.STORED
    assert res.event_id == mo.id
    assert len(res.job_ids) == 2
    rec = await store.get_event(mo.id)
    assert rec.event == mo
    assert rec.status is EventStatus.PENDING
    assert rec.created_at == wall.t
    assert [(j.destination, j.state, j.attempts) for j in rec.jobs] == [
        ("crm", JobState.QUEUED, 0),
        ("legacy", JobState.QUEUED, 0),
    ]
    assert rec.attempts == ()


async def test_event_without_destinations_is_unrouted(store: SqliteStore) -> None:
    mo = make_mo()
    await store.persist(PersistItem(event=mo))
    assert (await store.get_event(mo.id)).status is EventStatus.UNROUTED


async def test_group_commit_batches_concurrent_persists(store: SqliteStore) -> None:
    results: list[PersistStatus] = []

    async def one() -> None:
        results.append((await store.persist(item())).status)

    before = store.batches
    async with trio.open_nursery() as nursery:
        for _ in range(200):
            nursery.start_soon(one)
    assert results == [PersistStatus.STORED] * 200
    assert store.batches - before < 20  # not one transaction per item
    assert (await store.stats()).events == 200


async def test_duplicate_within_window(store: SqliteStore, wall: FakeWall) -> None:
    first = await store.persist(item(dedup="k1"))
    again = await store.persist(item(dedup="k1"))
    assert again.status is PersistStatus.DUPLICATE
    assert again.event_id == first.event_id
    assert again.job_ids == ()
    wall.t += store.dedup_window + 1
    later = await store.persist(item(dedup="k1"))
    assert later.status is PersistStatus.STORED
    assert (await store.stats()).events == 2


async def test_duplicates_in_one_batch(store: SqliteStore) -> None:
    statuses: list[PersistStatus] = []

    async def one() -> None:
        statuses.append((await store.persist(item(dedup="same"))).status)

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(one)
    assert sorted(s.value for s in statuses) == ["duplicate"] * 4 + ["stored"]


async def test_same_event_twice_is_duplicate(store: SqliteStore) -> None:
    mo = make_mo()
    await store.persist(item(mo))
    res = await store.persist(item(mo))
    assert res.status is PersistStatus.DUPLICATE
    assert len((await store.get_event(mo.id)).jobs) == 1


async def test_concat_parts(store: SqliteStore) -> None:
    part = ConcatPart(key="acme:491:7", seq=1, json='{"t":"a"}')
    res = await store.persist(PersistItem(event=None, concat_part=part))
    assert res.status is PersistStatus.STORED
    res = await store.persist(PersistItem(event=None, concat_part=part))
    assert res.status is PersistStatus.DUPLICATE
    await store.persist(
        PersistItem(event=None, concat_part=ConcatPart(key="other", seq=2, json="{}"))
    )
    parts = await store.load_concat_parts("acme:491:7")
    assert [(p.key, p.seq, p.json) for p in parts] == [("acme:491:7", 1, '{"t":"a"}')]
    assert len(await store.load_concat_parts()) == 2
    assert (await store.stats()).concat_parts == 2
    # The last part completes the set: the event and its jobs, and the set goes.
    mo = make_mo("ab")
    await store.persist(
        PersistItem(event=mo, destinations=("crm",), completed_concat_keys=("acme:491:7",))
    )
    assert [p.key for p in await store.load_concat_parts()] == ["other"]
    with pytest.raises(ValueError, match="jobs need an event"):
        await store.persist(PersistItem(event=None, destinations=("crm",)))


async def test_locked_database_fails_the_whole_batch_then_recovers(
    store: SqliteStore, tmp_path: Path
) -> None:
    blocker = sqlite3.connect(tmp_path / "g.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another writer holds the lock
    errors: list[str] = []

    async def one() -> None:
        try:
            await store.persist(item())
        except StoreError as exc:
            errors.append(str(exc))

    async with trio.open_nursery() as nursery:
        for _ in range(10):
            nursery.start_soon(one)
    assert len(errors) == 10
    assert all("locked" in e for e in errors)
    blocker.execute("ROLLBACK")
    blocker.close()
    res = await store.persist(item())  # the writer kept going
    assert res.status is PersistStatus.STORED
    assert (await store.stats()).events == 1


async def test_disk_full_fails_the_whole_batch_then_recovers(store: SqliteStore) -> None:
    conn = store._wconn  # a test hook: cap the file at its current size
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages}")
    big = "x" * 50_000
    outcomes: list[str] = []

    async def one(text: str) -> None:
        try:
            await store.persist(item(make_mo(text)))
            outcomes.append("ok")
        except StoreError as exc:
            outcomes.append(str(exc))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(one, "small")
        nursery.start_soon(one, big)
    assert len(outcomes) == 2
    assert all("full" in o for o in outcomes)  # the small one too: it shared the batch
    assert (await store.stats()).events == 0
    conn.execute("PRAGMA max_page_count = 1073741823")
    await one(big)
    assert outcomes[-1] == "ok"


async def test_claim_record_retry_and_history(store: SqliteStore, wall: FakeWall) -> None:
    mo = make_mo()
    (job_id,) = (await store.persist(item(mo, "crm"))).job_ids
    assert await store.next_due_at("crm") == wall.t
    assert await store.next_due_at("other") is None
    claimed = await store.claim_due("crm", wall.t, 10)
    assert [c.job.id for c in claimed] == [job_id]
    assert claimed[0].job.attempt == 1
    assert claimed[0].event == mo
    assert await store.claim_due("crm", wall.t, 10) == []  # in flight: not claimed twice
    assert await store.next_due_at("crm") is None

    wall.t += 1
    long_answer = "é" * 2000
    await store.record_attempt(
        job_id,
        AttemptResult(
            outcome=Outcome.RETRY,
            target="https://crm.example/in",
            status_code=503,
            latency_ms=12.5,
            error="HTTP 503",
            response_excerpt=long_answer,
        ),
        next_at=wall.t + 1800,
    )
    assert await store.claim_due("crm", wall.t + 1799, 10) == []
    assert await store.next_due_at("crm") == wall.t + 1800
    rec = await store.get_event(mo.id)
    assert rec.status is EventStatus.RETRYING
    assert rec.jobs[0].state is JobState.QUEUED
    assert rec.jobs[0].attempts == 1
    assert rec.jobs[0].last_error == "HTTP 503"
    (attempt,) = rec.attempts
    assert attempt.attempt == 1
    assert attempt.status_code == 503
    assert attempt.target == "https://crm.example/in"
    assert attempt.outcome == "retry"
    assert attempt.at == wall.t
    assert len(attempt.response_excerpt.encode()) <= 1024
    assert long_answer.startswith(attempt.response_excerpt)

    (again,) = await store.claim_due("crm", wall.t + 1800, 10)
    assert again.job.attempt == 2
    await store.record_attempt(
        job_id,
        AttemptResult(outcome=Outcome.DELIVERED, status_code=200),
        next_at=None,
        final_state=JobState.DELIVERED,
    )
    rec = await store.get_event(mo.id)
    assert rec.status is EventStatus.DELIVERED
    assert [a.attempt for a in rec.attempts] == [1, 2]
    with pytest.raises(ValueError, match="next_at"):
        await store.record_attempt(job_id, AttemptResult(outcome=Outcome.RETRY), next_at=None)
    with pytest.raises(LookupError):
        await store.record_attempt(999, AttemptResult(outcome=Outcome.RETRY), next_at=wall.t)


async def test_claim_respects_limit_and_order(store: SqliteStore, wall: FakeWall) -> None:
    ids: list[int] = []
    for _ in range(5):
        ids += (await store.persist(item())).job_ids
        wall.t += 1
    first = await store.claim_due("crm", wall.t, 2)
    assert [c.job.id for c in first] == ids[:2]
    rest = await store.claim_due("crm", wall.t, 10)
    assert [c.job.id for c in rest] == ids[2:]
    await store.release([ids[0]])
    assert [c.job.id for c in await store.claim_due("crm", wall.t, 10)] == [ids[0]]


async def test_restart_requeues_inflight_jobs(tmp_path: Path, wall: FakeWall) -> None:
    path = tmp_path / "g.db"
    s = SqliteStore(path, wall_clock=wall)
    mo = make_mo()
    (job_id,) = (await s.persist(item(mo))).job_ids  # writer not running: direct write
    (claimed,) = await s.claim_due("crm", wall.t, 1)
    await s.record_attempt(
        job_id, AttemptResult(outcome=Outcome.RETRY, error="boom"), next_at=wall.t
    )
    (claimed,) = await s.claim_due("crm", wall.t, 1)
    assert claimed.job.attempt == 2
    s.close()  # "crash" with the job in flight

    s2 = SqliteStore(path, wall_clock=wall)
    assert await s2.claim_due("crm", wall.t, 1) == []  # opening alone changes nothing
    async with trio.open_nursery() as nursery:
        await nursery.start(s2.run)
        (again,) = await s2.claim_due("crm", wall.t, 1)
        assert again.job.id == job_id
        assert again.job.attempt == 2  # the attempt count is kept
        nursery.cancel_scope.cancel()
    s2.close()


async def test_replay_and_replay_dead(store: SqliteStore, wall: FakeWall) -> None:
    mo = make_mo()
    crm, legacy = (await store.persist(item(mo, "crm", "legacy"))).job_ids
    for dest in ("crm", "legacy"):
        await store.claim_due(dest, wall.t, 1)
    await store.record_attempt(
        crm, AttemptResult(outcome=Outcome.DELIVERED), next_at=None, final_state=JobState.DELIVERED
    )
    await store.record_attempt(
        legacy,
        AttemptResult(outcome=Outcome.PERMANENT, error="410"),
        next_at=None,
        final_state=JobState.DEAD,
    )
    assert (await store.get_event(mo.id)).status is EventStatus.DEAD

    notified: list[str] = []
    store.add_job_listener(notified.append)
    new = await store.replay(mo.id, "crm")
    assert len(new) == 1
    assert notified == ["crm"]
    rec = await store.get_event(mo.id)
    assert rec.status is EventStatus.PENDING  # work left: the new crm job
    assert len(rec.jobs) == 3
    assert [j.state for j in rec.jobs if j.destination == "legacy"] == [JobState.DEAD]

    assert await store.replay_dead("crm") == 0
    assert await store.replay_dead() == 1
    assert notified == ["crm", "legacy"]
    assert await store.replay_dead() == 0  # a replayed dead job is not replayed again
    rec = await store.get_event(mo.id)
    assert rec.status is EventStatus.PENDING
    dead = [j for j in rec.jobs if j.state is JobState.DEAD]
    assert dead[0].replayed_by is not None
    all_again = await store.replay(mo.id)
    assert len(all_again) == 2
    store.remove_job_listener(notified.append)
    with pytest.raises(EventNotFound):
        await store.replay("no-such-event")
    with pytest.raises(EventNotFound):
        await store.get_event("no-such-event")


async def test_dead_letter_removed_destination(store: SqliteStore, wall: FakeWall) -> None:
    mo = make_mo()
    await store.persist(item(mo, "gone", "crm"))
    assert await store.dead_letter_destination("gone", "destination removed") == 1
    rec = await store.get_event(mo.id)
    gone = next(j for j in rec.jobs if j.destination == "gone")
    assert gone.state is JobState.DEAD
    assert gone.last_error == "destination removed"
    assert await store.claim_due("gone", wall.t, 10) == []


async def test_prune(store: SqliteStore, wall: FakeWall) -> None:
    async def finish(dest: str, state: JobState) -> str:
        mo = make_mo()
        (job,) = (await store.persist(item(mo, dest))).job_ids
        await store.claim_due(dest, wall.t, 1)
        await store.record_attempt(
            job, AttemptResult(outcome=Outcome.DELIVERED), next_at=None, final_state=state
        )
        return mo.id

    old_ok = await finish("a", JobState.DELIVERED)
    old_dead = await finish("b", JobState.DEAD)
    old_pending = (await store.persist(item(make_mo(), "c"))).event_id
    wall.t += 100
    new_ok = await finish("a", JobState.DELIVERED)
    assert await store.prune(delivered_before=wall.t - 50, dead_before=wall.t - 500) == 1
    with pytest.raises(EventNotFound):
        await store.get_event(old_ok)
    await store.get_event(old_dead)
    await store.get_event(new_ok)
    assert old_pending is not None
    await store.get_event(old_pending)  # never pruned while it has work left
    assert await store.prune(delivered_before=wall.t - 50, dead_before=wall.t - 50) == 1
    with pytest.raises(EventNotFound):
        await store.get_event(old_dead)
    assert await store.prune(delivered_before=wall.t + 1, dead_before=0, chunk=1) == 1


async def test_list_events_pages_and_filters(store: SqliteStore, wall: FakeWall) -> None:
    ids = []
    for i in range(7):
        mo = attrs.evolve(make_mo(source="111" if i % 2 else "222"), id=new_event_id(1000 + i))
        await store.persist(item(mo, "crm" if i < 5 else "other"))
        ids.append(mo.id)
        wall.t += 10
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = await store.list_events(limit=3, cursor=cursor)
        seen += [e.id for e in page.items]
        pages += 1
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == ids[::-1]  # newest first, each once
    assert pages == 3
    by_dest = await store.list_events(destination="other")
    assert [e.id for e in by_dest.items] == [ids[6], ids[5]]
    by_number = await store.list_events(number="111")
    assert {e.id for e in by_number.items} == {ids[1], ids[3], ids[5]}
    assert {e.source for e in by_number.items} == {"111"}
    since = await store.list_events(since=WALL0 + 50)
    assert [e.id for e in since.items] == [ids[6], ids[5]]
    pending = await store.list_events(status=EventStatus.PENDING, limit=100)
    assert len(pending.items) == 7
    assert pending.items[0].received_at == dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    assert (await store.list_events(status=EventStatus.DEAD)).items == ()


async def test_stats_counts_jobs_by_destination_and_state(
    store: SqliteStore, wall: FakeWall
) -> None:
    await store.persist(item(make_mo(), "a", "b"))
    await store.persist(item(make_mo(), "a"))
    await store.claim_due("a", wall.t, 1)
    stats = await store.stats()
    assert {(c.destination, c.state, c.count) for c in stats.jobs} == {
        ("a", JobState.INFLIGHT, 1),
        ("a", JobState.QUEUED, 1),
        ("b", JobState.QUEUED, 1),
    }


async def test_outbound_messages(store: SqliteStore, wall: FakeWall) -> None:
    msg = MessageRecord(
        id="m1",
        carrier="acme",
        from_number="12345678",
        to_number="4915112345678",
        text="hi",
        status_url="https://x.example/s",
        custom_json='{"ref": 7}',
        parts=2,
    )
    part1 = MessagePartRecord(
        message_id="m1", part=1, carrier="acme", carrier_message_id="0A1B", normalized_id="a1b"
    )
    await store.save_message(msg, [part1])
    await store.add_message_part(attrs.evolve(part1, part=2, normalized_id="a1c"))
    got, parts = await store.get_message("m1")
    assert got == attrs.evolve(msg, created_at=wall.t)
    assert [p.part for p in parts] == [1, 2]
    found = await store.find_message_part("acme", "a1c")
    assert found is not None
    assert found.part == 2
    assert await store.find_message_part("other", "a1c") is None
    await store.set_message_part_status("m1", 2, "DELIVRD")
    _, parts = await store.get_message("m1")
    assert parts[1].status == "DELIVRD"
    with pytest.raises(LookupError):
        await store.get_message("nope")


async def test_schema_versions(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    SqliteStore(path).close()
    SqliteStore(path).close()  # reopening migrates nothing
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT version FROM schema_version").fetchall() == [(1,)]
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    conn.execute("UPDATE schema_version SET version = 99")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="newer"):
        SqliteStore(path)


async def test_synchronous_mode_is_applied(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "g.db", synchronous="NORMAL")
    assert s._wconn.execute("PRAGMA synchronous").fetchone() == (1,)
    s.close()
    s = SqliteStore(tmp_path / "g.db")
    assert s._wconn.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL by default
    s.close()
    with pytest.raises(ValueError, match="synchronous"):
        SqliteStore(tmp_path / "g.db", synchronous="BAD")  # type: ignore[arg-type]


async def test_stopping_the_writer_fails_queued_waiters(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "g.db")
    errors: list[BaseException] = []
    writer_scope = trio.CancelScope()

    async def writer(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with writer_scope:
            await s.run(task_status=task_status)

    async def one() -> None:
        try:
            await s.persist(item())
        except StoreError as exc:
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        await nursery.start(writer)
        async with s._write_lock:  # a test hook: hold the writer off its next batch
            for _ in range(3):
                nursery.start_soon(one)
            await trio.testing.wait_all_tasks_blocked()
            writer_scope.cancel()
            await trio.testing.wait_all_tasks_blocked()
    assert len(errors) == 3
    assert all(isinstance(e, StoreClosed) for e in errors)
    s.close()


async def test_inline_mode_works(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "g.db", use_thread=False)
    async with trio.open_nursery() as nursery:
        await nursery.start(s.run)
        res = await s.persist(item())
        assert res.status is PersistStatus.STORED
        assert (await s.stats()).events == 1
        nursery.cancel_scope.cancel()
    s.close()


async def test_writer_waits_for_a_lock_off_the_event_loop(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "g.db", busy_timeout=10)
    results: list[PersistStatus] = []

    async def one() -> None:
        results.append((await s.persist(item())).status)

    async with trio.open_nursery() as nursery:
        await nursery.start(s.run)
        blocker = sqlite3.connect(tmp_path / "g.db", isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        nursery.start_soon(one)
        await trio.testing.wait_all_tasks_blocked()  # the writer waits in its thread
        assert results == []
        blocker.execute("ROLLBACK")  # the other writer goes away
        blocker.close()
        while not results:
            await trio.lowlevel.checkpoint()
        nursery.cancel_scope.cancel()
    assert results == [PersistStatus.STORED]
    s.close()


@pytest.fixture
def hops(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Every function run through ``trio.to_thread.run_sync`` (a thread hop), in order."""
    seen: list[object] = []
    real = trio.to_thread.run_sync

    async def counting(fn: object, *args: object, **kw: object) -> object:
        seen.append(fn)
        return await real(fn, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(trio.to_thread, "run_sync", counting)
    return seen


async def test_adaptive_commit_inline_while_fast_thread_while_slow(
    tmp_path: Path, hops: list[object]
) -> None:
    s = SqliteStore(tmp_path / "g.db", synchronous="OFF")  # use_thread="auto"
    async with trio.open_nursery() as nursery:
        await nursery.start(s.run)
        base = s.inline_commits  # requeue_inflight at start
        for _ in range(5):
            await s.persist(item())
        assert s.inline_commits == base + 5
        assert not hops  # fast commits: no thread hop
        for _ in range(50):  # the disk turns slow: p90 over 2 ms
            s._note_commit_time(0.01)
        await s.persist(item())
        assert s.inline_commits == base + 5
        assert len(hops) == 1  # committed in a thread
        for _ in range(50):  # fast again
            s._note_commit_time(0.0001)
        await s.persist(item())
        assert s.inline_commits == base + 6
        assert len(hops) == 1
        nursery.cancel_scope.cancel()
    s.close()
    assert SqliteStore(tmp_path / "t.db", use_thread=True)._commit_inline() is False
    assert SqliteStore(tmp_path / "i.db", use_thread=False)._commit_inline() is True


async def test_point_reads_inline_while_fast_other_reads_in_a_thread(
    tmp_path: Path, hops: list[object]
) -> None:
    s = SqliteStore(tmp_path / "g.db", synchronous="OFF")  # use_thread="auto"
    async with trio.open_nursery() as nursery:
        await nursery.start(s.run)
        await s.persist(item())
        hops.clear()
        assert await s.next_due_at("crm") is not None
        assert await s.find_message_part("acme", "123") is None
        with pytest.raises(LookupError):
            await s.get_message("nope")
        assert (s.inline_reads, hops) == (3, [])  # point lookups: no thread hop
        assert len((await s.list_events()).items) == 1
        assert len(hops) == 1  # a listing always takes the thread
        for _ in range(50):  # reads turn slow: p90 over 1 ms
            s._read_times.note(0.01)
        await s.next_due_at("crm")
        assert (s.inline_reads, len(hops)) == (3, 2)
        for _ in range(50):  # the thread read's own time counts too: fast again
            await s.next_due_at("crm")
        assert s._read_times.fast()
        assert s.inline_reads > 3
        nursery.cancel_scope.cancel()
    s.close()
    assert SqliteStore(tmp_path / "t.db", use_thread=True)._read_inline() is False
    assert SqliteStore(tmp_path / "i.db", use_thread=False)._read_inline() is True


async def test_record_attempts_records_a_batch_in_one_write(
    store: SqliteStore, wall: FakeWall
) -> None:
    ids = [(await store.persist(item())).event_id for _ in range(3)]
    claimed = await store.claim_due("crm", wall(), 10)
    assert len(claimed) == 3
    batches = store.batches
    ok = AttemptResult(outcome=Outcome.DELIVERED, status_code=200)
    bad = AttemptResult(outcome=Outcome.RETRY, status_code=503, error="HTTP 503")
    await store.record_attempts(
        [
            RecordItem(
                job_id=claimed[0].job.id, result=ok, next_at=None, final_state=JobState.DELIVERED
            ),
            RecordItem(job_id=claimed[1].job.id, result=bad, next_at=wall() + 60),
            RecordItem(job_id=999_999, result=ok, next_at=None, final_state=JobState.DELIVERED),
            RecordItem(
                job_id=claimed[2].job.id, result=bad, next_at=None, final_state=JobState.DEAD
            ),
        ]
    )
    assert store.batches == batches + 1  # one write for all of them
    statuses = [(await store.get_event(i)).status for i in ids if i is not None]
    assert statuses == [EventStatus.DELIVERED, EventStatus.RETRYING, EventStatus.DEAD]
    second = (await store.get_event(ids[1] or "")).jobs[0]
    assert (second.state, second.attempts, second.next_at) == (JobState.QUEUED, 1, wall() + 60)
    with pytest.raises(ValueError):
        await store.record_attempts([RecordItem(job_id=1, result=bad, next_at=None)])


@attrs.define
class FakeTaker:
    """Takes every job for ``take`` while ``room`` lasts."""

    take: str = "crm"
    room: int = 100
    accepted: list[ClaimedJob] = attrs.field(factory=list)
    cancelled: int = 0

    def reserve(self, destination: str) -> object | None:
        if destination != self.take or self.room <= 0:
            return None
        self.room -= 1
        return destination

    def accept(self, token: object, job: ClaimedJob) -> None:
        self.accepted.append(job)

    def cancel(self, token: object) -> None:
        self.cancelled += 1


async def test_handed_off_jobs_are_in_flight_and_requeued_after_a_crash(
    tmp_path: Path, wall: FakeWall
) -> None:
    path = tmp_path / "g.db"
    s = SqliteStore(path, wall_clock=wall)
    taker = FakeTaker(room=1)
    notified: list[str] = []
    s.set_job_taker(taker)
    s.add_job_listener(notified.append)
    async with trio.open_nursery() as nursery:
        await nursery.start(s.run)
        mo = make_mo()
        result = await s.persist(item(mo, "crm", "crm", "log"))
        # one job taken in memory (room for one), the others queued and notified
        assert [(c.job.id, c.job.attempt, c.event) for c in taker.accepted] == [
            (result.job_ids[0], 1, mo)
        ]
        assert notified == ["crm", "log"]
        jobs = (await s.get_event(mo.id)).jobs
        assert [j.state for j in jobs] == [JobState.INFLIGHT, JobState.QUEUED, JobState.QUEUED]
        assert (await s.get_event(mo.id)).status is EventStatus.PENDING
        claimed = await s.claim_due("crm", wall(), 10)
        assert [c.job.id for c in claimed] == [result.job_ids[1]]  # never claimed twice
        # a duplicate reserves nothing
        await s.persist(item(mo, "crm"))
        assert len(taker.accepted) == 1
        assert taker.cancelled == 0
        nursery.cancel_scope.cancel()  # crash before the attempt is recorded
    s.close()
    s2 = SqliteStore(path, wall_clock=wall)
    async with trio.open_nursery() as nursery:
        await nursery.start(s2.run)
        again = await s2.claim_due("crm", wall(), 10)
        assert sorted(c.job.id for c in again) == sorted(result.job_ids[:2])
        nursery.cancel_scope.cancel()
    s2.close()


async def test_a_failed_commit_cancels_its_hand_offs(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    taker = FakeTaker()
    store.set_job_taker(taker)
    real = store._run_commit

    async def failing() -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(store, "_run_commit", failing)
    mo = make_mo()
    with pytest.raises(StoreError):
        await store.persist(item(mo))
    assert taker.accepted == []
    assert taker.cancelled == 1
    monkeypatch.setattr(store, "_run_commit", real)
    await store.persist(item(mo))
    assert [c.event for c in taker.accepted] == [mo]
    assert taker.cancelled == 1


async def test_ping_fails_while_another_process_holds_the_write_lock(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "ping.db", use_thread=False, busy_timeout=0.05)
    try:
        await store.ping()
        blocker = sqlite3.connect(tmp_path / "ping.db", isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        with pytest.raises(StoreError):
            await store.ping()
        blocker.execute("ROLLBACK")
        blocker.close()
        await store.ping()
    finally:
        store.close()


# The event status is computed in SQL (one statement per event); this is its spec.
def _summarize(rows: Iterable[tuple[str, int, int | None]]) -> EventStatus:
    """The event status from its jobs' (state, attempts, replayed_by)."""
    states = [(JobState(s), a) for s, a, replayed in rows if replayed is None]
    if not states:
        return EventStatus.UNROUTED
    if any(s in (JobState.QUEUED, JobState.INFLIGHT) and a > 0 for s, a in states):
        return EventStatus.RETRYING
    if any(s in (JobState.QUEUED, JobState.INFLIGHT) for s, _ in states):
        return EventStatus.PENDING
    if any(s is JobState.DEAD for s, _ in states):
        return EventStatus.DEAD
    if all(s is JobState.DROPPED for s, _ in states):
        return EventStatus.DROPPED
    return EventStatus.DELIVERED


_JOB_VARIANTS = [
    (state.value, attempts, replayed)
    for state in JobState
    for attempts in (0, 1)
    for replayed in (None, 1)
]


@pytest.mark.parametrize("count", [0, 1, 2, 3])
def test_status_in_sql_agrees_with_summarize_on_every_mix_of_jobs(count: int) -> None:
    import itertools

    from gatewayd.store import _UPDATE_STATUS

    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE events (id TEXT PRIMARY KEY, status TEXT)")
    conn.execute(
        "CREATE TABLE jobs (id INTEGER PRIMARY KEY, event_id TEXT, state TEXT,"
        " attempts INTEGER, replayed_by INTEGER)"
    )
    combos = list(itertools.combinations_with_replacement(_JOB_VARIANTS, count))
    for n, jobs in enumerate(combos):
        event_id = f"e{n}"
        conn.execute("INSERT INTO events VALUES (?, 'x')", (event_id,))
        conn.executemany(
            "INSERT INTO jobs (event_id, state, attempts, replayed_by) VALUES (?, ?, ?, ?)",
            [(event_id, *job) for job in jobs],
        )
        conn.execute(_UPDATE_STATUS, (event_id,))
        (got,) = conn.execute("SELECT status FROM events WHERE id = ?", (event_id,)).fetchone()
        assert got == _summarize(jobs).value, jobs
    conn.close()


async def test_the_same_job_twice_in_one_batch_is_numbered_in_order(
    store: SqliteStore, wall: FakeWall
) -> None:
    mo = make_mo()
    await store.persist(item(mo))
    (claimed,) = await store.claim_due("crm", wall(), 10)
    bad = AttemptResult(outcome=Outcome.RETRY, status_code=503, error="HTTP 503")
    ok = AttemptResult(outcome=Outcome.DELIVERED, status_code=200)
    job_id = claimed.job.id
    await store.record_attempts(
        [
            RecordItem(job_id=job_id, result=bad, next_at=wall() + 60),
            RecordItem(job_id=job_id, result=ok, next_at=None, final_state=JobState.DELIVERED),
        ]
    )
    rec = await store.get_event(mo.id)
    assert [(a.attempt, a.status_code) for a in rec.attempts] == [(1, 503), (2, 200)]
    assert (rec.jobs[0].state, rec.jobs[0].attempts) == (JobState.DELIVERED, 2)
    assert rec.status is EventStatus.DELIVERED


async def test_recording_an_unknown_job_alone_raises_and_writes_nothing(
    store: SqliteStore,
) -> None:
    ok = AttemptResult(outcome=Outcome.DELIVERED, status_code=200)
    with pytest.raises(LookupError):
        await store.record_attempt(424242, ok, next_at=None, final_state=JobState.DELIVERED)
    (count,) = store._rconn.execute("SELECT COUNT(*) FROM attempts").fetchone()
    assert count == 0


async def test_a_cancelled_waiter_does_not_cancel_its_write(store: SqliteStore) -> None:
    mo = make_mo()
    with trio.CancelScope() as scope:
        scope.cancel()
        await store.persist(item(mo))  # queued, then cancelled while waiting
    assert scope.cancelled_caught
    await store.persist(item())  # the writer carried on, and committed the first one too
    assert (await store.get_event(mo.id)).status is EventStatus.PENDING


@attrs.define
class DrainAwareTaker(FakeTaker):
    """Takes jobs only once a claim has found the store drained of due jobs."""

    drained_calls: list[tuple[str, int]] = attrs.field(factory=list)
    open: bool = False

    def reserve(self, destination: str) -> object | None:
        return super().reserve(destination) if self.open else None

    def drained(self, destination: str, claimed: int) -> None:
        self.drained_calls.append((destination, claimed))
        self.open = True


async def test_a_claim_that_drains_the_queue_tells_the_taker_and_swallows_earlier_notices(
    store: SqliteStore, wall: FakeWall
) -> None:
    taker = DrainAwareTaker()
    store.set_job_taker(taker)
    notified: list[str] = []
    store.add_job_listener(notified.append)
    await store.persist(item())  # queued: the taker is not open yet
    assert notified == ["crm"]
    notified.clear()
    # One batch: a persist (queued), the claim (sees it: drained), a persist (handed over).
    first, second = make_mo(), make_mo()
    claimed: list[ClaimedJob] = []

    async def claim() -> None:
        claimed.extend(await store.claim_due("crm", wall(), 10))

    # The writer waits for the lock: all three queue up, in this order.
    async with trio.open_nursery() as nursery, store._write_lock:
        nursery.start_soon(store.persist, item(first))
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(claim)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(store.persist, item(second))
        await trio.testing.wait_all_tasks_blocked()
        batches = store.batches
    assert store.batches == batches + 1
    assert taker.drained_calls == [("crm", 2)]
    assert len(claimed) == 2
    assert [c.event for c in taker.accepted] == [second]
    assert notified == []  # the claim saw the queued job: nobody needs waking
    # A claim limited below what is due does not report the store drained.
    taker.open = False
    await store.persist(item())
    await store.persist(item())
    assert len(await store.claim_due("crm", wall(), 1)) == 1
    assert taker.drained_calls == [("crm", 2)]


# --------------------------------------------------------------------------- relaxed commits

OFF, NORMAL, FULL, EXTRA = 0, 1, 2, 3  # as PRAGMA synchronous reads them
ROOT = Path(__file__).resolve().parent.parent


def commit_modes(store: SqliteStore, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The write connection's ``PRAGMA synchronous`` at every COMMIT from now on."""
    modes: list[int] = []
    real = store._commit_now

    def commit_now() -> None:
        modes.append(store._wconn.execute("PRAGMA synchronous").fetchone()[0])
        real()

    monkeypatch.setattr(store, "_commit_now", commit_now)
    return modes


def delivered(job_id: int) -> RecordItem:
    ok = AttemptResult(outcome=Outcome.DELIVERED, status_code=200)
    return RecordItem(job_id=job_id, result=ok, next_at=None, final_state=JobState.DELIVERED)


async def test_attempt_records_and_claims_commit_relaxed(
    store: SqliteStore, wall: FakeWall, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = store.relaxed_commits  # 1: requeue_inflight when the writer started
    modes = commit_modes(store, monkeypatch)
    await store.persist(item())
    await store.persist(item())
    assert (modes, store.relaxed_commits) == ([FULL, FULL], base)
    first, second = await store.claim_due("crm", wall(), 10)
    await store.record_attempts([delivered(first.job.id)])
    await store.release([second.job.id])
    await store.requeue_inflight()
    retry = AttemptResult(outcome=Outcome.RETRY, status_code=503, error="HTTP 503")
    await store.record_attempt(second.job.id, retry, next_at=wall() + 60)
    assert modes == [FULL, FULL] + [NORMAL] * 5
    assert store.relaxed_commits == base + 5
    await store.persist(item())  # back to the configured mode
    assert modes[-1] == FULL
    assert store.relaxed_commits == base + 5
    assert (await store.get_event(first.event.id)).jobs[0].state is JobState.DELIVERED
    assert (await store.get_event(second.event.id)).jobs[0].attempts == 1


async def test_a_batch_with_a_persist_in_it_commits_full(
    store: SqliteStore, wall: FakeWall, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store.persist(item())
    (claimed,) = await store.claim_due("crm", wall(), 10)
    modes = commit_modes(store, monkeypatch)
    relaxed, batches = store.relaxed_commits, store.batches
    # The writer waits for the lock: all three queue up and commit as one batch.
    async with trio.open_nursery() as nursery, store._write_lock:
        nursery.start_soon(store.record_attempts, [delivered(claimed.job.id)])
        nursery.start_soon(store.persist, item())
        nursery.start_soon(store.claim_due, "crm", wall(), 10)
        await trio.testing.wait_all_tasks_blocked()
    assert store.batches == batches + 1
    assert modes == [FULL]
    assert store.relaxed_commits == relaxed


StrictWrite = Callable[[SqliteStore, MoMessage], Awaitable[object]]


@pytest.mark.parametrize(
    "write",
    [
        pytest.param(lambda s, mo: s.persist(item()), id="persist"),
        pytest.param(lambda s, mo: s.replay(mo.id), id="replay"),
        pytest.param(lambda s, mo: s.dead_letter_destination("crm", "removed"), id="dead_letter"),
        pytest.param(lambda s, mo: s.prune(WALL0 + 1, WALL0 + 1), id="prune"),
    ],
)
async def test_writes_that_create_or_acknowledge_data_commit_full(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch, write: StrictWrite
) -> None:
    mo = make_mo()
    await store.persist(item(mo))
    await store.requeue_inflight()  # the connection is left at NORMAL
    modes = commit_modes(store, monkeypatch)
    relaxed = store.relaxed_commits
    await write(store, mo)
    assert modes == [FULL]
    assert store.relaxed_commits == relaxed


async def test_the_pragma_is_issued_only_when_the_mode_changes(
    store: SqliteStore, wall: FakeWall
) -> None:
    await store.persist(item())  # FULL already: nothing to switch
    pragmas: list[str] = []

    def trace(sql: str) -> None:
        if sql.upper().startswith("PRAGMA SYNCHRONOUS"):
            pragmas.append(sql)

    store._wconn.set_trace_callback(trace)
    await store.persist(item())
    assert pragmas == []
    claimed = await store.claim_due("crm", wall(), 10)
    await store.record_attempts([delivered(c.job.id) for c in claimed])
    await store.persist(item())
    await store.persist(item())
    assert pragmas == ["PRAGMA synchronous = NORMAL", "PRAGMA synchronous = FULL"]


async def test_turned_off_every_commit_uses_the_configured_mode(
    tmp_path: Path, wall: FakeWall, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = SqliteStore(tmp_path / "g.db", wall_clock=wall, relax_records=False)
    modes = commit_modes(s, monkeypatch)
    async with trio.open_nursery() as nursery:
        await nursery.start(s.run)  # requeue_inflight: would be relaxed
        await s.persist(item())
        claimed = await s.claim_due("crm", wall(), 10)
        await s.record_attempts([delivered(c.job.id) for c in claimed])
        nursery.cancel_scope.cancel()
    s.close()
    assert modes == [FULL] * 4
    assert s.relaxed_commits == 0


@pytest.mark.parametrize(
    ("configured", "strict", "relaxed", "counted"),
    [
        ("EXTRA", EXTRA, NORMAL, 1),
        ("FULL", FULL, NORMAL, 1),
        ("NORMAL", NORMAL, NORMAL, 0),  # never stricter than configured, and not counted
        ("OFF", OFF, OFF, 0),
    ],
)
async def test_relaxed_batches_use_at_most_normal(
    tmp_path: Path,
    wall: FakeWall,
    monkeypatch: pytest.MonkeyPatch,
    configured: Synchronous,
    strict: int,
    relaxed: int,
    counted: int,
) -> None:
    s = SqliteStore(tmp_path / "g.db", wall_clock=wall, synchronous=configured)
    modes = commit_modes(s, monkeypatch)
    await s.persist(item())  # no writer: each write its own transaction
    await s.claim_due("crm", wall(), 10)
    s.close()
    assert modes == [strict, relaxed]
    assert s.relaxed_commits == counted


_KILLED_AFTER_RELAXED_COMMITS = """
import os, signal, sys
import trio
from gatewayd.destinations.base import AttemptResult, Outcome
from gatewayd.store import JobState, RecordItem, SqliteStore

async def main() -> None:
    store = SqliteStore(sys.argv[1])
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)  # requeue_inflight: relaxed
        (claimed,) = await store.claim_due("crm", 2e9, 10)
        ok = AttemptResult(outcome=Outcome.DELIVERED, status_code=200)
        item = RecordItem(
            job_id=claimed.job.id, result=ok, next_at=None, final_state=JobState.DELIVERED
        )
        await store.record_attempts([item])
        assert store.relaxed_commits == 3, store.relaxed_commits
        os.kill(os.getpid(), signal.SIGKILL)  # no close, no checkpoint

trio.run(main)
"""


async def test_relaxed_commits_survive_a_killed_process(tmp_path: Path, wall: FakeWall) -> None:
    path = tmp_path / "g.db"
    s = SqliteStore(path, wall_clock=wall)
    mo = make_mo()
    await s.persist(item(mo))
    s.close()
    proc = await trio.run_process(
        [sys.executable, "-c", _KILLED_AFTER_RELAXED_COMMITS, str(path)],
        cwd=ROOT,
        check=False,
        capture_stderr=True,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    assert (tmp_path / "g.db-wal").stat().st_size > 0  # the records are in the WAL only
    s = SqliteStore(path, wall_clock=wall)
    rec = await s.get_event(mo.id)
    s.close()
    assert [(j.state, j.attempts) for j in rec.jobs] == [(JobState.DELIVERED, 1)]
    assert [a.status_code for a in rec.attempts] == [200]


# ------------------------------------------------------------- pull_forward
# Which queued retries a destination that is back makes due now.

DOWN = AttemptResult(outcome=Outcome.RETRY, status_code=None, error="connection refused")
BUSY = AttemptResult(outcome=Outcome.RETRY, status_code=503, error="HTTP 503")


async def _tried(store: SqliteStore, wall: FakeWall, *results: AttemptResult) -> str:
    """An event for ``crm`` whose job was tried once per result; the last retry is 1 h on."""
    event_id = (await store.persist(item())).event_id
    assert event_id is not None
    for n, result in enumerate(results, 1):
        (claimed,) = await store.claim_due("crm", wall(), 1)
        next_at = wall() + 3600 if n == len(results) else wall()
        await store.record_attempts(
            [RecordItem(job_id=claimed.job.id, result=result, next_at=next_at)]
        )
    return event_id


async def test_only_retries_whose_last_attempt_got_no_answer_are_made_due(
    store: SqliteStore, wall: FakeWall
) -> None:
    down = await _tried(store, wall, DOWN)
    busy = await _tried(store, wall, BUSY)
    busy_then_down = await _tried(store, wall, BUSY, DOWN)
    down_then_busy = await _tried(store, wall, DOWN, BUSY)
    untried = (await store.persist(item())).event_id
    other = (await store.persist(item(None, "other"))).event_id
    assert untried is not None
    assert other is not None
    (claimed,) = await store.claim_due("other", wall(), 1)
    await store.record_attempts(
        [RecordItem(job_id=claimed.job.id, result=DOWN, next_at=wall() + 60)]
    )
    before = {e: (await store.get_event(e)).jobs[0].next_at for e in (busy, down_then_busy, other)}

    wall.t += 5
    assert await store.pull_forward("crm", 100) == 2

    for event_id in (down, busy_then_down):
        job = (await store.get_event(event_id)).jobs[0]
        assert (job.state, job.next_at) == (JobState.QUEUED, wall())
    for event_id, next_at in before.items():  # an answer, or another destination
        assert (await store.get_event(event_id)).jobs[0].next_at == next_at
    due = await store.claim_due("crm", wall(), 10)
    assert sorted(c.job.event_id for c in due) == sorted([down, busy_then_down, untried])
    assert await store.pull_forward("crm", 100) == 0  # claimed: in flight, not queued


async def test_pulls_forward_in_batches_of_limit(store: SqliteStore, wall: FakeWall) -> None:
    for _ in range(5):
        await _tried(store, wall, DOWN)
    assert [await store.pull_forward("crm", 2) for _ in range(4)] == [2, 2, 1, 0]
    assert len(await store.claim_due("crm", wall(), 10)) == 5
