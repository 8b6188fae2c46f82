"""Sans-I/O non-INVITE client transaction (RFC 3261 §17.1.2), in the manner of our SMPP
session: no sockets, no clock. The driver sends what :meth:`ClientTransaction.data_to_send`
returns, feeds responses to :meth:`ClientTransaction.receive_response`, calls
:meth:`ClientTransaction.tick` at :meth:`ClientTransaction.next_deadline` and drains
:meth:`ClientTransaction.next_event`. ``now`` is a monotonic time in seconds.

Nothing the peer sends raises: a response that belongs to another transaction is refused
(``receive_response`` returns False) and one that arrives too late is absorbed. Only local
misuse raises :class:`LocalProtocolError`.

Timers (§17.1.2.2, values from §17.1.1.1 / Table 4)::

    E  request retransmission, unreliable transports only: first after T1, then doubling,
       capped at T2; in Proceeding always T2. With the defaults the copies go out at
       0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, ... 31.5 s.
    F  transaction timeout: 64*T1 (32 s) after the request, on every transport.
    K  wait for response retransmissions in Completed: T4 (5 s) unreliable, 0 reliable.
"""

from __future__ import annotations

import collections
import enum
from collections.abc import Mapping

import attrs

from gatewayd.sip.message import Request, Response, header_param, split_commas

__all__ = [
    "DEFAULT_TIMERS",
    "TABLE",
    "ClientTransaction",
    "Event",
    "FinalResponse",
    "LocalProtocolError",
    "ProvisionalResponse",
    "State",
    "TimedOut",
    "Timers",
    "TransportFailed",
    "cseq_of",
    "top_branch",
]


class State(enum.Enum):
    TRYING = "trying"
    PROCEEDING = "proceeding"
    COMPLETED = "completed"
    TERMINATED = "terminated"


class Input(enum.Enum):
    PROVISIONAL = "1xx"
    FINAL = "200-699"
    TIMER_E = "timer E"
    TIMER_F = "timer F"
    TIMER_K = "timer K"
    TRANSPORT_ERROR = "transport error"


# ---------------------------------------------------------------------------------------
# THE table (RFC 3261 Figure 6). (state, input) -> next state; an input absent from a
# state's row is ignored there. What each transition also does:
#
# * Trying/Proceeding + 1xx      -> Proceeding, ProvisionalResponse event (§17.1.2.2).
# * Trying/Proceeding + final    -> Completed, FinalResponse event, start timer K.
# * Trying/Proceeding + timer E  -> retransmit (unreliable only), next E in
#   min(2*E, T2) in Trying, T2 in Proceeding.
# * Trying/Proceeding + timer F  -> Terminated, TimedOut event.
# * Trying/Proceeding + transport error -> Terminated, TransportFailed event (§17.1.4).
# * Completed + any response     -> absorbed (a retransmission), no event.
# * Completed + timer K          -> Terminated.
# ---------------------------------------------------------------------------------------
_ACTIVE_ROW: Mapping[Input, State] = {
    Input.PROVISIONAL: State.PROCEEDING,
    Input.FINAL: State.COMPLETED,
    Input.TIMER_E: State.TRYING,  # Proceeding stays Proceeding: see _step
    Input.TIMER_F: State.TERMINATED,
    Input.TRANSPORT_ERROR: State.TERMINATED,
}
TABLE: Mapping[State, Mapping[Input, State]] = {
    State.TRYING: _ACTIVE_ROW,
    State.PROCEEDING: {**_ACTIVE_ROW, Input.TIMER_E: State.PROCEEDING},
    State.COMPLETED: {
        Input.PROVISIONAL: State.COMPLETED,
        Input.FINAL: State.COMPLETED,
        Input.TIMER_K: State.TERMINATED,
    },
    State.TERMINATED: {},
}


class LocalProtocolError(Exception):
    """We used the transaction in a way RFC 3261 does not allow."""


@attrs.frozen(kw_only=True)
class Timers:
    """RFC 3261 Table 4 values, in seconds."""

    t1: float = 0.5  # RTT estimate
    t2: float = 4.0  # maximum retransmit interval for non-INVITE requests
    t4: float = 5.0  # maximum duration a message remains in the network

    @property
    def timer_f(self) -> float:
        return 64 * self.t1


DEFAULT_TIMERS = Timers()


@attrs.frozen(kw_only=True)
class Event:
    """Base class of what :meth:`ClientTransaction.next_event` returns."""


@attrs.frozen(kw_only=True)
class ProvisionalResponse(Event):
    response: Response


@attrs.frozen(kw_only=True)
class FinalResponse(Event):
    response: Response


@attrs.frozen(kw_only=True)
class TimedOut(Event):
    """Timer F fired: no final response within 64*T1."""

    after: float


@attrs.frozen(kw_only=True)
class TransportFailed(Event):
    reason: str


def top_branch(message: Request | Response) -> str | None:
    """The ``branch`` of the topmost Via (§17.1.3), or None."""
    via = message.headers.get("Via")
    if via is None:
        return None
    parts = split_commas(via)
    return header_param(parts[0], "branch") if parts else None


def cseq_of(message: Request | Response) -> tuple[int, str] | None:
    """``CSeq`` as (number, method), or None when absent or malformed."""
    value = message.headers.get("CSeq")
    if value is None:
        return None
    number, _, method = value.strip().partition(" ")
    if not number.isascii() or not number.isdigit() or len(number) > 10:
        return None
    return int(number), method.strip()


class ClientTransaction:
    """One non-INVITE request and its responses. Starts in Trying with the request queued."""

    def __init__(
        self, request: Request, *, reliable: bool, now: float, timers: Timers = DEFAULT_TIMERS
    ) -> None:
        if request.method in ("INVITE", "ACK"):
            raise LocalProtocolError(f"{request.method} needs another transaction type")
        branch = top_branch(request)
        if not branch or cseq_of(request) is None:
            raise LocalProtocolError("the request needs a Via with a branch and a CSeq")
        self.request = request
        self.reliable = reliable
        self.timers = timers
        self.branch = branch
        self.started = now
        self.transmissions = 0
        self._wire = request.to_bytes()
        self._state = State.TRYING
        self._out: list[bytes] = []
        self._events: collections.deque[Event] = collections.deque()
        self._e_interval = timers.t1
        self._e_deadline: float | None = None if reliable else now + timers.t1
        self._f_deadline: float | None = now + timers.timer_f
        self._k_deadline: float | None = None
        self._queue_request()

    @property
    def state(self) -> State:
        return self._state

    def data_to_send(self) -> list[bytes]:
        """The copies of the request to put on the wire now (the first, or retransmissions)."""
        out, self._out = self._out, []
        return out

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def matches(self, response: Response) -> bool:
        """§17.1.3: same top Via branch and same CSeq method as our request."""
        cseq = cseq_of(response)
        return (
            top_branch(response) == self.branch
            and cseq is not None
            and cseq[1] == self.request.method
        )

    def receive_response(self, response: Response, now: float) -> bool:
        """Feed a response. False: it is not ours (another transaction's, or no match)."""
        if not self.matches(response):
            return False
        self.tick(now)
        kind = Input.PROVISIONAL if response.provisional else Input.FINAL
        active = self._state in (State.TRYING, State.PROCEEDING)
        if self._step(kind, now) and active:  # in Completed: a retransmission, absorbed
            if kind is Input.FINAL:
                self._events.append(FinalResponse(response=response))
            else:
                self._events.append(ProvisionalResponse(response=response))
        return True

    def transport_error(self, reason: str, now: float) -> None:
        """The transport could not send (§17.1.4): the transaction fails at once."""
        if self._step(Input.TRANSPORT_ERROR, now):
            self._events.append(TransportFailed(reason=reason))

    def tick(self, now: float) -> None:
        """Fire every timer that is due at ``now`` (late calls send one retransmission)."""
        if self._f_deadline is not None and now >= self._f_deadline:
            if self._step(Input.TIMER_F, now):
                self._events.append(TimedOut(after=now - self.started))
            return
        if self._e_deadline is not None and now >= self._e_deadline:
            self._step(Input.TIMER_E, now)
        if self._k_deadline is not None and now >= self._k_deadline:
            self._step(Input.TIMER_K, now)

    def next_deadline(self) -> float | None:
        """When :meth:`tick` must next be called, or None (terminated)."""
        timers = (self._e_deadline, self._f_deadline, self._k_deadline)
        pending = [d for d in timers if d is not None]
        return min(pending, default=None)

    # --- the machine --------------------------------------------------------------------

    def _step(self, kind: Input, now: float) -> bool:
        """Apply ``kind`` through the table. False when the state ignores it."""
        old = self._state
        new = TABLE[old].get(kind)
        if new is None:
            return False
        if kind is Input.TIMER_E:
            self._retransmit(old, now)
        elif old is not State.COMPLETED and new is State.COMPLETED:
            self._e_deadline = self._f_deadline = None
            # Timer K: T4 to absorb retransmitted responses on UDP, 0 on reliable transports.
            if self.reliable:
                new = State.TERMINATED
            else:
                self._k_deadline = now + self.timers.t4
        if new is State.TERMINATED:
            self._e_deadline = self._f_deadline = self._k_deadline = None
        self._state = new
        return True

    def _retransmit(self, state: State, now: float) -> None:
        assert self._e_deadline is not None
        self._queue_request()
        # Trying: double up to T2; Proceeding: T2 (§17.1.2.2). Schedule from when the timer
        # was due, not from when tick() ran, so a late tick does not shift the series (and
        # skips, rather than bursts, the copies it missed).
        while self._e_deadline <= now:
            if state is State.PROCEEDING:
                self._e_interval = self.timers.t2
            else:
                self._e_interval = min(2 * self._e_interval, self.timers.t2)
            self._e_deadline += self._e_interval

    def _queue_request(self) -> None:
        self.transmissions += 1
        self._out.append(self._wire)
