"""Scripted SMSC peers for driver tests: a raw TCP server that says exactly what a test wants."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable

import trio

from gatewayd.smpp import pdu as P

Script = Callable[[trio.SocketStream, "RawPeer"], Awaitable[None]]


class RawPeer:
    """Accepts connections on a free loopback port; runs ``script`` on each."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.port = 0
        self.connections = 0
        self.connected_at: list[float] = []
        self.received: list[P.Pdu] = []

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        self.connected_at.append(trio.current_time())
        async with stream:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await self.script(stream, self)

    async def read_pdu(self, stream: trio.SocketStream, framer: P.Framer) -> P.Pdu | None:
        while True:
            frame = framer.next_frame()
            if frame is not None:
                pdu = P.decode(frame)
                self.received.append(pdu)
                return pdu
            data = await stream.receive_some(65536)
            if not data:
                return None
            framer.feed(data)


async def accept_bind(stream: trio.SocketStream, peer: RawPeer, framer: P.Framer) -> P.Pdu | None:
    """Read the bind, answer ESME_ROK."""
    bind = await peer.read_pdu(stream, framer)
    if bind is None:
        return None
    await stream.send_all(P.encode(P.response_for(bind, P.ESME_ROK, system_id="peer")))
    return bind
