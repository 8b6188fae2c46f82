"""The project's own test SIP UAS: answers MESSAGE over UDP or TCP on a free loopback port.

It does what a test asks: answer 200 (or a scripted sequence of statuses), demand digest
authentication with a 401 or 407 and check the credentials it gets back, drop the first N
requests to exercise retransmission, or never answer at all. It records every copy of
every request it receives, and answers a retransmission with the response it already
sent (a UAS server transaction's job, RFC 3261 §17.2.2) without consuming the script.
"""

from __future__ import annotations

import collections
import contextlib
import secrets
from collections.abc import AsyncIterator, Iterable
from typing import Any, Literal

import attrs
import trio

from gatewayd.sip import digest
from gatewayd.sip.message import (
    Headers,
    ParseError,
    Request,
    Response,
    StreamFramer,
    header_param,
    parse_message,
    quote_string,
)
from gatewayd.sip.transaction import top_branch

REASONS = {
    200: "OK",
    202: "Accepted",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    407: "Proxy Authentication Required",
    480: "Temporarily Unavailable",
    486: "Busy Here",
    500: "Server Internal Error",
    503: "Service Unavailable",
    603: "Decline",
}


@attrs.frozen(kw_only=True)
class Received:
    """One copy of a request as it arrived."""

    request: Request
    raw: bytes
    at: float
    source: tuple[Any, ...]
    dropped: bool


class TestUas:
    """A scripted UAS. Start it with ``nursery.start(uas.serve)`` or :func:`open_uas`."""

    __test__ = False  # not a pytest class

    def __init__(
        self,
        *,
        transport: Literal["udp", "tcp"] = "udp",
        script: Iterable[int] = (),
        default: int = 200,
        drop_first: int = 0,
        silent: bool = False,
        auth: Literal[401, 407] | None = None,
        username: str = "alice",
        password: str = "wonderland",
        realm: str = "gatewayd.test",
        algorithm: str = "MD5",
        qop: str | None = "auth",
        retry_after: int | None = None,
        provisional: bool = False,
        noise: bool = False,
        hang_up: bool = False,
    ) -> None:
        self.transport = transport
        self.script = collections.deque(script)
        self.default = default
        self.drop_remaining = drop_first
        self.silent = silent
        self.auth = auth
        self.username = username
        self.password = password
        self.realm = realm
        self.algorithm = algorithm
        self.qop = qop
        self.retry_after = retry_after
        self.provisional = provisional
        # Before each answer: a response to another branch, and (UDP) a malformed datagram.
        self.noise = noise
        self.hang_up = hang_up  # TCP: close the connection instead of answering
        self.host = "127.0.0.1"
        self.port = 0
        self.received: list[Received] = []  # every copy, dropped or not
        self.sent: list[Response] = []
        self.auth_results: list[bool] = []  # one per request that carried credentials
        self.nonces: set[str] = set()
        self._answers: dict[str, bytes] = {}  # branch -> the final response we sent

    # --- what tests look at --------------------------------------------------------------

    def uri(self, user: str = "desk") -> str:
        return f"sip:{user}@{self.host}:{self.port}"

    @property
    def requests(self) -> list[Request]:
        """Distinct requests (by Via branch), in order of first arrival."""
        seen: dict[str | None, Request] = {}
        for copy in self.received:
            seen.setdefault(top_branch(copy.request), copy.request)
        return list(seen.values())

    def copies(self, request: Request) -> list[Received]:
        branch = top_branch(request)
        return [c for c in self.received if top_branch(c.request) == branch]

    # --- serving ------------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        if self.transport == "udp":
            await self._serve_udp(task_status)
        else:
            await self._serve_tcp(task_status)

    async def _serve_udp(self, task_status: trio.TaskStatus[int]) -> None:
        with trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM) as sock:
            await sock.bind((self.host, 0))
            self.port = sock.getsockname()[1]
            task_status.started(self.port)
            while True:
                data, source = await sock.recvfrom(65536)
                for reply in self._handle(data, source):
                    await sock.sendto(reply, source)

    async def _serve_tcp(self, task_status: trio.TaskStatus[int]) -> None:
        listeners = await trio.open_tcp_listeners(0, host=self.host)
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self._handle_stream, listeners)

    async def _handle_stream(self, stream: trio.SocketStream) -> None:
        framer = StreamFramer()
        source = stream.socket.getpeername()
        async with stream:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                async for chunk in stream:
                    framer.feed(chunk)
                    while (frame := framer.next_frame()) is not None:
                        replies = self._handle(frame, source)
                        if self.hang_up:
                            return
                        for reply in replies:
                            await stream.send_all(reply)

    # --- the UAS logic (sans-I/O) ----------------------------------------------------------

    def _handle(self, data: bytes, source: tuple[Any, ...]) -> list[bytes]:
        """What to send back for one incoming message: one datagram or write each."""
        try:
            message = parse_message(data, stream=self.transport == "tcp")
        except ParseError:
            return []
        if not isinstance(message, Request):
            return []
        dropped = self.drop_remaining > 0
        self.received.append(
            Received(
                request=message, raw=data, at=trio.current_time(), source=source, dropped=dropped
            )
        )
        if dropped:
            self.drop_remaining -= 1
            return []
        if self.silent:
            return []
        branch = top_branch(message) or ""
        if branch in self._answers:  # a retransmission: same answer, script untouched
            return [self._answers[branch]]
        out: list[bytes] = []
        if self.noise:
            stranger = self._response(message, 200, "Not Yours")
            via = f"SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKstranger{secrets.token_hex(4)}"
            if self.transport == "udp":  # on a stream, garbage would break the framing
                out.append(b"SIP/2.0 200 OK\r\nContent-Length: 99\r\n\r\ntruncated")
            out.append(
                attrs.evolve(stranger, headers=stranger.headers.replace("Via", via)).to_bytes()
            )
        if self.provisional:
            out.append(self._response(message, 100, "Trying").to_bytes())
        response = self._decide(message)
        self.sent.append(response)
        self._answers[branch] = response.to_bytes()
        return [*out, self._answers[branch]]

    def _decide(self, request: Request) -> Response:
        if self.auth is not None:
            credentials_name = "Authorization" if self.auth == 401 else "Proxy-Authorization"
            credentials = request.headers.get(credentials_name)
            if credentials is None or not self._verify(request, credentials):
                return self._challenge(request)
        status = self.script.popleft() if self.script else self.default
        response = self._response(request, status, REASONS.get(status, "Whatever"))
        if self.retry_after is not None and status >= 300:
            response = attrs.evolve(
                response, headers=response.headers.with_header("Retry-After", str(self.retry_after))
            )
        return response

    def _challenge(self, request: Request) -> Response:
        assert self.auth is not None
        nonce = secrets.token_hex(12)
        self.nonces.add(nonce)
        parts = [f"realm={quote_string(self.realm)}", f'nonce="{nonce}"']
        parts.append(f"algorithm={self.algorithm}")
        if self.qop:
            parts.append(f'qop="{self.qop}"')
        parts.append('opaque="0pa9ue"')
        name = "WWW-Authenticate" if self.auth == 401 else "Proxy-Authenticate"
        response = self._response(request, self.auth, REASONS[self.auth])
        return attrs.evolve(
            response, headers=response.headers.with_header(name, "Digest " + ", ".join(parts))
        )

    def _verify(self, request: Request, value: str) -> bool:
        try:
            scheme, params = digest.parse_auth_params(value)
        except digest.DigestError:
            self.auth_results.append(False)
            return False
        ok = (
            scheme.lower() == "digest"
            and params.get("username") == self.username
            and params.get("realm") == self.realm
            and params.get("nonce") in self.nonces
            and params.get("uri") == request.uri
            and params.get("opaque") == "0pa9ue"
            and (params.get("algorithm") or "MD5").upper() == self.algorithm.upper()
        )
        if ok:
            expected = digest.compute_response(
                algorithm=self.algorithm,
                username=self.username,
                password=self.password,
                realm=self.realm,
                method=request.method,
                uri=params["uri"],
                nonce=params["nonce"],
                qop=params.get("qop"),
                cnonce=params.get("cnonce", ""),
                nc=params.get("nc", ""),
                body=request.body,
            )
            ok = secrets.compare_digest(expected, params.get("response", ""))
        self.auth_results.append(ok)
        return ok

    def _response(self, request: Request, status: int, reason: str) -> Response:
        """A response to ``request`` built per RFC 3261 §8.2.6.2."""
        items: list[tuple[str, str]] = [("Via", v) for v in request.headers.get_all("Via")]
        for name in ("From", "To", "Call-ID", "CSeq"):
            value = request.headers.get(name)
            if value is not None:
                if name == "To" and header_param(value, "tag") is None and status > 100:
                    value += ";tag=uas" + secrets.token_hex(4)
                items.append((name, value))
        items.append(("Server", "gatewayd-test-uas"))
        return Response(status=status, reason=reason, headers=Headers(tuple(items)))


@contextlib.asynccontextmanager
async def open_uas(**kwargs: Any) -> AsyncIterator[TestUas]:
    """A running :class:`TestUas`, stopped when the block ends."""
    uas = TestUas(**kwargs)
    async with trio.open_nursery() as nursery:
        await nursery.start(uas.serve)
        yield uas
        nursery.cancel_scope.cancel()
