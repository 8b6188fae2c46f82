from __future__ import annotations

import datetime as dt
import itertools
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gatewayd import charsets
from gatewayd.events import DeliveryReceipt, MessageClass, MoMessage, ReceiptStatus
from gatewayd.smpp import pdu
from gatewayd.smpp import receive as rx

T0 = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
HANDSET = "447700900123"
SHORT_CODE = "12345"


def deliver(
    short_message: bytes = b"",
    *,
    esm_class: int = 0,
    data_coding: int = 0,
    source: str = HANDSET,
    destination: str = SHORT_CODE,
    tlvs: tuple[tuple[int, bytes], ...] = (),
    sequence: int = 1,
    **fields: int | bytes,
) -> pdu.Pdu:
    """A deliver_sm shaped as the codec returns it."""
    all_fields: dict[str, int | bytes] = {
        "service_type": b"",
        "source_addr_ton": 1,
        "source_addr_npi": 1,
        "source_addr": source.encode("latin-1"),
        "dest_addr_ton": 0,
        "dest_addr_npi": 0,
        "destination_addr": destination.encode("latin-1"),
        "esm_class": esm_class,
        "protocol_id": 0,
        "priority_flag": 0,
        "schedule_delivery_time": b"",
        "validity_period": b"",
        "registered_delivery": 0,
        "data_coding": data_coding,
        "sm_length": len(short_message),
        "short_message": short_message,
        **fields,
    }
    return pdu.Pdu(
        command="deliver_sm",
        command_id=pdu.DELIVER_SM,
        sequence=sequence,
        fields=all_fields,
        tlvs=tuple(pdu.Tlv(tag=tag, value=value) for tag, value in tlvs),
    )


def decode(p: pdu.Pdu, **options: object) -> MoMessage | DeliveryReceipt | rx.Part:
    return rx.decode_deliver(
        p,
        carrier="acme",
        received_at=T0,
        options=rx.ReceiveOptions(**options),  # type: ignore[arg-type]
    )


def mo(p: pdu.Pdu, **options: object) -> MoMessage:
    event = decode(p, **options)
    assert isinstance(event, MoMessage)
    return event


def dlr(p: pdu.Pdu, **options: object) -> DeliveryReceipt:
    event = decode(p, **options)
    assert isinstance(event, DeliveryReceipt)
    return event


def part(p: pdu.Pdu) -> rx.Part:
    event = decode(p)
    assert isinstance(event, rx.Part)
    return event


def udh8(ref: int, total: int, seq: int) -> bytes:
    return bytes((0x05, 0x00, 0x03, ref, total, seq))


def udh16(ref: int, total: int, seq: int) -> bytes:
    return bytes((0x06, 0x08, 0x04, ref >> 8, ref & 0xFF, total, seq))


def sar(ref: int, total: int, seq: int) -> tuple[tuple[int, bytes], ...]:
    return (
        (rx.TAG_SAR_MSG_REF_NUM, ref.to_bytes(2, "big")),
        (rx.TAG_SAR_TOTAL_SEGMENTS, bytes((total,))),
        (rx.TAG_SAR_SEGMENT_SEQNUM, bytes((seq,))),
    )


# --- single messages -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("short_message", "data_coding", "options", "text", "keyword", "content"),
    [
        # GSM 03.38 unpacked with escapes: "Price 5€ [promo]"
        (b"Price 5\x1b\x65 \x1b\x3cpromo\x1b\x3e", 0, {}, "Price 5€ [promo]", "PRICE", "text"),
        (b"stop.", 0, {}, "stop.", "STOP", "text"),
        (b"\x00 home", 0, {}, "@ home", "@", "text"),
        # The same bytes read as Latin-1 or ASCII by carriers that use data_coding 0 so.
        (b"Caf\xe9 ok", 0, {"gsm_as": "latin1"}, "Café ok", "CAFÉ", "text"),
        (b"hi_there", 0, {"gsm_as": "ascii"}, "hi_there", "HI_THERE", "text"),
        (b"hi_there", 0, {}, "hi§there", "HI§THERE", "text"),
        (b"ascii text", 1, {}, "ascii text", "ASCII", "text"),
        (b"Gr\xfc\xdfe aus K\xf6ln", 3, {}, "Grüße aus Köln", "GRÜSSE", "text"),
        ("join 😀 now".encode("utf-16-be"), 8, {}, "join 😀 now", "JOIN", "text"),
        ("مرحبا".encode("utf-16-be"), 8, {}, "مرحبا", "مرحبا", "text"),
        (b"\x00j\x00o\x00", 8, {}, "jo\ufffd", "JO\ufffd", "text"),  # odd length
        (b"\x0b\x05\x04\x0b\x84", 4, {}, "", "", "binary"),
        (b"\xca\xfe", 2, {}, "", "", "binary"),
        (b"\x82\xa0", 5, {}, "", "", "unknown"),
        (b"", 0, {}, "", "", "text"),
    ],
)
def test_mo_text(
    short_message: bytes,
    data_coding: int,
    options: dict[str, object],
    text: str,
    keyword: str,
    content: str,
) -> None:
    event = mo(deliver(short_message, data_coding=data_coding), **options)
    assert event.text == text
    assert event.keyword == keyword
    assert event.content == content
    assert event.raw == short_message  # bytes kept whatever the coding
    assert event.data_coding == data_coding
    assert event.complete
    assert event.parts == 1


def test_mo_fields() -> None:
    event = mo(
        deliver(
            b"Hello",
            destination="+44 7700 900999",
            protocol_id=0x40,
            priority_flag=1,
            schedule_delivery_time=b"260102030405000+",
        )
    )
    assert event.carrier == "acme"
    assert (event.source.addr, event.source.ton, event.source.npi) == (HANDSET, 1, 1)
    assert event.destination.addr == "+44 7700 900999"
    assert event.message_class is MessageClass.P2P
    assert (event.protocol_id, event.priority) == (0x40, 1)
    assert event.received_at == T0
    assert event.smsc_timestamp == "sched=260102030405000+"
    assert event.id[14] == "7"


def test_message_payload_when_sm_length_is_zero() -> None:
    long_text = ("word " * 60).encode()
    event = mo(deliver(b"", tlvs=((rx.TAG_MESSAGE_PAYLOAD, long_text),)))
    assert event.text == long_text.decode()
    assert event.keyword == "WORD"


def test_message_payload_from_named_field() -> None:
    # A codec that put the TLV only in fields (not in tlvs) is read as well.
    event = mo(deliver(b"", message_payload=b"named"))
    assert event.text == "named"


def test_mo_that_looks_like_a_receipt_stays_an_mo() -> None:
    text = b"id:123 sub:001 dlvrd:001 submit date:2301011200 done date:2301011201 stat:DELIVRD"
    event = mo(deliver(text, esm_class=0x00))
    assert event.text == text.decode()
    assert event.keyword == "ID:123"


def test_conversation_abort_is_not_a_receipt() -> None:
    assert isinstance(decode(deliver(b"x", esm_class=0x18)), MoMessage)


@pytest.mark.parametrize(
    ("address", "max_digits", "expected"),
    [
        ("12345", 8, MessageClass.A2P),
        ("12345678", 8, MessageClass.A2P),
        ("123456789", 8, MessageClass.P2P),
        ("+447700900123", 8, MessageClass.P2P),
        ("+1 234 567", 8, MessageClass.A2P),  # 7 digits after stripping + and spaces
        ("+44 7700 900123", 8, MessageClass.P2P),
        ("ACME", 8, MessageClass.A2P),
        ("Acme123456789", 8, MessageClass.A2P),  # alphanumeric, however long
        ("", 8, MessageClass.A2P),
        ("123456789", 9, MessageClass.A2P),
        ("٣٣٣٣٣٣٣٣٣", 8, MessageClass.A2P),  # non-ASCII digits are not an MSISDN
    ],
)
def test_classify(address: str, max_digits: int, expected: MessageClass) -> None:
    assert rx.classify(address, max_digits) is expected


def test_classification_threshold_is_configurable() -> None:
    p = deliver(b"hi", destination="123456789")
    assert mo(p).message_class is MessageClass.P2P
    assert mo(p, a2p_max_digits=9).message_class is MessageClass.A2P


# --- UDH and SAR ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "elements", "body"),
    [
        (udh8(0x42, 2, 1) + b"abc", ((0x00, b"\x42\x02\x01"),), b"abc"),
        (udh16(0x1234, 3, 2) + b"x", ((0x08, b"\x12\x34\x03\x02"),), b"x"),
        # WAP push shape: application port IE (0x05) before the concat IE.
        (
            bytes.fromhex("0b05040b8423f00003420201") + b"z",
            ((0x05, bytes.fromhex("0b8423f0")), (0x00, b"\x42\x02\x01")),
            b"z",
        ),
        (b"\x00abc", (), b"abc"),  # UDHL 0
        (b"\x03\x00\x05\x01ab", (), b"ab"),  # IE overruns the header: list ends
        (b"\x09ab", None, b"\x09ab"),  # UDHL past the end: no UDH, nothing lost
        (b"", None, b""),
    ],
)
def test_parse_udh(
    data: bytes, elements: tuple[tuple[int, bytes], ...] | None, body: bytes
) -> None:
    ies, rest = rx.parse_udh(data)
    if elements is None:
        assert ies is None
    else:
        assert ies is not None
        assert [(ie.iei, ie.data) for ie in ies] == list(elements)
    assert rest == body


@pytest.mark.parametrize(
    ("p", "reference", "total", "seq", "scheme", "data"),
    [
        (deliver(udh8(7, 3, 2) + b"Hello", esm_class=0x40), 7, 3, 2, "udh8", b"Hello"),
        (deliver(udh16(0xBEEF, 2, 1) + b"Hi", esm_class=0x40), 0xBEEF, 2, 1, "udh16", b"Hi"),
        (
            # Another IE (a national language shift, 0x25) before the concat IE.
            deliver(b"\x08\x25\x01\x00\x00\x03\x09\x02\x02tail", esm_class=0x40),
            9,
            2,
            2,
            "udh8",
            b"tail",
        ),
        (
            # An IE after the concat IE.
            deliver(b"\x08\x00\x03\x09\x02\x01\x25\x01\x00head", esm_class=0x40),
            9,
            2,
            1,
            "udh8",
            b"head",
        ),
        (deliver(b"seg two", tlvs=sar(0x0102, 2, 2)), 0x0102, 2, 2, "sar", b"seg two"),
        (
            # UDH and SAR both present: the UDH (inside the message itself) wins.
            deliver(udh8(5, 2, 1) + b"x", esm_class=0x40, tlvs=sar(99, 3, 3)),
            5,
            2,
            1,
            "udh8",
            b"x",
        ),
    ],
)
def test_parts(p: pdu.Pdu, reference: int, total: int, seq: int, scheme: str, data: bytes) -> None:
    got = part(p)
    assert (got.reference, got.total, got.seq, got.scheme, got.data) == (
        reference,
        total,
        seq,
        scheme,
        data,
    )
    assert got.carrier == "acme"
    assert got.message_class is MessageClass.A2P


@pytest.mark.parametrize(
    "p",
    [
        deliver(udh8(7, 1, 1) + b"only", esm_class=0x40),  # total 1: a whole message
        deliver(udh8(7, 0, 0) + b"only", esm_class=0x40),  # invalid: ignored (23.040)
        deliver(udh8(7, 2, 3) + b"only", esm_class=0x40),  # seq above total: ignored
        deliver(b"only", tlvs=sar(1, 2, 0)),  # SAR seq 0: ignored
        deliver(b"only", tlvs=sar(1, 2, 1)[:2]),  # SAR incomplete: ignored
    ],
)
def test_not_really_parts(p: pdu.Pdu) -> None:
    assert mo(p).text == "only"


def test_udh_without_udhi_is_text() -> None:
    # Without esm_class 0x40 the leading bytes are message text, not a header.
    event = mo(deliver(b"\x05\x00\x03\x01\x02\x01Hi", esm_class=0))
    assert event.raw.endswith(b"Hi")
    assert len(event.raw) == 8


# --- reassembly ------------------------------------------------------------------------------


def split_pdus(
    data: bytes, cut: list[int], *, data_coding: int = 0, ref: int = 0x42, sixteen: bool = False
) -> list[pdu.Pdu]:
    bounds = [0, *cut, len(data)]
    chunks = [data[a:b] for a, b in itertools.pairwise(bounds)]
    total = len(chunks)
    make = udh16 if sixteen else udh8
    return [
        deliver(make(ref, total, i + 1) + chunk, esm_class=0x40, data_coding=data_coding)
        for i, chunk in enumerate(chunks)
    ]


def feed(r: rx.Reassembler, pdus: list[pdu.Pdu], now: dt.datetime = T0) -> list[MoMessage]:
    out = []
    for p in pdus:
        got = r.add(part(p), now)
        if got is not None:
            out.append(got)
    return out


def test_reassembles_in_order() -> None:
    r = rx.Reassembler()
    [msg] = feed(r, split_pdus(b"Hello long world", [6, 11]))
    assert msg.text == "Hello long world"
    assert msg.parts == 3
    assert msg.complete
    assert msg.parts_received is None
    assert msg.keyword == "HELLO"
    assert msg.esm_class == 0x40
    assert r.pending_count == 0


def test_out_of_order_and_duplicated_parts_give_exactly_one_message() -> None:
    r = rx.Reassembler()
    a, b, c = split_pdus(b"one two three", [4, 8], sixteen=True)
    assert feed(r, [c, a, c, a]) == []
    assert r.pending_count == 2
    assert r.pending_messages == 1
    [msg] = feed(r, [b, b, c])
    assert msg.text == "one two three"
    # A late duplicate of an already delivered message does not start a phantom message.
    assert feed(r, [a]) == []
    assert r.pending_count == 0
    assert r.expire(T0 + dt.timedelta(hours=1)) == []


def test_reference_reused_with_new_content_is_a_new_message() -> None:
    r = rx.Reassembler()
    assert len(feed(r, split_pdus(b"first message", [6]))) == 1
    [again] = feed(r, split_pdus(b"second one!!!", [6]))
    assert again.text == "second one!!!"


def test_different_senders_do_not_mix() -> None:
    r = rx.Reassembler()
    p1 = deliver(udh8(1, 2, 1) + b"A1", esm_class=0x40, source="447700900001")
    p2 = deliver(udh8(1, 2, 1) + b"B1", esm_class=0x40, source="447700900002")
    p3 = deliver(udh8(1, 2, 2) + b"A2", esm_class=0x40, source="447700900001")
    [msg] = feed(r, [p1, p2, p3])
    assert msg.text == "A1A2"
    assert r.pending_count == 1


def test_gsm_escape_straddling_parts_decodes_after_joining() -> None:
    data = charsets.gsm_encode("Cost: 10€ total")
    cut = data.index(b"\x1b") + 1  # ESC ends part 1, 0x65 starts part 2
    [msg] = feed(rx.Reassembler(), split_pdus(data, [cut]))
    assert msg.text == "Cost: 10€ total"


def test_surrogate_pair_straddling_parts_decodes_after_joining() -> None:
    data = "ok 😀 fine".encode("utf-16-be")
    cut = 8  # between the high and the low surrogate
    [msg] = feed(rx.Reassembler(), reversed(split_pdus(data, [cut], data_coding=8)))  # type: ignore[arg-type]
    assert msg.text == "ok 😀 fine"


def test_sar_parts_reassemble() -> None:
    pdus = [
        deliver(b"Hello ", tlvs=sar(300, 2, 1)),
        deliver(b"SAR", tlvs=sar(300, 2, 2)),
    ]
    [msg] = feed(rx.Reassembler(), pdus[::-1])
    assert msg.text == "Hello SAR"


def test_missing_part_times_out_incomplete_never_dropped() -> None:
    r = rx.Reassembler(timeout=60)
    a, _b, c = split_pdus(b"aaa bbb ccc", [4, 8])
    feed(r, [a, c])
    assert r.next_deadline() == T0 + dt.timedelta(seconds=60)
    assert r.expire(T0 + dt.timedelta(seconds=59)) == []
    [msg] = r.expire(T0 + dt.timedelta(seconds=60))
    assert not msg.complete
    assert msg.parts == 3
    assert msg.parts_received == 2
    assert msg.text == "aaa ccc"
    assert r.pending_count == 0
    assert r.next_deadline() is None


def test_pending_and_restore_survive_a_restart() -> None:
    r = rx.Reassembler(timeout=60)
    a, b, c = split_pdus("ünïcödé text".encode("utf-16-be"), [6, 14], data_coding=8)
    feed(r, [a, c])
    saved = [p.to_json() for p in r.pending()]

    fresh = rx.Reassembler(timeout=60)
    assert fresh.restore(rx.Part.from_json(s) for s in saved) == []
    assert fresh.pending_count == 2
    later = T0 + dt.timedelta(seconds=30)
    [msg] = feed(fresh, [b], now=later)
    assert msg.text == "ünïcödé text"
    assert msg.received_at == T0


def test_restore_keeps_the_original_deadline() -> None:
    r = rx.Reassembler(timeout=60)
    feed(r, split_pdus(b"abcdef", [3])[:1])
    fresh = rx.Reassembler(timeout=60)
    fresh.restore(r.pending())
    assert fresh.next_deadline() == T0 + dt.timedelta(seconds=60)
    [msg] = fresh.expire(T0 + dt.timedelta(seconds=61))
    assert msg.text == "abc"
    assert not msg.complete


def test_restore_of_a_complete_set_returns_the_message() -> None:
    parts = [part(p) for p in split_pdus(b"abcdef", [3])]
    [msg] = rx.Reassembler().restore(parts)
    assert msg.text == "abcdef"


def test_part_json_round_trip() -> None:
    p = part(deliver(udh16(513, 4, 3) + b"\x00\xff", esm_class=0x40, data_coding=8))
    assert rx.Part.from_json(p.to_json()) == p
    with pytest.raises(ValueError, match="schema"):
        rx.Part.from_dict({**p.to_dict(), "schema": 99})


@st.composite
def split_message(draw: st.DrawFn) -> tuple[bytes, int, list[int]]:
    data_coding = draw(st.sampled_from([0, 8]))
    if data_coding == 0:
        alphabet = sorted(set(charsets.GSM_BASIC) - {"\x1b"} | {"€", "[", "~"})
        data = charsets.gsm_encode(draw(st.text(alphabet=alphabet, min_size=2, max_size=80)))
    else:
        text = draw(st.text(min_size=2, max_size=60))
        data = text.encode("utf-16-be")
    cuts = draw(
        st.lists(
            st.integers(1, len(data) - 1), unique=True, min_size=1, max_size=min(6, len(data) - 1)
        ).map(sorted)
    )
    return data, data_coding, cuts


@given(split_message(), st.randoms(use_true_random=False), st.integers(0, 2))
def test_any_permutation_of_parts_gives_the_same_message(
    case: tuple[bytes, int, list[int]], rnd: random.Random, duplicates: int
) -> None:
    data, data_coding, cuts = case
    pdus = split_pdus(data, cuts, data_coding=data_coding)
    pdus += [rnd.choice(pdus) for _ in range(duplicates)]
    rnd.shuffle(pdus)
    results = feed(rx.Reassembler(), pdus)
    assert len(results) == 1
    expected = charsets.decode_text(data, data_coding)
    assert results[0].raw == data
    assert results[0].text == expected.text


# --- receipts --------------------------------------------------------------------------------

D12 = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
APPENDIX_B = (
    b"id:7220887 sub:001 dlvrd:001 submit date:2601020304 done date:2601020305 "
    b"stat:DELIVRD err:000 text:Hello world id:99"
)


def test_receipt_from_text_only() -> None:
    r = dlr(deliver(APPENDIX_B, esm_class=0x04, source=HANDSET, destination="ACME"))
    assert r.message_id == "7220887"
    assert r.normalized_message_id == "7220887"
    assert r.status is ReceiptStatus.DELIVRD
    assert r.error == "000"
    assert r.submitted == 1
    assert r.delivered == 1
    assert r.submit_date == dt.datetime(2026, 1, 2, 3, 4, tzinfo=dt.UTC)
    assert r.done_date == dt.datetime(2026, 1, 2, 3, 5, tzinfo=dt.UTC)
    assert r.text == "Hello world id:99"  # the excerpt may contain anything
    assert r.source.addr == HANDSET
    assert r.destination.addr == "ACME"
    assert r.esm_class == 0x04
    assert r.carrier == "acme"
    assert r.received_at == T0


def test_receipt_from_tlvs_only() -> None:
    r = dlr(
        deliver(
            b"",
            esm_class=0x04,
            tlvs=(
                (rx.TAG_RECEIPTED_MESSAGE_ID, b"0A1B\x00"),
                (rx.TAG_MESSAGE_STATE, b"\x05"),
                (rx.TAG_NETWORK_ERROR_CODE, b"\x03\x00\x22"),
            ),
        )
    )
    assert r.message_id == "0A1B"
    assert r.normalized_message_id == "2587"
    assert r.status is ReceiptStatus.UNDELIV
    assert r.error == "034"
    assert r.submit_date is None
    assert r.done_date is None


def test_receipt_tlvs_from_named_fields() -> None:
    r = dlr(deliver(b"", esm_class=0x04, receipted_message_id=b"abc", message_state=3))
    assert (r.message_id, r.status) == ("abc", ReceiptStatus.EXPIRED)


def test_receipt_tlv_wins_over_text() -> None:
    r = dlr(
        deliver(
            APPENDIX_B,
            esm_class=0x04,
            tlvs=(
                (rx.TAG_RECEIPTED_MESSAGE_ID, b"6E2F4F"),
                (rx.TAG_MESSAGE_STATE, b"\x08"),
                (rx.TAG_NETWORK_ERROR_CODE, b"\x03\x00\x01"),
            ),
        )
    )
    assert r.message_id == "6E2F4F"
    assert r.status is ReceiptStatus.REJECTD
    assert r.error == "001"
    assert r.submitted == 1  # text still fills what the TLVs do not carry
    assert r.submit_date == dt.datetime(2026, 1, 2, 3, 4, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("esm_class", "text", "expected"),
    [
        # Upper-case keys, 12-digit dates, no text:
        (
            0x04,
            b"ID:5B0C9A2A SUB:1 DLVRD:1 SUBMIT DATE:260102030405 DONE DATE:260102030406 "
            b"STAT:DELIVRD ERR:0",
            ("5B0C9A2A", ReceiptStatus.DELIVRD, "0", D12, "", 1),
        ),
        # Ids with dashes, missing fields:
        (
            0x04,
            b"id:b34e35ad-fe34-4a8b-977c-b21cd76cd7d6 stat:UNDELIV err:001",
            (
                "b34e35ad-fe34-4a8b-977c-b21cd76cd7d6",
                ReceiptStatus.UNDELIV,
                "001",
                None,
                "",
                None,
            ),
        ),
        # submit_date spelling, 14-digit dates, long status word, Text: capitalised:
        (
            0x04,
            b"id:42 sub:001 dlvrd:000 submit_date:20260102030405 done_date:20260102030406 "
            b"stat:EXPIRED err:027 Text:Your code",
            ("42", ReceiptStatus.EXPIRED, "027", D12, "Your code", 1),
        ),
        (0x04, b"id:1 stat:DELIVERED", ("1", ReceiptStatus.DELIVRD, "", None, "", None)),
        (0x04, b"id:1 stat:UNDELIVERABLE", ("1", ReceiptStatus.UNDELIV, "", None, "", None)),
        (0x04, b"id:1 stat:acceptd", ("1", ReceiptStatus.ACCEPTD, "", None, "", None)),
        (0x04, b"id:1 stat:2", ("1", ReceiptStatus.DELIVRD, "", None, "", None)),
        (0x04, b"id:1 stat:WEIRD", ("1", ReceiptStatus.UNKNOWN, "", None, "", None)),
        (0x04, b"garbage", ("", ReceiptStatus.UNKNOWN, "", None, "", None)),
        (0x04, b"", ("", ReceiptStatus.UNKNOWN, "", None, "", None)),
        # Impossible date: None, not an exception.
        (
            0x04,
            b"id:9 submit date:2613450000 stat:ENROUTE",
            ("9", ReceiptStatus.ENROUTE, "", None, "", None),
        ),
        # The other receipt message types (SMPP 3.4 §5.2.12):
        (0x08, b"id:8 stat:DELIVRD", ("8", ReceiptStatus.DELIVRD, "", None, "", None)),
        (0x10, b"id:10 stat:DELIVRD", ("10", ReceiptStatus.DELIVRD, "", None, "", None)),
        (0x20, b"id:20 stat:ENROUTE", ("20", ReceiptStatus.ENROUTE, "", None, "", None)),
        # Receipt type with other esm_class bits set (messaging mode, UDHI without a UDH).
        (0x07, b"id:7 stat:DELIVRD", ("7", ReceiptStatus.DELIVRD, "", None, "", None)),
    ],
)
def test_receipt_text_variants(
    esm_class: int,
    text: bytes,
    expected: tuple[str, ReceiptStatus, str, dt.datetime | None, str, int | None],
) -> None:
    message_id, status, error, submit, excerpt, submitted = expected
    r = dlr(deliver(text, esm_class=esm_class))
    assert r.message_id == message_id
    assert r.status is status
    assert r.error == error
    assert r.submit_date == submit
    assert r.text == excerpt
    assert r.submitted == submitted


def test_receipt_in_ucs2_and_receipt_timezone() -> None:
    text = "id:77 submit date:2601020304 stat:DELIVRD".encode("utf-16-be")
    tz = dt.timezone(dt.timedelta(hours=2))
    r = dlr(deliver(text, esm_class=0x04, data_coding=8), receipt_tz=tz)
    assert r.message_id == "77"
    assert r.submit_date == dt.datetime(2026, 1, 2, 3, 4, tzinfo=tz)


def test_receipt_message_id_format_option() -> None:
    r = dlr(deliver(b"id:10 stat:DELIVRD", esm_class=0x04), message_id_format="hex")
    assert r.normalized_message_id == "16"


def test_message_state_table() -> None:
    words = {state: rx.MESSAGE_STATES[state].value for state in range(1, 9)}
    assert words == {
        1: "ENROUTE",
        2: "DELIVRD",
        3: "EXPIRED",
        4: "DELETED",
        5: "UNDELIV",
        6: "ACCEPTD",
        7: "UNKNOWN",
        8: "REJECTD",
    }
    r = dlr(deliver(b"", esm_class=0x04, tlvs=((rx.TAG_MESSAGE_STATE, b"\x63"),)))
    assert r.status is ReceiptStatus.UNKNOWN


# --- message ids -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "fmt", "expected"),
    [
        ("12345", "auto", "12345"),
        ("00012345", "auto", "12345"),
        ("0", "auto", "0"),
        ("000", "auto", "0"),
        ("0A1B", "auto", "2587"),
        ("a1b", "auto", "2587"),
        ("0x0a1b", "auto", "2587"),
        ("A1B", "decimal", "A1B"),
        ("10", "hex", "16"),
        ("10", "decimal", "10"),
        (" 6e2f4f\x00", "auto", "7221071"),
        ("b34e35ad-fe34-4a8b-977c-b21cd76cd7d6", "auto", "B34E35AD-FE34-4A8B-977C-B21CD76CD7D6"),
        ("msg-42x", "auto", "MSG-42X"),
        ("", "auto", ""),
        ("f" * 65, "auto", "F" * 65),  # too long to be a number: upper-cased
    ],
)
def test_normalize_message_id(value: str, fmt: rx.MessageIdFormat, expected: str) -> None:
    assert rx.normalize_message_id(value, id_format=fmt) == expected


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("0A1B", "2587"),  # submit_sm_resp in hex, receipt in decimal (Kannel msg-id-type)
        ("0a1b", "0A1B"),
        ("002587", "2587"),
        ("abcdef12", "ABCDEF12"),
        ("uuid-AbC", "UUID-abc"),
    ],
)
def test_id_variants_match(a: str, b: str) -> None:
    assert rx.normalize_message_id(a) == rx.normalize_message_id(b)


def test_message_id_candidates_cover_the_ambiguous_case() -> None:
    assert rx.message_id_candidates("10") == {"10", "16"}
    assert rx.normalize_message_id("16") in rx.message_id_candidates("10")


# --- duplicate detection ---------------------------------------------------------------------


def test_dedup_key() -> None:
    base = deliver(b"hello", sequence=1)
    assert rx.dedup_key(base, "acme") == rx.dedup_key(deliver(b"hello", sequence=99), "acme")
    assert rx.dedup_key(base, "acme") != rx.dedup_key(base, "other")
    assert rx.dedup_key(base, "acme") != rx.dedup_key(deliver(b"hellp"), "acme")
    assert rx.dedup_key(base, "acme") != rx.dedup_key(deliver(b"hello", source="1"), "acme")
    with_time = deliver(b"hello", schedule_delivery_time=b"260102030405000+")
    assert rx.dedup_key(base, "acme") != rx.dedup_key(with_time, "acme")
    part1 = deliver(b"hello", tlvs=sar(1, 2, 1))
    part2 = deliver(b"hello", tlvs=sar(1, 2, 2))
    assert rx.dedup_key(part1, "acme") != rx.dedup_key(part2, "acme")
    payload = deliver(b"", tlvs=((rx.TAG_MESSAGE_PAYLOAD, b"hello"),))
    assert rx.dedup_key(payload, "acme") == rx.dedup_key(payload, "acme")


# --- never raise -----------------------------------------------------------------------------

known_tags = st.sampled_from(
    [
        rx.TAG_RECEIPTED_MESSAGE_ID,
        rx.TAG_MESSAGE_STATE,
        rx.TAG_NETWORK_ERROR_CODE,
        rx.TAG_SAR_MSG_REF_NUM,
        rx.TAG_SAR_TOTAL_SEGMENTS,
        rx.TAG_SAR_SEGMENT_SEQNUM,
        rx.TAG_MESSAGE_PAYLOAD,
        0x1403,
    ]
)


@given(
    short_message=st.binary(max_size=200),
    data_coding=st.integers(0, 255),
    esm_class=st.integers(0, 255),
    tlvs=st.lists(st.tuples(known_tags, st.binary(max_size=12)), max_size=5),
    source=st.binary(max_size=21),
    gsm_as=st.sampled_from(["gsm", "latin1", "ascii"]),
)
def test_decode_never_raises(
    short_message: bytes,
    data_coding: int,
    esm_class: int,
    tlvs: list[tuple[int, bytes]],
    source: bytes,
    gsm_as: str,
) -> None:
    p = deliver(
        short_message,
        data_coding=data_coding,
        esm_class=esm_class,
        tlvs=tuple(tlvs),
        source_addr=source,
    )
    event = decode(p, gsm_as=gsm_as)
    assert isinstance(event, (MoMessage, DeliveryReceipt, rx.Part))
    assert isinstance(rx.dedup_key(p, "acme"), str)
    if isinstance(event, rx.Part):
        r = rx.Reassembler()
        r.add(event, T0)
        [incomplete] = r.expire(T0 + dt.timedelta(minutes=5))
        incomplete.text.encode("utf-8")
    else:
        event.text.encode("utf-8")  # always serialisable


@given(st.text(max_size=200))
def test_parse_receipt_text_never_raises(text: str) -> None:
    assert isinstance(rx.parse_receipt_text(text), rx.ReceiptText)


@given(st.text(alphabet=st.characters(max_codepoint=0x7F), max_size=70))
def test_normalize_message_id_ignores_case(value: str) -> None:
    # Normalising both sides is what correlation relies on: case never matters.
    assert rx.normalize_message_id(value.lower()) == rx.normalize_message_id(value.upper())


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2601020304", dt.datetime(2026, 1, 2, 3, 4, tzinfo=dt.UTC)),
        ("260102030405", D12),
        ("26-01-02 03:04:05", D12),
        ("2026-01-02T03:04:05", D12),
        ("26010203", None),
        ("", None),
        ("2602300000", None),  # 30 February
    ],
)
def test_parse_receipt_date(value: str, expected: dt.datetime | None) -> None:
    assert rx.parse_receipt_date(value) == expected


def test_receipt_with_udh_skips_it() -> None:
    r = dlr(deliver(b"\x02\x70\x00id:55 stat:DELIVRD", esm_class=0x44))
    assert (r.message_id, r.status) == ("55", ReceiptStatus.DELIVRD)
