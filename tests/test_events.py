from __future__ import annotations

import datetime as dt
import enum
import json
from typing import Any

import attrs
import pytest

from gatewayd import events as ev


def test_event_ids_sort_by_time() -> None:
    a = ev.new_event_id(1_700_000_000_000)
    b = ev.new_event_id(1_700_000_000_001)
    assert a < b
    assert a[14] == "7"  # UUID version nibble


def test_mo_json_round_trip() -> None:
    mo = ev.MoMessage(
        id=ev.new_event_id(),
        carrier="acme",
        source=ev.Address(addr="447700900123", ton=1, npi=1),
        destination=ev.Address(addr="12345"),
        text="héllo €",
        raw=b"\x00\x01",
        data_coding=8,
        keyword="HELLO",
        message_class=ev.MessageClass.A2P,
        received_at=dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
    )
    assert ev.event_from_json(ev.event_to_json(mo)) == mo


def test_dlr_json_round_trip() -> None:
    dlr = ev.DeliveryReceipt(
        id=ev.new_event_id(),
        carrier="acme",
        message_id="0A1B",
        normalized_message_id="2587",
        status=ev.ReceiptStatus.DELIVRD,
        submit_date=dt.datetime(2026, 1, 2, 3, 4, tzinfo=dt.UTC),
        source=ev.Address(addr="447700900123"),
        destination=ev.Address(addr="12345"),
        received_at=dt.datetime(2026, 1, 2, 3, 5, tzinfo=dt.UTC),
    )
    assert ev.event_from_json(ev.event_to_json(dlr)) == dlr


def _reference_dict(event: ev.Event) -> dict[str, Any]:
    """event_to_dict as first written: attrs.fields and an isinstance chain."""
    out: dict[str, Any] = {"schema": ev.SCHEMA_VERSION}
    for field in attrs.fields(type(event)):
        value = getattr(event, field.name)
        if isinstance(value, ev.Address):
            value = {"addr": value.addr, "ton": value.ton, "npi": value.npi}
        elif isinstance(value, dt.datetime):
            value = value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
        elif isinstance(value, bytes):
            value = value.hex()
        elif isinstance(value, enum.Enum):
            value = value.value
        out[field.name] = value
    return out


@pytest.mark.parametrize(
    "event",
    [
        ev.MoMessage(
            id="e1",
            carrier="acme",
            source=ev.Address(addr="4477", ton=1, npi=1),
            destination=ev.Address(addr="12345"),
            text='héllo € \x00 "q"',
            raw=b"\x00\xff",
            data_coding=8,
            complete=False,
            parts=3,
            parts_received=2,
            message_class=ev.MessageClass.P2P,
            received_at=dt.datetime(
                2026, 1, 2, 3, 4, 5, 6, tzinfo=dt.timezone(dt.timedelta(hours=2))
            ),
        ),
        ev.DeliveryReceipt(
            id="e2",
            carrier="acme",
            message_id="0A1B",
            normalized_message_id="2587",
            status=ev.ReceiptStatus.UNDELIV,
            submit_date=dt.datetime(2026, 1, 2, 3, 4, tzinfo=dt.UTC),
            done_date=None,
            submitted=1,
            source=ev.Address(addr="4477"),
            destination=ev.Address(addr="12345"),
            received_at=dt.datetime(2026, 1, 2, 3, 5, tzinfo=dt.UTC),
        ),
    ],
)
def test_storage_form_is_unchanged(event: ev.Event) -> None:
    expected = _reference_dict(event)
    assert ev.event_to_dict(event) == expected
    assert list(ev.event_to_dict(event)) == list(expected)  # the same key order
    assert ev.event_to_json(event) == json.dumps(
        expected, separators=(",", ":"), ensure_ascii=False
    )
