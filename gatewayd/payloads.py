"""Event -> HTTP request: the default JSON bodies, composed ``{{placeholder}}`` payloads, auth.

Pure: no I/O, no clock of its own (``now`` is passed in). Every value is escaped for the
place it lands, so no value can break out of it:

- in a URL (path or query) it is percent-encoded with nothing left safe
  (``quote(value, safe="")``), so ``&``, ``=``, ``#``, ``/``, ``?`` and newlines stay data;
- in a JSON body it is a JSON string (``json.dumps``);
- in a form body or a GET query string it is ``application/x-www-form-urlencoded``;
- it never reaches a header: headers are static config, checked for CR/LF/NUL here too.

Rendering is a single pass, so a value that itself contains ``{{text}}`` is sent literally.
An unknown placeholder raises :class:`UnknownPlaceholder` (a ``KeyError``); config
validation (``template_names``) rejects those before anything runs.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import hashlib
import json
import re
import urllib.parse
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

import attrs
import jwt

from gatewayd import __version__
from gatewayd.config import (
    MO_FIELDS,
    PLACEHOLDER_RE,
    PLACEHOLDERS,
    BasicAuth,
    BearerAuth,
    JwtAuth,
    UrlDestination,
)
from gatewayd.events import DeliveryReceipt, Event, MoMessage

USER_AGENT = f"gatewayd/{__version__}"
JWT_LIFETIME = 300  # seconds: exp = iat + 5 min (issue 4)

#: The keys of the default JSON bodies (issue 4); config.py keeps the one list for MOs.
MO_PLACEHOLDERS = MO_FIELDS
DLR_PLACEHOLDERS = frozenset(
    {
        "id",
        "type",
        "carrier",
        "message_id",
        "status",
        "error",
        "from",
        "to",
        "submit_date",
        "done_date",
        "received_at",
    }
)

#: Every name a template may use (config validates against the same union). Each event
#: defines all of them, "" where they do not apply (``{{keyword}}`` for a receipt, the
#: outbound-correlation names for a receipt that matched nothing), so a destination that
#: gets both MOs and receipts never fails to render.
ALL_PLACEHOLDERS = PLACEHOLDERS | MO_PLACEHOLDERS | DLR_PLACEHOLDERS

_PLACEHOLDER = PLACEHOLDER_RE
# RFC 9110 §5.1 field-name = token
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_HEADER_VALUE = re.compile(r"[\r\n\x00]")


class UnknownPlaceholder(KeyError):
    """A template names a placeholder that the event does not define."""


class HeaderError(ValueError):
    """A header name or value that must not be sent (CR/LF/NUL, not a token)."""


@attrs.frozen(kw_only=True)
class PreparedRequest:
    """One HTTP request, ready to send; ``headers`` keep their order and may repeat names."""

    method: str
    url: str
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def header(self, name: str) -> str | None:
        """The first header called ``name`` (case-insensitive), or None."""
        lname = name.lower()
        for key, value in self.headers:
            if key.lower() == lname:
                return value
        return None

    def redacted_headers(self) -> tuple[tuple[str, str], ...]:
        """Headers safe to print or log: credentials replaced by ``<redacted>``."""
        return tuple(
            (key, "<redacted>" if _SENSITIVE_HEADER.search(key) else value)
            for key, value in self.headers
        )


_SENSITIVE_HEADER = re.compile(r"auth|key|token|secret|passw|cookie|signature", re.IGNORECASE)


# --- values -------------------------------------------------------------------------------


def iso_utc(value: dt.datetime | None) -> str | None:
    """ISO 8601 in UTC with a ``Z`` suffix; None stays None."""
    if value is None:
        return None
    if value.tzinfo is not dt.UTC:
        value = value.astimezone(dt.UTC)
    return value.isoformat()[:-6] + "Z"  # a UTC datetime's isoformat ends "+00:00"


def _clean(text: str) -> str:
    """Make ``text`` encodable as UTF-8: join surrogate pairs, replace lone surrogates."""
    if text.isascii():  # O(1) in CPython, and ASCII has no surrogates
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def default_json(event: Event, extra: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The default JSON body of issue 4 (``extra`` adds correlation fields, and wins)."""
    out: dict[str, Any]
    if isinstance(event, MoMessage):
        out = {
            "id": event.id,
            "type": event.type,
            "class": event.message_class.value,
            "carrier": event.carrier,
            "from": _clean(event.source.addr),
            "to": _clean(event.destination.addr),
            "text": _clean(event.text),
            "keyword": _clean(event.keyword),
            "parts": event.parts,
            "data_coding": event.data_coding,
            "received_at": iso_utc(event.received_at),
        }
    else:
        out = {
            "id": event.id,
            "type": event.type,
            "carrier": event.carrier,
            "message_id": _clean(event.message_id),
            "status": event.status.value,
            "error": _clean(event.error),
            "from": _clean(event.source.addr),
            "to": _clean(event.destination.addr),
            "submit_date": iso_utc(event.submit_date),
            "done_date": iso_utc(event.done_date),
            "received_at": iso_utc(event.received_at),
        }
    if extra:
        out.update({key: _json_value(key, value) for key, value in extra.items()})
    return out


#: Correlation fields that are numbers in a JSON body (seed 003: ``"units": 2``).
_NUMERIC_EXTRA = frozenset({"units", "part"})
#: Fields that echo the send API's ``custom`` value, which may be any JSON value.
_CUSTOM_EXTRA = frozenset({"custom", "custom_ticket"})


def _json_value(key: str, value: str) -> Any:
    """An ``extra`` value (text, as templates need it) typed back for a JSON body."""
    if key in _NUMERIC_EXTRA and value.isdigit():
        return int(value)
    if key in _CUSTOM_EXTRA and value[:1] in ("{", "["):
        try:
            return json.loads(value)  # an object or array echoed as the client sent it
        except ValueError:
            pass
    return _clean(value)


def _as_text(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else str(value)


def placeholders(event: Event, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Every ``{{placeholder}}`` value for ``event`` as text.

    Names that do not apply to this kind of event are "" (a missing date too); ``extra``
    (outbound correlation: ``custom``, ``units``, ...) is added last and wins.
    """
    values = dict.fromkeys(ALL_PLACEHOLDERS, "")
    values["mobile"] = _clean(event.source.addr)  # the handset (seed 003's name)
    if isinstance(event, DeliveryReceipt):
        values["deliv_time"] = iso_utc(event.done_date) or ""
    for key, value in default_json(event, extra).items():
        values[key] = _as_text(value)
    return values


# --- templates ----------------------------------------------------------------------------


def template_names(template: str) -> set[str]:
    """The placeholder names used in ``template`` (for config validation)."""
    return {match.group(1) for match in _PLACEHOLDER.finditer(template)}


@functools.lru_cache(maxsize=256)
def _names(template: str) -> frozenset[str]:
    """:func:`template_names`, kept for a destination's URL (the same every request)."""
    return frozenset(template_names(template))


def render(
    template: str, values: Mapping[str, str], escape: Callable[[str], str] | None = None
) -> str:
    """Substitute every ``{{name}}`` in one pass, passing each value through ``escape``."""

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        try:
            value = values[name]
        except KeyError:
            raise UnknownPlaceholder(name) from None
        return value if escape is None else escape(value)

    return _PLACEHOLDER.sub(substitute, template)


def _quote(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def render_url(template: str, values: Mapping[str, str]) -> str:
    """Render a URL template; each value is percent-encoded (UTF-8, nothing safe)."""
    return render(template, values, _quote)


def render_fields(body: Mapping[str, str], values: Mapping[str, str]) -> dict[str, str]:
    """Render each body field template (raw values: the body encoder escapes them)."""
    return {key: render(template, values) for key, template in body.items()}


# --- requests -----------------------------------------------------------------------------


def check_header(name: str, value: str) -> None:
    """Raise :class:`HeaderError` unless ``name: value`` is a safe single header line."""
    if not _TOKEN.fullmatch(name):
        raise HeaderError(f"invalid header name {name!r}")
    if _BAD_HEADER_VALUE.search(value):
        raise HeaderError(f"header {name!r}: value contains CR, LF or NUL")


def merge_query(url: str, fields: Iterable[tuple[str, str]]) -> str:
    """Append form-encoded ``fields`` to ``url``'s query string (keeping what is there)."""
    parts = urllib.parse.urlsplit(url)
    added = urllib.parse.urlencode(list(fields), quote_via=urllib.parse.quote)
    if not added:
        return url
    query = f"{parts.query}&{added}" if parts.query else added
    return urllib.parse.urlunsplit(parts._replace(query=query))


#: ``json.dumps(value, ensure_ascii=False, separators=(",", ":"))``, built once: dumps
#: makes a new encoder per call with these arguments (~2 µs of a ~4 µs call).
_COMPACT = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def compact_json(value: Any) -> str:
    """Compact JSON text, non-ASCII kept (the same text ``json.dumps`` makes)."""
    return _COMPACT(value)


def json_bytes(value: Any) -> bytes:
    """Compact UTF-8 JSON."""
    return _COMPACT(value).encode("utf-8")


def jwt_token(secret: str, *, event_id: str, body: bytes, now: float) -> str:
    """The HS256 callback JWT: ``iat``, ``exp``, ``jti`` = event id, ``body_sha256``."""
    iat = int(now)
    claims = {
        "iat": iat,
        "exp": iat + JWT_LIFETIME,
        "jti": event_id,
        "body_sha256": hashlib.sha256(body).hexdigest(),
    }
    with warnings.catch_warnings():
        # A short secret is the operator's choice (``check`` may warn about it); PyJWT's
        # InsecureKeyLengthWarning must not turn every delivery into log noise.
        warnings.simplefilter("ignore")
        return jwt.encode(claims, secret, algorithm="HS256")


def compose(
    *,
    method: str,
    url: str,
    format: Literal["json", "form"],
    fields: Mapping[str, Any],
    event_id: str,
    headers: Mapping[str, str] | None = None,
    auth: BasicAuth | BearerAuth | JwtAuth | None = None,
    now: float,
) -> PreparedRequest:
    """Build a request from an already-rendered ``url`` and body ``fields``.

    GET sends the fields in the query string (form-encoded, appended to any query the URL
    has) with an empty body; other methods send them as JSON or as a form.
    """
    method = method.upper()
    out: list[tuple[str, str]] = [("User-Agent", USER_AGENT)]
    if method == "GET":
        url = merge_query(url, ((key, _as_text(value)) for key, value in fields.items()))
        body = b""
    elif format == "form":
        pairs = [(key, _as_text(value)) for key, value in fields.items()]
        body = urllib.parse.urlencode(pairs, quote_via=urllib.parse.quote).encode("ascii")
        out.append(("Content-Type", "application/x-www-form-urlencoded"))
    else:
        body = json_bytes(dict(fields))
        out.append(("Content-Type", "application/json"))
    out.append(("Idempotency-Key", event_id))
    for name, value in (headers or {}).items():
        check_header(name, value)
        lname = name.lower()
        out = [(key, val) for key, val in out if key.lower() != lname]
        out.append((name, value))
    if auth is not None:
        out = [(key, val) for key, val in out if key.lower() != "authorization"]
        out.append(("Authorization", _authorization(auth, event_id=event_id, body=body, now=now)))
    return PreparedRequest(method=method, url=url, headers=tuple(out), body=body)


def _authorization(
    auth: BasicAuth | BearerAuth | JwtAuth, *, event_id: str, body: bytes, now: float
) -> str:
    if isinstance(auth, BasicAuth):
        raw = f"{auth.username}:{auth.password}".encode()
        value = "Basic " + base64.b64encode(raw).decode("ascii")
    elif isinstance(auth, BearerAuth):
        value = f"Bearer {auth.token}"
    else:
        value = "Bearer " + jwt_token(auth.secret, event_id=event_id, body=body, now=now)
    check_header("Authorization", value)
    return value


def build_request(
    dest: UrlDestination,
    event: Event,
    extra: Mapping[str, str] | None = None,
    *,
    now: float,
) -> PreparedRequest:
    """The request that delivers ``event`` to ``dest`` (``now``: Unix time, for the JWT)."""
    url_names = _names(dest.url)
    if dest.body is None and not url_names:
        url = dest.url  # nothing to render: skip working out every placeholder
        values: dict[str, str] = {}
    else:
        values = placeholders(event, extra)
        url = render_url(dest.url, values)
    if dest.body is not None:
        fields = render_fields(dest.body, values)
    elif dest.method == "GET" and url_names:
        # A composed GET URL (the seeds' "compose webhook") is the whole payload: adding the
        # default fields too would repeat names such as id/status with other values.
        fields = {}
    else:
        fields = default_json(event, extra)
    return compose(
        method=dest.method,
        url=url,
        format=dest.format,
        fields=fields,
        event_id=event.id,
        headers=dest.headers,
        auth=dest.auth,
        now=now,
    )


def sample_event(kind: Literal["mo", "dlr"] = "mo", *, now: dt.datetime | None = None) -> Event:
    """A plausible MO or receipt, for ``test-destination`` and the docs."""
    from gatewayd.events import Address, MessageClass, ReceiptStatus, new_event_id

    when = now or dt.datetime.now(dt.UTC)
    if kind == "mo":
        return MoMessage(
            id=new_event_id(int(when.timestamp() * 1000)),
            carrier="sample",
            source=Address(addr="447700900123", ton=1, npi=1),
            destination=Address(addr="12345678"),
            text="Hello from gatewayd",
            raw=b"Hello from gatewayd",
            data_coding=0,
            keyword="HELLO",
            message_class=MessageClass.A2P,
            received_at=when,
        )
    return DeliveryReceipt(
        id=new_event_id(int(when.timestamp() * 1000)),
        carrier="sample",
        message_id="0123456789abcdef",
        normalized_message_id="0123456789abcdef",
        status=ReceiptStatus.DELIVRD,
        error="000",
        submit_date=when - dt.timedelta(seconds=5),
        done_date=when,
        submitted=1,
        delivered=1,
        source=Address(addr="447700900123", ton=1, npi=1),
        destination=Address(addr="12345678"),
        received_at=when,
    )
