"""The trio side of the SIP client: where to send, a UDP or TCP channel, one transaction.

The protocol is in :mod:`gatewayd.sip.message` and :mod:`gatewayd.sip.transaction`; this
module only moves bytes and time. Where a request goes (RFC 3261 §8.1.2, without the
RFC 3263 NAPTR/SRV steps): to ``proxy`` if one is configured (``host[:port]`` or a
``sip:`` URI), else to the host and port of the destination URI; port 5060 by default.
Names are resolved with ``trio.socket.getaddrinfo`` (injectable for tests).

Channels are per attempt: a UDP socket bound to the local address that routes to the next
hop (so Via and From name an address the peer can answer), or a TCP connection. A UDP
channel accepts responses from any source: the transaction matches them by branch and
CSeq (§17.1.3), so a proxy that answers from another address still works.

Exception map (everything below becomes :class:`SipTransportError` here)::

    socket.gaierror, OSError (resolve)  -> SipTransportError "cannot resolve ..."
    OSError (connect, send, receive)    -> SipTransportError "<what>: ..."
    trio.BrokenResourceError, EOF       -> SipTransportError "connection closed ..."
    message.ParseError on a stream      -> SipTransportError (framing lost)
    message.ParseError on a datagram    -> the datagram is ignored (§18.3)
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import attrs
import trio

from gatewayd.sip.message import (
    MAX_MESSAGE_SIZE,
    Message,
    ParseError,
    Request,
    Response,
    SipError,
    StreamFramer,
    parse_hostport,
    parse_message,
    parse_uri,
)
from gatewayd.sip.transaction import (
    DEFAULT_TIMERS,
    ClientTransaction,
    FinalResponse,
    ProvisionalResponse,
    TimedOut,
    Timers,
    TransportFailed,
)

__all__ = [
    "DEFAULT_PORT",
    "Channel",
    "NextHop",
    "Resolver",
    "SipTransportError",
    "TcpChannel",
    "TransactionResult",
    "UdpChannel",
    "next_hop",
    "open_channel",
    "resolve",
    "run_transaction",
]

log = logging.getLogger("gatewayd.sip")

DEFAULT_PORT = 5060  # §19.1.2 for sip: over UDP and TCP
Transport = Literal["udp", "tcp"]
SockAddr = tuple[Any, ...]
Resolver = Callable[[str, int, Transport], Awaitable[list[tuple[int, SockAddr]]]]


class SipTransportError(SipError):
    """The network failed us: no address, no connection, a send or receive failed."""


@attrs.frozen(kw_only=True)
class NextHop:
    host: str
    port: int
    transport: Transport

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port};transport={self.transport}"


def next_hop(uri: str, *, proxy: str | None, transport: Transport) -> NextHop:
    """Where a request for ``uri`` goes. Raises :class:`ParseError` for a bad URI or proxy."""
    if proxy:
        if proxy.lower().startswith(("sip:", "sips:", "<sip")):
            parsed = parse_uri(proxy)
            host, port = parsed.host, parsed.port
        else:
            host, port = parse_hostport(proxy)
    else:
        parsed = parse_uri(uri)
        host, port = parsed.host, parsed.port
    return NextHop(host=host, port=port or DEFAULT_PORT, transport=transport)


async def resolve(host: str, port: int, transport: Transport) -> list[tuple[int, SockAddr]]:
    """(family, sockaddr) for every address of ``host``, in getaddrinfo's order."""
    kind = trio.socket.SOCK_DGRAM if transport == "udp" else trio.socket.SOCK_STREAM
    try:
        infos = await trio.socket.getaddrinfo(host, port, type=kind)
    except OSError as exc:
        raise SipTransportError(f"cannot resolve {host}: {exc}") from exc
    out: list[tuple[int, SockAddr]] = []
    for family, _type, _proto, _name, sockaddr in infos:
        entry = (int(family), tuple(sockaddr))
        if entry not in out:
            out.append(entry)
    if not out:
        raise SipTransportError(f"cannot resolve {host}: no address")
    return out


class Channel(abc.ABC):
    """One transport flow to the next hop, for the length of one delivery attempt."""

    transport: Transport
    reliable: bool
    local_host: str  # our address as the next hop sees it (for Via and From)
    local_port: int

    @abc.abstractmethod
    async def send(self, data: bytes) -> None: ...

    @abc.abstractmethod
    async def receive(self) -> Message:
        """The next well-formed message from the peer."""

    @abc.abstractmethod
    async def aclose(self) -> None: ...

    async def __aenter__(self) -> Channel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class UdpChannel(Channel):
    transport: Transport = "udp"
    reliable = False

    def __init__(self, sock: trio.socket.SocketType, peer: SockAddr) -> None:
        self._sock = sock
        self._peer = peer
        name = sock.getsockname()
        self.local_host, self.local_port = str(name[0]), int(name[1])

    @classmethod
    async def open(cls, family: int, peer: SockAddr) -> UdpChannel:
        # Which local address routes to the peer? A connected probe socket tells us without
        # sending anything; the real socket stays unconnected (see the module docstring).
        try:
            with trio.socket.socket(family, trio.socket.SOCK_DGRAM) as probe:
                await probe.connect(peer)
                local = str(probe.getsockname()[0])
            sock = trio.socket.socket(family, trio.socket.SOCK_DGRAM)
        except OSError as exc:
            raise SipTransportError(f"no route to {peer[0]}: {exc}") from exc
        try:
            await sock.bind((local, 0))
        except OSError as exc:
            sock.close()
            raise SipTransportError(f"cannot bind a UDP socket on {local}: {exc}") from exc
        return cls(sock, peer)

    async def send(self, data: bytes) -> None:
        try:
            await self._sock.sendto(data, self._peer)
        except OSError as exc:
            raise SipTransportError(f"send to {self._peer[0]} failed: {exc}") from exc

    async def receive(self) -> Message:
        while True:
            try:
                data, _source = await self._sock.recvfrom(MAX_MESSAGE_SIZE + 1)
            except OSError as exc:
                raise SipTransportError(f"receive failed: {exc}") from exc
            try:
                return parse_message(data)
            except ParseError as exc:
                log.debug("ignoring a malformed datagram: %s", exc)

    async def aclose(self) -> None:
        self._sock.close()
        await trio.lowlevel.checkpoint()


class TcpChannel(Channel):
    transport: Transport = "tcp"
    reliable = True

    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        self._framer = StreamFramer()
        name = stream.socket.getsockname()
        self.local_host, self.local_port = str(name[0]), int(name[1])

    @classmethod
    async def open(cls, addresses: list[tuple[int, SockAddr]]) -> TcpChannel:
        """Connect to the first address that accepts (in order)."""
        errors: list[str] = []
        for family, sockaddr in addresses:
            sock = trio.socket.socket(family, trio.socket.SOCK_STREAM)
            try:
                await sock.connect(sockaddr)
            except OSError as exc:
                sock.close()
                errors.append(f"{sockaddr[0]}: {exc.strerror or exc}")
                continue
            except BaseException:
                sock.close()
                raise
            return cls(trio.SocketStream(sock))
        raise SipTransportError("cannot connect: " + "; ".join(errors))

    async def send(self, data: bytes) -> None:
        try:
            await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise SipTransportError(f"connection lost while sending: {exc}") from exc

    async def receive(self) -> Message:
        while True:
            try:
                frame = self._framer.next_frame()
            except ParseError as exc:
                raise SipTransportError(f"cannot frame the stream: {exc}") from exc
            if frame is not None:
                try:
                    return parse_message(frame, stream=True)
                except ParseError as exc:
                    log.debug("ignoring a malformed message: %s", exc)
                    continue
            try:
                data = await self._stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                raise SipTransportError(f"connection lost: {exc}") from exc
            if not data:
                raise SipTransportError("connection closed by the peer")
            self._framer.feed(data)

    async def aclose(self) -> None:
        await self._stream.aclose()


async def open_channel(hop: NextHop, *, resolver: Resolver = resolve) -> Channel:
    """Resolve ``hop`` and open a channel to it. Raises :class:`SipTransportError`."""
    try:
        addresses = await resolver(hop.host, hop.port, hop.transport)
    except SipTransportError:
        raise
    except OSError as exc:
        raise SipTransportError(f"cannot resolve {hop.host}: {exc}") from exc
    if not addresses:
        raise SipTransportError(f"cannot resolve {hop.host}: no address")
    if hop.transport == "udp":
        family, sockaddr = addresses[0]
        return await UdpChannel.open(family, sockaddr)
    return await TcpChannel.open(addresses)


@attrs.frozen(kw_only=True)
class TransactionResult:
    """How one transaction ended: a final response, or why there is none."""

    request: Request
    response: Response | None
    error: str = ""  # set when response is None
    timed_out: bool = False  # timer F fired
    transmissions: int = 1  # copies of the request sent (1 + retransmissions)
    provisional: tuple[Response, ...] = ()


async def run_transaction(
    channel: Channel, request: Request, *, timers: Timers = DEFAULT_TIMERS
) -> TransactionResult:
    """Send ``request`` through a client transaction on ``channel`` until it ends.

    Bounded by timer F (64*T1) whatever the peer does.
    """
    tx = ClientTransaction(
        request, reliable=channel.reliable, now=trio.current_time(), timers=timers
    )
    provisional: list[Response] = []

    def result(
        response: Response | None, error: str = "", *, timed_out: bool = False
    ) -> TransactionResult:
        return TransactionResult(
            request=request,
            response=response,
            error=error,
            timed_out=timed_out,
            transmissions=tx.transmissions,
            provisional=tuple(provisional),
        )

    while True:
        for data in tx.data_to_send():
            try:
                await channel.send(data)
            except SipTransportError as exc:
                tx.transport_error(str(exc), trio.current_time())
                break
        while (event := tx.next_event()) is not None:
            if isinstance(event, FinalResponse):
                return result(event.response)
            if isinstance(event, ProvisionalResponse):
                provisional.append(event.response)
            elif isinstance(event, TimedOut):
                return result(
                    None,
                    f"timeout: no final response within {event.after:g}s (timer F)",
                    timed_out=True,
                )
            elif isinstance(event, TransportFailed):
                return result(None, event.reason)
        deadline = tx.next_deadline()
        assert deadline is not None  # not terminated: no final event was seen
        with trio.move_on_at(deadline):
            try:
                message = await channel.receive()
            except SipTransportError as exc:
                tx.transport_error(str(exc), trio.current_time())
                continue
            if isinstance(message, Response) and not tx.receive_response(
                message, trio.current_time()
            ):
                log.debug("ignoring a response of another transaction")
        tx.tick(trio.current_time())
