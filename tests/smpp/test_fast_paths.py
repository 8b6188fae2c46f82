"""The ingest hot path's shortcuts give exactly what the general code gives.

Each shortcut is checked against a reference: the general code it bypasses, or (for code
rewritten in place) a verbatim copy of the earlier implementation kept here.
"""

from __future__ import annotations

import hashlib
import re
import struct
import uuid

from hypothesis import given, settings
from hypothesis import strategies as st

from gatewayd import events
from gatewayd.smpp import pdu
from gatewayd.smpp import receive as rx


def reference_dedup_key(p: pdu.Pdu, carrier: str) -> str:
    """dedup_key as it was first written: one hash update per prefix and per item."""
    items: list[bytes] = [carrier.encode("utf-8"), p.command.encode("latin-1")]
    for name in (
        "source_addr_ton",
        "source_addr_npi",
        "dest_addr_ton",
        "dest_addr_npi",
        "esm_class",
        "data_coding",
        "protocol_id",
    ):
        items.append(str(p.get_int(name)).encode())
    for name in ("source_addr", "destination_addr", "schedule_delivery_time", "validity_period"):
        items.append(p.get_bytes(name))
    items.append(rx.user_data(p))
    for tag, field in (
        (rx.TAG_SAR_MSG_REF_NUM, "sar_msg_ref_num"),
        (rx.TAG_SAR_TOTAL_SEGMENTS, "sar_total_segments"),
        (rx.TAG_SAR_SEGMENT_SEQNUM, "sar_segment_seqnum"),
        (rx.TAG_MESSAGE_STATE, "message_state"),
    ):
        items.append(str(rx._tlv_int(p, tag, field)).encode())
    for tag, field in (
        (rx.TAG_RECEIPTED_MESSAGE_ID, "receipted_message_id"),
        (rx.TAG_NETWORK_ERROR_CODE, "network_error_code"),
    ):
        items.append(rx._tlv_bytes(p, tag, field) or b"")
    digest = hashlib.sha256()
    for item in items:
        digest.update(len(item).to_bytes(4, "big"))
        digest.update(item)
    return digest.hexdigest()


cstrings = st.binary(max_size=20).map(lambda b: b.replace(b"\x00", b"x"))
octets = st.integers(0, 255)
sar_tlvs = st.lists(
    st.tuples(
        st.sampled_from(
            [
                rx.TAG_SAR_MSG_REF_NUM,
                rx.TAG_SAR_TOTAL_SEGMENTS,
                rx.TAG_SAR_SEGMENT_SEQNUM,
                rx.TAG_MESSAGE_STATE,
                rx.TAG_RECEIPTED_MESSAGE_ID,
                rx.TAG_NETWORK_ERROR_CODE,
                rx.TAG_MESSAGE_PAYLOAD,
                0x1401,  # unknown: kept, never part of the key
            ]
        ),
        st.binary(max_size=4),
    ),
    max_size=4,
)


@st.composite
def deliver_sms(draw: st.DrawFn) -> pdu.Pdu:
    """deliver_sm PDUs as the decoder returns them, TLVs and odd fields included."""
    sms = draw(st.binary(max_size=40))
    p = pdu.make(
        "deliver_sm",
        sequence=draw(st.integers(1, 0x7FFFFFFF)),
        source_addr_ton=draw(octets),
        source_addr_npi=draw(octets),
        source_addr=draw(cstrings),
        dest_addr_ton=draw(octets),
        dest_addr_npi=draw(octets),
        destination_addr=draw(cstrings),
        esm_class=draw(octets),
        protocol_id=draw(octets),
        data_coding=draw(octets),
        schedule_delivery_time=draw(st.sampled_from([b"", b"260102030405000+"])),
        validity_period=draw(st.sampled_from([b"", b"000001000000000R"])),
        short_message=sms,
    )
    body = pdu.encode(p)
    extra = b"".join(
        tag.to_bytes(2, "big") + len(value).to_bytes(2, "big") + value
        for tag, value in draw(sar_tlvs)
    )
    frame = (len(body) + len(extra)).to_bytes(4, "big") + body[4:] + extra
    try:
        return pdu.decode(frame)
    except pdu.PduError:
        return pdu.decode(body)  # a TLV of the wrong size for its tag: leave the TLVs out


@given(deliver_sms(), st.sampled_from(["sim", "carrier-ä"]))
def test_dedup_key_matches_the_reference(p: pdu.Pdu, carrier: str) -> None:
    assert rx.dedup_key(p, carrier) == reference_dedup_key(p, carrier)


@given(st.integers(0, 2**40), st.integers(0, 255))
def test_dedup_key_odd_field_values_match_the_reference(number: int, octet: int) -> None:
    # Pdu objects built by hand may hold values the wire never carries.
    p = pdu.Pdu(
        command="deliver_sm",
        command_id=pdu.DELIVER_SM,
        sequence=1,
        fields={"esm_class": number, "data_coding": -octet, "sar_msg_ref_num": octet},
    )
    assert rx.dedup_key(p, "c") == reference_dedup_key(p, "c")


def reference_event_id(now_ms: int, random: bytes) -> str:
    """new_event_id as first written: one os.urandom(10) per id, through uuid.UUID."""
    rand = int.from_bytes(random, "big")
    value = (now_ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76  # version 7
    value |= ((rand >> 68) & 0xFFF) << 64  # rand_a (12 bits)
    value |= 0b10 << 62  # variant
    value |= rand & ((1 << 62) - 1)  # rand_b (62 bits)
    return str(uuid.UUID(int=value))


@given(st.integers(0, 2**48 + 5), st.binary(min_size=10, max_size=10))
def test_event_id_is_the_reference(now_ms: int, rand: bytes) -> None:
    # The ids come from a pool of pre-formatted randomness: put these bytes next in it.
    events._ID_RANDOM.appendleft(events._id_suffixes(rand)[0])
    assert rx._event_id(now_ms) == reference_event_id(now_ms, rand)
    events._ID_RANDOM.appendleft(events._id_suffixes(rand)[0])
    assert events.new_event_id(now_ms) == reference_event_id(now_ms, rand)


@given(st.lists(st.binary(min_size=10, max_size=10), min_size=1, max_size=20))
def test_a_batch_of_randomness_gives_one_id_per_10_bytes(blocks: list[bytes]) -> None:
    suffixes = events._id_suffixes(b"".join(blocks))
    assert len(suffixes) == len(blocks)
    for rest, block in zip(suffixes, blocks, strict=True):
        assert reference_event_id(0, block) == f"00000000-0000-{rest}"


def test_event_id_shape() -> None:
    ids = {rx._event_id(1_700_000_000_000) for _ in range(100)}
    assert len(ids) == 100
    pattern = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
    assert all(pattern.match(i) for i in ids)


@given(
    st.sampled_from(["deliver_sm", "data_sm", "submit_sm"]),
    st.integers(1, 0x7FFFFFFF),
    st.one_of(st.just(0), st.integers(0, 0xFFFFFFFF)),
)
def test_bare_response_is_what_response_for_encodes(command: str, seq: int, status: int) -> None:
    request = pdu.make(command, sequence=seq)
    assert pdu.encode_bare_response(request, status) == pdu.encode(
        pdu.response_for(request, status)
    )


def test_bare_response_only_for_message_id_responses() -> None:
    for command in ("bind_transceiver", "enquire_link", "unbind", "alert_notification"):
        assert pdu.encode_bare_response(pdu.make(command, sequence=1), 0) is None
    assert pdu.encode_bare_response(pdu.make("deliver_sm", sequence=1), -1) is None
    assert pdu.encode_bare_response(pdu.make("deliver_sm", sequence=1), 2**32) is None


@st.composite
def bodies(draw: st.DrawFn) -> tuple[str, bytes]:
    """A command and a body for it: well-formed, cut short, grown, corrupted or random."""
    command = draw(st.sampled_from(sorted(pdu.COMMAND_IDS)))
    if command in ("deliver_sm", "submit_sm", "data_sm") and draw(st.booleans()):
        fields: dict[str, int | bytes] = {
            "source_addr": draw(cstrings),
            "destination_addr": draw(cstrings),
            "esm_class": draw(octets),
        }
        if command != "data_sm":
            fields["short_message"] = draw(st.binary(max_size=254))
        body = pdu.encode(pdu.make(command, sequence=1, **fields))[pdu.HEADER_LENGTH :]
    elif command != "outbind" and draw(st.booleans()):
        body = pdu.encode(pdu.make(command, sequence=1))[pdu.HEADER_LENGTH :]
    else:
        body = draw(st.binary(max_size=80))
    how = draw(st.sampled_from(["as is", "cut", "grow", "flip"]))
    if how == "cut" and body:
        body = body[: draw(st.integers(0, len(body) - 1))]
    elif how == "grow":
        body += draw(st.binary(min_size=1, max_size=40))
    elif how == "flip" and body:
        i = draw(st.integers(0, len(body) - 1))
        body = body[:i] + bytes([draw(octets)]) + body[i + 1 :]
    return command, body


@settings(max_examples=500)
@given(bodies())
def test_fast_decoder_agrees_with_the_walker(case: tuple[str, bytes]) -> None:
    command, body = case
    layout = pdu._LAYOUTS[command]
    frame = struct.pack(">IIII", 16 + len(body), layout.command_id, 0, 9) + body
    fields: dict[str, int | bytes] = {}
    pos = layout.fast(frame, len(frame), fields)
    try:
        walked, walked_pos = pdu._walk(layout, frame, len(frame), layout.command_id, 9)
    except pdu.PduError:
        assert pos == -1  # malformed: the walker takes over and says why
    else:
        assert pos == walked_pos
        assert list(fields.items()) == list(walked.items())
