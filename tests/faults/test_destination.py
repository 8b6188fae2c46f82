"""Destination faults, in process under the autojump clock.

Every MO fans out to a faulty destination ``bad`` and a healthy one ``good``, each with
its own receiver. Whatever ``bad`` does (5xx storms, accepting and never answering,
refusing connections, answering after 10 s), ``good`` gets every MO at once, and ``bad``'s
attempts follow its retry schedule exactly, as the store's per-push history shows.
"""

from __future__ import annotations

import collections
import itertools
import math
from collections.abc import Callable
from pathlib import Path

import attrs
import pytest
import trio
import trio.testing

from gatewayd.smpp.simulator import Simulator, SimulatorSettings
from gatewayd.store import AttemptRecord, EventRecord, JobState
from gatewayd.webhook_receiver import ReceivedRequest, Reply, open_webhook_receiver
from tests.e2e.helpers import free_port
from tests.faults.harness import carrier_yaml, config_yaml, daemon_running, wait_until

N = 12  # MOs per scenario
GOOD_LATENCY = 0.5  # seconds (virtual): the healthy destination is never held up


@attrs.frozen
class Outcome:
    records: list[EventRecord]
    good_texts: collections.Counter[str]
    bad_requests: int

    def attempts(self, record: EventRecord, destination: str) -> list[AttemptRecord]:
        return sorted(
            (a for a in record.attempts if a.destination == destination), key=lambda a: a.attempt
        )


async def run_scenario(
    tmp_path: Path,
    bad: Callable[[ReceivedRequest], Reply] | None,
    bad_options: dict[str, str],
    *,
    finished: Callable[[EventRecord], bool],
    limit: float = 600,
) -> Outcome:
    """N MOs through the daemon; returns once ``finished`` holds for every event."""
    sim = Simulator(SimulatorSettings(port=0, password="pw", mo=N, window=10))
    async with (
        open_webhook_receiver() as good_rx,
        open_webhook_receiver() as bad_rx,
        trio.open_nursery() as nursery,
    ):
        if bad is not None:
            bad_rx.respond_with(bad)
            bad_url = f"{bad_rx.url}/bad"
        else:
            bad_url = f"http://127.0.0.1:{free_port()}/refused"  # nothing listens there
        port = await nursery.start(sim.serve)
        bad_lines = "".join(f"    {key}: {value}\n" for key, value in bad_options.items())
        text = config_yaml(
            carrier_yaml(port),
            "destinations:\n"
            "  bad:\n"
            "    type: url\n"
            f"    url: {bad_url}\n"
            "    concurrency: 16\n"
            f"{bad_lines}"
            "  good:\n"
            "    type: url\n"
            f"    url: {good_rx.url}/good\n"
            "    timeout: 5s\n"
            "    retry: {attempts: 3, interval: 10s}\n"
            "routes:\n"
            "  a2p: [bad, good]\n"
            "drain_grace: 1s\n",
        )
        async with daemon_running(tmp_path, text) as run:
            with trio.fail_after(limit):
                await sim.mo_done.wait()
                while True:
                    page = await run.store.list_events(limit=100)
                    records = [await run.store.get_event(e.id) for e in page.items]
                    if len(records) == N and all(finished(r) for r in records):
                        break
                    await trio.sleep(1)
                if bad is not None:
                    # Each attempt sent its request, but one that timed out may still be on
                    # its way to the receiver (a real socket): wait until it has read them all.
                    sent = sum(1 for r in records for a in r.attempts if a.destination == "bad")
                    await wait_until(lambda: len(bad_rx.requests) >= sent)
            good_texts = collections.Counter(r.json()["text"] for r in good_rx.requests)
        nursery.cancel_scope.cancel()
    return Outcome(records=records, good_texts=good_texts, bad_requests=len(bad_rx.requests))


def bad_state(state: JobState) -> Callable[[EventRecord], bool]:
    def check(record: EventRecord) -> bool:
        return all(
            j.state is state if j.destination == "bad" else j.state is JobState.DELIVERED
            for j in record.jobs
        )

    return check


def check_good(out: Outcome) -> None:
    assert out.good_texts == collections.Counter(f"TEXT {i}" for i in range(1, N + 1))
    for record in out.records:
        (attempt,) = out.attempts(record, "good")
        assert attempt.status_code == 200
        assert attempt.at - record.created_at < GOOD_LATENCY  # not delayed by ``bad``


def gaps(attempts: list[AttemptRecord]) -> list[float]:
    return [b.at - a.at for a, b in itertools.pairwise(attempts)]


def close(actual: list[float], expected: list[float], slack: float = 0.1) -> bool:
    return len(actual) == len(expected) and all(
        abs(a - e) <= slack for a, e in zip(actual, expected, strict=True)
    )


async def test_5xx_storm_retried_on_schedule_then_delivered(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    statuses = (500, 502, 503, 504)
    start: list[float] = []

    def storm(req: ReceivedRequest) -> Reply:
        start.append(start[0] if start else req.arrived_at)
        if req.arrived_at - start[0] < 25:  # a 25 s storm, then healthy
            return Reply(status=statuses[len(start) % 4])
        return Reply(status=200)

    out = await run_scenario(
        tmp_path,
        storm,
        {"retry": "{attempts: 5, interval: 10s}"},
        finished=bad_state(JobState.DELIVERED),
    )
    check_good(out)
    for record in out.records:
        attempts = out.attempts(record, "bad")
        codes = [a.status_code for a in attempts]
        assert all(c in statuses for c in codes[:-1]), codes
        assert codes[-1] == 200, codes
        assert len(attempts) == 4  # failed at 0, 10, 20 s; the storm is over at 25 s
        assert close(gaps(attempts), [10.0, 10.0, 10.0]), gaps(attempts)
    assert out.bad_requests == 4 * N


async def test_receiver_that_never_answers_times_out_on_schedule(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    out = await run_scenario(
        tmp_path,
        lambda req: Reply(delay=math.inf),  # accepts, reads the request, never answers
        {"timeout": "3s", "retry": "{attempts: 3, interval: 10s}"},
        finished=bad_state(JobState.DEAD),
    )
    check_good(out)
    for record in out.records:
        attempts = out.attempts(record, "bad")
        assert [a.status_code for a in attempts] == [None] * 4
        assert all("timeout" in a.error for a in attempts), [a.error for a in attempts]
        assert all(2.9 <= a.latency_ms / 1000 <= 3.1 for a in attempts)
        # each attempt is recorded when its 3 s run out; the next starts 10 s later
        assert close(gaps(attempts), [13.0, 13.0, 13.0]), gaps(attempts)
    assert out.bad_requests == 4 * N


async def test_connection_refused_backs_off_exponentially(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    out = await run_scenario(
        tmp_path,
        None,
        {"retry": "{attempts: 4, interval: 1s, backoff: exponential, max: 4s}"},
        finished=bad_state(JobState.DEAD),
    )
    check_good(out)
    for record in out.records:
        attempts = out.attempts(record, "bad")
        assert [a.status_code for a in attempts] == [None] * 5
        assert all(a.error for a in attempts)
        assert close(gaps(attempts), [1.0, 2.0, 4.0, 4.0]), gaps(attempts)
        (job,) = [j for j in record.jobs if j.destination == "bad"]
        assert job.attempts == 5


@pytest.mark.parametrize("limit_s", [30.0, 5.0])
async def test_ten_second_receiver(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, limit_s: float
) -> None:
    out = await run_scenario(
        tmp_path,
        lambda req: Reply(status=200, delay=10.0),
        {"timeout": f"{limit_s:g}s", "retry": "{attempts: 2, interval: 20s}"},
        finished=bad_state(JobState.DELIVERED if limit_s > 10 else JobState.DEAD),
    )
    check_good(out)
    for record in out.records:
        attempts = out.attempts(record, "bad")
        if limit_s > 10:  # slow but within the limit: delivered on the first attempt
            (attempt,) = attempts
            assert attempt.status_code == 200
            assert 9.9 <= attempt.latency_ms / 1000 <= 10.1
        else:  # too slow for the limit: timed out every time, on schedule
            assert [a.status_code for a in attempts] == [None] * 3
            assert close(gaps(attempts), [25.0, 25.0]), gaps(attempts)
    assert out.bad_requests == N * (1 if limit_s > 10 else 3)
