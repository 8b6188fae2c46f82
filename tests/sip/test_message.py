"""SIP message codec: round trips, framing under any chunking, and hostile input."""

from __future__ import annotations

import contextlib
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gatewayd.sip.message import (
    MAX_MESSAGE_SIZE,
    BuildError,
    Headers,
    ParseError,
    Request,
    Response,
    StreamFramer,
    header_param,
    new_branch,
    parse_hostport,
    parse_message,
    parse_uri,
    quote_string,
    split_commas,
)

SAMPLE = (
    b"MESSAGE sip:desk@pbx.example.com SIP/2.0\r\n"
    b"v: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKabc;rport\r\n"
    b"Max-Forwards: 70\r\n"
    b'f: "Alice" <sip:alice@192.0.2.1>;tag=123\r\n'
    b"t: <sip:desk@pbx.example.com>\r\n"
    b"i: abc@192.0.2.1\r\n"
    b"CSeq: 1 MESSAGE\r\n"
    b"Subject: a folded\r\n"
    b"  header\r\n"
    b"c: text/plain;charset=UTF-8\r\n"
    b"l: 5\r\n"
    b"\r\n"
    b"Hello"
)

tokens = st.text(
    alphabet=st.sampled_from(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-.!%*_+`'~"
    ),
    min_size=1,
    max_size=12,
)
header_values = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="\r\n\x00"),
    max_size=40,
).map(lambda v: v.strip(" \t"))
headers = st.lists(
    st.tuples(
        tokens.filter(lambda t: t.lower() != "content-length" and t.lower() != "l"), header_values
    ),
    max_size=8,
).map(Headers.of)


def test_parse_sample() -> None:
    message = parse_message(SAMPLE)
    assert isinstance(message, Request)
    assert message.method == "MESSAGE"
    assert message.uri == "sip:desk@pbx.example.com"
    h = message.headers
    assert h.get("Via") == "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKabc;rport"
    assert h.get("via") == h.get("v")
    assert h.get("From") == '"Alice" <sip:alice@192.0.2.1>;tag=123'
    assert h.get("Call-ID") == "abc@192.0.2.1"
    assert h.get("Content-Type") == "text/plain;charset=UTF-8"
    assert h.get("Subject") == "a folded header"
    assert message.body == b"Hello"


def test_response_line_and_reason() -> None:
    message = parse_message(b"SIP/2.0 486 Busy Here\r\nContent-Length: 0\r\n\r\n")
    assert isinstance(message, Response)
    assert (message.status, message.reason) == (486, "Busy Here")
    assert not message.provisional
    empty_reason = parse_message(b"SIP/2.0 200 \r\n\r\n")
    assert isinstance(empty_reason, Response)
    assert empty_reason.reason == ""


def test_content_length_rules() -> None:
    head = b"SIP/2.0 200 OK\r\n"
    # Datagram: bytes after Content-Length are discarded; no Content-Length: the rest.
    extra = parse_message(head + b"Content-Length: 2\r\n\r\nabcdef")
    assert extra.body == b"ab"
    assert parse_message(head + b"\r\nabc").body == b"abc"
    # Stream: no Content-Length means no body.
    assert parse_message(head + b"\r\nabc", stream=True).body == b""
    with pytest.raises(ParseError, match="shorter"):
        parse_message(head + b"Content-Length: 10\r\n\r\nabc")
    for bad in (b"-1", b"x", b"1e3", b"99999999999"):
        with pytest.raises(ParseError):
            parse_message(head + b"Content-Length: " + bad + b"\r\n\r\n")


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\r\n\r\n",
        b"HELLO\r\n\r\n",
        b"MESSAGE sip:a@b HTTP/1.1\r\n\r\n",
        b"SIP/2.0 99 Low\r\n\r\n",
        b"SIP/2.0 700 High\r\n\r\n",
        b"SIP/2.0 200 OK\r\nno colon here\r\n\r\n",
        b"SIP/2.0 200 OK\r\n folded first\r\n\r\n",
        b"SIP/2.0 200 OK\r\nBad Name: x\r\n\r\n",
        b"SIP/2.0 200 OK\r\nX: \xff\xfe\r\n\r\n",
        b"SIP/2.0 200 OK\r\nX: a\rb\r\n\r\n",
        b"SIP/2.0 200 OK\r\nContent-Length: 1",
        b"SIP/2.0 200 OK\r\n" + b"X: y\r\n" * 20000 + b"\r\n",
    ],
)
def test_malformed_raises_parse_error(data: bytes) -> None:
    with pytest.raises(ParseError):
        parse_message(data)


def test_build_sets_content_length_and_refuses_injection() -> None:
    request = Request(
        method="MESSAGE",
        uri="sip:a@b",
        headers=Headers.of([("Content-Length", "999"), ("X", "y")]),
        body=b"12345",
    )
    wire = request.to_bytes()
    assert wire.endswith(b"X: y\r\nContent-Length: 5\r\n\r\n12345")
    assert wire.count(b"Content-Length") == 1
    with pytest.raises(BuildError):
        Request(method="MESSAGE", uri="sip:a@b", headers=Headers.of({"X": "a\r\nB: c"})).to_bytes()
    with pytest.raises(BuildError):
        Request(method="MES SAGE", uri="sip:a@b").to_bytes()
    with pytest.raises(BuildError):
        Request(method="MESSAGE", uri="sip:a@b c").to_bytes()
    with pytest.raises(BuildError):
        Request(method="MESSAGE", uri="sip:a@b", headers=Headers.of({"Bad Name": "x"})).to_bytes()
    with pytest.raises(BuildError):
        Response(status=99).to_bytes()
    with pytest.raises(BuildError):
        Response(status=200, reason="OK\r\nX: y").to_bytes()
    with pytest.raises(BuildError):
        quote_string("a\nb")


def test_headers_helpers() -> None:
    h = Headers.of([("v", "one"), ("Via", "two"), ("X", "x")])
    assert h.get_all("VIA") == ["one", "two"]
    assert h.replace("via", "three").get_all("Via") == ["three"]
    assert h.replace("New", "n").get("new") == "n"
    assert h.without("Via").items == (("X", "x"),)
    assert h.with_header("i", "id").get("Call-ID") == "id"
    assert h.get("missing") is None


@given(
    method=tokens,
    uri=st.from_regex(r"sips?:[a-z0-9]{1,8}@[a-z0-9.]{1,12}", fullmatch=True),
    headers=headers,
    body=st.binary(max_size=300),
)
def test_request_round_trip(method: str, uri: str, headers: Headers, body: bytes) -> None:
    request = Request(method=method, uri=uri, headers=headers, body=body)
    wire = request.to_bytes()
    for stream in (False, True):
        parsed = parse_message(wire, stream=stream)
        assert isinstance(parsed, Request)
        assert (parsed.method, parsed.uri, parsed.body) == (method, uri, body)
        assert parsed.headers.without("Content-Length") == headers
        assert parsed.to_bytes() == wire


@given(
    status=st.integers(100, 699),
    reason=header_values.filter(lambda r: r == r.strip()),
    headers=headers,
    body=st.binary(max_size=300),
)
def test_response_round_trip(status: int, reason: str, headers: Headers, body: bytes) -> None:
    wire = Response(status=status, reason=reason, headers=headers, body=body).to_bytes()
    parsed = parse_message(wire)
    assert isinstance(parsed, Response)
    assert (parsed.status, parsed.reason, parsed.body) == (status, reason, body)
    assert parsed.headers.without("Content-Length") == headers


@settings(max_examples=500)
@given(st.binary(max_size=600))
def test_random_bytes_never_crash(data: bytes) -> None:
    with contextlib.suppress(ParseError):
        parse_message(data)
    with contextlib.suppress(ParseError):
        parse_message(data, stream=True)


@settings(max_examples=500)
@given(st.data())
def test_mutated_messages_never_crash(data: st.DataObject) -> None:
    wire = bytearray(SAMPLE)
    for _ in range(data.draw(st.integers(1, 8))):
        at = data.draw(st.integers(0, len(wire)))
        choice = data.draw(st.integers(0, 2))
        if choice == 0 and at < len(wire):
            del wire[at]
        elif choice == 1:
            wire[at:at] = data.draw(st.sampled_from([b"\r\n", b":", b";", b"\x00", b"\xff", b" "]))
        elif at < len(wire):
            wire[at] = data.draw(st.integers(0, 255))
    framer = StreamFramer()
    framer.feed(bytes(wire))
    for stream in (False, True):
        with contextlib.suppress(ParseError):
            parse_message(bytes(wire), stream=stream)
    with contextlib.suppress(ParseError):
        framer.next_frame()


@given(
    bodies=st.lists(st.binary(max_size=50), min_size=1, max_size=5),
    cuts=st.lists(st.integers(0, 2000), max_size=10),
    keepalives=st.booleans(),
)
def test_stream_framer_any_chunking(bodies: list[bytes], cuts: list[int], keepalives: bool) -> None:
    messages = [
        Response(status=200, reason="OK", headers=Headers.of({"CSeq": f"{i} MESSAGE"}), body=b)
        for i, b in enumerate(bodies)
    ]
    sep = b"\r\n\r\n" if keepalives else b""
    stream = sep.join(m.to_bytes() for m in messages)
    framer = StreamFramer()
    frames: list[bytes] = []
    points = sorted({0, len(stream), *(c % (len(stream) + 1) for c in cuts)})
    for start, end in itertools.pairwise(points):
        framer.feed(stream[start:end])
        while (frame := framer.next_frame()) is not None:
            frames.append(frame)
    assert [parse_message(f, stream=True).to_bytes() for f in frames] == [
        m.to_bytes() for m in messages
    ]


def test_stream_framer_bounds() -> None:
    framer = StreamFramer(max_size=200)
    framer.feed(b"SIP/2.0 200 OK\r\nContent-Length: 500\r\n\r\n")
    with pytest.raises(ParseError, match="larger"):
        framer.next_frame()
    endless = StreamFramer(max_size=100)
    endless.feed(b"X" * 101)
    with pytest.raises(ParseError, match="no end of headers"):
        endless.next_frame()
    bad = StreamFramer()
    bad.feed(b"SIP/2.0 200 OK\r\nl: lots\r\n\r\n")
    with pytest.raises(ParseError):
        bad.next_frame()
    assert MAX_MESSAGE_SIZE == 65535


def test_uri_parsing() -> None:
    uri = parse_uri("sip:desk:pw@pbx.example.com:5070;transport=tcp;lr?subject=x")
    assert (uri.scheme, uri.user, uri.password, uri.host, uri.port) == (
        "sip",
        "desk",
        "pw",
        "pbx.example.com",
        5070,
    )
    assert uri.param("TRANSPORT") == "tcp"
    assert uri.param("lr") == ""
    assert uri.param("maddr") is None
    assert uri.headers == "subject=x"
    assert uri.for_request() == "sip:desk@pbx.example.com:5070;transport=tcp;lr"
    assert "pw" not in repr(uri)
    v6 = parse_uri("<SIPS:[2001:db8::1]>")
    assert (v6.scheme, v6.user, v6.host, v6.port) == ("sips", None, "2001:db8::1", None)
    assert v6.for_request() == "sips:[2001:db8::1]"
    assert parse_hostport("[::1]:5080") == ("::1", 5080)
    assert parse_hostport("proxy.example.com") == ("proxy.example.com", None)


@pytest.mark.parametrize(
    "text",
    [
        "tel:+4477",
        "sip:",
        "sip:@host",
        "sip:a@bad host",
        "sip:a@host:0",
        "sip:a@host:70000",
        "sip:a@host:x",
        "sip:a@[::1",
        "sip:a@[zz]",
        "sip:a@host;=x",
        "sip:a@-host",
    ],
)
def test_bad_uris(text: str) -> None:
    with pytest.raises(ParseError):
        parse_uri(text)


@given(st.text(max_size=60))
def test_uri_parser_never_crashes(text: str) -> None:
    with contextlib.suppress(ParseError):
        parse_uri(text)
    with contextlib.suppress(ParseError):
        parse_hostport(text)


def test_header_params_and_commas() -> None:
    via = "SIP/2.0/UDP h:5060;branch=z9hG4bK1;rport, SIP/2.0/UDP other;branch=z9hG4bK2"
    first, second = split_commas(via)
    assert header_param(first, "branch") == "z9hG4bK1"
    assert header_param(first, "rport") == ""
    assert header_param(second, "BRANCH") == "z9hG4bK2"
    to = '"Doe, John;x" <sip:j@h;tag=inside>;tag=outside'
    assert split_commas(to) == [to]
    assert header_param(to, "tag") == "outside"
    assert header_param("<sip:j@h;tag=inside>", "tag") is None
    assert header_param('"a\\"b" <sip:x@y>;tag=1', "tag") == "1"
    assert split_commas('a, "b,c", <d,e>') == ["a", '"b,c"', "<d,e>"]


def test_identifiers() -> None:
    branch = new_branch()
    assert branch.startswith("z9hG4bK")
    assert branch != new_branch()
    assert quote_string('a"b\\c') == '"a\\"b\\\\c"'
