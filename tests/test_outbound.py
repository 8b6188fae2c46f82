"""Outbound: splitting + UDH (rejoined by our own reassembler), the token bucket, the
submitter (round robin, throttling back-off), send/get and receipt correlation."""

from __future__ import annotations

import datetime as dt
import itertools
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from gatewayd import charsets
from gatewayd.config import CarrierConfig, Config, loads_config
from gatewayd.destinations.base import Outcome
from gatewayd.events import Address, DeliveryReceipt, MoMessage, ReceiptStatus
from gatewayd.outbound import (
    STATUS_URL_DESTINATION,
    SUBMIT_PREFIX,
    Outbound,
    SendRejected,
    SendRequest,
    Submitter,
    TokenBucket,
    concat_udh,
    plan_parts,
    smpp_address,
)
from gatewayd.routing import Router
from gatewayd.smpp import pdu as P
from gatewayd.smpp.driver import RequestTimeout
from gatewayd.smpp.receive import Part, Reassembler, decode_deliver, normalize_message_id
from gatewayd.store import JobState, SqliteStore

NOW = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)

# --------------------------------------------------------------------------- splitting


def rejoin(text: str, reference: int = 7) -> str:
    """Split as we submit, then read the parts back as deliver_sm through our receiver."""
    plan = plan_parts(text, reference)
    reassembler = Reassembler()
    out: list[MoMessage] = []
    order = list(enumerate(plan.short_messages, 1))
    for seq, short_message in reversed(order):  # any order must do
        # GSM travels unpacked (one septet an octet): 6 + 153 septets = 140 packed octets
        limit = 140 if plan.data_coding == 8 else (160 if len(order) == 1 else 6 + 153)
        assert len(short_message) <= limit
        pdu = P.make(
            "deliver_sm",
            sequence=seq,
            source_addr="447700900001",
            destination_addr="447700900002",
            esm_class=plan.esm_class,
            data_coding=plan.data_coding,
            short_message=short_message,
        )
        decoded = decode_deliver(pdu, carrier="c", received_at=NOW)
        if isinstance(decoded, Part):
            assert decoded.reference == reference
            assert decoded.total == len(plan.short_messages)
            message = reassembler.add(decoded, NOW)
            if message is not None:
                out.append(message)
        else:
            assert isinstance(decoded, MoMessage)
            out.append(decoded)
    assert len(out) == 1
    assert out[0].complete
    return out[0].text


GSM_CHARS = st.sampled_from(charsets.GSM_BASIC.replace("\x1b", "") + "^{}\\[~]|€\f")
UCS2_CHARS = st.one_of(
    GSM_CHARS,
    st.sampled_from("жЖ中文😀👍🏽🇬🇧\U0001f680ĀŒ"),
    st.characters(codec="utf-8"),
)


@settings(max_examples=150, deadline=None)
@given(st.text(GSM_CHARS, min_size=0, max_size=1200))
def test_gsm_texts_with_escapes_split_and_rejoin_exactly(text: str) -> None:
    if not text:
        return
    assert rejoin(text) == text


@settings(max_examples=150, deadline=None)
@given(st.text(UCS2_CHARS, min_size=1, max_size=500))
def test_ucs2_texts_with_emoji_split_and_rejoin_exactly(text: str) -> None:
    assert rejoin(text) == text


def test_escape_and_surrogate_never_cut() -> None:
    gsm = "a" * 152 + "€" + "b" * 200  # the escape would straddle parts 1 and 2
    plan = plan_parts(gsm, 3)
    assert plan.data_coding == 0
    assert plan.esm_class == 0x40
    assert plan.short_messages[0][:6] == concat_udh(3, 3, 1) == bytes((5, 0, 3, 3, 3, 1))
    assert plan.short_messages[0][-1] != 0x1B
    assert rejoin(gsm) == gsm
    ucs2 = "я" * 66 + "😀" * 40
    plan = plan_parts(ucs2)
    assert plan.data_coding == 8
    first = plan.short_messages[0][6:]
    assert not 0xD8 <= first[-2] <= 0xDB  # never ends on a high surrogate
    assert rejoin(ucs2) == ucs2


def test_single_part_has_no_udh() -> None:
    plan = plan_parts("hello")
    assert plan.esm_class == 0
    assert plan.short_messages == (b"hello",)


def test_smpp_address() -> None:
    assert smpp_address("+447700900001") == (1, 1, "447700900001")
    assert smpp_address("447700900001") == (1, 1, "447700900001")
    assert smpp_address("12345") == (0, 1, "12345")
    assert smpp_address("ACME") == (5, 0, "ACME")


# --------------------------------------------------------------------------- token bucket


def test_token_bucket_spacing_pure() -> None:
    t = [0.0]
    bucket = TokenBucket(4.0, clock=lambda: t[0])
    assert bucket.try_take(0.0)
    assert not bucket.try_take(0.1)
    assert bucket.delay(0.1) == pytest.approx(0.15)
    assert bucket.try_take(0.25)
    t[0] = 0.25
    bucket.hold(2.0)  # throttled: nothing for two seconds
    assert bucket.delay(1.0) == pytest.approx(1.25 + 0.25)
    assert not bucket.try_take(2.2)
    assert bucket.try_take(2.5)


async def test_token_bucket_limits_rate(autojump_clock: trio.testing.MockClock) -> None:
    bucket = TokenBucket(5.0)
    start = trio.current_time()
    times: list[float] = []

    async def one() -> None:
        await bucket.acquire()
        times.append(trio.current_time() - start)

    async with trio.open_nursery() as nursery:
        for _ in range(11):
            nursery.start_soon(one)
    assert max(times) == pytest.approx(2.0)
    times.sort()
    assert all(b - a == pytest.approx(0.2) for a, b in itertools.pairwise(times))


# --------------------------------------------------------------------------- submitter


class FakeBind:
    """A bind answering submit_sm from a script of statuses (then ESME_ROK)."""

    def __init__(
        self, name: str, statuses: list[int | Exception] | None = None, *, bound: bool = True
    ) -> None:
        self.name = name
        self.bound = bound
        self.transmit = True
        self.script = list(statuses or [])
        self.requests: list[dict[str, int | bytes | str]] = []
        self.ids = 0

    @property
    def is_bound(self) -> bool:
        return self.bound

    @property
    def can_transmit(self) -> bool:
        return self.transmit

    async def request(
        self, command: str, *, tlvs: tuple[P.Tlv, ...] = (), **fields: int | bytes | str
    ) -> P.Pdu:
        assert command == "submit_sm"
        await trio.sleep(0.01)
        self.requests.append(fields)
        step = self.script.pop(0) if self.script else P.ESME_ROK
        if isinstance(step, Exception):
            raise step
        if step != P.ESME_ROK:
            return P.make("submit_sm_resp", sequence=1, status=step)
        self.ids += 1
        return P.make("submit_sm_resp", sequence=1, message_id=f"{self.name}-{self.ids:04X}")


def carrier(**kw: object) -> CarrierConfig:
    return CarrierConfig(name="sim", host="127.0.0.1", system_id="x", **kw)  # type: ignore[arg-type]


async def test_round_robin_over_bound_transmitting_binds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    a, b, c, d = FakeBind("a"), FakeBind("b"), FakeBind("c", bound=False), FakeBind("d")
    d.transmit = False
    sub = Submitter(carrier(), lambda: [a, b, c, d])
    used = [(await sub.submit({"short_message": b"x"})).bind for _ in range(4)]
    assert used == ["a", "b", "a", "b"]


async def test_throttled_backs_off_exponentially_then_succeeds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    bind = FakeBind("a", [P.ESME_RTHROTTLED, P.ESME_RMSGQFUL, P.ESME_RTHROTTLED])
    sub = Submitter(carrier(throughput=10.0), lambda: [bind])
    start = trio.current_time()
    outcome = await sub.submit({"short_message": b"x"})
    elapsed = trio.current_time() - start
    assert outcome.message_id == "a-0001"
    assert sub.throttled == 3
    assert 7.0 <= elapsed < 7.5  # 1 + 2 + 4 s of back-off (plus the fake's latency)
    assert len(bind.requests) == 4


async def test_throttled_too_often_and_other_errors_are_failures(
    autojump_clock: trio.testing.MockClock,
) -> None:
    bind = FakeBind("a", [P.ESME_RTHROTTLED] * 10)
    sub = Submitter(carrier(), lambda: [bind], throttle_tries=3, throttle_max=2.0)
    outcome = await sub.submit({})
    assert outcome.message_id is None
    assert outcome.status == P.ESME_RTHROTTLED
    assert outcome.retry_after == 2.0
    assert "4 times" in outcome.error
    bind.script = [P.ESME_RINVDSTADR]
    outcome = await sub.submit({})
    assert outcome.status == P.ESME_RINVDSTADR
    assert "ESME_RINVDSTADR" in outcome.error
    bind.script = [RequestTimeout("no answer")]
    assert "RequestTimeout" in (await sub.submit({})).error


async def test_no_bound_bind_waits_then_fails(autojump_clock: trio.testing.MockClock) -> None:
    bind = FakeBind("a", bound=False)
    sub = Submitter(carrier(), lambda: [bind], bind_wait=3.0)
    start = trio.current_time()
    outcome = await sub.submit({})
    assert trio.current_time() - start == pytest.approx(3.0)
    assert "no bound bind" in outcome.error

    async def bind_later() -> None:
        await trio.sleep(1.0)
        bind.bound = True

    async with trio.open_nursery() as nursery:
        nursery.start_soon(bind_later)
        assert (await sub.submit({})).message_id == "a-0001"


# --------------------------------------------------------------------------- Outbound


def make_config(tmp_path: Path, extra: str = "") -> Config:
    text = textwrap.dedent(
        """\
        store: ./gw.db
        carriers:
          sim: {host: 127.0.0.1, system_id: gw, password: pw}
          rx: {host: 127.0.0.1, system_id: gw, bind: receiver}
        destinations:
          hook: {type: url, url: "http://127.0.0.1:9/hook"}
          status: {type: url, url: "http://127.0.0.1:9/status"}
          mine: {type: url, url: "http://127.0.0.1:9/mine"}
        numbers:
          "447700900111": {delivery: mine}
        routes:
          delivery: status
        """
    )
    return loads_config(text + extra, base_dir=tmp_path)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(tmp_path / "gw.db", use_thread=False, wall_clock=lambda: 1.7e9)
    async with trio.open_nursery() as nursery:
        await nursery.start(s.run)
        yield s
        nursery.cancel_scope.cancel()
    s.close()


def outbound_with(config: Config, store: SqliteStore, binds: list[FakeBind]) -> Outbound:
    return Outbound(config, store, binds=lambda name: binds if name == "sim" else [])


async def test_send_rejects_with_every_problem(tmp_path: Path, store: SqliteStore) -> None:
    ob = outbound_with(make_config(tmp_path), store, [])
    with pytest.raises(SendRejected) as info:
        await ob.send(
            SendRequest(
                from_="not a valid sender!",
                to="12ab",
                text="",
                status_url="ftp://example.com/x",
                custom={"a": 1},
            )
        )
    assert info.value.status == 400
    assert len(info.value.problems) == 4
    assert [p.split(":")[0] for p in info.value.problems] == ["from", "to", "text", "status_url"]
    with pytest.raises(SendRejected) as info:
        await ob.send(SendRequest(from_="ACME", to="447700900001", text="x", carrier="nope"))
    assert info.value.status == 422
    assert info.value.problems == ["carrier: unknown carrier 'nope'"]
    with pytest.raises(SendRejected) as info:
        await ob.send(SendRequest(from_="ACME", to="1", text="x", carrier="rx", delivery="zz"))
    assert info.value.status == 422
    assert len(info.value.problems) == 2
    with pytest.raises(SendRejected, match="not permitted"):
        await ob.send(
            SendRequest(from_="ACME", to="1", text="x", status_url="http://169.254.169.254/")
        )
    with pytest.raises(SendRejected, match="unpaired"):
        await ob.send(SendRequest(from_="ACME", to="1", text="a\ud800b"))
    with pytest.raises(SendRejected, match="too long"):
        await ob.send(SendRequest(from_="ACME", to="1", text="x" * 153 * 256))
    stats = await store.stats()
    assert stats.events == 0  # nothing half-sent


async def test_status_url_loopback_allowed_by_config(tmp_path: Path, store: SqliteStore) -> None:
    config = make_config(tmp_path, "api: {status_url_allow: [127.0.0.0/8]}\n")
    ob = outbound_with(config, store, [])
    result = await ob.send(
        SendRequest(from_="ACME", to="447700900001", text="hi", status_url="http://127.0.0.1:1/s")
    )
    assert result.parts == 1


async def test_send_queues_then_submits_resuming_after_a_failure(
    tmp_path: Path, store: SqliteStore, autojump_clock: trio.testing.MockClock
) -> None:
    bind = FakeBind("b", [P.ESME_ROK, P.ESME_RSYSERR])
    ob = outbound_with(make_config(tmp_path), store, [bind])
    text = "x" * 400  # three parts
    sent = await ob.send(
        SendRequest(from_="447700900111", to="447700900001", text=text, custom="t-1")
    )
    assert sent.parts == 3
    # one transaction: the message, its stand-in event and the submit job
    record = await store.get_event(sent.message_id)
    assert [j.destination for j in record.jobs] == [SUBMIT_PREFIX + "sim"]
    assert (await ob.get(sent.message_id))["status"] == "queued"

    first = await ob.submit_message(sent.message_id)
    assert first.outcome is Outcome.RETRY
    assert first.status_code == P.ESME_RSYSERR
    assert "part 2/3" in first.error
    assert (await ob.get(sent.message_id))["status"] == "submitting"
    second = await ob.submit_message(sent.message_id)
    assert second.outcome is Outcome.DELIVERED
    # part 1 was never submitted twice; part 2 was tried twice
    seqs = [bytes(r["short_message"])[5] for r in bind.requests]  # type: ignore[arg-type]
    assert seqs == [1, 2, 2, 3]
    for r in bind.requests:
        assert r["registered_delivery"] == 1
        assert r["esm_class"] == 0x40
        assert r["destination_addr"] == "447700900001"
    refs = {bytes(r["short_message"])[3] for r in bind.requests}  # type: ignore[arg-type]
    assert refs == {0}
    view = await ob.get(sent.message_id)
    assert view["status"] == "submitted"
    assert [p["carrier_message_id"] for p in view["parts"]] == ["b-0001", "b-0002", "b-0003"]
    assert view["custom"] == "t-1"
    assert (await ob.submit_message(sent.message_id)).outcome is Outcome.DELIVERED
    assert len(bind.requests) == 4  # all parts done: nothing more is sent

    # the next long message to the same number takes the next reference; others start at 0
    again = await ob.send(SendRequest(from_="ACME", to="447700900001", text=text))
    other = await ob.send(SendRequest(from_="ACME", to="447700900002", text=text))
    await ob.submit_message(again.message_id)
    await ob.submit_message(other.message_id)
    assert bytes(bind.requests[4]["short_message"])[3] == 1  # type: ignore[arg-type]
    assert bytes(bind.requests[-1]["short_message"])[3] == 0  # type: ignore[arg-type]
    with pytest.raises(KeyError):
        await ob.get("nope")


def receipt(message_id: str, status: ReceiptStatus = ReceiptStatus.DELIVRD) -> DeliveryReceipt:
    return DeliveryReceipt(
        id=f"dlr-{message_id}-{status}",
        carrier="sim",
        message_id=message_id,
        normalized_message_id=normalize_message_id(message_id),
        status=status,
        source=Address(addr="447700900001"),
        destination=Address(addr="447700900111"),
        done_date=NOW,
        received_at=NOW,
    )


async def test_receipts_correlate_and_choose_destinations(
    tmp_path: Path, store: SqliteStore, autojump_clock: trio.testing.MockClock
) -> None:
    config = make_config(tmp_path, "api: {status_url_allow: [127.0.0.0/8]}\n")
    bind = FakeBind("b")
    bind.ids = 0x0F  # ids b-0010.. are not numbers: compared upper-cased
    ob = outbound_with(config, store, [bind])
    router = Router(config)
    with_url = await ob.send(
        SendRequest(
            from_="447700900111",
            to="447700900001",
            text="x" * 200,
            status_url="http://127.0.0.1:1/s",
            custom={"k": [1]},
        )
    )
    with_delivery = await ob.send(
        SendRequest(from_="447700900111", to="447700900001", text="y", delivery="hook")
    )
    plain = await ob.send(SendRequest(from_="447700900111", to="447700900001", text="z"))
    other = await ob.send(SendRequest(from_="ACME", to="447700900001", text="z"))
    for m in (with_url, with_delivery, plain, other):
        assert (await ob.submit_message(m.message_id)).outcome is Outcome.DELIVERED

    assert await ob.route_receipt(receipt("b-0010"), router) == (STATUS_URL_DESTINATION,)
    assert (await ob.get(with_url.message_id))["status"] == "submitted"
    found = await ob.correlate(receipt("b-0011"))
    assert found is not None
    extra = found.extra(receipt("b-0011"))
    assert extra["message_uuid"] == with_url.message_id
    assert extra["custom"] == extra["custom_ticket"] == '{"k":[1]}'
    assert (extra["units"], extra["part"]) == ("2", "2")
    assert extra["deliv_time"] == "2026-01-02T03:04:05Z"
    assert extra["submit_time"].endswith("Z")
    assert await ob.route_receipt(receipt("b-0011"), router) == (STATUS_URL_DESTINATION,)
    view = await ob.get(with_url.message_id)
    assert view["status"] == "delivered"
    assert [p["status"] for p in view["parts"]] == ["DELIVRD", "DELIVRD"]
    # a late intermediate receipt does not undo a final status
    await ob.route_receipt(receipt("b-0011", ReceiptStatus.ENROUTE), router)
    assert (await ob.get(with_url.message_id))["status"] == "delivered"

    assert await ob.route_receipt(receipt("b-0012"), router) == ("hook",)  # its delivery
    assert await ob.route_receipt(receipt("b-0013"), router) == ("mine",)  # sender's number
    assert await ob.route_receipt(receipt("b-0014"), router) == ("status",)  # routes.delivery
    failed = receipt("b-0014", ReceiptStatus.UNDELIV)
    await ob.route_receipt(failed, router)
    assert (await ob.get(other.message_id))["status"] == "failed"
    assert ob.unmatched_receipts == 0
    assert await ob.route_receipt(receipt("b-9999"), router) == ("mine",)  # by number
    assert ob.unmatched_receipts == 1


async def test_ambiguous_ids_match_every_reading(
    tmp_path: Path, store: SqliteStore, autojump_clock: trio.testing.MockClock
) -> None:
    class HexBind(FakeBind):
        async def request(
            self, command: str, *, tlvs: tuple[P.Tlv, ...] = (), **fields: int | bytes | str
        ) -> P.Pdu:
            self.requests.append(fields)
            return P.make("submit_sm_resp", sequence=1, message_id="0x10")  # hex sixteen

    config = make_config(tmp_path)
    ob = outbound_with(config, store, [HexBind("h")])
    sent = await ob.send(SendRequest(from_="ACME", to="447700900001", text="hi"))
    await ob.submit_message(sent.message_id)
    # the receipt writes the id as "10" (hex without a marker): auto reads it as ten
    dlr = receipt("10")
    assert dlr.normalized_message_id == "10"
    found = await ob.correlate(dlr)
    assert found is not None
    assert found.message.id == sent.message_id


async def test_dead_submit_job_makes_the_message_failed(tmp_path: Path, store: SqliteStore) -> None:
    from gatewayd.destinations.base import AttemptResult

    ob = outbound_with(make_config(tmp_path), store, [])
    sent = await ob.send(SendRequest(from_="ACME", to="447700900001", text="hi"))
    claimed = await store.claim_due(SUBMIT_PREFIX + "sim", 2e9, 10)
    assert [c.event.id for c in claimed] == [sent.message_id]
    await store.record_attempt(
        claimed[0].job.id,
        AttemptResult(outcome=Outcome.RETRY, error="no bound bind"),
        next_at=None,
        final_state=JobState.DEAD,
    )
    view = await ob.get(sent.message_id)
    assert view["status"] == "failed"
    assert view["error"] == "no bound bind"


async def test_receipt_ids_whose_readings_coincide_reach_their_own_message(
    tmp_path: Path,
) -> None:
    # "0000000A" (hex ten) and "00000010" (decimal ten) normalise alike: the exact text of
    # the submit_sm_resp id must win, or receipts land on the wrong message.
    from gatewayd.smpp.receive import normalize_message_id
    from gatewayd.store import MessagePartRecord, MessageRecord, SqliteStore

    store = SqliteStore(tmp_path / "ids.db", use_thread=False)
    try:
        for mid, carrier_id in (("m-ten-hex", "0000000A"), ("m-ten-dec", "00000010")):
            await store.save_message(
                MessageRecord(id=mid, carrier="sim", from_number="1", to_number="2", text="x")
            )
            await store.add_message_part(
                MessagePartRecord(
                    message_id=mid,
                    part=1,
                    carrier="sim",
                    carrier_message_id=carrier_id,
                    normalized_id=normalize_message_id(carrier_id),
                )
            )
        assert normalize_message_id("0000000A") == normalize_message_id("00000010")
        hex_part = await store.find_message_part("sim", "10", exact="0000000a")
        dec_part = await store.find_message_part("sim", "10", exact="00000010")
        assert hex_part is not None
        assert hex_part.message_id == "m-ten-hex"
        assert dec_part is not None
        assert dec_part.message_id == "m-ten-dec"
    finally:
        store.close()
