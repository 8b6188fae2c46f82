"""The built-in SMSC simulator: an SMPP server on the same codec and session code.

It accepts binds (optionally checking a password), sends N mobile-originated
``deliver_sm`` once the first receiver/transceiver bind is up (texts ``TEXT 1``..``TEXT N``,
paced and windowed), answers ``submit_sm`` with a message id and sends a delivery receipt
for it after a delay, answers ``enquire_link``, resends a ``deliver_sm`` that was answered
with an error status (as real SMSCs do), and logs what it received as JSON lines.

Operators use it to try their setup (``gatewayd simulate``); the tests use it as the carrier.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import logging
import math
import ssl
from collections.abc import Callable, Mapping
from typing import Any, TextIO

import attrs
import trio

from gatewayd.smpp import pdu as P
from gatewayd.smpp import session as S
from gatewayd.smpp.runner import BOUND_STATES, BindError, SessionRunner

log = logging.getLogger("gatewayd.simulator")

_STATE_NUMBERS = {  # SMPP 3.4 §5.2.28 message_state
    "ENROUTE": 1,
    "DELIVRD": 2,
    "EXPIRED": 3,
    "DELETED": 4,
    "UNDELIV": 5,
    "ACCEPTD": 6,
    "UNKNOWN": 7,
    "REJECTD": 8,
}


@attrs.frozen(kw_only=True)
class SimulatorSettings:
    host: str = "127.0.0.1"
    port: int = 2775
    system_id: str = "gatewayd-sim"
    password: str | None = attrs.field(default=None, repr=False)  # None: any password
    mo: int = 0
    mo_from: str = "447700900001"
    mo_to: str = "12345"
    text: str = "TEXT"
    data_coding: int = 0
    window: int = 10
    rate: float = 0.0  # MOs per second; 0: as fast as the window allows
    dlr_status: str = "DELIVRD"
    dlr_delay: float = 1.0
    dlr: bool = True
    resend_delay: float = 5.0  # wait before resending a deliver_sm answered with an error
    resend_attempts: int = 10
    response_timeout: float = 30.0
    enquire_link: float = 30.0
    tls_cert: str | None = None  # PEM certificate chain: serve SMPP over TLS
    tls_key: str | None = None


@attrs.frozen(kw_only=True)
class Delivery:
    """One deliver_sm the simulator sent and how the ESME answered it."""

    key: str  # what the test or operator calls it (e.g. "TEXT 3" or a receipt id)
    status: int | None  # None: no answer (connection lost, timeout)
    attempt: int
    at: float


def encode_gsm_basic(text: str) -> bytes:
    """Latin-1 bytes for ASCII text: the GSM 03.38 default alphabet agrees for [A-Za-z0-9 ].

    The simulator's own MO texts are plain ASCII; tests with other alphabets build their
    own ``short_message`` bytes.
    """
    return text.encode("latin-1")


def receipt_text(
    message_id: str, status: str, submitted: dt.datetime, done: dt.datetime, text: str
) -> bytes:
    """The receipt text of SMPP 3.4 Appendix B, the format carriers actually send."""
    err = "000" if status in ("DELIVRD", "ACCEPTD", "ENROUTE") else "001"
    return (
        f"id:{message_id} sub:001 dlvrd:{'001' if status == 'DELIVRD' else '000'} "
        f"submit date:{submitted:%y%m%d%H%M} done date:{done:%y%m%d%H%M} "
        f"stat:{status} err:{err} text:{text[:20]}"
    ).encode("latin-1", "replace")


class Simulator:
    """An SMSC. ``await nursery.start(sim.serve)`` returns once it listens; ``sim.port``."""

    def __init__(
        self,
        settings: SimulatorSettings,
        *,
        log_file: TextIO | None = None,
        wall_clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.settings = settings
        self.port = 0
        self._log_file = log_file
        self._wall = wall_clock
        self._conns: list[_Connection] = []
        self._conn_changed = trio.Event()
        self._ids = itertools.count(1)
        self._mo_started = False
        self._nursery: trio.Nursery | None = None
        # What happened, for tests and the demo:
        self.deliveries: list[Delivery] = []  # every deliver_sm answer (MOs and receipts)
        self.acked: dict[str, int] = {}  # key -> first attempt answered with ESME_ROK
        self.submits: list[P.Pdu] = []  # every submit_sm received
        self.binds: list[tuple[str, str, int]] = []  # (system_id, kind, status)
        self.mo_done = trio.Event()  # every one of the N MOs acknowledged

    # ------------------------------------------------------------------ running

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        tcp = await trio.open_tcp_listeners(self.settings.port, host=self.settings.host)
        self.port = tcp[0].socket.getsockname()[1]
        listeners: list[trio.abc.Listener[trio.abc.Stream]] = list(tcp)
        if self.settings.tls_cert:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(self.settings.tls_cert, self.settings.tls_key)
            listeners = [
                trio.SSLListener(listener, ctx, https_compatible=False) for listener in tcp
            ]
        self._log({"event": "listening", "host": self.settings.host, "port": self.port})
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started(self.port)
            await trio.serve_listeners(self._handle, listeners, handler_nursery=nursery)

    async def _handle(self, stream: trio.abc.Stream) -> None:
        conn = _Connection(self, stream)
        self._conns.append(conn)
        try:
            await conn.runner.run()
        finally:
            self._conns.remove(conn)
            self._notify()
            with trio.move_on_after(1):
                await stream.aclose()

    def _notify(self) -> None:
        self._conn_changed.set()
        self._conn_changed = trio.Event()

    def _log(self, record: Mapping[str, Any]) -> None:
        if self._log_file is not None:
            self._log_file.write(json.dumps(record, default=str) + "\n")
            self._log_file.flush()

    # ------------------------------------------------------------------ sending

    def receivers(self) -> list[_Connection]:
        """Connections bound to receive deliver_sm."""
        return [
            c
            for c in self._conns
            if c.runner.session.state in (S.State.BOUND_RX, S.State.BOUND_TRX)
        ]

    async def wait_for_receiver(self) -> _Connection:
        while True:
            conns = self.receivers()
            if conns:
                # spread over binds: the least loaded one
                return min(conns, key=lambda c: c.runner.session.window_free * -1)
            await self._conn_changed.wait()

    async def deliver(
        self, key: str, fields: Mapping[str, int | bytes | str], tlvs: tuple[P.Tlv, ...] = ()
    ) -> int:
        """Send one deliver_sm until it is acknowledged (resending on errors, as SMSCs do).

        Returns the final command_status (ESME_ROK, or the last error after the attempts).
        """
        status = P.ESME_RSYSERR
        for attempt in range(1, self.settings.resend_attempts + 1):
            conn = await self.wait_for_receiver()
            try:
                resp = await conn.runner.request("deliver_sm", tlvs=tlvs, **fields)
                status = resp.status
            except BindError as exc:
                status = -1
                self._log({"event": "deliver_sm_lost", "key": key, "error": str(exc)})
            now = trio.current_time()
            self.deliveries.append(
                Delivery(key=key, status=None if status < 0 else status, attempt=attempt, at=now)
            )
            self._log(
                {"event": "deliver_sm_resp", "key": key, "status": status, "attempt": attempt}
            )
            if status == P.ESME_ROK:
                self.acked.setdefault(key, attempt)
                return status
            await trio.sleep(self.settings.resend_delay)
        return status

    def mo_fields(
        self, text: str, *, source: str | None = None, dest: str | None = None
    ) -> dict[str, int | bytes | str]:
        s = self.settings
        return {
            "service_type": "",
            "source_addr_ton": 1,
            "source_addr_npi": 1,
            "source_addr": source or s.mo_from,
            "dest_addr_ton": 0,
            "dest_addr_npi": 1,
            "destination_addr": dest or s.mo_to,
            "esm_class": 0,
            "data_coding": s.data_coding,
            "short_message": encode_gsm_basic(text),
        }

    async def _send_mos(self) -> None:
        s = self.settings
        interval = 1.0 / s.rate if s.rate > 0 else 0.0
        start = trio.current_time()
        limiter = trio.CapacityLimiter(max(1, s.window))
        async with trio.open_nursery() as nursery:
            for i in range(1, s.mo + 1):
                if interval:
                    await trio.sleep_until(start + (i - 1) * interval)
                await limiter.acquire_on_behalf_of(i)
                nursery.start_soon(self._send_one_mo, i, limiter)
        self.mo_done.set()
        self._log({"event": "mo_done", "count": s.mo, "acked": len(self.acked)})

    async def _send_one_mo(self, i: int, limiter: trio.CapacityLimiter) -> None:
        text = f"{self.settings.text} {i}"
        try:
            await self.deliver(text, self.mo_fields(text))
        finally:
            limiter.release_on_behalf_of(i)

    async def _send_receipt(self, submit: P.Pdu, message_id: str, submitted: dt.datetime) -> None:
        s = self.settings
        await trio.sleep(s.dlr_delay)
        status = s.dlr_status
        fields: dict[str, int | bytes | str] = {
            "service_type": "",
            "source_addr_ton": submit.get_int("dest_addr_ton"),
            "source_addr_npi": submit.get_int("dest_addr_npi"),
            "source_addr": submit.get_bytes("destination_addr"),
            "dest_addr_ton": submit.get_int("source_addr_ton"),
            "dest_addr_npi": submit.get_int("source_addr_npi"),
            "destination_addr": submit.get_bytes("source_addr"),
            "esm_class": 0x04,  # SMSC delivery receipt, SMPP 3.4 §5.2.12
            "data_coding": 0,
            "short_message": receipt_text(message_id, status, submitted, self._wall(), "receipt"),
        }
        tlvs = (
            P.Tlv(tag=0x001E, value=message_id.encode("latin-1") + b"\0"),  # receipted_message_id
            P.Tlv(tag=0x0427, value=bytes([_STATE_NUMBERS.get(status, 7)])),  # message_state
        )
        await self.deliver(f"dlr:{message_id}", fields, tlvs)

    # ------------------------------------------------------------------ callbacks

    def _bound(self, conn: _Connection, kind: str) -> None:
        self._notify()
        if kind in ("receiver", "transceiver") and not self._mo_started and self.settings.mo > 0:
            self._mo_started = True
            assert self._nursery is not None
            self._nursery.start_soon(self._send_mos)

    def _submitted(self, submit: P.Pdu) -> str:
        message_id = f"{next(self._ids):08X}"
        self.submits.append(submit)
        self._log(
            {
                "event": "submit_sm",
                "message_id": message_id,
                "from": submit.get_bytes("source_addr").decode("latin-1"),
                "to": submit.get_bytes("destination_addr").decode("latin-1"),
                "data_coding": submit.get_int("data_coding"),
                "esm_class": submit.get_int("esm_class"),
                "short_message": submit.get_bytes("short_message").hex(),
            }
        )
        if self.settings.dlr and submit.get_int("registered_delivery") & 0x03:
            assert self._nursery is not None
            self._nursery.start_soon(self._send_receipt, submit, message_id, self._wall())
        return message_id


class _Connection:
    """One ESME connected to the simulator."""

    def __init__(self, sim: Simulator, stream: trio.abc.Stream) -> None:
        self.sim = sim
        self.system_id = ""
        s = sim.settings
        session = S.Session(
            role=S.Role.SMSC,
            window=s.window,
            response_timeout=s.response_timeout,
            enquire_link_interval=s.enquire_link,
        )
        self.runner = SessionRunner(
            session, stream, self, window=s.window, log_extra={"peer": "esme"}
        )

    async def on_request(self, request: P.Pdu) -> tuple[int, Mapping[str, int | bytes | str]]:
        sim = self.sim
        if request.command.startswith("bind_"):
            kind = request.command.removeprefix("bind_")
            system_id = request.get_bytes("system_id").decode("latin-1", "replace")
            password = request.get_bytes("password").decode("latin-1", "replace")
            status = P.ESME_ROK
            if sim.settings.password is not None and password != sim.settings.password:
                status = P.ESME_RINVPASWD
            sim.binds.append((system_id, kind, status))
            sim._log({"event": "bind", "kind": kind, "system_id": system_id, "status": status})
            if status == P.ESME_ROK:
                self.system_id = system_id
                # the session moves to BOUND_* when the resp is sent; tell the simulator after
                assert sim._nursery is not None
                sim._nursery.start_soon(self._after_bind, kind)
            return status, {"system_id": sim.settings.system_id}
        if request.command == "submit_sm":
            return P.ESME_ROK, {"message_id": sim._submitted(request)}
        if request.command == "data_sm":
            return P.ESME_ROK, {"message_id": f"{next(sim._ids):08X}"}
        return P.ESME_RINVCMDID, {}

    async def _after_bind(self, kind: str) -> None:
        while self.runner.session.state not in BOUND_STATES:
            if self.runner.closed.is_set():
                return
            await self.runner.changed()
        self.sim._bound(self, kind)

    def on_event(self, event: S.Event) -> None:
        if isinstance(event, S.ProtocolError):
            self.sim._log({"event": "protocol_error", "reason": event.reason, "fatal": event.fatal})
        elif isinstance(event, S.Unbound):
            self.sim._log({"event": "unbind", "system_id": self.system_id})
        elif isinstance(event, S.ConnectionClosed):
            self.sim._log({"event": "closed", "system_id": self.system_id, "reason": event.reason})


async def run_simulator(settings: SimulatorSettings, out: TextIO, log_file: TextIO | None) -> None:
    """``gatewayd simulate``: serve until cancelled (Ctrl-C), printing where it listens."""
    sim = Simulator(settings, log_file=log_file)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(sim.serve)
        out.write(f"listening on {settings.host}:{port}\n")
        out.flush()
        if settings.mo:
            await sim.mo_done.wait()
            acked = sum(1 for k in sim.acked if not k.startswith("dlr:"))
            out.write(f"sent {settings.mo} MOs, {acked} acknowledged\n")
            out.flush()
        await trio.sleep(math.inf)
