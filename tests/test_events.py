import datetime as dt

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
