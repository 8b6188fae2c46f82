"""A small real HTTP/1.1 server on trio (h11), for tests, benchmarks and ``gatewayd demo``.

It records every request (method, target, headers, body, arrival time) and answers with a
programmable sequence of replies or a function of the request: e.g. 503 for the first N
requests, then 200; a delay; a connection dropped without an answer. Keep-alive works.

    async with open_webhook_receiver() as rx:
        rx.respond_with(503, 503, then=200)
        ...  # point a destination at rx.url
        first, second, third = await rx.wait_for(3)
"""

from __future__ import annotations

import functools
import json
import math
import ssl
import urllib.parse
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import h11
import trio

_MAX_BODY = 16 * 1024 * 1024


@attrs.frozen(kw_only=True)
class ReceivedRequest:
    """One request as it arrived."""

    method: str
    target: str  # as sent: path and query, still percent-encoded
    headers: tuple[tuple[str, str], ...]  # lower-case names, in order
    body: bytes
    arrived_at: float  # trio.current_time()
    connection: int  # which TCP connection (0, 1, ...): shows keep-alive
    peer: str = ""  # client address

    @property
    def path(self) -> str:
        return urllib.parse.urlsplit(self.target).path

    @property
    def query(self) -> str:
        return urllib.parse.urlsplit(self.target).query

    def query_params(self) -> dict[str, list[str]]:
        """The decoded query string (UTF-8), blank values kept."""
        return urllib.parse.parse_qs(self.query, keep_blank_values=True, strict_parsing=False)

    def header(self, name: str) -> str | None:
        lname = name.lower()
        for key, value in self.headers:
            if key == lname:
                return value
        return None

    def json(self) -> Any:
        return json.loads(self.body)

    def form(self) -> dict[str, list[str]]:
        """The decoded ``application/x-www-form-urlencoded`` body."""
        return urllib.parse.parse_qs(self.body.decode("ascii"), keep_blank_values=True)


@attrs.frozen(kw_only=True)
class Reply:
    """How to answer one request."""

    status: int = 200
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b"ok"
    delay: float = 0.0  # seconds before answering; math.inf: never answer
    drop: bool = False  # close the connection without answering
    close: bool = False  # answer with Connection: close
    truncate: bool = False  # promise more body than is sent, then close the connection


ReplySpec = Reply | int
Handler = Callable[[ReceivedRequest], "Reply | Awaitable[Reply]"]


def _as_reply(spec: ReplySpec) -> Reply:
    return spec if isinstance(spec, Reply) else Reply(status=spec)


class WebhookReceiver:
    """The server's state; start it with ``await nursery.start(rx.serve)``."""

    def __init__(
        self, *, host: str = "127.0.0.1", port: int = 0, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self.host = host
        self.port = port
        self.ssl_context = ssl_context  # serve HTTPS with this server-side context
        self.requests: list[ReceivedRequest] = []
        self._queue: deque[Reply] = deque()
        self._then: Reply = Reply()
        self._handler: Handler | None = None
        self._changed = trio.Event()
        self._connections = 0

    @property
    def url(self) -> str:
        """The base URL, e.g. ``http://127.0.0.1:41234`` (append a path)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://{host}:{self.port}"

    def respond_with(self, *replies: ReplySpec | Handler, then: ReplySpec | None = None) -> None:
        """Answer the next requests with ``replies`` in order, then with ``then`` (default 200).

        A single callable instead decides every reply from the request.
        """
        self._queue.clear()
        self._handler = None
        if len(replies) == 1 and callable(replies[0]):
            self._handler = replies[0]
            return
        for spec in replies:
            assert not callable(spec), "a handler must be the only argument"
            self._queue.append(_as_reply(spec))
        self._then = _as_reply(200 if then is None else then)

    async def wait_for(self, count: int) -> list[ReceivedRequest]:
        """Wait for at least ``count`` requests; return them all (callers set a deadline)."""
        while len(self.requests) < count:
            await self._changed.wait()
        return list(self.requests)

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen (port 0: a free port, stored in ``self.port``) and serve until cancelled."""
        async with trio.open_nursery() as nursery:
            serve = functools.partial(trio.serve_tcp, host=self.host)
            listeners = await nursery.start(serve, self._serve_connection, self.port)
            self.port = listeners[0].socket.getsockname()[1]
            task_status.started()

    async def _reply_for(self, request: ReceivedRequest) -> Reply:
        if self._handler is not None:
            result = self._handler(request)
            return result if isinstance(result, Reply) else await result
        return self._queue.popleft() if self._queue else self._then

    def _record(self, request: ReceivedRequest) -> None:
        self.requests.append(request)
        self._changed.set()
        self._changed = trio.Event()

    async def _serve_connection(self, sock: trio.SocketStream) -> None:
        number = self._connections
        self._connections += 1
        try:
            host, port = sock.socket.getpeername()[:2]
            peer = f"{host}:{port}"
        except OSError:
            peer = ""
        stream: trio.abc.Stream = sock
        if self.ssl_context is not None:
            stream = trio.SSLStream(sock, self.ssl_context, server_side=True)
        conn = h11.Connection(h11.SERVER)
        try:
            async with stream:
                while await self._one_exchange(stream, conn, number, peer):
                    conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            return  # the peer went away or spoke garbage (a failed TLS handshake included)

    async def _next_event(self, stream: trio.abc.Stream, conn: h11.Connection) -> Any:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(bytes(await stream.receive_some(65536)))
                continue
            return event

    async def _one_exchange(
        self, stream: trio.abc.Stream, conn: h11.Connection, number: int, peer: str
    ) -> bool:
        """Serve one request; False when the connection is done."""
        event = await self._next_event(stream, conn)
        if isinstance(event, h11.ConnectionClosed):
            return False
        if not isinstance(event, h11.Request):
            raise h11.RemoteProtocolError(f"unexpected {type(event).__name__}")
        body = bytearray()
        while True:
            part = await self._next_event(stream, conn)
            if isinstance(part, h11.Data):
                body += part.data
                if len(body) > _MAX_BODY:
                    raise h11.RemoteProtocolError("body too large")
            elif isinstance(part, h11.EndOfMessage):
                break
            else:
                return False
        request = ReceivedRequest(
            method=event.method.decode("ascii"),
            target=event.target.decode("ascii"),
            headers=tuple((k.decode("ascii"), v.decode("latin-1")) for k, v in event.headers),
            body=bytes(body),
            arrived_at=trio.current_time(),
            connection=number,
            peer=peer,
        )
        self._record(request)
        reply = await self._reply_for(request)
        if reply.delay == math.inf:
            await trio.sleep_forever()
        elif reply.delay > 0:
            await trio.sleep(reply.delay)
        if reply.drop:
            return False
        headers = [(k.encode(), v.encode()) for k, v in reply.headers]
        length = len(reply.body) + (100 if reply.truncate else 0)
        headers.append((b"content-length", str(length).encode()))
        if reply.close:
            headers.append((b"connection", b"close"))
        data = conn.send(h11.Response(status_code=reply.status, headers=headers))
        data += conn.send(h11.Data(data=reply.body)) if reply.body else b""
        if reply.truncate:
            await stream.send_all(data)
            return False
        data += conn.send(h11.EndOfMessage())
        await stream.send_all(data)
        return conn.our_state is h11.DONE and conn.their_state is h11.DONE


@asynccontextmanager
async def open_webhook_receiver(
    *, host: str = "127.0.0.1", port: int = 0, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[WebhookReceiver]:
    """Run a :class:`WebhookReceiver` for the duration of the ``async with`` block."""
    receiver = WebhookReceiver(host=host, port=port, ssl_context=ssl_context)
    async with trio.open_nursery() as nursery:
        await nursery.start(receiver.serve)
        try:
            yield receiver
        finally:
            nursery.cancel_scope.cancel()
