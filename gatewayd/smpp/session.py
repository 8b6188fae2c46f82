"""Sans-I/O SMPP 3.4 session, in the manner of h11: bytes in, events out, bytes to send.

No sockets, no trio, no clock: the driver feeds what it read to :meth:`Session.receive_data`,
drains :meth:`Session.next_event` and :meth:`Session.data_to_send`, and calls
:meth:`Session.tick` at :meth:`Session.next_deadline`. Time is a monotonic ``now`` in
seconds passed in by the caller.

Nothing the peer sends raises: it becomes events (:class:`ProtocolError`,
:class:`ConnectionClosed`, ...). Only local misuse raises::

    LocalProtocolError        we tried something illegal in this role/state
      WindowFull              the window of our outstanding requests is full (retry later)

:class:`ConnectionClosed` is always the last event; after it the driver closes the socket
(after sending whatever :meth:`Session.data_to_send` still returns).
"""

from __future__ import annotations

import collections
import enum
from collections.abc import Callable, Iterable, Mapping
from typing import Literal

import attrs

from gatewayd.smpp import pdu
from gatewayd.smpp.pdu import Pdu

__all__ = [
    "AlertReceived",
    "BindFailed",
    "BindRequested",
    "Bound",
    "ConnectionClosed",
    "Event",
    "LocalProtocolError",
    "OutbindReceived",
    "ProtocolError",
    "RequestReceived",
    "RequestTimedOut",
    "ResponseReceived",
    "Role",
    "Session",
    "State",
    "Unbound",
    "WindowFull",
]


class Role(enum.Enum):
    ESME = "esme"
    SMSC = "smsc"


class State(enum.Enum):
    """Session states of SMPP 3.4 §2.2 (plus CLOSED: the connection is gone)."""

    OPEN = "open"
    BOUND_TX = "bound_tx"
    BOUND_RX = "bound_rx"
    BOUND_TRX = "bound_trx"
    UNBOUND = "unbound"
    CLOSED = "closed"


# ---------------------------------------------------------------------------------------
# THE table. Which requests may travel in which direction in which state (SMPP 3.4 §2.3,
# §2.4 and the per-PDU sections of §4). Rules that the table encodes:
#
# * OPEN: only the ESME binds (§4.1); only the SMSC sends outbind (§2.2.1, §4.1.7).
# * A transmitter bind carries ESME->SMSC traffic only (submit_sm, data_sm: §2.4.1); a
#   receiver bind SMSC->ESME only (deliver_sm, data_sm, alert_notification: §2.4.2,
#   §4.12); a transceiver bind both (§2.4.3).
# * enquire_link and unbind are legal both ways in every bound state (§4.2, §4.11).
# * UNBOUND and CLOSED carry no new requests at all.
# * Responses are not in the table: a response is legal iff it matches one of our
#   outstanding requests by sequence number; generic_nack likewise (§4.3), and is never
#   itself answered.
#
# What happens outside the table: an incoming request not allowed here is answered with its
# _resp (or generic_nack when it has none) carrying ESME_RINVBNDSTS, except a bind arriving
# at an SMSC that is bound or already binding, which gets ESME_RALYBND (§5.1.3). A request
# we try to send outside the table raises LocalProtocolError.
# ---------------------------------------------------------------------------------------
_BINDS = frozenset({"bind_transmitter", "bind_receiver", "bind_transceiver"})
_LINK = frozenset({"enquire_link", "unbind"})
_ESME_TO_SMSC_APP = frozenset({"submit_sm", "data_sm"})
_SMSC_TO_ESME_APP = frozenset({"deliver_sm", "data_sm", "alert_notification"})
_NONE: frozenset[str] = frozenset()

#: state -> (requests the ESME may send to the SMSC, requests the SMSC may send to the ESME)
TABLE: Mapping[State, tuple[frozenset[str], frozenset[str]]] = {
    State.OPEN: (_BINDS, frozenset({"outbind"})),
    State.BOUND_TX: (_ESME_TO_SMSC_APP | _LINK, _LINK),
    State.BOUND_RX: (_LINK, _SMSC_TO_ESME_APP | _LINK),
    State.BOUND_TRX: (_ESME_TO_SMSC_APP | _LINK, _SMSC_TO_ESME_APP | _LINK),
    State.UNBOUND: (_NONE, _NONE),
    State.CLOSED: (_NONE, _NONE),
}

BOUND_STATES = frozenset({State.BOUND_TX, State.BOUND_RX, State.BOUND_TRX})

_BIND_STATE = {
    "bind_transmitter": State.BOUND_TX,
    "bind_receiver": State.BOUND_RX,
    "bind_transceiver": State.BOUND_TRX,
}

# Requests that have no response PDU: outbind (§4.1.7), alert_notification (§4.12).
_NO_RESPONSE = frozenset({"outbind", "alert_notification"})

# Requests that do not count against the window, so keep-alive and a graceful unbind still
# work when the window is full of slow submit_sm.
_OUTSIDE_WINDOW = _LINK

MAX_SEQUENCE = 0x7FFFFFFF  # sequence_number range is 0x00000001..0x7FFFFFFF (§3.2, §5.1.4)


def may_send(role: Role, state: State) -> frozenset[str]:
    """Requests ``role`` may send in ``state``, from the table."""
    esme_to_smsc, smsc_to_esme = TABLE[state]
    return esme_to_smsc if role is Role.ESME else smsc_to_esme


def may_receive(role: Role, state: State) -> frozenset[str]:
    """Requests ``role`` may receive in ``state``, from the table."""
    esme_to_smsc, smsc_to_esme = TABLE[state]
    return smsc_to_esme if role is Role.ESME else esme_to_smsc


# --------------------------------------------------------------------------- exceptions


class LocalProtocolError(Exception):
    """We (the local application) tried something illegal for this role and state."""


class WindowFull(LocalProtocolError):
    """As many of our requests are outstanding as the window allows; wait for a response."""


# ------------------------------------------------------------------------------- events


@attrs.frozen(kw_only=True)
class Event:
    """Base class of everything :meth:`Session.next_event` returns."""


@attrs.frozen(kw_only=True)
class BindRequested(Event):
    """SMSC role: a bind arrived; answer it with ``respond(pdu, status, system_id=...)``."""

    pdu: Pdu


@attrs.frozen(kw_only=True)
class Bound(Event):
    """ESME role: our bind was accepted; the session is now in ``state``."""

    state: State
    pdu: Pdu


@attrs.frozen(kw_only=True)
class BindFailed(Event):
    """ESME role: our bind was refused (``pdu`` is the bind_resp or generic_nack)."""

    status: int
    pdu: Pdu


@attrs.frozen(kw_only=True)
class RequestReceived(Event):
    """A deliver_sm / submit_sm / data_sm the application must answer with ``respond``."""

    pdu: Pdu


@attrs.frozen(kw_only=True)
class ResponseReceived(Event):
    """The response (or generic_nack) to one of our requests, matched by sequence."""

    request: Pdu
    response: Pdu


@attrs.frozen(kw_only=True)
class RequestTimedOut(Event):
    """No response to ``request`` within response_timeout; its window slot is free again."""

    request: Pdu


@attrs.frozen(kw_only=True)
class AlertReceived(Event):
    """An alert_notification (never answered: SMPP 3.4 §4.12)."""

    pdu: Pdu


@attrs.frozen(kw_only=True)
class OutbindReceived(Event):
    """ESME role: the SMSC asks us to bind_receiver (SMPP 3.4 §4.1.7)."""

    pdu: Pdu


@attrs.frozen(kw_only=True)
class ProtocolError(Event):
    """The peer broke the protocol. ``fatal``: the session is over (ConnectionClosed follows)."""

    reason: str
    fatal: bool


@attrs.frozen(kw_only=True)
class Unbound(Event):
    """The session was unbound cleanly (either side's unbind was answered)."""


@attrs.frozen(kw_only=True)
class ConnectionClosed(Event):
    """Always the last event: the session is CLOSED; send what is left, then close."""

    reason: str


# ------------------------------------------------------------------------------ session


@attrs.define(kw_only=True)
class _Outstanding:
    """One of our requests waiting for its response."""

    request: Pdu
    deadline: float
    internal: bool  # sent by the session itself (keep-alive, inactivity unbind): no event


class Session:
    """One SMPP session, either end (``role``), with no I/O of its own.

    Timers, all driven by :meth:`tick`:

    * response_timeout: per request we sent; RequestTimedOut frees its window slot.
    * enquire_link_interval: nothing at all received for this long while bound -> we send
      enquire_link; no answer within response_timeout -> fatal ProtocolError (dead link).
    * inactivity_timeout: nothing but keep-alive (enquire_link and its resp) received for
      this long -> unbind, then ConnectionClosed (before a bind: just ConnectionClosed).
      Keep-alive is excluded, else our own enquire_link_resp would keep an idle bind
      forever. The clock starts at the first call that passes ``now``: a driver should
      call ``tick(now)`` once when the connection opens.

    When ConnectionClosed arrives, :attr:`outstanding` lists our requests that were never
    answered (their fate is unknown to the peer's side too).
    """

    def __init__(
        self,
        *,
        role: Role,
        window: int = 10,
        response_timeout: float = 30.0,
        enquire_link_interval: float = 30.0,
        inactivity_timeout: float | None = None,
        max_command_length: int = pdu.DEFAULT_MAX_COMMAND_LENGTH,
    ) -> None:
        if window < 1:
            raise ValueError("window must be at least 1")
        self.role = role
        self.window = window
        self.response_timeout = response_timeout
        self.enquire_link_interval = enquire_link_interval
        self.inactivity_timeout = inactivity_timeout
        self._state = State.OPEN
        self._framer = pdu.Framer(max_command_length)
        self._events: collections.deque[Event] = collections.deque()
        self._closed_emitted = False
        self._out = bytearray()
        self._next_sequence = 1
        self._outstanding: dict[int, _Outstanding] = {}
        # Incoming requests the application has yet to answer, by sequence number.
        self._pending: dict[int, Pdu] = {}
        self._bind_pending = False  # ESME: our bind is out; SMSC: a bind awaits respond()
        self._unbinding = False  # our unbind is out, waiting for unbind_resp
        self._unbind_reason = "unbound"
        self._close_after_send: str | None = None
        # Times of the last PDU received (any) and the last non-keep-alive PDU received.
        self._last_received: float | None = None
        self._last_activity: float | None = None

    # ---------------------------------------------------------------- properties

    @property
    def state(self) -> State:
        return self._state

    @property
    def window_free(self) -> int:
        """How many more windowed requests (all but enquire_link/unbind) we may send now."""
        used = sum(1 for o in self._outstanding.values() if not _outside_window(o.request))
        return max(0, self.window - used)

    @property
    def unbinding(self) -> bool:
        """Our unbind is out, waiting for its unbind_resp (a second one is refused)."""
        return self._unbinding

    @property
    def pending_incoming(self) -> int:
        """Incoming requests not yet answered (the driver stops reading at >= window)."""
        return len(self._pending)

    @property
    def outstanding(self) -> tuple[Pdu, ...]:
        """Our requests still waiting for a response (lost if the connection closes)."""
        return tuple(o.request for o in self._outstanding.values() if not o.internal)

    @property
    def has_data_to_send(self) -> bool:
        """Whether :meth:`data_to_send` has anything to do (bytes, or a close to finish)."""
        return bool(self._out) or self._close_after_send is not None

    @property
    def has_events(self) -> bool:
        """Whether :meth:`next_event` would return an event now."""
        return bool(self._events)

    # ---------------------------------------------------------------- h11-style I/O

    def receive_data(self, data: bytes | bytearray, now: float) -> None:
        """Feed bytes read from the peer; ``b""`` means the peer closed (EOF)."""
        self._baseline(now)
        if self._state is State.CLOSED:
            return  # late bytes after we gave up: nothing can be trusted or answered
        if not data:
            self._close("peer closed the connection")
            return
        self._framer.feed(data)
        while not self._is_closed():
            try:
                frame = self._framer.next_frame()
            except pdu.FrameError as exc:
                self._frame_error(exc)
                return
            if frame is None:
                return
            self._handle_frame(frame, now)

    def next_event(self) -> Event | None:
        """The next event, or None when there is nothing more until new data or a tick."""
        return self._events.popleft() if self._events else None

    def data_to_send(self) -> bytes:
        """Drain the bytes to write to the peer."""
        data = bytes(self._out)
        self._out.clear()
        if self._close_after_send is not None:
            # The peer's unbind has been answered and the unbind_resp is now the driver's to
            # write: the session is over (SMPP 3.4 §4.2).
            reason, self._close_after_send = self._close_after_send, None
            self._close(reason)
        return data

    # ---------------------------------------------------------------- local actions

    def send_bind(
        self,
        kind: Literal["transmitter", "receiver", "transceiver"],
        now: float,
        *,
        system_id: str,
        password: str,
        system_type: str = "",
        address_range: str = "",
        interface_version: int = 0x34,
    ) -> int:
        """Send bind_<kind> (ESME, OPEN state); returns its sequence number."""
        return self.send_request(
            f"bind_{kind}",
            now,
            system_id=system_id,
            password=password,
            system_type=system_type,
            interface_version=interface_version,
            address_range=address_range,
        )

    def send_request(
        self, command: str, now: float, *, tlvs: Iterable[pdu.Tlv] = (), **fields: _Field
    ) -> int:
        """Queue a request and return its sequence number.

        Raises WindowFull if the window is full, LocalProtocolError if the table does not
        allow ``command`` for this role and state.
        """
        return self._send_request(command, now, tlvs=tuple(tlvs), fields=fields, internal=False)

    def respond(self, request: Pdu, status: int = pdu.ESME_ROK, **fields: _Field) -> None:
        """Answer a pending incoming request (bind, deliver_sm, submit_sm, data_sm).

        After the session is UNBOUND or CLOSED the answer is dropped silently: the peer has
        given up on it and will redeliver what it did not see acknowledged.
        """
        pending = self._pending.get(request.sequence)
        if pending is not request and pending != request:
            raise LocalProtocolError(
                f"{request.command} seq={request.sequence} is not an unanswered request"
            )
        if self._state in (State.UNBOUND, State.CLOSED):
            del self._pending[request.sequence]
            return
        if not fields and (wire := pdu.encode_bare_response(request, status)) is not None:
            # The hot path (deliver_sm_resp): the same bytes, without building a Pdu.
            del self._pending[request.sequence]
            self._out += wire
            return
        response = _build(pdu.response_for, request, status, **fields)
        del self._pending[request.sequence]
        self._queue(response)
        if request.command in _BINDS:
            self._bind_pending = False
            if status == pdu.ESME_ROK:
                self._state = _BIND_STATE[request.command]

    def unbind(self, now: float) -> None:
        """Start a graceful unbind; Unbound and ConnectionClosed follow its unbind_resp."""
        self._send_request("unbind", now, tlvs=(), fields={}, internal=False)

    def close(self) -> None:
        """Abort locally: CLOSED at once, nothing more is sent."""
        self._out.clear()
        self._close_after_send = None
        self._close("closed locally")

    def tick(self, now: float) -> None:
        """Fire whatever timers are due at ``now``."""
        self._baseline(now)
        if self._state is State.CLOSED:
            return
        for seq, out in sorted(self._outstanding.items(), key=lambda kv: kv[1].deadline):
            if out.deadline > now or self._is_closed():
                break
            del self._outstanding[seq]
            self._timed_out(out)
        if self._state not in BOUND_STATES or self._unbinding:
            if (
                self._state is State.OPEN
                and self.inactivity_timeout is not None
                and not self._bind_pending
                and self._last_activity is not None
                and now >= self._last_activity + self.inactivity_timeout
            ):
                self._close("inactivity timeout before bind")
            return
        assert self._last_received is not None
        assert self._last_activity is not None
        if (
            self.inactivity_timeout is not None
            and now >= self._last_activity + self.inactivity_timeout
        ):
            self._unbind_reason = "inactivity timeout"
            self._send_request("unbind", now, tlvs=(), fields={}, internal=True)
            return
        if (
            now >= self._last_received + self.enquire_link_interval
            and not self._enquire_link_outstanding()
        ):
            # §4.11: probe a quiet link; a missing enquire_link_resp means it is dead.
            self._send_request("enquire_link", now, tlvs=(), fields={}, internal=True)

    def next_deadline(self) -> float | None:
        """When :meth:`tick` must next be called (None: no timer is running)."""
        if self._state is State.CLOSED:
            return None
        deadlines = [o.deadline for o in self._outstanding.values()]
        if self._state in BOUND_STATES and not self._unbinding:
            if self._last_received is not None and not self._enquire_link_outstanding():
                deadlines.append(self._last_received + self.enquire_link_interval)
            if self.inactivity_timeout is not None and self._last_activity is not None:
                deadlines.append(self._last_activity + self.inactivity_timeout)
        elif (
            self._state is State.OPEN
            and self.inactivity_timeout is not None
            and not self._bind_pending
            and self._last_activity is not None
        ):
            deadlines.append(self._last_activity + self.inactivity_timeout)
        return min(deadlines, default=None)

    # ---------------------------------------------------------------- internals: sending

    def _send_request(
        self,
        command: str,
        now: float,
        *,
        tlvs: tuple[pdu.Tlv, ...],
        fields: Mapping[str, _Field],
        internal: bool,
    ) -> int:
        self._baseline(now)
        if command not in may_send(self.role, self._state):
            raise LocalProtocolError(
                f"{self.role.name} may not send {command} in state {self._state.name}"
            )
        if command in _BINDS and self._bind_pending:
            raise LocalProtocolError("a bind is already outstanding")
        if self._unbinding:
            raise LocalProtocolError(f"cannot send {command}: unbinding")
        if command not in _OUTSIDE_WINDOW and self.window_free == 0:
            raise WindowFull(f"{self.window} requests outstanding")
        sequence = self._allocate_sequence()
        request = _build(pdu.make, command, sequence=sequence, tlvs=tlvs, **fields)
        self._queue(request)
        if command not in _NO_RESPONSE:
            self._outstanding[sequence] = _Outstanding(
                request=request, deadline=now + self.response_timeout, internal=internal
            )
        if command in _BINDS:
            self._bind_pending = True
        elif command == "unbind":
            self._unbinding = True
        return sequence

    def _allocate_sequence(self) -> int:
        # §5.1.4 (sequence_number): 0x00000001..0x7FFFFFFF, wrapping; a number still
        # outstanding is skipped so responses stay unambiguous. Terminates because at most
        # window + 2 requests are outstanding.
        while True:
            sequence = self._next_sequence
            self._next_sequence = 1 if sequence >= MAX_SEQUENCE else sequence + 1
            if sequence not in self._outstanding:
                return sequence

    def _queue(self, p: Pdu) -> None:
        self._out += pdu.encode(p)

    def _answer(self, request: Pdu, status: int) -> None:
        """Answer a request we refuse: its _resp, or generic_nack if it has none."""
        self._queue(pdu.response_for(request, status))

    # ---------------------------------------------------------------- internals: receiving

    def _handle_frame(self, frame: bytes, now: float) -> None:
        self._last_received = now
        try:
            p = pdu.decode(frame)
        except pdu.PduError as exc:
            self._last_activity = now
            self._malformed(exc)
            return
        except Exception as exc:  # the codec must never let peer bytes crash the session
            self._last_activity = now
            self._malformed(pdu.PduError(f"undecodable PDU: {exc!r}", status=pdu.ESME_RSYSERR))
            return
        if p.command not in ("enquire_link", "enquire_link_resp"):
            # Keep-alive traffic proves the link, not that the bind is in use.
            self._last_activity = now
        if p.is_response:
            self._handle_response(p)
        else:
            self._handle_request(p, now)

    def _malformed(self, exc: pdu.PduError) -> None:
        name = _command_name(exc.command_id)
        if exc.command_id & pdu.RESPONSE_BIT:
            # Never answer a response (§4.3): report it; the request it answers, if any,
            # stays outstanding and times out.
            self._emit(ProtocolError(reason=f"malformed {name}: {exc.reason}", fatal=False))
            return
        # §4.3: a request we cannot parse gets generic_nack, or its own _resp when it has
        # one (bodies with bad fields), carrying the PduError's status.
        resp = _RESPONSE_NAMES.get(exc.command_id, "generic_nack")
        self._queue(pdu.make(resp, sequence=exc.sequence, status=exc.status))
        self._emit(
            ProtocolError(
                reason=f"malformed {name} answered with {resp}: {exc.reason}", fatal=False
            )
        )

    def _handle_request(self, p: Pdu, now: float) -> None:
        command = p.command
        if command not in may_receive(self.role, self._state):
            if (
                self.role is Role.SMSC
                and command in _BINDS
                and (self._state in BOUND_STATES or self._bind_pending)
            ):
                status = pdu.ESME_RALYBND
            else:
                status = pdu.ESME_RINVBNDSTS
            self._answer(p, status)
            self._emit(
                ProtocolError(
                    reason=f"{command} not allowed in {self._state.name}: answered "
                    f"{'ESME_RALYBND' if status == pdu.ESME_RALYBND else 'ESME_RINVBNDSTS'}",
                    fatal=False,
                )
            )
            return
        if command == "enquire_link":
            self._answer(p, pdu.ESME_ROK)  # §4.11: answered by the session, never the app
            return
        if command == "unbind":
            # §4.2: answer, then the session is over once the unbind_resp is written.
            self._answer(p, pdu.ESME_ROK)
            self._state = State.UNBOUND
            self._emit(Unbound())
            self._close_after_send = "peer unbound"
            return
        if command == "outbind":
            self._emit(OutbindReceived(pdu=p))  # §4.1.7: no response; the ESME binds
            return
        if command == "alert_notification":
            self._emit(AlertReceived(pdu=p))  # §4.12: no response
            return
        if command in _BINDS and self._bind_pending:
            self._answer(p, pdu.ESME_RALYBND)
            self._emit(ProtocolError(reason=f"second {command} while binding", fatal=False))
            return
        if p.sequence in self._pending:
            # A broken peer reused the sequence of a request we have not answered yet;
            # answering it with a temporary error keeps the two apart without losing either.
            status = pdu.ESME_RX_T_APPN if self.role is Role.ESME else pdu.ESME_RSYSERR
            self._answer(p, status)
            self._emit(
                ProtocolError(reason=f"{command} reuses pending sequence {p.sequence}", fatal=False)
            )
            return
        self._pending[p.sequence] = p
        if command in _BINDS:
            self._bind_pending = True
            self._emit(BindRequested(pdu=p))
        else:
            self._emit(RequestReceived(pdu=p))

    def _handle_response(self, p: Pdu) -> None:
        out = self._outstanding.get(p.sequence)
        if out is None or (
            p.command_id != out.request.command_id | pdu.RESPONSE_BIT
            and p.command_id != pdu.GENERIC_NACK
        ):
            self._emit(
                ProtocolError(
                    reason=f"unexpected {p.command} seq={p.sequence} matches no request",
                    fatal=False,
                )
            )
            return
        del self._outstanding[p.sequence]
        request = out.request
        if request.command in _BINDS:
            self._bind_pending = False
            if p.status == pdu.ESME_ROK and p.command_id != pdu.GENERIC_NACK:
                self._state = _BIND_STATE[request.command]
                self._emit(Bound(state=self._state, pdu=p))
            else:
                self._emit(BindFailed(status=p.status, pdu=p))
                self._close(f"bind refused with status 0x{p.status:08X}")
            return
        if request.command == "unbind":
            # Whatever its status, an unbind_resp ends the session (§4.2.2).
            if self._state is not State.UNBOUND:
                self._state = State.UNBOUND
                self._emit(Unbound())
                self._close(self._unbind_reason)
            return
        if not out.internal:
            self._emit(ResponseReceived(request=request, response=p))

    # ---------------------------------------------------------------- internals: failures

    def _timed_out(self, out: _Outstanding) -> None:
        command = out.request.command
        if command == "enquire_link":
            # §4.11: no enquire_link_resp: the TCP connection is half-open or the peer hung.
            if not out.internal:
                self._emit(RequestTimedOut(request=out.request))
            self._emit(
                ProtocolError(
                    reason=f"no enquire_link_resp within {self.response_timeout}s: link dead",
                    fatal=True,
                )
            )
            self._close("link dead (enquire_link unanswered)")
        elif command == "unbind":
            self._state = State.UNBOUND
            self._close(f"{self._unbind_reason} (unbind_resp timed out)")
        elif command in _BINDS:
            self._bind_pending = False
            self._emit(RequestTimedOut(request=out.request))
            self._close("bind_resp timed out")
        else:
            self._emit(RequestTimedOut(request=out.request))

    def _frame_error(self, exc: pdu.FrameError) -> None:
        # The stream cannot be resynchronised past a bad command_length (§3.2): answer
        # generic_nack ESME_RINVCMDLEN, unbind if bound (best effort, untracked), and end.
        self._queue(pdu.make("generic_nack", sequence=exc.sequence, status=exc.status))
        if self._state in BOUND_STATES and not self._unbinding:
            self._queue(pdu.make("unbind", sequence=self._allocate_sequence()))
        self._emit(ProtocolError(reason=f"framing error: {exc.reason}", fatal=True))
        self._close("framing error")

    # ---------------------------------------------------------------- internals: misc

    def _emit(self, event: Event) -> None:
        if not self._closed_emitted:
            self._events.append(event)

    def _close(self, reason: str) -> None:
        self._state = State.CLOSED
        self._bind_pending = False
        self._close_after_send = None
        if not self._closed_emitted:
            self._events.append(ConnectionClosed(reason=reason))
            self._closed_emitted = True

    def _is_closed(self) -> bool:
        # A method, not an inline comparison: handlers called in a loop may close the
        # session, which mypy's narrowing of self._state cannot see.
        return self._state is State.CLOSED

    def _baseline(self, now: float) -> None:
        if self._last_received is None:
            self._last_received = now
        if self._last_activity is None:
            self._last_activity = now

    def _enquire_link_outstanding(self) -> bool:
        return any(o.request.command == "enquire_link" for o in self._outstanding.values())


_Field = int | bytes | str


def _build(factory: Callable[..., Pdu], *args: object, **kwargs: object) -> Pdu:
    """Call a pdu constructor; bad fields are the caller's mistake: LocalProtocolError."""
    try:
        return factory(*args, **kwargs)
    except ValueError as exc:
        raise LocalProtocolError(str(exc)) from exc


def _outside_window(request: Pdu) -> bool:
    return request.command in _OUTSIDE_WINDOW


# Requests whose malformed form is answered with their own _resp rather than generic_nack.
_RESPONSE_NAMES = {
    pdu.BIND_RECEIVER: "bind_receiver_resp",
    pdu.BIND_TRANSMITTER: "bind_transmitter_resp",
    pdu.BIND_TRANSCEIVER: "bind_transceiver_resp",
    pdu.SUBMIT_SM: "submit_sm_resp",
    pdu.DELIVER_SM: "deliver_sm_resp",
    pdu.UNBIND: "unbind_resp",
    pdu.ENQUIRE_LINK: "enquire_link_resp",
    pdu.DATA_SM: "data_sm_resp",
}


def _command_name(command_id: int) -> str:
    return pdu.command_name(command_id) or f"command 0x{command_id:08X}"
