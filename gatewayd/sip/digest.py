"""HTTP Digest authentication for SIP (RFC 3261 §22.4, RFC 2617, RFC 7616, RFC 8760). Pure.

A 401 carries ``WWW-Authenticate`` and is answered with ``Authorization``; a 407 carries
``Proxy-Authenticate`` and is answered with ``Proxy-Authorization`` (§22.3). The request is
re-sent once with the credentials, a new CSeq and a new branch (§22.2): the caller does
that, :func:`authorize` builds the new request.

Algorithms: MD5, SHA-256 and their ``-sess`` variants; of several challenges the
strongest we support wins (SHA-256 over MD5, RFC 8760 §2.4). ``qop``: ``auth`` when the
challenge offers it, else ``auth-int``, else the RFC 2069 form without qop. Anything else
(e.g. ``AKAv1-MD5``, ``SHA-512-256``) raises :class:`UnsupportedChallenge`.

Nothing here logs or formats the password; error messages never contain it.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Callable

import attrs

from gatewayd.sip.message import Request, Response, SipError, new_branch, quote_string
from gatewayd.sip.transaction import cseq_of

__all__ = [
    "ALGORITHMS",
    "Challenge",
    "DigestError",
    "UnsupportedChallenge",
    "authorization_header",
    "authorize",
    "challenge_headers",
    "choose_challenge",
    "compute_response",
    "parse_auth_params",
    "parse_challenges",
]


class DigestError(SipError):
    """A challenge we cannot answer."""


class UnsupportedChallenge(DigestError):
    """No challenge uses an algorithm/qop we support, or none is well-formed."""


def _hasher(name: str) -> Callable[[bytes], str]:
    return lambda data: hashlib.new(name, data).hexdigest()


#: algorithm name (upper case, without ``-sess``) -> hex digest function, strongest first.
ALGORITHMS: dict[str, Callable[[bytes], str]] = {
    "SHA-256": _hasher("sha256"),
    "MD5": _hasher("md5"),
}


@attrs.frozen(kw_only=True)
class Challenge:
    """One ``Digest`` challenge from a ``WWW-Authenticate``/``Proxy-Authenticate`` value."""

    realm: str
    nonce: str
    algorithm: str = "MD5"  # as the server spelled it (echoed back)
    qop: tuple[str, ...] = ()  # offered qop values, lower case
    opaque: str | None = None
    stale: bool = False

    @property
    def base_algorithm(self) -> str:
        upper = self.algorithm.upper()
        return upper.removesuffix("-SESS")

    @property
    def session(self) -> bool:
        return self.algorithm.upper().endswith("-SESS")

    @property
    def supported(self) -> bool:
        return self.base_algorithm in ALGORITHMS and (
            not self.qop or "auth" in self.qop or "auth-int" in self.qop
        )


# auth-param = token "=" ( token / quoted-string )  (RFC 7235 §2.1)
_PARAM = re.compile(
    r"""\s*([A-Za-z0-9!#$%&'*+\-.^_`|~]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^\s,"]*)\s*(?:,|$)""",
    re.DOTALL,
)
_SCHEME = re.compile(r"\s*([A-Za-z0-9!#$%&'*+\-.^_`|~]+)(?:\s+|$)")


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return re.sub(r"\\(.)", r"\1", value[1:-1], flags=re.DOTALL)
    return value


def parse_auth_params(value: str) -> tuple[str, dict[str, str]]:
    """``Scheme k=v, k="v"`` -> (scheme, params with lower-case keys, unquoted).

    For challenges and credentials alike. Raises :class:`UnsupportedChallenge` (only) when
    the value does not have that shape."""
    m = _SCHEME.match(value)
    if m is None:
        raise UnsupportedChallenge("challenge has no scheme")
    params: dict[str, str] = {}
    pos = m.end()
    while pos < len(value):
        pm = _PARAM.match(value, pos)
        if pm is None or pm.end() == pos:
            raise UnsupportedChallenge("malformed challenge parameters")
        params.setdefault(pm.group(1).lower(), _unquote(pm.group(2)))
        pos = pm.end()
    return m.group(1), params


def parse_challenges(values: list[str]) -> list[Challenge]:
    """Every well-formed ``Digest`` challenge among the header values (others skipped)."""
    out: list[Challenge] = []
    for value in values:
        try:
            scheme, params = parse_auth_params(value)
        except UnsupportedChallenge:
            continue
        if scheme.lower() != "digest" or "nonce" not in params or "realm" not in params:
            continue
        out.append(
            Challenge(
                realm=params["realm"],
                nonce=params["nonce"],
                algorithm=params.get("algorithm") or "MD5",
                qop=tuple(q.strip().lower() for q in params.get("qop", "").split(",") if q),
                opaque=params.get("opaque"),
                stale=params.get("stale", "").lower() == "true",
            )
        )
    return out


def choose_challenge(challenges: list[Challenge]) -> Challenge:
    """The challenge to answer: the strongest supported algorithm, first of equals."""
    order = list(ALGORITHMS)
    usable = [c for c in challenges if c.supported]
    if not usable:
        offered = ", ".join(sorted({c.algorithm for c in challenges})) or "none"
        raise UnsupportedChallenge(f"no supported digest challenge (offered: {offered})")
    return min(usable, key=lambda c: order.index(c.base_algorithm))


def compute_response(
    *,
    algorithm: str,
    username: str,
    password: str,
    realm: str,
    method: str,
    uri: str,
    nonce: str,
    qop: str | None = None,
    cnonce: str = "",
    nc: str = "00000001",
    body: bytes = b"",
) -> str:
    """The ``response`` value (RFC 7616 §3.4.1; RFC 2617 §3.2.2 for MD5 and no qop)."""
    upper = algorithm.upper()
    h = ALGORITHMS.get(upper.removesuffix("-SESS"))
    if h is None:
        raise UnsupportedChallenge(f"unsupported digest algorithm {algorithm!r}")

    def hs(*parts: str) -> str:
        return h(":".join(parts).encode("utf-8"))

    ha1 = hs(username, realm, password)
    if upper.endswith("-SESS"):
        ha1 = hs(ha1, nonce, cnonce)
    ha2 = hs(method, uri) if qop != "auth-int" else hs(method, uri, h(body))
    if qop is None:
        return hs(ha1, nonce, ha2)
    return hs(ha1, nonce, nc, cnonce, qop, ha2)


def authorization_header(
    challenge: Challenge,
    *,
    username: str,
    password: str,
    method: str,
    uri: str,
    body: bytes = b"",
    cnonce: str | None = None,
    nc: int = 1,
) -> str:
    """The ``Authorization``/``Proxy-Authorization`` value answering ``challenge``."""
    if not challenge.supported:
        raise UnsupportedChallenge(
            f"unsupported digest challenge (algorithm {challenge.algorithm!r}, "
            f"qop {','.join(challenge.qop) or 'none'})"
        )
    qop: str | None = None
    if challenge.qop:
        qop = "auth" if "auth" in challenge.qop else "auth-int"
    cnonce = cnonce if cnonce is not None else secrets.token_hex(8)
    nc_text = f"{nc:08x}"
    response = compute_response(
        algorithm=challenge.algorithm,
        username=username,
        password=password,
        realm=challenge.realm,
        method=method,
        uri=uri,
        nonce=challenge.nonce,
        qop=qop,
        cnonce=cnonce,
        nc=nc_text,
        body=body,
    )
    parts = [
        f"username={quote_string(username)}",
        f"realm={quote_string(challenge.realm)}",
        f"nonce={quote_string(challenge.nonce)}",
        f"uri={quote_string(uri)}",
        f'response="{response}"',
        f"algorithm={challenge.algorithm}",
    ]
    if qop is not None:
        parts += [f"qop={qop}", f"nc={nc_text}", f"cnonce={quote_string(cnonce)}"]
    if challenge.opaque is not None:
        parts.append(f"opaque={quote_string(challenge.opaque)}")
    return "Digest " + ", ".join(parts)


def challenge_headers(response: Response) -> tuple[str, str] | None:
    """(challenge header, credentials header) for a 401 or 407, else None (§22.3)."""
    if response.status == 401:
        return "WWW-Authenticate", "Authorization"
    if response.status == 407:
        return "Proxy-Authenticate", "Proxy-Authorization"
    return None


def authorize(
    request: Request,
    response: Response,
    *,
    username: str,
    password: str,
    cnonce: str | None = None,
    branch: str | None = None,
) -> Request:
    """``request`` again, answering the 401/407 ``response``: credentials added, CSeq + 1,
    a new Via branch; Call-ID, From (with its tag) and To unchanged (§22.2, §8.1.3.5)."""
    names = challenge_headers(response)
    if names is None:
        raise DigestError(f"a {response.status} is not a challenge")
    challenge_name, credentials_name = names
    challenge = choose_challenge(parse_challenges(response.headers.get_all(challenge_name)))
    value = authorization_header(
        challenge,
        username=username,
        password=password,
        method=request.method,
        uri=request.uri,
        body=request.body,
        cnonce=cnonce,
    )
    cseq = cseq_of(request)
    if cseq is None:
        raise DigestError("the request has no CSeq")
    via = request.headers.get("Via") or ""
    new_via = re.sub(r";branch=[^;,\s]*", f";branch={branch or new_branch()}", via, count=1)
    headers = (
        request.headers.replace("Via", new_via)
        .replace("CSeq", f"{cseq[0] + 1} {request.method}")
        .without(credentials_name)
        .with_header(credentials_name, value)
    )
    return attrs.evolve(request, headers=headers)
