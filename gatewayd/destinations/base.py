"""What the dispatcher and every destination agree on."""

from __future__ import annotations

import enum
from typing import Protocol

import attrs

from gatewayd.events import Event


class Outcome(enum.Enum):
    DELIVERED = "delivered"  # success: the job is done
    RETRY = "retry"  # temporary failure: retry on the destination's schedule
    PERMANENT = "permanent"  # will never succeed: dead-letter at once
    DROPPED = "dropped"  # type none: done, nothing sent, on purpose


@attrs.frozen(kw_only=True)
class Job:
    """One delivery of one event to one destination."""

    id: int
    event_id: str
    destination: str
    attempt: int  # this attempt's number, 1-based


@attrs.frozen(kw_only=True)
class AttemptResult:
    """What one attempt did: the per-push history row."""

    outcome: Outcome
    target: str = ""  # URL, mailbox, number or SIP URI actually used (no secrets)
    status_code: int | None = None  # HTTP status, SMTP reply code, SMPP status, SIP status
    latency_ms: float = 0.0
    error: str = ""  # empty on success; never contains secrets
    response_excerpt: str = ""  # bounded excerpt of what the peer answered
    retry_after: float | None = None  # seconds the peer asked us to wait (e.g. Retry-After)


class Destination(Protocol):
    """A configured destination, ready to deliver."""

    name: str

    async def deliver(self, event: Event, job: Job) -> AttemptResult:
        """Try once. Never raises for peer failures: they are results."""
        ...

    async def aclose(self) -> None: ...
