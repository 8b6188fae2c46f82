"""A lean HTTP/1.1 keep-alive transport for httpx on trio (``LeanTransport``).

Why: httpx's default transport (httpcore 1.0.9) costs ~0.8-1.3 ms of CPU per small POST
and its pool does O(N^2) work per request (``STACK.md``). This one keeps httpx's API
(``AsyncClient``, ``Request``, ``Response``, its exceptions) and replaces only what lies
under it: a per-origin pool of plain HTTP/1.1 connections, a hand-written request writer
and a strict response parser. (h11 is correct and was measured at ~50 µs per
request/response cycle; this parser is ~10x cheaper and is checked against h11 in the
tests, including arbitrary splits of the byte stream.)

Two ways in: ``handle_async_request`` (under ``httpx.AsyncClient``) and
:meth:`LeanTransport.exchange` (request bytes in, response head and body out), which
``http.DirectSender`` uses to send what httpx would send without building httpx's request
and response objects (issue 7: they were the largest cost left per webhook). Plain TCP
connections use the stdlib socket itself, non-blocking, waited on with
``trio.lowlevel.wait_readable``/``wait_writable``: ``trio.SocketStream`` adds a
cancel-shielded checkpoint, a context manager and a conflict detector to every call. TLS
connections stay ``trio.SSLStream``. Each wait runs in one cancel scope whose deadline is
the sooner of the operation's timeout and ``exchange``'s overall deadline, so a request
costs one scope rather than one per operation plus one around it all.

Pool: at most ``max_connections`` requests in flight (a FIFO ``trio.Semaphore``) and at
most as many open connections; idle connections are reused last-in first-out per origin
(the warmest socket, and the cold ones age out); acquire and release are O(1). An idle
connection is dropped before reuse if the peer has closed it (the socket polls readable),
or if it has been idle longer than ``keepalive_expiry`` (servers close idle connections
after a few seconds: Node's default is 5 s, and reusing one just as it closes is the
race that makes a POST fail).

Retries (RFC 9110 §9.2.2): a request is re-sent once, on a fresh connection, only when
the server cannot have acted on it: writing to a *reused* connection failed (the peer
had closed it) before any response byte; or the method is idempotent and a reused
connection closed before any response byte. A POST whose connection closes after it was
sent is never re-sent: the server may have processed it (the dispatcher decides).

Exception map (raised from :meth:`LeanTransport.handle_async_request` and the body)::

    unsupported scheme, no host                -> httpx.UnsupportedProtocol
    no free slot within timeout["pool"]        -> httpx.PoolTimeout
    connector: OSError (refused, DNS, ...)     -> httpx.ConnectError  (__cause__: the error)
    connector: httpx.TransportError            -> passed through (e.g. SSRF guard refusals)
    TLS handshake failed                       -> httpx.ConnectError  (__cause__: SSL error)
    timeout["connect"] elapsed                 -> httpx.ConnectTimeout
    send failed / timeout["write"] elapsed     -> httpx.WriteError / httpx.WriteTimeout
    receive failed / timeout["read"] elapsed   -> httpx.ReadError / httpx.ReadTimeout
    closed before a response, malformed reply  -> httpx.RemoteProtocolError
    CR/LF/NUL in a header, bad method/target   -> httpx.LocalProtocolError
    exchange(): its ``deadline`` passed first   -> DeadlineExceeded (as a cancel scope
                                                   around the call would have caught)
"""

from __future__ import annotations

import errno
import math
import re
import select
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Final

import httpx
import trio

Connector = Callable[[str, int], Awaitable[trio.abc.Stream]]
Origin = tuple[str, str, int]  # scheme, host, port

READ_SIZE: Final = 65536
MAX_HEAD: Final = 64 * 1024  # status line + headers; also bounds a chunk-size line
MAX_CHUNK_LINE: Final = 4096
KEEPALIVE_EXPIRY: Final = 4.0  # seconds; below the common 5 s server idle timeouts
_SEND_SEPARATELY: Final = 64 * 1024  # larger bodies are not copied onto the head
IDEMPOTENT: Final = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"})

# RFC 9110 §5.6.2 token; §5.5 field values: no CTL but HTAB (obs-text allowed).
_TOKEN = re.compile(rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+")
_TOKENS = re.compile(rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+(?:\0[-!#$%&'*+.^_`|~0-9A-Za-z]+)*")
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_TARGET = re.compile(rb"[\x21-\x7e]+")
_HEAD_END = re.compile(rb"\r?\n\r?\n")
_STATUS_LINE = re.compile(rb"HTTP/([0-9])\.([0-9]) ([0-9]{3})(?: ([^\x00-\x08\x0a-\x1f\x7f]*))?")
_HEADER_LINE = re.compile(
    rb"([-!#$%&'*+.^_`|~0-9A-Za-z]+):[ \t]*([^\x00-\x08\x0a-\x1f\x7f]*?)[ \t]*"
)
# Field lines each ending in CRLF (parse_head's fast path): the same rules as _HEADER_LINE.
_FIELD_LINE = re.compile(
    rb"([-!#$%&'*+.^_`|~0-9A-Za-z]+):[ \t]*([^\x00-\x08\x0a-\x1f\x7f]*?)[ \t]*\r\n"
)
_USUAL_HEAD = re.compile(
    rb"HTTP/1\.([0-9]) ([0-9]{3})(?: ([^\x00-\x08\x0a-\x1f\x7f]*))?\r\n"
    rb"((?:[-!#$%&'*+.^_`|~0-9A-Za-z]+:[^\x00-\x08\x0a-\x1f\x7f]*\r\n)*)"
)
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(?:;[^\r\n]*)?")


async def tcp_connect(host: str, port: int) -> trio.abc.Stream:
    """The default connector: ``trio.open_tcp_stream`` (happy eyeballs; TCP_NODELAY)."""
    return await trio.open_tcp_stream(host, port)


# --- the response head: pure parsing --------------------------------------------------------


class ResponseHead:
    """A parsed status line and header block (one per response, 1xx included)."""

    __slots__ = ("_index", "headers", "reason", "status", "version")

    def __init__(
        self, version: bytes, status: int, reason: bytes, headers: list[tuple[bytes, bytes]]
    ) -> None:
        self.version = version  # b"HTTP/1.1" or b"HTTP/1.0"
        self.status = status
        self.reason = reason
        self.headers = headers  # as received: names in their original case
        self._index: dict[bytes, list[bytes]] | None = None

    def _lookup(self) -> dict[bytes, list[bytes]]:
        """Raw values by lower-case name (built once: framing asks for several names)."""
        index = self._index
        if index is None:
            index = {}
            for key, value in self.headers:
                index.setdefault(key.lower(), []).append(value)
            self._index = index
        return index

    def has(self, name: bytes) -> bool:
        """Is there a header ``name`` (lower-case)?"""
        return name in self._lookup()

    def values(self, name: bytes) -> list[bytes]:
        """Every value of header ``name`` (lower-case), comma lists split and stripped."""
        raw = self._lookup().get(name)
        if raw is None:
            return []
        return [part.strip() for value in raw for part in value.split(b",")]


def parse_head(head: bytes) -> ResponseHead:
    """Parse a response head (the bytes before the blank line) strictly (RFC 9112 §4-5).

    Accepts bare LF line ends (§2.2) and unfolds obs-fold (§5.2); rejects anything else
    that is not a valid status line or field line with ``httpx.RemoteProtocolError``.
    """
    # The usual head: HTTP/1.x, CRLF line ends, no obs-fold. One regex pass checks it all
    # and one takes the field lines apart (the same rules as the loop below).
    fast = _USUAL_HEAD.fullmatch(head + b"\r\n")
    if fast is not None:
        minor, status, reason, block = fast.groups()
        fields: list[tuple[bytes, bytes]] = _FIELD_LINE.findall(block) if block else []
        return ResponseHead(b"HTTP/1." + minor, int(status), reason or b"", fields)
    if head.count(b"\n") == head.count(b"\r\n"):
        lines = head.split(b"\r\n")
    else:
        lines = [line[:-1] if line.endswith(b"\r") else line for line in head.split(b"\n")]
    match = _STATUS_LINE.fullmatch(lines[0])
    if match is None:
        raise httpx.RemoteProtocolError(f"malformed status line {lines[0][:100]!r}")
    major, minor, status, reason = match.groups()
    if major != b"1":
        raise httpx.RemoteProtocolError(f"unsupported version HTTP/{major.decode()}")
    headers: list[tuple[bytes, bytes]] = []
    for line in lines[1:]:
        if line[:1] in (b" ", b"\t"):  # obs-fold: continue the previous value
            if not headers or _BAD_VALUE.search(line):
                raise httpx.RemoteProtocolError("malformed header continuation")
            name, value = headers[-1]
            headers[-1] = (name, (value + b" " + line.strip(b" \t")).strip(b" \t"))
            continue
        field = _HEADER_LINE.fullmatch(line)
        if field is None:
            raise httpx.RemoteProtocolError(f"malformed header line {line[:100]!r}")
        headers.append((field[1], field[2]))
    return ResponseHead(b"HTTP/1." + minor, int(status), reason or b"", headers)


# --- body framing: a sans-I/O reader over the connection's buffer ---------------------------


class _BodyReader:
    """Takes the body off the front of ``buffer``: fixed length, chunked, or until EOF."""

    __slots__ = ("_remaining", "_state", "done", "mode")

    def __init__(self, mode: str, length: int = 0) -> None:
        self.mode = mode  # "none" | "length" | "chunked" | "close"
        self._remaining = length
        self._state = "size"  # chunked: size -> data -> crlf -> size ... -> trailer
        self.done = mode == "none" or (mode == "length" and length == 0)

    def step(self, buffer: bytearray) -> bytes | None:
        """The next piece of body (possibly b""), or None when more bytes are needed;
        sets ``done`` at the end."""
        if self.done:
            return b""
        if self.mode == "length" or self.mode == "close":
            if not buffer:
                return None
            size = len(buffer) if self.mode == "close" else min(self._remaining, len(buffer))
            data = bytes(buffer[:size])
            del buffer[:size]
            self._remaining -= size
            if self.mode == "length" and self._remaining == 0:
                self.done = True
            return data
        return self._chunked(buffer)

    def eof(self) -> None:
        """The peer closed the connection: fine only for a read-until-close body."""
        if self.mode == "close":
            self.done = True
        elif not self.done:
            raise httpx.RemoteProtocolError("peer closed connection without sending complete body")

    def _chunked(self, buffer: bytearray) -> bytes | None:  # RFC 9112 §7.1
        while True:
            if self._state == "data":
                if not buffer:
                    return None
                size = min(self._remaining, len(buffer))
                data = bytes(buffer[:size])
                del buffer[:size]
                self._remaining -= size
                if self._remaining == 0:
                    self._state = "crlf"
                return data
            end = buffer.find(b"\n")
            if end < 0:
                if len(buffer) > MAX_CHUNK_LINE:
                    raise httpx.RemoteProtocolError("chunk line too long")
                return None
            line = bytes(buffer[:end]).removesuffix(b"\r")
            del buffer[: end + 1]
            if self._state == "crlf":
                if line:
                    raise httpx.RemoteProtocolError("missing CRLF after chunk data")
                self._state = "size"
            elif self._state == "size":
                match = _CHUNK_SIZE.fullmatch(line)
                if match is None:
                    raise httpx.RemoteProtocolError(f"malformed chunk size {line[:40]!r}")
                self._remaining = int(match[1], 16)
                self._state = "data" if self._remaining else "trailer"
            elif not line:  # the blank line that ends the trailer section
                self.done = True
                return b""
            elif _HEADER_LINE.fullmatch(line) is None:
                raise httpx.RemoteProtocolError("malformed trailer line")


def body_reader(head: ResponseHead, method: str) -> tuple[_BodyReader, bool]:
    """How the body is framed (RFC 9112 §6.3), and whether the connection may be reused."""
    keep_alive = head.version == b"HTTP/1.1"
    for token in head.values(b"connection"):
        token = token.lower()
        if token == b"close":
            keep_alive = False
        elif token == b"keep-alive" and head.version == b"HTTP/1.0":
            keep_alive = True
    status = head.status
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        return _BodyReader("none"), keep_alive
    codings = head.values(b"transfer-encoding")
    if codings:
        # Chunked last: chunked framing; otherwise until close. Transfer-Encoding beside a
        # Content-Length may be a smuggling attempt: use it, but never reuse (§6.1).
        reusable = keep_alive and not head.values(b"content-length")
        if codings[-1].lower() == b"chunked":
            return _BodyReader("chunked"), reusable
        return _BodyReader("close"), False
    lengths = set(head.values(b"content-length"))
    if lengths:
        value = lengths.pop()
        if lengths or not value.isdigit() or len(value) > 18:
            raise httpx.RemoteProtocolError("invalid Content-Length")
        return _BodyReader("length", int(value)), keep_alive
    return _BodyReader("close"), False


# --- one connection ----------------------------------------------------------------------


def _socket_of(stream: trio.abc.Stream) -> trio.socket.SocketType | None:
    if isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    return stream.socket if isinstance(stream, trio.SocketStream) else None


def _describe(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__
    text = str(exc) or type(exc).__name__
    if cause is not None and str(cause) and str(cause) not in text:
        text = f"{text}: {cause}"
    return text


def _deadline(timeout: float | None) -> float:
    return math.inf if timeout is None else trio.current_time() + timeout


class DeadlineExceeded(Exception):
    """The caller's overall ``deadline`` (:meth:`LeanTransport.exchange`) passed first.

    Raised where a cancel scope around the whole exchange would have cancelled it (the
    caller maps it as it would that scope's ``cancelled_caught``); the connection and
    the slot are cleaned up as they would be for ``trio.Cancelled``."""


class _Wait:
    """One wait bounded by an operation's own timeout and the caller's overall deadline.

    A single cancel scope stands in for two nested ones (the overall deadline outside,
    the operation's inside) with the same outcome: when both have passed, the outer one
    wins (trio lets a cancellation through an inner scope whose parent is cancelled too).
    """

    __slots__ = ("deadline", "op_deadline")

    def __init__(self, limit: float | None, deadline: float) -> None:
        self.op_deadline = _deadline(limit)
        self.deadline = deadline

    def scope(self) -> trio.CancelScope:
        return trio.CancelScope(deadline=min(self.op_deadline, self.deadline))

    def expired(self, error: httpx.TimeoutException) -> Exception:
        """What a caught cancellation means: the overall deadline, or ``error``."""
        return DeadlineExceeded() if self.deadline <= self.op_deadline else error


def _stream_error(exc: OSError) -> trio.BrokenResourceError | trio.ClosedResourceError:
    """What ``trio.SocketStream`` makes of a socket error (so messages stay the same)."""
    if exc.errno in (errno.EBADF, errno.ENOTSOCK):
        closed = trio.ClosedResourceError("this socket was already closed")
        closed.__context__, closed.__suppress_context__ = exc, True  # trio's "from None"
        return closed
    error = trio.BrokenResourceError(f"socket connection broken: {exc}")
    error.__cause__ = exc
    return error


class _Connection:
    __slots__ = (
        "_poll",
        "buffer",
        "got_bytes",
        "idle_since",
        "origin",
        "reused",
        "sock",
        "stream",
    )

    def __init__(self, origin: Origin, stream: trio.abc.Stream) -> None:
        self.origin = origin
        self.stream = stream
        self.buffer = bytearray()
        self.reused = False  # has served a request already (so the peer may have closed it)
        self.got_bytes = False  # any byte of the current response has arrived
        self.idle_since = 0.0
        # Plain TCP: the stdlib socket itself, non-blocking, waited on with trio's I/O
        # primitives. trio's socket and stream wrappers cost a cancel-shielded checkpoint,
        # a context manager and a conflict detector per call (~40 µs per request in
        # profiles); nothing here needs them: one task uses a connection at a time.
        self.sock: socket.socket | None = None
        if isinstance(stream, trio.SocketStream):
            sock = socket.socket(fileno=stream.socket.detach())
            sock.setblocking(False)
            self.sock = sock
            fileno = sock.fileno()
        else:
            tsock = _socket_of(stream)
            fileno = -1 if tsock is None else tsock.fileno()
        self._poll: select.poll | None = None
        if fileno >= 0:
            self._poll = select.poll()
            self._poll.register(fileno, select.POLLIN | select.POLLPRI)

    def is_stale(self) -> bool:
        """Did the peer close (or send anything) while idle? Any event means unusable."""
        # Asked on every reuse, however recently the connection was released: a POST sent
        # on a connection the server has already closed meets EOF before any response
        # byte, which looks the same as a server that processed it and then closed, so it
        # is never re-sent (module docstring). Only this poll (~0.3 µs) tells the two
        # apart; httpcore does the same (``has_expired``: ``is_readable``).
        return self._poll is not None and bool(self._poll.poll(0))

    async def send(self, data: bytes, limit: float | None, deadline: float = math.inf) -> None:
        sock = self.sock
        if sock is None:
            await self._send_stream(data, limit, deadline)
            return
        if limit is not None and limit <= 0:
            raise httpx.WriteTimeout(f"write timed out after {limit}s")
        wait: _Wait | None = None
        remaining: bytes | memoryview = data
        while remaining:
            try:
                sent = sock.send(remaining)
            except BlockingIOError:
                sent = -1
            except OSError as exc:
                error = _stream_error(exc)
                raise httpx.WriteError(_describe(error)) from error
            if sent >= 0:
                remaining = memoryview(remaining)[sent:] if sent < len(remaining) else b""
                continue
            if wait is None:
                wait = _Wait(limit, deadline)
            with wait.scope() as scope:
                await trio.lowlevel.wait_writable(sock)
            if scope.cancelled_caught:
                raise wait.expired(httpx.WriteTimeout(f"write timed out after {limit}s"))

    async def _send_stream(self, data: bytes, limit: float | None, deadline: float) -> None:
        wait = _Wait(limit, deadline)
        with wait.scope() as scope:
            try:
                await self.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                raise httpx.WriteError(_describe(exc)) from exc
        if scope.cancelled_caught:
            raise wait.expired(httpx.WriteTimeout(f"write timed out after {limit}s"))

    async def receive(
        self, limit: float | None, deadline: float = math.inf, *, wait_first: bool = False
    ) -> bool:
        """Append what arrives to ``buffer``; False at EOF. ``wait_first``: nothing can be
        there yet (a request was just sent), so skip the read that would fail."""
        sock = self.sock
        if sock is None:
            return await self._receive_stream(limit, deadline)
        wait: _Wait | None = None
        ready = not wait_first
        while True:
            if ready:
                try:
                    data = sock.recv(READ_SIZE)
                    break
                except BlockingIOError:
                    pass
                except OSError as exc:
                    error = _stream_error(exc)
                    raise httpx.ReadError(_describe(error)) from error
            ready = True
            if wait is None:
                wait = _Wait(limit, deadline)
            with wait.scope() as scope:
                await trio.lowlevel.wait_readable(sock)
            if scope.cancelled_caught:
                raise wait.expired(httpx.ReadTimeout(f"read timed out after {limit}s"))
        return self._append(data)

    def _append(self, data: bytes | bytearray) -> bool:
        """Keep what one read returned; False at EOF (nothing)."""
        if not data:
            return False
        self.got_bytes = True
        self.buffer += data
        return True

    async def _receive_stream(self, limit: float | None, deadline: float) -> bool:
        wait = _Wait(limit, deadline)
        with wait.scope() as scope:
            try:
                data = await self.stream.receive_some(READ_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                raise httpx.ReadError(_describe(exc)) from exc
        if scope.cancelled_caught:
            raise wait.expired(httpx.ReadTimeout(f"read timed out after {limit}s"))
        return self._append(data)

    async def read_head(
        self, limit: float | None, deadline: float = math.inf, *, just_sent: bool = False
    ) -> ResponseHead:
        """The next response head (1xx included), taken off the buffer. ``just_sent``: the
        request went out a moment ago (see :meth:`receive`'s ``wait_first``)."""
        searched = 0
        buffer = self.buffer
        wait_first = just_sent and not buffer
        while True:
            if buffer.startswith((b"\r", b"\n")):  # tolerate blank lines before a head
                del buffer[: len(buffer) - len(buffer.lstrip(b"\r\n"))]
            match = _HEAD_END.search(buffer, max(0, searched - 3))
            if match is not None:
                head = bytes(buffer[: match.start()])
                del buffer[: match.end()]
                return parse_head(head)
            if len(buffer) > MAX_HEAD:
                raise httpx.RemoteProtocolError("response head too large")
            searched = len(buffer)
            received = await self.receive(limit, deadline, wait_first=wait_first)
            wait_first = False
            if not received:
                if buffer:
                    raise httpx.RemoteProtocolError("peer closed connection in the response head")
                raise httpx.RemoteProtocolError("Server disconnected without sending a response.")

    async def close(self) -> None:
        sock = self.sock
        if sock is not None:
            trio.lowlevel.notify_closing(sock)
            sock.close()
            return
        tsock = _socket_of(self.stream)
        if tsock is not None:
            tsock.close()  # no TLS close_notify: framing never relies on it
        else:
            await trio.aclose_forcefully(self.stream)


# --- the pool ------------------------------------------------------------------------------


class _Pool:
    """Slots (requests in flight) and connections, both bounded by ``max_connections``."""

    def __init__(self, max_connections: int, keepalive_expiry: float) -> None:
        self._max_connections = max_connections
        self._keepalive_expiry = keepalive_expiry
        # max_value: releasing a slot twice is a bug, and must not silently grow the pool.
        self._slots = trio.Semaphore(max_connections, max_value=max_connections)
        self._idle: dict[Origin, list[_Connection]] = {}  # never holds an empty list
        self._count = 0  # open connections, idle or in use
        self.closed = False

    @property
    def connections(self) -> int:
        return self._count

    @property
    def idle(self) -> int:
        return sum(len(conns) for conns in self._idle.values())

    async def acquire_slot(self, limit: float | None, deadline: float = math.inf) -> None:
        try:
            self._slots.acquire_nowait()
            return
        except trio.WouldBlock:
            pass
        wait = _Wait(limit, deadline)
        with wait.scope():
            await self._slots.acquire()
            return
        raise wait.expired(httpx.PoolTimeout(f"no connection free within {limit}s"))

    def release_slot(self) -> None:
        self._slots.release()

    async def take_idle(self, origin: Origin) -> _Connection | None:
        """The most recently used live idle connection to ``origin``, if any."""
        conns = self._idle.get(origin)
        while conns:
            conn = conns.pop()
            if not conns:
                del self._idle[origin]
            now = trio.current_time()
            if now - conn.idle_since <= self._keepalive_expiry and not conn.is_stale():
                return conn
            await self.discard(conn)
            conns = self._idle.get(origin)
        return None

    async def reserve(self) -> None:
        """Count a connection about to be opened, evicting another origin's idle one if
        the pool is full (a slot is held, so fewer than the maximum are in use)."""
        if self._count >= self._max_connections and self._idle:
            origin = next(iter(self._idle))
            conns = self._idle[origin]
            conn = conns.pop(0)  # that origin's least recently used
            if not conns:
                del self._idle[origin]
            await self.discard(conn)
        self._count += 1

    def unreserve(self) -> None:
        self._count -= 1

    def put_idle(self, conn: _Connection) -> None:
        conn.reused = True
        conn.idle_since = trio.current_time()
        self._idle.setdefault(conn.origin, []).append(conn)

    async def discard(self, conn: _Connection) -> None:
        self._count -= 1
        await conn.close()

    async def aclose(self) -> None:
        self.closed = True
        idle = [conn for conns in self._idle.values() for conn in conns]
        self._idle.clear()
        for conn in idle:
            await self.discard(conn)


# --- the response body stream ----------------------------------------------------------------


class _ResponseStream(httpx.AsyncByteStream):
    """Streams a body off its connection; returns the connection to the pool at the end."""

    def __init__(
        self,
        transport: LeanTransport,
        conn: _Connection,
        reader: _BodyReader,
        keep_alive: bool,
        read_timeout: float | None,
        first: bytes,
    ) -> None:
        self._transport = transport
        self._conn: _Connection | None = conn
        self._reader = reader
        self._keep_alive = keep_alive
        self._timeout = read_timeout
        self._first = first

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        if self._first:
            first, self._first = self._first, b""
            return first
        conn = self._conn
        if conn is None:
            raise StopAsyncIteration
        try:
            while True:
                data = self._reader.step(conn.buffer)
                if data is None:
                    if not await conn.receive(self._timeout):
                        self._reader.eof()
                    continue
                if data:
                    return data
                if self._reader.done:
                    break
        except BaseException:
            await self.aclose()
            raise
        self._conn = None
        await self._transport._release(conn, self._keep_alive)
        raise StopAsyncIteration

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await self._transport._release(conn, False)  # body unread: cannot be reused


# --- the transport ------------------------------------------------------------------------


class LeanTransport(httpx.AsyncBaseTransport):
    """HTTP/1.1 keep-alive transport for ``httpx.AsyncClient`` under trio.

    ``max_connections`` bounds requests in flight and open connections (size it to the
    destination's concurrency). ``connect(host, port)`` opens the TCP stream (default
    :func:`tcp_connect`); the SSRF guard for status URLs plugs in here. ``verify``: an
    ``ssl.SSLContext``, ``True`` (httpx's default verifying context) or ``False``.
    """

    def __init__(
        self,
        *,
        max_connections: int = 10,
        connect: Connector = tcp_connect,
        verify: ssl.SSLContext | bool = True,
        keepalive_expiry: float = KEEPALIVE_EXPIRY,
    ) -> None:
        self._pool = _Pool(max(1, max_connections), keepalive_expiry)
        self._connect = connect
        self._verify = verify
        self._ssl_context: ssl.SSLContext | None = (
            verify if isinstance(verify, ssl.SSLContext) else None
        )

    @property
    def pool(self) -> _Pool:
        return self._pool

    def _context(self) -> ssl.SSLContext:
        if self._ssl_context is None:  # built on first use: loading CAs costs ~10 ms
            context = httpx.create_ssl_context(verify=self._verify, trust_env=False)
            context.set_alpn_protocols(["http/1.1"])
            self._ssl_context = context
        return self._ssl_context

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        origin = origin_of(url)
        data, body, replayable, close = _serialize(request)
        timeouts = request.extensions.get("timeout") or {}
        head, first, stream = await self.exchange(
            origin,
            request.method,
            data,
            close=close,
            timeouts=timeouts,
            body=body,
            replayable=replayable,
            request=request,
        )
        extensions = {"http_version": head.version}
        if head.reason:  # else httpx shows the standard phrase
            extensions["reason_phrase"] = head.reason
        return httpx.Response(
            head.status,
            headers=head.headers,
            stream=httpx.ByteStream(first) if stream is None else stream,
            extensions=extensions,
        )

    async def exchange(
        self,
        origin: Origin,
        method: str,
        data: bytes,
        *,
        close: bool,
        timeouts: Mapping[str, float | None],
        deadline: float = math.inf,
        body: bytes | None = None,
        replayable: bool = True,
        request: httpx.Request | None = None,
    ) -> tuple[ResponseHead, bytes, httpx.AsyncByteStream | None]:
        """One request without httpx's request and response objects (what
        :meth:`handle_async_request` does under them: the same connection handling,
        retries, errors and timeouts).

        ``data``: the request head, checked as :func:`check_request` does, and the body
        (or ``body``: sent after the head; b"": stream ``request``'s body, once).
        ``deadline`` (``trio.current_time()`` based) bounds everything up to the response
        head as a cancel scope around the call would, but raises :class:`DeadlineExceeded`
        instead. Returns the final response head and either the whole body and None (the
        connection is back in the pool) or b"" and a stream of the body still to come
        (``aclose`` it; its reads are bounded by ``timeouts["read"]`` only)."""
        await trio.lowlevel.checkpoint_if_cancelled()
        if deadline <= trio.current_time():
            raise DeadlineExceeded
        pool = self._pool
        if pool.closed:
            raise httpx.ConnectError("the transport is closed")
        read_timeout = timeouts.get("read")
        write_timeout = timeouts.get("write")
        await pool.acquire_slot(timeouts.get("pool"), deadline)
        slot_held = True  # until a response stream or _release takes it over
        conn: _Connection | None = None
        try:
            conn = await pool.take_idle(origin)
            if conn is None:
                conn = await self._open(origin, timeouts.get("connect"), deadline)
            retried = False
            while True:
                conn.got_bytes = False
                try:
                    await conn.send(data, write_timeout, deadline)
                    if body is not None:
                        assert request is not None
                        await _send_body(conn, request, body, write_timeout)
                    head = await conn.read_head(read_timeout, deadline, just_sent=True)
                    break
                except (httpx.WriteError, httpx.ReadError, httpx.RemoteProtocolError) as exc:
                    # The standard safe cases (module docstring): else never re-send.
                    safe = isinstance(exc, httpx.WriteError) or method in IDEMPOTENT
                    if retried or not conn.reused or conn.got_bytes or not safe or not replayable:
                        raise
                    retried = True
                    old, conn = conn, None
                    await pool.discard(old)
                    conn = await self._open(origin, timeouts.get("connect"), deadline)
            while 100 <= head.status < 200:  # interim responses (RFC 9110 §15.2)
                if head.status == 101:
                    raise httpx.RemoteProtocolError("unexpected 101 Switching Protocols")
                head = await conn.read_head(read_timeout, deadline)
            reader, keep_alive = body_reader(head, method)
            if close:
                keep_alive = False
            # The whole body is often in the buffer already: then no stream is needed and
            # the connection goes back to the pool before the caller sees the response.
            pieces: list[bytes] = []
            while not reader.done:
                piece = reader.step(conn.buffer)
                if piece is None:
                    break
                if piece:
                    pieces.append(piece)
            first = pieces[0] if len(pieces) == 1 else b"".join(pieces)
            if reader.done:
                done, conn, slot_held = conn, None, False
                await self._release(done, keep_alive)
                return head, first, None
            stream = _ResponseStream(self, conn, reader, keep_alive, read_timeout, first)
            conn, slot_held = None, False
            return head, b"", stream
        except BaseException:
            if conn is not None:
                await pool.discard(conn)
            if slot_held:
                pool.release_slot()
            raise

    async def _open(
        self, origin: Origin, limit: float | None, deadline: float = math.inf
    ) -> _Connection:
        """A new connection (TCP via the connector, then TLS for https)."""
        scheme, host, port = origin
        pool = self._pool
        await pool.reserve()
        stream: trio.abc.Stream | None = None
        try:
            wait = _Wait(limit, deadline)
            with wait.scope():
                try:
                    stream = await self._connect(host, port)
                except OSError as exc:
                    raise httpx.ConnectError(_describe(exc)) from exc
                if scheme == "https":
                    tls = trio.SSLStream(
                        stream, self._context(), server_hostname=host, https_compatible=True
                    )
                    try:
                        await tls.do_handshake()
                    except (trio.BrokenResourceError, OSError) as exc:
                        raise httpx.ConnectError(_describe(exc)) from exc
                    stream = tls
                return _Connection(origin, stream)
            raise wait.expired(httpx.ConnectTimeout(f"connect timed out after {limit}s"))
        except BaseException:
            pool.unreserve()
            if stream is not None:
                await trio.aclose_forcefully(stream)
            raise

    async def _release(self, conn: _Connection, keep_alive: bool) -> None:
        pool = self._pool
        try:
            if keep_alive and not conn.buffer and not pool.closed:
                pool.put_idle(conn)
            else:
                await pool.discard(conn)  # extra bytes after the body: not ours to guess
        finally:
            pool.release_slot()

    async def aclose(self) -> None:
        await self._pool.aclose()


def _serialize(request: httpx.Request) -> tuple[bytes, bytes | None, bool, bool]:
    """The request head (plus the body when small); what to send after it (b"": stream
    ``request.stream``; None: nothing); whether the request can be sent again; whether it
    asks for ``Connection: close``.

    httpx has already added Host, Content-Length or Transfer-Encoding; this refuses
    anything that could split the message (CR/LF in a header: request smuggling)."""
    method = request.method.encode("ascii", "replace")
    target = request.url.raw_path
    raw = request.headers.raw
    check_request(method, target, raw)
    lines = [b"%s: %s\r\n" % pair for pair in raw]
    head = b"".join([method, b" ", target, b" HTTP/1.1\r\n", *lines, b"\r\n"])
    # As ``request.headers.get("connection", "").lower() == "close"`` (values joined).
    connection = [value for name, value in raw if name.lower() == b"connection"]
    close = bool(connection) and b", ".join(connection).lower() == b"close"
    try:
        content = request.content
    except httpx.RequestNotRead:
        return head, b"", False, close  # a streaming body: sent by _send_body, once
    if len(content) > _SEND_SEPARATELY:
        return head, content, True, close
    return head + content, None, True, close


def origin_of(url: httpx.URL) -> Origin:
    """(scheme, host, port) of ``url``; ``httpx.UnsupportedProtocol`` if it is not
    http(s) or has no host (the transport's first checks, in that order)."""
    scheme = url.scheme
    if scheme not in ("http", "https"):
        raise httpx.UnsupportedProtocol(f"unsupported URL scheme {scheme!r}")
    host = url.host
    if not host:
        raise httpx.UnsupportedProtocol("the URL has no host")
    return (scheme, host, url.port or (443 if scheme == "https" else 80))


def check_request(method: bytes, target: bytes, raw: Sequence[tuple[bytes, bytes]]) -> None:
    """Raise ``httpx.LocalProtocolError`` for a method, request target or header that
    could split the message (CR/LF in a header: request smuggling)."""
    if _TOKEN.fullmatch(method) is None or _TARGET.fullmatch(target) is None:
        raise httpx.LocalProtocolError("invalid method or request target")
    names = [name for name, _ in raw]
    values = [value for _, value in raw]
    # One regex pass over all names and one over all values (NUL is no token character:
    # the count catches a name that contains the separator); the per-header loop only
    # runs to name the offender.
    joined = b"\0".join(names)
    if (
        raw and (_TOKENS.fullmatch(joined) is None or joined.count(b"\0") != len(names) - 1)
    ) or _BAD_VALUE.search(b"\t".join(values)) is not None:
        for name, value in raw:
            if _TOKEN.fullmatch(name) is None or _BAD_VALUE.search(value) is not None:
                raise httpx.LocalProtocolError(f"invalid header {name[:40]!r}")


def values_ok(joined: bytes) -> bool:
    """Are these header values (joined by HTAB) safe, with no CTL but HTAB?"""
    return _BAD_VALUE.search(joined) is None


async def _send_body(
    conn: _Connection, request: httpx.Request, body: bytes, limit: float | None
) -> None:
    if body:
        await conn.send(body, limit)
        return
    chunked = request.headers.get("transfer-encoding", "").lower() == "chunked"
    assert isinstance(request.stream, httpx.AsyncByteStream)
    async for chunk in request.stream:
        if chunk:
            await conn.send(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk, limit)
    if chunked:
        await conn.send(b"0\r\n\r\n", limit)


__all__ = [
    "IDEMPOTENT",
    "Connector",
    "DeadlineExceeded",
    "LeanTransport",
    "ResponseHead",
    "body_reader",
    "check_request",
    "parse_head",
    "tcp_connect",
    "values_ok",
]
