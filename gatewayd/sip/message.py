"""SIP messages (RFC 3261 §7): bytes <-> :class:`Request` / :class:`Response`. Sans-I/O.

Parsing never trusts the peer: every malformed input raises :class:`ParseError` (and only
that), whatever the bytes. Building refuses values that could break out of their place
(CR, LF or NUL in a header, a method that is not a token) with :class:`BuildError`, so
nothing taken from an SMS can inject a header.

Exceptions::

    SipError                  anything this package raises on purpose
      ParseError (ValueError) the peer sent something that is not a SIP message
      BuildError (ValueError) we tried to build something that is not a SIP message

Rules applied here, with their sections:

- start line and header fields separated by CRLF, headers end with an empty line (§7);
  header lines folded with leading whitespace are unfolded (§7.3.1);
- compact header names are expanded to their full names (§7.3.3), header names compare
  case-insensitively (§7.3.5);
- ``Content-Length`` decides where the body ends; on a datagram, bytes after it are
  discarded and a missing one means "the rest" (§18.3); a stream needs it, and
  :class:`StreamFramer` bounds the size of every message it accepts;
- :meth:`Request.to_bytes` / :meth:`Response.to_bytes` always write the true
  ``Content-Length`` (§20.14), replacing any given.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable, Mapping

import attrs

__all__ = [
    "MAX_MESSAGE_SIZE",
    "BuildError",
    "Headers",
    "Message",
    "ParseError",
    "Request",
    "Response",
    "SipError",
    "SipUri",
    "StreamFramer",
    "format_hostport",
    "header_param",
    "new_branch",
    "new_call_id",
    "new_tag",
    "parse_message",
    "parse_uri",
    "quote_string",
    "split_commas",
]

MAX_MESSAGE_SIZE = 65_535  # the largest datagram; streams are held to the same bound
MAGIC_COOKIE = "z9hG4bK"  # §8.1.1.7: every RFC 3261 branch starts with it
SIP_VERSION = "SIP/2.0"


class SipError(Exception):
    """Base class of the errors this package raises on purpose."""


class ParseError(SipError, ValueError):
    """The peer sent bytes that are not a (supported) SIP message."""


class BuildError(SipError, ValueError):
    """A message we were asked to build would not be valid SIP."""


# §7.3.3 compact forms, and the canonical spelling of the headers we read or write.
COMPACT = {
    "i": "Call-ID",
    "m": "Contact",
    "e": "Content-Encoding",
    "l": "Content-Length",
    "c": "Content-Type",
    "f": "From",
    "s": "Subject",
    "k": "Supported",
    "t": "To",
    "v": "Via",
}
_CANONICAL = {
    name.lower(): name
    for name in (
        *COMPACT.values(),
        "CSeq",
        "Max-Forwards",
        "User-Agent",
        "WWW-Authenticate",
        "Proxy-Authenticate",
        "Authorization",
        "Proxy-Authorization",
        "Retry-After",
        "Server",
        "Date",
    )
}

_TOKEN = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")  # §25.1 token
_STATUS_LINE = re.compile(r"SIP/2\.0 ([1-6][0-9][0-9]) ?(.*)")
_REQUEST_LINE = re.compile(r"([A-Za-z0-9\-.!%*_+`'~]+) (\S+) SIP/2\.0")
_FORBIDDEN = re.compile(r"[\r\n\x00]")


def canonical_name(name: str) -> str:
    """The full, conventionally spelled header name (``v`` -> ``Via``, ``cseq`` -> ``CSeq``)."""
    lower = name.lower()
    if lower in COMPACT:
        return COMPACT[lower]
    return _CANONICAL.get(lower, name)


@attrs.frozen
class Headers:
    """An ordered, case-insensitive, multi-valued header list."""

    items: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, items: Iterable[tuple[str, str]] | Mapping[str, str]) -> Headers:
        pairs = items.items() if isinstance(items, Mapping) else items
        return cls(tuple((canonical_name(k), v) for k, v in pairs))

    def get(self, name: str) -> str | None:
        """The first value of ``name`` (compact or full, any case), or None."""
        want = canonical_name(name).lower()
        for key, value in self.items:
            if key.lower() == want:
                return value
        return None

    def get_all(self, name: str) -> list[str]:
        """Every value of ``name``, in order (header lines are not split on commas)."""
        want = canonical_name(name).lower()
        return [value for key, value in self.items if key.lower() == want]

    def with_header(self, name: str, value: str) -> Headers:
        """A copy with ``name: value`` appended."""
        return Headers((*self.items, (canonical_name(name), value)))

    def replace(self, name: str, value: str) -> Headers:
        """A copy where ``name`` has the single value ``value`` (at the first one's place)."""
        want = canonical_name(name).lower()
        out: list[tuple[str, str]] = []
        placed = False
        for key, old in self.items:
            if key.lower() != want:
                out.append((key, old))
            elif not placed:
                out.append((key, value))
                placed = True
        if not placed:
            out.append((canonical_name(name), value))
        return Headers(tuple(out))

    def without(self, name: str) -> Headers:
        want = canonical_name(name).lower()
        return Headers(tuple((k, v) for k, v in self.items if k.lower() != want))


def _encode_headers(start: str, headers: Headers, body: bytes) -> bytes:
    lines = [start]
    for name, value in headers.without("Content-Length").items:
        if not _TOKEN.fullmatch(name):
            raise BuildError(f"invalid header name {name!r}")
        if _FORBIDDEN.search(value):
            raise BuildError(f"header {name} contains CR, LF or NUL")
        lines.append(f"{name}: {value}")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + body


@attrs.frozen(kw_only=True)
class Request:
    """A SIP request. ``uri`` is the Request-URI."""

    method: str
    uri: str
    headers: Headers = Headers()
    body: bytes = b""

    def to_bytes(self) -> bytes:
        if not _TOKEN.fullmatch(self.method):
            raise BuildError(f"invalid method {self.method!r}")
        if not self.uri or any(c.isspace() or c == "\x00" for c in self.uri):
            raise BuildError("invalid Request-URI")
        return _encode_headers(f"{self.method} {self.uri} {SIP_VERSION}", self.headers, self.body)


@attrs.frozen(kw_only=True)
class Response:
    """A SIP response."""

    status: int
    reason: str = ""
    headers: Headers = Headers()
    body: bytes = b""

    def to_bytes(self) -> bytes:
        if not 100 <= self.status <= 699:
            raise BuildError(f"invalid status {self.status}")
        if _FORBIDDEN.search(self.reason):
            raise BuildError("reason phrase contains CR, LF or NUL")
        return _encode_headers(
            f"{SIP_VERSION} {self.status} {self.reason}", self.headers, self.body
        )

    @property
    def provisional(self) -> bool:
        return self.status < 200


Message = Request | Response


def _content_length(value: str | None) -> int | None:
    if value is None:
        return None
    value = value.strip()
    if not value.isascii() or not value.isdigit() or len(value) > 9:
        raise ParseError(f"bad Content-Length {value[:20]!r}")
    return int(value)


def _split_head(data: bytes) -> tuple[bytes, bytes]:
    end = data.find(b"\r\n\r\n")
    if end < 0:
        raise ParseError("no end of headers (CRLF CRLF)")
    return data[:end], data[end + 4 :]


def _parse_headers(lines: list[str]) -> Headers:
    items: list[tuple[str, str]] = []
    for line in lines:
        if line[:1] in (" ", "\t"):  # §7.3.1 folding: continues the previous value
            if not items:
                raise ParseError("continuation line before any header")
            name, value = items[-1]
            items[-1] = (name, f"{value} {line.strip()}".strip())
            continue
        name, colon, value = line.partition(":")
        name = name.rstrip(" \t")
        if not colon or not _TOKEN.fullmatch(name):
            raise ParseError(f"bad header line {line[:40]!r}")
        items.append((canonical_name(name), value.strip(" \t")))
    return Headers(tuple(items))


def parse_message(data: bytes, *, stream: bool = False) -> Message:
    """Parse one whole message (a datagram, or one frame from :class:`StreamFramer`).

    ``stream``: the message came over a stream, so a missing ``Content-Length`` means 0.
    """
    if len(data) > MAX_MESSAGE_SIZE:
        raise ParseError(f"message larger than {MAX_MESSAGE_SIZE} bytes")
    data = data.lstrip(b"\r\n")  # §7.5: CRLFs before the start line are ignored
    head, rest = _split_head(data)
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ParseError("headers are not UTF-8") from exc
    lines = text.split("\r\n")
    if any(_FORBIDDEN.search(line) for line in lines):
        raise ParseError("bare CR, LF or NUL in the header section")
    start, header_lines = lines[0], lines[1:]
    headers = _parse_headers(header_lines)
    length = _content_length(headers.get("Content-Length"))
    if length is None:
        length = 0 if stream else len(rest)
    if length > len(rest):
        raise ParseError(f"body shorter than Content-Length {length}")
    body = rest[:length]  # §18.3: extra bytes on a datagram are discarded
    if m := _STATUS_LINE.fullmatch(start):
        return Response(status=int(m.group(1)), reason=m.group(2), headers=headers, body=body)
    if m := _REQUEST_LINE.fullmatch(start):
        return Request(method=m.group(1), uri=m.group(2), headers=headers, body=body)
    raise ParseError(f"bad start line {start[:60]!r}")


class StreamFramer:
    """Cuts a byte stream (TCP) into whole messages by ``Content-Length`` (§18.3).

    Feed with :meth:`feed`; take messages with :meth:`next_frame` until it returns None.
    Raises :class:`ParseError` when the stream cannot be framed (the connection is then
    unusable): headers or a message larger than ``max_size``, a bad ``Content-Length``.
    Keep-alive CRLFs between messages (RFC 5626 §3.5.1) are skipped.
    """

    def __init__(self, max_size: int = MAX_MESSAGE_SIZE) -> None:
        self.max_size = max_size
        self._buffer = bytearray()

    def feed(self, data: bytes | bytearray) -> None:
        self._buffer += data

    def next_frame(self) -> bytes | None:
        while self._buffer[:2] == b"\r\n":
            del self._buffer[:2]
        if self._buffer[:1] == b"\n":  # half of a keep-alive, or garbage: wait or fail later
            del self._buffer[:1]
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > self.max_size:
                raise ParseError(f"no end of headers within {self.max_size} bytes")
            return None
        head = bytes(self._buffer[:end])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, colon, value = line.partition(b":")
            if colon and name.strip().lower() in (b"content-length", b"l"):
                length = _content_length(value.decode("latin-1")) or 0
                break
        total = end + 4 + length
        if total > self.max_size:
            raise ParseError(f"message of {total} bytes is larger than {self.max_size}")
        if len(self._buffer) < total:
            return None
        frame = bytes(self._buffer[:total])
        del self._buffer[:total]
        return frame


# --- header values ------------------------------------------------------------------------


def split_commas(value: str) -> list[str]:
    """Split a header value on commas outside quoted strings and ``<...>`` (§7.3.1)."""
    out: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    angle = 0
    for ch in value:
        if escaped:
            escaped = False
        elif quoted and ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif not quoted and ch == "<":
            angle += 1
        elif not quoted and ch == ">" and angle:
            angle -= 1
        elif ch == "," and not quoted and not angle:
            out.append("".join(current).strip())
            current = []
            continue
        current.append(ch)
    out.append("".join(current).strip())
    return [part for part in out if part]


def _header_params_part(value: str) -> str:
    """The ``;param`` part of a header value: after ``<...>`` if present, skipping quotes."""
    quoted = escaped = False
    for index, ch in enumerate(value):
        if escaped:
            escaped = False
        elif quoted and ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif not quoted and ch == "<":
            close = value.find(">", index)
            return value[close + 1 :] if close >= 0 else ""
        elif not quoted and ch == ";":
            return value[index:]
    return ""


def header_param(value: str, name: str) -> str | None:
    """The value of parameter ``name`` of a header value (``tag`` of To, ``branch`` of Via).

    A parameter without ``=`` gives "". Parameters inside ``<...>`` belong to the URI and
    are not seen (§20.10).
    """
    want = name.lower()
    for part in _header_params_part(value).split(";")[1:]:
        key, eq, val = part.partition("=")
        if key.strip().lower() == want:
            return val.strip().strip('"') if eq else ""
    return None


def quote_string(value: str) -> str:
    """A §25.1 quoted-string: ``"`` and ``\\`` escaped, CR/LF/NUL refused."""
    if _FORBIDDEN.search(value):
        raise BuildError("quoted string contains CR, LF or NUL")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


# --- URIs ----------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class SipUri:
    """A ``sip:``/``sips:`` URI (§19.1.1), enough of it to route and address a request."""

    scheme: str
    user: str | None
    password: str | None = attrs.field(default=None, repr=False)
    host: str  # IPv6 without brackets
    port: int | None
    params: tuple[tuple[str, str], ...] = ()
    headers: str = ""  # the ``?...`` part, kept as text

    def param(self, name: str) -> str | None:
        for key, value in self.params:
            if key.lower() == name.lower():
                return value
        return None

    def for_request(self) -> str:
        """The URI as a Request-URI or To address: no password, no ``?headers`` (§19.1.5)."""
        text = f"{self.scheme}:"
        if self.user is not None:
            text += f"{self.user}@"
        text += format_hostport(self.host, self.port)
        for key, value in self.params:
            text += f";{key}={value}" if value else f";{key}"
        return text


_HOSTNAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9\-.]*[A-Za-z0-9])?\.?")


def format_hostport(host: str, port: int | None = None) -> str:
    """``host[:port]`` with IPv6 literals in brackets."""
    text = f"[{host}]" if ":" in host else host
    return text if port is None else f"{text}:{port}"


def _parse_hostport(text: str) -> tuple[str, int | None]:
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise ParseError("unterminated IPv6 reference")
        host, rest = text[1:close], text[close + 1 :]
        if not host or not re.fullmatch(r"[0-9A-Fa-f:.]+", host):
            raise ParseError(f"bad IPv6 reference {text[:60]!r}")
    else:
        host, colon, port_text = text.partition(":")
        rest = colon + port_text
        if not _HOSTNAME.fullmatch(host):
            raise ParseError(f"bad host {host[:60]!r}")
    if not rest:
        return host, None
    if not rest.startswith(":") or not rest[1:].isascii() or not rest[1:].isdigit():
        raise ParseError(f"bad port in {text[:60]!r}")
    port = int(rest[1:])
    if not 0 < port < 65536:
        raise ParseError(f"port {port} out of range")
    return host, port


def parse_hostport(text: str) -> tuple[str, int | None]:
    """``host``, ``host:port``, ``[v6]:port`` -> (host, port or None)."""
    return _parse_hostport(text.strip())


def parse_uri(text: str) -> SipUri:
    """Parse a ``sip:`` or ``sips:`` URI; raise :class:`ParseError` if it is not one."""
    text = text.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1]
    scheme, colon, rest = text.partition(":")
    scheme = scheme.lower()
    if not colon or scheme not in ("sip", "sips"):
        raise ParseError(f"not a sip: or sips: URI: {text[:60]!r}")
    rest, _, headers = rest.partition("?")
    user: str | None = None
    password: str | None = None
    if "@" in rest:
        userinfo, _, rest = rest.rpartition("@")
        user, _, pw = userinfo.partition(":")
        password = pw or None
        if not user:
            raise ParseError("empty user part")
    hostport, *param_parts = rest.split(";")
    host, port = _parse_hostport(hostport)
    params: list[tuple[str, str]] = []
    for part in param_parts:
        key, _, value = part.partition("=")
        if not key:
            raise ParseError("empty URI parameter")
        params.append((key, value))
    return SipUri(
        scheme=scheme,
        user=user,
        password=password,
        host=host,
        port=port,
        params=tuple(params),
        headers=headers,
    )


# --- identifiers (§8.1.1) -------------------------------------------------------------------


def new_branch() -> str:
    """A fresh Via branch: the RFC 3261 magic cookie plus 128 random bits (§8.1.1.7)."""
    return MAGIC_COOKIE + secrets.token_hex(16)


def new_tag() -> str:
    """A fresh From/To tag: 64 random bits (§19.3)."""
    return secrets.token_hex(8)


def new_call_id(host: str) -> str:
    """A fresh Call-ID: 128 random bits ``@host`` (§8.1.1.4)."""
    return f"{secrets.token_hex(16)}@{host}"
