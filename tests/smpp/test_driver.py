"""The trio driver against real TCP on loopback: the simulator and scripted peers."""

from __future__ import annotations

import random
import struct
import tracemalloc
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import trio
import trio.testing

from gatewayd.smpp import pdu as P
from gatewayd.smpp.driver import BindSettings, BindState, SmppBind, backoff_delay
from gatewayd.smpp.simulator import Simulator, SimulatorSettings
from tests.smpp.peers import RawPeer, accept_bind
from tests.smtp_server import make_tls_files


def settings(port: int, **kw: object) -> BindSettings:
    base: dict[str, object] = {
        "carrier": "sim",
        "host": "127.0.0.1",
        "port": port,
        "system_id": "gw",
        "password": "secret",
        "reconnect_min": 1.0,
        "reconnect_max": 60.0,
    }
    base.update(kw)
    return BindSettings(**base)  # type: ignore[arg-type]


async def wait_state(bind: SmppBind, state: BindState) -> None:
    while bind.state is not state:
        await trio.sleep(0.01)


@pytest.mark.parametrize("kind", ["receiver", "transmitter", "transceiver"])
async def test_binds_each_type(kind: str, autojump_clock: trio.testing.MockClock) -> None:
    sim = Simulator(SimulatorSettings(port=0, password="secret"))
    async with trio.open_nursery() as nursery:
        port = await nursery.start(sim.serve)
        bind = SmppBind(settings(port, bind=kind))
        nursery.start_soon(bind.run)
        await wait_state(bind, BindState.BOUND)
        assert sim.binds == [("gw", kind, P.ESME_ROK)]
        assert bind.can_transmit is (kind != "receiver")
        nursery.cancel_scope.cancel()


async def test_mos_delivered_and_window_respected(autojump_clock: trio.testing.MockClock) -> None:
    sim = Simulator(SimulatorSettings(port=0, mo=40, window=10))
    seen: list[bytes] = []
    in_consumer = 0
    peak = 0

    async def consume(pdu: P.Pdu, bind: SmppBind) -> int:
        nonlocal in_consumer, peak
        in_consumer += 1
        peak = max(peak, in_consumer)
        await trio.sleep(0.5)  # a slow store: back-pressure must hold the window
        in_consumer -= 1
        seen.append(pdu.get_bytes("short_message"))
        return P.ESME_ROK

    async with trio.open_nursery() as nursery:
        port = await nursery.start(sim.serve)
        bind = SmppBind(settings(port, window=4), consume)
        nursery.start_soon(bind.run)
        await sim.mo_done.wait()
        nursery.cancel_scope.cancel()
    assert sorted(seen) == sorted(f"TEXT {i}".encode() for i in range(1, 41))
    assert len(sim.acked) == 40
    assert peak <= 4  # never more deliver_sm in the consumer than our window


async def test_consumer_error_status_is_sent_and_sim_resends(
    autojump_clock: trio.testing.MockClock,
) -> None:
    sim = Simulator(SimulatorSettings(port=0, mo=3, resend_delay=2.0))
    calls: dict[bytes, int] = {}

    async def consume(pdu: P.Pdu, bind: SmppBind) -> int:
        text = pdu.get_bytes("short_message")
        calls[text] = calls.get(text, 0) + 1
        return P.ESME_RX_T_APPN if calls[text] == 1 else P.ESME_ROK

    async with trio.open_nursery() as nursery:
        port = await nursery.start(sim.serve)
        nursery.start_soon(SmppBind(settings(port), consume).run)
        await sim.mo_done.wait()
        nursery.cancel_scope.cancel()
    assert all(n == 2 for n in calls.values())
    assert sim.acked == {"TEXT 1": 2, "TEXT 2": 2, "TEXT 3": 2}


async def test_idle_bind_kept_alive_by_enquire_link(autojump_clock: trio.testing.MockClock) -> None:
    async def script(stream: trio.SocketStream, peer: RawPeer) -> None:
        framer = P.Framer()
        await accept_bind(stream, peer, framer)
        while (req := await peer.read_pdu(stream, framer)) is not None:
            await stream.send_all(P.encode(P.response_for(req)))

    peer = RawPeer(script)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(peer.serve)
        bind = SmppBind(settings(port, enquire_link=5.0, response_timeout=2.0))
        nursery.start_soon(bind.run)
        await wait_state(bind, BindState.BOUND)
        await trio.sleep(60)
        assert bind.state is BindState.BOUND
        assert peer.connections == 1
        links = [p for p in peer.received if p.command == "enquire_link"]
        assert 10 <= len(links) <= 13
        nursery.cancel_scope.cancel()


async def test_silent_peer_detected_and_rebound(autojump_clock: trio.testing.MockClock) -> None:
    async def script(stream: trio.SocketStream, peer: RawPeer) -> None:
        framer = P.Framer()
        await accept_bind(stream, peer, framer)
        # half-open: read everything, answer nothing
        while await peer.read_pdu(stream, framer) is not None:
            pass

    peer = RawPeer(script)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(peer.serve)
        bind = SmppBind(settings(port, enquire_link=10.0, response_timeout=5.0, reconnect_max=2.0))
        nursery.start_soon(bind.run)
        await wait_state(bind, BindState.BOUND)
        t0 = trio.current_time()
        while peer.connections < 2:
            await trio.sleep(0.1)
        # detected after one enquire_link interval plus its response timeout, then backoff
        assert 15.0 <= trio.current_time() - t0 <= 15.0 + 2.0 + 0.5
        assert "enquire_link" in bind.last_error or bind.reconnects >= 1
        nursery.cancel_scope.cancel()


async def test_reset_connection_reconnects_with_backoff(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def script(stream: trio.SocketStream, peer: RawPeer) -> None:
        framer = P.Framer()
        await accept_bind(stream, peer, framer)
        # reset right after the bind
        stream.socket.setsockopt(
            trio.socket.SOL_SOCKET, trio.socket.SO_LINGER, struct.pack("ii", 1, 0)
        )

    peer = RawPeer(script)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(peer.serve)
        bind = SmppBind(settings(port, reconnect_min=1.0, reconnect_max=8.0), rng=random.Random(1))
        nursery.start_soon(bind.run)
        while peer.connections < 6:
            await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    gaps = [b - a for a, b in zip(peer.connected_at, peer.connected_at[1:], strict=False)]
    assert all(1.0 <= g <= 8.5 for g in gaps), gaps
    assert bind.reconnects >= 5


async def test_wrong_password_reported_and_backed_off(
    autojump_clock: trio.testing.MockClock,
) -> None:
    sim = Simulator(SimulatorSettings(port=0, password="right"))
    async with trio.open_nursery() as nursery:
        port = await nursery.start(sim.serve)
        bind = SmppBind(settings(port, password="wrong", reconnect_min=1.0, reconnect_max=30.0))
        nursery.start_soon(bind.run)
        while len(sim.binds) < 1:
            await trio.sleep(0.01)
        t0 = trio.current_time()
        while len(sim.binds) < 2:
            await trio.sleep(0.01)
        waited = trio.current_time() - t0
        nursery.cancel_scope.cancel()
    assert sim.binds[0] == ("gw", "transceiver", P.ESME_RINVPASWD)
    assert "ESME_RINVPASWD" in bind.last_error
    assert "wrong" not in bind.last_error  # never the secret
    assert waited >= 29.9  # the slow end of the backoff, not hammered


async def test_cancellation_unbinds_cleanly(autojump_clock: trio.testing.MockClock) -> None:
    async def script(stream: trio.SocketStream, peer: RawPeer) -> None:
        framer = P.Framer()
        await accept_bind(stream, peer, framer)
        while (req := await peer.read_pdu(stream, framer)) is not None:
            await stream.send_all(P.encode(P.response_for(req)))

    peer = RawPeer(script)
    async with trio.open_nursery() as outer:
        port = await outer.start(peer.serve)
        bind = SmppBind(settings(port))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(bind.run)
            await wait_state(bind, BindState.BOUND)
            nursery.cancel_scope.cancel()  # SIGTERM-style
        await trio.sleep(0.5)
        outer.cancel_scope.cancel()
    assert [p.command for p in peer.received][-1] == "unbind"
    assert bind.state is BindState.STOPPED


async def test_stop_unbinds_and_returns(autojump_clock: trio.testing.MockClock) -> None:
    sim = Simulator(SimulatorSettings(port=0))
    async with trio.open_nursery() as nursery:
        port = await nursery.start(sim.serve)
        bind = SmppBind(settings(port))
        done = trio.Event()

        async def run() -> None:
            await bind.run()
            done.set()

        nursery.start_soon(run)
        await wait_state(bind, BindState.BOUND)
        bind.stop()
        with trio.fail_after(6):
            await done.wait()
        nursery.cancel_scope.cancel()
    assert bind.state is BindState.STOPPED


async def test_huge_command_length_closes_without_allocating(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def script(stream: trio.SocketStream, peer: RawPeer) -> None:
        framer = P.Framer()
        await accept_bind(stream, peer, framer)
        await stream.send_all(struct.pack(">LLLL", 0xFFFFFFFF, P.DELIVER_SM, 0, 7))
        await peer.read_pdu(stream, framer)  # whatever comes back, then EOF

    peer = RawPeer(script)
    tracemalloc.start()
    try:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(peer.serve)
            bind = SmppBind(settings(port, reconnect_min=100.0, reconnect_max=100.0))
            nursery.start_soon(bind.run)
            while bind.state is not BindState.BACKOFF:
                await trio.sleep(0.01)
            _, peak = tracemalloc.get_traced_memory()
            nursery.cancel_scope.cancel()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 1024 * 1024
    assert "length" in bind.last_error.lower()


async def test_request_through_bind_gets_response(autojump_clock: trio.testing.MockClock) -> None:
    sim = Simulator(SimulatorSettings(port=0, dlr=False))
    async with trio.open_nursery() as nursery:
        port = await nursery.start(sim.serve)
        bind = SmppBind(settings(port, bind="transmitter"))
        nursery.start_soon(bind.run)
        await wait_state(bind, BindState.BOUND)
        resp = await bind.request(
            "submit_sm", source_addr="12345", destination_addr="447700900123", short_message=b"hi"
        )
        assert resp.status == P.ESME_ROK
        assert resp.get_bytes("message_id") == b"00000001"
        assert len(sim.submits) == 1
        nursery.cancel_scope.cancel()


def test_backoff_delay_bounds() -> None:
    rng = random.Random(0)
    for failures in range(20):
        d = backoff_delay(failures, 1.0, 60.0, rng)
        assert 1.0 <= d <= min(60.0, 2.0**failures)


async def test_tls_bind_verifies_the_smsc_certificate(tmp_path: Path) -> None:
    cert, key = make_tls_files(tmp_path, hostname="localhost")
    sim = Simulator(
        SimulatorSettings(port=0, tls_cert=str(cert), tls_key=str(key), host="127.0.0.1")
    )
    async with trio.open_nursery() as nursery:
        port = await nursery.start(sim.serve)
        trusted = SmppBind(settings(port, host="localhost", tls=True, tls_ca=str(cert)))
        untrusted = SmppBind(settings(port, host="localhost", tls=True, reconnect_min=50.0))
        nursery.start_soon(trusted.run)
        nursery.start_soon(untrusted.run)
        with trio.fail_after(10):
            await wait_state(trusted, BindState.BOUND)
            while not untrusted.last_error:
                await trio.sleep(0.01)
        assert untrusted.state is not BindState.BOUND
        assert "certificate" in untrusted.last_error.lower()
        assert len(sim.binds) == 1  # the unverified connection never got to bind
        nursery.cancel_scope.cancel()


async def test_batch_consumer_gets_reads_together_and_window_holds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    sim = Simulator(SimulatorSettings(port=0, mo=60, window=8))
    batches: list[int] = []
    seen: list[bytes] = []
    in_consumer = 0
    peak = 0

    async def consume_batch(
        pdus: Sequence[P.Pdu], bind: SmppBind, answer: Callable[[int, int], None]
    ) -> None:
        nonlocal in_consumer, peak
        in_consumer += len(pdus)
        peak = max(peak, in_consumer)
        batches.append(len(pdus))
        await trio.sleep(0.5)  # a slow commit: what arrives meanwhile forms the next batch
        for index, p in enumerate(pdus):
            in_consumer -= 1
            seen.append(p.get_bytes("short_message"))
            answer(index, P.ESME_ROK)

    async with trio.open_nursery() as nursery:
        port = await nursery.start(sim.serve)
        bind = SmppBind(settings(port, window=5), batch_consumer=consume_batch)
        nursery.start_soon(bind.run)
        await sim.mo_done.wait()
        nursery.cancel_scope.cancel()
    assert sorted(seen) == sorted(f"TEXT {i}".encode() for i in range(1, 61))
    assert len(sim.acked) == 60
    assert peak <= 5  # never more deliver_sm in the consumer than our window
    assert max(batches) > 1  # reads that carried several deliver_sm were answered together


async def test_batch_consumer_statuses_go_to_their_own_pdus(
    autojump_clock: trio.testing.MockClock,
) -> None:
    sim = Simulator(SimulatorSettings(port=0, mo=12, window=6, resend_delay=2.0))
    calls: dict[bytes, int] = {}

    async def consume_batch(
        pdus: Sequence[P.Pdu], bind: SmppBind, answer: Callable[[int, int], None]
    ) -> None:
        # answered in reverse order, with a pause between: each status goes to its own PDU
        for index in reversed(range(len(pdus))):
            await trio.sleep(0.1)
            text = pdus[index].get_bytes("short_message")
            calls[text] = calls.get(text, 0) + 1
            # odd-numbered MOs fail their first time only: the SMSC must resend just those
            odd = int(text.split()[1]) % 2 == 1
            answer(index, P.ESME_RX_T_APPN if odd and calls[text] == 1 else P.ESME_ROK)

    async with trio.open_nursery() as nursery:
        port = await nursery.start(sim.serve)
        nursery.start_soon(SmppBind(settings(port), batch_consumer=consume_batch).run)
        await sim.mo_done.wait()
        nursery.cancel_scope.cancel()
    assert calls == {f"TEXT {i}".encode(): 2 if i % 2 else 1 for i in range(1, 13)}
    assert sim.acked == {f"TEXT {i}": 2 if i % 2 else 1 for i in range(1, 13)}


async def test_failing_batch_consumer_answers_a_temporary_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    sim = Simulator(SimulatorSettings(port=0, mo=4, window=4, resend_delay=2.0))
    failed = False

    async def consume_batch(
        pdus: Sequence[P.Pdu], bind: SmppBind, answer: Callable[[int, int], None]
    ) -> None:
        nonlocal failed
        for index, p in enumerate(pdus):
            if p.get_bytes("short_message") == b"TEXT 2" and not failed:
                failed = True
                raise RuntimeError("a bug in the consumer")  # the rest stay unanswered
            answer(index, P.ESME_ROK)

    async with trio.open_nursery() as nursery:
        port = await nursery.start(sim.serve)
        nursery.start_soon(SmppBind(settings(port), batch_consumer=consume_batch).run)
        await sim.mo_done.wait()
        nursery.cancel_scope.cancel()
    # TEXT 2 and whatever followed it in its batch got ESME_RX_T_APPN and came again
    assert sorted(sim.acked) == [f"TEXT {i}" for i in range(1, 5)]
    assert sim.acked["TEXT 1"] == 1
    assert sim.acked["TEXT 2"] == 2


async def test_batch_answer_is_sent_before_a_slower_one_of_the_same_read(
    autojump_clock: trio.testing.MockClock,
) -> None:
    first_acked = trio.Event()
    batches: list[list[int]] = []
    resps: list[tuple[int, int]] = []

    def deliver(seq: int) -> bytes:
        return P.encode(P.make("deliver_sm", sequence=seq, short_message=f"M{seq}".encode()))

    async def script(stream: trio.SocketStream, peer: RawPeer) -> None:
        framer = P.Framer()
        await accept_bind(stream, peer, framer)
        await stream.send_all(deliver(2) + deliver(3))  # one write: one read, one batch
        while len(resps) < 2 and (resp := await peer.read_pdu(stream, framer)) is not None:
            if resp.command == "deliver_sm_resp":
                resps.append((resp.sequence, resp.status))
                first_acked.set()
        await trio.sleep_forever()

    async def consume_batch(
        pdus: Sequence[P.Pdu], bind: SmppBind, answer: Callable[[int, int], None]
    ) -> None:
        batches.append([p.sequence for p in pdus])
        for index, p in enumerate(pdus):
            if p.sequence == 2:
                answer(index, P.ESME_ROK)
        # the slow one is answered only once the peer has the other's resp
        await first_acked.wait()
        for index, p in enumerate(pdus):
            if p.sequence == 3:
                answer(index, P.ESME_RX_T_APPN)

    peer = RawPeer(script)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(peer.serve)
        nursery.start_soon(SmppBind(settings(port), batch_consumer=consume_batch).run)
        with trio.fail_after(30):
            while len(resps) < 2:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert batches == [[2, 3]]
    assert resps == [(2, P.ESME_ROK), (3, P.ESME_RX_T_APPN)]
