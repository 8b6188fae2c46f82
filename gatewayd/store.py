"""The durable store: the :class:`Store` interface and its SQLite implementation.

This is the only module that speaks SQL. Everything the rest of gatewayd keeps on disk
goes through :class:`Store`: inbound events and their delivery jobs (written before the
SMSC gets ``deliver_sm_resp``), the per-attempt history, pending concatenation parts and
outbound messages with their carrier message ids.

Writes: group commit
--------------------
One writer task (:meth:`SqliteStore.run`) owns the write connection. Every write
(``persist``, ``claim_due``, ``record_attempts``, ``replay``, ...) is queued as an
operation and the writer drains *everything* queued into ONE transaction, commits it
(one fsync with ``synchronous=FULL``) and wakes all waiters. Each operation runs under a
savepoint, so a logic error in one (an unknown event id) fails only that one. If the
transaction cannot begin or commit (disk full, database locked, I/O error) the whole
batch is rolled back and every waiter gets :class:`StoreError`; the writer carries on
and later batches succeed once the cause is gone. There is no "wait to collect" window:
a batch is whatever arrived while the previous one was committing.

Relaxed commits: a batch made ONLY of operations whose loss can at worst cause a
re-delivery (recorded attempts, claims, releases, the start-up re-queue: ``_Op.relaxed``)
commits with ``synchronous=NORMAL`` instead of the configured mode (``FULL``: one fsync
of the WAL per commit); every other batch (a persist, a send-API write, a replay, a
config-driven dead-lettering, anything that creates or acknowledges data) commits with
the configured mode. Why that is safe, in WAL mode:

- a NORMAL commit is durable against a process crash (SIGKILL, OOM kill): its frames are
  in the WAL file in the OS page cache. Only a power loss or kernel crash can lose it;
- WAL frames are appended in commit order and the next FULL commit fsyncs the WAL file,
  which makes every earlier frame durable too. So a power loss can only roll back the
  relaxed transactions after the last FULL commit (a suffix: SQLite's recovery stops at
  the first frame whose cumulative checksum fails), never a persist or anything that a
  later FULL commit built on;
- what such a loss undoes: a recorded attempt (the job is back ``inflight``, re-queued at
  start and delivered again: a counted duplicate, never a lost message), a claim (the
  jobs are ``queued`` instead of ``inflight``: the same after the start-up re-queue), a
  release or a re-queue (the jobs stay ``inflight``: re-queued at the next start).

Relaxed batches use ``min(configured, NORMAL)``; the connection's ``synchronous`` pragma
(which cannot change inside a transaction) is switched before BEGIN, and only when the
mode changes. ``relax_records=False`` turns this off; ``relaxed_commits`` counts them.

The statements of a batch always run on the event loop. Where COMMIT (the fsync) runs
depends on ``use_thread``: ``"auto"`` (the default) commits inline while recent commits
are fast (the p90 of the last :data:`COMMIT_WINDOW` commits under
:data:`INLINE_COMMIT_MAX` seconds: a thread hop costs ~100 µs plus GIL re-acquisition,
more than a fast fsync) and in a worker thread (``trio.to_thread``) otherwise, so a slow
disk never stalls the event loop; ``True`` always commits in a thread; ``False`` runs
commits and reads inline. ``bench/bench_store.py`` measures both.

Hand-off: a :class:`JobTaker` (the dispatcher) may take a job that ``persist`` creates
straight into memory. The job is then written ``inflight`` in the same transaction (so a
crash re-queues it, exactly like a claimed job) and given to the taker after the commit,
with the event object itself: no ``claim_due`` and no JSON decoding for it. A claim that
takes every due job of a destination tells the taker (``drained``), so jobs created after
it in the write order may be handed over again.

Attempts are recorded per batch with three ``executemany`` statements (history rows,
job updates, event statuses computed in SQL), whatever the batch size.

When the writer is not running (command-line tools, tests) a write runs as its own
transaction in a thread.

Reads use a second connection (WAL lets readers run beside the writer), in a thread;
point lookups by an index (a message, a part, a lane's next due time: once per message on
the outbound and receipt paths) run inline under ``"auto"`` while recent ones are fast,
by the same p90 rule as commits (:data:`INLINE_READ_MAX`).

Time: every timestamp is wall-clock epoch seconds from the injected ``wall_clock``.

Exceptions::

    StoreError            the store could not do it (commit failed, locked, disk full,
     |                    closed); temporary: the caller may retry later
     +-- StoreClosed      the writer stopped while the operation was queued
    EventNotFound         (a LookupError) no event with that id
"""

from __future__ import annotations

import abc
import datetime as dt
import enum
import logging
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final, Literal, Protocol, TypeVar

import attrs
import trio

from gatewayd.destinations.base import AttemptResult, Job
from gatewayd.events import Event, event_from_json, event_to_json

__all__ = [
    "AttemptRecord",
    "ClaimedJob",
    "ConcatPart",
    "EventNotFound",
    "EventRecord",
    "EventStatus",
    "EventSummary",
    "JobCount",
    "JobRecord",
    "JobState",
    "JobTaker",
    "MessagePartRecord",
    "MessageRecord",
    "Page",
    "PersistItem",
    "PersistResult",
    "PersistStatus",
    "RecordItem",
    "SqliteStore",
    "Store",
    "StoreClosed",
    "StoreError",
    "StoreStats",
    "StoredConcatPart",
]

log = logging.getLogger("gatewayd.store")

T = TypeVar("T")

RESPONSE_EXCERPT_MAX: Final = 1024  # bytes of UTF-8 kept of a peer's answer
ERROR_MAX: Final = 1024
COMMIT_WINDOW: Final = 50  # commits the adaptive inline/thread choice looks back on
INLINE_COMMIT_MAX: Final = 0.002  # s: commit inline while the p90 commit is faster
INLINE_READ_MAX: Final = 0.001  # s: point reads inline while the p90 of recent ones is faster


# --------------------------------------------------------------------------- errors


class StoreError(Exception):
    """The store could not complete the operation; nothing of it was written."""


class StoreClosed(StoreError):
    """The writer stopped before the operation was committed."""


class EventNotFound(LookupError):
    """No event with that id."""


# --------------------------------------------------------------------------- records


class JobState(enum.StrEnum):
    QUEUED = "queued"
    INFLIGHT = "inflight"
    DELIVERED = "delivered"
    DEAD = "dead"
    DROPPED = "dropped"


FINAL_STATES: Final = frozenset({JobState.DELIVERED, JobState.DEAD, JobState.DROPPED})


class EventStatus(enum.StrEnum):
    """A summary of an event's (current, not replayed-over) jobs."""

    PENDING = "pending"  # some job waits for its first attempt or is in flight
    RETRYING = "retrying"  # some job failed at least once and will be retried
    DELIVERED = "delivered"  # every job delivered or dropped, at least one delivered
    DEAD = "dead"  # every job final, at least one dead
    DROPPED = "dropped"  # every job dropped on purpose
    UNROUTED = "unrouted"  # no job at all


class PersistStatus(enum.Enum):
    STORED = "stored"
    DUPLICATE = "duplicate"  # seen within the dedup window: acknowledge, deliver nothing


@attrs.frozen(kw_only=True)
class ConcatPart:
    """One part of a concatenated message, kept until its set is complete."""

    key: str
    seq: int
    json: str


@attrs.frozen(kw_only=True)
class StoredConcatPart:
    key: str
    seq: int
    json: str
    created_at: float


@attrs.frozen(kw_only=True)
class PersistItem:
    """What one ``deliver_sm`` makes durable before it is acknowledged.

    ``event`` is None when only a concatenation part is saved. ``dedup_key`` (for an
    event) identifies a resend of the same message by the SMSC.
    """

    event: Event | None
    destinations: tuple[str, ...] = ()
    concat_part: ConcatPart | None = None
    completed_concat_keys: tuple[str, ...] = ()
    dedup_key: str | None = None


@attrs.frozen(kw_only=True)
class PersistResult:
    status: PersistStatus
    event_id: str | None = None  # the stored event, or the original one for a duplicate
    job_ids: tuple[int, ...] = ()


@attrs.frozen(kw_only=True)
class ClaimedJob:
    """A job now in flight, with its decoded event."""

    job: Job
    event: Event


@attrs.frozen(kw_only=True)
class RecordItem:
    """One finished attempt for :meth:`Store.record_attempts`."""

    job_id: int
    result: AttemptResult
    next_at: float | None
    final_state: JobState | None = None


class JobTaker(Protocol):
    """Takes jobs created by ``persist`` into memory (see the module docstring).

    ``reserve`` runs inside the write transaction and returns a token, or None to leave
    the job queued in the store. Every token is settled exactly once after the commit:
    ``accept(token, job)`` if the job is durable (``inflight``), else ``cancel(token)``.
    """

    def reserve(self, destination: str) -> object | None: ...

    def accept(self, token: object, job: ClaimedJob) -> None: ...

    def cancel(self, token: object) -> None: ...

    # Optional (looked up with getattr, so older takers need not have it):
    #
    # def drained(self, destination: str, claimed: int) -> None
    #
    # Called inside the write transaction when ``claim_due`` took every job due for
    # ``destination`` (``claimed`` of them, not yet returned to the caller). Jobs that
    # later operations create may then be reserved without overtaking queued ones. If the
    # batch fails, ``claim_due`` raises StoreError and the jobs stay queued.


@attrs.frozen(kw_only=True)
class JobRecord:
    id: int
    event_id: str
    destination: str
    state: JobState
    attempts: int
    next_at: float
    last_error: str
    created_at: float
    updated_at: float
    replayed_by: int | None = None  # a dead job replaced by a replay


@attrs.frozen(kw_only=True)
class AttemptRecord:
    """One row of the per-push history."""

    job_id: int
    event_id: str
    destination: str
    attempt: int
    at: float
    target: str
    status_code: int | None
    latency_ms: float
    error: str
    response_excerpt: str
    outcome: str


@attrs.frozen(kw_only=True)
class EventSummary:
    id: str
    type: str
    carrier: str
    source: str
    destination: str
    received_at: dt.datetime
    created_at: float
    status: EventStatus


@attrs.frozen(kw_only=True)
class EventRecord:
    event: Event
    status: EventStatus
    created_at: float
    dedup_key: str | None
    jobs: tuple[JobRecord, ...]
    attempts: tuple[AttemptRecord, ...]


@attrs.frozen(kw_only=True)
class Page:
    """One page of :meth:`Store.list_events`, newest first; pass ``next_cursor`` on."""

    items: tuple[EventSummary, ...]
    next_cursor: str | None


@attrs.frozen(kw_only=True)
class JobCount:
    destination: str
    state: JobState
    count: int


@attrs.frozen(kw_only=True)
class StoreStats:
    jobs: tuple[JobCount, ...]  # dead jobs replaced by a replay are not counted
    concat_parts: int
    events: int


@attrs.frozen(kw_only=True)
class MessageRecord:
    """An outbound message (send API or forward)."""

    id: str
    carrier: str
    from_number: str
    to_number: str
    text: str
    status_url: str | None = None
    delivery: str | None = None  # destination name for its receipts
    custom_json: str = "{}"
    created_at: float = 0.0  # 0: stamped by the store
    parts: int = 1


@attrs.frozen(kw_only=True)
class MessagePartRecord:
    """One submit_sm of an outbound message and the carrier's message id for it."""

    message_id: str
    part: int
    carrier: str
    carrier_message_id: str
    normalized_id: str
    status: str = "submitted"
    updated_at: float = 0.0


# --------------------------------------------------------------------------- interface


class Store(abc.ABC):
    """What gatewayd needs from durable storage (SQLite now, a server database later)."""

    @abc.abstractmethod
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The writer: recover in-flight jobs, then commit queued writes until cancelled."""

    @abc.abstractmethod
    async def persist(self, item: PersistItem) -> PersistResult:
        """Make an item durable (group-committed). Raises :class:`StoreError`."""

    @abc.abstractmethod
    async def claim_due(self, destination: str, now: float, limit: int) -> list[ClaimedJob]:
        """Mark up to ``limit`` queued jobs due at ``now`` as in flight and return them."""

    @abc.abstractmethod
    async def record_attempt(
        self,
        job_id: int,
        result: AttemptResult,
        *,
        next_at: float | None,
        final_state: JobState | None = None,
    ) -> None:
        """Record one attempt; the job becomes ``final_state`` or is queued for ``next_at``."""

    async def record_attempts(self, items: Sequence[RecordItem]) -> None:
        """Record many attempts (one write where the backend can batch)."""
        for item in items:
            await self.record_attempt(
                item.job_id, item.result, next_at=item.next_at, final_state=item.final_state
            )

    def set_job_taker(self, taker: JobTaker | None) -> None:
        """Let ``taker`` take new jobs in memory (backends may ignore it)."""
        return

    @abc.abstractmethod
    async def release(self, job_ids: Sequence[int]) -> None:
        """Put in-flight jobs back in the queue without recording an attempt."""

    @abc.abstractmethod
    async def next_due_at(self, destination: str) -> float | None:
        """When the earliest queued job of ``destination`` is due (None: none queued)."""

    @abc.abstractmethod
    async def requeue_inflight(self) -> int:
        """After a crash: every in-flight job goes back to the queue (attempts kept)."""

    @abc.abstractmethod
    async def dead_letter_destination(self, name: str, reason: str) -> int:
        """Dead-letter the queued jobs of a destination that no longer exists."""

    @abc.abstractmethod
    async def pull_forward(self, destination: str, limit: int) -> int:
        """The destination is reachable again: make up to ``limit`` of its queued retries
        whose last attempt never reached it (no status code: refused, reset, timed out)
        due now. Retries after an answer (a 5xx, a 429) keep their schedule. Returns how
        many were moved; call again while it returns ``limit``."""

    @abc.abstractmethod
    async def get_event(self, event_id: str) -> EventRecord:
        """An event with its jobs and every attempt. Raises :class:`EventNotFound`."""

    @abc.abstractmethod
    async def list_events(
        self,
        *,
        status: EventStatus | None = None,
        destination: str | None = None,
        number: str | None = None,
        since: float | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page:
        """Events newest first, filtered; ``number`` matches source or destination."""

    @abc.abstractmethod
    async def replay(self, event_id: str, destination: str | None = None) -> list[int]:
        """New jobs for the same event (every destination it had, or just one)."""

    @abc.abstractmethod
    async def replay_dead(self, destination: str | None = None) -> int:
        """A new job for every dead job (of one destination or all); returns how many."""

    @abc.abstractmethod
    async def prune(self, delivered_before: float, dead_before: float) -> int:
        """Delete finished events (and their jobs and attempts) older than the cut-offs."""

    @abc.abstractmethod
    async def stats(self) -> StoreStats:
        """Counters for metrics."""

    async def ping(self) -> None:
        """Raise StoreError unless a write transaction can be taken and committed now
        (readiness: a store that cannot commit makes every deliver_sm a temporary error)."""
        await self.stats()

    @abc.abstractmethod
    async def load_concat_parts(self, key: str | None = None) -> list[StoredConcatPart]:
        """Pending concatenation parts (of one set, or all), ordered by key and seq."""

    @abc.abstractmethod
    async def save_message(
        self, message: MessageRecord, parts: Sequence[MessagePartRecord] = ()
    ) -> None:
        """Store an outbound message (and any parts already submitted)."""

    @abc.abstractmethod
    async def add_message_part(self, part: MessagePartRecord) -> None:
        """Store (or replace) one submitted part of an outbound message."""

    @abc.abstractmethod
    async def get_message(self, message_id: str) -> tuple[MessageRecord, list[MessagePartRecord]]:
        """An outbound message and its parts. Raises ``LookupError``."""

    @abc.abstractmethod
    async def find_message_part(
        self, carrier: str, normalized_id: str, *, exact: str | None = None
    ) -> MessagePartRecord | None:
        """The part a receipt reports on, by carrier and normalized message id; with
        ``exact``, only a part whose carrier id is that text (case-insensitive)."""

    @abc.abstractmethod
    async def set_message_part_status(self, message_id: str, part: int, status: str) -> None:
        """Update the delivery status of one part."""

    # Outbound queueing (gatewayd.outbound). Not abstract, so other backends can follow.

    async def queue_message(self, message: MessageRecord, event: Event, destination: str) -> int:
        """Store an outbound message, a stand-in event for it (``event.id == message.id``,
        kept with type ``mt``) and one job for ``destination``, in ONE transaction; return
        the job id. Nothing of it is written if any of it fails."""
        raise NotImplementedError

    async def ensure_message(self, message: MessageRecord) -> bool:
        """Store ``message`` unless a message with its id exists; True if it was stored."""
        raise NotImplementedError

    async def message_concat_ref(self, message_id: str) -> int:
        """The 8-bit concatenation reference of a multi-part message: how many multi-part
        messages to the same number were stored before it, modulo 256. Derived from the
        insertion order, so it is the same on every retry and after restarts."""
        raise NotImplementedError

    async def set_message_part_receipt(self, message_id: str, part: int, status: str) -> None:
        """Record a receipt's status for one part, keeping ``updated_at`` (the submit time).

        A final status (anything but ENROUTE/ACCEPTD/submitted) is never replaced by an
        intermediate one that arrives late."""
        raise NotImplementedError

    @abc.abstractmethod
    def add_job_listener(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(destination)`` after a commit adds jobs for ``destination``."""

    @abc.abstractmethod
    def remove_job_listener(self, listener: Callable[[str], None]) -> None: ...

    @abc.abstractmethod
    def close(self) -> None:
        """Close the connections (after :meth:`run` has stopped)."""


# --------------------------------------------------------------------------- schema

# Each entry migrates from version i to i+1; append, never edit.
# Indexes cost write throughput (each one ~4-8 µs of CPU per persisted row, measured), so
# only the hot paths have one: dedup, the due-job scan, an event's jobs and attempts,
# time ranges. Filters by status or number scan newest-first and stop at the page size.
_MIGRATIONS: Final[tuple[str, ...]] = (
    """
    CREATE TABLE events (
        id          TEXT PRIMARY KEY,
        type        TEXT NOT NULL,
        carrier     TEXT NOT NULL,
        source      TEXT NOT NULL,
        destination TEXT NOT NULL,
        received_at REAL NOT NULL,
        created_at  REAL NOT NULL,
        json        TEXT NOT NULL,
        dedup_key   TEXT,
        status      TEXT NOT NULL
    );
    CREATE INDEX events_dedup ON events (dedup_key) WHERE dedup_key IS NOT NULL;
    CREATE INDEX events_created ON events (created_at);

    CREATE TABLE jobs (
        id          INTEGER PRIMARY KEY,
        event_id    TEXT NOT NULL,
        destination TEXT NOT NULL,
        state       TEXT NOT NULL,
        attempts    INTEGER NOT NULL DEFAULT 0,
        next_at     REAL NOT NULL,
        last_error  TEXT NOT NULL DEFAULT '',
        created_at  REAL NOT NULL,
        updated_at  REAL NOT NULL,
        replayed_by INTEGER
    );
    CREATE INDEX jobs_due ON jobs (destination, state, next_at);
    CREATE INDEX jobs_event ON jobs (event_id);

    CREATE TABLE attempts (
        id               INTEGER PRIMARY KEY,
        job_id           INTEGER NOT NULL,
        event_id         TEXT NOT NULL,
        destination      TEXT NOT NULL,
        attempt          INTEGER NOT NULL,
        at               REAL NOT NULL,
        target           TEXT NOT NULL,
        status_code      INTEGER,
        latency_ms       REAL NOT NULL,
        error            TEXT NOT NULL,
        response_excerpt TEXT NOT NULL,
        outcome          TEXT NOT NULL
    );
    CREATE INDEX attempts_event ON attempts (event_id);

    CREATE TABLE concat_parts (
        key        TEXT NOT NULL,
        seq        INTEGER NOT NULL,
        json       TEXT NOT NULL,
        created_at REAL NOT NULL,
        PRIMARY KEY (key, seq)
    ) WITHOUT ROWID;

    CREATE TABLE messages (
        id          TEXT PRIMARY KEY,
        carrier     TEXT NOT NULL,
        from_number TEXT NOT NULL,
        to_number   TEXT NOT NULL,
        text        TEXT NOT NULL,
        status_url  TEXT,
        delivery    TEXT,
        custom      TEXT NOT NULL,
        created_at  REAL NOT NULL,
        parts       INTEGER NOT NULL
    );
    CREATE INDEX messages_created ON messages (created_at);

    CREATE TABLE message_parts (
        message_id         TEXT NOT NULL,
        part               INTEGER NOT NULL,
        carrier            TEXT NOT NULL,
        carrier_message_id TEXT NOT NULL,
        normalized_id      TEXT NOT NULL,
        status             TEXT NOT NULL,
        updated_at         REAL NOT NULL,
        PRIMARY KEY (message_id, part)
    ) WITHOUT ROWID;
    CREATE INDEX message_parts_carrier_id ON message_parts (carrier, normalized_id);
    """,
)

SCHEMA_VERSION: Final = len(_MIGRATIONS)

Synchronous = Literal["OFF", "NORMAL", "FULL", "EXTRA"]


def _epoch(value: dt.datetime) -> float:
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.timestamp()


def _excerpt(text: str, limit: int) -> str:
    """At most ``limit`` bytes of UTF-8, never cutting a character in half."""
    raw = text.encode("utf-8", "replace")
    if len(raw) <= limit:
        return text
    return raw[:limit].decode("utf-8", "ignore")


# The event status from its jobs (those not replaced by a replay), over the jobs of the
# event being updated (``events.id``), in one statement. tests/test_store.py checks it
# against a plain-Python statement of the rules on every combination of job states.
_STATUS_SQL: Final = (
    "SELECT CASE"
    " WHEN COUNT(*) = 0 THEN 'unrouted'"
    " WHEN SUM(state IN ('queued', 'inflight') AND attempts > 0) > 0 THEN 'retrying'"
    " WHEN SUM(state IN ('queued', 'inflight')) > 0 THEN 'pending'"
    " WHEN SUM(state = 'dead') > 0 THEN 'dead'"
    " WHEN SUM(state = 'dropped') = COUNT(*) THEN 'dropped'"
    " ELSE 'delivered' END"
    " FROM jobs WHERE event_id = events.id AND replayed_by IS NULL"
)

# Queued retries of a destination whose last attempt got no answer (status_code NULL), the
# earliest first; attempts_event narrows the subquery to the job's event.
_PULL_FORWARD: Final = """
UPDATE jobs SET next_at = ?, updated_at = ?
WHERE id IN (
    SELECT j.id FROM jobs j
    WHERE j.destination = ? AND j.state = 'queued' AND j.next_at > ? AND j.attempts > 0
      AND (SELECT a.status_code FROM attempts a
           WHERE a.event_id = j.event_id AND a.job_id = j.id
           ORDER BY a.attempt DESC LIMIT 1) IS NULL
    ORDER BY j.next_at
    LIMIT ?
)
"""
_UPDATE_STATUS: Final = f"UPDATE events SET status = ({_STATUS_SQL}) WHERE id = ?"
_UPDATE_STATUS_OF_JOB: Final = (
    f"UPDATE events SET status = ({_STATUS_SQL})"
    " WHERE id = (SELECT event_id FROM jobs WHERE id = ?)"
)
# One finished attempt: the history row (numbered from the job) and the job's new state.
_INSERT_ATTEMPT: Final = (
    "INSERT INTO attempts (job_id, event_id, destination, attempt, at, target,"
    " status_code, latency_ms, error, response_excerpt, outcome)"
    " SELECT id, event_id, destination, attempts + 1, ?, ?, ?, ?, ?, ?, ? FROM jobs WHERE id = ?"
)
_RECORD_JOB: Final = (
    "UPDATE jobs SET state = ?, attempts = attempts + 1, next_at = ?, last_error = ?,"
    " updated_at = ? WHERE id = ?"
)


class _RecentTimes:
    """The last :data:`COMMIT_WINDOW` durations of one kind of call, and whether their p90
    is under ``limit`` (fewer than 10% of them were slower): the inline/thread choice."""

    __slots__ = ("limit", "slow", "times")

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self.times: deque[float] = deque()
        self.slow = 0

    def note(self, seconds: float) -> None:
        times = self.times
        times.append(seconds)
        if seconds >= self.limit:
            self.slow += 1
        if len(times) > COMMIT_WINDOW and times.popleft() >= self.limit:
            self.slow -= 1

    def fast(self) -> bool:
        return self.slow * 10 < max(len(self.times), 1)


class _Op:
    """One queued write: a function of the write connection, and its outcome."""

    __slots__ = (
        "drained",
        "error",
        "finished",
        "fn",
        "handoff",
        "notify",
        "now",
        "relaxed",
        "result",
        "waiter",
    )

    def __init__(
        self, fn: Callable[[sqlite3.Connection, _Op], Any], now: float, *, relaxed: bool = False
    ) -> None:
        self.fn = fn
        self.now = now  # wall-clock time of the request (taken on the event loop)
        # Losing it on power failure can at worst cause a re-delivery: a batch of only such
        # operations may commit with synchronous=NORMAL (see "Relaxed commits" above).
        self.relaxed = relaxed
        # The one task waiting for the outcome. Woken directly rather than through a
        # trio.Event: an Event (and its ParkingLot) per write is measurable at this rate.
        self.waiter: trio.lowlevel.Task | None = None
        self.finished = False
        self.result: Any = None
        self.error: BaseException | None = None
        self.notify: tuple[str, ...] = ()  # destinations that got new jobs
        self.drained: str | None = None  # a claim that took every due job of a destination
        self.handoff: list[tuple[object, ClaimedJob]] = []  # JobTaker tokens to settle

    def finish(self) -> None:
        """The outcome is in ``result``/``error``: wake the waiter (if still waiting)."""
        self.finished = True
        task, self.waiter = self.waiter, None
        if task is not None:
            trio.lowlevel.reschedule(task)

    async def wait(self) -> None:
        """Wait until :meth:`finish`. Cancelling the wait does not cancel the write."""
        if self.finished:
            await trio.lowlevel.checkpoint()
            return
        self.waiter = trio.lowlevel.current_task()
        await trio.lowlevel.wait_task_rescheduled(self._abort)

    def _abort(self, raise_cancel: object) -> trio.lowlevel.Abort:
        self.waiter = None
        return trio.lowlevel.Abort.SUCCEEDED


# --------------------------------------------------------------------------- SQLite


class SqliteStore(Store):
    """The embedded store: one SQLite file in WAL mode.

    Opening creates or migrates the schema. Call :meth:`run` in the daemon's nursery
    for group commit; without it, each write is its own transaction.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: Synchronous = "FULL",
        busy_timeout: float = 5.0,
        dedup_window: float = 600.0,
        use_thread: bool | Literal["auto"] = "auto",
        max_batch: int = 4096,
        wall_clock: Callable[[], float] = time.time,
        relax_records: bool = True,
    ) -> None:
        if synchronous not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"bad synchronous mode {synchronous!r}")
        self.path = Path(path)
        self.dedup_window = dedup_window
        self.use_thread = use_thread
        self.max_batch = max_batch
        self._wall = wall_clock
        self._busy_ms = int(busy_timeout * 1000)
        self._synchronous = synchronous
        # The mode of relaxed batches: min(configured, NORMAL); None if that is no change.
        self._relaxed_mode: Synchronous | None = (
            "NORMAL" if relax_records and synchronous in ("FULL", "EXTRA") else None
        )
        self._sync_now: Synchronous | None = synchronous  # the write connection's; None: unsure
        try:
            self._wconn = self._connect()
            self._migrate(self._wconn)
            # The writer never waits for a lock on the event loop (see _begin).
            self._wconn.execute("PRAGMA busy_timeout = 0")
            self._rconn = self._connect()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open store {self.path}: {exc}") from exc
        self._write_lock = trio.Lock()
        self._read_lock = trio.Lock()
        self._queue: list[_Op] = []
        self._has_work = trio.Event()
        self._running = False
        self._listeners: list[Callable[[str], None]] = []
        self.batches = 0  # committed batches, for tests and metrics
        self.commit_seconds: list[float] = []  # recent commit durations (bounded)
        self.inline_commits = 0  # commits run on the event loop (for tests)
        self.relaxed_commits = 0  # commits made with _relaxed_mode (for tests and metrics)
        # Adaptive inline/thread choice: recent COMMIT and point-read durations.
        self._commit_times = _RecentTimes(INLINE_COMMIT_MAX)
        self._read_times = _RecentTimes(INLINE_READ_MAX)
        self.inline_reads = 0  # point reads run on the event loop (for tests)
        self._taker: JobTaker | None = None

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=self._busy_ms / 1000
        )
        conn.execute(f"PRAGMA busy_timeout = {self._busy_ms}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {self._synchronous}")
        return conn

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = conn.execute("SELECT version FROM schema_version").fetchone()
            current = 0 if row is None else int(row[0])
            if current > SCHEMA_VERSION:
                raise StoreError(f"store schema {current} is newer than this gatewayd's")
            for script in _MIGRATIONS[current:]:
                # executescript would COMMIT first: run the statements one by one.
                for statement in script.split(";"):
                    if statement.strip():
                        conn.execute(statement)
            if row is None:
                conn.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))
            else:
                conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self._wconn.close()
        self._rconn.close()

    def add_job_listener(self, listener: Callable[[str], None]) -> None:
        self._listeners.append(listener)

    def remove_job_listener(self, listener: Callable[[str], None]) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def set_job_taker(self, taker: JobTaker | None) -> None:
        self._taker = taker

    # ----------------------------------------------------------------- the writer

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        if self._running:
            raise RuntimeError("the store writer is already running")
        recovered = await self.requeue_inflight()
        if recovered:
            log.warning("requeued jobs left in flight", extra={"jobs": recovered})
        self._running = True
        task_status.started()
        try:
            while True:
                await self._has_work.wait()
                self._has_work = trio.Event()
                while self._queue:
                    async with self._write_lock:
                        batch = self._queue[: self.max_batch]
                        del self._queue[: self.max_batch]
                        await self._commit(batch)
                    # Let the woken waiters (and new producers) run before the next batch.
                    await trio.lowlevel.checkpoint()
        finally:
            self._running = False
            pending, self._queue = self._queue, []
            for op in pending:
                op.error = StoreClosed("the store writer stopped")
                op.finish()

    async def _offload(self, fn: Callable[[], T]) -> T:
        """Run a blocking sqlite call in a worker thread, or inline if so configured."""
        if self.use_thread:
            return await trio.to_thread.run_sync(fn)
        await trio.lowlevel.checkpoint()
        return fn()

    def _commit_inline(self) -> bool:
        if self.use_thread == "auto":
            return self._commit_times.fast()
        return not self.use_thread

    def _note_commit_time(self, seconds: float) -> None:
        self._commit_times.note(seconds)

    def _commit_now(self) -> None:
        """COMMIT (the fsync, any WAL checkpoint) in the calling thread."""
        self._wconn.execute("COMMIT")

    def _timed_commit(self) -> float:
        start = time.perf_counter()
        self._commit_now()
        return time.perf_counter() - start

    async def _run_commit(self) -> None:
        """COMMIT inline or in a thread (as ``use_thread`` says), timed for the choice."""
        if self._commit_inline():
            # No await on this path: nothing can cancel it, so it needs no shield.
            self.inline_commits += 1
            start = time.perf_counter()
            try:
                self._commit_now()
            finally:
                self._note_commit_time(time.perf_counter() - start)
            return
        # Shielded: the transaction is applied, let the fsync finish.
        with trio.CancelScope(shield=True):
            # the time without the thread hop
            self._note_commit_time(await trio.to_thread.run_sync(self._timed_commit))

    async def _commit(self, batch: list[_Op]) -> None:
        """Commit a batch: statements on the loop, the fsync inline or in a thread.

        The statements are CPU work (~25 µs a row) and run inline: in a thread they would
        fight the event loop for the GIL at every sqlite call. BEGIN is tried without
        waiting and only waits for a lock (busy_timeout) in a thread. COMMIT, where the
        fsync and any WAL checkpoint happen, runs as ``use_thread`` says (see the module
        docstring).
        """
        start = time.perf_counter()
        mode = self._synchronous
        if self._relaxed_mode is not None and all(op.relaxed for op in batch):
            mode = self._relaxed_mode  # only re-deliveries at stake (see the module docstring)
        try:
            try:
                self._set_synchronous(mode)
                await self._begin()
            except sqlite3.Error as exc:
                self._fail_batch(batch, exc, "begin")
            else:
                if self._apply(batch):
                    try:
                        await self._run_commit()
                    except sqlite3.Error as exc:
                        self._rollback()
                        self._fail_batch(batch, exc, "commit")
                    else:
                        if mode != self._synchronous:
                            self.relaxed_commits += 1
                        self.commit_seconds.append(time.perf_counter() - start)
                        if len(self.commit_seconds) > 1024:
                            del self.commit_seconds[:512]
        except BaseException:  # cancelled before the commit: nothing was written
            self._rollback()
            for op in batch:
                op.error = StoreClosed("the store writer stopped")
                self._settle_handoff(op)
                op.finish()
            raise
        self.batches += 1
        notify: set[str] = set()
        for op in batch:
            if op.error is None:
                if op.drained is not None:
                    # A claim saw the jobs queued by the operations before it: no news.
                    notify.discard(op.drained)
                notify.update(op.notify)
            self._settle_handoff(op)
            op.finish()
        for name in sorted(notify):
            for listener in list(self._listeners):
                listener(name)

    def _settle_handoff(self, op: _Op) -> None:
        """Give jobs taken in memory to the taker once durable; else cancel them."""
        if not op.handoff or self._taker is None:
            return
        handoff, op.handoff = op.handoff, []
        for token, job in handoff:
            try:
                if op.error is None:
                    self._taker.accept(token, job)
                else:
                    self._taker.cancel(token)
            except Exception:  # pragma: no cover - a taker must not raise
                log.exception("job taker failed")

    def _set_synchronous(self, mode: Synchronous) -> None:
        """Give the write connection ``mode`` for the next transaction, if it has another.

        Outside a transaction only (SQLite refuses it inside one); a PRAGMA per batch costs
        a few µs, so it is issued only when the mode changes.
        """
        if mode != self._sync_now:
            self._sync_now = None  # unknown until the pragma has run
            self._wconn.execute(f"PRAGMA synchronous = {mode}")
            self._sync_now = mode

    async def _begin(self) -> None:
        conn = self._wconn
        try:
            conn.execute("BEGIN IMMEDIATE")  # busy_timeout is 0 here: never waits
            return
        except sqlite3.OperationalError as exc:
            if self._busy_ms <= 0 or ("locked" not in str(exc) and "busy" not in str(exc)):
                raise

        def wait_for_lock() -> None:
            conn.execute(f"PRAGMA busy_timeout = {self._busy_ms}")
            try:
                conn.execute("BEGIN IMMEDIATE")
            finally:
                conn.execute("PRAGMA busy_timeout = 0")

        await self._offload(wait_for_lock)

    def _apply(self, batch: list[_Op]) -> bool:
        """Run every operation inside the open transaction; False if it had to be dropped."""
        conn = self._wconn
        try:
            for op in batch:
                conn.execute("SAVEPOINT op")
                try:
                    op.result = op.fn(conn, op)
                except sqlite3.Error:
                    raise  # the transaction itself may be gone: fail the batch
                except Exception as exc:  # a logic error in this operation only
                    conn.execute("ROLLBACK TO op")
                    op.error = exc
                    op.notify = ()
                conn.execute("RELEASE op")
        except sqlite3.Error as exc:
            self._rollback()
            self._fail_batch(batch, exc, "write")
            return False
        return True

    def _rollback(self) -> None:
        if self._wconn.in_transaction:
            try:
                self._wconn.execute("ROLLBACK")
            except sqlite3.Error:  # pragma: no cover - nothing more to do
                log.exception("rollback failed")

    def _fail_batch(self, batch: list[_Op], exc: sqlite3.Error, stage: str) -> None:
        log.error("store %s failed: %s", stage, exc, extra={"ops": len(batch), "error": str(exc)})
        for op in batch:
            op.result = None
            op.notify = ()
            op.error = StoreError(f"store {stage} failed: {exc}")

    async def _write(
        self, fn: Callable[[sqlite3.Connection, _Op], T], *, relaxed: bool = False
    ) -> T:
        """Run ``fn`` in a write transaction: group-committed when the writer runs.

        ``fn`` may set ``op.notify`` to the destinations it queued jobs for. ``relaxed``:
        losing this write on power failure can at worst cause a re-delivery (see "Relaxed
        commits" in the module docstring); never for a write that creates or acknowledges
        data.
        """
        op = _Op(fn, self._wall(), relaxed=relaxed)
        if self._running:
            self._queue.append(op)
            self._has_work.set()
            await op.wait()
        else:
            async with self._write_lock:
                await self._commit([op])
        if op.error is not None:
            raise op.error
        result: T = op.result
        return result

    async def _read(self, fn: Callable[[sqlite3.Connection], T], *, point: bool = False) -> T:
        """Run a query on the read connection, in a thread (see :meth:`_offload`).

        ``point``: a lookup by key through an index (a message, a part, a lane's next due
        time), made once per message on the outbound and receipt paths. With
        ``use_thread="auto"`` it runs inline while recent point reads are fast (the same
        p90 rule as commits, :data:`INLINE_READ_MAX`): the thread hop costs more than the
        read. Any other read (listings, stats, history) always takes the thread."""

        def call() -> T:
            start = time.perf_counter()
            try:
                return fn(self._rconn)
            except sqlite3.Error as exc:
                raise StoreError(f"store read failed: {exc}") from exc
            finally:
                if point:
                    self._read_times.note(time.perf_counter() - start)

        async with self._read_lock:
            if point and self._read_inline():
                self.inline_reads += 1
                await trio.lowlevel.checkpoint()
                return call()
            return await self._offload(call)

    def _read_inline(self) -> bool:
        if self.use_thread == "auto":
            return self._read_times.fast()
        return not self.use_thread

    # ----------------------------------------------------------------- persist

    async def persist(self, item: PersistItem) -> PersistResult:
        event = item.event
        if event is None and item.destinations:
            raise ValueError("jobs need an event")
        # Serialize here, outside the transaction, so the batch stays short.
        payload = None if event is None else event_to_json(event)
        return await self._write(lambda conn, op: self._persist_op(conn, item, payload, op))

    def _persist_op(
        self, conn: sqlite3.Connection, item: PersistItem, payload: str | None, op: _Op
    ) -> PersistResult:
        now = op.now
        event = item.event
        if item.concat_part is not None:
            part = item.concat_part
            cur = conn.execute(
                "INSERT INTO concat_parts (key, seq, json, created_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (key, seq) DO NOTHING",
                (part.key, part.seq, part.json, now),
            )
            if event is None and cur.rowcount == 0:
                return PersistResult(status=PersistStatus.DUPLICATE)
        if item.completed_concat_keys:
            conn.executemany(
                "DELETE FROM concat_parts WHERE key = ?",
                [(key,) for key in item.completed_concat_keys],
            )
        if event is None or payload is None:
            return PersistResult(status=PersistStatus.STORED)
        if item.dedup_key is not None:
            row = conn.execute(
                "SELECT id FROM events WHERE dedup_key = ? AND created_at >= ? LIMIT 1",
                (item.dedup_key, now - self.dedup_window),
            ).fetchone()
            if row is not None:
                return PersistResult(status=PersistStatus.DUPLICATE, event_id=row[0])
        status = EventStatus.PENDING if item.destinations else EventStatus.UNROUTED
        cur = conn.execute(
            "INSERT INTO events (id, type, carrier, source, destination, received_at,"
            " created_at, json, dedup_key, status) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (id) DO NOTHING",
            (
                event.id,
                event.type,
                event.carrier,
                event.source.addr,
                event.destination.addr,
                _epoch(event.received_at),
                now,
                payload,
                item.dedup_key,
                status.value,
            ),
        )
        if cur.rowcount == 0:  # the same event persisted again (a retried persist)
            return PersistResult(status=PersistStatus.DUPLICATE, event_id=event.id)
        job_ids = []
        queued: list[str] = []
        taker = self._taker
        for name in item.destinations:
            # Taken in memory: written in flight, so a crash re-queues it (requeue_inflight).
            token = None if taker is None else taker.reserve(name)
            try:
                cur = conn.execute(
                    "INSERT INTO jobs (event_id, destination, state, attempts, next_at,"
                    " created_at, updated_at) VALUES (?, ?, ?, 0, ?, ?, ?)",
                    (event.id, name, "queued" if token is None else "inflight", now, now, now),
                )
            except BaseException:
                if taker is not None and token is not None:
                    taker.cancel(token)
                raise
            assert cur.lastrowid is not None
            job_ids.append(cur.lastrowid)
            if token is None:
                queued.append(name)
            else:
                job = Job(id=cur.lastrowid, event_id=event.id, destination=name, attempt=1)
                op.handoff.append((token, ClaimedJob(job=job, event=event)))
        op.notify = tuple(queued)
        return PersistResult(status=PersistStatus.STORED, event_id=event.id, job_ids=tuple(job_ids))

    # ----------------------------------------------------------------- dispatcher

    async def claim_due(self, destination: str, now: float, limit: int) -> list[ClaimedJob]:
        if limit <= 0:
            return []

        def op(conn: sqlite3.Connection, op: _Op) -> list[ClaimedJob]:
            rows = conn.execute(
                "SELECT j.id, j.event_id, j.attempts, e.json FROM jobs j"
                " JOIN events e ON e.id = j.event_id"
                " WHERE j.destination = ? AND j.state = 'queued' AND j.next_at <= ?"
                " ORDER BY j.next_at, j.id LIMIT ?",
                (destination, now, limit),
            ).fetchall()
            stamp = op.now
            claimed = []
            for job_id, event_id, attempts, payload in rows:
                try:
                    event = event_from_json(payload)
                except (ValueError, KeyError, TypeError) as exc:
                    # Unreadable (e.g. a newer schema): never claimable, so dead-letter it.
                    conn.execute(
                        "UPDATE jobs SET state = 'dead', last_error = ?, updated_at = ?"
                        " WHERE id = ?",
                        (f"cannot decode the stored event: {exc}", stamp, job_id),
                    )
                    self._update_status(conn, event_id)
                    continue
                job = Job(
                    id=job_id, event_id=event_id, destination=destination, attempt=attempts + 1
                )
                claimed.append(ClaimedJob(job=job, event=event))
            conn.executemany(
                "UPDATE jobs SET state = 'inflight', updated_at = ? WHERE id = ?",
                [(stamp, c.job.id) for c in claimed],
            )
            if len(rows) < limit:
                # Nothing more is due for this destination at this point of the write
                # order: jobs committed after it may be handed over (see JobTaker.drained),
                # and what earlier operations of this batch queued was seen by this claim.
                op.drained = destination
                drained = getattr(self._taker, "drained", None)
                if drained is not None:
                    drained(destination, len(claimed))
            return claimed

        # Relaxed: a claim lost to a power cut leaves the jobs queued, as the start-up
        # re-queue of in-flight jobs would; at worst they are delivered again.
        return await self._write(op, relaxed=True)

    async def record_attempt(
        self,
        job_id: int,
        result: AttemptResult,
        *,
        next_at: float | None,
        final_state: JobState | None = None,
    ) -> None:
        item = RecordItem(job_id=job_id, result=result, next_at=next_at, final_state=final_state)
        todo = [(item, self._state_after(next_at, final_state))]

        def op(conn: sqlite3.Connection, op: _Op) -> None:
            if self._record_batch(conn, op.now, todo):
                raise LookupError(f"no job {job_id}")

        await self._write(op, relaxed=True)  # lost: re-queued and delivered again

    async def record_attempts(self, items: Sequence[RecordItem]) -> None:
        """Record many attempts in ONE write operation (the dispatcher's batches).

        A job that no longer exists is skipped with a warning; the others are recorded.
        """
        todo = [(i, self._state_after(i.next_at, i.final_state)) for i in items]

        def op(conn: sqlite3.Connection, op: _Op) -> None:
            for job_id in self._record_batch(conn, op.now, todo):
                log.warning("recording an attempt: no such job", extra={"job_id": job_id})

        if todo:
            # Relaxed: a lost record leaves the job in flight, so it is re-queued at start
            # and delivered again (a duplicate), never lost.
            await self._write(op, relaxed=True)

    @staticmethod
    def _state_after(next_at: float | None, final_state: JobState | None) -> JobState:
        if final_state is None:
            if next_at is None:
                raise ValueError("a job that is not final needs next_at")
            return JobState.QUEUED
        if final_state in FINAL_STATES:
            return final_state
        raise ValueError(f"{final_state} is not a final state")

    def _record_batch(
        self, conn: sqlite3.Connection, now: float, todo: Sequence[tuple[RecordItem, JobState]]
    ) -> list[int]:
        """Record attempts with three statements for the whole batch (``executemany``).

        Returns the ids of the jobs that do not exist; nothing is written for them.
        """
        ids = [item.job_id for item, _ in todo]
        if len(set(ids)) != len(ids):
            # The same job twice: its attempt numbers must follow each other, one by one.
            return [i for entry in todo for i in self._record_batch(conn, now, [entry])]
        attempts = []
        jobs = []
        for item, state in todo:
            result = item.result
            error = _excerpt(result.error, ERROR_MAX)
            attempts.append(
                (
                    now,
                    result.target,
                    result.status_code,
                    result.latency_ms,
                    error,
                    _excerpt(result.response_excerpt, RESPONSE_EXCERPT_MAX),
                    result.outcome.value,
                    item.job_id,
                )
            )
            next_at = now if item.next_at is None else item.next_at
            jobs.append((state.value, next_at, error, now, item.job_id))
        # Each attempt row takes its number and names from the job before it is updated.
        written = conn.executemany(_INSERT_ATTEMPT, attempts).rowcount
        missing: list[int] = []
        if written != len(ids):
            found: set[int] = set()
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                marks = ", ".join("?" * len(chunk))
                sql = f"SELECT id FROM jobs WHERE id IN ({marks})"
                found.update(r[0] for r in conn.execute(sql, chunk))
            missing = [i for i in ids if i not in found]
        conn.executemany(_RECORD_JOB, jobs)
        conn.executemany(_UPDATE_STATUS_OF_JOB, [(i,) for i in ids])
        return missing

    async def release(self, job_ids: Sequence[int]) -> None:
        ids = list(job_ids)

        def op(conn: sqlite3.Connection, op: _Op) -> None:
            conn.executemany(
                "UPDATE jobs SET state = 'queued' WHERE id = ? AND state = 'inflight'",
                [(i,) for i in ids],
            )

        if ids:
            await self._write(op, relaxed=True)  # lost: in flight, re-queued at start

    async def next_due_at(self, destination: str) -> float | None:
        def query(conn: sqlite3.Connection) -> float | None:
            row = conn.execute(
                "SELECT MIN(next_at) FROM jobs WHERE destination = ? AND state = 'queued'",
                (destination,),
            ).fetchone()
            return None if row is None or row[0] is None else float(row[0])

        return await self._read(query, point=True)

    async def requeue_inflight(self) -> int:
        def op(conn: sqlite3.Connection, op: _Op) -> int:
            cur = conn.execute(
                "UPDATE jobs SET state = 'queued', updated_at = ? WHERE state = 'inflight'",
                (op.now,),
            )
            return cur.rowcount

        return await self._write(op, relaxed=True)  # lost: done again at the next start

    async def dead_letter_destination(self, name: str, reason: str) -> int:
        def op(conn: sqlite3.Connection, op: _Op) -> int:
            events = [
                r[0]
                for r in conn.execute(
                    "SELECT DISTINCT event_id FROM jobs WHERE destination = ? AND state = 'queued'",
                    (name,),
                )
            ]
            cur = conn.execute(
                "UPDATE jobs SET state = 'dead', last_error = ?, updated_at = ?"
                " WHERE destination = ? AND state = 'queued'",
                (_excerpt(reason, ERROR_MAX), op.now, name),
            )
            for event_id in events:
                self._update_status(conn, event_id)
            return cur.rowcount

        return await self._write(op)

    async def pull_forward(self, destination: str, limit: int) -> int:
        def op(conn: sqlite3.Connection, op: _Op) -> int:
            cur = conn.execute(_PULL_FORWARD, (op.now, op.now, destination, op.now, limit))
            if cur.rowcount:
                op.notify = (destination,)
            return cur.rowcount

        return await self._write(op)

    @staticmethod
    def _update_status(conn: sqlite3.Connection, event_id: str) -> None:
        conn.execute(_UPDATE_STATUS, (event_id,))

    # ----------------------------------------------------------------- history

    async def get_event(self, event_id: str) -> EventRecord:
        def query(conn: sqlite3.Connection) -> EventRecord:
            row = conn.execute(
                "SELECT json, status, created_at, dedup_key FROM events WHERE id = ?",
                (event_id,),
            ).fetchone()
            if row is None:
                raise EventNotFound(event_id)
            jobs = conn.execute(
                "SELECT id, event_id, destination, state, attempts, next_at, last_error,"
                " created_at, updated_at, replayed_by FROM jobs WHERE event_id = ? ORDER BY id",
                (event_id,),
            ).fetchall()
            attempts = conn.execute(
                "SELECT job_id, event_id, destination, attempt, at, target, status_code,"
                " latency_ms, error, response_excerpt, outcome FROM attempts"
                " WHERE event_id = ? ORDER BY id",
                (event_id,),
            ).fetchall()
            return EventRecord(
                event=event_from_json(row[0]),
                status=EventStatus(row[1]),
                created_at=row[2],
                dedup_key=row[3],
                jobs=tuple(_job_record(j) for j in jobs),
                attempts=tuple(_attempt_record(a) for a in attempts),
            )

        return await self._read(query)

    async def list_events(
        self,
        *,
        status: EventStatus | None = None,
        destination: str | None = None,
        number: str | None = None,
        since: float | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page:
        where: list[str] = []
        args: list[Any] = []
        if status is not None:
            where.append("status = ?")
            args.append(EventStatus(status).value)
        if destination is not None:
            where.append("id IN (SELECT event_id FROM jobs WHERE destination = ?)")
            args.append(destination)
        if number is not None:
            where.append("(source = ? OR destination = ?)")
            args += [number, number]
        if since is not None:
            where.append("created_at >= ?")
            args.append(since)
        if cursor is not None:
            where.append("id < ?")
            args.append(cursor)
        limit = max(1, min(limit, 1000))
        sql = (
            "SELECT id, type, carrier, source, destination, received_at, created_at, status"
            " FROM events"
            + (" WHERE " + " AND ".join(where) if where else "")
            + " ORDER BY id DESC LIMIT ?"
        )
        args.append(limit + 1)

        def query(conn: sqlite3.Connection) -> Page:
            rows = conn.execute(sql, args).fetchall()
            items = tuple(
                EventSummary(
                    id=r[0],
                    type=r[1],
                    carrier=r[2],
                    source=r[3],
                    destination=r[4],
                    received_at=dt.datetime.fromtimestamp(r[5], dt.UTC),
                    created_at=r[6],
                    status=EventStatus(r[7]),
                )
                for r in rows[:limit]
            )
            more = len(rows) > limit
            return Page(items=items, next_cursor=items[-1].id if more and items else None)

        return await self._read(query)

    async def replay(self, event_id: str, destination: str | None = None) -> list[int]:
        def fn(conn: sqlite3.Connection, op: _Op) -> list[int]:
            if conn.execute("SELECT 1 FROM events WHERE id = ?", (event_id,)).fetchone() is None:
                raise EventNotFound(event_id)
            if destination is None:
                names = [
                    r[0]
                    for r in conn.execute(
                        "SELECT DISTINCT destination FROM jobs WHERE event_id = ?"
                        " ORDER BY destination",
                        (event_id,),
                    )
                ]
            else:
                names = [destination]
            now = op.now
            ids = []
            for name in names:
                cur = conn.execute(
                    "INSERT INTO jobs (event_id, destination, state, attempts, next_at,"
                    " created_at, updated_at) VALUES (?, ?, 'queued', 0, ?, ?, ?)",
                    (event_id, name, now, now, now),
                )
                assert cur.lastrowid is not None
                ids.append(cur.lastrowid)
                conn.execute(
                    "UPDATE jobs SET replayed_by = ? WHERE event_id = ? AND destination = ?"
                    " AND state = 'dead' AND replayed_by IS NULL",
                    (cur.lastrowid, event_id, name),
                )
            self._update_status(conn, event_id)
            op.notify = tuple(names)
            return ids

        return await self._write(fn)

    async def replay_dead(self, destination: str | None = None) -> int:
        def fn(conn: sqlite3.Connection, op: _Op) -> int:
            sql = "SELECT id, event_id, destination FROM jobs WHERE state = 'dead'"
            sql += " AND replayed_by IS NULL"
            args: tuple[str, ...] = ()
            if destination is not None:
                sql += " AND destination = ?"
                args = (destination,)
            rows = conn.execute(sql + " ORDER BY id", args).fetchall()
            now = op.now
            for job_id, event_id, name in rows:
                cur = conn.execute(
                    "INSERT INTO jobs (event_id, destination, state, attempts, next_at,"
                    " created_at, updated_at) VALUES (?, ?, 'queued', 0, ?, ?, ?)",
                    (event_id, name, now, now, now),
                )
                conn.execute(
                    "UPDATE jobs SET replayed_by = ? WHERE id = ?", (cur.lastrowid, job_id)
                )
            for event_id in {r[1] for r in rows}:
                self._update_status(conn, event_id)
            op.notify = tuple(sorted({r[2] for r in rows}))
            return len(rows)

        return await self._write(fn)

    async def prune(self, delivered_before: float, dead_before: float, *, chunk: int = 2000) -> int:
        def fn(conn: sqlite3.Connection, op: _Op) -> int:
            ids = [
                r[0]
                for r in conn.execute(
                    "SELECT id FROM events WHERE (status IN ('delivered', 'dropped', 'unrouted')"
                    " AND created_at < ?) OR (status = 'dead' AND created_at < ?) LIMIT ?",
                    (delivered_before, dead_before, chunk),
                )
            ]
            rows = [(i,) for i in ids]
            conn.executemany("DELETE FROM attempts WHERE event_id = ?", rows)
            conn.executemany("DELETE FROM jobs WHERE event_id = ?", rows)
            conn.executemany("DELETE FROM events WHERE id = ?", rows)
            return len(ids)

        total = 0
        while True:
            n = await self._write(fn)
            total += n
            if n < chunk:
                return total

    async def ping(self) -> None:
        # An empty write through the writer: takes the write lock and commits, like ingest.
        await self._write(lambda conn, op: None)

    async def stats(self) -> StoreStats:
        def query(conn: sqlite3.Connection) -> StoreStats:
            rows = conn.execute(
                "SELECT destination, state, COUNT(*) FROM jobs WHERE replayed_by IS NULL"
                " GROUP BY destination, state ORDER BY destination, state"
            ).fetchall()
            parts = conn.execute("SELECT COUNT(*) FROM concat_parts").fetchone()[0]
            events = conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
            return StoreStats(
                jobs=tuple(JobCount(destination=d, state=JobState(s), count=n) for d, s, n in rows),
                concat_parts=parts,
                events=events,
            )

        return await self._read(query)

    # ----------------------------------------------------------------- concatenation

    async def load_concat_parts(self, key: str | None = None) -> list[StoredConcatPart]:
        def query(conn: sqlite3.Connection) -> list[StoredConcatPart]:
            sql = "SELECT key, seq, json, created_at FROM concat_parts"
            args: tuple[str, ...] = ()
            if key is not None:
                sql += " WHERE key = ?"
                args = (key,)
            return [
                StoredConcatPart(key=k, seq=s, json=j, created_at=c)
                for k, s, j, c in conn.execute(sql + " ORDER BY key, seq", args)
            ]

        return await self._read(query)

    # ----------------------------------------------------------------- outbound messages

    async def save_message(
        self, message: MessageRecord, parts: Sequence[MessagePartRecord] = ()
    ) -> None:
        part_list = list(parts)

        def fn(conn: sqlite3.Connection, op: _Op) -> None:
            now = op.now
            conn.execute(
                "INSERT INTO messages (id, carrier, from_number, to_number, text, status_url,"
                " delivery, custom, created_at, parts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    message.id,
                    message.carrier,
                    message.from_number,
                    message.to_number,
                    message.text,
                    message.status_url,
                    message.delivery,
                    message.custom_json,
                    message.created_at or now,
                    message.parts,
                ),
            )
            for part in part_list:
                self._put_part(conn, part, now)

        await self._write(fn)

    @staticmethod
    def _put_part(conn: sqlite3.Connection, part: MessagePartRecord, now: float) -> None:
        conn.execute(
            "INSERT OR REPLACE INTO message_parts (message_id, part, carrier,"
            " carrier_message_id, normalized_id, status, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                part.message_id,
                part.part,
                part.carrier,
                part.carrier_message_id,
                part.normalized_id,
                part.status,
                part.updated_at or now,
            ),
        )

    async def add_message_part(self, part: MessagePartRecord) -> None:
        await self._write(lambda conn, op: self._put_part(conn, part, op.now))

    async def get_message(self, message_id: str) -> tuple[MessageRecord, list[MessagePartRecord]]:
        def query(conn: sqlite3.Connection) -> tuple[MessageRecord, list[MessagePartRecord]]:
            row = conn.execute(
                "SELECT id, carrier, from_number, to_number, text, status_url, delivery,"
                " custom, created_at, parts FROM messages WHERE id = ?",
                (message_id,),
            ).fetchone()
            if row is None:
                raise LookupError(f"no message {message_id}")
            message = MessageRecord(
                id=row[0],
                carrier=row[1],
                from_number=row[2],
                to_number=row[3],
                text=row[4],
                status_url=row[5],
                delivery=row[6],
                custom_json=row[7],
                created_at=row[8],
                parts=row[9],
            )
            parts = conn.execute(
                _PART_COLUMNS + " WHERE message_id = ? ORDER BY part", (message_id,)
            ).fetchall()
            return message, [_part_record(p) for p in parts]

        return await self._read(query, point=True)

    async def find_message_part(
        self, carrier: str, normalized_id: str, *, exact: str | None = None
    ) -> MessagePartRecord | None:
        def query(conn: sqlite3.Connection) -> MessagePartRecord | None:
            if exact is None:
                row = conn.execute(
                    _PART_COLUMNS + " WHERE carrier = ? AND normalized_id = ?"
                    " ORDER BY updated_at DESC LIMIT 1",
                    (carrier, normalized_id),
                ).fetchone()
            else:
                row = conn.execute(
                    _PART_COLUMNS + " WHERE carrier = ? AND normalized_id = ?"
                    " AND upper(carrier_message_id) = upper(?)"
                    " ORDER BY updated_at DESC LIMIT 1",
                    (carrier, normalized_id, exact),
                ).fetchone()
            return None if row is None else _part_record(row)

        return await self._read(query, point=True)

    async def set_message_part_status(self, message_id: str, part: int, status: str) -> None:
        def fn(conn: sqlite3.Connection, op: _Op) -> None:
            conn.execute(
                "UPDATE message_parts SET status = ?, updated_at = ?"
                " WHERE message_id = ? AND part = ?",
                (status, op.now, message_id, part),
            )

        await self._write(fn)

    @staticmethod
    def _insert_message(conn: sqlite3.Connection, message: MessageRecord, now: float) -> bool:
        cur = conn.execute(
            "INSERT INTO messages (id, carrier, from_number, to_number, text, status_url,"
            " delivery, custom, created_at, parts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (id) DO NOTHING",
            (
                message.id,
                message.carrier,
                message.from_number,
                message.to_number,
                message.text,
                message.status_url,
                message.delivery,
                message.custom_json,
                message.created_at or now,
                message.parts,
            ),
        )
        return cur.rowcount > 0

    async def queue_message(self, message: MessageRecord, event: Event, destination: str) -> int:
        if event.id != message.id:
            raise ValueError("the stand-in event must have the message's id")
        payload = event_to_json(event)

        def fn(conn: sqlite3.Connection, op: _Op) -> int:
            now = op.now
            if not self._insert_message(conn, message, now):
                raise ValueError(f"message {message.id} exists")
            conn.execute(
                "INSERT INTO events (id, type, carrier, source, destination, received_at,"
                " created_at, json, dedup_key, status) VALUES (?, 'mt', ?, ?, ?, ?, ?, ?, NULL, ?)",
                (
                    event.id,
                    event.carrier,
                    event.source.addr,
                    event.destination.addr,
                    _epoch(event.received_at),
                    now,
                    payload,
                    EventStatus.PENDING.value,
                ),
            )
            cur = conn.execute(
                "INSERT INTO jobs (event_id, destination, state, attempts, next_at,"
                " created_at, updated_at) VALUES (?, ?, 'queued', 0, ?, ?, ?)",
                (event.id, destination, now, now, now),
            )
            assert cur.lastrowid is not None
            op.notify = (destination,)
            return cur.lastrowid

        return await self._write(fn)

    async def ensure_message(self, message: MessageRecord) -> bool:
        return await self._write(lambda conn, op: self._insert_message(conn, message, op.now))

    async def message_concat_ref(self, message_id: str) -> int:
        def query(conn: sqlite3.Connection) -> int:
            row = conn.execute(
                "SELECT rowid, to_number FROM messages WHERE id = ?", (message_id,)
            ).fetchone()
            if row is None:
                raise LookupError(f"no message {message_id}")
            # A scan of the messages to one number (no index on to_number yet).
            count = conn.execute(
                "SELECT COUNT(*) FROM messages WHERE to_number = ? AND parts > 1 AND rowid < ?",
                (row[1], row[0]),
            ).fetchone()[0]
            return int(count) % 256

        return await self._read(query)

    async def set_message_part_receipt(self, message_id: str, part: int, status: str) -> None:
        intermediate = status in _INTERMEDIATE_PART_STATUSES

        def fn(conn: sqlite3.Connection, op: _Op) -> None:
            sql = "UPDATE message_parts SET status = ? WHERE message_id = ? AND part = ?"
            if intermediate:
                marks = ", ".join("?" * len(_INTERMEDIATE_PART_STATUSES))
                sql += f" AND status IN ({marks})"
                conn.execute(sql, (status, message_id, part, *_INTERMEDIATE_PART_STATUSES))
            else:
                conn.execute(sql, (status, message_id, part))

        await self._write(fn)


# Part statuses a later receipt may replace (see set_message_part_receipt).
_INTERMEDIATE_PART_STATUSES: Final = ("submitted", "ENROUTE", "ACCEPTD")

_PART_COLUMNS: Final = (
    "SELECT message_id, part, carrier, carrier_message_id, normalized_id, status, updated_at"
    " FROM message_parts"
)


def _part_record(row: Sequence[Any]) -> MessagePartRecord:
    return MessagePartRecord(
        message_id=row[0],
        part=row[1],
        carrier=row[2],
        carrier_message_id=row[3],
        normalized_id=row[4],
        status=row[5],
        updated_at=row[6],
    )


def _job_record(row: Sequence[Any]) -> JobRecord:
    return JobRecord(
        id=row[0],
        event_id=row[1],
        destination=row[2],
        state=JobState(row[3]),
        attempts=row[4],
        next_at=row[5],
        last_error=row[6],
        created_at=row[7],
        updated_at=row[8],
        replayed_by=row[9],
    )


def _attempt_record(row: Sequence[Any]) -> AttemptRecord:
    return AttemptRecord(
        job_id=row[0],
        event_id=row[1],
        destination=row[2],
        attempt=row[3],
        at=row[4],
        target=row[5],
        status_code=row[6],
        latency_ms=row[7],
        error=row[8],
        response_excerpt=row[9],
        outcome=row[10],
    )
