"""Typed events: what crosses module boundaries. Frozen attrs records, JSON with a schema version.

An inbound ``deliver_sm`` becomes either a :class:`MoMessage` or a :class:`DeliveryReceipt`
(``gatewayd.smpp.receive`` decides which). Both carry a sortable unique ``id`` (UUIDv7) that
every payload repeats so receivers can de-duplicate (delivery is at-least-once).
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import os
import time
import uuid
from typing import Any, Literal

import attrs

SCHEMA_VERSION = 1


def new_event_id(now_ms: int | None = None) -> str:
    """A UUIDv7 (RFC 9562): 48-bit Unix milliseconds, then random bits; sorts by time."""
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76  # version 7
    value |= ((rand >> 68) & 0xFFF) << 64  # rand_a (12 bits)
    value |= 0b10 << 62  # variant
    value |= rand & ((1 << 62) - 1)  # rand_b (62 bits)
    return str(uuid.UUID(int=value))


class MessageClass(enum.StrEnum):
    A2P = "a2p"
    P2P = "p2p"


class ReceiptStatus(enum.StrEnum):
    """The receipt status words of SMPP 3.4 Appendix B (``stat:``)."""

    DELIVRD = "DELIVRD"
    EXPIRED = "EXPIRED"
    DELETED = "DELETED"
    UNDELIV = "UNDELIV"
    ACCEPTD = "ACCEPTD"
    UNKNOWN = "UNKNOWN"
    REJECTD = "REJECTD"
    ENROUTE = "ENROUTE"


@attrs.frozen(kw_only=True)
class Address:
    """An SMPP address: digits or alphanumerics, with TON and NPI (SMPP 3.4 §5.2.5, §5.2.6)."""

    addr: str
    ton: int = 0
    npi: int = 0


def _utc(value: dt.datetime) -> str:
    if value.tzinfo is not dt.UTC:
        value = value.astimezone(dt.UTC)
    return value.isoformat()[:-6] + "Z"  # a UTC datetime's isoformat ends "+00:00"


def _parse_time(value: str | None) -> dt.datetime | None:
    if value is None:
        return None
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


@attrs.frozen(kw_only=True)
class MoMessage:
    """A mobile-originated message (reassembled if it came in parts)."""

    id: str
    carrier: str
    source: Address
    destination: Address
    text: str
    raw: bytes  # the user data as received (all parts joined, UDH removed)
    data_coding: int
    esm_class: int = 0
    protocol_id: int = 0
    priority: int = 0
    parts: int = 1
    complete: bool = True  # False: delivered after the reassembly timeout with parts missing
    keyword: str = ""
    message_class: MessageClass
    received_at: dt.datetime
    smsc_timestamp: str = ""  # schedule/validity or carrier timestamp, used for duplicate detection
    # "text": ``text`` holds the message; "binary" (data_coding 2/4 or 8-bit DCS) and
    # "unknown" (a data_coding we cannot read): ``text`` is empty, ``raw`` keeps the bytes.
    content: Literal["text", "binary", "unknown"] = "text"
    parts_received: int | None = None  # set when complete is False: how many of ``parts`` came
    type: Literal["mo"] = "mo"


@attrs.frozen(kw_only=True)
class DeliveryReceipt:
    """A delivery receipt for a message we submitted (SMPP 3.4 Appendix B)."""

    id: str
    carrier: str
    message_id: str  # the carrier's id, as received
    normalized_message_id: str  # see gatewayd.smpp.receive.normalize_message_id
    status: ReceiptStatus
    error: str = ""
    submit_date: dt.datetime | None = None
    done_date: dt.datetime | None = None
    submitted: int | None = None  # sub:
    delivered: int | None = None  # dlvrd:
    text: str = ""  # the receipt's text: excerpt
    source: Address
    destination: Address
    esm_class: int = 0
    received_at: dt.datetime
    type: Literal["dlr"] = "dlr"


Event = MoMessage | DeliveryReceipt


#: Each event class's field names, in order (``attrs.fields`` builds a tuple per call).
_FIELD_NAMES: dict[type, tuple[str, ...]] = {
    cls: tuple(field.name for field in attrs.fields(cls)) for cls in (MoMessage, DeliveryReceipt)
}
_PLAIN = frozenset({str, int, bool, float, type(None)})  # stored as they are


def event_to_dict(event: Event) -> dict[str, Any]:
    """The storage form of an event (all fields, JSON-safe), with the schema version."""
    out: dict[str, Any] = {"schema": SCHEMA_VERSION}
    names = _FIELD_NAMES.get(type(event)) or tuple(f.name for f in attrs.fields(type(event)))
    for name in names:
        value = getattr(event, name)
        if type(value) in _PLAIN:  # exact types: a StrEnum is a str, and is converted below
            pass
        elif isinstance(value, Address):
            value = {"addr": value.addr, "ton": value.ton, "npi": value.npi}
        elif isinstance(value, dt.datetime):
            value = _utc(value)
        elif isinstance(value, bytes):
            value = value.hex()
        elif isinstance(value, enum.Enum):
            value = value.value
        out[name] = value
    return out


def event_from_dict(data: dict[str, Any]) -> Event:
    """Inverse of :func:`event_to_dict`."""
    if data.get("schema") != SCHEMA_VERSION:
        raise ValueError(f"unsupported event schema {data.get('schema')!r}")
    kind = data["type"]
    cls: type[MoMessage] | type[DeliveryReceipt]
    cls = MoMessage if kind == "mo" else DeliveryReceipt
    kwargs: dict[str, Any] = {}
    for field in attrs.fields(cls):
        if field.name not in data:
            continue
        value = data[field.name]
        if field.name in ("source", "destination"):
            value = Address(**value)
        elif field.name in ("received_at", "submit_date", "done_date"):
            value = _parse_time(value)
        elif field.name == "raw":
            value = bytes.fromhex(value)
        elif field.name == "message_class":
            value = MessageClass(value)
        elif field.name == "status":
            value = ReceiptStatus(value)
        kwargs[field.name] = value
    return cls(**kwargs)


#: ``json.dumps(..., separators=(",", ":"), ensure_ascii=False)`` with the encoder built
#: once (dumps builds one per call when given arguments).
_COMPACT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def event_to_json(event: Event) -> str:
    return _COMPACT(event_to_dict(event))


def event_from_json(text: str) -> Event:
    return event_from_dict(json.loads(text))
