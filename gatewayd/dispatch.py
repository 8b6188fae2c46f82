"""Delivery: per-destination workers that claim due jobs from the store and try them.

Each destination has its own *lane*: a loop that claims due jobs in batches (up to
``PREFETCH`` times the destination's concurrency, into a local queue), ``concurrency``
worker tasks that try them one after another, and a recorder task that records every
attempt finished so far in one write (:meth:`Store.record_attempts`). Jobs that ``persist``
creates while the lane has room and nothing older is queued are handed over in memory
(the lane is the store's :class:`~gatewayd.store.JobTaker`): written ``inflight`` in the
ingest transaction, so they need no claim and no JSON decoding, and a crash re-queues
them like any claimed job. Lanes share nothing but the store, so a slow or dead
destination never delays another.

The retry schedule lives in the store (``next_at``, wall-clock epoch seconds), not in
memory, so jobs waiting for a retry survive restarts. :func:`next_attempt_at` is the
pure schedule, with one exception: a destination that was unreachable (attempts ended
with no answer at all) and then takes a delivery has the retries of those unanswered
attempts made due at once (:meth:`Store.pull_forward`), so its backlog drains when it
comes back instead of at each job's backoff time; retries after an answer (a 5xx, a
429 with Retry-After) keep their schedule.

A lane's claim loop wakes up when the store commits new jobs for it (the store's job
listener, or :meth:`Dispatcher.notify`), when its earliest queued job falls due, when a
slot frees up while it has something to claim, and at the latest every
``poll_interval`` (jobs written by another process). A claim that empties the store of
due jobs puts the lane back to taking new jobs in memory at once (``JobTaker.drained``),
even while more jobs keep arriving.

Time: trio's clock for sleeping, ``wall_clock`` (epoch seconds) for what is persisted.

Stopping: :meth:`Dispatcher.drain` stops claiming, lets in-flight attempts finish (and
be recorded) within the grace period, then cancels the rest. Claimed jobs not yet tried
are released back to the queue; unclaimed jobs stay queued; attempts cut off (and jobs
held when the release fails) stay in flight in the store and are re-queued when the
store's writer next starts.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import NamedTuple

import trio

from gatewayd.config import RetryPolicy
from gatewayd.destinations.base import AttemptResult, Destination, Outcome
from gatewayd.store import ClaimedJob, JobState, RecordItem, Store, StoreError

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
PREFETCH = 3  # a lane claims up to this many times its concurrency ahead
PULL_FORWARD_BATCH = 1000  # retries made due per store write when a destination is back


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
        self._idle: trio.Event | None = None  # made only when someone waits

    def begin(self) -> None:
        self.inflight += 1

    def end(self) -> None:
        self.inflight -= 1
        if self.inflight == 0 and self._idle is not None:
            self._idle.set()
            self._idle = None

    async def wait_idle(self) -> None:
        """Return once no attempt of this generation is in progress."""
        if self.inflight:
            if self._idle is None:
                self._idle = trio.Event()
            await self._idle.wait()


class _Lane:
    """One destination's loop. Jobs pass through three stages:

    ``ready``: claimed in batches of up to ``PREFETCH`` times the concurrency (or handed
    over by the store from ``persist``), in flight in the store, not yet tried; attempts
    (at most ``concurrency`` at once); ``finished``: tried, waiting for the recorder task,
    which records everything finished in ONE write. A job leaves the store's ``inflight``
    state only by that record, or by :meth:`Store.release` when the lane stops before
    trying it; anything cut off stays in flight and is re-queued at the next start.

    Attempts run in ``concurrency`` worker tasks per generation, each taking the next
    ready job when it finishes one: cheaper than a task per attempt, and the claim loop
    only wakes when there is something to claim (not at every attempt).
    """

    def __init__(self, dispatcher: Dispatcher, name: str, target: Target) -> None:
        self.d = dispatcher
        self.name = name
        self.gen = _Generation(target)
        self.inflight = 0  # attempts in progress
        self.ready: deque[ClaimedJob] = deque()
        self.reserved = 0  # hand-offs the store promised (job written in flight)
        self.unreserved = trio.Event()
        self.unreserved.set()
        self.finished: list[tuple[ClaimedJob, RecordItem]] = []
        self.record_wake = trio.Event()
        self.closing = False
        # The last claim found no more due jobs and nothing was queued since: new jobs
        # may be handed over in memory, and the store is only asked again when due_at
        # (its earliest queued job) or the poll time comes.
        self.store_empty = False
        self.due_at: float | None = None
        # While a claim of ours is queued in the store: how many jobs it took, from the
        # moment it ran (they are in flight, not yet in ``ready``), else -1.
        self.claiming = -1
        self.notified = 0
        self.wake = trio.Event()
        # The claim loop waits for a slot or a smaller queue (not for a time): the
        # workers wake it when an attempt ends or a ready job is taken.
        self.blocked = False
        self.idle = trio.lowlevel.ParkingLot()  # workers waiting for a job or a slot
        self.workers: trio.Nursery | None = None
        self.stopping = False
        self.removed = False
        self.done = trio.Event()
        # The last attempt that ended got no answer at all (see _reachability).
        self.unreachable = False

    @property
    def capacity(self) -> int:
        return max(self.gen.target.concurrency, 1) * PREFETCH

    def stop(self, *, removed: bool = False) -> None:
        self.stopping = True
        self.removed = self.removed or removed
        self.wake.set()
        self.idle.unpark_all()  # idle workers exit; busy ones after their attempt

    def set_target(self, target: Target) -> None:
        """Reload: new attempts use ``target``; the old generation's workers retire."""
        self.gen = _Generation(target)
        self._start_workers()
        self.idle.unpark_all()
        self.wake.set()  # the concurrency may have grown

    def notify(self) -> None:
        """Jobs were queued in the store for this lane."""
        self.notified += 1
        self.store_empty = False
        self.wake.set()

    # JobTaker, per lane (see Dispatcher.reserve)
    def reserve(self) -> bool:
        if self.stopping or not self.store_empty:
            return False
        held = self.inflight + len(self.ready) + self.reserved + max(self.claiming, 0)
        if held >= self.capacity:
            return False
        self.reserved += 1
        self.unreserved = trio.Event() if self.unreserved.is_set() else self.unreserved
        return True

    def drained(self, claimed: int) -> None:
        """Our claim took every due job, at its place in the store's write order: jobs
        created after it may be handed over at once. Without this, a lane that once
        fell back to claiming (a burst beyond its capacity) would keep claiming for as
        long as new jobs kept coming while each claim was queued."""
        if self.claiming >= 0:
            self.claiming = claimed
            self.store_empty = True

    def settle(self, job: ClaimedJob | None) -> None:
        self.reserved -= 1
        if self.reserved == 0:
            self.unreserved.set()
        if job is not None:
            self.ready.append(job)
            self.idle.unpark()
        elif self.blocked:
            self.wake.set()

    async def run(self) -> None:
        try:
            async with trio.open_nursery() as outer:
                outer.start_soon(self._record_loop)
                async with trio.open_nursery() as nursery:
                    self.workers = nursery
                    self._start_workers()
                    await self._claim_loop()
                    self.idle.unpark_all()
                self.workers = None
                await self._release_ready()
                self.closing = True
                self.record_wake.set()
            if self.removed:
                await self._dead_letter()
        finally:
            self.done.set()

    def _start_workers(self) -> None:
        if self.workers is None or self.stopping:
            return
        gen = self.gen
        for _ in range(max(gen.target.concurrency, 1)):
            self.workers.start_soon(self._worker, gen)

    async def _worker(self, gen: _Generation) -> None:
        """Try ready jobs one after another while ``gen`` is the lane's generation."""
        try:
            while not self.stopping and gen is self.gen:
                if not self.ready or self.inflight >= max(gen.target.concurrency, 1):
                    await self.idle.park()
                    continue
                item = self.ready.popleft()
                if self.blocked:
                    self.wake.set()  # the queue shrank: the claim loop may refill it
                self.inflight += 1
                gen.begin()
                await self._attempt(item, gen)
        finally:
            # A retiring worker's slot goes to the current generation's workers.
            self.idle.unpark_all()

    async def _claim_loop(self) -> None:
        d = self.d
        next_poll = -math.inf
        while not self.stopping:
            # Reset before claiming: a notify that lands from here on wakes the wait.
            self.wake = trio.Event()
            self.blocked = False
            queued = len(self.ready) + self.reserved
            free = self.capacity - self.inflight - queued
            now = trio.current_time()
            wake_at = next_poll
            due = not self.store_empty or now >= next_poll
            if self.due_at is not None and now >= self.due_at:
                due = True
            # Refill in batches: only once less than one round of attempts is queued.
            if due and free > 0 and queued < max(self.gen.target.concurrency, 1):
                seq = self.notified
                next_poll = wake_at = now + d.poll_interval
                self.claiming = 0
                try:
                    claimed = await d.store.claim_due(self.name, d.wall_clock(), free)
                except StoreError as exc:
                    self.claiming = -1
                    log.warning("claim failed: %s", exc, extra={"destination": self.name})
                    self.store_empty = False
                    wake_at = trio.current_time() + d.store_retry
                else:
                    self.ready.extend(claimed)
                    self.claiming = -1
                    self.idle.unpark(count=len(claimed))
                    if len(claimed) == free:
                        continue  # there may be more due: claim again if slots allow
                    if self.notified == seq:
                        self.store_empty = True
                    self.due_at = await self._next_deadline()
            if self.store_empty and self.due_at is not None:
                wake_at = min(wake_at, self.due_at)
            if due and (free <= 0 or queued >= max(self.gen.target.concurrency, 1)):
                # Nothing can be claimed now, however due: sleep until a worker makes room
                # (it sets wake), not until a deadline that may already be past (a spin).
                self.blocked = True
                await self.wake.wait()
            else:
                with trio.move_on_at(wake_at):
                    await self.wake.wait()

    async def _release_ready(self) -> None:
        """The lane stops: put the jobs it holds but never tried back in the queue."""
        # Hand-offs still being committed: wait for every one to settle (a commit ends
        # in success or StoreError), or a job accepted after this point would sit in
        # flight on a stopped lane until the next start. Drain's grace period bounds it.
        await self.unreserved.wait()
        jobs, self.ready = self.ready, deque()
        if not jobs:
            return
        try:
            await self.d.store.release([item.job.id for item in jobs])
        except StoreError as exc:  # they stay in flight: re-queued at the next start
            log.warning("releasing jobs failed: %s", exc, extra={"destination": self.name})

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
            if final is not JobState.DELIVERED and final is not JobState.DROPPED:
                extra = {
                    "event_id": job.event_id,
                    "destination": self.name,
                    "attempt": job.attempt,
                    "outcome": result.outcome.value,
                }
                if final is JobState.DEAD:
                    log.warning("dead-lettered: %s", result.error, extra=extra)
                else:
                    log.info("attempt failed, will retry: %s", result.error, extra=extra)
            self.finished.append(
                (item, RecordItem(job_id=job.id, result=result, next_at=next_at, final_state=final))
            )
            self.record_wake.set()
        finally:
            self.inflight -= 1
            gen.end()
            if self.blocked:
                self.wake.set()

    async def _record_loop(self) -> None:
        """Record finished attempts, everything finished so far in one write."""
        d = self.d
        while True:
            await self.record_wake.wait()
            self.record_wake = trio.Event()
            while self.finished:
                batch, self.finished = self.finished, []
                await self._record([entry for _, entry in batch])
                self._retries_queued([e.next_at for _, e in batch if e.next_at is not None])
                if self._reachability([entry.result for _, entry in batch]):
                    await self._pull_forward()
                if d.on_attempt is not None:
                    for item, entry in batch:
                        d.on_attempt(self.name, item, entry.result, entry.final_state)
            if self.closing:
                return

    def _reachability(self, results: list[AttemptResult]) -> bool:
        """Follow whether the destination answers at all; True when it just came back.

        An attempt that ends without a status code never reached the peer (refused,
        reset, timed out): the destination is down. The first delivery after that means
        it is back, and its retries are pulled forward (:meth:`_pull_forward`)."""
        recovered = False
        for result in results:
            if result.outcome is Outcome.DELIVERED:
                recovered = recovered or self.unreachable
                self.unreachable = False
            elif result.outcome is Outcome.RETRY and result.status_code is None:
                self.unreachable = True
        return recovered

    async def _pull_forward(self) -> None:
        """The destination is back: the retries of attempts that never reached it are
        due now, not at their backoff time (a 30-minute outage would otherwise keep
        delivering for another 30 minutes). Retries after an answer keep their schedule."""
        moved = 0
        while True:
            try:
                n = await self.d.store.pull_forward(self.name, PULL_FORWARD_BATCH)
            except StoreError as exc:
                log.warning(
                    "pulling retries forward failed: %s", exc, extra={"destination": self.name}
                )
                self.unreachable = True  # try again at the next delivery
                break
            moved += n
            if n < PULL_FORWARD_BATCH:
                break
        if moved:  # the store's job listener has woken the claim loop (notify)
            log.info(
                "destination reachable again: retries pulled forward",
                extra={"destination": self.name, "jobs": moved},
            )

    def _retries_queued(self, next_ats: list[float]) -> None:
        """Retries were queued in the store: the claim loop must look again when due."""
        if not next_ats:
            return
        at = trio.current_time() + max(min(next_ats) - self.d.wall_clock(), 0.0)
        self.due_at = at if self.due_at is None else min(self.due_at, at)
        self.wake.set()

    async def _record(self, items: list[RecordItem]) -> None:
        # The attempts happened: keep trying to record them while the store is failing.
        # If we are cancelled first the jobs stay in flight and are re-queued on restart.
        delay = self.d.store_retry
        while True:
            try:
                await self.d.store.record_attempts(items)
            except StoreError as exc:
                log.warning(
                    "recording attempts failed: %s",
                    exc,
                    extra={"destination": self.name, "jobs": [i.job_id for i in items]},
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
            lane.notify()

    # JobTaker: the store hands jobs that persist creates straight to their lane.
    def reserve(self, destination: str) -> object | None:
        lane = self._lanes.get(destination)
        if lane is None or self._draining or not lane.reserve():
            return None
        return lane

    def drained(self, destination: str, claimed: int) -> None:
        lane = self._lanes.get(destination)
        if lane is not None:
            lane.drained(claimed)

    def accept(self, token: object, job: ClaimedJob) -> None:
        assert isinstance(token, _Lane)
        token.settle(job)

    def cancel(self, token: object) -> None:
        assert isinstance(token, _Lane)
        token.settle(None)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Deliver until cancelled or drained."""
        if self._nursery is not None:
            raise RuntimeError("the dispatcher is already running")
        self.store.add_job_listener(self.notify)
        self.store.set_job_taker(self)
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
            self.store.set_job_taker(None)
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
        waits: list[Callable[[], Awaitable[None]]] = []
        for name, lane in list(self._lanes.items()):
            if name not in new:
                lane.stop(removed=True)
                waits.append(lane.done.wait)
            elif lane.gen.target != new[name]:
                waits.append(lane.gen.wait_idle)
                lane.set_target(new[name])
        for name, target in new.items():
            if name not in self._lanes:
                self._start_lane(name, target)
        for wait in waits:
            await wait()

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
