"""The durable pipeline end to end: simulator -> daemon -> store -> real HTTP receiver."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import jwt
import trio
import trio.testing

from gatewayd.smpp import pdu as P
from gatewayd.smpp.simulator import SimulatorSettings
from gatewayd.store import EventStatus, JobState
from tests.e2e.helpers import JWT_SECRET, mo_fields, running


async def test_mo_and_receipt_arrive_exactly_once_with_jwt(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with running(tmp_path) as h:
        assert await h.sim.deliver("a", mo_fields(b"hello there")) == P.ESME_ROK
        receipt = (
            b"id:0A1B sub:001 dlvrd:001 submit date:2611220101 done date:2611220102 "
            b"stat:DELIVRD err:000 text:x"
        )
        assert await h.sim.deliver("dlr", mo_fields(receipt, esm=0x04)) == P.ESME_ROK
        reqs = await h.rx.wait_for(2)
        await trio.sleep(5)  # nothing more arrives
        assert len(h.rx.requests) == 2
    mo = next(r for r in reqs if r.path == "/crm")
    body = mo.json()
    assert body["type"] == "mo"
    assert body["class"] == "a2p"
    assert (body["from"], body["to"], body["text"], body["keyword"]) == (
        "447700900001",
        "12345",
        "hello there",
        "HELLO",
    )
    assert body["carrier"] == "sim"
    assert body["parts"] == 1
    assert body["received_at"].endswith("Z")
    assert mo.header("idempotency-key") == body["id"]
    auth = mo.header("authorization")
    assert auth is not None
    assert auth.startswith("Bearer ")
    claims = jwt.decode(auth[7:], JWT_SECRET, algorithms=["HS256"])
    assert claims["jti"] == body["id"]
    assert claims["exp"] - claims["iat"] == 300
    assert claims["body_sha256"] == hashlib.sha256(mo.body).hexdigest()
    dlr = next(r for r in reqs if r.path == "/status")
    assert dlr.method == "GET"
    assert dlr.query_params() == {"id": ["0A1B"], "status": ["DELIVRD"]}


async def test_keyword_fans_out_and_form_and_get_variants(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with running(tmp_path) as h:
        await h.sim.deliver("stop", mo_fields(b"stop please"))
        await h.sim.deliver("info", mo_fields(b"Info now"))
        reqs = await h.rx.wait_for(3)
        await trio.sleep(5)
        assert len(h.rx.requests) == 3
    paths = sorted(r.path for r in reqs)
    assert paths == ["/crm", "/get", "/legacy.php"]
    legacy = next(r for r in reqs if r.path == "/legacy.php")
    assert legacy.query_params() == {"msg": ["stop please"]}
    form = legacy.form()
    assert form["msg"] == ["stop please"]
    assert form["from"] == ["447700900001"]
    get = next(r for r in reqs if r.path == "/get")
    assert get.method == "GET"
    q = get.query_params()
    assert q["text"] == ["Info now"]
    assert q["keyword"] == ["INFO"]
    assert get.body == b""


HOSTILE = 'a&b=c"d\ne#f?g/h%20 {{text}} é€ 👋 +'


async def test_hostile_values_arrive_intact(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with running(tmp_path) as h:
        text = ("STOP " + HOSTILE).encode("utf-16-be")
        await h.sim.deliver("hostile", mo_fields(text, dc=8))
        reqs = await h.rx.wait_for(2)
    expected = "STOP " + HOSTILE
    legacy = next(r for r in reqs if r.path == "/legacy.php")
    assert legacy.query_params()["msg"] == [expected]
    assert legacy.form()["msg"] == [expected]
    assert legacy.form()["uid"] != []
    crm = next(r for r in reqs if r.path == "/crm")
    assert crm.json()["text"] == expected


async def test_p2p_routes_to_none_and_history_shows_dropped(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with running(tmp_path) as h:
        await h.sim.deliver("p2p", mo_fields(b"hi mate", to="447700900777"))
        await trio.sleep(5)
        assert h.rx.requests == []
        page = await h.store.list_events(limit=10)
        assert len(page.items) == 1
        record = await h.store.get_event(page.items[0].id)
        assert record.status is EventStatus.DROPPED
        assert [j.state for j in record.jobs] == [JobState.DROPPED]


async def test_concatenated_parts_out_of_order_deliver_one_message(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with running(tmp_path) as h:
        parts = [
            b"\x05\x00\x03\x07\x03" + bytes([i + 1]) + f"part{i + 1} ".encode() for i in range(3)
        ]
        for i in (2, 0, 2, 1):  # out of order, one duplicate
            assert await h.sim.deliver(f"p{i}", mo_fields(parts[i], esm=0x40)) == P.ESME_ROK
        reqs = await h.rx.wait_for(1)
        await trio.sleep(10)
        assert len(h.rx.requests) == 1
    body = reqs[0].json()
    assert body["text"] == "part1 part2 part3 "
    assert body["parts"] == 3


async def test_failing_webhook_is_retried_then_dead_lettered(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with running(tmp_path) as h:
        h.rx.respond_with(503, then=503)
        await h.sim.deliver("x", mo_fields(b"will fail"))
        with trio.fail_after(120):
            await h.rx.wait_for(4)  # the try + 3 retries 10 s apart
        await trio.sleep(60)
        assert len(h.rx.requests) == 4
        gaps = [
            b.arrived_at - a.arrived_at
            for a, b in zip(h.rx.requests, h.rx.requests[1:], strict=False)
        ]
        assert all(9.5 <= g <= 11 for g in gaps), gaps
        page = await h.store.list_events(limit=10)
        record = await h.store.get_event(page.items[0].id)
        assert record.status is EventStatus.DEAD
        assert [a.status_code for a in record.attempts] == [503, 503, 503, 503]
        assert [a.attempt for a in record.attempts] == [1, 2, 3, 4]


async def test_duplicate_deliver_sm_is_acked_without_second_delivery(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with running(tmp_path) as h:
        fields = mo_fields(b"same message", source="447700900042")
        fields["schedule_delivery_time"] = ""
        assert await h.sim.deliver("one", fields) == P.ESME_ROK
        assert await h.sim.deliver("again", fields) == P.ESME_ROK  # a resend of the same PDU
        await h.rx.wait_for(1)
        await trio.sleep(10)
        assert len(h.rx.requests) == 1
        assert h.daemon.duplicates == 1


async def test_store_that_cannot_commit_answers_temporary_error_then_recovers(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    sim = SimulatorSettings(port=0, password="pw", resend_delay=5.0)
    async with running(tmp_path, sim_settings=sim) as h:
        # Another process holds the write lock: every commit fails ("database is locked").
        blocker = sqlite3.connect(h.config.store, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        done = trio.Event()
        statuses: list[int] = []

        async def send() -> None:
            statuses.append(await h.sim.deliver("locked", mo_fields(b"survives a locked store")))
            done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send)
            while not h.sim.deliveries:
                await trio.sleep(0.5)
            assert h.sim.deliveries[0].status == P.ESME_RX_T_APPN  # the temporary error
            blocker.execute("ROLLBACK")  # the store recovers
            blocker.close()
            await done.wait()
        assert statuses == [P.ESME_ROK]
        reqs = await h.rx.wait_for(1)
        assert reqs[0].json()["text"] == "survives a locked store"
        assert h.daemon.acks[P.ESME_RX_T_APPN] >= 1


async def test_all_of_a_stream_arrive(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    sim = SimulatorSettings(port=0, password="pw", mo=200, window=10)
    async with running(tmp_path, sim_settings=sim) as h:
        await h.sim.mo_done.wait()
        reqs = await h.rx.wait_for(200)
        await trio.sleep(5)
    texts = sorted(json.loads(r.body)["text"] for r in reqs)
    assert texts == sorted(f"TEXT {i}" for i in range(1, 201))


async def test_resent_part_of_a_delivered_message_leaves_nothing_behind(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    parts = [b"\x05\x00\x03\x09\x02" + bytes([i + 1]) + f"half{i + 1} ".encode() for i in range(2)]
    async with running(tmp_path) as h:
        for i in (0, 1, 0):  # the SMSC resends part 1 after the message is complete
            assert await h.sim.deliver(f"p{i}", mo_fields(parts[i], esm=0x40)) == P.ESME_ROK
        await h.rx.wait_for(1)
        await trio.sleep(400)  # past the reassembly timeout: no phantom partial message
        assert len(h.rx.requests) == 1
        assert await h.store.load_concat_parts() == []  # no orphan part to restore later


async def test_complete_parts_found_at_start_are_delivered_once(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    # A crash after both parts were stored but before the message was: the next start
    # finds a complete set. It must deliver it once and drop the parts, every later start
    # delivering nothing more.
    import datetime as dt

    from gatewayd.app import concat_key
    from gatewayd.events import Address, MessageClass
    from gatewayd.smpp.receive import Part
    from gatewayd.store import ConcatPart, PersistItem, SqliteStore

    now = dt.datetime(2026, 11, 22, tzinfo=dt.UTC)
    stored = [
        Part(
            carrier="sim",
            source=Address(addr="447700900001"),
            destination=Address(addr="12345"),
            reference=5,
            total=2,
            seq=i,
            scheme="udh8",
            data=f"piece{i} ".encode(),
            data_coding=0,
            message_class=MessageClass.A2P,
            received_at=now,
        )
        for i in (1, 2)
    ]
    setup = SqliteStore(tmp_path / "gw.db", use_thread=False)
    for part in stored:
        await setup.persist(
            PersistItem(
                event=None,
                concat_part=ConcatPart(key=concat_key(part.key), seq=part.seq, json=part.to_json()),
            )
        )
    setup.close()
    deliveries = []
    for _ in range(2):  # two starts on the same store
        async with running(tmp_path) as h:
            await trio.sleep(10)
            assert await h.store.load_concat_parts() == []
            page = await h.store.list_events(limit=10)
            assert len(page.items) == 1
            deliveries.append([r.json()["text"] for r in h.rx.requests])
    assert deliveries == [["piece1 piece2 "], []]


async def test_jobs_for_a_destination_removed_while_down_are_dead_lettered_at_start(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    import datetime as dt

    from gatewayd.dispatch import REMOVED_REASON
    from gatewayd.events import Address, MessageClass, MoMessage, new_event_id
    from gatewayd.store import PersistItem, SqliteStore

    mo = MoMessage(
        id=new_event_id(),
        carrier="sim",
        source=Address(addr="447700900001"),
        destination=Address(addr="12345"),
        text="for a destination that is gone",
        raw=b"",
        data_coding=0,
        message_class=MessageClass.A2P,
        received_at=dt.datetime(2026, 11, 22, tzinfo=dt.UTC),
    )
    setup = SqliteStore(tmp_path / "gw.db", use_thread=False)
    await setup.persist(PersistItem(event=mo, destinations=("ghost",)))
    setup.close()
    async with running(tmp_path) as h:
        await trio.sleep(1)
        record = await h.store.get_event(mo.id)
        assert [j.state for j in record.jobs] == [JobState.DEAD]
        assert REMOVED_REASON in record.jobs[0].last_error
