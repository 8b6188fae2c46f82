"""Dispatcher: schedule, retries from the store, isolation, restart, drain, reload.

A real SqliteStore on tmp_path (inline mode: no threads, so trio's autojump clock only
moves when every task waits on time) and fake in-memory destinations.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from gatewayd.config import RetryPolicy
from gatewayd.destinations.base import AttemptResult, Job, Outcome
from gatewayd.dispatch import Dispatcher, next_attempt_at
from gatewayd.events import Event
from gatewayd.store import EventStatus, JobState, PersistItem, SqliteStore, StoreError
from tests.test_store import make_mo

WALL0 = 1_700_000_000.0
FIXED = RetryPolicy()  # 3 retries, 30 minutes apart


def wall() -> float:
    return WALL0 + trio.current_time()


def make_dispatcher(
    store: SqliteStore, dests: Mapping[str, tuple[FakeDest, RetryPolicy, int]], **kw: float
) -> Dispatcher:
    return Dispatcher(store, dests, wall_clock=wall, **kw)


@attrs.define(eq=False)
class FakeDest:
    """Answers from a script (the last answer repeats); records when it was called."""

    name: str
    answers: list[AttemptResult] = attrs.field(
        factory=lambda: [AttemptResult(outcome=Outcome.DELIVERED, status_code=200)]
    )
    delay: float = 0.0
    gate: trio.Event | None = None
    calls: list[tuple[float, int, str]] = attrs.field(factory=list)
    active: int = 0
    max_active: int = 0

    async def deliver(self, event: Event, job: Job) -> AttemptResult:
        self.calls.append((trio.current_time(), job.attempt, event.id))
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            if self.delay:
                await trio.sleep(self.delay)
            if self.gate is not None:
                await self.gate.wait()
        finally:
            self.active -= 1
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]

    async def aclose(self) -> None:
        pass


def retry(error: str = "HTTP 503", retry_after: float | None = None) -> AttemptResult:
    return AttemptResult(
        outcome=Outcome.RETRY, status_code=503, error=error, retry_after=retry_after
    )


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(tmp_path / "g.db", wall_clock=wall, use_thread=False)
    async with trio.open_nursery() as nursery:
        await nursery.start(s.run)
        yield s
        nursery.cancel_scope.cancel()
    s.close()


async def persist(store: SqliteStore, *dests: str) -> str:
    mo = make_mo()
    await store.persist(PersistItem(event=mo, destinations=dests))
    return mo.id


def targets(
    *dests: FakeDest, policy: RetryPolicy = FIXED, concurrency: int = 4
) -> dict[str, tuple[FakeDest, RetryPolicy, int]]:
    return {d.name: (d, policy, concurrency) for d in dests}


async def wait_for(cond: Callable[[], bool]) -> None:
    while not cond():
        await trio.sleep(0.01)


# --------------------------------------------------------------------------- schedule


def test_fixed_schedule_defaults_three_retries_thirty_minutes_apart() -> None:
    assert [next_attempt_at(FIXED, n, 100.0, None) for n in (1, 2, 3)] == [1900.0] * 3
    assert next_attempt_at(FIXED, 4, 100.0, None) is None


def test_exponential_schedule_is_capped() -> None:
    p = RetryPolicy(attempts=10, interval=60, backoff="exponential", max=600)
    delays = [next_attempt_at(p, n, 0.0, None) for n in range(1, 11)]
    assert delays == [60, 120, 240, 480, 600, 600, 600, 600, 600, 600]
    assert next_attempt_at(p, 11, 0.0, None) is None
    huge = RetryPolicy(attempts=5000, interval=1, backoff="exponential", max=1e9)
    assert next_attempt_at(huge, 4000, 0.0, None) == 1e9


def test_retry_after_is_honoured_within_bounds() -> None:
    assert next_attempt_at(FIXED, 1, 0.0, 120.0) == 120.0
    assert next_attempt_at(FIXED, 1, 0.0, 0.0) == 1.0  # never hammer
    assert next_attempt_at(FIXED, 1, 0.0, -5.0) == 1.0
    assert next_attempt_at(FIXED, 1, 0.0, 10 * 86400.0) == 86400.0
    short = RetryPolicy(max=3600.0)
    assert next_attempt_at(short, 1, 0.0, 7200.0) == 3600.0
    assert next_attempt_at(FIXED, 1, 0.0, math.nan) == 1800.0
    assert next_attempt_at(FIXED, 4, 0.0, 5.0) is None  # exhausted is exhausted


# --------------------------------------------------------------------------- delivery


async def test_new_jobs_are_delivered_at_once(
    store: SqliteStore, autojump_clock: trio.testing.MockClock
) -> None:
    crm = FakeDest("crm")
    d = make_dispatcher(store, targets(crm), poll_interval=60)
    async with trio.open_nursery() as nursery:
        await nursery.start(d.run)
        await trio.sleep(100)  # idle lanes wait for work
        t0 = trio.current_time()
        event_id = await persist(store, "crm")
        await wait_for(lambda: bool(crm.calls))
        assert crm.calls[0][0] - t0 < 0.05  # woken by the commit, not by a poll
        await wait_for(lambda: d.inflight() == 0)
        await trio.testing.wait_all_tasks_blocked()
        rec = await store.get_event(event_id)
        assert rec.status is EventStatus.DELIVERED
        assert [(a.attempt, a.outcome, a.status_code) for a in rec.attempts] == [
            (1, "delivered", 200)
        ]
        nursery.cancel_scope.cancel()


async def test_retries_follow_the_schedule_then_dead_letter(
    store: SqliteStore, autojump_clock: trio.testing.MockClock
) -> None:
    crm = FakeDest("crm", answers=[retry()])
    d = make_dispatcher(store, targets(crm))
    event_id = await persist(store, "crm")
    async with trio.open_nursery() as nursery:
        await nursery.start(d.run)
        await trio.sleep(4 * 3600)
        nursery.cancel_scope.cancel()
    assert [(round(t), n) for t, n, _ in crm.calls] == [(0, 1), (1800, 2), (3600, 3), (5400, 4)]
    rec = await store.get_event(event_id)
    assert rec.status is EventStatus.DEAD
    (job,) = rec.jobs
    assert job.state is JobState.DEAD
    assert job.attempts == 4
    assert [a.error for a in rec.attempts] == ["HTTP 503"] * 4


async def test_exponential_and_retry_after(
    store: SqliteStore, autojump_clock: trio.testing.MockClock
) -> None:
    crm = FakeDest("crm", answers=[retry(), retry(retry_after=5), retry(), retry()])
    policy = RetryPolicy(attempts=3, interval=10, backoff="exponential", max=1000)
    d = make_dispatcher(store, targets(crm, policy=policy))
    await persist(store, "crm")
    async with trio.open_nursery() as nursery:
        await nursery.start(d.run)
        await trio.sleep(1000)
        nursery.cancel_scope.cancel()
    # attempt 1 fails -> +10; attempt 2 asks Retry-After 5 -> +5; attempt 3 -> +40.
    assert [round(t) for t, _, _ in crm.calls] == [0, 10, 15, 55]


async def test_permanent_is_dead_at_once_and_dropped_is_dropped(
    store: SqliteStore, autojump_clock: trio.testing.MockClock
) -> None:
    crm = FakeDest("crm", answers=[AttemptResult(outcome=Outcome.PERMANENT, error="HTTP 410")])
    drop = FakeDest("drop", answers=[AttemptResult(outcome=Outcome.DROPPED)])
    d = make_dispatcher(store, targets(crm, drop))
    a = await persist(store, "crm")
    b = await persist(store, "drop")
    async with trio.open_nursery() as nursery:
        await nursery.start(d.run)
        await trio.sleep(10_000)
        nursery.cancel_scope.cancel()
    assert len(crm.calls) == 1
    assert (await store.get_event(a)).jobs[0].state is JobState.DEAD
    rec = await store.get_event(b)
    assert rec.jobs[0].state is JobState.DROPPED
    assert rec.status is EventStatus.DROPPED


async def test_a_raising_destination_is_retried(
    store: SqliteStore, autojump_clock: trio.testing.MockClock
) -> None:
    class Broken(FakeDest):
        async def deliver(self, event: Event, job: Job) -> AttemptResult:
            await super().deliver(event, job)
            raise RuntimeError("bug")

    crm = Broken("crm")
    d = make_dispatcher(store, targets(crm))
    event_id = await persist(store, "crm")
    async with trio.open_nursery() as nursery:
        await nursery.start(d.run)
        await trio.sleep(10)
        nursery.cancel_scope.cancel()
    rec = await store.get_event(event_id)
    assert rec.status is EventStatus.RETRYING
    assert rec.attempts[0].error == "internal error: RuntimeError"


async def test_slow_destination_does_not_delay_another(
    store: SqliteStore, autojump_clock: trio.testing.MockClock
) -> None:
    slow = FakeDest("slow", delay=1000)
    fast = FakeDest("fast")
    d = make_dispatcher(store, {"slow": (slow, FIXED, 1), "fast": (fast, FIXED, 1)})
    for _ in range(5):
        await persist(store, "slow", "fast")
    async with trio.open_nursery() as nursery:
        await nursery.start(d.run)
        await wait_for(lambda: len(fast.calls) == 5)
        assert trio.current_time() < 1  # all five while slow is still on its first
        assert len(slow.calls) == 1
        nursery.cancel_scope.cancel()


async def test_concurrency_limit(
    store: SqliteStore, autojump_clock: trio.testing.MockClock
) -> None:
    gate = trio.Event()
    crm = FakeDest("crm", gate=gate)
    d = make_dispatcher(store, targets(crm, concurrency=3))
    for _ in range(10):
        await persist(store, "crm")
    async with trio.open_nursery() as nursery:
        await nursery.start(d.run)
        await trio.sleep(5)
        assert crm.active == 3
        gate.set()
        await wait_for(lambda: len(crm.calls) == 10)
        nursery.cancel_scope.cancel()
    assert crm.max_active == 3


async def test_restart_requeues_inflight_and_keeps_the_schedule(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    path = tmp_path / "g.db"
    hang = FakeDest("hang", gate=trio.Event())  # never answers: "crash" mid-attempt
    flaky = FakeDest("flaky", answers=[retry()])
    s1 = SqliteStore(path, wall_clock=wall, use_thread=False)
    async with trio.open_nursery() as nursery:
        await nursery.start(s1.run)
        a = await persist(s1, "hang")
        b = await persist(s1, "flaky")
        d1 = make_dispatcher(s1, targets(hang, flaky))
        await nursery.start(d1.run)
        await trio.sleep(60)
        nursery.cancel_scope.cancel()  # the process dies
    s1.close()
    assert len(hang.calls) == 1
    assert len(flaky.calls) == 1

    ok_hang = FakeDest("hang")
    ok_flaky = FakeDest("flaky")
    s2 = SqliteStore(path, wall_clock=wall, use_thread=False)
    async with trio.open_nursery() as nursery:
        await nursery.start(s2.run)
        d2 = make_dispatcher(s2, targets(ok_hang, ok_flaky))
        await nursery.start(d2.run)
        await trio.sleep(3600)
        nursery.cancel_scope.cancel()
    # The job in flight at the crash is tried again at once, as attempt 1 again (it
    # never recorded an attempt); the retry keeps its time from the store.
    assert [(round(t), n) for t, n, _ in ok_hang.calls] == [(60, 1)]
    assert [(round(t), n) for t, n, _ in ok_flaky.calls] == [(1800, 2)]
    assert (await s2.get_event(a)).status is EventStatus.DELIVERED
    assert (await s2.get_event(b)).status is EventStatus.DELIVERED
    s2.close()


async def test_drain_finishes_inflight_and_leaves_the_rest_queued(
    store: SqliteStore, autojump_clock: trio.testing.MockClock
) -> None:
    crm = FakeDest("crm", delay=5)
    d = make_dispatcher(store, targets(crm, concurrency=2))
    ids = [await persist(store, "crm") for _ in range(5)]
    async with trio.open_nursery() as nursery:
        await nursery.start(d.run)
        await trio.sleep(1)
        assert crm.active == 2
        await d.drain(grace=30)
        assert trio.current_time() == pytest.approx(5, abs=0.1)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    states = [(await store.get_event(i)).jobs[0].state for i in ids]
    assert states.count(JobState.DELIVERED) == 2
    assert states.count(JobState.QUEUED) == 3


async def test_drain_cancels_after_the_grace_period(
    store: SqliteStore, autojump_clock: trio.testing.MockClock
) -> None:
    crm = FakeDest("crm", delay=1000)
    d = make_dispatcher(store, targets(crm))
    event_id = await persist(store, "crm")
    async with trio.open_nursery() as nursery:
        await nursery.start(d.run)
        await trio.sleep(1)
        await d.drain(grace=10)
        assert trio.current_time() == pytest.approx(11, abs=0.1)
    # Cut off: it stays in flight and is re-queued when the store's writer restarts.
    assert (await store.get_event(event_id)).jobs[0].state is JobState.INFLIGHT


async def test_update_destinations(
    store: SqliteStore, autojump_clock: trio.testing.MockClock
) -> None:
    old = FakeDest("crm", delay=10)
    gone = FakeDest("gone", gate=trio.Event())
    d = make_dispatcher(store, targets(old, gone, concurrency=1))
    a = await persist(store, "crm")
    g1 = await persist(store, "gone")
    g2 = await persist(store, "gone")
    async with trio.open_nursery() as nursery:
        await nursery.start(d.run)
        await trio.sleep(1)
        assert len(old.calls) == 1
        new = FakeDest("crm")
        added = FakeDest("added")

        async def release_gone() -> None:
            await trio.sleep(3)
            assert gone.gate is not None
            gone.gate.set()

        nursery.start_soon(release_gone)
        await d.update_destinations(targets(new, added, concurrency=1))
        # It returned once no attempt used the old objects any more.
        assert old.active == 0
        assert gone.active == 0
        assert trio.current_time() == pytest.approx(10, abs=0.1)
        b = await persist(store, "crm")
        c = await persist(store, "added")
        await wait_for(lambda: bool(new.calls) and bool(added.calls))
        assert d.destinations == ("crm", "added")
        nursery.cancel_scope.cancel()
    assert [e for _, _, e in new.calls] == [b]
    assert [e for _, _, e in added.calls] == [c]
    assert (await store.get_event(a)).status is EventStatus.DELIVERED
    assert (await store.get_event(g1)).status is EventStatus.DELIVERED  # it was in flight
    dead = (await store.get_event(g2)).jobs[0]
    assert dead.state is JobState.DEAD
    assert "removed" in dead.last_error


async def test_notify_for_unknown_destination_is_ignored(
    store: SqliteStore, autojump_clock: trio.testing.MockClock
) -> None:
    d = make_dispatcher(store, {})
    d.notify("nobody")
    async with trio.open_nursery() as nursery:
        await nursery.start(d.run)
        await persist(store, "nobody")  # no lane: stays queued
        await d.drain(grace=1)
    assert d.inflight() == 0


async def test_recording_retries_while_the_store_fails(
    store: SqliteStore, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = store.record_attempt
    failures = [StoreError("disk full"), StoreError("disk full")]

    async def flaky_record(*args: Any, **kwargs: Any) -> None:
        if failures:
            raise failures.pop()
        await real(*args, **kwargs)

    monkeypatch.setattr(store, "record_attempt", flaky_record)
    crm = FakeDest("crm")
    d = make_dispatcher(store, targets(crm), store_retry=1.0)
    event_id = await persist(store, "crm")
    async with trio.open_nursery() as nursery:
        await nursery.start(d.run)
        await trio.sleep(10)
        nursery.cancel_scope.cancel()
    assert len(crm.calls) == 1  # the attempt is not repeated, only its recording
    assert (await store.get_event(event_id)).status is EventStatus.DELIVERED


@pytest.fixture
def claims(store: SqliteStore, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many jobs each ``store.claim_due`` call took, in order."""
    seen: list[int] = []
    real = store.claim_due

    async def counting(destination: str, now: float, limit: int) -> list[Any]:
        claimed = await real(destination, now, limit)
        seen.append(len(claimed))
        return claimed

    monkeypatch.setattr(store, "claim_due", counting)
    return seen


async def test_new_jobs_are_handed_to_the_lane_without_a_claim(
    store: SqliteStore, autojump_clock: trio.testing.MockClock, claims: list[int]
) -> None:
    crm = FakeDest("crm")
    d = make_dispatcher(store, targets(crm), poll_interval=60)
    async with trio.open_nursery() as nursery:
        await nursery.start(d.run)
        await trio.sleep(1)
        assert claims == [0]  # the first look at the store
        ids = [await persist(store, "crm") for _ in range(5)]
        await wait_for(lambda: len(crm.calls) == 5)
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    assert claims == [0]  # all five handed over in memory
    assert [e for _, _, e in crm.calls] == ids
    for event_id in ids:
        assert (await store.get_event(event_id)).status is EventStatus.DELIVERED


async def test_lane_claims_ahead_in_batches_and_records_in_batches(
    store: SqliteStore, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    claims: list[int] = []
    records: list[int] = []
    real_claim, real_record = store.claim_due, store.record_attempts

    async def claim(destination: str, now: float, limit: int) -> list[Any]:
        claimed = await real_claim(destination, now, limit)
        claims.append(len(claimed))
        return claimed

    async def record(items: Any) -> None:
        records.append(len(items))
        await real_record(items)

    monkeypatch.setattr(store, "claim_due", claim)
    monkeypatch.setattr(store, "record_attempts", record)
    crm = FakeDest("crm", delay=1)
    for _ in range(30):
        await persist(store, "crm")
    d = make_dispatcher(store, targets(crm, concurrency=4))
    async with trio.open_nursery() as nursery:
        await nursery.start(d.run)
        await wait_for(lambda: sum(records) == 30)
        nursery.cancel_scope.cancel()
    assert claims[0] == 12  # three times the concurrency ahead
    assert len(claims) <= 5
    assert len(records) <= 10  # the four attempts that end together: one write
    assert crm.max_active == 4


async def test_handed_off_and_prefetched_jobs_survive_a_crash_and_a_drain(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    path = tmp_path / "g.db"
    hang = FakeDest("crm", gate=trio.Event())
    s1 = SqliteStore(path, wall_clock=wall, use_thread=False)
    async with trio.open_nursery() as nursery:
        await nursery.start(s1.run)
        d1 = make_dispatcher(s1, targets(hang, concurrency=1))
        await nursery.start(d1.run)
        await trio.sleep(1)
        ids = [await persist(s1, "crm") for _ in range(3)]  # one tried, two held in memory
        await trio.sleep(1)
        assert len(hang.calls) == 1
        states = [(await s1.get_event(i)).jobs[0].state for i in ids]
        assert states == [JobState.INFLIGHT] * 3
        nursery.cancel_scope.cancel()  # the process dies
    s1.close()

    slow = FakeDest("crm", delay=5)
    s2 = SqliteStore(path, wall_clock=wall, use_thread=False)
    async with trio.open_nursery() as nursery:
        await nursery.start(s2.run)  # re-queues all three
        d2 = make_dispatcher(s2, targets(slow, concurrency=1))
        await nursery.start(d2.run)
        await trio.sleep(1)
        await d2.drain(grace=30)  # one finishes, the two prefetched go back to the queue
        states = [(await s2.get_event(i)).jobs[0].state for i in ids]
        assert sorted(states) == [JobState.DELIVERED, JobState.QUEUED, JobState.QUEUED]
        nursery.cancel_scope.cancel()
    s2.close()
    assert len(slow.calls) == 1


async def test_recording_a_batch_retries_while_the_store_fails(
    store: SqliteStore, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = store.record_attempts
    failures = [StoreError("disk full"), StoreError("disk full")]

    async def flaky_record(items: Any) -> None:
        if failures:
            raise failures.pop()
        await real(items)

    monkeypatch.setattr(store, "record_attempts", flaky_record)
    crm = FakeDest("crm")
    d = make_dispatcher(store, targets(crm), store_retry=1.0)
    event_id = await persist(store, "crm")
    async with trio.open_nursery() as nursery:
        await nursery.start(d.run)
        await trio.sleep(10)
        nursery.cancel_scope.cancel()
    assert not failures
    assert len(crm.calls) == 1  # the attempt is not repeated, only its recording
    assert (await store.get_event(event_id)).status is EventStatus.DELIVERED


async def test_a_lane_that_fell_back_to_claiming_takes_hand_offs_again(
    store: SqliteStore, autojump_clock: trio.testing.MockClock, claims: list[int]
) -> None:
    crm = FakeDest("crm")
    d = make_dispatcher(store, targets(crm, concurrency=1), poll_interval=60)
    async with trio.open_nursery() as nursery:
        await nursery.start(d.run)
        await trio.sleep(1)
        assert claims == [0]
        # While a persist waits in the store's queue, the lane hears of queued jobs (as
        # after a burst beyond its capacity) and queues a claim behind it: one batch.
        async with store._write_lock:
            nursery.start_soon(persist, store, "crm")
            await trio.testing.wait_all_tasks_blocked()
            d.notify("crm")
            await trio.testing.wait_all_tasks_blocked()
        await wait_for(lambda: len(crm.calls) == 1)
        assert claims == [0, 1]  # the claim took the job queued just before it
        later = [await persist(store, "crm") for _ in range(3)]
        await wait_for(lambda: len(crm.calls) == 4)
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    assert claims == [0, 1]  # ... and the lane went back to hand-offs at once
    assert [e for _, _, e in crm.calls[1:]] == later


async def test_reload_to_a_higher_concurrency_runs_more_attempts_at_once(
    store: SqliteStore, autojump_clock: trio.testing.MockClock
) -> None:
    old = FakeDest("crm", gate=trio.Event())
    d = make_dispatcher(store, targets(old, concurrency=1))
    ids = [await persist(store, "crm") for _ in range(9)]
    async with trio.open_nursery() as nursery:
        await nursery.start(d.run)
        await trio.sleep(1)
        assert len(old.calls) == 1
        new = FakeDest("crm", delay=1)

        async def open_gate() -> None:
            await trio.sleep(2)
            assert old.gate is not None
            old.gate.set()

        nursery.start_soon(open_gate)
        await d.update_destinations(targets(new, concurrency=3))
        await wait_for(lambda: len(new.calls) == 8)
        await trio.sleep(2)
        # Back down to one: the workers of the old generation retire.
        await d.update_destinations(targets(new, concurrency=1))
        more = [await persist(store, "crm") for _ in range(3)]
        await wait_for(lambda: len(new.calls) == 11)
        await trio.sleep(2)
        nursery.cancel_scope.cancel()
    assert len(old.calls) == 1
    assert new.max_active == 3
    assert [e for _, _, e in new.calls[8:]] == more
    for event_id in ids + more:
        assert (await store.get_event(event_id)).status is EventStatus.DELIVERED


async def test_concurrency_down_on_reload_waits_for_the_old_attempts(
    store: SqliteStore, autojump_clock: trio.testing.MockClock
) -> None:
    old = FakeDest("crm", delay=10)
    d = make_dispatcher(store, targets(old, concurrency=3))
    for _ in range(6):
        await persist(store, "crm")
    async with trio.open_nursery() as nursery:
        await nursery.start(d.run)
        await trio.sleep(1)
        assert old.active == 3
        new = FakeDest("crm", delay=10)
        nursery.start_soon(d.update_destinations, targets(new, concurrency=1))
        await trio.sleep(5)
        assert (old.active, new.active) == (3, 0)  # no new attempt while three run
        await trio.sleep(6)
        assert (old.active, new.active) == (0, 1)
        await wait_for(lambda: len(new.calls) == 3)
        assert new.max_active == 1
        nursery.cancel_scope.cancel()
