"""Carrier faults, in process under the autojump clock: the daemon against a simulator or a
scripted SMSC peer, a real store (inline) and a real webhook receiver.

Each scenario counts what the SMSC saw acknowledged and what the receiver got: every MO
exactly once.
"""

from __future__ import annotations

import collections
import random
from pathlib import Path
from typing import Any

import trio
import trio.testing

from gatewayd.smpp import pdu as P
from gatewayd.smpp.driver import BindSettings, BindState, SmppBind
from gatewayd.smpp.simulator import Simulator, SimulatorSettings
from gatewayd.store import PersistItem, PersistResult, SqliteStore
from gatewayd.webhook_receiver import WebhookReceiver, open_webhook_receiver
from tests.faults.harness import (
    await_response,
    carrier_yaml,
    config_yaml,
    daemon_running,
    deliver_sm,
    paced,
    pass_time,
    reset,
    serve_requests,
    wait_until,
)
from tests.smpp.peers import RawPeer, accept_bind

DESTINATIONS = """\
destinations:
  crm:
    type: url
    url: {url}/crm
    retry: {{attempts: 5, interval: 10s}}
routes:
  a2p: crm
drain_grace: 1s
"""


def rest(rx: WebhookReceiver) -> str:
    return DESTINATIONS.format(url=rx.url)


def texts(rx: WebhookReceiver) -> collections.Counter[str]:
    return collections.Counter(r.json()["text"] for r in rx.requests)


async def event_count(store: SqliteStore) -> int:
    return (await store.stats()).events


class HoldingStore(SqliteStore):
    """A real store whose persist can be held before or after its commit (a slow disk).

    ``plan`` says, per persist call in order, "pass", "before" (held, then commit) or
    "after" (commit, then held: durable but not yet acknowledged).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.plan: list[str] = []
        self.held = 0
        self.gate = trio.Event()

    async def persist(self, item: PersistItem) -> PersistResult:
        mode = self.plan.pop(0) if self.plan else "pass"
        if mode == "before":
            self.held += 1
            await self.gate.wait()
        result = await super().persist(item)
        if mode == "after":
            self.held += 1
            await self.gate.wait()
        return result


async def test_connection_reset_mid_window_resent_and_delivered_once(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    sim = Simulator(SimulatorSettings(port=0, password="pw", mo=10, window=10, resend_delay=2.0))
    async with open_webhook_receiver() as rx, trio.open_nursery() as nursery:
        port = await nursery.start(sim.serve)
        text = config_yaml(
            carrier_yaml(port, window="10", reconnect="{min: 1s, max: 2s}"), rest(rx)
        )
        async with daemon_running(tmp_path, text, store_factory=HoldingStore) as run:
            store = run.store
            assert isinstance(store, HoldingStore)
            # 3 answered; 3 committed but unanswered; 4 not yet committed
            store.plan = ["pass"] * 3 + ["after"] * 3 + ["before"] * 4
            with trio.fail_after(60):
                await wait_until(lambda: store.held == 7)
                # The daemon answered exactly the 3 it made durable, nothing it holds...
                assert run.daemon.acks == {P.ESME_ROK: 3}
                # ...and the SMSC must have read those 3 deliver_sm_resp before the reset: they
                # cross a real socket to the simulator's reader, so wait for them instead of
                # asserting at once (one still in flight would be counted lost and resent).
                await wait_until(lambda: len(sim.acked) >= 3)
                assert len(sim.acked) == 3
                (conn,) = sim.receivers()
                reset(conn.runner.stream)  # type: ignore[arg-type]
                conn.runner.hang_up()  # the SMSC's side of the window is lost: RST
                bind = run.daemon.binds["sim"][0]
                await wait_until(lambda: bind.state is not BindState.BOUND)
                store.gate.set()  # the disk is fast again
                # polled, not Event waits: the clock must not leap (see pass_time)
                await wait_until(sim.mo_done.is_set)
                await wait_until(lambda: len(rx.requests) >= 10)
            await pass_time(30)  # nothing more arrives
            assert await event_count(store) == 10
            assert run.daemon.duplicates == 3  # the committed-but-unanswered ones
        nursery.cancel_scope.cancel()
    assert texts(rx) == collections.Counter(f"TEXT {i}" for i in range(1, 11))
    lost = [d for d in sim.deliveries if d.status is None]
    assert len(lost) == 7  # the reset took 7 unanswered deliver_sm with it
    assert sorted(sim.acked.values()) == [1] * 3 + [2] * 7  # resent once on the next bind
    assert sim.binds == [("gw", "transceiver", P.ESME_ROK)] * 2


async def test_stop_cut_short_while_the_smsc_sits_on_unbind_ends_cleanly(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A graceful stop's unbind is out, the SMSC never answers it, and the owner's deadline
    (the daemon's drain) cancels the bind meanwhile: it must end quietly, without a second
    unbind (the session refuses one: a LocalProtocolError crashed the daemon's stop)."""
    hung_up: list[float] = []

    async def script(stream: trio.SocketStream, peer: RawPeer) -> None:
        framer = P.Framer()
        await accept_bind(stream, peer, framer)
        while (pdu := await peer.read_pdu(stream, framer)) is not None:
            if not pdu.is_response and pdu.command != "unbind":
                await stream.send_all(P.encode(P.response_for(pdu)))
        hung_up.append(trio.current_time())

    peer = RawPeer(script)
    async with paced(), trio.open_nursery() as outer:
        port = await outer.start(peer.serve)
        settings = BindSettings(
            carrier="sim", host="127.0.0.1", port=port, system_id="gw", password="pw"
        )
        bind = SmppBind(settings)
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(bind.run)
                await wait_until(lambda: bind.state is BindState.BOUND)
                bind.stop()
                # the unbind is out once the SMSC has read it (it crosses a real socket)
                await wait_until(lambda: len(peer.received) >= 2)
                assert bind.state is BindState.UNBINDING
                await pass_time(1)  # no unbind_resp comes
                cancelled_at = trio.current_time()
                nursery.cancel_scope.cancel()
            took = trio.current_time() - cancelled_at
            # the SMSC has read all the ESME sent (a second unbind would be in received)
            await wait_until(lambda: bool(hung_up))
        outer.cancel_scope.cancel()
    assert bind.state is BindState.STOPPED
    assert [p.command for p in peer.received] == ["bind_transceiver", "unbind"]
    assert took <= settings.unbind_timeout + 1.0  # waited for the first unbind, bounded


async def test_half_open_smsc_detected_by_enquire_link_and_rebound(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    silent_from: list[float] = []
    unanswered: list[str] = []

    async def script(stream: trio.SocketStream, peer: RawPeer) -> None:
        framer = P.Framer()
        n = peer.connections
        await accept_bind(stream, peer, framer)
        if n == 1:
            for seq, body in enumerate(("BEFORE 1", "BEFORE 2"), start=2):
                await stream.send_all(deliver_sm(seq, body))
                resp = await await_response(stream, peer, framer, seq)
                assert resp is not None
                assert resp.status == P.ESME_ROK
            silent_from.append(trio.current_time())
            # half-open: the TCP connection stays up, the SMSC never answers again
            while (pdu := await peer.read_pdu(stream, framer)) is not None:
                unanswered.append(pdu.command)
        else:
            for seq, body in enumerate(("AFTER 1", "AFTER 2", "AFTER 3"), start=2):
                await stream.send_all(deliver_sm(seq, body))
                resp = await await_response(stream, peer, framer, seq)
                assert resp is not None
                assert resp.status == P.ESME_ROK
            await serve_requests(stream, peer, framer)

    peer = RawPeer(script)
    async with open_webhook_receiver() as rx, trio.open_nursery() as nursery:
        port = await nursery.start(peer.serve)
        carrier = carrier_yaml(
            port, enquire_link="10s", response_timeout="5s", reconnect="{min: 1s, max: 2s}"
        )
        async with daemon_running(tmp_path, config_yaml(carrier, rest(rx))) as run:
            with trio.fail_after(120):
                await wait_until(lambda: peer.connections == 2)
                rebound_after = peer.connected_at[1] - silent_from[0]
                await rx.wait_for(5)
            await trio.sleep(60)  # the new bind stays up (enquire_link answered)
            bind = run.daemon.binds["sim"][0]
            assert bind.state is BindState.BOUND
            assert peer.connections == 2
            assert await event_count(run.store) == 5
        nursery.cancel_scope.cancel()
    # one enquire_link after 10 s idle, no answer within 5 s, then 1-2 s of backoff
    assert 15.0 <= rebound_after <= 17.5, rebound_after
    assert unanswered == ["enquire_link"]
    assert texts(rx) == collections.Counter(
        ["BEFORE 1", "BEFORE 2", "AFTER 1", "AFTER 2", "AFTER 3"]
    )


async def test_bind_errors_then_ok_binds_and_loses_nothing(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    rejected = 3
    queued = [f"QUEUED {i}" for i in range(1, 8)]

    async def script(stream: trio.SocketStream, peer: RawPeer) -> None:
        framer = P.Framer()
        if peer.connections <= rejected:
            bind = await peer.read_pdu(stream, framer)
            assert bind is not None
            await stream.send_all(P.encode(P.response_for(bind, P.ESME_RBINDFAIL)))
            while await peer.read_pdu(stream, framer) is not None:
                pass  # the ESME must hang up (or unbind) by itself
            return
        await accept_bind(stream, peer, framer)
        for seq, body in enumerate(queued, start=2):
            await stream.send_all(deliver_sm(seq, body))
            resp = await await_response(stream, peer, framer, seq)
            assert resp is not None
            assert resp.status == P.ESME_ROK
        await serve_requests(stream, peer, framer)

    peer = RawPeer(script)
    async with open_webhook_receiver() as rx, trio.open_nursery() as nursery:
        port = await nursery.start(peer.serve)
        carrier = carrier_yaml(port, reconnect="{min: 1s, max: 8s}")
        async with daemon_running(tmp_path, config_yaml(carrier, rest(rx))) as run:
            with trio.fail_after(120):
                await rx.wait_for(len(queued))
            await trio.sleep(30)
            bind = run.daemon.binds["sim"][0]
            assert bind.state is BindState.BOUND
            assert bind.binds_rejected == rejected
            assert await event_count(run.store) == len(queued)
        nursery.cancel_scope.cancel()
    assert peer.connections == rejected + 1
    gaps = [b - a for a, b in zip(peer.connected_at, peer.connected_at[1:], strict=False)]
    assert all(1.0 <= g <= 8.5 for g in gaps), gaps  # backoff, not a hot loop
    assert [p.command for p in peer.received[: rejected + 1]] == ["bind_transceiver"] * (
        rejected + 1
    )
    assert texts(rx) == collections.Counter(queued)


async def test_resent_deliver_sm_with_new_sequence_delivered_once(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    statuses: list[tuple[int, str, int]] = []  # (connection, text, status)

    async def send(
        stream: trio.SocketStream, peer: RawPeer, framer: P.Framer, seq: int, body: str
    ) -> None:
        await stream.send_all(deliver_sm(seq, body, source="447700900042"))
        resp = await await_response(stream, peer, framer, seq)
        assert resp is not None
        statuses.append((peer.connections, body, resp.status))

    async def script(stream: trio.SocketStream, peer: RawPeer) -> None:
        framer = P.Framer()
        await accept_bind(stream, peer, framer)
        if peer.connections == 1:
            # A and B answered, but pretend the resps were lost: resend A (new sequence)
            # on the same session, then drop the connection before resending B.
            await send(stream, peer, framer, 2, "resend A")
            await send(stream, peer, framer, 3, "resend B")
            await trio.sleep(rng.uniform(1, 10))  # the SMSC's response timer
            await send(stream, peer, framer, 4, "resend A")
            return
        # a new session: sequence numbers start again
        await send(stream, peer, framer, 2, "resend B")
        await send(stream, peer, framer, 3, "resend A")
        await send(stream, peer, framer, 4, "fresh C")
        await serve_requests(stream, peer, framer)

    rng = random.Random(7)
    peer = RawPeer(script)
    async with open_webhook_receiver() as rx, trio.open_nursery() as nursery:
        port = await nursery.start(peer.serve)
        carrier = carrier_yaml(port, reconnect="{min: 1s, max: 2s}")
        async with daemon_running(tmp_path, config_yaml(carrier, rest(rx))) as run:
            with trio.fail_after(60):
                await rx.wait_for(3)
                # the SMSC reads its last deliver_sm_resp after the webhook may have gone
                await wait_until(lambda: len(statuses) >= 6)
            await trio.sleep(30)
            assert run.daemon.duplicates == 3
            assert await event_count(run.store) == 3
        nursery.cancel_scope.cancel()
    assert [s for _, _, s in statuses] == [P.ESME_ROK] * 6  # every resend acknowledged
    assert texts(rx) == collections.Counter(["resend A", "resend B", "fresh C"])
