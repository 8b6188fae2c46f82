"""``gatewayd test-destination``: send a sample MO or receipt to one destination and show
the request made and the response got (the seeds' "Test Callback URL" / "Test Status URL").

The sample goes through the destination's own class, so what the probe shows is what a
delivery would do: ``url`` -> :meth:`HttpDestination.prepare` and the same one-attempt
rules as :meth:`HttpDestination.send` (outcome, deadline, success statuses); ``email`` ->
:class:`SmtpDestination`; ``device`` -> :meth:`SipDestination.exchange`; ``none`` ->
nothing is sent. ``forward`` is not probed: a test would send a real SMS to a real phone.

The admin API's ``POST /v1/destinations/{name}/test`` passes the daemon's running
destination object (its current config after a reload); the command line builds one
from the config file.

Nothing printed or returned carries a secret: credential headers are replaced by
``<redacted>`` and every configured secret (auth password, bearer token, JWT secret,
header values, URL passwords, SMTP and SIP passwords) is redacted from URLs, bodies and
error texts.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import urllib.parse
from collections.abc import Iterable
from typing import Any, Literal, TextIO

import attrs
import httpx
import trio

from gatewayd.config import (
    Config,
    DestinationConfig,
    DeviceDestination,
    EmailDestination,
    ForwardDestination,
    NoneDestination,
    UrlDestination,
)
from gatewayd.destinations.base import AttemptResult, Outcome
from gatewayd.destinations.http import (
    HttpDestination,
    config_secrets,
    make_client,
    perform,
    public_target,
    redact,
)
from gatewayd.payloads import HeaderError, UnknownPlaceholder, sample_event

__all__ = ["ProbeResult", "RequestSummary", "ResponseSummary", "main", "probe_destination"]

EXCERPT_CHARS = 1024
REDACTED = "<redacted>"
_SENSITIVE_HEADER = re.compile(r"auth|key|token|secret|passw|cookie|signature", re.IGNORECASE)
_NOT_SECRET = frozenset({"idempotency-key"})  # the event id


def _sensitive(name: str) -> bool:
    return name.lower() not in _NOT_SECRET and _SENSITIVE_HEADER.search(name) is not None


Kind = Literal["mo", "dlr"]


@attrs.frozen(kw_only=True)
class RequestSummary:
    """What was sent (secrets redacted)."""

    method: str  # HTTP method, "SMTP", or the SIP method
    url: str  # URL (no userinfo), smtp://host:port to ..., or the SIP Request-URI
    headers: tuple[tuple[str, str], ...]
    body: str  # an excerpt


@attrs.frozen(kw_only=True)
class ResponseSummary:
    """What came back."""

    status: int | None  # HTTP status, SMTP reply code or SIP status
    reason: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    body: str = ""  # an excerpt


@attrs.frozen(kw_only=True)
class ProbeResult:
    destination: str
    type: str
    kind: Kind
    event_id: str
    outcome: str  # an Outcome value, or "not sent"
    ok: bool  # delivered (or nothing to send, for type none)
    latency_ms: float = 0.0
    error: str = ""
    request: RequestSummary | None = None
    response: ResponseSummary | None = None

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


class UnknownDestination(LookupError):
    """The config names no destination called that."""


def _excerpt(text: str, secrets: Iterable[str]) -> str:
    text = redact(text, secrets)
    return text if len(text) <= EXCERPT_CHARS else text[:EXCERPT_CHARS] + "…"


def _headers(
    items: Iterable[tuple[str, str]], secrets: Iterable[str]
) -> tuple[tuple[str, str], ...]:
    secret_list = list(secrets)
    return tuple(
        (name, REDACTED if _sensitive(name) else redact(value, secret_list))
        for name, value in items
    )


def query_secrets(url: str) -> list[str]:
    """Values of query parameters whose names say they are credentials (``api_key=``,
    ``token=``...): an operator who put one in a URL would not want it printed."""
    try:
        query = urllib.parse.urlsplit(url).query
    except ValueError:
        return []
    found: list[str] = []
    for name, value in urllib.parse.parse_qsl(query, keep_blank_values=False):
        if _sensitive(name):
            found += [value, urllib.parse.quote(value, safe=""), urllib.parse.quote_plus(value)]
    return found


def _result(
    dest: DestinationConfig,
    kind: Kind,
    event_id: str,
    attempt: AttemptResult,
    *,
    request: RequestSummary | None,
    response: ResponseSummary | None,
    secrets: Iterable[str],
) -> ProbeResult:
    return ProbeResult(
        destination=dest.name,
        type=dest.type,
        kind=kind,
        event_id=event_id,
        outcome=attempt.outcome.value,
        ok=attempt.outcome in (Outcome.DELIVERED, Outcome.DROPPED),
        latency_ms=round(attempt.latency_ms, 3),
        error=redact(attempt.error, secrets),
        request=request,
        response=response,
    )


async def _probe_url(config: UrlDestination, kind: Kind, destination: object | None) -> ProbeResult:
    event = sample_event(kind)
    secrets = config_secrets(config)
    dest = destination if isinstance(destination, HttpDestination) else HttpDestination(config)
    try:
        try:
            prepared = dest.prepare(event)
        except (UnknownPlaceholder, HeaderError) as exc:
            return ProbeResult(
                destination=config.name,
                type=config.type,
                kind=kind,
                event_id=event.id,
                outcome=Outcome.PERMANENT.value,
                ok=False,
                error=redact(f"cannot build request: {exc}", secrets),
            )
        secrets += query_secrets(prepared.url)
        request = RequestSummary(
            method=prepared.method,
            url=redact(public_target(prepared.url), secrets),
            headers=_headers(prepared.headers, secrets),
            body=_excerpt(prepared.body.decode("utf-8", "replace"), secrets),
        )
        # The same single attempt as HttpDestination.send, on a client of our own (one
        # connection, closed afterwards) so that the response headers can be shown and the
        # running destination's pool is left to real deliveries.
        seen: list[httpx.Response] = []

        async def keep(response: httpx.Response) -> None:
            seen.append(response)

        client = make_client(attrs.evolve(config, concurrency=1))
        client.event_hooks = {"request": [], "response": [keep]}
        async with client:
            attempt = await perform(
                client,
                prepared,
                time_limit=config.timeout,
                success=config.success,
                secrets=secrets,
            )
    finally:
        if dest is not destination:
            await dest.aclose()
    response = None
    if attempt.status_code is not None:
        got = seen[-1] if seen else None
        response = ResponseSummary(
            status=attempt.status_code,
            reason=httpx.codes.get_reason_phrase(attempt.status_code),
            headers=_headers(got.headers.items() if got is not None else (), secrets),
            body=_excerpt(attempt.response_excerpt, secrets),
        )
    return _result(
        config, kind, event.id, attempt, request=request, response=response, secrets=secrets
    )


async def _probe_email(
    config: EmailDestination, smtp_default: Any, kind: Kind, destination: object | None
) -> ProbeResult:
    from gatewayd.destinations.email import SmtpDestination, smtp_secrets

    event = sample_event(kind)
    if isinstance(destination, SmtpDestination):
        dest = destination
    else:
        try:
            dest = SmtpDestination(config, smtp=config.smtp or smtp_default)
        except ValueError as exc:
            return ProbeResult(
                destination=config.name,
                type=config.type,
                kind=kind,
                event_id=event.id,
                outcome="not sent",
                ok=False,
                error=str(exc),
            )
    secrets = smtp_secrets(dest.smtp)
    request = None
    try:
        message = dest.prepare(event)
    except (UnknownPlaceholder, ValueError, UnicodeError):
        pass  # send() reports it as the attempt's error
    else:
        body = message.get_body(("plain",))
        text = body.get_content() if body is not None else ""
        request = RequestSummary(
            method="SMTP",
            url=dest.target,
            headers=_headers(((k, str(v)) for k, v in message.items()), secrets),
            body=_excerpt(str(text), secrets),
        )
    attempt = await dest.send(event)
    response = None
    if attempt.status_code is not None or attempt.response_excerpt:
        response = ResponseSummary(
            status=attempt.status_code, body=_excerpt(attempt.response_excerpt, secrets)
        )
    return _result(
        config, kind, event.id, attempt, request=request, response=response, secrets=secrets
    )


async def _probe_device(
    config: DeviceDestination, kind: Kind, destination: object | None
) -> ProbeResult:
    from gatewayd.destinations.device import SipDestination

    event = sample_event(kind)
    dest = destination if isinstance(destination, SipDestination) else SipDestination(config)
    secrets = [s for s in (config.password,) if s]
    try:
        exchange = await dest.exchange(event)
    finally:
        if dest is not destination:
            await dest.aclose()
    request = response = None
    if exchange.transactions:
        last = exchange.transactions[-1]
        request = RequestSummary(
            method=last.request.method,
            url=redact(last.request.uri, secrets),
            headers=_headers(last.request.headers.items, secrets),
            body=_excerpt(last.request.body.decode("utf-8", "replace"), secrets),
        )
        if last.response is not None:
            response = ResponseSummary(
                status=last.response.status,
                reason=redact(last.response.reason, secrets),
                headers=_headers(last.response.headers.items, secrets),
                body=_excerpt(last.response.body.decode("utf-8", "replace"), secrets),
            )
    return _result(
        config,
        kind,
        event.id,
        exchange.result,
        request=request,
        response=response,
        secrets=secrets,
    )


async def probe_destination(
    config: Config, name: str, kind: Kind, *, destination: object | None = None
) -> ProbeResult:
    """Send a sample ``kind`` event to destination ``name`` once and report what happened.

    ``destination``: the daemon's running destination object for ``name`` (reused when it
    is of the matching class). Raises :class:`UnknownDestination`.
    """
    dest = config.destinations.get(name)
    if dest is None:
        raise UnknownDestination(name)
    if isinstance(dest, UrlDestination):
        return await _probe_url(dest, kind, destination)
    if isinstance(dest, EmailDestination):
        return await _probe_email(dest, config.smtp, kind, destination)
    if isinstance(dest, DeviceDestination):
        return await _probe_device(dest, kind, destination)
    event_id = sample_event(kind).id
    if isinstance(dest, NoneDestination):
        return ProbeResult(
            destination=name,
            type=dest.type,
            kind=kind,
            event_id=event_id,
            outcome="nothing sent",
            ok=True,
        )
    assert isinstance(dest, ForwardDestination)
    return ProbeResult(
        destination=name,
        type=dest.type,
        kind=kind,
        event_id=event_id,
        outcome="not sent",
        ok=False,
        error="forward destinations are not probed: a test would send a real SMS",
    )


# --------------------------------------------------------------------------- output


def _readable(body: str) -> str:
    """A JSON body indented; anything else as it is."""
    try:
        return json.dumps(json.loads(body), indent=2, ensure_ascii=False)
    except ValueError:
        return body


def format_result(result: ProbeResult) -> str:
    """The probe, readable: request lines with ``>``, response lines with ``<``."""
    what = "sample MO" if result.kind == "mo" else "sample receipt"
    lines = [f"destination {result.destination} ({result.type}), {what} {result.event_id}"]
    if result.request is not None:
        req = result.request
        lines.append(f"> {req.method} {req.url}")
        lines.extend(f"> {k}: {v}" for k, v in req.headers)
        if req.body:
            lines.append(">")
            lines.extend(f"> {line}" for line in _readable(req.body).splitlines())
    if result.response is not None:
        resp = result.response
        status = "" if resp.status is None else str(resp.status)
        lines.append(f"< {status} {resp.reason}".rstrip())
        lines.extend(f"< {k}: {v}" for k, v in resp.headers)
        if resp.body:
            lines.append("<")
            lines.extend(f"< {line}" for line in _readable(resp.body).splitlines())
    verdict = "OK" if result.ok else "FAILED"
    summary = f"{verdict}: {result.outcome}"
    if result.request is not None:
        summary += f" in {result.latency_ms:.1f} ms"
    if result.error:
        summary += f" ({result.error})"
    lines.append(summary)
    return "\n".join(lines)


def main(args: argparse.Namespace, stdout: TextIO | None = None) -> int:
    """``gatewayd test-destination NAME [--dlr] [--config FILE] [--json]``: 0 if delivered."""
    from gatewayd.config import ConfigError, load_config

    out = stdout or sys.stdout
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    kind: Kind = "dlr" if args.dlr else "mo"
    try:
        result = trio.run(probe_destination, config, args.name, kind)
    except UnknownDestination:
        known = ", ".join(config.destinations) or "none"
        print(
            f"gatewayd test-destination: no destination {args.name!r} (configured: {known})",
            file=sys.stderr,
        )
        return 1
    if args.json:
        out.write(json.dumps(result.to_dict(), ensure_ascii=False) + "\n")
    else:
        out.write(format_result(result) + "\n")
    out.flush()
    return 0 if result.ok else 1
