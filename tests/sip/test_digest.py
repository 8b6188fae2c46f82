"""Digest authentication: RFC 2617 §3.5 and RFC 7616 §3.9.1 worked examples, and SIP use."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gatewayd.sip import digest
from gatewayd.sip.digest import (
    Challenge,
    UnsupportedChallenge,
    authorization_header,
    authorize,
    choose_challenge,
    compute_response,
    parse_auth_params,
    parse_challenges,
)
from gatewayd.sip.message import Headers, Request, Response
from gatewayd.sip.transaction import cseq_of, top_branch

# RFC 2617 §3.5
RFC2617_CHALLENGE = (
    'Digest realm="testrealm@host.com", qop="auth,auth-int", '
    'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41"'
)
# RFC 7616 §3.9.1
RFC7616: dict[str, Any] = {
    "username": "Mufasa",
    "password": "Circle of Life",
    "realm": "http-auth@example.org",
    "method": "GET",
    "uri": "/dir/index.html",
    "nonce": "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
    "cnonce": "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
    "nc": "00000001",
    "qop": "auth",
}


def test_rfc2617_worked_example() -> None:
    [challenge] = parse_challenges([RFC2617_CHALLENGE])
    assert challenge.qop == ("auth", "auth-int")
    header = authorization_header(
        challenge,
        username="Mufasa",
        password="Circle Of Life",
        method="GET",
        uri="/dir/index.html",
        cnonce="0a4f113b",
    )
    _, params = parse_auth_params(header)
    assert params["response"] == "6629fae49393a05397450978507c4ef1"
    assert params["qop"] == "auth"
    assert params["nc"] == "00000001"
    assert params["cnonce"] == "0a4f113b"
    assert params["opaque"] == "5ccc069c403ebaf9f0171e9517f40e41"
    assert params["username"] == "Mufasa"
    assert params["uri"] == "/dir/index.html"


@pytest.mark.parametrize(
    ("algorithm", "expected"),
    [
        ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
        ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
    ],
)
def test_rfc7616_worked_examples(algorithm: str, expected: str) -> None:
    assert compute_response(algorithm=algorithm, **RFC7616) == expected


def test_no_qop_rfc2069_form_and_sess_and_auth_int() -> None:
    plain = compute_response(
        algorithm="MD5",
        username="u",
        password="p",
        realm="r",
        method="M",
        uri="sip:x",
        nonce="n",
    )
    assert len(plain) == 32
    sess = compute_response(
        algorithm="MD5-sess",
        username="u",
        password="p",
        realm="r",
        method="M",
        uri="sip:x",
        nonce="n",
        qop="auth",
        cnonce="c",
    )
    assert sess != compute_response(
        algorithm="MD5",
        username="u",
        password="p",
        realm="r",
        method="M",
        uri="sip:x",
        nonce="n",
        qop="auth",
        cnonce="c",
    )
    body_a = compute_response(
        algorithm="SHA-256",
        username="u",
        password="p",
        realm="r",
        method="M",
        uri="sip:x",
        nonce="n",
        qop="auth-int",
        cnonce="c",
        body=b"a",
    )
    body_b = compute_response(
        algorithm="SHA-256",
        username="u",
        password="p",
        realm="r",
        method="M",
        uri="sip:x",
        nonce="n",
        qop="auth-int",
        cnonce="c",
        body=b"b",
    )
    assert body_a != body_b
    with pytest.raises(UnsupportedChallenge):
        compute_response(
            algorithm="SHA-512-256",
            username="u",
            password="p",
            realm="r",
            method="M",
            uri="x",
            nonce="n",
        )


def test_choose_strongest() -> None:
    challenges = parse_challenges(
        [
            'Digest realm="r", nonce="n1", algorithm=MD5, qop="auth"',
            'Digest realm="r", nonce="n2", algorithm=SHA-256, qop="auth"',
            'Digest realm="r", nonce="n3", algorithm=AKAv1-MD5',
            'Basic realm="r"',
            "garbage ,,, ===",
        ]
    )
    assert [c.nonce for c in challenges] == ["n1", "n2", "n3"]
    assert choose_challenge(challenges).nonce == "n2"
    with pytest.raises(UnsupportedChallenge, match="AKAv1-MD5"):
        choose_challenge(challenges[2:])
    with pytest.raises(UnsupportedChallenge, match="none"):
        choose_challenge([])
    only_int = Challenge(realm="r", nonce="n", qop=("auth-int",))
    assert only_int.supported
    assert not Challenge(realm="r", nonce="n", qop=("weird",)).supported


def test_parse_auth_params_quoting() -> None:
    scheme, params = parse_auth_params(
        'Digest realm="a \\"quoted\\", realm", nonce=abc, stale=TRUE, Algorithm=SHA-256'
    )
    assert scheme == "Digest"
    assert params == {
        "realm": 'a "quoted", realm',
        "nonce": "abc",
        "stale": "TRUE",
        "algorithm": "SHA-256",
    }
    [challenge] = parse_challenges(['Digest realm="r", nonce="n", stale=true'])
    assert challenge.stale


@given(st.text(max_size=80))
def test_challenge_parser_never_crashes(text: str) -> None:
    for challenge in parse_challenges([text]):
        assert isinstance(challenge, Challenge)
    with contextlib.suppress(UnsupportedChallenge):
        parse_auth_params(text)


REQUEST = Request(
    method="MESSAGE",
    uri="sip:desk@pbx.example.com",
    headers=Headers.of(
        [
            ("Via", "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKfirst;rport"),
            ("From", '"1" <sip:1@192.0.2.1>;tag=t'),
            ("To", "<sip:desk@pbx.example.com>"),
            ("Call-ID", "c@192.0.2.1"),
            ("CSeq", "1 MESSAGE"),
        ]
    ),
    body=b"hello",
)


@pytest.mark.parametrize(
    ("status", "challenge", "credentials"),
    [
        (401, "WWW-Authenticate", "Authorization"),
        (407, "Proxy-Authenticate", "Proxy-Authorization"),
    ],
)
def test_authorize_sip_request(status: int, challenge: str, credentials: str) -> None:
    response = Response(
        status=status,
        headers=Headers.of({challenge: 'Digest realm="pbx", nonce="xyz", qop="auth"'}),
    )
    again = authorize(REQUEST, response, username="alice", password="pw", cnonce="cn")
    assert top_branch(again) not in (None, "z9hG4bKfirst")
    assert (top_branch(again) or "").startswith("z9hG4bK")
    assert (again.headers.get("Via") or "").endswith(";rport")
    assert cseq_of(again) == (2, "MESSAGE")
    for name in ("From", "To", "Call-ID"):
        assert again.headers.get(name) == REQUEST.headers.get(name)
    assert again.body == REQUEST.body
    _, params = parse_auth_params(again.headers.get(credentials) or "")
    assert params["uri"] == "sip:desk@pbx.example.com"
    assert params["response"] == compute_response(
        algorithm="MD5",
        username="alice",
        password="pw",
        realm="pbx",
        method="MESSAGE",
        uri="sip:desk@pbx.example.com",
        nonce="xyz",
        qop="auth",
        cnonce="cn",
    )
    assert "pw" not in (again.headers.get(credentials) or "").replace("pbx", "")
    other = "Authorization" if credentials != "Authorization" else "Proxy-Authorization"
    assert again.headers.get(other) is None


def test_authorize_refuses_non_challenges() -> None:
    with pytest.raises(digest.DigestError):
        authorize(REQUEST, Response(status=403), username="a", password="b")
    with pytest.raises(UnsupportedChallenge):
        authorize(
            REQUEST,
            Response(status=401, headers=Headers.of({"WWW-Authenticate": "Basic realm=x"})),
            username="a",
            password="b",
        )
