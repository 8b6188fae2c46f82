"""YAML -> frozen attrs Config. The only module that imports yaml.

:func:`load_config` reads one YAML file and returns a :class:`Config`, or raises
:class:`ConfigError` listing *every* problem found, each with the file, the line, the key
path (``destinations.crm.retry.interval``) and what is wrong. :func:`check_main` is
``gatewayd check``.

The file is parsed with ``yaml.compose`` (libyaml's safe loader) so that every value keeps
its node and therefore its line; scalars are converted here, not by PyYAML, which also means
a number key such as ``0123`` stays ``"0123"`` instead of becoming the octal int 83.

Values may reference the environment as ``${VAR}`` (``$${`` is a literal ``${``). Secrets
(passwords, tokens, JWT secrets, header values, anything under ``auth``, and any value
that came from the environment) never appear in error messages or in reprs.

Exceptions::

    Exception
     └── ConfigError      .problems: list[Problem], str() = one "FILE:LINE: key.path: msg" a line
"""

from __future__ import annotations

import difflib
import functools
import ipaddress
import os
import re
import types
import urllib.parse
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any, Literal, TextIO, TypeVar

import attrs
import yaml

# --------------------------------------------------------------------------------------
# Templates: the one list of placeholder names (payloads.py renders with the same names).
# --------------------------------------------------------------------------------------

#: ``{{name}}`` (spaces inside the braces are allowed).
PLACEHOLDER_RE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")

#: Placeholders an MO payload defines (the default JSON body's keys).
MO_FIELDS: frozenset[str] = frozenset(
    {
        "id",
        "type",
        "class",
        "carrier",
        "from",
        "to",
        "text",
        "keyword",
        "parts",
        "data_coding",
        "received_at",
    }
)

#: Placeholders a receipt payload defines: the default JSON body's keys, then the
#: outbound-correlation ones (seeds 001/003 vocabulary), empty when the receipt matched
#: no outbound message.
DLR_FIELDS: frozenset[str] = frozenset(
    {
        "id",
        "type",
        "carrier",
        "message_id",  # the carrier's id, as received
        "status",
        "error",
        "from",
        "to",
        "submit_date",
        "done_date",
        "received_at",
        # outbound correlation (issue 5)
        "message_uuid",  # our id of the outbound message the receipt reports on
        "custom",  # the send API's `custom`, echoed
        "custom_ticket",  # the same, under seed 001's name
        "units",  # parts of the outbound message
        "part",  # which part this receipt is for (1-based)
        "submit_time",  # when we submitted it to the carrier
        "deliv_time",  # when the handset got it (done_date)
        "mobile",  # the handset's number (seed 003)
    }
)

#: A template may use any placeholder valid for either kind of event.
PLACEHOLDERS: frozenset[str] = MO_FIELDS | DLR_FIELDS


def placeholders(template: str) -> tuple[str, ...]:
    """The placeholder names used in ``template``, in order of first use."""
    return tuple(dict.fromkeys(m.group(1) for m in PLACEHOLDER_RE.finditer(template)))


# --------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """How a destination retries: ``attempts`` retries after the first try."""

    attempts: int = 3
    interval: float = 1800.0  # seconds
    backoff: Literal["fixed", "exponential"] = "fixed"
    max: float = 86400.0  # cap for exponential backoff, seconds


@attrs.frozen(kw_only=True)
class BasicAuth:
    username: str
    password: str = attrs.field(repr=False)


@attrs.frozen(kw_only=True)
class BearerAuth:
    token: str = attrs.field(repr=False)


@attrs.frozen(kw_only=True)
class JwtAuth:
    secret: str = attrs.field(repr=False)
    algorithm: Literal["HS256"] = "HS256"


Auth = BasicAuth | BearerAuth | JwtAuth


@attrs.frozen(kw_only=True)
class UrlDestination:
    """``type: url``: an HTTP callback; ``url`` and ``body`` may hold ``{{placeholder}}``s."""

    name: str
    url: str
    method: Literal["GET", "POST", "PUT", "PATCH"] = "POST"
    format: Literal["json", "form"] = "json"
    body: Mapping[str, str] | None = None  # None: the default JSON body of the event
    headers: Mapping[str, str] = attrs.field(factory=dict, repr=False)
    auth: Auth | None = None
    timeout: float = 10.0
    success: frozenset[int] | None = None  # None: any 2xx
    retry: RetryPolicy = RetryPolicy()
    concurrency: int = 4
    type: Literal["url"] = "url"


@attrs.frozen(kw_only=True)
class NoneDestination:
    """``type: none``: stored and marked dropped on purpose."""

    name: str
    retry: RetryPolicy = RetryPolicy()
    concurrency: int = 1
    type: Literal["none"] = "none"


@attrs.frozen(kw_only=True)
class SmtpConfig:
    """SMTP settings: top-level ``smtp:``, overridable per email destination."""

    host: str
    port: int = 25
    starttls: bool = False
    username: str | None = None
    password: str | None = attrs.field(default=None, repr=False)
    from_: str  # the envelope and header From


@attrs.frozen(kw_only=True)
class EmailDestination:
    """``type: email``: ``subject`` and ``body`` are templates (plain text, UTF-8)."""

    name: str
    to: tuple[str, ...]
    subject: str = "SMS from {{from}} to {{to}}"
    body: str = "{{text}}"
    # The effective settings (top-level ``smtp`` merged with this destination's override).
    # None only for records built by hand: then use ``Config.smtp``.
    smtp: SmtpConfig | None = None
    retry: RetryPolicy = RetryPolicy()
    concurrency: int = 2
    type: Literal["email"] = "email"


@attrs.frozen(kw_only=True)
class ForwardDestination:
    """``type: forward``: relay as ``submit_sm`` through ``carrier``; ``to``/``prefix`` are
    templates (``to: "{{to}}"`` relays a P2P MO to the MSISDN it was sent to)."""

    name: str
    to: str
    carrier: str
    from_: str | None = None  # template; None: the original sender
    prefix: str = ""  # template, e.g. "From {{from}}: "
    retry: RetryPolicy = RetryPolicy()
    concurrency: int = 1
    type: Literal["forward"] = "forward"


@attrs.frozen(kw_only=True)
class DeviceDestination:
    """``type: device``: a SIP ``MESSAGE`` (RFC 3428) to ``uri``."""

    name: str
    uri: str
    proxy: str | None = None  # host[:port] or a sip: URI; None: the URI's host
    transport: Literal["udp", "tcp"] = "udp"
    username: str | None = None  # digest credentials, used when challenged (401/407)
    password: str | None = attrs.field(default=None, repr=False)
    retry: RetryPolicy = RetryPolicy()
    concurrency: int = 1
    type: Literal["device"] = "device"


DestinationConfig = (
    UrlDestination | NoneDestination | EmailDestination | ForwardDestination | DeviceDestination
)


@attrs.frozen(kw_only=True)
class CarrierConfig:
    """One SMSC: ``sessions`` binds of the same kind, each with its own window."""

    name: str
    host: str
    port: int = 2775
    system_id: str
    password: str = attrs.field(default="", repr=False)
    system_type: str = ""
    address_range: str = ""
    bind: Literal["receiver", "transmitter", "transceiver"] = "transceiver"
    sessions: int = 1
    window: int = 10
    enquire_link: float = 30.0  # seconds
    response_timeout: float = 10.0
    reconnect_min: float = 1.0
    reconnect_max: float = 60.0
    tls: bool = False
    tls_verify: bool = True
    tls_ca: Path | None = None
    throughput: float | None = None  # submit_sm per second; None: unlimited
    temp_error_status: int = 0x64  # ESME_RX_T_APPN: the deliver_sm_resp when we cannot persist
    charset: Literal["gsm", "latin1", "ascii"] = "gsm"  # data_coding 0
    max_command_length: int = 65536


@attrs.frozen(kw_only=True)
class NumberConfig:
    """One of our numbers: where its MOs and the receipts of what it sent go."""

    number: str  # as written in the file
    incoming: tuple[str, ...] = ()
    delivery: tuple[str, ...] = ()
    keywords: Mapping[str, tuple[str, ...]] = attrs.field(factory=dict)  # keys upper-case


@attrs.frozen(kw_only=True)
class RoutesConfig:
    """Fallbacks when no number matched (or the number names no destination)."""

    a2p: tuple[str, ...] = ()
    p2p: tuple[str, ...] = ()
    delivery: tuple[str, ...] = ()


@attrs.frozen(kw_only=True)
class ClassifyConfig:
    a2p_max_digits: int = 8  # a destination of this many digits or fewer is A2P


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@attrs.frozen(kw_only=True)
class ApiConfig:
    """The admin/send API listener."""

    host: str = "127.0.0.1"
    port: int = 8025
    tokens: tuple[str, ...] = attrs.field(default=(), repr=False)  # the send API
    admin_tokens: tuple[str, ...] = attrs.field(default=(), repr=False)
    status_url_allow: tuple[IPNetwork, ...] = ()  # private networks status URLs may reach

    @property
    def listen(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@attrs.frozen(kw_only=True)
class RetentionConfig:
    delivered: float = 30 * 86400.0  # seconds a delivered event and its attempts are kept
    dead: float = 90 * 86400.0  # seconds a dead letter is kept


@attrs.frozen(kw_only=True)
class Config:
    """The whole configuration. Mappings are read-only and keep the file's order."""

    file: Path | None = None  # the file it was read from
    store: Path = Path("gatewayd.db")  # resolved against the config file's directory
    synchronous: Literal["FULL", "NORMAL"] = "FULL"
    # Commit batches of only attempt records and claims with synchronous=NORMAL: a power
    # loss can then cost a re-delivery, never a message (see gatewayd.store).
    relaxed_records: bool = True
    classify: ClassifyConfig = ClassifyConfig()
    carriers: Mapping[str, CarrierConfig] = attrs.field(factory=dict)
    destinations: Mapping[str, DestinationConfig] = attrs.field(factory=dict)
    numbers: Mapping[str, NumberConfig] = attrs.field(factory=dict)  # keys as written
    routes: RoutesConfig = RoutesConfig()
    smtp: SmtpConfig | None = None
    api: ApiConfig = ApiConfig()
    retention: RetentionConfig = RetentionConfig()
    reassembly_timeout: float = 300.0
    drain_grace: float = 30.0
    # A resend of a deliver_sm whose resp was lost comes within the SMSC's retry schedule
    # (seconds to minutes). Longer windows risk taking a genuine repeat ("YES" twice, with
    # no SMSC timestamp) for a resend.
    dedup_window: float = 600.0


# --------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Problem:
    """One thing wrong with a config file. ``line`` is 1-based; 0 when not about a line."""

    file: str
    line: int
    key_path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        if self.key_path:
            return f"{where}: {self.key_path}: {self.message}"
        return f"{where}: {self.message}"


class ConfigError(Exception):
    """The config is invalid; ``problems`` lists every problem, in file order."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


# --------------------------------------------------------------------------------------
# Small parsers, exported for the CLI (e.g. ``history --since 1h``)
# --------------------------------------------------------------------------------------

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*(ms|s|m|h|d|w)?\s*$")
_DURATION_UNITS = {
    "ms": 0.001,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
    "w": 604800.0,
    None: 1.0,
}


def parse_duration(text: str) -> float:
    """``500ms``, ``30s``, ``5m``, ``2h``, ``1d``, ``2w`` or a number of seconds -> seconds."""
    m = _DURATION_RE.match(text)
    if m is None:
        raise ValueError(f"bad duration {text!r}: use e.g. 500ms, 30s, 5m, 2h, 1d")
    return float(m.group(1)) * _DURATION_UNITS[m.group(2)]


_RATE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:/\s*(s|m|h))?\s*$")


def parse_rate(text: str) -> float:
    """``50/s``, ``3000/m``, ``100/h`` or a number -> per second."""
    m = _RATE_RE.match(text)
    if m is None:
        raise ValueError(f"bad rate {text!r}: use e.g. 50/s, 3000/m")
    return float(m.group(1)) / _DURATION_UNITS[m.group(2)]


def normalize_number(addr: str) -> str:
    """The routing key of a number: the address without one leading ``+``."""
    return addr[1:] if addr.startswith("+") else addr


# --------------------------------------------------------------------------------------
# The loader
# --------------------------------------------------------------------------------------

_T = TypeVar("_T")
_Conv = Callable[[yaml.Node, str], _T | None]

_NULL_TAG = "tag:yaml.org,2002:null"
_STR_TAG = "tag:yaml.org,2002:str"
_MERGE_TAG = "tag:yaml.org,2002:merge"

# Any key path containing one of these segments is secret: its value is never shown.
_SECRET_SEGMENTS = frozenset(
    {"password", "token", "tokens", "admin_tokens", "secret", "auth", "bearer", "headers"}
)
# ${VAR} is swapped for a token before YAML parsing, because in a flow mapping such as
# `{secret: ${X}}` the braces would otherwise end the plain scalar (a syntax error); the
# tokens are expanded per scalar, which knows its key path for error messages.
_ENV_SOURCE_RE = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_ENV_TOKEN_RE = re.compile(r"__gwesc__|__gwenv__([A-Za-z_][A-Za-z0-9_]*?)__gwenv__|\$\{")


def _tokenize_env(text: str) -> str:
    def repl(m: re.Match[str]) -> str:
        name = m.group(1)
        return "__gwesc__" if name is None else f"__gwenv__{name}__gwenv__"

    return _ENV_SOURCE_RE.sub(repl, text)


def _untokenize_env(text: str) -> str:
    def repl(m: re.Match[str]) -> str:
        name = m.group(1)
        if m.group(0) == "__gwesc__":
            return "$${"
        return m.group(0) if name is None else f"${{{name}}}"

    return _ENV_TOKEN_RE.sub(repl, text)


_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_NUMBER_RE = re.compile(r"^\+?[0-9]{1,20}$")
_KEYWORD_RE = re.compile(r"^\S+$")
_HEADER_NAME_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_SENTINEL = "phxqzzph"

_TOP_KEYS = (
    "store",
    "synchronous",
    "relaxed_records",
    "classify",
    "carriers",
    "destinations",
    "numbers",
    "routes",
    "smtp",
    "api",
    "retention",
    "reassembly_timeout",
    "drain_grace",
    "dedup_window",
)
_CARRIER_KEYS = (
    "host",
    "port",
    "system_id",
    "password",
    "system_type",
    "address_range",
    "bind",
    "sessions",
    "window",
    "enquire_link",
    "response_timeout",
    "reconnect",
    "tls",
    "tls_verify",
    "tls_ca",
    "throughput",
    "temp_error_status",
    "charset",
    "max_command_length",
)
_DEST_TYPES = ("url", "email", "forward", "device", "none")
_COMMON_DEST_KEYS = ("type", "retry", "concurrency")
_DEST_KEYS: dict[str, tuple[str, ...]] = {
    "url": (
        *_COMMON_DEST_KEYS,
        "url",
        "method",
        "format",
        "body",
        "headers",
        "auth",
        "timeout",
        "success",
    ),
    "email": (*_COMMON_DEST_KEYS, "to", "subject", "body", "smtp"),
    "forward": (*_COMMON_DEST_KEYS, "to", "carrier", "from", "prefix"),
    "device": (*_COMMON_DEST_KEYS, "uri", "proxy", "transport", "username", "password"),
    "none": ("type",),
}
_SMTP_KEYS = ("host", "port", "starttls", "username", "password", "from")
# SMPP 3.4 §5.2.1-§5.2.3, §4.1.1: C-Octet String maxima, without the NUL.
_SMPP_MAX = {"system_id": 15, "password": 8, "system_type": 12, "address_range": 40}


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _is_secret(path: str) -> bool:
    return any(seg.split("[", 1)[0] in _SECRET_SEGMENTS for seg in path.split("."))


def _line(node: yaml.Node | None) -> int:
    return node.start_mark.line + 1 if node is not None else 0


def _suggest(word: str, options: Collection[str]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f' (did you mean "{close[0]}"?)' if close else ""


@attrs.define
class _Scalar:
    text: str  # after ${VAR} expansion
    tag: str  # resolved after expansion
    from_env: bool


@attrs.define
class _Ref:
    """A reference to a destination or carrier name, checked once all names are known."""

    node: yaml.Node
    path: str
    name: str


class _Loader:
    def __init__(self, file: str, base_dir: Path, env: Mapping[str, str]) -> None:
        self.file = file
        self.base_dir = base_dir
        self.env = env
        self.problems: list[Problem] = []
        self.constructor = yaml.constructor.SafeConstructor()
        self.resolver = yaml.resolver.Resolver()
        self.dest_refs: list[_Ref] = []
        self.carrier_refs: list[_Ref] = []
        self.smtp_given = False  # a top-level smtp: exists (valid or not)

    # -- reporting ------------------------------------------------------------------

    def error(self, node: yaml.Node | None, path: str, message: str) -> None:
        self.problems.append(
            Problem(file=self.file, line=_line(node), key_path=path, message=message)
        )

    def show(self, value: _Scalar, path: str) -> str:
        """The value quoted for a message, or nothing when it is (or may be) a secret."""
        if value.from_env or _is_secret(path) or len(value.text) > 80:
            return ""
        return f' "{value.text}"'

    # -- structure ------------------------------------------------------------------

    def pairs(self, node: yaml.Node, path: str) -> list[tuple[str, yaml.Node, yaml.Node]] | None:
        """A mapping's (key, key node, value node), duplicates and non-string keys reported;
        ``<<`` merge keys are honoured (explicit keys win)."""
        if not isinstance(node, yaml.MappingNode):
            self.error(node, path, "must be a mapping")
            return None
        explicit: dict[str, yaml.Node] = {}
        has_merge = False
        for knode, _ in node.value:
            if knode.tag == _MERGE_TAG:
                has_merge = True
                continue
            if not isinstance(knode, yaml.ScalarNode):
                self.error(knode, path, "keys must be plain strings")
                continue
            key = _untokenize_env(str(knode.value))
            if key in explicit:
                self.error(
                    knode,
                    _join(path, key),
                    f"duplicate key (first on line {_line(explicit[key])})",
                )
            explicit[key] = knode
        if has_merge:
            try:
                self.constructor.flatten_mapping(node)
            except yaml.MarkedYAMLError as exc:
                self.error(node, path, f"bad merge (<<): {exc.problem}")
                return None
        out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for knode, vnode in node.value:
            if isinstance(knode, yaml.ScalarNode) and knode.tag != _MERGE_TAG:
                # later (explicit) entries win
                out[_untokenize_env(str(knode.value))] = (knode, vnode)
        return [(k, kn, vn) for k, (kn, vn) in out.items()]

    def mapping(
        self,
        node: yaml.Node,
        path: str,
        allowed: Collection[str],
        required: Collection[str] = (),
        pairs: list[tuple[str, yaml.Node, yaml.Node]] | None = None,
    ) -> dict[str, yaml.Node] | None:
        """A mapping with a fixed set of keys: unknown keys are errors (with a did-you-mean),
        missing required keys too. Null values are left out (the default applies)."""
        if pairs is None:
            pairs = self.pairs(node, path)
        if pairs is None:
            return None
        out: dict[str, yaml.Node] = {}
        for key, knode, vnode in pairs:
            if key not in allowed:
                self.error(knode, _join(path, key), f"unknown key{_suggest(key, allowed)}")
            elif not _is_null(vnode):
                out[key] = vnode
        for key in required:
            if key not in out:
                self.error(node, _join(path, key), "is required")
        return out

    # -- scalars ----------------------------------------------------------------------

    def scalar(self, node: yaml.Node, path: str, what: str) -> _Scalar | None:
        if not isinstance(node, yaml.ScalarNode):
            self.error(node, path, f"must be {what}")
            return None
        text = str(node.value)
        tag = str(node.tag)
        if tag != _STR_TAG or ("__gw" not in text and "${" not in text):
            return _Scalar(text=text, tag=tag, from_env=False)
        missing: list[str] = []
        malformed = False
        from_env = False

        def repl(m: re.Match[str]) -> str:
            nonlocal malformed, from_env
            if m.group(0) == "__gwesc__":
                return "${"
            name = m.group(1)
            if name is None:
                malformed = True
                return ""
            if name not in self.env:
                missing.append(name)
                return ""
            from_env = True
            return self.env[name]

        expanded = _ENV_TOKEN_RE.sub(repl, text)
        for name in dict.fromkeys(missing):
            self.error(node, path, f"environment variable {name} is not set")
        if malformed:
            self.error(node, path, "malformed ${...} reference: use ${NAME} (or $${ for ${)")
        if missing or malformed:
            return None
        if not node.style:  # a plain scalar: type it as if written in the file
            resolved = self.resolver.resolve(  # type: ignore[no-untyped-call]
                yaml.ScalarNode, expanded, (True, False)
            )
            tag = str(resolved)
        return _Scalar(text=expanded, tag=tag, from_env=from_env)

    def string(self, node: yaml.Node, path: str, *, allow_empty: bool = False) -> str | None:
        value = self.scalar(node, path, "a string")
        if value is None:
            return None
        if value.tag == _NULL_TAG or (not value.text and not allow_empty):
            self.error(node, path, "must not be empty")
            return None
        return value.text

    def integer(
        self, node: yaml.Node, path: str, *, lo: int | None = None, hi: int | None = None
    ) -> int | None:
        value = self.scalar(node, path, "an integer")
        if value is None:
            return None
        result: int | None = None
        if value.tag == "tag:yaml.org,2002:int":
            constructed = self.constructor.construct_object(yaml.ScalarNode(value.tag, value.text))
            result = int(constructed)
        elif value.tag == _STR_TAG and re.fullmatch(r"\s*[0-9]+\s*", value.text):
            result = int(value.text)
        if result is None:
            shown = self.show(value, path)
            self.error(node, path, "must be an integer" + (f", not{shown}" if shown else ""))
            return None
        if (lo is not None and result < lo) or (hi is not None and result > hi):
            rng = f"{lo}..{hi}" if hi is not None else f"at least {lo}"
            self.error(node, path, f"must be {rng}")
            return None
        return result

    def boolean(self, node: yaml.Node, path: str) -> bool | None:
        value = self.scalar(node, path, "true or false")
        if value is None:
            return None
        if value.tag != "tag:yaml.org,2002:bool":
            self.error(node, path, "must be true or false")
            return None
        return bool(self.constructor.construct_object(yaml.ScalarNode(value.tag, value.text)))

    def duration(self, node: yaml.Node, path: str, *, positive: bool = True) -> float | None:
        value = self.scalar(node, path, "a duration")
        if value is None:
            return None
        try:
            seconds = parse_duration(value.text)
        except ValueError:
            self.error(
                node,
                path,
                f"bad duration{self.show(value, path)}: use e.g. 500ms, 30s, 5m, 2h, 1d "
                "or a number of seconds",
            )
            return None
        if positive and seconds <= 0:
            self.error(node, path, "must be more than 0")
            return None
        return seconds

    def choice(
        self, node: yaml.Node, path: str, options: tuple[str, ...], *, upper: bool = False
    ) -> str | None:
        value = self.scalar(node, path, "one of " + " | ".join(options))
        if value is None:
            return None
        text = value.text.upper() if upper else value.text.lower()
        if text not in options:
            self.error(
                node,
                path,
                f"must be one of {' | '.join(options)}"
                + (f", not{shown}" if (shown := self.show(value, path)) else "")
                + _suggest(text, options),
            )
            return None
        return text

    def secret(self, node: yaml.Node, path: str) -> str | None:
        value = self.scalar(node, path, "a string")
        if value is None:
            return None
        if value.tag == _NULL_TAG or not value.text:
            self.error(node, path, "must not be empty")
            return None
        return value.text

    def strings(self, node: yaml.Node, path: str, conv: _Conv[str]) -> tuple[str, ...] | None:
        """One value or a list of them."""
        if isinstance(node, yaml.SequenceNode):
            out: list[str] = []
            ok = True
            for i, item in enumerate(node.value):
                v = conv(item, f"{path}[{i}]")
                if v is None:
                    ok = False
                else:
                    out.append(v)
            return tuple(out) if ok else None
        v = conv(node, path)
        return None if v is None else (v,)

    def dest_names(self, node: yaml.Node, path: str) -> tuple[str, ...] | None:
        """Destination names (one or a list), checked against ``destinations`` later."""
        if isinstance(node, yaml.SequenceNode):
            items = [(item, f"{path}[{i}]") for i, item in enumerate(node.value)]
        else:
            items = [(node, path)]
        out: list[str] = []
        ok = True
        for item, p in items:
            name = self.string(item, p)
            if name is None:
                ok = False
                continue
            self.dest_refs.append(_Ref(node=item, path=p, name=name))
            out.append(name)
        return tuple(out) if ok else None

    def template(self, node: yaml.Node, path: str, *, allow_empty: bool = False) -> str | None:
        value = self.scalar(node, path, "a string")
        if value is None:
            return None
        if value.tag == _NULL_TAG or (not value.text and not allow_empty):
            self.error(node, path, "must not be empty")
            return None
        quiet = value.from_env or _is_secret(path)
        return value.text if self.check_template(node, path, value.text, quiet=quiet) else None

    def check_template(self, node: yaml.Node, path: str, text: str, *, quiet: bool) -> bool:
        """Every placeholder must be known (names are not echoed when ``quiet``)."""
        ok = True
        for name in placeholders(text):
            if name not in PLACEHOLDERS:
                what = "" if quiet else f" {{{{{name}}}}}{_suggest(name, PLACEHOLDERS)}"
                self.error(node, path, f"unknown placeholder{what}")
                ok = False
        if "{{" in PLACEHOLDER_RE.sub("", text):
            self.error(node, path, "malformed placeholder: write {{name}}")
            ok = False
        return ok

    def opt(
        self,
        m: Mapping[str, yaml.Node],
        path: str,
        key: str,
        conv: Callable[[yaml.Node, str], Any],
        out: dict[str, Any],
        field: str | None = None,
    ) -> None:
        """If ``key`` is present, convert it into ``out[field or key]``."""
        if key in m:
            value = conv(m[key], _join(path, key))
            if value is not None:
                out[field or key] = value

    # -- sections -----------------------------------------------------------------------

    def load(self, root: yaml.Node | None) -> Config | None:
        if root is None:
            self.error(None, "", "the file is empty")
            return None
        top = self.mapping(root, "", _TOP_KEYS)
        if top is None:
            return None
        kw: dict[str, Any] = {}
        self.opt(top, "", "store", self.string, kw)
        if "store" in kw:
            store = Path(kw["store"]).expanduser()
            kw["store"] = store if store.is_absolute() else self.base_dir / store
        self.opt(top, "", "synchronous", partial_choice(self, ("FULL", "NORMAL"), upper=True), kw)
        self.opt(top, "", "relaxed_records", self.boolean, kw)
        if "classify" in top:
            c = self.mapping(top["classify"], "classify", ("a2p_max_digits",))
            if c is not None:
                ck: dict[str, Any] = {}
                self.opt(c, "classify", "a2p_max_digits", partial_int(self, 1, 20), ck)
                kw["classify"] = ClassifyConfig(**ck)
        for key in ("reassembly_timeout", "drain_grace", "dedup_window"):
            self.opt(top, "", key, self.duration, kw)
        if "retention" in top:
            r = self.mapping(top["retention"], "retention", ("delivered", "dead"))
            if r is not None:
                rk: dict[str, Any] = {}
                self.opt(r, "retention", "delivered", self.duration, rk)
                self.opt(r, "retention", "dead", self.duration, rk)
                kw["retention"] = RetentionConfig(**rk)
        if "smtp" in top:
            self.smtp_given = True
            smtp = self.smtp(top["smtp"], "smtp", None)
            if smtp is not None:
                kw["smtp"] = smtp
        if "api" in top:
            api = self.api(top["api"], "api")
            if api is not None:
                kw["api"] = api

        carriers: dict[str, CarrierConfig] = {}
        carrier_binds: dict[str, str] = {}
        if "carriers" in top:
            for name, knode, vnode in self.pairs(top["carriers"], "carriers") or ():
                path = _join("carriers", name)
                if self.check_name(knode, path, name):
                    carrier_binds[name] = "transceiver"
                    carrier = self.carrier(vnode, path, name)
                    if carrier is not None:
                        carriers[name] = carrier
                        carrier_binds[name] = carrier.bind
        kw["carriers"] = types.MappingProxyType(carriers)

        destinations: dict[str, DestinationConfig] = {}
        dest_names: set[str] = set()
        if "destinations" in top:
            for name, knode, vnode in self.pairs(top["destinations"], "destinations") or ():
                path = _join("destinations", name)
                if self.check_name(knode, path, name):
                    dest_names.add(name)
                    dest = self.destination(vnode, path, name, kw.get("smtp"))
                    if dest is not None:
                        destinations[name] = dest
        kw["destinations"] = types.MappingProxyType(destinations)

        if "numbers" in top:
            numbers = self.numbers(top["numbers"])
            if numbers is not None:
                kw["numbers"] = types.MappingProxyType(numbers)
        if "routes" in top:
            r = self.mapping(top["routes"], "routes", ("a2p", "p2p", "delivery"))
            if r is not None:
                rk = {}
                for key in ("a2p", "p2p", "delivery"):
                    self.opt(r, "routes", key, self.dest_names, rk)
                kw["routes"] = RoutesConfig(**rk)

        # Cross-references, now that every name is known.
        for ref in self.dest_refs:
            if ref.name not in dest_names:
                self.error(
                    ref.node,
                    ref.path,
                    f'unknown destination "{ref.name}"{_suggest(ref.name, dest_names)}',
                )
        for ref in self.carrier_refs:
            if ref.name not in carrier_binds:
                self.error(
                    ref.node,
                    ref.path,
                    f'unknown carrier "{ref.name}"{_suggest(ref.name, carrier_binds)}',
                )
            elif carrier_binds[ref.name] == "receiver":
                self.error(
                    ref.node,
                    ref.path,
                    f'carrier "{ref.name}" binds as receiver and cannot send submit_sm '
                    "(bind: transmitter or transceiver)",
                )
        if "store" not in top:
            kw["store"] = self.base_dir / "gatewayd.db"
        if self.problems:
            return None
        return Config(**kw)

    def check_name(self, knode: yaml.Node, path: str, name: str) -> bool:
        if not _NAME_RE.match(name):
            self.error(
                knode, path, "names use letters, digits, '_', '-' and '.', starting alphanumeric"
            )
            return False
        return True

    def carrier(self, node: yaml.Node, path: str, name: str) -> CarrierConfig | None:
        start = len(self.problems)
        m = self.mapping(node, path, _CARRIER_KEYS, required=("host", "system_id"))
        if m is None:
            return None
        kw: dict[str, Any] = {"name": name}
        self.opt(m, path, "host", self.string, kw)
        self.opt(m, path, "port", partial_int(self, 1, 65535), kw)
        for key in ("system_id", "system_type", "address_range"):
            self.opt(m, path, key, self.smpp_string, kw)
        self.opt(m, path, "password", self.smpp_string, kw)
        self.opt(m, path, "bind", partial_choice(self, _BINDS), kw)
        self.opt(m, path, "sessions", partial_int(self, 1, 64), kw)
        self.opt(m, path, "window", partial_int(self, 1, 1000), kw)
        self.opt(m, path, "enquire_link", self.duration, kw)
        self.opt(m, path, "response_timeout", self.duration, kw)
        if "reconnect" in m:
            rpath = _join(path, "reconnect")
            r = self.mapping(m["reconnect"], rpath, ("min", "max"))
            if r is not None:
                rk: dict[str, Any] = {}
                self.opt(r, rpath, "min", self.duration, rk)
                self.opt(r, rpath, "max", self.duration, rk)
                lo = rk.get("min", 1.0)
                hi = rk.get("max", 60.0)
                if lo > hi:
                    self.error(m["reconnect"], rpath, "min must not exceed max")
                kw["reconnect_min"], kw["reconnect_max"] = lo, hi
        self.opt(m, path, "tls", self.boolean, kw)
        self.opt(m, path, "tls_verify", self.boolean, kw)
        if "tls_ca" in m:
            ca = self.string(m["tls_ca"], _join(path, "tls_ca"))
            if ca is not None:
                ca_path = Path(ca).expanduser()
                kw["tls_ca"] = ca_path if ca_path.is_absolute() else self.base_dir / ca_path
        self.opt(m, path, "throughput", self.rate, kw)
        self.opt(m, path, "temp_error_status", self.command_status, kw)
        self.opt(m, path, "charset", partial_choice(self, ("gsm", "latin1", "ascii")), kw)
        self.opt(m, path, "max_command_length", partial_int(self, 512, 1 << 24), kw)
        if len(self.problems) > start:
            return None
        return CarrierConfig(**kw)

    def smpp_string(self, node: yaml.Node, path: str) -> str | None:
        key = path.rsplit(".", 1)[-1]
        text = self.string(node, path, allow_empty=key != "system_id")
        if text is None:
            return None
        limit = _SMPP_MAX[key]
        if len(text) > limit:
            self.error(node, path, f"must be at most {limit} characters (SMPP 3.4 §5.2)")
            return None
        if not text.isascii():
            self.error(node, path, "must be ASCII")
            return None
        return text

    def rate(self, node: yaml.Node, path: str) -> float | None:
        value = self.scalar(node, path, "a rate")
        if value is None:
            return None
        try:
            rate = parse_rate(value.text)
        except ValueError:
            self.error(node, path, f"bad rate{self.show(value, path)}: use e.g. 50/s or 3000/m")
            return None
        if rate <= 0:
            self.error(node, path, "must be more than 0")
            return None
        return rate

    def command_status(self, node: yaml.Node, path: str) -> int | None:
        value = self.scalar(node, path, "an SMPP command_status")
        if value is None:
            return None
        try:
            status = int(value.text, 0)
        except ValueError:
            self.error(node, path, "must be an SMPP command_status such as 0x64 or 100")
            return None
        if not 0 < status <= 0xFFFFFFFF:
            self.error(node, path, "must be a non-zero 32-bit status (0 is ESME_ROK, an ack)")
            return None
        return status

    def retry(self, node: yaml.Node, path: str) -> RetryPolicy | None:
        m = self.mapping(node, path, ("attempts", "interval", "backoff", "max"))
        if m is None:
            return None
        kw: dict[str, Any] = {}
        self.opt(m, path, "attempts", partial_int(self, 0, 1000), kw)
        self.opt(m, path, "interval", self.duration, kw)
        self.opt(m, path, "backoff", partial_choice(self, ("fixed", "exponential")), kw)
        self.opt(m, path, "max", self.duration, kw)
        if "interval" in kw and "max" in kw and kw["max"] < kw["interval"]:
            self.error(m["max"], _join(path, "max"), "must not be less than interval")
            return None
        return RetryPolicy(**kw)

    def destination(
        self, node: yaml.Node, path: str, name: str, smtp: SmtpConfig | None
    ) -> DestinationConfig | None:
        pairs = self.pairs(node, path)
        if pairs is None:
            return None
        type_node = next((vn for k, _, vn in pairs if k == "type"), None)
        if type_node is None:
            self.error(node, _join(path, "type"), "is required: " + " | ".join(_DEST_TYPES))
            return None
        kind = self.choice(type_node, _join(path, "type"), _DEST_TYPES)
        if kind is None:
            return None
        required = {
            "url": ("url",),
            "email": ("to",),
            "forward": ("to", "carrier"),
            "device": ("uri",),
            "none": (),
        }[kind]
        start = len(self.problems)
        m = self.mapping(node, path, _DEST_KEYS[kind], required=required, pairs=pairs)
        if m is None:
            return None
        kw: dict[str, Any] = {"name": name}
        self.opt(m, path, "retry", self.retry, kw)
        self.opt(m, path, "concurrency", partial_int(self, 1, 1000), kw)
        result: DestinationConfig | None = None
        if kind == "url":
            self.url_destination(m, path, kw)
            if len(self.problems) == start:
                result = UrlDestination(**kw)
        elif kind == "email":
            self.email_destination(node, m, path, kw, smtp)
            if len(self.problems) == start:
                result = EmailDestination(**kw)
        elif kind == "forward":
            self.forward_destination(m, path, kw)
            if len(self.problems) == start:
                result = ForwardDestination(**kw)
        elif kind == "device":
            self.device_destination(m, path, kw)
            if len(self.problems) == start:
                result = DeviceDestination(**kw)
        elif len(self.problems) == start:
            result = NoneDestination(**kw)
        return result

    def url_destination(self, m: Mapping[str, yaml.Node], path: str, kw: dict[str, Any]) -> None:
        if "url" in m:
            url = self.template(m["url"], _join(path, "url"))
            if url is not None and self.check_url(m["url"], _join(path, "url"), url):
                kw["url"] = url
        self.opt(m, path, "method", partial_choice(self, _METHODS, upper=True), kw)
        self.opt(m, path, "format", partial_choice(self, ("json", "form")), kw)
        self.opt(m, path, "timeout", self.duration, kw)
        if "body" in m:
            bpath = _join(path, "body")
            body: dict[str, str] = {}
            for key, _, vnode in self.pairs(m["body"], bpath) or ():
                value = self.template(vnode, _join(bpath, key), allow_empty=True)
                if value is not None:
                    body[key] = value
            kw["body"] = types.MappingProxyType(body)
        if "headers" in m:
            hpath = _join(path, "headers")
            headers: dict[str, str] = {}
            for key, knode, vnode in self.pairs(m["headers"], hpath) or ():
                kpath = _join(hpath, key)
                if not _HEADER_NAME_RE.match(key):
                    self.error(knode, kpath, "is not a valid header name")
                    continue
                value = self.string(vnode, kpath, allow_empty=True)
                if value is None:
                    continue
                if "\r" in value or "\n" in value or "\0" in value:
                    # A header value must never let a line break split the request.
                    self.error(vnode, kpath, "must not contain CR, LF or NUL")
                    continue
                headers[key] = value
            kw["headers"] = types.MappingProxyType(headers)
        if "auth" in m:
            auth = self.auth(m["auth"], _join(path, "auth"))
            if auth is not None:
                kw["auth"] = auth
        if "success" in m:
            codes = self.int_list(m["success"], _join(path, "success"), 100, 599)
            if codes is not None:
                kw["success"] = frozenset(codes)

    def int_list(self, node: yaml.Node, path: str, lo: int, hi: int) -> list[int] | None:
        items = (
            [(n, f"{path}[{i}]") for i, n in enumerate(node.value)]
            if isinstance(node, yaml.SequenceNode)
            else [(node, path)]
        )
        out = [self.integer(n, p, lo=lo, hi=hi) for n, p in items]
        if not out:
            self.error(node, path, "must not be empty")
            return None
        return None if None in out else [v for v in out if v is not None]

    def check_url(self, node: yaml.Node, path: str, url: str) -> bool:
        if any(c in url for c in "\r\n\t\0 "):
            self.error(node, path, "must not contain spaces or control characters")
            return False
        probe = PLACEHOLDER_RE.sub(_SENTINEL, url)
        try:
            parts = urllib.parse.urlsplit(probe)
            host = parts.hostname
            _ = parts.port
        except ValueError:
            self.error(node, path, "is not a valid URL")
            return False
        if parts.scheme not in ("http", "https"):
            self.error(node, path, "must be an http:// or https:// URL")
            return False
        if not host:
            self.error(node, path, "has no host")
            return False
        if _SENTINEL in parts.scheme or _SENTINEL in parts.netloc.lower():
            self.error(node, path, "placeholders are not allowed in the scheme, host or port")
            return False
        return True

    def auth(self, node: yaml.Node, path: str) -> Auth | None:
        m = self.mapping(node, path, ("jwt", "basic", "bearer"))
        if m is None:
            return None
        if len(m) != 1:
            self.error(node, path, "must have exactly one of jwt, basic, bearer")
            return None
        kind, vnode = next(iter(m.items()))
        sub = _join(path, kind)
        if kind == "bearer":
            token = self.secret(vnode, sub)
            return None if token is None else BearerAuth(token=token)
        if kind == "jwt":
            j = self.mapping(vnode, sub, ("secret", "algorithm"), required=("secret",))
            if j is None:
                return None
            jk: dict[str, Any] = {}
            self.opt(j, sub, "secret", self.secret, jk)
            self.opt(j, sub, "algorithm", partial_choice(self, ("HS256",), upper=True), jk)
            return JwtAuth(**jk) if "secret" in jk and len(jk) == len(j) else None
        b = self.mapping(vnode, sub, ("username", "password"), required=("username", "password"))
        if b is None:
            return None
        bk: dict[str, Any] = {}
        self.opt(b, sub, "username", self.string, bk)
        self.opt(b, sub, "password", self.secret, bk)
        if "username" in bk and ":" in bk["username"]:
            self.error(b["username"], _join(sub, "username"), "must not contain ':' (RFC 7617)")
            return None
        return BasicAuth(**bk) if len(bk) == 2 else None

    def email_address(self, node: yaml.Node, path: str) -> str | None:
        text = self.string(node, path)
        if text is None:
            return None
        if "@" not in text or any(c.isspace() or c in "<>,;\0" for c in text):
            self.error(node, path, "is not an email address (user@example.com)")
            return None
        return text

    def smtp(self, node: yaml.Node, path: str, base: SmtpConfig | None) -> SmtpConfig | None:
        required = ("host", "from") if base is None else ()
        start = len(self.problems)
        m = self.mapping(node, path, _SMTP_KEYS, required=required)
        if m is None:
            return None
        kw: dict[str, Any] = attrs.asdict(base, recurse=False) if base is not None else {}
        self.opt(m, path, "host", self.string, kw)
        self.opt(m, path, "port", partial_int(self, 1, 65535), kw)
        self.opt(m, path, "starttls", self.boolean, kw)
        self.opt(m, path, "username", self.string, kw)
        self.opt(m, path, "password", self.secret, kw)
        self.opt(m, path, "from", self.email_address, kw, field="from_")
        if kw.get("password") and not kw.get("username"):
            self.error(node, _join(path, "username"), "is required with a password")
        if len(self.problems) > start:
            return None
        return SmtpConfig(**kw)

    def email_destination(
        self,
        node: yaml.Node,
        m: Mapping[str, yaml.Node],
        path: str,
        kw: dict[str, Any],
        smtp: SmtpConfig | None,
    ) -> None:
        self.opt(m, path, "to", functools.partial(self.strings, conv=self.email_address), kw)
        self.opt(m, path, "subject", self.template, kw)
        if "subject" in kw and ("\r" in kw["subject"] or "\n" in kw["subject"]):
            self.error(m["subject"], _join(path, "subject"), "must be one line")
        self.opt(m, path, "body", self.template, kw)
        if "smtp" in m:
            override = self.smtp(m["smtp"], _join(path, "smtp"), smtp)
            if override is not None:
                kw["smtp"] = override
        elif smtp is not None:
            kw["smtp"] = smtp
        elif not self.smtp_given:  # (an invalid top-level smtp: is reported on its own)
            self.error(node, path, "needs SMTP settings: a top-level smtp: or its own smtp:")

    def forward_destination(
        self, m: Mapping[str, yaml.Node], path: str, kw: dict[str, Any]
    ) -> None:
        for key, field in (("to", "to"), ("from", "from_")):
            if key in m:
                kpath = _join(path, key)
                value = self.template(m[key], kpath)
                if value is None:
                    continue
                if placeholders(value) or _NUMBER_RE.match(value):
                    kw[field] = value
                elif key == "from" and re.fullmatch(r"[A-Za-z0-9 ]{1,11}", value):
                    kw[field] = value  # an alphanumeric sender id (GSM 03.40: 11 characters)
                else:
                    self.error(m[key], kpath, "must be a phone number or a template")
        self.opt(m, path, "prefix", functools.partial(self.template, allow_empty=True), kw)
        if "carrier" in m:
            cpath = _join(path, "carrier")
            carrier = self.string(m["carrier"], cpath)
            if carrier is not None:
                self.carrier_refs.append(_Ref(node=m["carrier"], path=cpath, name=carrier))
                kw["carrier"] = carrier

    def device_destination(self, m: Mapping[str, yaml.Node], path: str, kw: dict[str, Any]) -> None:
        if "uri" in m:
            upath = _join(path, "uri")
            uri = self.string(m["uri"], upath)
            if uri is not None:
                if re.fullmatch(r"sips?:[^@\s]+@[^@\s;?]+(?:[;?]\S*)?", uri) is None:
                    self.error(
                        m["uri"], upath, "must be a SIP URI such as sip:desk@pbx.example.com"
                    )
                else:
                    kw["uri"] = uri
        self.opt(m, path, "proxy", self.string, kw)
        self.opt(m, path, "transport", partial_choice(self, ("udp", "tcp")), kw)
        self.opt(m, path, "username", self.string, kw)
        self.opt(m, path, "password", self.secret, kw)
        if "password" in m and "username" not in m:
            self.error(m["password"], _join(path, "username"), "is required with a password")

    def api(self, node: yaml.Node, path: str) -> ApiConfig | None:
        start = len(self.problems)
        m = self.mapping(node, path, ("listen", "tokens", "admin_tokens", "status_url_allow"))
        if m is None:
            return None
        kw: dict[str, Any] = {}
        if "listen" in m:
            lpath = _join(path, "listen")
            listen = self.string(m["listen"], lpath)
            if listen is not None:
                hostport = _split_listen(listen)
                if hostport is None:
                    self.error(m["listen"], lpath, "must be HOST:PORT, e.g. 127.0.0.1:8025")
                else:
                    kw["host"], kw["port"] = hostport
        for key in ("tokens", "admin_tokens"):
            self.opt(m, path, key, functools.partial(self.strings, conv=self.secret), kw)
        if "status_url_allow" in m:
            nets = self.strings(
                m["status_url_allow"], _join(path, "status_url_allow"), self.network
            )
            if nets is not None:
                kw["status_url_allow"] = tuple(ipaddress.ip_network(n) for n in nets)
        if len(self.problems) > start:
            return None
        return ApiConfig(**kw)

    def network(self, node: yaml.Node, path: str) -> str | None:
        text = self.string(node, path)
        if text is None:
            return None
        try:
            return str(ipaddress.ip_network(text, strict=False))
        except ValueError:
            self.error(node, path, "must be an IP network such as 10.0.0.0/8")
            return None

    def numbers(self, node: yaml.Node) -> dict[str, NumberConfig] | None:
        pairs = self.pairs(node, "numbers")
        if pairs is None:
            return None
        out: dict[str, NumberConfig] = {}
        seen: dict[str, tuple[str, yaml.Node]] = {}
        for number, knode, vnode in pairs:
            path = _join("numbers", number)
            if not _NUMBER_RE.match(number):
                self.error(knode, path, "must be digits, optionally after one '+'")
                continue
            key = normalize_number(number)
            if key in seen:
                first, first_node = seen[key]
                self.error(
                    knode,
                    path,
                    f'duplicate number: same as "{first}" on line {_line(first_node)}',
                )
                continue
            seen[key] = (number, knode)
            start = len(self.problems)
            m = self.mapping(vnode, path, ("incoming", "delivery", "keywords"))
            if m is None:
                continue
            kw: dict[str, Any] = {"number": number}
            self.opt(m, path, "incoming", self.dest_names, kw)
            self.opt(m, path, "delivery", self.dest_names, kw)
            if "keywords" in m:
                kw["keywords"] = types.MappingProxyType(
                    self.keywords(m["keywords"], _join(path, "keywords"))
                )
            if len(self.problems) == start:
                out[number] = NumberConfig(**kw)
        return out

    def keywords(self, node: yaml.Node, path: str) -> dict[str, tuple[str, ...]]:
        out: dict[str, tuple[str, ...]] = {}
        first: dict[str, tuple[str, yaml.Node]] = {}
        for word, knode, vnode in self.pairs(node, path) or ():
            kpath = _join(path, word)
            if not _KEYWORD_RE.match(word):
                self.error(knode, kpath, "a keyword is one word")
                continue
            upper = word.upper()
            if upper in first:
                other, other_node = first[upper]
                self.error(
                    knode,
                    kpath,
                    f'duplicate keyword: same as "{other}" on line {_line(other_node)} '
                    "(keywords ignore case)",
                )
                continue
            first[upper] = (word, knode)
            names = self.dest_names(vnode, kpath)
            if names is not None:
                out[upper] = names
        return out


_BINDS = ("receiver", "transmitter", "transceiver")
_METHODS = ("GET", "POST", "PUT", "PATCH")


def partial_int(loader: _Loader, lo: int, hi: int) -> Callable[[yaml.Node, str], int | None]:
    return functools.partial(loader.integer, lo=lo, hi=hi)


def partial_choice(
    loader: _Loader, options: tuple[str, ...], *, upper: bool = False
) -> Callable[[yaml.Node, str], str | None]:
    return functools.partial(loader.choice, options=options, upper=upper)


def _is_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == _NULL_TAG


def _split_listen(listen: str) -> tuple[str, int] | None:
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([^:\[\]\s]+):(\d{1,5})", listen)
    if m is None:
        return None
    host = m.group(1) or m.group(3)
    port = int(m.group(2) or m.group(4))
    if not 0 <= port <= 65535:  # 0: any free port (the chosen one is logged)
        return None
    return host, port


_LOADER_CLASS: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def loads_config(
    text: str,
    *,
    file: str = "<config>",
    base_dir: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> Config:
    """Parse a config from a string (``base_dir`` anchors relative paths: default cwd)."""
    loader = _Loader(
        file, base_dir if base_dir is not None else Path.cwd(), os.environ if env is None else env
    )
    try:
        root = yaml.compose(_tokenize_env(text), Loader=_LOADER_CLASS)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 0
        what = " ".join(str(s) for s in (exc.context, exc.problem) if s)
        raise ConfigError(
            [Problem(file=file, line=line, key_path="", message=f"YAML syntax error: {what}")]
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(
            [Problem(file=file, line=0, key_path="", message=f"YAML error: {exc}")]
        ) from None
    config = loader.load(root)
    if config is None or loader.problems:
        raise ConfigError(sorted(loader.problems, key=lambda p: p.line))
    return config


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    """Read and validate one config file; raises :class:`ConfigError` with every problem."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            [Problem(file=str(path), line=0, key_path="", message=f"not UTF-8: {exc.reason}")]
        ) from None
    except OSError as exc:
        raise ConfigError(
            [Problem(file=str(path), line=0, key_path="", message=f"cannot read: {exc.strerror}")]
        ) from None
    config = loads_config(text, file=str(path), base_dir=p.parent.absolute(), env=env)
    return attrs.evolve(config, file=p)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def summary(config: Config) -> str:
    """A one-line description, as ``gatewayd check`` prints it."""
    routes = [k for k in ("a2p", "p2p", "delivery") if getattr(config.routes, k)]
    return (
        f"{_plural(len(config.carriers), 'carrier')}, "
        f"{_plural(len(config.destinations), 'destination')}, "
        f"{_plural(len(config.numbers), 'number')}, "
        + (f"routes {'/'.join(routes)}" if routes else "no fallback routes")
    )


def check_main(path: str, stdout: TextIO, env: Mapping[str, str] | None = None) -> int:
    """``gatewayd check``: print every problem and return 1, or a summary and return 0."""
    try:
        config = load_config(path, env)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=stdout)
        return 1
    print(f"OK: {summary(config)}", file=stdout)
    return 0
