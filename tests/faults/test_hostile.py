"""A hostile carrier: for a fixed (virtual) minute, a scripted SMSC sends random and mutated
PDUs, absurd command_lengths, TLV floods and valid MOs in between, ignoring the window.

The daemon must stay up (every session ended by an absurd length is re-bound), keep its
memory bounded (tracemalloc peak), answer every valid MO and deliver each acknowledged one
exactly once. In process under the autojump clock; seeded randomness.
"""

from __future__ import annotations

import collections
import random
import struct
import tracemalloc
from pathlib import Path

import attrs
import pytest
import trio
import trio.testing

from gatewayd.smpp import pdu as P
from gatewayd.smpp.driver import BindSettings, BindState, SmppBind
from gatewayd.webhook_receiver import open_webhook_receiver
from tests.faults.harness import (
    carrier_yaml,
    config_yaml,
    daemon_running,
    deliver_sm,
    mo_fields,
    real_time_limit,
    wait_until,
)
from tests.smpp.peers import RawPeer, accept_bind

SEED = 1337
HOSTILE_FOR = 30.0  # virtual seconds
PEAK_BOUND = 24 * 1024 * 1024  # bytes traced at the peak, the whole process
ABSURD_LENGTHS = (0, 1, 8, 15, 65537, 1 << 20, 0x7FFFFFFF, 0xFFFFFFFF)
COMMANDS = (
    P.DELIVER_SM,
    P.DATA_SM,
    P.SUBMIT_SM,
    P.ENQUIRE_LINK,
    P.GENERIC_NACK,
    P.DELIVER_SM_RESP,
    P.BIND_TRANSMITTER,
    P.ALERT_NOTIFICATION,
    P.OUTBIND,
)
HOSTILE_SEQ = 0x40000000  # hostile PDUs use sequence numbers from here; valid MOs below


@attrs.define
class Tally:
    valid_sent: dict[str, bytes] = attrs.field(factory=dict)  # text -> the PDU's fields' text
    resend: list[str] = attrs.field(factory=list)  # valid MOs to send again (session lost)
    acked: set[str] = attrs.field(factory=set)
    valid_status: collections.Counter[int] = attrs.field(factory=collections.Counter)
    floods: collections.Counter[int] = attrs.field(factory=collections.Counter)  # status
    flood_acked: set[str] = attrs.field(factory=set)
    kinds: collections.Counter[str] = attrs.field(factory=collections.Counter)
    generic_nacks: int = 0
    absurd_closed: int = 0  # sessions the daemon ended after an absurd length
    absurd_open: int = 0  # ...and ones it did not end within 30 s


def mutate(rng: random.Random, frame: bytes) -> bytes:
    """A deliver_sm with its body damaged (header kept consistent, sequence hostile)."""
    body = bytearray(frame[16:])
    how = rng.randrange(4)
    if how == 0:
        for _ in range(rng.randint(1, 8)):
            body[rng.randrange(len(body))] = rng.randrange(256)
    elif how == 1:
        del body[rng.randrange(len(body)) :]
    elif how == 2:
        pos = rng.randrange(len(body) + 1)
        body[pos:pos] = rng.randbytes(rng.randint(1, 64))
    else:
        body += struct.pack(">HH", rng.randrange(0x10000), rng.randrange(0x10000))  # lying TLV
    return bytes(body)


def frame(command_id: int, status: int, sequence: int, body: bytes) -> bytes:
    return struct.pack(">LLLL", 16 + len(body), command_id, status, sequence) + body


@pytest.mark.slow
async def test_hostile_carrier(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    rng = random.Random(SEED)
    tally = Tally()
    counter = {"valid": 0, "hostile": 0, "flood": 0}
    hostile_until: list[float] = []

    def hostile_seq() -> int:
        counter["hostile"] += 1
        return HOSTILE_SEQ + counter["hostile"]

    async def script(stream: trio.SocketStream, peer: RawPeer) -> None:
        framer = P.Framer(max_length=1 << 20)
        await accept_bind(stream, peer, framer)
        pending: dict[int, str] = {}  # valid MOs (and floods) sent, not answered yet
        absurd_sent = False
        seq = iter(range(1, HOSTILE_SEQ))

        async def send_valid(text: str) -> None:
            n = next(seq)
            pending[n] = text
            await stream.send_all(P.encode(P.make("deliver_sm", sequence=n, **mo_fields(text))))

        async def reader(sender: trio.CancelScope) -> None:
            while True:
                try:
                    frame_ = framer.next_frame()
                except P.FrameError:
                    return
                if frame_ is None:
                    try:
                        data = await stream.receive_some(65536)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        data = b""
                    if not data:
                        if absurd_sent:
                            tally.absurd_closed += 1
                        sender.cancel()
                        return
                    framer.feed(data)
                    continue
                pdu = P.decode(frame_)
                if pdu.command == "generic_nack":
                    tally.generic_nacks += 1
                if not pdu.is_response:
                    await stream.send_all(P.encode(P.response_for(pdu)))
                    continue
                text = pending.pop(pdu.sequence, None)
                if text is None:
                    continue
                if text.startswith("FLOOD"):
                    tally.floods[pdu.status] += 1
                    if pdu.status == P.ESME_ROK:
                        tally.flood_acked.add(text)
                    continue
                tally.valid_status[pdu.status] += 1
                if pdu.status == P.ESME_ROK:
                    tally.acked.add(text)
                else:
                    tally.resend.append(text)  # as an SMSC does

        async def hostile() -> None:
            nonlocal absurd_sent
            while tally.resend:
                await send_valid(tally.resend.pop())
            while trio.current_time() < hostile_until[0]:
                await trio.sleep(rng.uniform(0.0, 0.04))
                roll = rng.random()
                if roll < 0.35:
                    counter["valid"] += 1
                    text = f"VALID {counter['valid']}"
                    tally.valid_sent[text] = text.encode()
                    tally.kinds["valid"] += 1
                    await send_valid(text)
                elif roll < 0.6:
                    tally.kinds["random"] += 1
                    body = rng.randbytes(rng.choice((0, 1, 4, 17, rng.randrange(400))))
                    cmd = rng.choice(COMMANDS) if rng.random() < 0.7 else rng.getrandbits(32)
                    status = rng.choice((0, rng.getrandbits(32)))
                    await stream.send_all(frame(cmd, status, hostile_seq(), body))
                elif roll < 0.9:
                    tally.kinds["mutated"] += 1
                    pdu = P.make("deliver_sm", sequence=1, **mo_fields(f"MUT {counter['hostile']}"))
                    body = mutate(rng, P.encode(pdu))
                    await stream.send_all(frame(P.DELIVER_SM, 0, hostile_seq(), body))
                elif roll < 0.985:
                    tally.kinds["flood"] += 1
                    counter["flood"] += 1
                    text = f"FLOOD {counter['flood']}"
                    tlvs = tuple(
                        P.Tlv(tag=rng.randrange(0x1400, 0x4000), value=b"\x01")
                        for _ in range(rng.choice((1000, 3000, 12000)))
                    )
                    n = next(seq)
                    pending[n] = text
                    pdu = P.make("deliver_sm", sequence=n, tlvs=tlvs, **mo_fields(text))
                    await stream.send_all(P.encode(pdu))
                else:
                    tally.kinds["absurd"] += 1
                    length = rng.choice(ABSURD_LENGTHS)
                    head = struct.pack(">LLLL", length, P.DELIVER_SM, 0, hostile_seq())
                    absurd_sent = True
                    await stream.send_all(head + rng.randbytes(rng.randrange(64)))
                    with trio.move_on_after(30):
                        await trio.sleep_forever()  # the daemon must end the session
                    tally.absurd_open += 1
                    return
            # calm from here on: what is still unanswered, then an ordinary SMSC
            while tally.resend:
                await send_valid(tally.resend.pop())
            await trio.sleep_forever()

        try:
            async with trio.open_nursery() as nursery:
                sender = trio.CancelScope()

                async def run_sender() -> None:
                    with sender:
                        await hostile()

                nursery.start_soon(run_sender)
                await reader(sender)
                nursery.cancel_scope.cancel()
        finally:
            tally.resend.extend(pending.values())  # lost with the session: send again
            tally.resend[:] = [t for t in tally.resend if not t.startswith("FLOOD")]

    peer = RawPeer(script)
    tracemalloc.start()
    try:
        async with open_webhook_receiver() as rx, trio.open_nursery() as nursery:
            port = await nursery.start(peer.serve)
            carrier = carrier_yaml(port, reconnect="{min: 1s, max: 2s}", enquire_link="5s")
            text = config_yaml(
                carrier,
                f"""\
                destinations:
                  crm:
                    type: url
                    url: {rx.url}/crm
                    retry: {{attempts: 5, interval: 10s}}
                routes:
                  a2p: crm
                  p2p: crm
                drain_grace: 1s
                """,
            )
            async with daemon_running(tmp_path, text) as run:
                hostile_until.append(trio.current_time() + HOSTILE_FOR)
                with trio.fail_after(HOSTILE_FOR + 300):
                    await trio.sleep(HOSTILE_FOR)
                    await wait_until(lambda: len(tally.acked) == len(tally.valid_sent))
                    await wait_until(
                        lambda: (
                            {r.json()["text"] for r in rx.requests}
                            >= tally.acked | tally.flood_acked
                        ),
                        step=1,
                    )
                await trio.sleep(30)  # nothing more arrives; the daemon is still up
                bind = run.daemon.binds["sim"][0]
                assert bind.state is BindState.BOUND
                assert not run.daemon.stopped.is_set()
                delivered = collections.Counter(r.json()["text"] for r in rx.requests)
                stats = await run.store.stats()
            _, peak = tracemalloc.get_traced_memory()
            nursery.cancel_scope.cancel()
    finally:
        tracemalloc.stop()

    print(
        f"actions={dict(tally.kinds)} connections={peer.connections} "
        f"valid={len(tally.valid_sent)} acked={len(tally.acked)} floods={dict(tally.floods)} "
        f"generic_nacks={tally.generic_nacks} events={stats.events} peak={peak / 1e6:.1f}MB"
    )
    assert tally.kinds["valid"] >= 150
    assert tally.kinds["absurd"] >= 5
    assert tally.kinds["flood"] >= 30
    assert tally.kinds["mutated"] >= 150
    # every valid MO was answered and acknowledged, and delivered exactly once
    assert tally.acked == set(tally.valid_sent)
    assert {t: n for t, n in delivered.items() if t.startswith("VALID")} == dict.fromkeys(
        tally.valid_sent, 1
    )
    assert set(tally.valid_status) <= {P.ESME_ROK, P.ESME_RX_T_APPN}
    for text in tally.flood_acked:  # a flood that was acknowledged is delivered too
        assert delivered[text] == 1
    # each absurd length ended its session, and the driver bound again every time
    assert tally.absurd_open == 0
    assert tally.absurd_closed == tally.kinds["absurd"]
    assert peer.connections >= tally.kinds["absurd"] + 1
    assert tally.generic_nacks > 0
    assert peak < PEAK_BOUND, peak


async def test_enquire_link_fires_at_an_inexact_float_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    interval = 5.0
    t = 1.0
    while not (t + interval) - t < interval:  # a time whose deadline rounds short
        t += 0.001
    links: list[float] = []

    async def script(stream: trio.SocketStream, peer: RawPeer) -> None:
        framer = P.Framer()
        await accept_bind(stream, peer, framer)
        await trio.sleep_until(t)
        await stream.send_all(deliver_sm(2, "last word at t"))
        while (pdu := await peer.read_pdu(stream, framer)) is not None:
            if not pdu.is_response:
                links.append(trio.current_time())
                await stream.send_all(P.encode(P.response_for(pdu)))

    async def consume(pdu: P.Pdu, bind: SmppBind) -> int:
        return P.ESME_ROK

    peer = RawPeer(script)
    settings = BindSettings(
        carrier="sim",
        host="127.0.0.1",
        port=0,
        system_id="gw",
        password="pw",
        enquire_link=interval,
        response_timeout=2.0,
    )
    async with real_time_limit(3), trio.open_nursery() as nursery:
        port = await nursery.start(peer.serve)
        bind = SmppBind(attrs.evolve(settings, port=port), consume)
        nursery.start_soon(bind.run)
        await wait_until(lambda: len(links) >= 2)
        nursery.cancel_scope.cancel()
    assert peer.connections == 1
    assert links[0] - t == pytest.approx(interval, abs=0.01)  # idle 5 s after the deliver_sm
