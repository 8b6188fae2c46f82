"""Drive one sans-I/O :class:`~gatewayd.smpp.session.Session` over one trio stream.

Shared by the ESME driver (our binds to carriers) and the SMSC simulator: a reader task feeds
received bytes in, a timer task calls ``tick`` at the session's next deadline, a single send
lock serialises writes, and requests we send are matched to their responses through waiters.

Incoming requests (deliver_sm, submit_sm, data_sm, binds on the SMSC side) go to the
handler's ``on_request``; the response is sent with the status it returns, only once it
returns. While ``window`` of them are waiting, the socket is not read (back-pressure).

Requests that arrive together (one read often carries several deliver_sm) are handed over
as one batch: one task, and the handler's ``on_requests`` when the owner gives one (e.g. to
make the whole batch durable in one group commit). Each response is queued the moment its
status is known (one slow request does not hold up the others), and a writer task sends
all the responses queued meanwhile with one ``send_all``. A response still goes out only
after the handler gave its status (ack-after-persist stays the handler's to keep).

Exceptions::

    BindError             base
      BindLost            the connection went away while a request of ours was outstanding
      NotBound            a request was made while the session cannot carry it
      RequestTimeout      the peer did not answer one of our requests in time
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

import attrs
import trio

from gatewayd.smpp import pdu as P
from gatewayd.smpp import session as S

log = logging.getLogger("gatewayd.smpp")

BOUND_STATES = S.BOUND_STATES
_STREAM_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


class BindError(Exception):
    """Base class of the errors a request through a bind can raise."""


class BindLost(BindError):
    """The connection closed while the request was outstanding: its fate is unknown."""


class NotBound(BindError):
    """No session able to carry the request is up."""


class RequestTimeout(BindError):
    """The peer did not answer in time."""


class Handler(Protocol):
    """What a runner's owner decides."""

    async def on_request(self, request: P.Pdu) -> tuple[int, Mapping[str, int | bytes | str]]:
        """Return (command_status, response fields) for an incoming request."""
        ...

    def on_event(self, event: S.Event) -> None:
        """Every other session event (bound, unbound, errors, alerts…), for state and logs."""
        ...


Answer = tuple[int, Mapping[str, int | bytes | str]]
# respond(index, status, fields): answer request ``index`` of a batch, as soon as it is known.
Respond = Callable[[int, int, Mapping[str, int | bytes | str]], None]
# Answers a batch of requests: calls ``respond`` once per request, in any order. A request
# it returns without answering gets ESME_RX_T_APPN.
BatchAnswerer = Callable[[Sequence[P.Pdu], Respond], Awaitable[None]]


@attrs.define
class _Waiter:
    done: trio.Event = attrs.field(factory=trio.Event)
    response: P.Pdu | None = None
    error: BindError | None = None


class SessionRunner:
    """One connection: session + stream + the tasks that move bytes between them."""

    def __init__(
        self,
        session: S.Session,
        stream: trio.abc.Stream,
        handler: Handler,
        *,
        window: int,
        log_extra: Mapping[str, Any] | None = None,
        on_requests: BatchAnswerer | None = None,
    ) -> None:
        self.session = session
        self.stream = stream
        self._handler = handler
        self._on_requests = on_requests
        self._window = window
        self._extra = dict(log_extra or {})
        self._send_lock = trio.Lock()
        self._waiters: dict[int, _Waiter] = {}
        self._changed = trio.Event()
        # The timer's own wake-up: set only when a deadline may have moved earlier, so the
        # answers of the hot path do not wake it (and make it tick and flush) every time.
        self._timer_wake = trio.Event()
        self._state = session.state  # the state the timer last saw
        self._nursery: trio.Nursery | None = None
        # One read can carry many PDUs: the handler still sees at most `window` at once.
        self._handler_limit = max(1, window)
        self._in_handler = 0
        self._queued: list[P.Pdu] = []
        # Set when responses were queued: the writer sends them all with one send_all.
        self._dirty = trio.Event()
        self.closed = trio.Event()
        self.close_reason = ""

    # ------------------------------------------------------------------ API

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until the session closes (EOF, unbind, fatal error) or the scope is cancelled."""
        try:
            # start the session's clock (inactivity, enquire_link) at the connection's start
            self.session.tick(trio.current_time())
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._reader)
                nursery.start_soon(self._timer)
                nursery.start_soon(self._writer)
                task_status.started()
        finally:
            self._nursery = None
            self._fail_waiters()
            self.closed.set()
            # Wake requests waiting for window room: they must see the connection is gone
            # (NotBound) instead of waiting for a response slot that never frees.
            self.poke()

    def poke(self) -> None:
        """Wake the timer and anyone waiting for window room: state may have changed."""
        self._state = self.session.state
        self._timer_wake.set()
        self._timer_wake = trio.Event()
        self._changed.set()
        self._changed = trio.Event()

    def _wake_waiters(self) -> None:
        """Wake the waiters for window room (reader, requests), and the timer only if the
        session's state changed (a bind or unbind starts or stops its timers)."""
        if self.session.state is not self._state:
            self.poke()
            return
        self._changed.set()
        self._changed = trio.Event()

    async def changed(self) -> None:
        await self._changed.wait()

    def hang_up(self) -> None:
        """Abort the connection now (the owner closes the stream)."""
        self.session.close()
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    async def flush(self) -> None:
        if not self.session.has_data_to_send:
            return  # nothing to write, nothing to order: skip the lock
        async with self._send_lock:
            data = self.session.data_to_send()
            if data:
                await self.stream.send_all(data)

    async def request(
        self, command: str, *, tlvs: tuple[P.Tlv, ...] = (), **fields: int | bytes | str
    ) -> P.Pdu:
        """Send a request once the window has room and return the response PDU."""
        while True:
            if self.session.state not in BOUND_STATES or self.closed.is_set():
                raise NotBound(f"session is {self.session.state.name}")
            if self.session.window_free > 0:
                break
            await self._changed.wait()
        seq = self.session.send_request(command, trio.current_time(), tlvs=tlvs, **fields)
        waiter = _Waiter()
        self._waiters[seq] = waiter
        self.poke()  # the timer must learn the new response deadline
        try:
            await self.flush()
        except _STREAM_ERRORS as exc:
            self._waiters.pop(seq, None)
            self.hang_up()
            raise BindLost(f"write failed: {exc}") from exc
        await waiter.done.wait()
        if waiter.error is not None:
            raise waiter.error
        assert waiter.response is not None
        return waiter.response

    async def unbind(self, grace: float) -> None:
        """Graceful end: unbind, wait (bounded) for unbind_resp, leave the session closed."""
        if self.session.state in BOUND_STATES:
            self.session.unbind(trio.current_time())
            self.poke()
            try:
                await self.flush()
            except _STREAM_ERRORS:
                self.hang_up()
                return
        with trio.move_on_after(grace):
            await self.closed.wait()
        self.hang_up()

    # ------------------------------------------------------------------ tasks

    async def _reader(self) -> None:
        while True:
            # Back-pressure: with `window` requests waiting on the handler, stop reading, so
            # a fast peer cannot grow our memory; its own window stops it (SMPP 3.4 §2.6).
            while self.session.pending_incoming >= self._window:
                await self._changed.wait()
            try:
                data = await self.stream.receive_some(65536)
            except _STREAM_ERRORS as exc:
                self.close_reason = f"read error: {exc.__class__.__name__}"
                data = b""
            self.session.receive_data(data, trio.current_time())
            await self._pump()
            if self.session.state is S.State.CLOSED:
                # Nothing more will be read (hang_up has cancelled us): stop here, since a
                # closed stream raises without a checkpoint and the loop would spin.
                return

    async def _timer(self) -> None:
        while True:
            deadline = self.session.next_deadline()
            wake = self._timer_wake
            with trio.move_on_at(deadline if deadline is not None else math.inf):
                await wake.wait()
            self.session.tick(trio.current_time())
            await self._pump()

    async def _pump(self) -> None:
        """Handle every event the session has, then send what it wants sent."""
        closed = False
        other = False  # an event besides incoming requests: wake the timer and waiters
        session = self.session
        while (event := session.next_event()) is not None:
            if type(event) is S.RequestReceived or type(event) is S.BindRequested:
                self._queued.append(event.pdu)
                continue
            other = True
            if isinstance(event, S.ResponseReceived):
                self._resolve(event.request.sequence, response=event.response)
            elif isinstance(event, S.RequestTimedOut):
                self._resolve(
                    event.request.sequence,
                    error=RequestTimeout(f"{event.request.command} got no response"),
                )
            elif isinstance(event, S.ConnectionClosed):
                closed = True
                if not self.close_reason:
                    self.close_reason = event.reason
            self._handler.on_event(event)
        if self._queued:
            self._dispatch()
        if other or session.state is not self._state:
            self.poke()
        try:
            await self.flush()
        except _STREAM_ERRORS as exc:
            self.close_reason = self.close_reason or f"write error: {exc.__class__.__name__}"
            closed = True
        if closed or session.state is S.State.CLOSED:
            self.hang_up()

    def _dispatch(self) -> None:
        """Hand queued requests to the handler in batches, at most `window` in it at once."""
        queued = self._queued
        while queued and self._in_handler < self._handler_limit:
            n = min(self._handler_limit - self._in_handler, len(queued))
            batch = queued[:n]
            del queued[:n]
            self._in_handler += n
            assert self._nursery is not None
            self._nursery.start_soon(self._answer, batch)

    async def _answer(self, batch: list[P.Pdu]) -> None:
        """Get the batch answered; each response is queued the moment its status is known
        (so one slow request does not hold up the others) and written by :meth:`_writer`."""
        answered = [False] * len(batch)

        def respond(index: int, status: int, fields: Mapping[str, int | bytes | str]) -> None:
            if answered[index]:
                return
            answered[index] = True
            self._in_handler -= 1
            self._respond(batch[index], status, fields)

        try:
            if self._on_requests is not None:
                try:
                    await self._on_requests(batch, respond)
                except Exception:
                    self._handler_failed()
            elif len(batch) == 1:
                respond(0, *await self._answer_one(batch[0]))
            else:
                # Each request on its own task: one slow answer does not hold up the others.
                async def one(index: int, request: P.Pdu) -> None:
                    respond(index, *await self._answer_one(request))

                async with trio.open_nursery() as nursery:
                    for index, request in enumerate(batch):
                        nursery.start_soon(one, index, request)
            for index in range(len(batch)):
                respond(index, P.ESME_RX_T_APPN, {})  # only those left unanswered
        finally:
            unanswered = answered.count(False)  # cancelled: never acknowledged, resent
            self._in_handler -= unanswered

    def _respond(
        self, request: P.Pdu, status: int, fields: Mapping[str, int | bytes | str]
    ) -> None:
        session = self.session
        if session.state is S.State.CLOSED:
            return  # never acknowledged: the peer resends it
        try:
            session.respond(request, status, **fields)
        except S.LocalProtocolError:
            return
        if self._queued:
            self._dispatch()
        self._dirty.set()

    async def _writer(self) -> None:
        """Send the responses queued since the last write, all at once."""
        while True:
            await self._dirty.wait()
            self._dirty = trio.Event()
            self._wake_waiters()  # the reader may wait for room in the window
            await self._pump()

    async def _answer_one(self, request: P.Pdu) -> Answer:
        try:
            return await self._handler.on_request(request)
        except Exception:
            self._handler_failed()
            return P.ESME_RX_T_APPN, {}

    def _handler_failed(self) -> None:
        # A handler bug must not lose the message: a temporary error makes the peer
        # resend it (SMPP 3.4 §5.1.3, ESME_RX_T_APPN).
        log.exception("request handler failed; answering a temporary error", extra=self._extra)

    def _resolve(
        self, sequence: int, *, response: P.Pdu | None = None, error: BindError | None = None
    ) -> None:
        waiter = self._waiters.pop(sequence, None)
        if waiter is not None:
            waiter.response, waiter.error = response, error
            waiter.done.set()

    def _fail_waiters(self) -> None:
        for waiter in self._waiters.values():
            waiter.error = BindLost("connection lost before the response")
            waiter.done.set()
        self._waiters.clear()
