"""LeanTransport: against the real webhook receiver, raw scripted servers on loopback, and
scripted in-memory streams (for failures a real socket cannot produce on cue)."""

from __future__ import annotations

import contextlib
import functools
import math
import shutil
import socket
import ssl
import struct
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import h11
import httpx
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gatewayd.config import UrlDestination
from gatewayd.destinations import http as dhttp
from gatewayd.destinations.transport import (
    DeadlineExceeded,
    LeanTransport,
    parse_head,
    tcp_connect,
)
from tests.webhook import ReceivedRequest, Reply, WebhookReceiver, open_webhook_receiver

TIMEOUT = httpx.Timeout(5.0)


@pytest.fixture
async def rx() -> AsyncIterator[WebhookReceiver]:
    async with open_webhook_receiver() as receiver:
        yield receiver


def lean_client(transport: LeanTransport, timeout: httpx.Timeout = TIMEOUT) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=transport, timeout=timeout, trust_env=False)


# --- a raw server on loopback, for responses the webhook receiver never sends -------------

RawHandler = Callable[[trio.SocketStream, int], Awaitable[None]]


async def read_request(stream: trio.abc.Stream, buffer: bytearray) -> bytes | None:
    """One request (head and Content-Length body) off ``stream``; None at EOF."""
    while b"\r\n\r\n" not in buffer:
        data = await stream.receive_some(65536)
        if not data:
            return None
        buffer += data
    end = buffer.index(b"\r\n\r\n") + 4
    length = 0
    for line in bytes(buffer[:end]).split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    while len(buffer) < end + length:
        buffer += await stream.receive_some(65536)
    request = bytes(buffer[: end + length])
    del buffer[: end + length]
    return request


class RawServer:
    def __init__(self, handler: RawHandler) -> None:
        self.handler = handler
        self.port = 0
        self.connections = 0
        self.requests: list[bytes] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _serve(self, stream: trio.SocketStream) -> None:
        number = self.connections
        self.connections += 1
        try:
            async with stream:
                await self.handler(stream, number)
        except trio.BrokenResourceError:
            pass


async def start_raw(nursery: trio.Nursery, handler: RawHandler) -> RawServer:
    server = RawServer(handler)
    serve = functools.partial(trio.serve_tcp, host="127.0.0.1")
    listeners = await nursery.start(serve, server._serve, 0)
    server.port = listeners[0].socket.getsockname()[1]
    return server


def answering(server_replies: Callable[[RawServer, int, int], bytes | None]) -> Any:
    """A handler answering request k on connection c with ``server_replies(server, c, k)``
    (None: close the connection)."""

    def make(server_ref: list[RawServer]) -> RawHandler:
        async def handler(stream: trio.SocketStream, number: int) -> None:
            buffer = bytearray()
            k = 0
            while (request := await read_request(stream, buffer)) is not None:
                server_ref[0].requests.append(request)
                reply = server_replies(server_ref[0], number, k)
                k += 1
                if reply is None:
                    return
                await stream.send_all(reply)

        return handler

    return make


async def raw_server(
    nursery: trio.Nursery, replies: Callable[[RawServer, int, int], bytes | None]
) -> RawServer:
    ref: list[RawServer] = []
    server = await start_raw(nursery, answering(replies)(ref))
    ref.append(server)
    return server


# --- scripted in-memory streams (through the ``connect`` hook) -----------------------------


class Closing(bytes):
    """A scripted reply after which the peer closes the connection."""


class Scripted(trio.abc.Stream):
    """Answers each ``send_all`` with the next reply (None: EOF; a :class:`Closing` reply:
    the bytes, then EOF), delivered in pieces of the sizes in ``split``."""

    def __init__(
        self,
        *replies: bytes | None,
        fail_send: int | None = None,
        hang_send: bool = False,
        split: list[int] | None = None,
    ) -> None:
        self.replies = list(replies)
        self.requests: list[bytes] = []
        self.fail_send = fail_send  # the send_all call number (0-based) that fails
        self.hang_send = hang_send
        self.split = list(split or [])
        self.inbox = bytearray()
        self.eof = False
        self.closed = False
        self.sends = 0

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint()
        if self.hang_send:
            await trio.sleep_forever()
        if self.sends == self.fail_send:
            raise trio.BrokenResourceError("connection reset by peer")
        self.sends += 1
        self.requests.append(bytes(data))
        reply = self.replies.pop(0) if self.replies else None
        if reply is not None:
            self.inbox += reply
        self.eof = reply is None or isinstance(reply, Closing)

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint()
        if self.inbox:
            size = self.split.pop(0) if self.split else len(self.inbox)
            size = max(1, min(size, len(self.inbox), max_bytes or len(self.inbox)))
            data = bytes(self.inbox[:size])
            del self.inbox[:size]
            return data
        if self.eof:
            return b""
        await trio.sleep_forever()
        raise AssertionError  # pragma: no cover

    async def aclose(self) -> None:
        self.closed = True
        await trio.lowlevel.checkpoint()


def scripted(*streams: Scripted) -> tuple[LeanTransport, list[tuple[str, int]]]:
    """A transport whose connections are ``streams``, in order."""
    calls: list[tuple[str, int]] = []
    queue = list(streams)

    async def connect(host: str, port: int) -> trio.abc.Stream:
        calls.append((host, port))
        await trio.lowlevel.checkpoint()
        return queue.pop(0)

    return LeanTransport(max_connections=2, connect=connect), calls


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


# --- keep-alive, bodies, framing -------------------------------------------------------------


async def test_keep_alive_reuses_one_connection(rx: WebhookReceiver) -> None:
    transport = LeanTransport(max_connections=4)
    async with lean_client(transport) as client:
        for i in range(5):
            response = await client.post(rx.url + f"/in/{i}", json={"n": i})
            assert (response.status_code, response.text) == (200, "ok")
        assert (transport.pool.connections, transport.pool.idle) == (1, 1)
    assert [r.connection for r in rx.requests] == [0] * 5
    assert [r.json() for r in rx.requests] == [{"n": i} for i in range(5)]
    assert rx.requests[0].header("host") == f"127.0.0.1:{rx.port}"
    assert transport.pool.connections == 0  # closing the client closed the idle one


async def test_response_fields_reach_httpx(rx: WebhookReceiver) -> None:
    rx.respond_with(Reply(status=503, headers=(("Retry-After", "7"), ("X-A", "1")), body=b"no"))
    async with lean_client(LeanTransport()) as client:
        response = await client.get(rx.url + "/x?q=a%20b")
    assert response.status_code == 503
    assert response.reason_phrase == "Service Unavailable"
    assert response.http_version == "HTTP/1.1"
    assert response.headers["retry-after"] == "7"
    assert response.headers["x-a"] == "1"
    assert response.content == b"no"
    assert rx.requests[0].target == "/x?q=a%20b"
    assert rx.requests[0].body == b""


async def test_large_bodies_both_ways_and_reuse_after_streaming(rx: WebhookReceiver) -> None:
    big = bytes(range(256)) * 8192  # 2 MiB
    rx.respond_with(lambda request: Reply(body=request.body[::-1]))
    transport = LeanTransport()
    async with lean_client(transport) as client:
        response = await client.post(rx.url + "/big", content=big)
        assert response.content == big[::-1]
        async with client.stream("POST", rx.url + "/big", content=big[:100_000]) as streamed:
            got = b"".join([chunk async for chunk in streamed.aiter_raw()])
        assert got == big[:100_000][::-1]
        assert (await client.post(rx.url, content=b"abc")).content == b"cba"
    assert rx.requests[0].body == big
    assert {r.connection for r in rx.requests} == {0}


async def test_streaming_request_body_is_sent_chunked(rx: WebhookReceiver) -> None:
    async def parts() -> AsyncIterator[bytes]:
        for part in (b"one ", b"", b"two"):
            yield part

    async with lean_client(LeanTransport()) as client:
        response = await client.post(rx.url, content=parts())
    assert response.status_code == 200
    assert rx.requests[0].body == b"one two"
    assert rx.requests[0].header("transfer-encoding") == "chunked"


async def test_connection_close_is_honoured(rx: WebhookReceiver) -> None:
    rx.respond_with(Reply(close=True), then=200)
    transport = LeanTransport()
    async with lean_client(transport) as client:
        assert (await client.post(rx.url, content=b"1")).status_code == 200
        assert transport.pool.connections == 0
        assert (await client.post(rx.url, content=b"2")).status_code == 200
        assert (await client.post(rx.url, content=b"3", headers={"Connection": "close"})).is_success
        assert transport.pool.connections == 0
    assert [r.connection for r in rx.requests] == [0, 1, 1]


async def test_chunked_responses_in_tiny_pieces_then_reuse() -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-T: 1\r\n\r\n"
        b"5;ext=1\r\nhello\r\n1\r\n \r\nA\r\n0123456789\r\n0\r\nTrailer: x\r\n\r\n"
    )
    stream = Scripted(chunked, OK, split=[1] * len(chunked))
    transport, calls = scripted(stream)
    async with lean_client(transport) as client:
        first = await client.get("http://h.example/a")
        second = await client.post("http://h.example/b", content=b"x")
    assert first.content == b"hello 0123456789"
    assert second.content == b"ok"
    assert len(calls) == 1
    assert stream.requests[0].startswith(b"GET /a HTTP/1.1\r\nHost: h.example\r\n")


async def test_chunked_response_from_a_real_socket() -> None:
    def replies(server: RawServer, connection: int, k: int) -> bytes:
        return b"HTTP/1.1 201 Created\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"

    async with trio.open_nursery() as nursery:
        server = await raw_server(nursery, replies)
        async with lean_client(LeanTransport()) as client:
            for _ in range(3):
                response = await client.post(server.url, content=b"hi")
                assert (response.status_code, response.content) == (201, b"abc")
        nursery.cancel_scope.cancel()
    assert server.connections == 1


async def test_http_1_0_responses() -> None:
    until_close = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nthe whole rest"
    keep = b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok"
    first, second = Scripted(keep, keep, Closing(until_close)), Scripted(OK)
    transport, calls = scripted(first, second)
    async with lean_client(transport) as client:
        assert (await client.get("http://h/1")).content == b"ok"
        assert (await client.get("http://h/2")).content == b"ok"
        response = await client.get("http://h/3")
        assert (response.content, response.http_version) == (b"the whole rest", "HTTP/1.0")
        assert first.closed
        assert (await client.get("http://h/4")).content == b"ok"
    assert len(calls) == 2


async def test_interim_responses_are_skipped() -> None:
    reply = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n" + OK
    )
    transport, _ = scripted(Scripted(reply, OK))
    async with lean_client(transport) as client:
        response = await client.post("http://h/", content=b"x")
        assert (response.status_code, response.content) == (200, b"ok")
        assert "link" not in response.headers
        assert (await client.post("http://h/", content=b"y")).status_code == 200


async def test_no_body_for_head_204_and_304() -> None:
    replies = [
        b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n",  # HEAD: the length is the GET's
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n",
        OK,
    ]
    transport, calls = scripted(Scripted(*replies))
    async with lean_client(transport) as client:
        assert (await client.head("http://h/")).content == b""
        assert (await client.get("http://h/")).status_code == 204
        assert (await client.get("http://h/")).status_code == 304
        assert (await client.get("http://h/")).content == b"ok"
    assert len(calls) == 1


async def test_a_body_cut_short_raises_after_the_status() -> None:
    transport, _ = scripted(Scripted(Closing(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")))
    async with lean_client(transport) as client:
        async with client.stream("GET", "http://h/") as response:
            assert response.status_code == 200
            with pytest.raises(httpx.RemoteProtocolError, match="complete body"):
                await response.aread()
        assert transport.pool.connections == 0


async def test_an_unread_body_closes_the_connection(rx: WebhookReceiver) -> None:
    rx.respond_with(Reply(body=b"x" * 300_000))
    transport = LeanTransport(max_connections=1)
    async with lean_client(transport) as client:
        async with client.stream("GET", rx.url) as response:
            assert response.status_code == 200
        assert transport.pool.connections == 0
        assert (await client.get(rx.url)).status_code == 200  # the slot was released
    assert [r.connection for r in rx.requests] == [0, 1]


async def test_bytes_after_the_response_mean_no_reuse() -> None:
    first = Scripted(OK + b"HTTP/1.1 200 OK\r\n")
    transport, calls = scripted(first, Scripted(OK))
    async with lean_client(transport) as client:
        await client.get("http://h/")
        await client.get("http://h/")
    assert len(calls) == 2
    assert first.closed


@pytest.mark.parametrize(
    "reply",
    [
        b"HTTP/1.1 2OO OK\r\n\r\n",
        b"ICY 200 OK\r\n\r\n",
        b"HTTP/2.0 200 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX: a\x00b\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokX\r\n0\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX: " + b"a" * 70_000,
        b"HTTP/1.1 200 OK\r\nContent-",
    ],
)
async def test_malformed_responses_are_protocol_errors(reply: bytes) -> None:
    transport, _ = scripted(Scripted(Closing(reply)))
    async with lean_client(transport) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get("http://h/")
        assert transport.pool.connections == 0


def test_parse_head_details() -> None:
    head = parse_head(b"HTTP/1.1 404\nX-Folded: a\n  b\r\nEmpty:\r\nSp:  v v  ")
    assert (head.status, head.reason, head.version) == (404, b"", b"HTTP/1.1")
    assert head.headers == [(b"X-Folded", b"a b"), (b"Empty", b""), (b"Sp", b"v v")]
    assert parse_head(b"HTTP/1.0 200 All good \xe9").reason == b"All good \xe9"
    with pytest.raises(httpx.RemoteProtocolError):
        parse_head(b"HTTP/1.1 200 OK\r\n continuation first")


# --- a connection the server closed, retries, and never a duplicate POST --------------------


async def test_server_closing_an_idle_connection_is_noticed_before_sending() -> None:
    closed = trio.Event()

    async def handler(stream: trio.SocketStream, number: int) -> None:
        buffer = bytearray()
        request = await read_request(stream, buffer)
        assert request is not None
        server.requests.append(request)
        await stream.send_all(OK)  # keep-alive promised, then closed while idle
        await stream.aclose()
        closed.set()

    async with trio.open_nursery() as nursery:
        server = await start_raw(nursery, handler)
        transport = LeanTransport()
        async with lean_client(transport) as client:
            assert (await client.post(server.url, content=b"1")).status_code == 200
            await closed.wait()  # loopback: the FIN is in our socket once close() returns
            assert (await client.post(server.url, content=b"2")).status_code == 200
        nursery.cancel_scope.cancel()
    assert len(server.requests) == 2
    assert server.connections == 2


async def test_idle_connections_expire(
    rx: WebhookReceiver, autojump_clock: trio.testing.MockClock
) -> None:
    async with lean_client(LeanTransport(keepalive_expiry=4.0)) as client:
        await client.post(rx.url, content=b"1")
        await trio.sleep(3.0)
        await client.post(rx.url, content=b"2")
        await trio.sleep(5.0)
        await client.post(rx.url, content=b"3")
    assert [r.connection for r in rx.requests] == [0, 0, 1]


async def test_write_failure_on_a_reused_connection_is_retried_once_fresh() -> None:
    stale = Scripted(OK, fail_send=1)
    fresh = Scripted(OK)
    transport, calls = scripted(stale, fresh)
    async with lean_client(transport) as client:
        assert (await client.post("http://h/", content=b"1")).status_code == 200
        assert (await client.post("http://h/", content=b"2")).status_code == 200
    assert len(calls) == 2
    assert stale.closed
    assert [r.endswith(b"\r\n\r\n2") for r in fresh.requests] == [True]


async def test_write_failure_on_a_fresh_connection_is_not_retried() -> None:
    transport, calls = scripted(Scripted(fail_send=0), Scripted(OK))
    async with lean_client(transport) as client:
        with pytest.raises(httpx.WriteError, match="reset"):
            await client.post("http://h/", content=b"1")
    assert len(calls) == 1


async def test_no_duplicate_post_after_the_server_processed_it_and_closed(
    rx: WebhookReceiver,
) -> None:
    rx.respond_with(200, Reply(drop=True), then=200)
    async with lean_client(LeanTransport()) as client:
        assert (await client.post(rx.url, content=b"first")).status_code == 200
        with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
            await client.post(rx.url, content=b"second")
    assert [r.body for r in rx.requests] == [b"first", b"second"]  # sent exactly once


async def test_an_idempotent_request_is_retried_after_a_silent_close(rx: WebhookReceiver) -> None:
    rx.respond_with(200, Reply(drop=True), then=200)
    async with lean_client(LeanTransport()) as client:
        assert (await client.post(rx.url, content=b"first")).status_code == 200
        assert (await client.put(rx.url, content=b"again")).status_code == 200
    assert [(r.method, r.connection) for r in rx.requests] == [
        ("POST", 0),
        ("PUT", 0),
        ("PUT", 1),
    ]


async def test_retry_happens_at_most_once() -> None:
    transport, calls = scripted(Scripted(OK, None), Scripted(None))
    async with lean_client(transport) as client:
        await client.get("http://h/")
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get("http://h/")  # reused: retried; the fresh one also closes
    assert len(calls) == 2


# --- timeouts and errors ----------------------------------------------------------------------


async def test_read_timeout(rx: WebhookReceiver, autojump_clock: trio.testing.MockClock) -> None:
    rx.respond_with(Reply(delay=math.inf))
    transport = LeanTransport()
    async with lean_client(transport, httpx.Timeout(10.0, read=3.0)) as client:
        start = trio.current_time()
        with pytest.raises(httpx.ReadTimeout):
            await client.post(rx.url, content=b"x")
        assert trio.current_time() - start == pytest.approx(3.0, abs=0.1)
        assert transport.pool.connections == 0


async def test_connect_timeout(autojump_clock: trio.testing.MockClock) -> None:
    async def never(host: str, port: int) -> trio.abc.Stream:
        await trio.sleep_forever()
        raise AssertionError  # pragma: no cover

    transport = LeanTransport(connect=never)
    async with lean_client(transport, httpx.Timeout(10.0, connect=2.0)) as client:
        with pytest.raises(httpx.ConnectTimeout):
            await client.get("http://h/")
    assert transport.pool.connections == 0


async def test_write_timeout(autojump_clock: trio.testing.MockClock) -> None:
    transport, _ = scripted(Scripted(hang_send=True))
    async with lean_client(transport, httpx.Timeout(10.0, write=1.5)) as client:
        with pytest.raises(httpx.WriteTimeout):
            await client.post("http://h/", content=b"x")


async def test_pool_timeout_and_fifo_slots(
    rx: WebhookReceiver, autojump_clock: trio.testing.MockClock
) -> None:
    rx.respond_with(Reply(delay=10.0), then=200)
    transport = LeanTransport(max_connections=1)
    async with lean_client(transport, httpx.Timeout(30.0, pool=1.0)) as client:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.get, rx.url + "/slow")
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(httpx.PoolTimeout):
                await client.get(rx.url + "/waits")
        assert (await client.get(rx.url + "/after")).status_code == 200
    assert [r.path for r in rx.requests] == ["/slow", "/after"]


async def test_connection_refused_is_a_connect_error() -> None:
    async with trio.open_nursery() as nursery:
        server = await raw_server(nursery, lambda s, c, k: OK)
        port = server.port
        nursery.cancel_scope.cancel()
    async with lean_client(LeanTransport()) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(f"http://127.0.0.1:{port}/")


async def test_refusals_before_any_io() -> None:
    transport = LeanTransport(connect=tcp_connect)
    async with lean_client(transport) as client:
        with pytest.raises(httpx.UnsupportedProtocol):
            await client.get("ftp://h/x")
        request = client.build_request("GET", "http://h/")
        request.headers["X-Evil"] = "a\r\nInjected: 1"
        with pytest.raises(httpx.LocalProtocolError):
            await client.send(request)
    assert transport.pool.connections == 0


async def test_connector_transport_errors_pass_through() -> None:
    async def refuse(host: str, port: int) -> trio.abc.Stream:
        raise httpx.ConnectError("blocked by policy")

    async with lean_client(LeanTransport(connect=refuse)) as client:
        with pytest.raises(httpx.ConnectError, match="blocked by policy"):
            await client.get("http://h/")


# --- the pool -----------------------------------------------------------------------------


async def test_concurrency_is_bounded_by_the_pool_size(
    rx: WebhookReceiver, autojump_clock: trio.testing.MockClock
) -> None:
    in_flight = peak = 0

    async def handler(request: ReceivedRequest) -> Reply:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await trio.sleep(1.0)
        in_flight -= 1
        return Reply()

    rx.respond_with(handler)
    transport = LeanTransport(max_connections=3)
    statuses: list[int] = []
    async with lean_client(transport) as client:

        async def one(i: int) -> None:
            statuses.append((await client.post(rx.url, content=str(i).encode())).status_code)

        async with trio.open_nursery() as nursery:
            for i in range(10):
                nursery.start_soon(one, i)
        assert (transport.pool.connections, transport.pool.idle) == (3, 3)
    assert statuses == [200] * 10
    assert peak == 3
    assert {r.connection for r in rx.requests} == {0, 1, 2}


async def test_other_origins_idle_connections_are_evicted_when_full() -> None:
    async with trio.open_nursery() as nursery:
        a = await raw_server(nursery, lambda s, c, k: OK)
        b = await raw_server(nursery, lambda s, c, k: OK)
        transport = LeanTransport(max_connections=1)
        async with lean_client(transport) as client:
            for url in (a.url, b.url, a.url, a.url):
                assert (await client.get(url)).status_code == 200
            assert transport.pool.connections == 1
        nursery.cancel_scope.cancel()
    assert (a.connections, b.connections) == (2, 1)


# --- TLS ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = str(directory / "cert.pem"), str(directory / "key.pem")
    subprocess.run(
        [
            *(openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
            *("-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=hook.test"),
            *("-addext", "subjectAltName=DNS:hook.test"),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


async def to_loopback(host: str, port: int) -> trio.abc.Stream:
    return await trio.open_tcp_stream("127.0.0.1", port)


@pytest.mark.parametrize(("name", "ok"), [("hook.test", True), ("other.test", False)])
async def test_tls_keep_alive_and_hostname_check(
    tls_files: tuple[str, str], name: str, ok: bool
) -> None:
    cert, key = tls_files
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    verify = ssl.create_default_context(cafile=cert)
    async with open_webhook_receiver(ssl_context=server) as tls_rx:
        url = f"https://{name}:{tls_rx.port}/in"
        transport = LeanTransport(connect=to_loopback, verify=verify)
        async with lean_client(transport) as client:
            if ok:
                for _ in range(3):
                    assert (await client.post(url, content=b"x")).status_code == 200
            else:
                with pytest.raises(httpx.ConnectError) as caught:
                    await client.post(url, content=b"x")
                assert "certificate" in str(caught.value).lower()
    if ok:
        assert [r.connection for r in tls_rx.requests] == [0, 0, 0]
        assert tls_rx.requests[0].header("host") == f"hook.test:{tls_rx.port}"
    else:
        assert tls_rx.requests == []


async def test_default_verification_rejects_an_unknown_ca(tls_files: tuple[str, str]) -> None:
    cert, key = tls_files
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    async with (
        open_webhook_receiver(ssl_context=server) as tls_rx,
        lean_client(LeanTransport(connect=to_loopback)) as client,
    ):
        with pytest.raises(httpx.ConnectError, match="certificate"):
            await client.get(f"https://hook.test:{tls_rx.port}/")


# --- wiring into the HTTP destination -------------------------------------------------------


async def test_make_client_uses_the_lean_transport_unless_stock() -> None:
    config = UrlDestination(name="x", url="https://h/", concurrency=3)
    lean = dhttp.make_client(config)
    stock = dhttp.make_client(config, stock=True)
    try:
        assert isinstance(lean._transport, LeanTransport)
        assert lean._transport.pool._max_connections == 3
        assert isinstance(stock._transport, httpx.AsyncHTTPTransport)
    finally:
        await lean.aclose()
        await stock.aclose()


async def test_guarded_connector_refuses_and_connects(rx: WebhookReceiver) -> None:
    async def resolver(host: str, port: int) -> list[str]:
        return ["127.0.0.1"]

    blocked = dhttp.guarded_connector((), resolver=resolver)
    with pytest.raises(httpx.ConnectError) as caught:
        await blocked("hook.test", rx.port)
    assert isinstance(caught.value.__cause__, dhttp.BlockedAddress)
    allowed = dhttp.guarded_connector(dhttp.parse_networks(["127.0.0.0/8"]), resolver=resolver)
    async with lean_client(LeanTransport(connect=allowed)) as client:
        assert (await client.get(f"http://hook.test:{rx.port}/s")).status_code == 200
    assert rx.requests[0].header("host") == f"hook.test:{rx.port}"


# --- the parser against h11, over arbitrary splits of the byte stream ---------------------

_token = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_", min_size=1)
_value = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=20)
_reserved = {"content-length", "transfer-encoding", "connection"}


@st.composite
def responses(draw: st.DrawFn) -> tuple[bytes, str]:
    status = draw(st.sampled_from([200, 201, 204, 304, 404, 503]))
    method = draw(st.sampled_from(["GET", "POST", "HEAD"]))
    names = draw(st.lists(_token.filter(lambda n: n.lower() not in _reserved), max_size=5))
    headers = [(name, draw(_value)) for name in names]
    body = draw(st.binary(max_size=300))
    framing = draw(st.sampled_from(["length", "chunked", "close"]))
    interim = draw(st.booleans())
    version = "HTTP/1.0" if framing == "close" else "HTTP/1.1"
    no_body = method == "HEAD" or status in (204, 304)
    lines = [f"{version} {status} Reason {status}"]
    lines += [f"{name}: {value}" for name, value in headers]
    payload = b""
    if framing == "length":
        lines.append(f"Content-Length: {len(body)}")
        payload = b"" if no_body else body
    elif framing == "chunked":
        lines.append("Transfer-Encoding: chunked")
        if not no_body:
            sizes = draw(st.lists(st.integers(1, 50), max_size=8))
            rest, parts = body, []
            for size in sizes:
                if rest:
                    parts.append(b"%X\r\n%b\r\n" % (len(rest[:size]), rest[:size]))
                    rest = rest[size:]
            if rest:
                parts.append(b"%x\r\n%b\r\n" % (len(rest), rest))
            payload = b"".join(parts) + b"0\r\n\r\n"
    else:
        payload = b"" if no_body else body
    head = "\r\n".join(lines).encode() + b"\r\n\r\n"
    prefix = b"HTTP/1.1 100 Continue\r\n\r\n" if interim and version == "HTTP/1.1" else b""
    return prefix + head + payload, method


def h11_parse(data: bytes, method: str) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method=method, target="/", headers=[("Host", "h")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(data)
    conn.receive_data(b"")
    status, headers, body = 0, [], b""
    while True:
        event = conn.next_event()
        if isinstance(event, h11.Response):
            status, headers = event.status_code, list(event.headers)
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            return status, headers, body


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(responses(), st.lists(st.integers(1, 40), max_size=60))
def test_parser_agrees_with_h11_over_any_split(case: tuple[bytes, str], split: list[int]) -> None:
    data, method = case
    expected = h11_parse(data, method)

    async def ours() -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        transport, _ = scripted(Scripted(Closing(data), split=split))
        async with lean_client(transport) as client:
            response = await client.request(method, "http://h/")
            return response.status_code, response.headers.raw, response.content

    status, headers, body = trio.run(ours)
    assert status == expected[0]
    assert [(k.lower(), v) for k, v in headers] == expected[1]
    assert body == expected[2]


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=200), st.lists(st.integers(1, 20), max_size=20))
def test_garbage_only_ever_raises_protocol_errors(data: bytes, split: list[int]) -> None:
    async def ours() -> None:
        transport, _ = scripted(Scripted(Closing(data), split=split))
        async with lean_client(transport) as client:
            with contextlib.suppress(httpx.RemoteProtocolError):
                await client.get("http://h/")

    trio.run(ours)


@pytest.mark.parametrize(
    ("headers", "ok"),
    [
        ([(b"X-A", b"1\t2"), (b"X-B", b"")], True),
        ([(b"X\x00Y", b"1")], False),  # the separator of the one-pass check, inside a name
        ([(b"", b"1")], False),
        ([(b"X-A", b"1"), (b"X B", b"2")], False),
        ([(b"X-A", b"1\r\nInjected: 1")], False),
        ([(b"X-A", b"\x7f")], False),
    ],
)
def test_serialize_checks_every_header(headers: list[tuple[bytes, bytes]], ok: bool) -> None:
    from gatewayd.destinations.transport import _serialize

    request = httpx.Request("POST", "http://h/x", headers=headers, content=b"ab")
    if ok:
        head, body, replayable, close = _serialize(request)
        assert head.startswith(b"POST /x HTTP/1.1\r\nHost: h\r\nX-A: 1\t2\r\nX-B: \r\n")
        assert head.endswith(b"\r\n\r\nab")
        assert (body, replayable, close) == (None, True, False)
    else:
        with pytest.raises(httpx.LocalProtocolError):
            _serialize(request)


def test_serialize_sees_connection_close() -> None:
    from gatewayd.destinations.transport import _serialize

    assert _serialize(httpx.Request("GET", "http://h/", headers={"Connection": "Close"}))[3]
    assert not _serialize(httpx.Request("GET", "http://h/", headers={"Connection": "x"}))[3]


# --- exchange(): the same transport without httpx's request and response objects ---------


def _post(path: str, body: bytes, port: int) -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


async def test_exchange_returns_head_and_body_and_reuses_the_connection() -> None:
    async with trio.open_nursery() as nursery:
        server = await raw_server(
            nursery, lambda s, c, k: b"HTTP/1.1 201 Made\r\nX-A: 1\r\n" + OK[17:]
        )
        transport = LeanTransport()
        origin = ("http", "127.0.0.1", server.port)
        timeouts = TIMEOUT.as_dict()
        for body in (b"one", b"two"):
            head, first, stream = await transport.exchange(
                origin, "POST", _post("/x", body, server.port), close=False, timeouts=timeouts
            )
            assert (head.status, head.reason, first, stream) == (201, b"Made", b"ok", None)
            assert head.headers == [(b"X-A", b"1"), (b"Content-Length", b"2")]
            assert head.has(b"x-a")
            assert not head.has(b"content-encoding")
            assert transport.pool.idle == 1  # back in the pool before returning
        await transport.aclose()
        nursery.cancel_scope.cancel()
    assert server.connections == 1
    assert server.requests[1].endswith(b"\r\n\r\ntwo")


async def test_exchange_streams_a_body_still_to_come_and_honours_close() -> None:
    release = trio.Event()

    async def handler(stream: trio.SocketStream, number: int) -> None:
        await read_request(stream, bytearray())
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab")
        await release.wait()
        await stream.send_all(b"cde")

    async with trio.open_nursery() as nursery:
        server = await start_raw(nursery, handler)
        transport = LeanTransport()
        head, first, stream = await transport.exchange(
            ("http", "127.0.0.1", server.port),
            "GET",
            b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
            close=True,
            timeouts=TIMEOUT.as_dict(),
        )
        assert (head.status, first) == (200, b"")
        assert stream is not None
        release.set()
        assert b"".join([chunk async for chunk in stream]) == b"abcde"
        await stream.aclose()
        assert (transport.pool.idle, transport.pool.connections) == (0, 0)  # close asked
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("read", "deadline", "expected"),
    [
        (10.0, 5.0, DeadlineExceeded),
        (5.0, 5.0, DeadlineExceeded),  # a tie: the outer deadline wins, as nested scopes do
        (2.0, 5.0, httpx.ReadTimeout),
    ],
)
async def test_exchange_deadline_and_the_read_timeout(
    rx: WebhookReceiver,
    autojump_clock: trio.testing.MockClock,
    read: float,
    deadline: float,
    expected: type[Exception],
) -> None:
    rx.respond_with(Reply(delay=math.inf))
    transport = LeanTransport()
    start = trio.current_time()
    with pytest.raises(expected):
        await transport.exchange(
            ("http", "127.0.0.1", rx.port),
            "POST",
            _post("/in", b"x", rx.port),
            close=False,
            timeouts=httpx.Timeout(30.0, read=read).as_dict(),
            deadline=start + deadline,
        )
    assert trio.current_time() - start == min(read, deadline)
    assert (transport.pool.connections, transport.pool.idle) == (0, 0)
    await transport.aclose()


async def test_exchange_past_its_deadline_sends_nothing(
    rx: WebhookReceiver, autojump_clock: trio.testing.MockClock
) -> None:
    transport = LeanTransport()
    with pytest.raises(DeadlineExceeded):
        await transport.exchange(
            ("http", "127.0.0.1", rx.port),
            "POST",
            _post("/in", b"x", rx.port),
            close=False,
            timeouts=TIMEOUT.as_dict(),
            deadline=trio.current_time(),
        )
    assert rx.requests == []
    assert transport.pool.connections == 0


async def test_exchange_deadline_while_waiting_for_a_slot(
    rx: WebhookReceiver, autojump_clock: trio.testing.MockClock
) -> None:
    rx.respond_with(Reply(delay=10.0), then=200)
    transport = LeanTransport(max_connections=1)
    origin = ("http", "127.0.0.1", rx.port)
    timeouts = httpx.Timeout(30.0).as_dict()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            functools.partial(
                transport.exchange,
                origin,
                "POST",
                _post("/slow", b"", rx.port),
                close=False,
                timeouts=timeouts,
            )
        )
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(DeadlineExceeded):
            await transport.exchange(
                origin,
                "POST",
                _post("/waits", b"", rx.port),
                close=False,
                timeouts=timeouts,
                deadline=trio.current_time() + 1.0,
            )
    head, _, _ = await transport.exchange(
        origin, "POST", _post("/after", b"", rx.port), close=False, timeouts=timeouts
    )
    assert head.status == 200
    assert [r.path for r in rx.requests] == ["/slow", "/after"]
    await transport.aclose()


@pytest.mark.parametrize("deadline", [math.inf, 1.0])
async def test_write_timeout_and_deadline_on_a_real_socket(
    autojump_clock: trio.testing.MockClock, deadline: float
) -> None:
    async def never_reads(stream: trio.SocketStream, number: int) -> None:
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        server = await start_raw(nursery, never_reads)
        transport = LeanTransport()
        big = _post("/", b"x" * 32_000_000, server.port)  # more than the socket buffers hold
        expected = httpx.WriteTimeout if deadline == math.inf else DeadlineExceeded
        with pytest.raises(expected):
            await transport.exchange(
                ("http", "127.0.0.1", server.port),
                "POST",
                big,
                close=False,
                timeouts=httpx.Timeout(30.0, write=2.0).as_dict(),
                deadline=trio.current_time() + deadline,
            )
        assert transport.pool.connections == 0
        nursery.cancel_scope.cancel()


async def test_a_reset_connection_reads_as_trio_describes_it() -> None:
    async def resets(stream: trio.SocketStream, number: int) -> None:
        await read_request(stream, bytearray())
        linger = struct.pack("ii", 1, 0)  # close with RST
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        stream.socket.close()

    async with trio.open_nursery() as nursery:
        server = await start_raw(nursery, resets)
        async with lean_client(LeanTransport()) as client:
            with pytest.raises(httpx.ReadError) as caught:
                await client.post(server.url, content=b"x")
        nursery.cancel_scope.cancel()
    assert str(caught.value).startswith("socket connection broken: [Errno 104]")
    assert isinstance(caught.value.__cause__, trio.BrokenResourceError)
    assert isinstance(caught.value.__cause__.__cause__, ConnectionResetError)


# --- parse_head: the CRLF fast path agrees with the line loop --------------------------------

_head_text = st.text(st.characters(min_codepoint=0, max_codepoint=0xFF), max_size=12).filter(
    lambda t: "\r" not in t and "\n" not in t
)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(["HTTP/1.1 200 OK", "HTTP/1.0 404", "HTTP/2.0 200 X", "HTTP/1.1 20 X", ""]),
    st.lists(
        st.one_of(
            st.tuples(_token, _head_text).map(lambda p: f"{p[0]}:{p[1]}"),
            _head_text,
            _head_text.map(lambda t: " " + t),
        ),
        max_size=6,
    ),
)
def test_parse_head_fast_path_agrees_with_the_line_loop(status: str, lines: list[str]) -> None:
    crlf = "\r\n".join([status, *lines]).encode("latin-1")
    bare_lf = crlf.replace(b"\r\n", b"\n")  # bare LF line ends: never the fast path

    def parsed(head: bytes) -> tuple[int, bytes, bytes, list[tuple[bytes, bytes]]] | str:
        try:
            result = parse_head(head)
        except httpx.RemoteProtocolError:
            return "error"
        return (result.status, result.reason, result.version, result.headers)

    assert parsed(crlf) == parsed(bare_lf)
