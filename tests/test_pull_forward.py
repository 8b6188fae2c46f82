"""Store.pull_forward: which queued retries a destination that is back makes due now."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from gatewayd.destinations.base import AttemptResult, Outcome
from gatewayd.store import JobState, RecordItem, SqliteStore
from tests.test_store import FakeWall, item

DOWN = AttemptResult(outcome=Outcome.RETRY, status_code=None, error="connection refused")
BUSY = AttemptResult(outcome=Outcome.RETRY, status_code=503, error="HTTP 503")
OK = AttemptResult(outcome=Outcome.DELIVERED, status_code=200)


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
