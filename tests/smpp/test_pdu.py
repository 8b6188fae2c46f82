"""The SMPP 3.4 codec: round trips, equivalence with smpplib, framing, malformed input."""

from __future__ import annotations

import contextlib
import itertools
import struct
from typing import Any

import pytest
import smpplib.command
import smpplib.command_codes
import smpplib.smpp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gatewayd.smpp import pdu as P

# Hypothesis runs are deterministic in time: no deadline, so a slow CI box never flakes.
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ROUND = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

COMMANDS = sorted(P.COMMAND_IDS)
SL_COMMANDS = [c for c in COMMANDS if c != "outbind"]  # smpplib has no outbind class
UNKNOWN_TAGS = st.integers(0x1400, 0x3FFF).filter(lambda t: t not in P._TLV_BY_TAG)


class _Seq:
    sequence = 0

    def next_sequence(self) -> int:
        return 0


def hdr(command_id: int, body: bytes, status: int = 0, seq: int = 7) -> bytes:
    return struct.pack(">IIII", 16 + len(body), command_id, status, seq) + body


def tlv(tag: int, value: bytes) -> bytes:
    return struct.pack(">HH", tag, len(value)) + value


# ------------------------------------------------------------------------------ strategies


def cstring(max_with_nul: int) -> st.SearchStrategy[bytes]:
    limit = max_with_nul - 1 if max_with_nul else 40
    return st.binary(max_size=limit).map(lambda b: b.replace(b"\x00", b"x"))


def param_value(p: Any) -> st.SearchStrategy[Any]:
    if p.kind == P._INT:
        return st.integers(0, (1 << (8 * p.size)) - 1)
    if p.kind == P._CSTR:
        return cstring(p.max)
    if p.kind == P._FLAG:
        return st.just(b"")
    if p.size:
        return st.binary(min_size=p.size, max_size=p.size)
    return st.binary(max_size=min(p.max or 300, 300))


@st.composite
def pdus(draw: st.DrawFn, command: str, tlv_names: list[str] | None = None) -> P.Pdu:
    """A valid PDU of ``command`` built through ``make``, with known and unknown TLVs."""
    layout = P._LAYOUTS[command]
    fields: dict[str, Any] = {}
    for p in layout.params:
        if p.name in layout.length_of:
            continue
        if draw(st.booleans()):
            fields[p.name] = draw(param_value(p))
    names = sorted(P._TLV_BY_NAME) if tlv_names is None else tlv_names
    for name in draw(st.lists(st.sampled_from(names), unique=True, max_size=4)) if names else []:
        fields[name] = draw(param_value(P._TLV_BY_NAME[name].param))
    raw = draw(
        st.lists(
            st.builds(lambda t, v: P.Tlv(tag=t, value=v), UNKNOWN_TAGS, st.binary(max_size=20)),
            max_size=2,
        )
    )
    status = draw(st.sampled_from([0, 0, P.ESME_RX_T_APPN, P.ESME_RTHROTTLED]))
    seq = draw(st.integers(0, 0xFFFFFFFF))
    return P.make(command, sequence=seq, status=status, tlvs=tuple(raw), **fields)


any_pdu = st.sampled_from(COMMANDS).flatmap(pdus)


def smpplib_agrees(command: str) -> list[str]:
    """TLVs smpplib's class for ``command`` describes exactly as we do (flags excluded)."""
    layout = P._LAYOUTS[command]
    cls = layout.sl_class or P._SL_CLASSES[command]
    out = []
    for name in sorted(layout.sl_tlvs):
        ours = P._TLV_BY_NAME[name].param
        theirs = P._param_from_smpplib(name, cls.params[name])
        if ours == theirs and ours.kind != P._FLAG:
            out.append(name)
    return out


# ------------------------------------------------------------------------------ round trips


@ROUND
@given(pdu=any_pdu)
def test_every_pdu_round_trips(pdu: P.Pdu) -> None:
    frame = P.encode(pdu)
    assert P.header(frame)[:2] == (len(frame), pdu.command_id)
    assert P.decode(frame) == pdu


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_round_trips_with_defaults(command: str) -> None:
    pdu = P.make(command, sequence=42)
    assert P.decode(P.encode(pdu)) == pdu
    assert P.command_name(pdu.command_id) == command


@ROUND
@given(data=st.data())
def test_decode_matches_smpplib_on_valid_pdus(data: st.DataObject) -> None:
    """Differential: our walker reads what smpplib's parse_pdu reads, field by field."""
    command = data.draw(st.sampled_from(SL_COMMANDS))
    pdu = data.draw(pdus(command, smpplib_agrees(command)))
    frame = P.encode(pdu)
    ours = P.decode(frame)
    if len(frame) == P.HEADER_LENGTH and ours.fields:
        return  # error response without body: smpplib leaves the fields None
    theirs = smpplib.smpp.parse_pdu(frame, client=_Seq(), allow_unknown_opt_params=True)
    assert theirs.command == ours.command
    assert (theirs.status, theirs.sequence) == (ours.status, ours.sequence)
    defaults = P._LAYOUTS[command].defaults
    for name, value in ours.fields.items():
        theirs_value = getattr(theirs, name)
        if theirs_value is None and name in defaults:
            # smpplib stops at the end of the body: a final empty short_message stays None.
            theirs_value = defaults[name]
        assert theirs_value == value, name
    for name in P._LAYOUTS[command].sl_tlvs:
        if name not in ours.fields and name in smpplib_agrees(command):
            assert getattr(theirs, name, None) is None, name


@ROUND
@given(data=st.data())
def test_encode_matches_smpplib_generate(data: st.DataObject) -> None:
    """Differential: fast paths and the native writer produce smpplib's bytes."""
    command = data.draw(st.sampled_from(SL_COMMANDS))
    pdu = data.draw(pdus(command, []))
    pdu = P.Pdu(
        command=pdu.command,
        command_id=pdu.command_id,
        status=0,
        sequence=pdu.sequence,
        fields=pdu.fields,
    )
    layout = P._LAYOUTS[command]
    sl = smpplib.smpp.make_pdu(command, client=_Seq())
    sl.sequence = pdu.sequence
    sl.status = 0
    for p in layout.params:
        value = pdu.fields[p.name]
        setattr(
            sl,
            p.name,
            value.decode("latin-1") if isinstance(value, bytes) and p.kind == P._CSTR else value,
        )
    assert P.encode(pdu) == sl.generate()
    assert P._encode_native(layout, pdu.fields) == sl.generate()[16:]


def test_str_values_are_latin1_and_bind_interface_version_survives_smpplib() -> None:
    pdu = P.make("bind_transceiver", sequence=1, system_id="ésme", interface_version=0x33)
    frame = P.encode(pdu)
    assert frame[16:22] == b"\xe9sme\x00\x00"
    decoded = P.decode(frame)
    assert decoded.fields["system_id"] == b"\xe9sme"
    assert decoded.fields["interface_version"] == 0x33  # smpplib's __init__ would force 0x34


def test_bind_resp_carries_sc_interface_version() -> None:
    pdu = P.make("bind_transceiver_resp", sequence=3, system_id="SMSC", sc_interface_version=0x34)
    frame = P.encode(pdu)
    assert frame.endswith(tlv(0x0210, b"\x34"))
    assert P.decode(frame).get_int("sc_interface_version") == 0x34


def test_tlvs_keep_wire_order_and_unknown_tags() -> None:
    body = P.encode(P.make("deliver_sm", sequence=1))[16:]
    body += tlv(0x1501, b"vendor") + tlv(0x0427, b"\x02") + tlv(0x001E, b"abc\x00")
    pdu = P.decode(hdr(P.DELIVER_SM, body))
    assert [t.tag for t in pdu.tlvs] == [0x1501, 0x0427, 0x001E]
    assert pdu.fields["message_state"] == 2
    assert pdu.fields["receipted_message_id"] == b"abc"
    assert P.encode(pdu)[16:] == body


def test_tlv_not_in_smpplib_class_is_kept() -> None:
    # ussd_service_op in deliver_sm makes smpplib raise KeyError (upstream #104).
    body = P.encode(P.make("deliver_sm", sequence=1))[16:] + tlv(0x0501, b"\x11")
    frame = hdr(P.DELIVER_SM, body)
    with pytest.raises(KeyError):
        smpplib.smpp.parse_pdu(frame, client=_Seq())
    pdu = P.decode(frame)
    assert pdu.fields["ussd_service_op"] == 0x11
    assert pdu.tlvs == (P.Tlv(tag=0x0501, value=b"\x11"),)


def test_receipted_message_id_without_nul_is_tolerated() -> None:
    body = P.encode(P.make("deliver_sm", sequence=1))[16:] + tlv(0x001E, b"abc")
    assert P.decode(hdr(P.DELIVER_SM, body)).fields["receipted_message_id"] == b"abc"


def test_error_responses_without_body() -> None:
    for command in ("bind_transmitter_resp", "submit_sm_resp", "deliver_sm_resp", "data_sm_resp"):
        frame = hdr(P.COMMAND_IDS[command], b"", status=P.ESME_RBINDFAIL)
        pdu = P.decode(frame)
        assert pdu.status == P.ESME_RBINDFAIL
        assert pdu.get_bytes("message_id") == b""
        assert P.encode(pdu) == frame  # and we send them header-only too


def test_deliver_sm_resp_bytes() -> None:
    req = P.make("deliver_sm", sequence=0x01020304)
    assert P.encode(P.response_for(req)) == hdr(P.DELIVER_SM_RESP, b"\x00", seq=0x01020304)
    nack = P.encode(P.response_for(req, P.ESME_RX_T_APPN))
    assert nack == hdr(P.DELIVER_SM_RESP, b"", status=0x64, seq=0x01020304)
    resp = P.encode(P.response_for(P.make("submit_sm", sequence=9), message_id="m-1"))
    assert resp == hdr(P.SUBMIT_SM_RESP, b"m-1\x00", seq=9)


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("deliver_sm", "deliver_sm_resp"),
        ("submit_sm", "submit_sm_resp"),
        ("data_sm", "data_sm_resp"),
        ("bind_transceiver", "bind_transceiver_resp"),
        ("enquire_link", "enquire_link_resp"),
        ("unbind", "unbind_resp"),
        ("outbind", "generic_nack"),
        ("alert_notification", "generic_nack"),
        ("deliver_sm_resp", "generic_nack"),
    ],
)
def test_response_for(command: str, expected: str) -> None:
    resp = P.response_for(P.make(command, sequence=77), P.ESME_RSYSERR)
    assert (resp.command, resp.sequence, resp.status) == (expected, 77, P.ESME_RSYSERR)
    assert resp.command_id == P.COMMAND_IDS[expected]


def test_command_tables() -> None:
    for name, command_id in P.COMMAND_IDS.items():
        if name != "outbind":
            assert smpplib.command_codes.get_command_code(name) == command_id
        assert P.command_name(command_id) == name
    assert P.command_name(0x00000003) is None  # query_sm: not handled
    with pytest.raises(TypeError):
        P.COMMAND_IDS["x"] = 1  # type: ignore[index]
    assert P.header(hdr(P.ENQUIRE_LINK, b"", seq=5)) == (16, P.ENQUIRE_LINK, 0, 5)
    with pytest.raises(P.PduError):
        P.header(b"\x00" * 15)


# ------------------------------------------------------------------------------ encode errors


@pytest.mark.parametrize(
    ("command", "fields", "error"),
    [
        ("submit_sm", {"source_addr": "1" * 21}, ValueError),  # smpplib would truncate
        ("bind_transmitter", {"password": b"123456789"}, ValueError),
        ("submit_sm", {"destination_addr": b"12\x003"}, ValueError),
        ("submit_sm", {"short_message": b"x" * 255}, ValueError),
        ("submit_sm", {"esm_class": 256}, ValueError),
        ("submit_sm", {"source_port": 70000}, ValueError),
        ("submit_sm", {"sm_length": 3, "short_message": b"ab"}, ValueError),
        ("submit_sm", {"no_such_field": 1}, ValueError),
        ("deliver_sm", {"network_error_code": b"\x03\x00"}, ValueError),
        ("submit_sm", {"esm_class": b"\x01"}, TypeError),
        ("submit_sm", {"short_message": 5}, TypeError),
        ("query_sm", {}, ValueError),
        ("deliver_sm", {"source_addr": "€"}, ValueError),  # not latin-1
    ],
)
def test_make_rejects(command: str, fields: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        P.make(command, sequence=1, **fields)


def test_encode_rejects_hand_built_pdus() -> None:
    too_long = P.Pdu(
        command="submit_sm",
        command_id=P.SUBMIT_SM,
        sequence=1,
        fields={"source_addr": b"1" * 30},
    )
    with pytest.raises(ValueError, match="max 20"):
        P.encode(too_long)
    wrong_id = P.Pdu(command="submit_sm", command_id=P.DELIVER_SM, sequence=1)
    with pytest.raises(ValueError, match="command_id"):
        P.encode(wrong_id)
    with pytest.raises(ValueError, match="32-bit"):
        P.encode(P.Pdu(command="enquire_link", command_id=P.ENQUIRE_LINK, sequence=1 << 32))
    big = (P.Tlv(tag=0x1400, value=b"x" * 65536),)
    with pytest.raises(ValueError, match="65535"):
        P.make("enquire_link", sequence=1, tlvs=big)
    with pytest.raises(ValueError, match="65535"):
        P.encode(P.Pdu(command="enquire_link", command_id=P.ENQUIRE_LINK, sequence=1, tlvs=big))


def test_encode_known_tlv_given_only_as_field() -> None:
    pdu = P.Pdu(
        command="deliver_sm",
        command_id=P.DELIVER_SM,
        sequence=1,
        fields={"short_message": b"hi", "message_state": 2, "receipted_message_id": b"x"},
    )
    decoded = P.decode(P.encode(pdu))
    assert decoded.fields["short_message"] == b"hi"
    assert decoded.fields["sm_length"] == 2
    assert decoded.fields["message_state"] == 2
    assert decoded.tlvs == (P.Tlv(tag=0x0427, value=b"\x02"), P.Tlv(tag=0x001E, value=b"x\x00"))


# ------------------------------------------------------------------------------ malformed


DELIVER_BODY = P.encode(P.make("deliver_sm", sequence=1, source_addr="4477", short_message=b"hi"))[
    16:
]
# deliver_sm mandatory part up to (excluding) short_message: sm_length is its last octet.
DELIVER_HEAD = DELIVER_BODY[:-3]


@pytest.mark.parametrize(
    ("frame", "status"),
    [
        pytest.param(b"", P.ESME_RINVCMDLEN, id="empty"),
        pytest.param(hdr(P.ENQUIRE_LINK, b"")[:15], P.ESME_RINVCMDLEN, id="short-header"),
        pytest.param(
            struct.pack(">IIII", 17, P.ENQUIRE_LINK, 0, 7), P.ESME_RINVCMDLEN, id="length-mismatch"
        ),
        pytest.param(hdr(0x00000003, b""), P.ESME_RINVCMDID, id="query_sm-unsupported"),
        pytest.param(hdr(0x12345678, b"abc"), P.ESME_RINVCMDID, id="unknown-command"),
        pytest.param(hdr(P.DELIVER_SM, DELIVER_BODY[:5]), P.ESME_RINVCMDLEN, id="body-truncated"),
        pytest.param(hdr(P.DELIVER_SM, b"CMT"), P.ESME_RINVCMDLEN, id="cstring-no-nul"),
        pytest.param(
            hdr(P.DELIVER_SM, b"\x00\x01\x01" + b"1" * 21 + b"\x00" + DELIVER_BODY[10:]),
            P.ESME_RINVMSGLEN,
            id="cstring-over-max",
        ),
        pytest.param(
            hdr(P.DELIVER_SM, b"TOOLONG\x00" + DELIVER_BODY[1:]),
            P.ESME_RINVMSGLEN,
            id="service_type-over-max",
        ),
        pytest.param(
            hdr(P.DELIVER_SM, DELIVER_HEAD + b"\x05hi"), P.ESME_RINVMSGLEN, id="sm_length-past-end"
        ),
        pytest.param(
            hdr(P.DELIVER_SM, DELIVER_HEAD + b"\xff" + b"x" * 255),
            P.ESME_RINVMSGLEN,
            id="sm_length-255",
        ),
        pytest.param(
            hdr(P.DELIVER_SM, DELIVER_BODY + b"\x00"), P.ESME_RINVOPTPARSTREAM, id="trailing-byte"
        ),
        pytest.param(
            hdr(P.DELIVER_SM, DELIVER_BODY + b"\x04\x27\x00"),
            P.ESME_RINVOPTPARSTREAM,
            id="tlv-header-truncated",
        ),
        pytest.param(
            hdr(P.DELIVER_SM, DELIVER_BODY + b"\x04\x24\x00\x09abc"),
            P.ESME_RINVOPTPARSTREAM,
            id="tlv-value-truncated",
        ),
        pytest.param(
            hdr(P.ENQUIRE_LINK, b"garbage"), P.ESME_RINVOPTPARSTREAM, id="header-only-with-junk"
        ),
        pytest.param(
            hdr(P.DELIVER_SM, DELIVER_BODY + tlv(0x0427, b"\x00\x02")),
            P.ESME_RINVPARLEN,
            id="message_state-2-octets",
        ),
        pytest.param(
            hdr(P.DELIVER_SM, DELIVER_BODY + tlv(0x0423, b"\x03\x00")),
            P.ESME_RINVPARLEN,
            id="network_error_code-2-octets",
        ),
        pytest.param(
            hdr(P.SUBMIT_SM, DELIVER_BODY + tlv(0x020A, b"\x01")),
            P.ESME_RINVPARLEN,
            id="source_port-1-octet",
        ),
        pytest.param(hdr(P.SUBMIT_SM_RESP, b""), P.ESME_RINVCMDLEN, id="ok-resp-without-body"),
        pytest.param(hdr(P.BIND_TRANSMITTER, b"sys\x00pw\x00"), P.ESME_RINVCMDLEN, id="bind-short"),
    ],
)
def test_malformed_pdus(frame: bytes, status: int) -> None:
    with pytest.raises(P.PduError) as info:
        P.decode(frame)
    assert info.value.status == status, info.value.reason
    if len(frame) >= 16:
        _, command_id, _, sequence = struct.unpack(">IIII", frame[:16])
        assert (info.value.command_id, info.value.sequence) == (command_id, sequence)
    assert not isinstance(info.value, P.FrameError)


def test_smpplib_would_have_accepted_those() -> None:
    """Why the walker exists: smpplib parses a truncated short_message silently."""
    frame = hdr(P.DELIVER_SM, DELIVER_HEAD + b"\x05hi")
    assert smpplib.smpp.parse_pdu(frame, client=_Seq()).short_message == b"hi"


# ------------------------------------------------------------------------------ fuzzing


@FUZZ
@given(data=st.binary(max_size=400))
def test_random_bytes_only_raise_pdu_error(data: bytes) -> None:
    with contextlib.suppress(P.PduError):
        P.decode(data)


@FUZZ
@given(
    command_id=st.sampled_from(sorted(P.COMMAND_IDS.values())),
    status=st.sampled_from([0, 1]),
    body=st.binary(max_size=300),
)
def test_random_bodies_only_raise_pdu_error(command_id: int, status: int, body: bytes) -> None:
    try:
        pdu = P.decode(hdr(command_id, body, status=status))
    except P.PduError:
        return
    assert P.decode(P.encode(pdu)) == pdu


mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10_000), st.integers(1, 255)),
    st.tuples(st.just("cut"), st.integers(0, 10_000), st.integers(1, 8)),
    st.tuples(st.just("insert"), st.integers(0, 10_000), st.binary(min_size=1, max_size=8)),
)


def mutate(frame: bytes, ops: list[tuple[Any, ...]], fix_length: bool) -> bytes:
    buf = bytearray(frame)
    for op, where, arg in ops:
        i = where % (len(buf) + 1)
        if op == "flip" and i < len(buf):
            buf[i] ^= arg
        elif op == "cut":
            del buf[i : i + arg]
        elif op == "insert":
            buf[i:i] = arg
    if fix_length and len(buf) >= 4:
        buf[:4] = struct.pack(">I", len(buf))
    return bytes(buf)


@FUZZ
@given(pdu=any_pdu, ops=st.lists(mutation, min_size=1, max_size=4), fix=st.booleans())
def test_mutated_pdus_only_raise_pdu_error(
    pdu: P.Pdu, ops: list[tuple[Any, ...]], fix: bool
) -> None:
    frame = mutate(P.encode(pdu), ops, fix)
    try:
        decoded = P.decode(frame)
    except P.PduError:
        return
    # Whatever we accept, we can re-encode to something that decodes the same.
    assert P.decode(P.encode(decoded)) == decoded


# ------------------------------------------------------------------------------ framing


def collect(framer: P.Framer) -> list[bytes]:
    out = []
    while (frame := framer.next_frame()) is not None:
        out.append(frame)
    return out


@FUZZ
@given(
    frames=st.lists(any_pdu.map(P.encode), max_size=8),
    cuts=st.lists(st.integers(0, 5000), max_size=12),
)
def test_framer_is_independent_of_chunking(frames: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(frames)
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    framer = P.Framer()
    got: list[bytes] = []
    for a, b in itertools.pairwise(points):
        framer.feed(stream[a:b])
        got.extend(collect(framer))
    assert got == frames
    assert framer.buffered == 0


@FUZZ
@given(data=st.binary(max_size=600), chunk=st.integers(1, 64))
def test_framer_random_bytes_only_raise_frame_error(data: bytes, chunk: int) -> None:
    framer = P.Framer(max_length=256)
    error: P.FrameError | None = None
    try:
        for i in range(0, len(data), chunk):
            framer.feed(data[i : i + chunk])
            for frame in collect(framer):
                assert 16 <= len(frame) <= 256
                assert struct.unpack(">I", frame[:4])[0] == len(frame)
    except P.FrameError as exc:
        error = exc
    if error is not None:
        assert error.status == P.ESME_RINVCMDLEN
        with pytest.raises(P.FrameError):
            framer.next_frame()


def test_huge_command_length_fails_with_only_a_header() -> None:
    framer = P.Framer()
    framer.feed(struct.pack(">IIII", 0xFFFFFFFF, P.DELIVER_SM, 0, 99))
    with pytest.raises(P.FrameError) as info:
        framer.next_frame()
    assert info.value.status == P.ESME_RINVCMDLEN
    assert (info.value.command_id, info.value.sequence) == (P.DELIVER_SM, 99)
    # The framer is now unusable: the next PDU boundary is unknown.
    with pytest.raises(P.FrameError):
        framer.next_frame()
    with pytest.raises(P.FrameError):
        framer.feed(hdr(P.ENQUIRE_LINK, b""))
    assert framer.buffered == 0


@pytest.mark.parametrize(("length", "ok"), [(15, False), (16, True), (100, True), (101, False)])
def test_framer_length_bounds(length: int, ok: bool) -> None:
    framer = P.Framer(max_length=100)
    frame = struct.pack(">IIII", length, P.ENQUIRE_LINK, 0, 1) + b"\x00" * max(0, length - 16)
    framer.feed(frame)
    if ok:
        assert framer.next_frame() == frame
    else:
        with pytest.raises(P.FrameError):
            framer.next_frame()


def test_framer_waits_for_whole_header_and_body() -> None:
    frame = P.encode(P.make("submit_sm_resp", sequence=1, message_id="abc"))
    framer = P.Framer()
    for byte in frame[:-1]:
        framer.feed(bytes([byte]))
        assert framer.next_frame() is None
    framer.feed(frame[-1:])
    assert framer.next_frame() == frame
    assert framer.next_frame() is None
    with pytest.raises(ValueError, match="max_length"):
        P.Framer(max_length=15)


def test_framer_many_small_pdus_in_one_chunk() -> None:
    frames = [P.encode(P.make("enquire_link", sequence=i)) for i in range(20_000)]
    framer = P.Framer()
    framer.feed(b"".join(frames[:15_000]))
    got = [framer.next_frame() for _ in range(10_000)]
    framer.feed(b"".join(frames[15_000:]))  # compacts the consumed prefix
    assert got + collect(framer) == frames


def test_bench_script_runs(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    from bench import bench_codec

    out = tmp_path / "codec.json"
    assert bench_codec.main(["--count", "40", "--runs", "1", "--output", str(out)]) == 0
    assert "deliver_sm/s" in capsys.readouterr().out
    assert '"pipeline"' in out.read_text()
