"""Outbound messages: the send API's queue, ``submit_sm`` through a carrier's binds, and
the correlation of delivery receipts with the message they report on.

Durability (why a stand-in event)
---------------------------------
The dispatcher delivers *jobs*, and a job belongs to an event row. So
:meth:`Outbound.send` writes, in ONE store transaction (:meth:`Store.queue_message`):
the ``messages`` row, a stand-in event with the message's id (a :class:`MoMessage`
record holding from/to/text, kept with type ``mt`` in the events table) and one job for
the internal destination ``__submit__:<carrier>``. Only then does ``send`` return (the
API answers 202). The dispatcher then submits it like any other delivery: with retries on
its schedule (:data:`SUBMIT_RETRY`), attempt history, replay; a restart or a SIGKILL at any
instant after the commit loses nothing, and nothing is half-stored.

A ``forward`` destination (``gatewayd.destinations.forward``) needs no second job: the MO's
own job to it creates the outbound message (its id derived from the job, so a retry finds
the same message) and submits it within that attempt, on the destination's retry policy.

Submitting (:class:`Submitter`, one per carrier)
------------------------------------------------
The text is split by :func:`charsets.split_for_sms` (GSM 03.38 when it fits, else UCS-2;
never inside an escape or a surrogate pair). Several parts carry an 8-bit concatenation
UDH (IEI 0x00, 3GPP TS 23.040 §9.2.3.24.1) with ``esm_class`` 0x40 (UDHI, SMPP 3.4
§5.2.12). The reference is per destination number and not random: the count of earlier
multi-part messages to that number, modulo 256 (:meth:`Store.message_concat_ref`), so it
is the same on every retry. Each part goes through a BOUND bind of the carrier able to
transmit (round robin over its sessions), after a token from the carrier's
``throughput`` bucket, with ``registered_delivery`` 1. Its carrier ``message_id`` is stored
at once (``message_parts``; ``updated_at`` = submit time), so a retry resumes at the first
part not yet submitted, and receipts correlate. ESME_RTHROTTLED / ESME_RMSGQFUL: the
carrier's bucket pauses and that part is retried after a bounded exponential back-off;
still throttled after :data:`THROTTLE_TRIES` -> a retry on the schedule. Any other error
status, a lost bind or a timeout -> a retry on the schedule (a part whose response was
lost may then be submitted twice: SMPP gives no way to ask).

Receipts
--------
:meth:`Outbound.route_receipt` (called by the daemon's ingest before it persists a
receipt) finds the part by (carrier, normalised message id; every reading of an
ambiguous id), across all binds of the carrier, records the part's status and picks the
destinations: the message's ``status_url`` (internal destination ``__status_url__``,
through :class:`StatusUrlDelivery`: SSRF-guarded, ``api.status_url_allow``), else its
``delivery`` destination, else its sender number's ``delivery``, else
``routes.delivery``. Every receipt push for a correlated message carries the extra
placeholders ``message_uuid``, ``custom``, ``custom_ticket``, ``units``, ``part``,
``submit_time`` and ``deliv_time`` (:class:`CorrelatingDestination` looks them up at
delivery time). A receipt that matches nothing is routed by number as before, counted in
:attr:`Outbound.unmatched_receipts` and logged with its message id.

Exceptions::

    SendRejected   (send) the request is invalid (400) or names an unknown carrier or
                   destination (422); ``problems`` lists every one
    StoreError     (send) not queued; nothing was written; the caller may retry
    KeyError       (get) no such message
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import logging
import math
import re
import time
import urllib.parse
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, Protocol

import attrs
import trio

from gatewayd import charsets
from gatewayd.config import CarrierConfig, Config, RetryPolicy
from gatewayd.destinations.base import AttemptResult, Destination, Job, Outcome
from gatewayd.events import (
    Address,
    DeliveryReceipt,
    Event,
    MoMessage,
    new_event_id,
)
from gatewayd.routing import Router, classify
from gatewayd.smpp import pdu as P
from gatewayd.smpp.driver import BindError, NotBound, status_name
from gatewayd.smpp.receive import message_id_candidates, normalize_message_id
from gatewayd.store import (
    EventNotFound,
    JobState,
    MessagePartRecord,
    MessageRecord,
    Store,
    StoreError,
)

__all__ = [
    "STATUS_URL_DESTINATION",
    "SUBMIT_PREFIX",
    "SUBMIT_RETRY",
    "CorrelatingDestination",
    "Correlation",
    "Outbound",
    "SendRejected",
    "SendRequest",
    "SendResult",
    "Submitter",
    "TokenBucket",
    "concat_udh",
    "forward_message_id",
    "plan_parts",
]

log = logging.getLogger("gatewayd.outbound")

SUBMIT_PREFIX: Final = "__submit__:"  # + carrier: the internal destination submitting API messages
STATUS_URL_DESTINATION: Final = "__status_url__"  # receipts pushed to a message's status_url
# API messages: a carrier that is down for a while must not dead-letter them fast:
# 10 s doubling to 10 min, 20 retries (about 2.5 hours).
SUBMIT_RETRY: Final = RetryPolicy(attempts=20, interval=10.0, backoff="exponential", max=600.0)
STATUS_URL_RETRY: Final = RetryPolicy()  # seed 003: 3 retries, 30 minutes apart
STATUS_URL_CONCURRENCY: Final = 16

THROTTLE_TRIES: Final = 6  # throttled answers to one part within one attempt
THROTTLE_MIN: Final = 1.0  # seconds, doubling ...
THROTTLE_MAX: Final = 30.0  # ... up to this
BIND_WAIT: Final = 5.0  # seconds an attempt waits for a bound bind before it fails

_EPSILON: Final = 1e-6
ESM_UDHI: Final = 0x40
IEI_CONCAT_8: Final = 0x00
FINAL_FAILURES: Final = frozenset({"UNDELIV", "EXPIRED", "DELETED", "REJECTD", "UNKNOWN"})
MAX_STATUS_URL: Final = 2048
MAX_CUSTOM_BYTES: Final = 4096

_NUMBER = re.compile(r"\+?[0-9]{1,20}")
_ALPHANUMERIC = re.compile(r"[A-Za-z0-9 ]{1,11}")  # GSM 03.40 alphanumeric sender id
_FORWARD_NAMESPACE: Final = uuid.UUID("5b0f8a9e-3c1d-4b7a-9f26-0d7e4c1a2b3c")


# --------------------------------------------------------------------------- the API


@attrs.frozen(kw_only=True)
class SendRequest:
    """``POST /v1/messages``: what to send, and where its receipts go."""

    from_: str
    to: str
    text: str
    carrier: str | None = None  # None: the first configured carrier able to transmit
    status_url: str | None = None
    delivery: str | None = None  # a configured destination for its receipts
    custom: Any = None  # any JSON value, echoed in every receipt push


@attrs.frozen(kw_only=True)
class SendResult:
    message_id: str
    parts: int


class SendRejected(Exception):
    """The request cannot be sent; ``problems`` lists every reason, ``status`` the HTTP
    status (400: invalid; 422: unknown carrier or destination)."""

    def __init__(self, problems: list[str], status: int = 400) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems
        self.status = status


# --------------------------------------------------------------------------- pure parts


def concat_udh(reference: int, total: int, seq: int) -> bytes:
    """The 6-octet UDH with the 8-bit-reference concatenation IE (TS 23.040 §9.2.3.24.1)."""
    return bytes((0x05, IEI_CONCAT_8, 0x03, reference & 0xFF, total, seq))


@attrs.frozen(kw_only=True)
class PartPlan:
    """What each submit_sm of one message carries."""

    data_coding: int
    esm_class: int
    short_messages: tuple[bytes, ...]


def plan_parts(text: str, reference: int = 0) -> PartPlan:
    """Split ``text`` and add the concatenation UDH when it needs several parts.

    Raises ValueError if it needs more than 255 parts."""
    coding, bodies = charsets.split_for_sms(text)
    if len(bodies) == 1:
        return PartPlan(data_coding=coding, esm_class=0, short_messages=(bodies[0],))
    total = len(bodies)
    return PartPlan(
        data_coding=coding,
        esm_class=ESM_UDHI,
        short_messages=tuple(
            concat_udh(reference, total, seq) + body for seq, body in enumerate(bodies, 1)
        ),
    )


def count_parts(text: str) -> int:
    return len(charsets.split_for_sms(text)[1])


def smpp_address(number: str) -> tuple[int, int, str]:
    """(TON, NPI, address) for SMPP 3.4 §5.2.5/§5.2.6: ``+`` or 9+ digits international
    (1/1), fewer digits unknown/ISDN (0/1), letters alphanumeric (5/0)."""
    if number.startswith("+") and number[1:].isdigit():
        return 1, 1, number[1:]
    if number.isdigit():
        return (1, 1, number) if len(number) > 8 else (0, 1, number)
    return 5, 0, number


def forward_message_id(event_id: str, job_id: int) -> str:
    """The outbound message a forward job creates: the same on every retry of that job."""
    return str(uuid.uuid5(_FORWARD_NAMESPACE, f"{event_id}/{job_id}"))


def _iso(epoch: float | None) -> str:
    if epoch is None:
        return ""
    return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat().replace("+00:00", "Z")


def _custom_text(custom_json: str) -> str:
    """The ``custom`` placeholder: a string as is, another JSON value as compact JSON."""
    try:
        value = json.loads(custom_json)
    except ValueError:
        return ""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


# --------------------------------------------------------------------------- throughput


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up; :meth:`acquire` waits its turn.

    :meth:`hold` empties the bucket for a while (a carrier said "throttled": every sender
    of that carrier backs off, not just the one that was told)."""

    def __init__(
        self, rate: float, burst: float = 1.0, *, clock: Callable[[], float] | None = None
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.capacity = max(1.0, burst)
        self._clock = clock or trio.current_time
        self._tokens = self.capacity
        self._stamp: float | None = None
        self._held_until = -math.inf
        self._lock: trio.Lock | None = None

    def _refill(self, now: float) -> None:
        if self._stamp is not None and now > self._stamp:
            start = max(self._stamp, self._held_until)
            if now > start:
                self._tokens = min(self.capacity, self._tokens + (now - start) * self.rate)
        self._stamp = now if self._stamp is None else max(self._stamp, now)

    def delay(self, now: float) -> float:
        """Seconds until a token is available (0: now)."""
        self._refill(now)
        # (a token short by a rounding error counts as whole: sleeping 1e-17 s would not
        # move the clock, and the wait would spin)
        missing = 0.0 if self._tokens >= 1.0 - _EPSILON else (1.0 - self._tokens) / self.rate
        if now < self._held_until:
            return self._held_until - now + missing
        return missing

    def try_take(self, now: float) -> bool:
        if self.delay(now) > 0:
            return False
        self._tokens = max(0.0, self._tokens - 1.0)
        return True

    def hold(self, seconds: float) -> None:
        now = self._clock()
        self._refill(now)
        self._tokens = 0.0
        self._held_until = max(self._held_until, now + seconds)

    async def acquire(self) -> None:
        if self._lock is None:
            self._lock = trio.Lock()
        async with self._lock:  # first come, first served
            while True:
                now = self._clock()
                if self.try_take(now):
                    return
                await trio.sleep(max(self.delay(now), _EPSILON))


# --------------------------------------------------------------------------- submitting


class Transmitter(Protocol):
    """What the submitter needs of a bind (``gatewayd.smpp.driver.SmppBind``)."""

    name: str

    @property
    def is_bound(self) -> bool: ...

    @property
    def can_transmit(self) -> bool: ...

    async def request(
        self, command: str, *, tlvs: tuple[P.Tlv, ...] = (), **fields: int | bytes | str
    ) -> P.Pdu: ...


@attrs.frozen(kw_only=True)
class SubmitOutcome:
    """One part: the carrier's message id, or why not."""

    message_id: str | None = None
    status: int | None = None  # the submit_sm_resp command_status, if one came
    error: str = ""
    retry_after: float | None = None
    bind: str = ""


class Submitter:
    """Submits parts through the binds of one carrier (see the module docstring)."""

    def __init__(
        self,
        carrier: CarrierConfig,
        binds: Callable[[], Sequence[Transmitter]],
        *,
        bind_wait: float = BIND_WAIT,
        throttle_tries: int = THROTTLE_TRIES,
        throttle_min: float = THROTTLE_MIN,
        throttle_max: float = THROTTLE_MAX,
    ) -> None:
        self.carrier = carrier
        self._binds = binds
        self.bind_wait = bind_wait
        self.throttle_tries = throttle_tries
        self.throttle_min = throttle_min
        self.throttle_max = throttle_max
        self.bucket = None if not carrier.throughput else TokenBucket(carrier.throughput)
        self._next = 0
        self.submitted = 0
        self.throttled = 0

    def pick(self) -> Transmitter | None:
        """The next bound bind able to transmit, round robin; None if there is none."""
        ready = [b for b in self._binds() if b.is_bound and b.can_transmit]
        if not ready:
            return None
        bind = ready[self._next % len(ready)]
        self._next += 1
        return bind

    async def _wait_for_bind(self) -> Transmitter | None:
        deadline = trio.current_time() + self.bind_wait
        while True:
            bind = self.pick()
            if bind is not None or trio.current_time() >= deadline:
                return bind
            await trio.sleep(min(0.25, max(0.0, deadline - trio.current_time())))

    async def submit(self, fields: dict[str, int | bytes | str]) -> SubmitOutcome:
        """One part, until accepted, refused, or throttled too often."""
        backoff = self.throttle_min
        throttled = 0
        while True:
            bind = await self._wait_for_bind()
            if bind is None:
                return SubmitOutcome(
                    error=f"no bound bind of carrier {self.carrier.name} can transmit"
                )
            if self.bucket is not None:
                await self.bucket.acquire()
            try:
                resp = await bind.request("submit_sm", tlvs=(), **fields)
            except NotBound:
                # It dropped between pick and send. Yield before picking again: the bind's
                # own task must run to notice, and a loop that never awaits would freeze the
                # daemon (no acks, no shutdown).
                await trio.sleep(0.05)
                continue
            except BindError as exc:
                return SubmitOutcome(error=f"{type(exc).__name__}: {exc}", bind=bind.name)
            if resp.status == P.ESME_ROK:
                self.submitted += 1
                raw = resp.get_bytes("message_id").decode("latin-1").strip("\x00").strip()
                if not raw:
                    return SubmitOutcome(
                        status=resp.status, error="submit_sm_resp without a message_id"
                    )
                return SubmitOutcome(message_id=raw, status=resp.status, bind=bind.name)
            if resp.status in (P.ESME_RTHROTTLED, P.ESME_RMSGQFUL):
                self.throttled += 1
                throttled += 1
                if throttled > self.throttle_tries:
                    return SubmitOutcome(
                        status=resp.status,
                        error=f"{status_name(resp.status)} {throttled} times",
                        retry_after=backoff,
                        bind=bind.name,
                    )
                log.info(
                    "carrier throttles: backing off %.1fs",
                    backoff,
                    extra={"carrier": self.carrier.name, "bind": bind.name},
                )
                if self.bucket is not None:
                    self.bucket.hold(backoff)
                await trio.sleep(backoff)
                backoff = min(backoff * 2, self.throttle_max)
                continue
            return SubmitOutcome(status=resp.status, error=status_name(resp.status), bind=bind.name)


# --------------------------------------------------------------------------- correlation


@attrs.frozen(kw_only=True)
class Correlation:
    """The outbound message (and part) a receipt reports on."""

    message: MessageRecord
    part: MessagePartRecord

    def extra(self, dlr: DeliveryReceipt) -> dict[str, str]:
        """The correlation placeholders for this receipt's payloads."""
        custom = _custom_text(self.message.custom_json)
        done = dlr.done_date or dlr.received_at
        return {
            "message_uuid": self.message.id,
            "custom": custom,
            "custom_ticket": custom,
            "units": str(self.message.parts),
            "part": str(self.part.part),
            "submit_time": _iso(self.part.updated_at),
            "deliv_time": done.astimezone(dt.UTC).isoformat().replace("+00:00", "Z"),
        }


class Outbound:
    """The send API's back end, the submitters and receipt correlation (module docstring)."""

    def __init__(
        self,
        config: Config,
        store: Store,
        *,
        binds: Callable[[str], Sequence[Transmitter]],
        wall_clock: Callable[[], float] = time.time,
        status_url_delivery: Any = None,  # a StatusUrlDelivery; built on first use if None
    ) -> None:
        self.config = config
        self.store = store
        self.wall_clock = wall_clock
        self.submitters = {
            name: Submitter(carrier, _binds_of(binds, name))
            for name, carrier in config.carriers.items()
        }
        self._binds = binds
        self._status_delivery = status_url_delivery
        self._status_target: StatusUrlDestination | None = None
        self._submit_targets: dict[str, SubmitDestination] = {}
        self._wrapped: dict[str, CorrelatingDestination] = {}
        self.unmatched_receipts = 0
        self.matched_receipts = 0
        # Called with True (matched) / False (unmatched) for every receipt: metrics.
        self.on_receipt: Callable[[bool], None] | None = None

    # ----------------------------------------------------------------- send / get

    def default_carrier(self) -> str | None:
        for name, carrier in self.config.carriers.items():
            if carrier.bind in ("transmitter", "transceiver"):
                return name
        return None

    def check(self, request: SendRequest) -> tuple[str, int]:
        """Validate; returns (carrier, parts). Raises :class:`SendRejected` with every
        problem."""
        invalid: list[str] = []
        unknown: list[str] = []
        for field, value in (("from", request.from_), ("to", request.to), ("text", request.text)):
            if not isinstance(value, str):
                invalid.append(f"{field}: must be a string")
        if isinstance(request.from_, str) and not (
            _NUMBER.fullmatch(request.from_) or _ALPHANUMERIC.fullmatch(request.from_)
        ):
            invalid.append(
                "from: must be a phone number (up to 20 digits) or an alphanumeric sender id"
                " (up to 11 letters, digits or spaces)"
            )
        if isinstance(request.to, str) and not _NUMBER.fullmatch(request.to):
            invalid.append("to: must be a phone number (digits, optionally after a +)")
        parts = 0
        if isinstance(request.text, str):
            if not request.text:
                invalid.append("text: must not be empty")
            elif _has_lone_surrogate(request.text):
                invalid.append("text: contains an unpaired UTF-16 surrogate")
            else:
                try:
                    parts = count_parts(request.text)
                except ValueError as exc:
                    invalid.append(f"text: too long: {exc}")
        carrier = request.carrier
        if carrier is not None and not isinstance(carrier, str):
            invalid.append("carrier: must be a string")
            carrier = None
        elif carrier is None:
            carrier = self.default_carrier()
            if carrier is None:
                unknown.append("carrier: no configured carrier can transmit")
        elif carrier not in self.config.carriers:
            unknown.append(f"carrier: unknown carrier {carrier!r}")
        elif self.config.carriers[carrier].bind == "receiver":
            unknown.append(f"carrier: {carrier!r} binds as a receiver and cannot transmit")
        if request.status_url is not None:
            invalid.extend(self._check_status_url(request.status_url))
        if request.delivery is not None:
            if not isinstance(request.delivery, str):
                invalid.append("delivery: must be a destination name")
            elif request.delivery not in self.config.destinations:
                unknown.append(f"delivery: unknown destination {request.delivery!r}")
        try:
            custom = json.dumps(request.custom, separators=(",", ":"), ensure_ascii=False)
        except (TypeError, ValueError):
            invalid.append("custom: must be a JSON value")
        else:
            if len(custom.encode("utf-8", "surrogatepass")) > MAX_CUSTOM_BYTES:
                invalid.append(f"custom: longer than {MAX_CUSTOM_BYTES} bytes as JSON")
        if invalid:
            raise SendRejected(invalid + unknown, 400)
        if unknown:
            raise SendRejected(unknown, 422)
        assert carrier is not None
        return carrier, parts

    def _check_status_url(self, url: Any) -> list[str]:
        if not isinstance(url, str):
            return ["status_url: must be a string"]
        if len(url) > MAX_STATUS_URL:
            return [f"status_url: longer than {MAX_STATUS_URL} characters"]
        try:
            parts = urllib.parse.urlsplit(url)
            host = parts.hostname
            parts.port  # noqa: B018 (raises ValueError for a bad port)
        except ValueError:
            return ["status_url: not a valid URL"]
        if parts.scheme.lower() not in ("http", "https") or not host:
            return ["status_url: must be an absolute http or https URL"]
        if any(c in url for c in "\r\n\t "):
            return ["status_url: must not contain whitespace"]
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return []  # a name: checked where it is connected to (after resolution)
        from gatewayd.destinations.http import address_allowed

        if not address_allowed(str(address), self.config.api.status_url_allow):
            return [f"status_url: address {host} is not permitted"]
        return []

    async def send(self, request: SendRequest) -> SendResult:
        """Validate, then queue durably (message + its submit job, one transaction).

        Raises :class:`SendRejected` or ``StoreError`` (nothing was queued)."""
        carrier, parts = self.check(request)
        now = self.wall_clock()
        message_id = new_event_id(int(now * 1000))
        text = request.text
        record = MessageRecord(
            id=message_id,
            carrier=carrier,
            from_number=request.from_,
            to_number=request.to,
            text=text,
            status_url=request.status_url,
            delivery=request.delivery,
            custom_json=json.dumps(request.custom, separators=(",", ":"), ensure_ascii=False),
            created_at=now,
            parts=parts,
        )
        stand_in = MoMessage(
            id=message_id,
            carrier=carrier,
            source=Address(addr=request.from_),
            destination=Address(addr=request.to),
            text=text,
            raw=b"",
            data_coding=charsets.split_for_sms(text)[0],
            parts=parts,
            message_class=classify(request.to, self.config.classify.a2p_max_digits),
            received_at=dt.datetime.fromtimestamp(now, dt.UTC),
        )
        await self.store.queue_message(record, stand_in, SUBMIT_PREFIX + carrier)
        log.info(
            "outbound message queued",
            extra={"message_id": message_id, "carrier": carrier, "parts": parts},
        )
        return SendResult(message_id=message_id, parts=parts)

    async def get(self, message_id: str) -> Mapping[str, Any]:
        """The message, its parts (carrier ids, statuses) and its overall status.

        Raises KeyError if there is no such message."""
        try:
            message, parts = await self.store.get_message(message_id)
        except LookupError as exc:
            raise KeyError(message_id) from exc
        job_state: JobState | None = None
        job_error = ""
        attempts = 0
        try:
            record = await self.store.get_event(message_id)
        except EventNotFound:
            pass  # a forwarded message: its job belongs to the MO
        else:
            jobs = [
                j
                for j in record.jobs
                if j.destination.startswith(SUBMIT_PREFIX) and j.replayed_by is None
            ]
            if jobs:
                job_state, job_error, attempts = (
                    jobs[-1].state,
                    jobs[-1].last_error,
                    jobs[-1].attempts,
                )
        statuses = [p.status for p in parts]
        if len(parts) >= message.parts and all(s == "DELIVRD" for s in statuses):
            status = "delivered"
        elif any(s in FINAL_FAILURES for s in statuses) or (
            job_state is JobState.DEAD and len(parts) < message.parts
        ):
            status = "failed"
        elif len(parts) >= message.parts:
            status = "submitted"
        elif parts:
            status = "submitting"
        else:
            status = "retrying" if attempts else "queued"
        out: dict[str, Any] = {
            "id": message.id,
            "status": status,
            "carrier": message.carrier,
            "from": message.from_number,
            "to": message.to_number,
            "units": message.parts,
            "created_at": _iso(message.created_at),
            "status_url": message.status_url,
            "delivery": message.delivery,
            "custom": json.loads(message.custom_json) if message.custom_json else None,
            "parts": [
                {
                    "part": p.part,
                    "carrier_message_id": p.carrier_message_id,
                    "status": p.status,
                    "submitted_at": _iso(p.updated_at),
                }
                for p in parts
            ],
        }
        if job_state is not None:
            out["attempts"] = attempts
            if job_error and status != "delivered":
                out["error"] = job_error
        return out

    # ----------------------------------------------------------------- submitting

    async def create_forward(
        self, *, message_id: str, carrier: str, from_: str, to: str, text: str
    ) -> None:
        """Store the outbound message a forward job relays (once; retries find it)."""
        await self.store.ensure_message(
            MessageRecord(
                id=message_id,
                carrier=carrier,
                from_number=from_,
                to_number=to,
                text=text,
                custom_json="null",
                created_at=self.wall_clock(),
                parts=count_parts(text),
            )
        )

    async def submit_message(self, message_id: str) -> AttemptResult:
        """Submit every part of a stored message not submitted yet; one dispatcher attempt."""
        start = trio.current_time()

        def result(outcome: Outcome, target: str, **kw: Any) -> AttemptResult:
            return AttemptResult(
                outcome=outcome,
                target=target,
                latency_ms=(trio.current_time() - start) * 1000.0,
                **kw,
            )

        try:
            message, parts = await self.store.get_message(message_id)
        except LookupError:
            return result(Outcome.PERMANENT, "", error=f"no outbound message {message_id}")
        except StoreError as exc:
            return result(Outcome.RETRY, "", error=f"store: {exc}")
        target = f"smpp:{message.carrier}:{message.to_number}"
        submitter = self.submitters.get(message.carrier)
        if submitter is None:
            return result(
                Outcome.PERMANENT, target, error=f"carrier {message.carrier!r} is not configured"
            )
        done = {p.part for p in parts}
        ids = {p.part: p.carrier_message_id for p in parts}
        try:
            reference = 0
            if message.parts > 1:
                reference = await self.store.message_concat_ref(message_id)
            plan = plan_parts(message.text, reference)
        except StoreError as exc:
            return result(Outcome.RETRY, target, error=f"store: {exc}")
        except ValueError as exc:
            return result(Outcome.PERMANENT, target, error=str(exc))
        total = len(plan.short_messages)
        src_ton, src_npi, src = smpp_address(message.from_number)
        dst_ton, dst_npi, dst = smpp_address(message.to_number)
        extra = {"message_id": message_id, "carrier": message.carrier}
        for seq, short_message in enumerate(plan.short_messages, 1):
            if seq in done:
                continue  # submitted by an earlier attempt: never twice
            outcome = await submitter.submit(
                {
                    "service_type": "",
                    "source_addr_ton": src_ton,
                    "source_addr_npi": src_npi,
                    "source_addr": src,
                    "dest_addr_ton": dst_ton,
                    "dest_addr_npi": dst_npi,
                    "destination_addr": dst,
                    "esm_class": plan.esm_class,
                    "registered_delivery": 1,  # SMPP 3.4 §5.2.17: receipt on final outcome
                    "data_coding": plan.data_coding,
                    "short_message": short_message,
                }
            )
            if outcome.message_id is None:
                log.warning(
                    "submit failed: %s",
                    outcome.error,
                    extra={**extra, "part": seq, "bind": outcome.bind},
                )
                return result(
                    Outcome.RETRY,
                    target,
                    status_code=outcome.status,
                    error=f"part {seq}/{total}: {outcome.error}",
                    retry_after=outcome.retry_after,
                )
            ids[seq] = outcome.message_id
            try:
                await self.store.add_message_part(
                    MessagePartRecord(
                        message_id=message_id,
                        part=seq,
                        carrier=message.carrier,
                        carrier_message_id=outcome.message_id,
                        normalized_id=normalize_message_id(outcome.message_id),
                    )
                )
            except StoreError as exc:
                return result(
                    Outcome.RETRY,
                    target,
                    status_code=outcome.status,
                    error=f"part {seq}/{total} submitted but not recorded: {exc}",
                )
            log.info("submitted", extra={**extra, "part": seq, "bind": outcome.bind})
        return result(
            Outcome.DELIVERED,
            target,
            status_code=P.ESME_ROK,
            response_excerpt="message_id=" + ",".join(ids[i] for i in sorted(ids)),
        )

    # ----------------------------------------------------------------- receipts

    async def correlate(self, dlr: DeliveryReceipt) -> Correlation | None:
        """The outbound message part a receipt reports on, or None."""
        if not dlr.message_id.strip("\x00 "):
            return None
        # The same text as the submit_sm_resp gave first: readings of different ids can
        # coincide ("0000000A" as hex and "00000010" as decimal are both 10), so a
        # normalised reading is only the fallback for carriers that change the notation.
        exact = dlr.message_id.strip().strip("\x00").strip()
        part = await self.store.find_message_part(
            dlr.carrier, normalize_message_id(exact), exact=exact
        )
        readings = [dlr.normalized_message_id]
        readings += sorted(message_id_candidates(dlr.message_id) - {dlr.normalized_message_id})
        for normalized in readings:
            if part is not None:
                break
            if normalized:
                part = await self.store.find_message_part(dlr.carrier, normalized)
        if part is None:
            return None
        try:
            message, _ = await self.store.get_message(part.message_id)
        except LookupError:
            return None
        return Correlation(message=message, part=part)

    async def route_receipt(self, dlr: DeliveryReceipt, router: Router) -> tuple[str, ...]:
        """Correlate, record the part's status and choose the receipt's destinations.

        Raises ``StoreError`` (the caller answers the SMSC with a temporary error)."""
        found = await self.correlate(dlr)
        if self.on_receipt is not None:
            self.on_receipt(found is not None)
        if found is None:
            self.unmatched_receipts += 1
            log.warning(
                "receipt matches no outbound message: routed by number",
                extra={
                    "carrier": dlr.carrier,
                    "message_id": dlr.message_id,
                    "event_id": dlr.id,
                },
            )
            return router.route_receipt(dlr)
        self.matched_receipts += 1
        message = found.message
        await self.store.set_message_part_receipt(message.id, found.part.part, dlr.status.value)
        if message.status_url:
            return (STATUS_URL_DESTINATION,)
        own: tuple[str, ...] = ()
        if message.delivery and message.delivery in router.config.destinations:
            own = (message.delivery,)
        else:
            number = router.number(message.from_number)
            if number is not None and number.delivery:
                own = number.delivery
        if own:
            return router.route_receipt(dlr, message_delivery=own)
        # The message says who sent it: the receipt's own address is not consulted again.
        return tuple(dict.fromkeys(router.config.routes.delivery))

    async def receipt_extra(self, event: Event) -> dict[str, str] | None:
        if not isinstance(event, DeliveryReceipt):
            return None
        found = await self.correlate(event)
        return None if found is None else found.extra(event)

    # ----------------------------------------------------------------- dispatcher

    def _status_url_delivery(self) -> Any:
        if self._status_delivery is None:
            from gatewayd.destinations.http import StatusUrlDelivery

            self._status_delivery = StatusUrlDelivery(
                allow=self.config.api.status_url_allow,
                concurrency=STATUS_URL_CONCURRENCY,
                wall_clock=self.wall_clock,
            )
        return self._status_delivery

    def reconfigure(self, config: Config) -> None:
        """Take a reloaded config: new and changed carriers get new submitters."""
        for name, carrier in config.carriers.items():
            old = self.submitters.get(name)
            if old is None or old.carrier != carrier:
                self.submitters[name] = Submitter(carrier, _binds_of(self._binds, name))
        for name in [n for n in self.submitters if n not in config.carriers]:
            del self.submitters[name]
        self.config = config

    def targets(
        self, configured: Mapping[str, tuple[Destination, RetryPolicy, int]]
    ) -> dict[str, tuple[Destination, RetryPolicy, int]]:
        """What the dispatcher runs: the configured destinations, each wrapped in a
        :class:`CorrelatingDestination` (the same wrapper while the destination object is
        the same), plus the internal ones (``__status_url__``, ``__submit__:<carrier>``).

        Give this to the Dispatcher at start AND on every reload: a lane missing from the
        mapping is removed and its queued jobs dead-lettered."""
        out: dict[str, tuple[Destination, RetryPolicy, int]] = {}
        wrapped: dict[str, CorrelatingDestination] = {}
        for name, (dest, retry, concurrency) in configured.items():
            wrapper = self._wrapped.get(name)
            if wrapper is None or wrapper.inner is not dest:
                wrapper = CorrelatingDestination(dest, self)
            wrapped[name] = wrapper
            out[name] = (wrapper, retry, concurrency)
        self._wrapped = wrapped
        if self._status_target is None:
            self._status_target = StatusUrlDestination(self, self._status_url_delivery())
        out[STATUS_URL_DESTINATION] = (
            self._status_target,
            STATUS_URL_RETRY,
            STATUS_URL_CONCURRENCY,
        )
        for name, carrier in self.config.carriers.items():
            if carrier.bind == "receiver":
                continue
            lane = SUBMIT_PREFIX + name
            target = self._submit_targets.setdefault(lane, SubmitDestination(self, lane))
            out[lane] = (target, SUBMIT_RETRY, max(1, carrier.sessions * carrier.window))
        return out

    async def aclose(self) -> None:
        if self._status_delivery is not None:
            await self._status_delivery.aclose()


def _binds_of(
    binds: Callable[[str], Sequence[Transmitter]], name: str
) -> Callable[[], Sequence[Transmitter]]:
    return lambda: binds(name)


def _has_lone_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


# --------------------------------------------------------------------------- destinations


class SubmitDestination:
    """``__submit__:<carrier>``: submits a queued API message (the job's event is its
    stand-in, with the message's id)."""

    def __init__(self, outbound: Outbound, name: str) -> None:
        self.name = name
        self._outbound = outbound

    async def deliver(self, event: Event, job: Job) -> AttemptResult:
        return await self._outbound.submit_message(event.id)

    async def aclose(self) -> None:
        return None


class StatusUrlDestination:
    """``__status_url__``: pushes a receipt to its message's status URL (SSRF-guarded)."""

    name = STATUS_URL_DESTINATION

    def __init__(self, outbound: Outbound, delivery: Any) -> None:
        self._outbound = outbound
        self._delivery = delivery

    async def deliver(self, event: Event, job: Job) -> AttemptResult:
        if not isinstance(event, DeliveryReceipt):
            return AttemptResult(outcome=Outcome.PERMANENT, error="only receipts go to status URLs")
        try:
            found = await self._outbound.correlate(event)
        except StoreError as exc:
            return AttemptResult(outcome=Outcome.RETRY, error=f"store: {exc}")
        if found is None or not found.message.status_url:
            return AttemptResult(
                outcome=Outcome.PERMANENT, error="no outbound message with a status URL"
            )
        result: AttemptResult = await self._delivery.deliver(
            found.message.status_url, event, found.extra(event)
        )
        return result

    async def aclose(self) -> None:
        return None  # the delivery belongs to Outbound


class CorrelatingDestination:
    """Wraps a configured destination: a receipt for one of our outbound messages is sent
    with the correlation placeholders (``message_uuid``, ``custom``, ``units``...), through
    the destination's ``send(event, extra)``; everything else goes through unchanged."""

    def __init__(self, inner: Destination, outbound: Outbound) -> None:
        self.inner = inner
        self.name = inner.name
        self._outbound = outbound

    async def deliver(self, event: Event, job: Job) -> AttemptResult:
        send = getattr(self.inner, "send", None)
        if isinstance(event, DeliveryReceipt) and send is not None:
            try:
                extra = await self._outbound.receipt_extra(event)
            except StoreError as exc:
                return AttemptResult(outcome=Outcome.RETRY, error=f"store: {exc}")
            if extra is not None:
                result: AttemptResult = await send(event, extra)
                return result
        return await self.inner.deliver(event, job)

    async def aclose(self) -> None:
        await self.inner.aclose()
