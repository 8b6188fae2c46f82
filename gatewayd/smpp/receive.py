"""deliver_sm -> MO message, delivery receipt or message part. Pure code, no I/O.

:func:`decode_deliver` reads one ``deliver_sm`` (or ``data_sm``) :class:`~gatewayd.smpp.pdu.Pdu`:

1. ``esm_class`` message-type bits (SMPP 3.4 §5.2.12) decide receipt or message. The text is
   never used to decide: an MO that reads "id:1 stat:DELIVRD" is still an MO.
2. A receipt takes its fields from the TLVs first (``receipted_message_id``, ``message_state``,
   ``network_error_code``; SMPP 3.4 §5.3.2.12, §5.3.2.35, §5.3.2.31), then from the receipt
   text of SMPP 3.4 Appendix B. Where both speak, the TLV wins.
3. A message's user data is ``short_message``, or the ``message_payload`` TLV when
   ``sm_length`` is 0 (SMPP 3.4 §5.3.2.32). With UDHI set (esm_class 0x40) it starts with a
   User Data Header (3GPP TS 23.040 §9.2.3.24) whose concatenation IE, else the SAR TLVs
   (SMPP 3.4 §5.3.2.22-24), make it one :class:`Part` of a longer message.
4. Parts go to a :class:`Reassembler`, which joins the raw bytes in order and only then decodes,
   so a GSM escape or a surrogate pair split across two parts decodes right. The reassembler
   is plain state: :meth:`Reassembler.pending` and :meth:`Reassembler.restore` let the store
   keep parts across a restart, and an incomplete message is delivered marked
   ``complete=False`` after the timeout, never dropped.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import struct
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import attrs

from gatewayd import charsets
from gatewayd.events import (
    Address,
    DeliveryReceipt,
    MessageClass,
    MoMessage,
    ReceiptStatus,
    new_event_id,
)
from gatewayd.smpp.pdu import Pdu

# Optional parameter tags (SMPP 3.4 §5.3.2).
TAG_RECEIPTED_MESSAGE_ID = 0x001E
TAG_SAR_MSG_REF_NUM = 0x020C
TAG_SAR_TOTAL_SEGMENTS = 0x020E
TAG_SAR_SEGMENT_SEQNUM = 0x020F
TAG_NETWORK_ERROR_CODE = 0x0423
TAG_MESSAGE_PAYLOAD = 0x0424
TAG_MESSAGE_STATE = 0x0427

# esm_class (SMPP 3.4 §5.2.12): bits 5-2 are the message type, bit 6 the UDH indicator.
ESM_TYPE_MASK = 0x3C
ESM_UDHI = 0x40
# Message types that report on an earlier message: SMSC delivery receipt (0x04), SME delivery
# acknowledgement (0x08), SME manual/user acknowledgement (0x10), intermediate delivery
# notification (0x20). Conversation abort (0x18, Korean CDMA) is none of them and stays an MO.
RECEIPT_TYPES = frozenset({0x04, 0x08, 0x10, 0x20})

# UDH information element identifiers (3GPP TS 23.040 §9.2.3.24).
IEI_CONCAT_8 = 0x00
IEI_CONCAT_16 = 0x08

# message_state (SMPP 3.4 §5.2.28) -> the receipt status word of Appendix B. 0 (SCHEDULED)
# comes from SMPP 5.0 and means the message is not final yet, like ENROUTE.
MESSAGE_STATES: dict[int, ReceiptStatus] = {
    0: ReceiptStatus.ENROUTE,
    1: ReceiptStatus.ENROUTE,
    2: ReceiptStatus.DELIVRD,
    3: ReceiptStatus.EXPIRED,
    4: ReceiptStatus.DELETED,
    5: ReceiptStatus.UNDELIV,
    6: ReceiptStatus.ACCEPTD,
    7: ReceiptStatus.UNKNOWN,
    8: ReceiptStatus.REJECTD,
}

# The stat: words carriers really send, including the long spellings some use.
_STATUS_WORDS: dict[str, ReceiptStatus] = {
    **{s.value: s for s in ReceiptStatus},
    "DELIVERED": ReceiptStatus.DELIVRD,
    "EXPIRD": ReceiptStatus.EXPIRED,
    "UNDELIVERABLE": ReceiptStatus.UNDELIV,
    "UNDELIVERED": ReceiptStatus.UNDELIV,
    "FAILED": ReceiptStatus.UNDELIV,
    "ACCEPTED": ReceiptStatus.ACCEPTD,
    "REJECTED": ReceiptStatus.REJECTD,
    "DELETD": ReceiptStatus.DELETED,
}

MessageIdFormat = Literal["auto", "hex", "decimal"]
ConcatScheme = Literal["udh8", "udh16", "sar"]
ReassemblyKey = tuple[str, str, str, int, int]

PART_SCHEMA_VERSION = 1


@attrs.frozen(kw_only=True)
class ReceiveOptions:
    """Per-carrier decoding choices.

    ``gsm_as``: how to read data_coding 0 (GSM 03.38 unpacked, Latin-1 or ASCII).
    ``a2p_max_digits``: destinations with at most this many digits are A2P.
    ``message_id_format``: how the carrier writes receipt message ids (see
    :func:`normalize_message_id`). ``receipt_tz``: the zone of receipt dates, which carry none.
    """

    gsm_as: charsets.GsmAs = "gsm"
    a2p_max_digits: int = 8
    message_id_format: MessageIdFormat = "auto"
    receipt_tz: dt.tzinfo = dt.UTC


# --- small readers ---------------------------------------------------------------------------


def _tlv(pdu: Pdu, tag: int, name: str) -> bytes | int | None:
    """An optional parameter: the raw wire value by tag first, else the codec's named field."""
    for tlv in pdu.tlvs:
        if tlv.tag == tag:
            return tlv.value
    return pdu.fields.get(name)


def _tlv_int(pdu: Pdu, tag: int, name: str) -> int | None:
    value = _tlv(pdu, tag, name)
    if isinstance(value, bytes):
        return int.from_bytes(value, "big") if value else None
    return value


def _tlv_bytes(pdu: Pdu, tag: int, name: str) -> bytes | None:
    value = _tlv(pdu, tag, name)
    return value if isinstance(value, bytes) else None


def _cstr(value: bytes) -> str:
    """A C-Octet String as text. Latin-1 never fails and keeps every byte distinguishable."""
    if b"\x00" in value:
        value = value.split(b"\x00", 1)[0]
    return value.decode("latin-1")


def user_data(pdu: Pdu) -> bytes:
    """``short_message``, or ``message_payload`` when ``sm_length`` is 0 (SMPP 3.4 §5.3.2.32)."""
    short = pdu.get_bytes("short_message")
    if short:
        return short
    payload = _tlv_bytes(pdu, TAG_MESSAGE_PAYLOAD, "message_payload")
    return payload or b""


def _addresses(pdu: Pdu) -> tuple[Address, Address]:
    fields = pdu.fields
    source = Address(
        addr=_cstr(pdu.get_bytes("source_addr")),
        ton=_int(fields, "source_addr_ton"),
        npi=_int(fields, "source_addr_npi"),
    )
    destination = Address(
        addr=_cstr(pdu.get_bytes("destination_addr")),
        ton=_int(fields, "dest_addr_ton"),
        npi=_int(fields, "dest_addr_npi"),
    )
    return source, destination


def smsc_timestamp(pdu: Pdu) -> str:
    """What timestamp-like fields the PDU has (schedule_delivery_time, validity_period).

    Usually empty in deliver_sm; when a carrier fills them they tell a retransmission of the
    same message from a new one with the same text, so duplicate detection uses them.
    """
    fields = pdu.fields
    if not fields.get("schedule_delivery_time") and not fields.get("validity_period"):
        return ""  # the usual deliver_sm: both empty (SMPP 3.4 §4.6.1)
    out = []
    for name, key in (("schedule_delivery_time", "sched"), ("validity_period", "valid")):
        value = _cstr(pdu.get_bytes(name))
        if value:
            out.append(f"{key}={value}")
    return ";".join(out)


# --- classification and keyword -------------------------------------------------------------


def classify(address: str, a2p_max_digits: int = 8) -> MessageClass:
    """A2P for a short code or an alphanumeric address, P2P for a real MSISDN.

    Digits are counted after stripping ``+`` and spaces; anything else left that is not a
    digit makes the address alphanumeric, hence A2P (no handset has a lettered number). An
    empty address is A2P too: it is no MSISDN.
    """
    stripped = address.replace("+", "").replace(" ", "")
    if not stripped or not (stripped.isascii() and stripped.isdigit()):
        return MessageClass.A2P
    return MessageClass.A2P if len(stripped) <= a2p_max_digits else MessageClass.P2P


_KEYWORD_TRAILING = ".,;:!?"


def keyword_of(text: str) -> str:
    """The first word, upper-cased, without trailing punctuation ("stop." -> "STOP")."""
    words = text.split()
    if not words:
        return ""
    return words[0].rstrip(_KEYWORD_TRAILING).upper()


# --- message ids -----------------------------------------------------------------------------

_HEX = frozenset("0123456789abcdefABCDEF")
_MAX_NUMERIC_ID_DIGITS = 64  # SMPP message ids are at most 64 characters (§5.2.23)


def normalize_message_id(value: str, *, id_format: MessageIdFormat = "auto") -> str:
    """A canonical form of a carrier message id, so the forms carriers mix up compare equal.

    Carriers return an id in ``submit_sm_resp`` in one notation and repeat it in the receipt
    in another (hex vs decimal, upper vs lower case, leading zeros: Kannel's ``msg-id-type``).
    The rule, applied to both sides:

    * surrounding whitespace and NULs are removed; an ``0x`` prefix marks hex;
    * ``auto``: all decimal digits -> the decimal number without leading zeros
      ("000123" -> "123"); else all hex digits (with at least one letter a-f) -> that hex
      number written in decimal ("0A1B" -> "2587", "a1b" -> "2587"); anything else (UUIDs,
      ids with dashes or other letters) -> upper-cased as is;
    * ``hex``: any all-hex id is read as hex, digits-only too ("10" -> "16");
    * ``decimal``: like ``auto``, but an id with hex letters is only upper-cased.

    Ambiguity: "10" may be decimal ten or hex sixteen. ``auto`` reads it as decimal, which is
    wrong for a carrier that writes hex ids that happen to contain no letter. Such a carrier
    needs ``id_format="hex"`` on the side that is hex; :func:`message_id_candidates` gives
    every reading for a lookup that must tolerate both.
    """
    text = value.strip().strip("\x00").strip()
    if not text:
        return ""
    forced_hex = text[:2] in ("0x", "0X") and len(text) > 2
    digits = text[2:] if forced_hex else text
    if len(digits) <= _MAX_NUMERIC_ID_DIGITS and all(c in _HEX for c in digits):
        if digits.isdigit() and not forced_hex and id_format != "hex":
            return str(int(digits))
        if forced_hex or id_format in ("hex", "auto"):
            return str(int(digits, 16))
    return text.upper()


def message_id_candidates(value: str) -> frozenset[str]:
    """Every normalised reading of an id (decimal and hex), for tolerant correlation."""
    return frozenset(
        normalize_message_id(value, id_format=fmt) for fmt in ("auto", "hex", "decimal")
    )


# --- receipt text (SMPP 3.4 Appendix B) -----------------------------------------------------

_RECEIPT_KEY = re.compile(
    r"(?<![A-Za-z0-9_])(id|sub|dlvrd|submit[ _]?date|done[ _]?date|stat|err|text)\s*:",
    re.IGNORECASE,
)


@attrs.frozen(kw_only=True)
class ReceiptText:
    """The fields found in a receipt's text; None where the carrier left one out."""

    message_id: str | None = None
    submitted: int | None = None
    delivered: int | None = None
    submit_date: dt.datetime | None = None
    done_date: dt.datetime | None = None
    stat: str | None = None
    error: str | None = None
    text: str | None = None


def parse_receipt_date(value: str, tz: dt.tzinfo = dt.UTC) -> dt.datetime | None:
    """YYMMDDhhmm (Appendix B), YYMMDDhhmmss or YYYYMMDDhhmmss; separators ignored.

    None for anything else or an impossible date. Two-digit years are 20YY.
    """
    digits = "".join(c for c in value if c.isascii() and c.isdigit())
    try:
        if len(digits) == 10:
            year, rest = 2000 + int(digits[:2]), digits[2:] + "00"
        elif len(digits) == 12:
            year, rest = 2000 + int(digits[:2]), digits[2:]
        elif len(digits) == 14:
            year, rest = int(digits[:4]), digits[4:]
        else:
            return None
        month, day, hour, minute, second = (int(rest[i : i + 2]) for i in range(0, 10, 2))
        return dt.datetime(year, month, day, hour, minute, second, tzinfo=tz)
    except ValueError:
        return None


def _count(value: str) -> int | None:
    token = value.split()[0] if value.split() else ""
    return int(token) if token.isascii() and token.isdigit() else None


def parse_receipt_text(text: str, tz: dt.tzinfo = dt.UTC) -> ReceiptText:
    """Read ``id:… sub:… dlvrd:… submit date:… done date:… stat:… err:… text:…``.

    Keys in any case and order, any of them missing, ``submit_date``/``submitdate``
    spellings too. ``text:`` takes the rest of the string (the excerpt may contain anything,
    even "id:"). The first occurrence of a key wins.
    """
    found: dict[str, str] = {}
    matches = list(_RECEIPT_KEY.finditer(text))
    for index, match in enumerate(matches):
        key = match.group(1).lower().replace("_", "").replace(" ", "")
        if key == "text":
            found.setdefault(key, text[match.end() :].strip())
            break
        end = matches[index + 1].start() if index + 1 < len(matches) else len(text)
        found.setdefault(key, text[match.end() : end].strip())

    def token(key: str) -> str | None:
        value = found.get(key)
        if value is None:
            return None
        parts = value.split()
        return parts[0] if parts else ""

    submit = found.get("submitdate")
    done = found.get("donedate")
    return ReceiptText(
        message_id=token("id"),
        submitted=_count(found["sub"]) if "sub" in found else None,
        delivered=_count(found["dlvrd"]) if "dlvrd" in found else None,
        submit_date=parse_receipt_date(submit, tz) if submit is not None else None,
        done_date=parse_receipt_date(done, tz) if done is not None else None,
        stat=token("stat"),
        error=token("err"),
        text=found.get("text"),
    )


def status_from_word(word: str) -> ReceiptStatus:
    """A stat: value as a status: the Appendix B words, long spellings, or a message_state."""
    upper = word.strip().upper()
    if upper.isascii() and upper.isdigit():
        return MESSAGE_STATES.get(int(upper), ReceiptStatus.UNKNOWN)
    return _STATUS_WORDS.get(upper, ReceiptStatus.UNKNOWN)


def is_receipt(esm_class: int) -> bool:
    """True when esm_class says this deliver_sm reports on an earlier message (§5.2.12)."""
    return (esm_class & ESM_TYPE_MASK) in RECEIPT_TYPES


def _decode_receipt(
    pdu: Pdu,
    body: bytes,
    *,
    carrier: str,
    received_at: dt.datetime,
    options: ReceiveOptions,
) -> DeliveryReceipt:
    esm = pdu.get_int("esm_class")
    if esm & ESM_UDHI:
        _, body = parse_udh(body)
    # Appendix B receipt text is ASCII whatever the data_coding says, except that a few
    # carriers send it as UCS-2; Latin-1 reads ASCII and never fails.
    text = charsets.ucs2_decode(body) if pdu.get_int("data_coding") == 8 else body.decode("latin-1")
    parsed = parse_receipt_text(text, options.receipt_tz)

    tlv_id = _tlv_bytes(pdu, TAG_RECEIPTED_MESSAGE_ID, "receipted_message_id")
    message_id = _cstr(tlv_id).strip() if tlv_id else ""
    if not message_id:
        message_id = parsed.message_id or ""

    state = _tlv_int(pdu, TAG_MESSAGE_STATE, "message_state")
    if state is not None:
        status = MESSAGE_STATES.get(state, ReceiptStatus.UNKNOWN)
    elif parsed.stat:
        status = status_from_word(parsed.stat)
    else:
        status = ReceiptStatus.UNKNOWN

    # network_error_code (§5.3.2.31): 1 octet network type, 2 octets error code.
    net_error = _tlv_bytes(pdu, TAG_NETWORK_ERROR_CODE, "network_error_code")
    if net_error is not None and len(net_error) == 3:
        error = f"{int.from_bytes(net_error[1:], 'big'):03d}"
    else:
        error = parsed.error or ""

    source, destination = _addresses(pdu)
    return DeliveryReceipt(
        id=_event_id(_ms(received_at)),
        carrier=carrier,
        message_id=message_id,
        normalized_message_id=normalize_message_id(message_id, id_format=options.message_id_format),
        status=status,
        error=error,
        submit_date=parsed.submit_date,
        done_date=parsed.done_date,
        submitted=parsed.submitted,
        delivered=parsed.delivered,
        text=parsed.text or "",
        source=source,
        destination=destination,
        esm_class=esm,
        received_at=received_at,
    )


def _ms(when: dt.datetime) -> int:
    return int(when.timestamp() * 1000)


#: The ingest path's event ids: UUIDv7 from pooled OS randomness (one getrandom(2) per
#: 409 ids rather than one per MO; fork- and thread-safe: see ``gatewayd.events``).
_event_id = new_event_id


# --- UDH and concatenation ------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class InformationElement:
    """One UDH information element (3GPP TS 23.040 §9.2.3.24)."""

    iei: int
    data: bytes


@attrs.frozen(kw_only=True)
class Concat:
    """Where a part sits in a concatenated message."""

    reference: int
    total: int
    seq: int
    scheme: ConcatScheme


def parse_udh(data: bytes) -> tuple[tuple[InformationElement, ...] | None, bytes]:
    """Split user data into (information elements, body). Never raises.

    The first octet is the UDH length (UDHL). If it claims more than there is, the data has
    no valid UDH: (None, data) so nothing is lost. An IE whose length runs past the header
    ends the list.
    """
    if not data:
        return None, data
    udhl = data[0]
    if udhl + 1 > len(data):
        return None, data
    header, body = data[1 : udhl + 1], data[udhl + 1 :]
    elements: list[InformationElement] = []
    i = 0
    while i + 2 <= len(header):
        iei, length = header[i], header[i + 1]
        if i + 2 + length > len(header):
            break
        elements.append(InformationElement(iei=iei, data=header[i + 2 : i + 2 + length]))
        i += 2 + length
    return tuple(elements), body


def concat_from_udh(elements: Iterable[InformationElement]) -> Concat | None:
    """The concatenation IE (0x00 8-bit or 0x08 16-bit reference), wherever it sits.

    TS 23.040 §9.2.3.24: a receiver uses the last occurrence of a repeated IE, and ignores a
    concatenation IE whose total is 0 or whose sequence number is 0 or above the total.
    """
    found: Concat | None = None
    for ie in elements:
        if ie.iei == IEI_CONCAT_8 and len(ie.data) == 3:
            candidate = Concat(
                reference=ie.data[0], total=ie.data[1], seq=ie.data[2], scheme="udh8"
            )
        elif ie.iei == IEI_CONCAT_16 and len(ie.data) == 4:
            candidate = Concat(
                reference=int.from_bytes(ie.data[:2], "big"),
                total=ie.data[2],
                seq=ie.data[3],
                scheme="udh16",
            )
        else:
            continue
        found = candidate if _valid_concat(candidate) else None
    return found


def concat_from_sar(pdu: Pdu) -> Concat | None:
    """The SAR TLVs (SMPP 3.4 §5.3.2.22-24), if all three are present and consistent."""
    ref = _tlv_int(pdu, TAG_SAR_MSG_REF_NUM, "sar_msg_ref_num")
    total = _tlv_int(pdu, TAG_SAR_TOTAL_SEGMENTS, "sar_total_segments")
    seq = _tlv_int(pdu, TAG_SAR_SEGMENT_SEQNUM, "sar_segment_seqnum")
    if ref is None or total is None or seq is None:
        return None
    candidate = Concat(reference=ref, total=total, seq=seq, scheme="sar")
    return candidate if _valid_concat(candidate) else None


def _valid_concat(concat: Concat) -> bool:
    return 1 <= concat.seq <= concat.total <= 255


# --- parts ----------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Part:
    """One part of a concatenated MO, as the store persists it until the message is whole.

    It carries what the reassembled message needs: ``data`` is the part's user data without
    its UDH, not yet decoded (decoding waits for the join); ``gsm_as`` and ``message_class``
    were decided by the carrier's options when the part arrived.
    """

    carrier: str
    source: Address
    destination: Address
    reference: int
    total: int
    seq: int
    scheme: ConcatScheme
    data: bytes
    data_coding: int
    esm_class: int = 0
    protocol_id: int = 0
    priority: int = 0
    gsm_as: charsets.GsmAs = "gsm"
    message_class: MessageClass
    received_at: dt.datetime
    smsc_timestamp: str = ""
    type: Literal["part"] = "part"

    @property
    def key(self) -> ReassemblyKey:
        """Parts of one message share (carrier, source, destination, reference, total)."""
        return (self.carrier, self.source.addr, self.destination.addr, self.reference, self.total)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form, with a schema version."""
        return {
            "schema": PART_SCHEMA_VERSION,
            "type": "part",
            "carrier": self.carrier,
            "source": attrs.asdict(self.source),
            "destination": attrs.asdict(self.destination),
            "reference": self.reference,
            "total": self.total,
            "seq": self.seq,
            "scheme": self.scheme,
            "data": self.data.hex(),
            "data_coding": self.data_coding,
            "esm_class": self.esm_class,
            "protocol_id": self.protocol_id,
            "priority": self.priority,
            "gsm_as": self.gsm_as,
            "message_class": self.message_class.value,
            "received_at": self.received_at.astimezone(dt.UTC).isoformat(),
            "smsc_timestamp": self.smsc_timestamp,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Part:
        """Inverse of :meth:`to_dict`."""
        if data.get("schema") != PART_SCHEMA_VERSION:
            raise ValueError(f"unsupported part schema {data.get('schema')!r}")
        return cls(
            carrier=data["carrier"],
            source=Address(**data["source"]),
            destination=Address(**data["destination"]),
            reference=data["reference"],
            total=data["total"],
            seq=data["seq"],
            scheme=data["scheme"],
            data=bytes.fromhex(data["data"]),
            data_coding=data["data_coding"],
            esm_class=data["esm_class"],
            protocol_id=data["protocol_id"],
            priority=data["priority"],
            gsm_as=data["gsm_as"],
            message_class=MessageClass(data["message_class"]),
            received_at=dt.datetime.fromisoformat(data["received_at"]),
            smsc_timestamp=data["smsc_timestamp"],
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Part:
        return cls.from_dict(json.loads(text))


def _make_mo(
    *,
    carrier: str,
    source: Address,
    destination: Address,
    raw: bytes,
    data_coding: int,
    gsm_as: charsets.GsmAs,
    esm_class: int,
    protocol_id: int,
    priority: int,
    message_class: MessageClass,
    received_at: dt.datetime,
    smsc_timestamp: str,
    created_at: dt.datetime,
    parts: int = 1,
    parts_received: int | None = None,
) -> MoMessage:
    decoded = charsets.decode_text(raw, data_coding, gsm_as=gsm_as)
    return MoMessage(
        id=_event_id(_ms(created_at)),
        carrier=carrier,
        source=source,
        destination=destination,
        text=decoded.text,
        raw=raw,
        data_coding=data_coding,
        esm_class=esm_class,
        protocol_id=protocol_id,
        priority=priority,
        parts=parts,
        complete=parts_received is None,
        parts_received=parts_received,
        keyword=keyword_of(decoded.text) if decoded.kind == "text" else "",
        message_class=message_class,
        received_at=received_at,
        smsc_timestamp=smsc_timestamp,
        content=decoded.kind,
    )


def decode_deliver(
    pdu: Pdu,
    *,
    carrier: str,
    received_at: dt.datetime,
    options: ReceiveOptions | None = None,
) -> MoMessage | DeliveryReceipt | Part:
    """One deliver_sm (or data_sm) as a receipt, a whole MO, or one part of a longer MO.

    Never raises on any field values: what cannot be read is kept raw (see module doc).
    A :class:`Part` must go to a :class:`Reassembler` (after the store has persisted it).
    """
    opts = options or _DEFAULT_OPTIONS
    fields = pdu.fields
    esm = _int(fields, "esm_class")
    body = user_data(pdu)
    if is_receipt(esm):
        return _decode_receipt(pdu, body, carrier=carrier, received_at=received_at, options=opts)

    source, destination = _addresses(pdu)
    data = body
    concat: Concat | None = None
    if esm & ESM_UDHI:
        elements, data = parse_udh(body)
        if elements is not None:
            concat = concat_from_udh(elements)
    if concat is None and (pdu.tlvs or "sar_msg_ref_num" in fields):
        # The UDH travels inside the message itself, so it wins over SAR TLVs a carrier
        # may add as well. (Without TLVs there is no SAR reference: nothing to look at.)
        concat = concat_from_sar(pdu)

    data_coding = _int(fields, "data_coding")
    message_class = classify(destination.addr, opts.a2p_max_digits)
    if concat is not None and concat.total > 1:
        return Part(
            reference=concat.reference,
            total=concat.total,
            seq=concat.seq,
            scheme=concat.scheme,
            data=data,
            gsm_as=opts.gsm_as,
            carrier=carrier,
            source=source,
            destination=destination,
            data_coding=data_coding,
            esm_class=esm,
            protocol_id=_int(fields, "protocol_id"),
            priority=_int(fields, "priority_flag"),
            message_class=message_class,
            received_at=received_at,
            smsc_timestamp=smsc_timestamp(pdu),
        )
    return _make_mo(
        raw=data,
        gsm_as=opts.gsm_as,
        created_at=received_at,
        carrier=carrier,
        source=source,
        destination=destination,
        data_coding=data_coding,
        esm_class=esm,
        protocol_id=_int(fields, "protocol_id"),
        priority=_int(fields, "priority_flag"),
        message_class=message_class,
        received_at=received_at,
        smsc_timestamp=smsc_timestamp(pdu),
    )


_DEFAULT_OPTIONS = ReceiveOptions()


def _int(fields: Mapping[str, int | bytes], name: str) -> int:
    """``Pdu.get_int`` on the fields mapping (0 when absent or not an int)."""
    value = fields.get(name, 0)
    return value if isinstance(value, int) else 0


def dedup_key(pdu: Pdu, carrier: str) -> str:
    """A hash of what makes a deliver_sm the same message again, for duplicate detection.

    Covers the carrier, addresses, esm_class, data_coding, the user data (short_message or
    message_payload, UDH included), the SAR TLVs, the receipt TLVs and the timestamp fields;
    not the sequence number, which a retransmission may change. Two genuinely separate
    messages with the same text and no timestamps hash alike, so the store should compare
    keys only within a short window.
    """
    fields = pdu.fields
    u32 = _U32
    buf = bytearray()
    for item in (carrier.encode("utf-8"), pdu.command.encode("latin-1")):
        buf += u32(len(item))
        buf += item
    for name in _DEDUP_INTS:
        number = _int(fields, name)
        # str(n), length-prefixed; these are one-octet fields, so nearly always cached.
        buf += _INT_ITEMS[number] if 0 <= number < 256 else _int_item(number)
    for name in _DEDUP_BYTES:
        value = fields.get(name, b"")
        item = value if isinstance(value, bytes) else b""
        buf += u32(len(item))
        buf += item
    item = user_data(pdu)
    buf += u32(len(item))
    buf += item
    tlvs = pdu.tlvs
    for tag, field in _DEDUP_TLV_INTS:
        if not tlvs and field not in fields:
            buf += _NONE_ITEM  # str(None): the TLV is absent
        else:
            buf += _int_item(_tlv_int(pdu, tag, field))
    for tag, field in _DEDUP_TLV_BYTES:
        item = _tlv_bytes(pdu, tag, field) or b""
        buf += u32(len(item))
        buf += item
    # Each item length-prefixed, so no two different field lists hash the same bytes.
    return hashlib.sha256(buf).hexdigest()


def _int_item(value: int | None) -> bytes:
    text = str(value).encode()
    return _U32(len(text)) + text


_U32 = struct.Struct(">I").pack
_INT_ITEMS = tuple(_int_item(n) for n in range(256))
_NONE_ITEM = _int_item(None)
_DEDUP_INTS = (
    "source_addr_ton",
    "source_addr_npi",
    "dest_addr_ton",
    "dest_addr_npi",
    "esm_class",
    "data_coding",
    "protocol_id",
)
_DEDUP_BYTES = ("source_addr", "destination_addr", "schedule_delivery_time", "validity_period")
_DEDUP_TLV_INTS = (
    (TAG_SAR_MSG_REF_NUM, "sar_msg_ref_num"),
    (TAG_SAR_TOTAL_SEGMENTS, "sar_total_segments"),
    (TAG_SAR_SEGMENT_SEQNUM, "sar_segment_seqnum"),
    (TAG_MESSAGE_STATE, "message_state"),
)
_DEDUP_TLV_BYTES = (
    (TAG_RECEIPTED_MESSAGE_ID, "receipted_message_id"),
    (TAG_NETWORK_ERROR_CODE, "network_error_code"),
)


# --- reassembly -----------------------------------------------------------------------------


@attrs.define
class _Group:
    started: dt.datetime
    parts: dict[int, Part]


class Reassembler:
    """Joins :class:`Part` s into one :class:`MoMessage`. Pure state, no clock of its own.

    * Parts of one message share (carrier, source, destination, reference, total); they may
      arrive in any order. A second part with a sequence number already held is a duplicate
      and ignored (the first copy is kept).
    * When the last part arrives, :meth:`add` returns the message, exactly once: the raw
      bytes are joined in sequence order and decoded only then.
    * A message still incomplete ``timeout`` seconds after its first part arrived is returned
      by :meth:`expire` with the parts it has, ``complete=False``: never dropped.
    * A late duplicate of a part of a message already completed (same key, sequence number and
      bytes, within ``timeout``) is ignored rather than starting a phantom message.
    * :meth:`pending` lists the parts held, for the store; :meth:`restore` loads them back
      after a restart (the timeout then counts from the parts' own ``received_at``).
    """

    def __init__(self, timeout: float = 300.0) -> None:
        self.timeout = dt.timedelta(seconds=timeout)
        self._groups: dict[ReassemblyKey, _Group] = {}
        self._done: dict[ReassemblyKey, tuple[dt.datetime, dict[int, bytes]]] = {}

    @property
    def pending_count(self) -> int:
        """Parts held for messages not yet complete."""
        return sum(len(group.parts) for group in self._groups.values())

    @property
    def pending_messages(self) -> int:
        """Messages with parts held."""
        return len(self._groups)

    def is_duplicate(self, part: Part) -> bool:
        """This part is already held, or belongs to a message already delivered.

        The SMSC resends a part whose deliver_sm_resp it missed; such a part must be
        acknowledged without being stored again (it would start a phantom message)."""
        done = self._done.get(part.key)
        if done is not None and done[1].get(part.seq) == part.data:
            return True
        group = self._groups.get(part.key)
        return group is not None and part.seq in group.parts

    def add(self, part: Part, now: dt.datetime) -> MoMessage | None:
        """Take one part; the whole message if this part completes it, else None."""
        key = part.key
        done = self._done.get(key)
        if done is not None:
            if done[1].get(part.seq) == part.data:
                return None  # a late duplicate of a message already delivered
            del self._done[key]  # same reference reused: a new message
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = _Group(started=now, parts={})
        if part.seq in group.parts:
            return None
        group.parts[part.seq] = part
        if len(group.parts) < part.total:
            return None
        del self._groups[key]
        self._done[key] = (now, {seq: p.data for seq, p in group.parts.items()})
        return self._join(group, now)

    def expire(self, now: dt.datetime) -> list[MoMessage]:
        """Messages whose timeout has passed, delivered incomplete, oldest first."""
        return [message for _, message in self.expire_keyed(now)]

    def due(self, now: dt.datetime) -> list[ReassemblyKey]:
        """Keys of the messages whose timeout has passed, oldest first (nothing removed)."""
        groups = sorted(self._groups.items(), key=lambda item: item[1].started)
        return [key for key, group in groups if now - group.started >= self.timeout]

    def expire_one(self, key: ReassemblyKey, now: dt.datetime) -> MoMessage | None:
        """Deliver one timed-out message as it is (None if it completed or is not due)."""
        group = self._groups.get(key)
        if group is None or now - group.started < self.timeout:
            return None
        del self._groups[key]
        return self._join(group, now)

    def expire_keyed(self, now: dt.datetime) -> list[tuple[ReassemblyKey, MoMessage]]:
        """Like :meth:`expire`, with each message's key (so the store can drop its parts)."""
        out: list[tuple[ReassemblyKey, MoMessage]] = []
        for key, group in sorted(self._groups.items(), key=lambda item: item[1].started):
            if now - group.started >= self.timeout:
                del self._groups[key]
                out.append((key, self._join(group, now)))
        for key, (completed, _) in list(self._done.items()):
            if now - completed >= self.timeout:
                del self._done[key]
        return out

    def next_deadline(self) -> dt.datetime | None:
        """When :meth:`expire` will next have something to return, if any message is held."""
        if not self._groups:
            return None
        return min(group.started for group in self._groups.values()) + self.timeout

    def pending(self) -> list[Part]:
        """Every part held, in arrival-group then sequence order."""
        return [group.parts[seq] for group in self._groups.values() for seq in sorted(group.parts)]

    def snapshot(self, key: ReassemblyKey) -> tuple[_Group | None, object]:
        """The state of one message, to :meth:`rollback` to if persisting a part fails."""
        group = self._groups.get(key)
        copy = None if group is None else _Group(started=group.started, parts=dict(group.parts))
        return copy, self._done.get(key)

    def rollback(self, key: ReassemblyKey, state: tuple[_Group | None, object]) -> None:
        """Put one message back as :meth:`snapshot` saw it (the part was not made durable,
        so the SMSC will send it again and it must then count as new)."""
        group, done = state
        if group is None:
            self._groups.pop(key, None)
        else:
            self._groups[key] = group
        if done is None:
            self._done.pop(key, None)
        else:
            self._done[key] = done  # type: ignore[assignment]

    def restore(self, parts: Iterable[Part]) -> list[MoMessage]:
        """Like :meth:`restore_keyed`, messages only."""
        return [message for _, message in self.restore_keyed(parts)]

    def restore_keyed(self, parts: Iterable[Part]) -> list[tuple[ReassemblyKey, MoMessage]]:
        """Load parts saved from :meth:`pending` (e.g. after a restart); duplicates ignored.

        The timeout of a restored message counts from its earliest part's ``received_at``.
        Returns the messages the restored parts complete on their own (none if only what
        :meth:`pending` listed is restored; possible if the store kept parts of a message
        whose completion it had not yet recorded), so that nothing is held forever.
        """
        touched: list[ReassemblyKey] = []
        for part in parts:
            group = self._groups.get(part.key)
            if group is None:
                group = self._groups[part.key] = _Group(started=part.received_at, parts={})
            group.started = min(group.started, part.received_at)
            group.parts.setdefault(part.seq, part)
            touched.append(part.key)
        out: list[tuple[ReassemblyKey, MoMessage]] = []
        for key in dict.fromkeys(touched):
            group = self._groups[key]
            if len(group.parts) >= group.parts[next(iter(group.parts))].total:
                del self._groups[key]
                now = max(p.received_at for p in group.parts.values())
                self._done[key] = (now, {seq: p.data for seq, p in group.parts.items()})
                out.append((key, self._join(group, now)))
        return out

    def _join(self, group: _Group, now: dt.datetime) -> MoMessage:
        ordered = [group.parts[seq] for seq in sorted(group.parts)]
        first = ordered[0]
        total = first.total
        return _make_mo(
            carrier=first.carrier,
            source=first.source,
            destination=first.destination,
            raw=b"".join(p.data for p in ordered),
            data_coding=first.data_coding,
            gsm_as=first.gsm_as,
            esm_class=first.esm_class,
            protocol_id=first.protocol_id,
            priority=first.priority,
            message_class=first.message_class,
            received_at=min(p.received_at for p in ordered),
            smsc_timestamp=first.smsc_timestamp,
            created_at=now,
            parts=total,
            parts_received=None if len(ordered) == total else len(ordered),
        )
