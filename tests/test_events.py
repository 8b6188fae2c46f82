from __future__ import annotations

import datetime as dt
import enum
import json
import os
import re
import threading
import time
import uuid
import warnings
from typing import Any

import attrs
import pytest

from gatewayd import events as ev


def test_event_ids_sort_by_time() -> None:
    a = ev.new_event_id(1_700_000_000_000)
    b = ev.new_event_id(1_700_000_000_001)
    assert a < b
    assert a[14] == "7"  # UUID version nibble


_UUID7 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
_NOW_MS = 1_700_000_000_000  # one millisecond for all: only the randomness tells ids apart


def _check_ids(ids: list[str], now_ms: int = _NOW_MS) -> None:
    """Distinct, and each a UUIDv7 text of ``now_ms`` with the RFC 9562 variant."""
    assert len(set(ids)) == len(ids)
    for text in ids:
        assert _UUID7.match(text), text
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert parsed.version == 7
        assert parsed.variant == uuid.RFC_4122
        assert parsed.int >> 80 == now_ms


def test_event_ids_are_unique_uuid7_across_pool_refills() -> None:
    # Several batches of pooled randomness, starting from an empty and a part-used pool.
    per_batch = ev.ID_POOL_BYTES // 10
    ev._ID_RANDOM.clear()
    ids = [ev.new_event_id(_NOW_MS) for _ in range(3 * per_batch + 7)]
    _check_ids(ids)
    assert 0 < len(ev._ID_RANDOM) < per_batch
    _check_ids([*ids, *(ev.new_event_id(_NOW_MS) for _ in range(per_batch))])


def test_event_ids_carry_the_time() -> None:
    before = int(time.time() * 1000)
    text = ev.new_event_id()
    after = int(time.time() * 1000)
    assert before <= uuid.UUID(text).int >> 80 <= after
    _check_ids([text], uuid.UUID(text).int >> 80)


def test_event_ids_are_unique_across_threads() -> None:
    ev._ID_RANDOM.clear()  # every thread starts by refilling: concurrent refills
    results: list[list[str]] = [[] for _ in range(8)]
    start = threading.Barrier(len(results))

    def work(out: list[str]) -> None:
        start.wait()
        out.extend(ev.new_event_id(_NOW_MS) for _ in range(2000))

    threads = [threading.Thread(target=work, args=(out,)) for out in results]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    _check_ids([text for out in results for text in out])


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_event_ids_are_unique_across_fork() -> None:
    # The child inherits the parent's unused pooled randomness; without the at-fork
    # reset both would make the same ids from it.
    ev._ID_RANDOM.clear()
    first = ev.new_event_id(_NOW_MS)  # a refill: ~400 unused values are now pooled
    assert len(ev._ID_RANDOM) >= 100
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        # Python 3.12+ warns about fork with threads alive (e.g. trio's thread cache);
        # the child only makes ids and writes them to a pipe.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        code = 1
        try:
            os.write(write_end, " ".join(ev.new_event_id(_NOW_MS) for _ in range(100)).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        child = pipe.read().decode().split()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    parent = [ev.new_event_id(_NOW_MS) for _ in range(100)]
    assert len(child) == 100
    _check_ids([first, *parent, *child])


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
