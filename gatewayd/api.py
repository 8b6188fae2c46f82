"""The admin / send API listener: Starlette routes served by hypercorn on trio.

One listener (``api: {listen: 127.0.0.1:8025}``, loopback by default) carries::

    GET  /healthz                           200 while the process runs (no token)
    GET  /readyz                            200 | 503 naming what is not ready (no token)
    GET  /metrics                           Prometheus text                     admin
    GET  /v1/binds                          every bind's state, per carrier     admin
    GET  /v1/events?status=&destination=&number=&since=&limit=&cursor=      admin
    GET  /v1/events/{id}                    the event, its jobs, every attempt  admin
    POST /v1/events/{id}/replay[?destination=]   new jobs for the same event  admin
    POST /v1/dead-letters/replay[?destination=]  a new job per dead job       admin
    POST /v1/destinations/{name}/test[?kind=mo|dlr]  sample push (probe.py)  admin
    POST /v1/messages                       the send API                  send or admin
    GET  /v1/messages/{id}                  an outbound message's status  send or admin

Authentication: ``Authorization: Bearer <token>``. Admin endpoints accept the tokens in
``api.admin_tokens``; the send API accepts ``api.tokens`` and the admin tokens. No token:
401 with ``WWW-Authenticate: Bearer``; a token that is not good for the endpoint: 403.
Tokens are compared in constant time (``hmac.compare_digest``) and never logged or
echoed. Errors are JSON: ``{"error": "...", "problems": ["..."]}``.

Why hypercorn: a well-kept ASGI server with a native trio backend, so the listener is one
more task in the daemon's nursery (no thread, no second event loop), with graceful
shutdown. Starlette supplies routing and request/response objects (anyio runs on trio).

The listener lives as long as :meth:`gatewayd.app.Daemon.run`'s nursery: through the
drain (``/readyz`` then says "stopping") until the daemon cancels it.
"""

from __future__ import annotations

import datetime as dt
import enum
import functools
import hmac
import inspect
import ipaddress
import json
import logging
import socket
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, Literal

import attrs
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.config import Sockets
from hypercorn.trio.run import worker_serve
from hypercorn.utils import wrap_app
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gatewayd.config import ApiConfig, Config, parse_duration
from gatewayd.events import event_to_dict
from gatewayd.outbound import SendRejected, SendRequest
from gatewayd.store import (
    AttemptRecord,
    EventNotFound,
    EventStatus,
    EventSummary,
    JobRecord,
    StoreError,
)

if TYPE_CHECKING:
    from gatewayd.app import Daemon

__all__ = ["build_app", "serve_api", "validate_message"]

log = logging.getLogger("gatewayd.api")

MAX_BODY: Final = 64 * 1024
READY_TIMEOUT: Final = 2.0  # seconds the store gets to answer /readyz
MAX_TEXT: Final = 1600  # characters of one outbound message (before splitting)
MAX_CUSTOM: Final = 4096  # bytes of ``custom`` as compact JSON
MAX_URL: Final = 2048

Scope = Literal["admin", "send"]
Handler = Callable[[Request], Awaitable[Response]]


# --------------------------------------------------------------------------- helpers


def error(status: int, message: str, problems: Sequence[str] = (), **headers: str) -> JSONResponse:
    return JSONResponse(
        {"error": message, "problems": list(problems)}, status_code=status, headers=headers
    )


def _iso(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat().replace("+00:00", "Z")


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _token_in(token: str, tokens: Sequence[str]) -> bool:
    # Compare against every token (no early exit), as bytes, in constant time each.
    given = token.encode("utf-8", "surrogateescape")
    found = False
    for candidate in tokens:
        if hmac.compare_digest(given, candidate.encode("utf-8", "surrogateescape")):
            found = True
    return found


def _summary(item: EventSummary) -> dict[str, Any]:
    return {
        "id": item.id,
        "type": item.type,
        "carrier": item.carrier,
        "from": item.source,
        "to": item.destination,
        "received_at": item.received_at.isoformat().replace("+00:00", "Z"),
        "created_at": _iso(item.created_at),
        "status": item.status.value,
    }


def _job(job: JobRecord) -> dict[str, Any]:
    return {
        "id": job.id,
        "destination": job.destination,
        "state": job.state.value,
        "attempts": job.attempts,
        "next_at": _iso(job.next_at) if job.state.value in ("queued", "inflight") else None,
        "last_error": job.last_error,
        "created_at": _iso(job.created_at),
        "updated_at": _iso(job.updated_at),
        "replayed_by": job.replayed_by,
    }


def destination_secrets(config: Config, name: str) -> list[str]:
    """Credentials of one configured destination, to keep out of what the API answers."""
    from gatewayd.config import DeviceDestination, EmailDestination, UrlDestination
    from gatewayd.destinations.http import config_secrets
    from gatewayd.probe import query_secrets

    dest = config.destinations.get(name)
    if isinstance(dest, UrlDestination):
        return config_secrets(dest) + query_secrets(dest.url)
    if isinstance(dest, EmailDestination):
        smtp = dest.smtp or config.smtp
        return [smtp.password] if smtp is not None and smtp.password else []
    if isinstance(dest, DeviceDestination):
        return [dest.password] if dest.password else []
    return []


def _attempt(attempt: AttemptRecord, config: Config) -> dict[str, Any]:
    from gatewayd.destinations.http import redact

    secrets = destination_secrets(config, attempt.destination)
    return {
        "job_id": attempt.job_id,
        "destination": attempt.destination,
        "attempt": attempt.attempt,
        "at": _iso(attempt.at),
        "target": redact(attempt.target, secrets),
        "status_code": attempt.status_code,
        "latency_ms": attempt.latency_ms,
        "outcome": attempt.outcome,
        "error": redact(attempt.error, secrets),
        "response_excerpt": redact(attempt.response_excerpt, secrets),
    }


def parse_since(text: str, now: float) -> float:
    """``1h``/``30m``/``2d`` ago, or an ISO 8601 time (UTC if it names no zone) -> epoch."""
    try:
        return now - parse_duration(text)
    except ValueError:
        pass
    try:
        when = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"since: {text!r} is neither a duration (1h, 30m, 2d) nor an ISO 8601 time"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


async def _maybe_await(value: Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value


def _unknown_params(request: Request, allowed: Sequence[str]) -> list[str]:
    return [
        f"unknown parameter {name!r} (allowed: {', '.join(allowed) or 'none'})"
        for name in dict.fromkeys(request.query_params.keys())
        if name not in allowed
    ]


class BodyTooLarge(Exception):
    pass


async def _read_body(request: Request) -> bytes:
    """The request body, refused past :data:`MAX_BODY` bytes (before reading it all)."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_BODY:
        raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


async def _json_body(request: Request) -> tuple[Any, list[str]]:
    """The JSON body (None when empty), or the problems with it."""
    raw = await _read_body(request)
    if not raw.strip():
        return None, []
    ctype = request.headers.get("content-type", "application/json").split(";")[0].strip()
    if ctype.lower() not in ("application/json", "text/json") and not ctype.endswith("+json"):
        return None, [f"Content-Type must be application/json, not {ctype!r}"]
    try:
        return _loads(raw), []
    except ValueError as exc:
        return None, [f"body is not valid JSON: {exc}"]


def _loads(raw: bytes) -> Any:
    def no_constants(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    try:
        return json.loads(raw.decode("utf-8"), parse_constant=no_constants)
    except RecursionError:
        # absurdly nested input: a client error, not a server one
        raise ValueError("JSON nested too deeply") from None


# --------------------------------------------------------------------------- send API


_NUMBER_CHARS = frozenset("0123456789")
_ALNUM_SENDER_MAX = 11  # GSM 03.38 alphanumeric originator (TON 5): 11 characters
_ADDR_MAX = 20  # SMPP 3.4 §5.2.8: source_addr / destination_addr are C-Octet Strings of 21


def _number_problem(field: str, value: Any, *, alphanumeric: bool) -> str | None:
    if not isinstance(value, str):
        return f"{field}: must be a string"
    if not value:
        return f"{field}: must not be empty"
    digits = value[1:] if value.startswith("+") else value
    if digits and set(digits) <= _NUMBER_CHARS:
        if len(digits) > _ADDR_MAX:
            return f"{field}: at most {_ADDR_MAX} digits"
        return None
    if alphanumeric:
        if not (value.isascii() and value.replace(" ", "").isalnum()):
            return (
                f"{field}: must be a phone number (digits, optional leading +) or up to "
                f"{_ALNUM_SENDER_MAX} letters and digits"
            )
        if len(value) > _ALNUM_SENDER_MAX:
            return f"{field}: an alphanumeric sender has at most {_ALNUM_SENDER_MAX} characters"
        return None
    return f"{field}: must be a phone number (digits, optional leading +)"


def _status_url_problem(value: str, allow: Sequence[Any]) -> str | None:
    from gatewayd.destinations.http import address_allowed

    if len(value) > MAX_URL:
        return f"status_url: at most {MAX_URL} characters"
    try:
        parts = urllib.parse.urlsplit(value)
        _ = parts.port
    except ValueError as exc:
        return f"status_url: not a valid URL ({exc})"
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return "status_url: must be an absolute http or https URL"
    if parts.username is not None or parts.password is not None:
        return "status_url: must not contain credentials"
    try:
        ipaddress.ip_address(parts.hostname.split("%", 1)[0])
    except ValueError:
        return None  # a name: checked after resolution, at connect time
    if not address_allowed(parts.hostname, allow):
        return (
            "status_url: loopback, private, link-local and reserved addresses are not "
            "permitted (api.status_url_allow admits networks)"
        )
    return None


_MESSAGE_FIELDS: Final = ("from", "to", "text", "carrier", "status_url", "delivery", "custom")


@attrs.frozen(kw_only=True)
class MessageCheck:
    """The outcome of :func:`validate_message`."""

    problems: tuple[str, ...] = ()  # 400: malformed
    unknown: tuple[str, ...] = ()  # 422: well formed, names something not configured
    fields: Mapping[str, Any] = attrs.field(factory=dict)


def validate_message(body: Any, config: Config) -> MessageCheck:
    """Check a ``POST /v1/messages`` body; every problem is listed, none short-circuits."""
    if not isinstance(body, dict):
        return MessageCheck(problems=("body must be a JSON object",))
    problems: list[str] = []
    unknown: list[str] = []
    for key in body:
        if key not in _MESSAGE_FIELDS:
            problems.append(f"{key}: unknown field (allowed: {', '.join(_MESSAGE_FIELDS)})")
    values = {k: body.get(k) for k in _MESSAGE_FIELDS}
    for field in ("from", "to", "text"):
        if values[field] is None:
            problems.append(f"{field}: required")
    if values["from"] is not None:
        p = _number_problem("from", values["from"], alphanumeric=True)
        if p:
            problems.append(p)
    if values["to"] is not None:
        p = _number_problem("to", values["to"], alphanumeric=False)
        if p:
            problems.append(p)
    text = values["text"]
    if text is not None:
        if not isinstance(text, str):
            problems.append("text: must be a string")
        elif not text:
            problems.append("text: must not be empty")
        elif len(text) > MAX_TEXT:
            problems.append(f"text: at most {MAX_TEXT} characters")
        elif "\x00" in text:
            problems.append("text: must not contain NUL")
    carrier = values["carrier"]
    if carrier is not None:
        if not isinstance(carrier, str) or not carrier:
            problems.append("carrier: must be a non-empty string")
        elif carrier not in config.carriers:
            unknown.append(
                f"carrier: no carrier {carrier!r} (configured: "
                f"{', '.join(config.carriers) or 'none'})"
            )
    status_url = values["status_url"]
    if status_url is not None:
        if not isinstance(status_url, str):
            problems.append("status_url: must be a string")
        else:
            p = _status_url_problem(status_url, config.api.status_url_allow)
            if p:
                problems.append(p)
    delivery = values["delivery"]
    if delivery is not None:
        if not isinstance(delivery, str) or not delivery:
            problems.append("delivery: must be a non-empty string (a destination name)")
        elif delivery not in config.destinations:
            unknown.append(f"delivery: no destination {delivery!r}")
    if values["custom"] is not None:
        size = len(json.dumps(values["custom"], separators=(",", ":")).encode())
        if size > MAX_CUSTOM:
            problems.append(f"custom: at most {MAX_CUSTOM} bytes as JSON (got {size})")
    return MessageCheck(problems=tuple(problems), unknown=tuple(unknown), fields=values)


# --------------------------------------------------------------------------- the app


def _json_default(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, enum.Enum):
        return value.value
    if attrs.has(type(value)):
        return attrs.asdict(value)
    if isinstance(value, bytes | tuple | frozenset | set):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=_json_default))


def build_app(daemon: Daemon) -> Starlette:
    """The ASGI app for ``daemon`` (config read per request: a reload takes effect)."""

    def api() -> ApiConfig:
        return daemon.config.api

    def guarded(scope: Scope) -> Callable[[Handler], Handler]:
        def wrap(handler: Handler) -> Handler:
            @functools.wraps(handler)
            async def endpoint(request: Request) -> Response:
                token = _bearer(request)
                if token is None:
                    return error(
                        401,
                        "unauthorized",
                        ["send Authorization: Bearer <token>"],
                        **{"WWW-Authenticate": 'Bearer realm="gatewayd"'},
                    )
                cfg = api()
                allowed = _token_in(token, cfg.admin_tokens)
                if scope == "send" and not allowed:
                    allowed = _token_in(token, cfg.tokens)
                if not allowed:
                    client = request.client.host if request.client else "?"
                    log.warning(
                        "API request refused: token not valid for this endpoint",
                        extra={"path": request.url.path, "client": client},
                    )
                    return error(
                        403,
                        "forbidden",
                        [f"the token is not valid for {scope} endpoints"],
                        **{"WWW-Authenticate": 'Bearer realm="gatewayd", error="invalid_token"'},
                    )
                return await handler(request)

            return endpoint

        return wrap

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        problems: list[str] = []
        stopping = daemon.stopping
        if stopping:
            problems.append("stopping")
        if not daemon.ready.is_set():
            problems.append("starting")
        store_ok = False
        with trio.move_on_after(READY_TIMEOUT):
            try:
                await daemon.store.ping()  # writable, not merely readable
                store_ok = True
            except StoreError as exc:
                problems.append(f"store: {exc}")
        if not store_ok and not any(p.startswith("store") for p in problems):
            problems.append(f"store: no answer within {READY_TIMEOUT:g}s")
        carriers: dict[str, dict[str, Any]] = {}
        not_ready: list[str] = []
        for name in daemon.config.carriers:
            binds = daemon.binds.get(name, [])
            up = sum(1 for b in binds if b.is_bound)
            carriers[name] = {"bound": up, "binds": len(binds), "ready": up > 0}
            if up == 0:
                not_ready.append(name)
                problems.append(f"carrier {name}: no bind is bound")
        ready = not problems
        body = {
            "ready": ready,
            "store": store_ok,
            "carriers": carriers,
            "not_ready": not_ready,
            "problems": problems,
        }
        return JSONResponse(body, status_code=200 if ready else 503)

    @guarded("admin")
    async def metrics(request: Request) -> Response:
        registry = getattr(daemon, "metrics", None)
        if registry is None:
            return error(503, "metrics are not available in this build")
        body, content_type = await _maybe_await(registry.render())
        return Response(body, media_type=content_type)

    @guarded("admin")
    async def binds(request: Request) -> Response:
        out: dict[str, list[dict[str, Any]]] = {}
        for name in daemon.config.carriers:
            out[name] = [
                {
                    "name": b.name,
                    "state": b.state.value,
                    "bound": b.is_bound,
                    "window_in_use": b.window_in_use,
                    "window": b.settings.window,
                    "reconnects": b.reconnects,
                    "last_error": b.last_error,
                }
                for b in daemon.binds.get(name, [])
            ]
        return JSONResponse({"carriers": out})

    @guarded("admin")
    async def list_events(request: Request) -> Response:
        q = request.query_params
        allowed = ("status", "destination", "number", "since", "limit", "cursor")
        problems = _unknown_params(request, allowed)
        status: EventStatus | None = None
        if "status" in q:
            try:
                status = EventStatus(q["status"])
            except ValueError:
                problems.append(
                    f"status: {q['status']!r} is not one of "
                    + ", ".join(s.value for s in EventStatus)
                )
        since: float | None = None
        if "since" in q:
            try:
                since = parse_since(q["since"], daemon.wall_clock())
            except ValueError as exc:
                problems.append(str(exc))
        limit = 50
        if "limit" in q:
            try:
                limit = int(q["limit"])
                if not 1 <= limit <= 1000:
                    raise ValueError
            except ValueError:
                problems.append("limit: must be an integer from 1 to 1000")
        if problems:
            return error(400, "bad request", problems)
        page = await daemon.store.list_events(
            status=status,
            destination=q.get("destination") or None,
            number=q.get("number") or None,
            since=since,
            limit=limit,
            cursor=q.get("cursor") or None,
        )
        return JSONResponse(
            {"items": [_summary(i) for i in page.items], "next_cursor": page.next_cursor}
        )

    @guarded("admin")
    async def get_event(request: Request) -> Response:
        event_id = request.path_params["id"]
        try:
            record = await daemon.store.get_event(event_id)
        except EventNotFound:
            return error(404, "not found", [f"no event {event_id!r}"])
        return JSONResponse(
            {
                "event": _jsonable(event_to_dict(record.event)),
                "status": record.status.value,
                "created_at": _iso(record.created_at),
                "jobs": [_job(j) for j in record.jobs],
                "attempts": [_attempt(a, daemon.config) for a in record.attempts],
            }
        )

    async def _destination_param(request: Request) -> tuple[str | None, list[str]]:
        problems = _unknown_params(request, ("destination",))
        name = request.query_params.get("destination")
        body, body_problems = await _json_body(request)
        problems += body_problems
        if body is not None:
            if not isinstance(body, dict) or set(body) - {"destination"}:
                problems.append('body must be {"destination": NAME} or empty')
            elif body.get("destination") is not None:
                if name is not None and body["destination"] != name:
                    problems.append("destination given twice with different values")
                name = body["destination"]
        if name is not None:
            if not isinstance(name, str) or not name:
                problems.append("destination: must be a non-empty string")
            elif name not in daemon.config.destinations:
                problems.append(
                    f"destination: no destination {name!r} (configured: "
                    f"{', '.join(daemon.config.destinations) or 'none'})"
                )
        return (name if isinstance(name, str) else None), problems

    @guarded("admin")
    async def replay_event(request: Request) -> Response:
        event_id = request.path_params["id"]
        name, problems = await _destination_param(request)
        if problems:
            return error(400, "bad request", problems)
        try:
            job_ids = await daemon.store.replay(event_id, name)
        except EventNotFound:
            return error(404, "not found", [f"no event {event_id!r}"])
        log.info(
            "event replayed through the API",
            extra={"event_id": event_id, "destination": name, "jobs": job_ids},
        )
        return JSONResponse({"event_id": event_id, "job_ids": job_ids}, status_code=202)

    @guarded("admin")
    async def replay_dead(request: Request) -> Response:
        name, problems = await _destination_param(request)
        if problems:
            return error(400, "bad request", problems)
        count = await daemon.store.replay_dead(name)
        log.info(
            "dead letters replayed through the API", extra={"destination": name, "jobs": count}
        )
        return JSONResponse({"replayed": count, "destination": name}, status_code=202)

    @guarded("admin")
    async def test_destination(request: Request) -> Response:
        from gatewayd.probe import probe_destination

        name = request.path_params["name"]
        problems = _unknown_params(request, ("kind",))
        kind = request.query_params.get("kind", "mo")
        if kind not in ("mo", "dlr"):
            problems.append(f"kind: must be mo or dlr, not {kind!r}")
        if name not in daemon.config.destinations:
            return error(404, "not found", [f"no destination {name!r}"])
        if problems:
            return error(400, "bad request", problems)
        result = await probe_destination(
            daemon.config,
            name,
            "dlr" if kind == "dlr" else "mo",
            destination=daemon.destinations.get(name),
        )
        return JSONResponse(result.to_dict())

    @guarded("send")
    async def send_message(request: Request) -> Response:
        body, problems = await _json_body(request)
        if problems:
            return error(400, "invalid message", problems)
        check = validate_message(body, daemon.config)
        if check.problems:
            return error(400, "invalid message", [*check.problems, *check.unknown])
        if check.unknown:
            return error(422, "unknown reference", check.unknown)
        f = check.fields
        send_request = SendRequest(
            from_=f["from"],
            to=f["to"],
            text=f["text"],
            carrier=f["carrier"],
            status_url=f["status_url"],
            delivery=f["delivery"],
            custom=f["custom"],
        )
        try:
            result = await daemon.outbound.send(send_request)
        except SendRejected as exc:
            return error(int(exc.status), "message rejected", list(exc.problems))
        except StoreError as exc:
            log.error("send API: the store cannot take the message", extra={"error": str(exc)})
            return error(503, "temporarily unavailable", ["the store cannot commit; retry later"])
        return JSONResponse({"id": result.message_id, "parts": result.parts}, status_code=202)

    @guarded("send")
    async def get_message(request: Request) -> Response:
        message_id = request.path_params["id"]
        try:
            found = await daemon.outbound.get(message_id)
        except KeyError:
            return error(404, "not found", [f"no message {message_id!r}"])
        return JSONResponse(_jsonable(found))

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        response = error(exc.status_code, str(exc.detail))
        response.headers.update(exc.headers or {})
        return response

    async def too_large(request: Request, exc: Exception) -> Response:
        return error(413, "request body too large", [f"at most {MAX_BODY} bytes"])

    async def server_error(request: Request, exc: Exception) -> Response:
        log.error(
            "API request failed",
            exc_info=(type(exc), exc, exc.__traceback__),
            extra={"path": request.url.path},
        )
        return error(500, "internal error")

    routes = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/v1/binds", binds, methods=["GET"]),
        Route("/v1/events", list_events, methods=["GET"]),
        Route("/v1/events/{id}", get_event, methods=["GET"]),
        Route("/v1/events/{id}/replay", replay_event, methods=["POST"]),
        Route("/v1/dead-letters/replay", replay_dead, methods=["POST"]),
        Route("/v1/destinations/{name}/test", test_destination, methods=["POST"]),
        Route("/v1/messages", send_message, methods=["POST"]),
        Route("/v1/messages/{id}", get_message, methods=["GET"]),
    ]
    return Starlette(
        routes=routes,
        exception_handlers={
            HTTPException: http_error,
            BodyTooLarge: too_large,
            Exception: server_error,
        },
    )


# --------------------------------------------------------------------------- serving


def hypercorn_config(api: ApiConfig) -> HypercornConfig:
    """Server settings (the socket is ours: :func:`open_socket`)."""
    config = HypercornConfig()
    config.accesslog = None  # no request lines: URLs may carry ids and numbers
    config.errorlog = logging.getLogger("gatewayd.api.server")
    config.graceful_timeout = 5.0
    config.include_server_header = False
    return config


async def open_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (0: a free port), closed again on failure
    (hypercorn's own binding leaks the socket when ``bind`` fails)."""
    infos = await trio.socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    family, type_, proto, _, address = infos[0]
    sock = socket.socket(family, type_, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(128)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def serve_api(
    daemon: Daemon, *, task_status: trio.TaskStatus[int | None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve the API until cancelled; ``task_status`` gets the bound port (``api.port`` 0
    picks a free one), also kept as ``daemon.api_port``.

    If the address cannot be bound (in use, not ours) the error is logged and the daemon
    carries on without the listener (``api_port`` stays None): an admin port taken by
    something else must not stop messages from flowing.
    """
    api = daemon.config.api
    try:
        sock = await open_socket(api.host, api.port)
    except OSError as exc:
        log.error(
            "the API listener cannot start; running without it",
            extra={"listen": api.listen, "error": str(exc)},
        )
        task_status.started(None)
        return
    port = int(sock.getsockname()[1])
    app = wrap_app(build_app(daemon), 0, "asgi")  # type: ignore[arg-type]
    sockets = Sockets(secure_sockets=[], insecure_sockets=[sock], quic_sockets=[])
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(
                functools.partial(worker_serve, app, hypercorn_config(api), sockets=sockets)
            )
            daemon.api_port = port
            log.info("API listening", extra={"listen": api.listen, "port": port})
            task_status.started(port)
    finally:
        daemon.api_port = None
        sock.close()
