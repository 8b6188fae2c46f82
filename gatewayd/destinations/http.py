"""``type: url`` destinations, and per-message status URLs given by API clients.

Each attempt is one request; what happened becomes an :class:`AttemptResult`, never an
exception. The outcome rules (issue 4):

- the configured ``success`` statuses (default: any 2xx) -> DELIVERED;
- any other status, a timeout or a transport error -> RETRY, with ``Retry-After``
  (seconds or an HTTP-date) in ``retry_after``. That includes 4xx other than 408/429:
  the seeds' providers retry every failed push on their schedule, and a receiver's
  misconfiguration (401 after a key rotation, 404 during a deploy) is usually fixed
  within the retry window; the dispatcher dead-letters after the last attempt;
- a request we cannot even build (unknown placeholder, header with CR/LF, a URL that
  does not parse, an unsupported scheme, a status URL that resolves to a blocked
  address) -> PERMANENT: retrying cannot help.

Errors and targets never carry secrets: URL userinfo is stripped from ``target`` and
every credential (auth settings, configured header values, the JWT, URL passwords) is
redacted from error text.

Issue 7 (CPU per webhook): over the lean transport, :func:`perform` sends through
:meth:`DirectSender.exchange`: the request bytes come from a per-URL/method/header-layout
template (the same bytes httpx and the transport would produce, with the same checks and
errors), and the response is judged from the parsed head without httpx objects.

HTTP clients: one small ``httpx.AsyncClient`` per destination, its pool sized to the
destination's concurrency (httpcore 1.0.9's pool does O(N^2) work per request, so one
big shared pool collapses under load: ``STACK.md``). Under it sits our lean HTTP/1.1
transport (``transport.LeanTransport``, ~2x less CPU per request); ``stock=True`` selects
httpx's default transport instead (the benchmark compares them).
``follow_redirects=False`` (a 3xx is a failure: it is not in the success set) and
``trust_env=False`` (no proxy or .netrc from the environment: what is sent is what the
config says).

Status URLs (issue 5) come from API clients, so :class:`StatusUrlDelivery` connects only
to addresses that are globally routable unless an allow-list admits them. The check runs
in the network backend at connect time on the address actually connected to, after our
own DNS resolution, so DNS rebinding cannot slip a private address past it; the
transport still sends ``Host`` and TLS SNI for the name in the URL
(:func:`guarded_connector` for the lean transport, :class:`GuardedBackend` for stock).

Exception map (all caught in :func:`perform`)::

    httpx.TimeoutException, total deadline   -> RETRY  "timeout ..."
    httpx.TransportError (connect, read, ...) -> RETRY  "<ExceptionName>: ..."
      ... caused by BlockedAddress            -> PERMANENT
    httpx.UnsupportedProtocol, InvalidURL     -> PERMANENT
    payloads.UnknownPlaceholder, HeaderError  -> PERMANENT
"""

from __future__ import annotations

import base64
import datetime as dt
import email.utils
import ipaddress
import math
import ssl
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from typing import Any, Literal

import httpcore
import httpx
import trio

from gatewayd.config import BasicAuth, BearerAuth, JwtAuth, UrlDestination
from gatewayd.destinations.base import AttemptResult, Job, Outcome
from gatewayd.destinations.transport import (
    Connector,
    DeadlineExceeded,
    LeanTransport,
    Origin,
    ResponseHead,
    check_request,
    origin_of,
    values_ok,
)
from gatewayd.events import Event
from gatewayd.payloads import (
    HeaderError,
    PreparedRequest,
    UnknownPlaceholder,
    build_request,
    compose,
    default_json,
)

EXCERPT_BYTES = 1024  # response_excerpt bound
REDACTED = "<redacted>"

WallClock = Callable[[], float]
ClientFactory = Callable[[UrlDestination], httpx.AsyncClient]


# --- shared helpers -----------------------------------------------------------------------


def public_target(url: str) -> str:
    """``url`` without userinfo (``https://user:pass@host/`` -> ``https://host/``)."""
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url
    netloc = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def parse_retry_after(value: str | None, now: float) -> float | None:
    """``Retry-After`` (RFC 9110 §10.2.3) as seconds from ``now``: delta-seconds or HTTP-date."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(int(value))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, when.timestamp() - now)


MIN_SECRET = 4  # shorter "secrets" would shred every message and protect nothing


def redact(text: str, secrets: Iterable[str]) -> str:
    """Replace every occurrence of each secret (longest first) in ``text``."""
    for secret in sorted({s for s in secrets if len(s) >= MIN_SECRET}, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text


def _request_secrets(request: PreparedRequest, extra: Iterable[str]) -> list[str]:
    found = list(extra)
    for name, value in request.redacted_headers():
        if value == REDACTED:
            raw = request.header(name) or ""
            found.append(raw)
            found.extend(raw.split(None, 1)[1:])  # the credential after "Bearer "/"Basic "
    password = urllib.parse.urlsplit(request.url).password
    if password:
        found.extend((password, urllib.parse.unquote(password)))
    return found


def config_secrets(config: UrlDestination) -> list[str]:
    """Every credential a destination's config holds."""
    found = list(config.headers.values())
    auth = config.auth
    if isinstance(auth, BasicAuth):
        found.append(auth.password)
    elif isinstance(auth, BearerAuth):
        found.append(auth.token)
    elif isinstance(auth, JwtAuth):
        found.append(auth.secret)
    password = urllib.parse.urlsplit(config.url).password
    if password:
        found.extend((password, urllib.parse.unquote(password)))
    return found


def _describe(exc: BaseException) -> str:
    """``Type: message``, plus the root cause (httpx often wraps an empty message around
    e.g. ``SSLCertVerificationError``)."""
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    root: BaseException = exc
    for _ in range(8):
        inner = root.__cause__ or root.__context__
        if isinstance(root, BaseExceptionGroup) and root.exceptions:
            inner = root.exceptions[0]  # trio's "all attempts to connect failed"
        if inner is None:
            break
        root = inner
    if root is not exc and str(root) and str(root) not in text:
        text += f" ({type(root).__name__}: {root})"
    return text


def _is_success(status: int, success: frozenset[int] | None) -> bool:
    return 200 <= status < 300 if success is None else status in success


_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})  # httpx sends Content-Length: 0 for these
_CACHE_SIZE = 64


class _UrlPlan:
    """What one request URL string costs to work out, kept while it repeats."""

    __slots__ = ("auth", "target", "url", "url_obj", "wires")

    def __init__(self, target: str, url: str) -> None:
        self.target = target  # userinfo stripped: results and errors
        self.url = url  # what is sent (the target when the request has its own auth)
        self.url_obj: httpx.URL | None = None  # parsed on first send (inside perform's try)
        self.auth: bytes | None = None  # Basic from the URL's userinfo, as httpx does it
        self.wires: dict[tuple[str, tuple[str, ...], bool], _Wire] = {}


class _Wire:
    """The bytes of a request that stay the same for one URL, method and header layout:
    the request line and every header line but ours, split around our values."""

    __slots__ = (
        "close",
        "connection",
        "keys",
        "length",
        "ok",
        "origin",
        "prefix",
        "suffix",
        "template",
    )

    def __init__(
        self,
        *,
        origin: Origin,
        prefix: bytes,
        keys: list[bytes],
        length: bool,
        suffix: bytes,
        ok: bool,
        close: bool,
        connection: list[int],
    ) -> None:
        self.origin = origin
        self.prefix = prefix  # request line, Host, Content-Length: 0, the client's defaults
        self.keys = keys  # b"Name: " for each of the request's own headers
        self.length = length  # add Content-Length after them
        self.suffix = suffix  # Authorization from URL userinfo, then the blank line
        self.ok = ok  # the constant parts pass the transport's checks
        self.close = close  # Connection: close among the constant headers
        self.connection = connection  # indexes of our own Connection headers
        # The whole head as one %-format (our values, then Content-Length if ``length``),
        # when these checks passed and every constant byte is ASCII.
        self.template: str | None = None
        if ok:
            try:
                parts = [prefix.decode("ascii").replace("%", "%%")]
                parts += [key.decode("ascii").replace("%", "%%") + "%s\r\n" for key in keys]
                if length:
                    parts.append("Content-Length: %d\r\n")
                parts.append(suffix.decode("ascii").replace("%", "%%"))
                self.template = "".join(parts)
            except UnicodeDecodeError:
                pass


class _HeaderLayout:
    """How the client's default headers merge with one request's header names."""

    __slots__ = ("base", "host", "keys", "length_auto", "length_set")

    def __init__(
        self, defaults: Sequence[tuple[bytes, bytes, bytes]], names: Sequence[str]
    ) -> None:
        self.keys = [name.encode("ascii") for name in names]
        lowers = {key.lower() for key in self.keys}
        self.base = [(key, value) for key, lower, value in defaults if lower not in lowers]
        self.host = b"host" not in lowers
        self.length_set = b"content-length" in lowers
        self.length_auto = not self.length_set and b"transfer-encoding" not in lowers


def _lines(pairs: Sequence[tuple[bytes, bytes]]) -> bytes:
    return b"".join([b"%s: %s\r\n" % pair for pair in pairs])


class DirectSender:
    """Sends a :class:`PreparedRequest` straight to an ``AsyncClient``'s transport.

    ``AsyncClient.build_request`` + ``send`` cost ~250 µs per request (profiled: URL
    parsing and merging, header merging twice over, the auth flow, the cookie jar, the
    redirect loop, response wrapping) for things a destination never uses or that are the
    same every time. This builds the same ``httpx.Request`` — same URL, the same headers
    in the same order (the client's defaults, ours, Host, Content-Length, Basic from URL
    userinfo), the client's timeouts — and hands it to the transport. The parsed URL and
    the header merge are kept while they repeat. Not kept: cookies (a destination's
    client never sends a receiver's cookies back). Only for plain clients
    (:meth:`for_client`); anything else goes through ``client.send``.

    Over a :class:`LeanTransport`, :meth:`encode` skips the ``httpx.Request`` too: the
    head is one %-format per URL, method and header layout (:class:`_Wire`) filled with the
    request's own header values; a new layout, or a value the transport would refuse, goes
    the long way so that the error is the one the transport raises.
    """

    def __init__(self, client: httpx.AsyncClient, transport: httpx.AsyncBaseTransport) -> None:
        self._client = client
        self._transport = transport
        self._lean = transport if isinstance(transport, LeanTransport) else None
        self._defaults = [(key, key.lower(), value) for key, value in client.headers.raw]
        self._timeout = client.timeout.as_dict()
        self._plans: dict[tuple[str, bool], _UrlPlan] = {}
        self._layouts: dict[tuple[str, ...], _HeaderLayout] = {}

    @classmethod
    def for_client(cls, client: httpx.AsyncClient) -> DirectSender | None:
        """A sender for ``client`` if skipping its machinery changes nothing we use: a
        plain ``AsyncClient`` with no auth, hooks, base URL, params, cookies, mounts
        (proxies) or redirect following."""
        transport = getattr(client, "_transport", None)
        if (
            type(client) is not httpx.AsyncClient
            or not isinstance(transport, httpx.AsyncBaseTransport)
            or client.auth is not None
            or client.follow_redirects
            or any(client.event_hooks.values())
            or str(client.base_url)
            or client.params
            or client.cookies
            or getattr(client, "_mounts", None)
        ):
            return None
        return cls(client, transport)

    def plan(self, url: str, has_auth: bool) -> _UrlPlan:
        key = (url, has_auth)
        plan = self._plans.get(key)
        if plan is None:
            if len(self._plans) >= _CACHE_SIZE:  # composed URLs differ per event
                self._plans.clear()
            target = public_target(url)
            plan = self._plans[key] = _UrlPlan(target, target if has_auth else url)
        return plan

    def _layout(self, names: tuple[str, ...]) -> _HeaderLayout:
        layout = self._layouts.get(names)
        if layout is None:
            if len(self._layouts) >= _CACHE_SIZE:
                self._layouts.clear()
            layout = self._layouts[names] = _HeaderLayout(self._defaults, names)
        return layout

    @staticmethod
    def _url(plan: _UrlPlan) -> httpx.URL | None:
        url = plan.url_obj
        if url is None:
            url = httpx.URL(plan.url)  # InvalidURL: perform's caller sees it as before
            if url.is_relative_url:
                return None
            username, password = url.username, url.password
            if username or password:
                token = base64.b64encode(f"{username}:{password}".encode())
                plan.auth = b"Basic " + token
            plan.url_obj = url
        return url

    def _raw(
        self,
        url: httpx.URL,
        plan: _UrlPlan,
        layout: _HeaderLayout,
        method: str,
        values: list[bytes],
        body: bytes,
    ) -> list[tuple[bytes, bytes]]:
        # httpx's order: Host, Content-Length: 0 (empty POST/PUT/PATCH), the client's
        # defaults not overridden, ours, Content-Length (a body), Authorization (userinfo).
        raw: list[tuple[bytes, bytes]] = [(b"Host", url.netloc)] if layout.host else []
        if layout.length_auto and not body and method in _BODY_METHODS:
            raw.append((b"Content-Length", b"0"))
        raw += layout.base
        raw += zip(layout.keys, values, strict=True)
        if body and not layout.length_set:
            raw.append((b"Content-Length", str(len(body)).encode("ascii")))
        if plan.auth is not None:
            raw.append((b"Authorization", plan.auth))
        return raw

    def build(self, request: PreparedRequest, plan: _UrlPlan) -> httpx.Request | None:
        """The request ``client.build_request`` would build (None: a relative URL, which
        only the client knows how to merge)."""
        url = self._url(plan)
        if url is None:
            return None
        own = request.headers
        layout = self._layout(tuple(name for name, _ in own))
        values = [value.encode("ascii") for _, value in own]
        method = request.method.upper()  # as httpx.Request does, before its own defaults
        raw = self._raw(url, plan, layout, method, values, request.body)
        http_request = httpx.Request(
            method,
            url,
            headers=raw,
            stream=httpx.ByteStream(request.body),
            extensions={"timeout": self._timeout},
        )
        http_request.read()  # the content is in memory: a transport may replay it
        return http_request

    def encode(self, request: PreparedRequest, plan: _UrlPlan) -> tuple[Origin, bytes, bool] | None:
        """What :meth:`build` and ``LeanTransport`` would put on the wire for ``request``:
        (origin, request bytes, asks for ``Connection: close``), with the same checks and
        errors, without building httpx objects (None: a relative URL)."""
        url = self._url(plan)
        if url is None:
            return None
        own = request.headers
        body = request.body
        method = request.method.upper()  # as httpx.Request does
        names = tuple([name for name, _ in own])
        wire = plan.wires.get((method, names, not body))
        if wire is not None and wire.template is not None:
            # The usual request: one format of the whole head, one check of our values.
            values = [value for _, value in own]
            joined = "\t".join(values)
            if joined.isascii() and values_ok(joined.encode("ascii")):
                close = wire.close
                if wire.connection:
                    close = ", ".join([values[i] for i in wire.connection]).lower() == "close"
                head = wire.template % ((*values, len(body)) if wire.length else tuple(values))
                return wire.origin, head.encode("ascii") + body, close
        # Anything else (a new layout, a value to refuse) the long way: the same checks in
        # the same order as build() and the transport, so the same errors.
        return self._encode(url, plan, own, names, method, body)

    def _encode(
        self,
        url: httpx.URL,
        plan: _UrlPlan,
        own: tuple[tuple[str, str], ...],
        names: tuple[str, ...],
        method: str,
        body: bytes,
    ) -> tuple[Origin, bytes, bool]:
        values = [value.encode("ascii") for _, value in own]
        key = (method, names, not body)
        wire = plan.wires.get(key)
        if wire is None:
            wire = self._wire(url, plan, method, names, body)
            if len(plan.wires) >= _CACHE_SIZE:
                plan.wires.clear()
            plan.wires[key] = wire
        if not wire.ok or not values_ok(b"\t".join(values)):
            layout = self._layout(names)
            raw = self._raw(url, plan, layout, method, values, body)
            check_request(method.encode("ascii", "replace"), url.raw_path, raw)  # raises
        close = wire.close
        if wire.connection:
            close = b", ".join([values[i] for i in wire.connection]).lower() == b"close"
        parts = [wire.prefix]
        parts += [name + value + b"\r\n" for name, value in zip(wire.keys, values, strict=True)]
        if wire.length:
            parts.append(b"Content-Length: %d\r\n" % len(body))
        parts.append(wire.suffix)
        parts.append(body)
        return wire.origin, b"".join(parts), close

    def _wire(
        self, url: httpx.URL, plan: _UrlPlan, method: str, names: tuple[str, ...], body: bytes
    ) -> _Wire:
        # The transport's own checks, in its order: scheme, host, then the message.
        origin = origin_of(url)
        layout = self._layout(names)
        # The pieces of _raw() around our own headers.
        before: list[tuple[bytes, bytes]] = [(b"Host", url.netloc)] if layout.host else []
        if layout.length_auto and not body and method in _BODY_METHODS:
            before.append((b"Content-Length", b"0"))
        before += layout.base
        length = bool(body) and not layout.length_set
        after = [(b"Authorization", plan.auth)] if plan.auth is not None else []
        method_bytes = method.encode("ascii", "replace")
        target = url.raw_path
        ours = [(key, b"") for key in layout.keys]
        try:
            check_request(method_bytes, target, [*before, *ours, *after])
            ok = True
        except httpx.LocalProtocolError:
            ok = False  # encode() runs the full check each time, to raise the same error
        connection = [value for name, value in before if name.lower() == b"connection"]
        return _Wire(
            origin=origin,
            prefix=b"%s %s HTTP/1.1\r\n" % (method_bytes, target) + _lines(before),
            keys=[key + b": " for key in layout.keys],
            length=length,
            suffix=_lines(after) + b"\r\n",
            ok=ok,
            close=bool(connection) and b", ".join(connection).lower() == b"close",
            connection=[i for i, key in enumerate(layout.keys) if key.lower() == b"connection"],
        )

    def exchange(
        self, request: PreparedRequest, plan: _UrlPlan, deadline: float
    ) -> Coroutine[Any, Any, tuple[ResponseHead, bytes, httpx.AsyncByteStream | None]] | None:
        """Send through a :class:`LeanTransport` without httpx's request and response
        objects: the coroutine of :meth:`LeanTransport.exchange` (returned, not awaited
        here: one coroutine frame less to resume at every wait), or None: use :meth:`send`.
        """
        lean = self._lean
        if lean is None:
            return None
        if self._client.is_closed:
            raise RuntimeError("Cannot send a request, as the client has been closed.")
        encoded = self.encode(request, plan)
        if encoded is None:
            return None
        origin, data, close = encoded
        return lean.exchange(
            origin,
            request.method.upper(),
            data,
            close=close,
            timeouts=self._timeout,
            deadline=deadline,
        )

    async def send(self, request: PreparedRequest, plan: _UrlPlan) -> httpx.Response:
        """Send and return the response, its body still to be read (``stream=True``)."""
        client = self._client
        if client.is_closed:
            raise RuntimeError("Cannot send a request, as the client has been closed.")
        http_request = self.build(request, plan)
        if http_request is None:
            http_request = client.build_request(
                request.method,
                plan.url,
                headers=list(request.headers),
                content=request.body or None,
            )
            return await client.send(http_request, stream=True)
        response = await self._transport.handle_async_request(http_request)
        if not isinstance(response.stream, httpx.AsyncByteStream):
            raise TypeError("the transport must return an AsyncByteStream")
        response.request = http_request
        return response


async def perform(
    client: httpx.AsyncClient,
    request: PreparedRequest,
    *,
    time_limit: float,
    success: frozenset[int] | None = None,
    wall_clock: WallClock = time.time,
    secrets: Iterable[str] = (),
    direct: DirectSender | None = None,
) -> AttemptResult:
    """Send ``request`` once within ``time_limit`` seconds (in total) and judge the answer.

    ``direct`` (built once per client with :meth:`DirectSender.for_client`) sends through
    the client's transport without the client's per-request machinery; same request on
    the wire, same outcomes. Over a :class:`LeanTransport` it goes further: the request
    bytes come from :meth:`DirectSender.encode`, the transport's
    :meth:`LeanTransport.exchange` takes ``start + time_limit`` as its deadline (no cancel
    scope around it) and no httpx request or response is built unless the body must be
    streamed or decoded."""
    has_auth = request.header("Authorization") is not None
    plan = direct.plan(request.url, has_auth) if direct is not None else None
    if plan is not None:
        target = plan.target
        url = plan.url
    else:
        target = public_target(request.url)
        url = target if has_auth else request.url
        # explicit auth wins over userinfo (httpx would turn that into Basic)
    start = trio.current_time()

    def result(
        outcome: Outcome,
        *,
        status_code: int | None = None,
        error: str = "",
        response_excerpt: str = "",
        retry_after: float | None = None,
    ) -> AttemptResult:
        return AttemptResult(
            outcome=outcome,
            target=target,
            status_code=status_code,
            latency_ms=(trio.current_time() - start) * 1000.0,
            # The secrets are only looked for when there is text to redact.
            error=redact(error, _request_secrets(request, secrets)) if error else "",
            response_excerpt=response_excerpt,
            retry_after=retry_after,
        )

    status: int | None = None
    body = bytearray()
    headers: httpx.Headers | None = None
    raw_headers: list[tuple[bytes, bytes]] | None = None
    try:
        exchanged = None
        if plan is not None and direct is not None:
            # The lean path: one deadline handed down instead of a cancel scope around
            # it, no httpx request or response objects (the same bytes and outcomes).
            try:
                pending = direct.exchange(request, plan, start + time_limit)
                if pending is not None:
                    exchanged = await pending
            except DeadlineExceeded:
                return result(Outcome.RETRY, error=f"timeout: no response within {time_limit:g}s")
        if exchanged is not None:
            head, first, stream = exchanged
            status = head.status
            raw_headers = head.headers
            if stream is None and not head.has(b"content-encoding"):
                body += first[:EXCERPT_BYTES]
            else:  # a body still to come, or to decode: httpx's response does it
                response = httpx.Response(
                    status,
                    headers=raw_headers,
                    stream=httpx.ByteStream(first) if stream is None else stream,
                )
                with trio.CancelScope(deadline=start + time_limit):
                    await _drain(response, body)
        else:
            with trio.move_on_after(time_limit) as scope:
                if plan is not None and direct is not None:
                    response = await direct.send(request, plan)
                else:
                    http_request = client.build_request(
                        request.method,
                        url,
                        headers=list(request.headers),
                        content=request.body or None,
                    )
                    response = await client.send(http_request, stream=True)
                status = response.status_code
                headers = response.headers
                await _drain(response, body)
            # Once a status line has arrived the receiver has decided: a body cut short by
            # the deadline or a dropped connection does not change the outcome.
            if scope.cancelled_caught and status is None:
                return result(Outcome.RETRY, error=f"timeout: no response within {time_limit:g}s")
    except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
        return result(Outcome.PERMANENT, error=_describe(exc))
    except httpx.TimeoutException as exc:
        if status is None:
            return result(Outcome.RETRY, error=f"timeout: {_describe(exc)}")
    except httpx.TransportError as exc:
        if isinstance(exc.__cause__, BlockedAddress):
            return result(Outcome.PERMANENT, error=f"blocked: {exc.__cause__}")
        if status is None:
            return result(Outcome.RETRY, error=_describe(exc))
    except httpx.HTTPError as exc:  # DecodingError and the like
        if status is None:
            return result(Outcome.RETRY, error=_describe(exc))
    assert status is not None
    excerpt = bytes(body[:EXCERPT_BYTES]).decode("utf-8", "replace")
    if _is_success(status, success):
        return result(Outcome.DELIVERED, status_code=status, response_excerpt=excerpt)
    if headers is None and raw_headers is not None:
        headers = httpx.Headers(raw_headers)
    retry_after = parse_retry_after(
        headers.get("retry-after") if headers is not None else None, wall_clock()
    )
    phrase = f" {status_reason(status)}" if status_reason(status) else ""
    return result(
        Outcome.RETRY,
        status_code=status,
        response_excerpt=excerpt,
        error=f"HTTP {status}{phrase}",
        retry_after=retry_after,
    )


async def _drain(response: httpx.Response, body: bytearray) -> None:
    """Read the body (so the connection can be reused) but keep only the start. (Breaking
    out of httpx's nested async generators would leave them to the garbage collector.)"""
    try:
        async for chunk in response.aiter_bytes():
            if len(body) < EXCERPT_BYTES:
                body += chunk[: EXCERPT_BYTES - len(body)]
    finally:
        await response.aclose()


def status_reason(status: int) -> str:
    return httpx.codes.get_reason_phrase(status)


# --- configured destinations ---------------------------------------------------------------


def make_client(config: UrlDestination, *, stock: bool = False) -> httpx.AsyncClient:
    """The destination's own small client: pool = concurrency, no redirects, no env.

    ``stock``: httpx's default transport instead of :class:`LeanTransport`."""
    size = max(1, config.concurrency)
    return httpx.AsyncClient(
        transport=None if stock else LeanTransport(max_connections=size),
        timeout=httpx.Timeout(config.timeout),
        limits=httpx.Limits(max_connections=size, max_keepalive_connections=size),
        follow_redirects=False,
        trust_env=False,
    )


class HttpDestination:
    """A ``type: url`` destination (implements ``destinations.base.Destination``)."""

    def __init__(
        self,
        config: UrlDestination,
        *,
        client_factory: ClientFactory | None = None,
        wall_clock: WallClock = time.time,
    ) -> None:
        self.name = config.name
        self.config = config
        self._client = (client_factory or make_client)(config)
        self._direct = DirectSender.for_client(self._client)
        self._wall_clock = wall_clock
        self._secrets = config_secrets(config)

    def prepare(self, event: Event, extra: Mapping[str, str] | None = None) -> PreparedRequest:
        """The request an attempt would send now (``test-destination`` prints it)."""
        return build_request(self.config, event, extra, now=self._wall_clock())

    def deliver(self, event: Event, job: Job) -> Coroutine[Any, Any, AttemptResult]:
        return self.send(event)  # send's coroutine itself: one frame less per resume

    async def send(self, event: Event, extra: Mapping[str, str] | None = None) -> AttemptResult:
        """One attempt; ``extra`` adds correlation placeholders (custom, units, ...)."""
        try:
            request = self.prepare(event, extra)
        except (UnknownPlaceholder, HeaderError) as exc:
            return AttemptResult(
                outcome=Outcome.PERMANENT,
                target=public_target(self.config.url),
                error=redact(f"cannot build request: {_describe(exc)}", self._secrets),
            )
        return await perform(
            self._client,
            request,
            time_limit=self.config.timeout,
            success=self.config.success,
            wall_clock=self._wall_clock,
            secrets=self._secrets,
            direct=self._direct,
        )

    async def aclose(self) -> None:
        await self._client.aclose()


# --- status URLs: SSRF-guarded ------------------------------------------------------------

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class BlockedAddress(httpcore.ConnectError):
    """The host resolves only to addresses a status URL may not reach."""


def parse_networks(networks: Iterable[str | Network]) -> tuple[Network, ...]:
    return tuple(
        net if not isinstance(net, str) else ipaddress.ip_network(net, strict=False)
        for net in networks
    )


def address_allowed(address: str, allow: Sequence[Network] = ()) -> bool:
    """May a status URL connect to ``address``? Globally routable unicast, or allow-listed.

    Rejects loopback, private (RFC 1918, ULA), shared (100.64/10), link-local (including
    the 169.254.169.254 metadata service), multicast, unspecified and reserved ranges, and
    IPv6 forms that embed such an IPv4 address (mapped, 6to4, NAT64).
    """
    try:
        addr = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if any(addr.version == net.version and addr in net for net in allow):
        return True
    if isinstance(addr, ipaddress.IPv6Address):
        embedded = addr.ipv4_mapped or addr.sixtofour
        if embedded is None and addr in _NAT64:
            embedded = ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
        if embedded is not None:
            return address_allowed(str(embedded), allow)
    return addr.is_global and not addr.is_multicast and not addr.is_reserved


async def resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to for TCP (numeric hosts need no lookup)."""
    infos = await trio.socket.getaddrinfo(host, port, type=trio.socket.SOCK_STREAM)
    seen: dict[str, None] = {}
    for info in infos:
        seen.setdefault(str(info[4][0]), None)
    return list(seen)


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """An httpcore network backend that connects only to permitted resolved addresses."""

    def __init__(
        self,
        allow: Sequence[Network] = (),
        *,
        resolver: Resolver = resolve,
        inner: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        self._allow = tuple(allow)
        self._resolver = resolver
        self._inner = inner or httpcore.TrioBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's signature)
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        deadline = trio.current_time() + (math.inf if timeout is None else timeout)
        try:
            with trio.fail_after(math.inf if timeout is None else timeout):
                addresses = await self._resolver(host, port)
        except trio.TooSlowError:
            raise httpcore.ConnectTimeout(f"resolving {host}") from None
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        permitted = [a for a in addresses if address_allowed(a, self._allow)]
        if not permitted:
            raise BlockedAddress(
                f"{host} resolves to no permitted address ({', '.join(addresses)})"
            )
        error: Exception | None = None
        for address in permitted:
            remaining = max(0.0, deadline - trio.current_time())
            try:
                stream = await self._inner.connect_tcp(
                    address,
                    port,
                    timeout=None if math.isinf(remaining) else remaining,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
                continue
            peer = stream.get_extra_info("server_addr")
            if peer is not None and not address_allowed(str(peer[0]), self._allow):
                await stream.aclose()  # belt and braces: what we are connected to
                raise BlockedAddress(f"{host}: connected peer {peer[0]} is not permitted")
            return stream
        assert error is not None
        raise error

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's signature)
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise BlockedAddress("unix sockets are not permitted for status URLs")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def guarded_connector(allow: Sequence[Network] = (), *, resolver: Resolver = resolve) -> Connector:
    """A :class:`LeanTransport` connector with :class:`GuardedBackend`'s policy: resolve,
    connect only to permitted addresses, check the connected peer. Refusals raise
    ``httpx.ConnectError`` caused by :class:`BlockedAddress` (:func:`perform` reads it)."""
    allowed = tuple(allow)

    def blocked(message: str) -> httpx.ConnectError:
        error = httpx.ConnectError(message)
        error.__cause__ = BlockedAddress(message)
        return error

    async def connect(host: str, port: int) -> trio.abc.Stream:
        try:
            addresses = await resolver(host, port)
        except OSError as exc:
            raise httpx.ConnectError(f"cannot resolve {host}: {exc}") from exc
        permitted = [a for a in addresses if address_allowed(a, allowed)]
        if not permitted:
            raise blocked(f"{host} resolves to no permitted address ({', '.join(addresses)})")
        error: OSError | None = None
        for address in permitted:  # the transport's connect timeout covers them all
            try:
                stream = await trio.open_tcp_stream(address, port)
            except OSError as exc:
                error = exc
                continue
            peer = stream.socket.getpeername()
            if not address_allowed(str(peer[0]), allowed):
                await trio.aclose_forcefully(stream)  # belt and braces: what we reached
                raise blocked(f"{host}: connected peer {peer[0]} is not permitted")
            return stream
        assert error is not None
        raise error

    return connect


class _GuardedTransport(httpx.AsyncHTTPTransport):
    def __init__(self, backend: GuardedBackend, *, size: int, verify: ssl.SSLContext | bool):
        super().__init__(verify=verify, trust_env=False)
        # httpx has no public knob for the network backend: replace its pool with one that
        # uses ours (the tests prove a loopback status URL is refused through this path).
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(verify=verify, trust_env=False),
            max_connections=size,
            max_keepalive_connections=size,
            network_backend=backend,
        )


class StatusUrlDelivery:
    """POSTs receipts to per-message status URLs given by API clients (seed 001's status_url).

    Only ``http``/``https``; no redirects; no proxies; the connected address must be
    globally routable unless it is in ``allow`` (the config's ``api.status_url_allow``).
    """

    def __init__(
        self,
        *,
        allow: Iterable[str | Network] = (),
        timeout: float = 10.0,
        concurrency: int = 16,
        format: Literal["json", "form"] = "json",
        wall_clock: WallClock = time.time,
        resolver: Resolver = resolve,
        verify: ssl.SSLContext | bool = True,
        stock: bool = False,
    ) -> None:
        self.allow = parse_networks(allow)
        self.timeout = timeout
        self.format: Literal["json", "form"] = format
        self._wall_clock = wall_clock
        size = max(1, concurrency)
        transport: httpx.AsyncBaseTransport
        if stock:
            backend = GuardedBackend(self.allow, resolver=resolver)
            transport = _GuardedTransport(backend, size=size, verify=verify)
        else:
            connect = guarded_connector(self.allow, resolver=resolver)
            transport = LeanTransport(max_connections=size, connect=connect, verify=verify)
        self._client = httpx.AsyncClient(
            transport=transport,
            timeout=httpx.Timeout(timeout),
            follow_redirects=False,
            trust_env=False,
        )
        self._direct = DirectSender.for_client(self._client)

    def prepare(
        self, url: str, event: Event, extra: Mapping[str, str] | None = None
    ) -> PreparedRequest:
        """The request for ``url`` (taken as given: no placeholders are rendered in it)."""
        return compose(
            method="POST",
            url=url,
            format=self.format,
            fields=default_json(event, extra),
            event_id=event.id,
            now=self._wall_clock(),
        )

    async def deliver(
        self, url: str, event: Event, extra: Mapping[str, str] | None = None
    ) -> AttemptResult:
        """One attempt to push ``event`` (a receipt, usually) to ``url``."""
        scheme = urllib.parse.urlsplit(url).scheme.lower()
        if scheme not in ("http", "https") or not urllib.parse.urlsplit(url).hostname:
            return AttemptResult(
                outcome=Outcome.PERMANENT,
                target=public_target(url),
                error="status URL must be an absolute http or https URL",
            )
        return await perform(
            self._client,
            self.prepare(url, event, extra),
            time_limit=self.timeout,
            wall_clock=self._wall_clock,
            direct=self._direct,
        )

    async def aclose(self) -> None:
        await self._client.aclose()


__all__ = [
    "BlockedAddress",
    "DirectSender",
    "GuardedBackend",
    "HttpDestination",
    "StatusUrlDelivery",
    "address_allowed",
    "guarded_connector",
    "make_client",
    "parse_retry_after",
    "perform",
    "public_target",
    "redact",
]
