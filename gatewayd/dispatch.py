"""Delivery: per-destination workers that claim due jobs from the store and try them.

Each destination has its own *lane*: a loop that claims due jobs up to the
destination's concurrency limit and one task per claimed job. Lanes share nothing but
the store, so a slow or dead destination never delays another.

The retry schedule lives in the store (``next_at``, wall-clock epoch seconds), not in
memory, so jobs waiting for a retry survive restarts. :func:`next_attempt_at` is the
pure schedule. A lane wakes up when the store commits new jobs for it (the store's job
listener, or :meth:`Dispatcher.notify`), when its earliest queued job falls due, when a
slot frees up, and at the latest every ``poll_interval`` (jobs written by another
process).

Time: trio's clock for sleeping, ``wall_clock`` (epoch seconds) for what is persisted.

Stopping: :meth:`Dispatcher.drain` stops claiming, lets in-flight attempts finish
within the grace period, then cancels the rest. Unclaimed jobs stay queued; attempts cut
off stay in flight in the store and are re-queued when the store's writer next starts.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import NamedTuple

import trio

from gatewayd.config import RetryPolicy
from gatewayd.destinations.base import AttemptResult, Destination, Outcome
from gatewayd.store import ClaimedJob, JobState, Store, StoreError

__all__ = [
    "MAX_RETRY_AFTER",
    "MIN_RETRY_AFTER",
    "Dispatcher",
    "Target",
    "next_attempt_at",
]

log = logging.getLogger("gatewayd.dispatch")

MIN_RETRY_AFTER = 1.0  # seconds: a peer's Retry-After is never honoured below this
MAX_RETRY_AFTER = 86400.0  # and never above this (nor above the policy's max)
REMOVED_REASON = "destination removed from the configuration"


def next_attempt_at(
    policy: RetryPolicy, attempt_no: int, now: float, retry_after: float | None
) -> float | None:
    """When to make the attempt after attempt ``attempt_no`` (1-based) failed.

    None when the attempts are exhausted (the first try plus ``policy.attempts``
    retries). ``fixed``: every ``interval``; ``exponential``: ``interval * 2**(n-1)``
    capped at ``max``. A peer's ``retry_after`` replaces the schedule's delay, bounded
    to [1 s, min(policy max, 24 h)].
    """
    if attempt_no > policy.attempts:
        return None
    if policy.backoff == "exponential":
        delay = min(policy.interval * 2.0 ** min(attempt_no - 1, 64), policy.max)
    else:
        delay = policy.interval
    if retry_after is not None and math.isfinite(retry_after):
        upper = max(MIN_RETRY_AFTER, min(policy.max, MAX_RETRY_AFTER))
        delay = min(max(retry_after, MIN_RETRY_AFTER), upper)
    return now + max(delay, 0.0)


# (destination name, the claimed job, what the attempt did, the final state or None)
AttemptHook = Callable[[str, ClaimedJob, AttemptResult, JobState | None], None]


class Target(NamedTuple):
    """A destination as the dispatcher runs it."""

    destination: Destination
    retry: RetryPolicy
    concurrency: int


class _Generation:
    """The attempts started with one version of a lane's target (for reload)."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.inflight = 0
        self.idle = trio.Event()
        self.idle.set()

    def begin(self) -> None:
        self.inflight += 1
        self.idle = trio.Event() if self.idle.is_set() else self.idle

    def end(self) -> None:
        self.inflight -= 1
        if self.inflight == 0:
            self.idle.set()


class _Lane:
    def __init__(self, dispatcher: Dispatcher, name: str, target: Target) -> None:
        self.d = dispatcher
        self.name = name
        self.gen = _Generation(target)
        self.inflight = 0
        self.wake = trio.Event()
        self.stopping = False
        self.removed = False
        self.done = trio.Event()

    def stop(self, *, removed: bool = False) -> None:
        self.stopping = True
        self.removed = self.removed or removed
        self.wake.set()

    async def run(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                await self._claim_loop(nursery)
            if self.removed:
                await self._dead_letter()
        finally:
            self.done.set()

    async def _claim_loop(self, nursery: trio.Nursery) -> None:
        d = self.d
        while not self.stopping:
            # Reset before claiming: a notify that lands from here on wakes the wait.
            self.wake = trio.Event()
            free = max(self.gen.target.concurrency, 1) - self.inflight
            claimed: list[ClaimedJob] = []
            deadline: float | None = None
            if free > 0:
                try:
                    claimed = await d.store.claim_due(self.name, d.wall_clock(), free)
                except StoreError as exc:
                    log.warning("claim failed: %s", exc, extra={"destination": self.name})
                    deadline = trio.current_time() + d.store_retry
                for item in claimed:
                    gen = self.gen
                    self.inflight += 1
                    gen.begin()
                    nursery.start_soon(self._attempt, item, gen)
                if len(claimed) == free:
                    continue  # there may be more due: claim again if slots allow
                if deadline is None:
                    deadline = await self._next_deadline()
            with trio.move_on_at(
                min(
                    deadline if deadline is not None else math.inf,
                    trio.current_time() + d.poll_interval,
                )
            ):
                await self.wake.wait()

    async def _next_deadline(self) -> float | None:
        d = self.d
        try:
            due = await d.store.next_due_at(self.name)
        except StoreError as exc:
            log.warning("next_due_at failed: %s", exc, extra={"destination": self.name})
            return trio.current_time() + d.store_retry
        if due is None:
            return None
        return trio.current_time() + max(due - d.wall_clock(), 0.0)

    async def _attempt(self, item: ClaimedJob, gen: _Generation) -> None:
        d = self.d
        job = item.job
        target = gen.target
        try:
            try:
                result = await target.destination.deliver(item.event, job)
            except Exception as exc:  # a destination must not raise; treat it as temporary
                log.exception(
                    "destination raised",
                    extra={"destination": self.name, "event_id": job.event_id},
                )
                result = AttemptResult(
                    outcome=Outcome.RETRY, error=f"internal error: {type(exc).__name__}"
                )
            next_at: float | None = None
            final: JobState | None
            if result.outcome is Outcome.DELIVERED:
                final = JobState.DELIVERED
            elif result.outcome is Outcome.DROPPED:
                final = JobState.DROPPED
            elif result.outcome is Outcome.PERMANENT:
                final = JobState.DEAD
            else:
                next_at = next_attempt_at(
                    target.retry, job.attempt, d.wall_clock(), result.retry_after
                )
                final = JobState.DEAD if next_at is None else None
            extra = {
                "event_id": job.event_id,
                "destination": self.name,
                "attempt": job.attempt,
                "outcome": result.outcome.value,
            }
            if final is JobState.DEAD:
                log.warning("dead-lettered: %s", result.error, extra=extra)
            elif final is None:
                log.info("attempt failed, will retry: %s", result.error, extra=extra)
            await self._record(job.id, result, next_at, final)
            if d.on_attempt is not None:
                d.on_attempt(self.name, item, result, final)
        finally:
            self.inflight -= 1
            gen.end()
            self.wake.set()

    async def _record(
        self, job_id: int, result: AttemptResult, next_at: float | None, final: JobState | None
    ) -> None:
        # The attempt happened: keep trying to record it while the store is failing.
        # If we are cancelled first the job stays in flight and is re-queued on restart.
        delay = self.d.store_retry
        while True:
            try:
                await self.d.store.record_attempt(
                    job_id, result, next_at=next_at, final_state=final
                )
            except StoreError as exc:
                log.warning(
                    "recording an attempt failed: %s",
                    exc,
                    extra={"destination": self.name, "job_id": job_id},
                )
                await trio.sleep(delay)
                delay = min(delay * 2, 30.0)
            else:
                return

    async def _dead_letter(self) -> None:
        try:
            n = await self.d.store.dead_letter_destination(self.name, REMOVED_REASON)
        except StoreError as exc:
            log.error("dead-lettering failed: %s", exc, extra={"destination": self.name})
            return
        if n:
            log.warning(
                "dead-lettered the jobs of a removed destination",
                extra={"destination": self.name, "jobs": n},
            )


class Dispatcher:
    """Runs one lane per destination; see the module docstring."""

    def __init__(
        self,
        store: Store,
        destinations: Mapping[str, tuple[Destination, RetryPolicy, int]],
        *,
        wall_clock: Callable[[], float] = time.time,
        poll_interval: float = 5.0,
        store_retry: float = 1.0,
        on_attempt: AttemptHook | None = None,
    ) -> None:
        self.store = store
        self.on_attempt = on_attempt  # called once an attempt is recorded (metrics)
        self.wall_clock = wall_clock
        self.poll_interval = poll_interval
        self.store_retry = store_retry
        self._targets = {name: Target(*value) for name, value in destinations.items()}
        self._lanes: dict[str, _Lane] = {}
        self._nursery: trio.Nursery | None = None
        self._scope: trio.CancelScope | None = None
        self._draining = False
        self._all_done = trio.Event()

    @property
    def destinations(self) -> tuple[str, ...]:
        return tuple(self._targets)

    def inflight(self, destination: str | None = None) -> int:
        """Attempts in progress (for one destination or all)."""
        return sum(
            lane.inflight
            for name, lane in self._lanes.items()
            if destination is None or name == destination
        )

    def notify(self, destination: str) -> None:
        """New jobs for ``destination`` were committed: wake its lane now."""
        lane = self._lanes.get(destination)
        if lane is not None:
            lane.wake.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Deliver until cancelled or drained."""
        if self._nursery is not None:
            raise RuntimeError("the dispatcher is already running")
        self.store.add_job_listener(self.notify)
        try:
            with trio.CancelScope() as scope:
                self._scope = scope
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    for name, target in self._targets.items():
                        self._start_lane(name, target)
                    task_status.started()
                    await self._all_done.wait()
                    nursery.cancel_scope.cancel()
        finally:
            self.store.remove_job_listener(self.notify)
            self._nursery = None
            self._scope = None
            self._lanes.clear()

    def _start_lane(self, name: str, target: Target) -> None:
        assert self._nursery is not None
        lane = _Lane(self, name, target)
        self._lanes[name] = lane
        self._nursery.start_soon(self._run_lane, lane)

    async def _run_lane(self, lane: _Lane) -> None:
        try:
            await lane.run()
        finally:
            if self._lanes.get(lane.name) is lane:
                del self._lanes[lane.name]
            if self._draining and not self._lanes:
                self._all_done.set()

    async def update_destinations(
        self, destinations: Mapping[str, tuple[Destination, RetryPolicy, int]]
    ) -> None:
        """Switch to a new set of destinations (reload) for every new claim.

        Removed destinations finish their attempts in flight, then their queued jobs are
        dead-lettered. Returns once no attempt uses a replaced or removed
        :class:`Destination` any more, so the caller may close those.
        """
        new = {name: Target(*value) for name, value in destinations.items()}
        self._targets = new
        if self._nursery is None or self._draining:
            return
        waits: list[trio.Event] = []
        for name, lane in list(self._lanes.items()):
            if name not in new:
                lane.stop(removed=True)
                waits.append(lane.done)
            elif lane.gen.target != new[name]:
                old = lane.gen
                lane.gen = _Generation(new[name])
                lane.wake.set()  # the concurrency may have grown
                waits.append(old.idle)
        for name, target in new.items():
            if name not in self._lanes:
                self._start_lane(name, target)
        for event in waits:
            await event.wait()

    async def drain(self, grace: float) -> None:
        """Stop claiming; give attempts in flight ``grace`` seconds, then cancel them."""
        if self._nursery is None:
            return
        self._draining = True
        for lane in self._lanes.values():
            lane.stop()
        if not self._lanes:
            self._all_done.set()
        with trio.move_on_after(grace):
            await self._all_done.wait()
            return
        log.warning(
            "drain grace period over: cancelling attempts in flight",
            extra={"inflight": self.inflight()},
        )
        if self._scope is not None:
            self._scope.cancel()
