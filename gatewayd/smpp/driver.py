"""The trio task that holds one SMPP bind to a carrier's SMSC.

It connects (optionally over TLS, verifying by default), binds with the carrier's
credentials, serves the session through a :class:`~gatewayd.smpp.runner.SessionRunner`
and reconnects with exponential backoff and full jitter when anything goes wrong. Every
incoming ``deliver_sm``/``data_sm`` goes to the injected consumer; its status is sent back
only once it returns (ack-after-persist).
"""

from __future__ import annotations

import contextlib
import enum
import logging
import math
import random
import ssl
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Literal

import attrs
import trio

from gatewayd.smpp import pdu as P
from gatewayd.smpp import session as S
from gatewayd.smpp.runner import (
    BOUND_STATES,
    BindError,
    BindLost,
    NotBound,
    RequestTimeout,
    Respond,
    SessionRunner,
)

__all__ = [
    "BindError",
    "BindLost",
    "BindSettings",
    "BindState",
    "NotBound",
    "RequestTimeout",
    "SmppBind",
    "backoff_delay",
]

log = logging.getLogger("gatewayd.smpp")


class BindState(enum.Enum):
    IDLE = "idle"
    CONNECTING = "connecting"
    BINDING = "binding"
    BOUND = "bound"
    UNBINDING = "unbinding"
    BACKOFF = "backoff"
    STOPPED = "stopped"


@attrs.frozen(kw_only=True)
class BindSettings:
    """Everything one bind needs; built from the carrier's config."""

    carrier: str
    host: str
    port: int
    system_id: str
    password: str = attrs.field(repr=False)
    system_type: str = ""
    address_range: str = ""
    bind: Literal["transmitter", "receiver", "transceiver"] = "transceiver"
    window: int = 10
    enquire_link: float = 30.0
    response_timeout: float = 30.0
    inactivity_timeout: float | None = None
    connect_timeout: float = 10.0
    reconnect_min: float = 1.0
    reconnect_max: float = 60.0
    unbind_timeout: float = 5.0
    tls: bool = False
    tls_verify: bool = True
    tls_ca: str | None = None
    max_command_length: int = P.DEFAULT_MAX_COMMAND_LENGTH


# The consumer of incoming deliver_sm/data_sm: returns the command_status of the response.
Consumer = Callable[[P.Pdu, "SmppBind"], Awaitable[int]]
# The same for the deliver_sm/data_sm of one read at once: calls answer(index, status) for
# each PDU as soon as its status is known (a PDU left unanswered gets ESME_RX_T_APPN).
BatchConsumer = Callable[[Sequence[P.Pdu], "SmppBind", Callable[[int, int], None]], Awaitable[None]]

# Bind rejections that mean "your credentials are wrong": retrying fast cannot help
# (SMPP 3.4 §5.1.3), so these wait the slow end of the backoff.
CREDENTIAL_ERRORS = frozenset({P.ESME_RINVPASWD, P.ESME_RINVSYSID})


def backoff_delay(failures: int, lo: float, hi: float, rng: random.Random) -> float:
    """Exponential backoff with full jitter: uniform in [lo, min(hi, lo * 2**failures)]."""
    ceiling = min(hi, lo * math.pow(2.0, min(failures, 30)))
    return rng.uniform(lo, max(lo, ceiling))


def describe_error(exc: BaseException) -> str:
    """The exception and its causes, e.g. a TLS verification failure behind BrokenResource."""
    parts: list[str] = []
    seen: BaseException | None = exc
    while seen is not None and len(parts) < 4:
        text = str(seen)
        parts.append(f"{seen.__class__.__name__}: {text}" if text else seen.__class__.__name__)
        seen = seen.__cause__ or seen.__context__
    return " <- ".join(parts)


def status_name(status: int) -> str:
    """``ESME_RINVPASWD (0x0000000e)`` for logs and errors."""
    for name, value in vars(P).items():
        if name.startswith("ESME_") and value == status:
            return f"{name} (0x{status:08x})"
    return f"0x{status:08x}"


class SmppBind:
    """One bind (one TCP connection at a time) to a carrier, reconnecting until stopped."""

    def __init__(
        self,
        settings: BindSettings,
        consumer: Consumer | None = None,
        *,
        name: str | None = None,
        rng: random.Random | None = None,
        on_state: Callable[[SmppBind], None] | None = None,
        batch_consumer: BatchConsumer | None = None,
    ) -> None:
        self.settings = settings
        self.name = name or settings.carrier
        self._consumer = consumer
        self._batch_consumer = batch_consumer
        self._rng = rng or random.Random()
        self._on_state = on_state
        self.state = BindState.IDLE
        self.reconnects = 0
        self.binds_rejected = 0
        self.last_error = ""
        self._runner: SessionRunner | None = None
        self._stopping = False
        self._stop_requested = trio.Event()
        self._bind_done = trio.Event()
        self._slow_retry = False
        self.bound_event = trio.Event()  # set while bound; replaced when the bind drops

    # ----------------------------------------------------------------- public API

    @property
    def is_bound(self) -> bool:
        """Bound and able to carry a request now: not stopping, connection not closed."""
        runner = self._runner
        return (
            self.state is BindState.BOUND
            and not self._stopping
            and runner is not None
            and not runner.closed.is_set()
        )

    @property
    def window_in_use(self) -> int:
        runner = self._runner
        return 0 if runner is None else self.settings.window - runner.session.window_free

    @property
    def can_transmit(self) -> bool:
        return self.settings.bind in ("transmitter", "transceiver")

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect, bind, serve, reconnect; until :meth:`stop` or cancellation."""
        task_status.started()
        failures = 0
        extra = {"carrier": self.settings.carrier, "bind": self.name}
        try:
            while not self._stopping:
                self._set_state(BindState.CONNECTING)
                self._bind_done = trio.Event()
                self._slow_retry = False
                was_bound = False
                try:
                    was_bound = await self._connect_and_serve()
                except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    self.last_error = f"connection error: {describe_error(exc)}"
                    log.warning("bind connection failed: %s", self.last_error, extra=extra)
                except trio.TooSlowError:
                    self.last_error = "timed out connecting"
                    log.warning("bind timed out connecting", extra=extra)
                finally:
                    self._runner = None
                if self._stopping:
                    break
                failures = 0 if was_bound else failures + 1
                self.reconnects += 1
                s = self.settings
                if self._slow_retry:
                    delay = s.reconnect_max
                else:
                    delay = backoff_delay(failures, s.reconnect_min, s.reconnect_max, self._rng)
                self._set_state(BindState.BACKOFF)
                log.info("reconnecting in %.1fs", delay, extra=extra)
                with trio.move_on_after(delay):
                    await self._stop_requested.wait()
        finally:
            self._set_state(BindState.STOPPED)

    def stop(self) -> None:
        """Ask for a graceful stop: unbind, wait (bounded) for unbind_resp, close."""
        self._stopping = True
        self._stop_requested.set()

    async def request(
        self, command: str, *, tlvs: tuple[P.Tlv, ...] = (), **fields: int | bytes | str
    ) -> P.Pdu:
        """Send a request (submit_sm…) through this bind; see SessionRunner.request."""
        runner = self._runner
        if self._stopping or runner is None or self.state is not BindState.BOUND:
            raise NotBound(f"{self.name}: not bound")
        return await runner.request(command, tlvs=tlvs, **fields)

    # ----------------------------------------------------------------- internals

    def _set_state(self, state: BindState) -> None:
        if self.state is state:
            return
        self.state = state
        if state is BindState.BOUND:
            self.bound_event.set()
        elif self.bound_event.is_set():
            self.bound_event = trio.Event()
        if self._on_state is not None:
            self._on_state(self)

    async def _open_stream(self) -> trio.abc.Stream:
        s = self.settings
        if not s.tls:
            return await trio.open_tcp_stream(s.host, s.port)
        ctx = ssl.create_default_context(cafile=s.tls_ca)
        if not s.tls_verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        stream = await trio.open_ssl_over_tcp_stream(s.host, s.port, ssl_context=ctx)
        try:
            await stream.do_handshake()
        except BaseException:
            await trio.aclose_forcefully(stream)  # a failed handshake must not leak the socket
            raise
        return stream

    async def _connect_and_serve(self) -> bool:
        """One connection's life. Returns whether it got bound."""
        s = self.settings
        with trio.fail_after(s.connect_timeout):
            stream = await self._open_stream()
        session = S.Session(
            role=S.Role.ESME,
            window=s.window,
            response_timeout=s.response_timeout,
            enquire_link_interval=s.enquire_link,
            inactivity_timeout=s.inactivity_timeout,
            max_command_length=s.max_command_length,
        )
        runner = SessionRunner(
            session,
            stream,
            self,
            window=s.window,
            log_extra={"carrier": s.carrier, "bind": self.name},
            on_requests=None if self._batch_consumer is None else self.on_requests,
        )
        self._runner = runner
        was_bound = False
        try:
            async with trio.open_nursery() as nursery:
                self._set_state(BindState.BINDING)
                session.send_bind(
                    s.bind,
                    trio.current_time(),
                    system_id=s.system_id,
                    password=s.password,
                    system_type=s.system_type,
                    address_range=s.address_range,
                )
                await nursery.start(runner.run)
                await runner.flush()
                runner.poke()
                with trio.move_on_after(s.response_timeout) as bind_wait:
                    await self._bind_done.wait()
                if bind_wait.cancelled_caught:
                    self.last_error = "no bind_resp in time"
                    log.warning("bind timed out", extra={"carrier": s.carrier, "bind": self.name})
                    runner.hang_up()
                was_bound = self.state is BindState.BOUND
                # Serve until the connection ends or a stop is requested.
                with trio.CancelScope() as serving:
                    nursery.start_soon(self._watch_closed, runner, serving)
                    await self._stop_requested.wait()
                if not serving.cancelled_caught:
                    self._set_state(BindState.UNBINDING)
                    await runner.unbind(s.unbind_timeout)
                nursery.cancel_scope.cancel()
        finally:
            if session.state in BOUND_STATES:
                # Cancelled from outside (daemon shutdown) while bound: unbind cleanly first.
                with trio.CancelScope(shield=True):
                    await self._unbind_after_cancel(session, stream)
            with (
                trio.CancelScope(shield=True),
                trio.move_on_after(1),
                contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError),
            ):
                await stream.aclose()
        return was_bound

    @staticmethod
    async def _watch_closed(runner: SessionRunner, serving: trio.CancelScope) -> None:
        await runner.closed.wait()
        serving.cancel()

    async def _unbind_after_cancel(self, session: S.Session, stream: trio.abc.Stream) -> None:
        """Best-effort unbind on a stream whose runner was cancelled (no tasks left).

        The cancellation may cut a graceful stop short (the daemon's drain deadline while
        :meth:`SessionRunner.unbind` waits for a slow SMSC's unbind_resp): that unbind is
        out already and the session refuses a second one, so wait for the first one's."""
        with trio.move_on_after(self.settings.unbind_timeout):
            try:
                if not session.unbinding:
                    session.unbind(trio.current_time())
                out = session.data_to_send()  # our unbind, unless a flush already sent it
                if out:
                    await stream.send_all(out)
                while session.state is not S.State.CLOSED:
                    data = await stream.receive_some(65536)
                    session.receive_data(data, trio.current_time())
                    while session.next_event() is not None:
                        pass  # requests arriving now are never acked: the SMSC resends them
                    out = session.data_to_send()
                    if out:
                        await stream.send_all(out)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass

    # ----------------------------------------------------------------- Handler

    async def on_request(self, request: P.Pdu) -> tuple[int, Mapping[str, int | bytes | str]]:
        if request.command not in ("deliver_sm", "data_sm"):
            return P.ESME_RINVCMDID, {}
        if self._consumer is None:
            return P.ESME_ROK, {}
        return await self._consumer(request, self), {}

    async def on_requests(self, requests: Sequence[P.Pdu], respond: Respond) -> None:
        """Answer what one read brought: the deliver_sm/data_sm go to the batch consumer
        together (one group commit), anything else is refused as in :meth:`on_request`."""
        wanted: list[int] = []
        for index, request in enumerate(requests):
            if request.command in ("deliver_sm", "data_sm"):
                wanted.append(index)
            else:
                respond(index, P.ESME_RINVCMDID, {})
        if not wanted:
            return
        consumer = self._batch_consumer
        if consumer is None:
            for index in wanted:
                respond(index, *await self.on_request(requests[index]))
            return
        if len(wanted) == len(requests):
            await consumer(requests, self, lambda i, status: respond(i, status, {}))
        else:
            await consumer(
                [requests[i] for i in wanted],
                self,
                lambda i, status: respond(wanted[i], status, {}),
            )

    def on_event(self, event: S.Event) -> None:
        extra = {"carrier": self.settings.carrier, "bind": self.name}
        if isinstance(event, S.Bound):
            self.last_error = ""
            log.info("bound as %s", self.settings.bind, extra=extra)
            self._set_state(BindState.BOUND)
            self._bind_done.set()
        elif isinstance(event, S.BindFailed):
            self.binds_rejected += 1
            name = status_name(event.status)
            if event.status in CREDENTIAL_ERRORS:
                self._slow_retry = True
                self.last_error = f"bind rejected: {name}: check system_id and password"
                log.error("%s", self.last_error, extra=extra)
            else:
                self.last_error = f"bind rejected: {name}"
                log.warning("bind rejected: %s", name, extra=extra)
            self._bind_done.set()
        elif isinstance(event, S.ProtocolError):
            log.log(
                logging.ERROR if event.fatal else logging.WARNING,
                "protocol error: %s",
                event.reason,
                extra=extra,
            )
            if event.fatal:
                self.last_error = event.reason
        elif isinstance(event, S.AlertReceived):
            log.info("alert_notification received", extra=extra)
        elif isinstance(event, S.OutbindReceived):
            log.info("outbind received on an open connection; ignored", extra=extra)
        elif isinstance(event, S.Unbound):
            log.info("unbound", extra=extra)
            self._set_state(BindState.UNBINDING)
        elif isinstance(event, S.ConnectionClosed):
            if event.reason and not self.last_error:
                self.last_error = event.reason
            log.info("connection closed: %s", event.reason, extra=extra)
            self._bind_done.set()
