"""A destination that comes back: its backlog drains at once, not at the next retry.

The ``flaky`` receiver drops every connection (no HTTP answer: the destination is down)
while ``up`` is false. MOs that arrive meanwhile fail and wait for their retry, 30 minutes
away (the default interval). Once the receiver is back, the first delivery to it pulls
those retries forward: everything is delivered within seconds, each job with exactly
two attempts. A destination that answers with an error status is not "down": its
retries keep their schedule (``test_5xx_failures_keep_their_schedule``).
"""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing

from gatewayd.smpp.simulator import Simulator, SimulatorSettings
from gatewayd.store import EventRecord, JobState, SqliteStore
from gatewayd.webhook_receiver import ReceivedRequest, Reply, open_webhook_receiver
from tests.faults.harness import PACE, carrier_yaml, config_yaml, daemon_running

DOWN = 6  # MOs sent while the destination is down
INTERVAL = 1800.0  # the retry interval (the default)


async def _records(store: SqliteStore) -> list[EventRecord]:
    page = await store.list_events(limit=100)
    return [await store.get_event(e.id) for e in page.items]


def _text(record: EventRecord) -> str:
    text = getattr(record.event, "text", None)
    assert isinstance(text, str)
    return text


async def _scenario(tmp_path: Path, down_reply: Reply) -> list[EventRecord]:
    up = False

    def answer(req: ReceivedRequest) -> Reply:
        return Reply(status=200) if up else down_reply

    sim = Simulator(SimulatorSettings(port=0, password="pw", mo=DOWN, window=10))
    async with open_webhook_receiver() as rx, trio.open_nursery() as nursery:
        rx.respond_with(answer)
        port = await nursery.start(sim.serve)
        text = config_yaml(
            carrier_yaml(port),
            "destinations:\n"
            "  flaky:\n"
            "    type: url\n"
            f"    url: {rx.url}/in\n"
            f"    retry: {{attempts: 3, interval: {INTERVAL:g}s}}\n"
            "routes:\n"
            "  a2p: flaky\n"
            "drain_grace: 1s\n",
        )
        async with daemon_running(tmp_path, text) as run:
            with trio.fail_after(120):
                await sim.mo_done.wait()
                while len(rx.requests) < DOWN:  # every MO tried once...
                    await trio.sleep(0.5)
                # ...and failed: the daemon has recorded it (its answer, or the dropped
                # connection, crosses a real socket first)
                while not all(len(r.attempts) == 1 for r in await _records(run.store)):
                    await trio.sleep(PACE)
            await trio.sleep(5)
            up = True
            status = await sim.deliver("after", sim.mo_fields("TEXT after"))
            assert status == 0
            with trio.fail_after(2 * INTERVAL):
                while True:
                    records = await _records(run.store)
                    if len(records) == DOWN + 1 and all(
                        j.state is JobState.DELIVERED for r in records for j in r.jobs
                    ):
                        break
                    await trio.sleep(1)
        nursery.cancel_scope.cancel()
    return records


async def test_backlog_of_a_destination_that_comes_back_is_pulled_forward(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    records = await _scenario(tmp_path, Reply(drop=True))
    (after,) = [r for r in records if _text(r) == "TEXT after"]
    assert [a.status_code for a in after.attempts] == [200]
    back_at = after.attempts[0].at
    for record in records:
        if record is after:
            continue
        (job,) = record.jobs
        attempts = sorted(record.attempts, key=lambda a: a.attempt)
        assert [a.status_code for a in attempts] == [None, 200], attempts
        assert job.attempts == 2
        # delivered seconds after the destination came back, not at the retry 30 min on
        assert 0 <= attempts[1].at - back_at < 10, attempts[1].at - back_at


async def test_5xx_failures_keep_their_schedule(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    records = await _scenario(tmp_path, Reply(status=503))
    for record in records:
        attempts = sorted(record.attempts, key=lambda a: a.attempt)
        if _text(record) == "TEXT after":
            continue
        assert [a.status_code for a in attempts] == [503, 200], attempts
        assert attempts[1].at - attempts[0].at >= INTERVAL - 1
