"""Typed events: what crosses module boundaries. Frozen attrs records, JSON with a schema version.

An inbound ``deliver_sm`` becomes either a :class:`MoMessage` or a :class:`DeliveryReceipt`
(``gatewayd.smpp.receive`` decides which). Both carry a sortable unique ``id`` (UUIDv7) that
every payload repeats so receivers can de-duplicate (delivery is at-least-once).
"""

from __future__ import annotations

import collections
import datetime as dt
import enum
import json
import os
import time
from typing import Any, Final, Literal

import attrs

SCHEMA_VERSION = 1


#: One ``getrandom(2)`` per this many bytes of id randomness: 409 ids of 10 bytes each.
ID_POOL_BYTES: Final = 4090
_ID_RANDOM_BYTES: Final = 10  # 80 bits, of which the 12 of rand_a and the 62 of rand_b are used
_MS_MASK: Final = (1 << 48) - 1
#: A byte with its top two bits set to the RFC 9562 variant ``10`` (the other six kept).
_VARIANT: Final = bytes(0x80 | (octet & 0x3F) for octet in range(256))

#: Unused id randomness, drawn from ``os.urandom`` in batches (``os.urandom(10)`` per id
#: was a syscall per MO) and kept as the id text after the timestamp (formatting in bulk
#: costs less than per id). Process-wide, like the OS randomness it holds. Why no value
#: is ever handed out twice:
#:
#: - threads: values leave only through ``deque.popleft``, which is atomic (the deque
#:   docs: "thread-safe ... pops from either side"; a lock inside in free-threaded
#:   builds), so each value goes to one caller. A refill reads fresh bytes into a local
#:   list, keeps the first value and appends the rest: two threads refilling at once
#:   just add two independent batches. No lock, no shared index.
#: - fork: a child starts with a copy of the parent's unused values, which the parent
#:   goes on to use. ``os.register_at_fork`` empties the child's copy right after fork
#:   (``os.fork``, ``multiprocessing``'s fork start method), so the child reads its own.
#:   A C extension that calls fork(2) without ``PyOS_AfterFork_Child`` would skip this;
#:   exec-based spawning (``subprocess``) never runs Python in the child.
_ID_RANDOM: collections.deque[str] = collections.deque()
_take_random = _ID_RANDOM.popleft  # IndexError when empty: then _refill_random
if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_ID_RANDOM.clear)


def _id_suffixes(data: bytes) -> list[str]:
    """The text after the timestamp (``7xxx-vxxx-xxxxxxxxxxxx``) of one id per 10 bytes
    of ``data`` (a multiple of 10 long).

    Each 10 bytes, read as an 80-bit big-endian ``rand``, give rand_a = its top 12 bits
    and rand_b = its low 62 (the 6 bits between are dropped), as the earlier per-id code
    did. In hex: rand_a is digits 0-2, digit 3 is dropped, and digits 4-19 are rand_b
    once the variant has replaced the top two bits of byte 2 (digit 4)."""
    buf = bytearray(data)
    buf[2::_ID_RANDOM_BYTES] = buf[2::_ID_RANDOM_BYTES].translate(_VARIANT)
    h = buf.hex()
    return [f"7{h[i : i + 3]}-{h[i + 4 : i + 8]}-{h[i + 8 : i + 20]}" for i in range(0, len(h), 20)]


def _refill_random() -> str:
    """Read a batch of OS randomness into the pool; one value of it for the caller."""
    values = _id_suffixes(os.urandom(ID_POOL_BYTES))
    _ID_RANDOM.extend(values[1:])
    return values[0]


def new_event_id(now_ms: int | None = None) -> str:
    """A UUIDv7 (RFC 9562 §5.7): 48-bit Unix milliseconds, version, 12 random bits,
    variant, 62 random bits; ids sort by their millisecond (random within one).

    The randomness is the OS's (``os.urandom``), read in batches (see ``_ID_RANDOM``).
    The text is what ``str(uuid.UUID(int=value))`` makes, built without the object (the
    ingest path makes one per MO)."""
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    try:
        rest = _take_random()
    except IndexError:
        rest = _refill_random()
    h = f"{ms & _MS_MASK:012x}"
    return f"{h[:8]}-{h[8:]}-{rest}"


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
