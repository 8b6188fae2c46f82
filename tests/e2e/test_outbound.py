"""Outbound end to end: the daemon submits to the SMSC simulator, whose receipts come back
correlated to the message they report on and reach its status URL or destination."""

from __future__ import annotations

import contextlib
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import trio
import trio.testing

from gatewayd.app import Daemon
from gatewayd.config import loads_config
from gatewayd.outbound import SUBMIT_PREFIX, SendRequest
from gatewayd.smpp import pdu as P
from gatewayd.smpp.simulator import Simulator, SimulatorSettings
from gatewayd.store import SqliteStore
from gatewayd.webhook_receiver import WebhookReceiver, open_webhook_receiver
from tests.e2e.helpers import mo_fields

MSISDN = "447700900999"


def config_text(sim_port: int, rx_url: str) -> str:
    return textwrap.dedent(
        f"""\
        store: ./gw.db
        carriers:
          sim:
            host: 127.0.0.1
            port: {sim_port}
            system_id: gw
            password: pw
            sessions: 2
            throughput: 20/s
            reconnect: {{min: 1s, max: 2s}}
        api:
          listen: 127.0.0.1:0
          status_url_allow: [127.0.0.0/8]
        destinations:
          relay:
            type: forward
            to: "{{{{to}}}}"
            carrier: sim
            retry: {{attempts: 5, interval: 10s}}
          status:
            type: url
            url: "{rx_url}/status?id={{{{message_id}}}}&status={{{{status}}}}\\
              &uuid={{{{message_uuid}}}}&part={{{{part}}}}"
            method: GET
          hooks:
            type: url
            url: {rx_url}/hooks
        routes:
          a2p: hooks
          p2p: relay
          delivery: status
        """
    )


@attrs.define
class Run:
    sim: Simulator
    daemon: Daemon
    store: SqliteStore


@contextlib.asynccontextmanager
async def daemon_run(
    tmp_path: Path, rx: WebhookReceiver, *, sim_password: str = "pw", graceful: bool = True
) -> AsyncIterator[Run]:
    """A simulator and a daemon on the store in ``tmp_path`` (which outlives the run)."""
    sim = Simulator(SimulatorSettings(port=0, password=sim_password, dlr_delay=1.0))
    async with trio.open_nursery() as nursery:
        port = await nursery.start(sim.serve)
        config = loads_config(config_text(port, rx.url), base_dir=tmp_path)

        def wall() -> float:  # wall time that follows trio's (autojump) clock
            return BASE + trio.current_time()

        store = SqliteStore(
            config.store, dedup_window=config.dedup_window, use_thread=False, wall_clock=wall
        )
        daemon = Daemon(config, store=store, wall_clock=wall)
        await nursery.start(daemon.run)
        try:
            yield Run(sim=sim, daemon=daemon, store=store)
        finally:
            if graceful:
                daemon.stop()
                with trio.move_on_after(60):
                    await daemon.stopped.wait()
            # else: a crash. Everything is cancelled; only what was committed survives.
            nursery.cancel_scope.cancel()


BASE = time.time()


async def wait_until_bound(daemon: Daemon) -> None:
    while not any(b.is_bound for b in daemon.binds.get("sim", [])):
        await trio.sleep(0.1)


async def test_p2p_mo_forwarded_to_its_msisdn_and_receipt_reaches_status(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with open_webhook_receiver() as rx, daemon_run(tmp_path, rx) as run:
        await wait_until_bound(run.daemon)
        fields = mo_fields(b"hello relay", source="447700900001", to=MSISDN)
        assert await run.sim.deliver("mo", fields) == P.ESME_ROK
        (req,) = await rx.wait_for(1)
        await trio.sleep(5)
        assert len(rx.requests) == 1  # the receipt, once; nothing else
        (submit,) = run.sim.submits
        uuid = req.query_params()["uuid"][0]
        view = await run.daemon.outbound.get(uuid)
    assert submit.get_bytes("destination_addr") == MSISDN.encode()
    assert submit.get_bytes("source_addr") == b"447700900001"  # the original sender
    assert submit.get_int("registered_delivery") == 1
    assert submit.get_bytes("short_message") == b"hello relay"
    assert req.path == "/status"
    q = req.query_params()
    # the simulator answered submit_sm with 00000001 and its receipt repeats that id
    assert (q["id"], q["status"], q["part"]) == (["00000001"], ["DELIVRD"], ["1"])
    assert view["status"] == "delivered"
    assert view["to"] == MSISDN
    assert [p["carrier_message_id"] for p in view["parts"]] == ["00000001"]
    assert (run.daemon.outbound.matched_receipts, run.daemon.outbound.unmatched_receipts) == (1, 0)


async def test_send_with_status_url_multipart_receipts_and_delivery(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    text = "Hello {world} " * 20  # 280 characters, 40 escapes: three GSM parts
    async with open_webhook_receiver() as rx, daemon_run(tmp_path, rx) as run:
        await wait_until_bound(run.daemon)
        outbound = run.daemon.outbound
        sent = await outbound.send(
            SendRequest(
                from_="ACME",
                to="447700900123",
                text=text,
                status_url=f"{rx.url}/cb?k=1",
                custom={"ticket": "T-1"},
            )
        )
        other = await outbound.send(
            SendRequest(from_="447700900001", to="447700900124", text="é", delivery="hooks")
        )
        assert sent.parts == 3
        reqs = await rx.wait_for(4)
        await trio.sleep(5)
        assert len(rx.requests) == 4
        view = await outbound.get(sent.message_id)
        other_view = await outbound.get(other.message_id)
    submits = run.sim.submits
    assert len(submits) == 4
    long = [s for s in submits if s.get_bytes("destination_addr") == b"447700900123"]
    assert [s.get_int("esm_class") for s in long] == [0x40] * 3
    assert [s.get_bytes("short_message")[5] for s in long] == [1, 2, 3]
    assert {s.get_bytes("source_addr") for s in long} == {b"ACME"}
    assert {s.get_int("source_addr_ton") for s in long} == {5}  # alphanumeric
    callbacks = sorted((r for r in reqs if r.path == "/cb"), key=lambda r: r.json()["part"])
    assert len(callbacks) == 3  # one receipt push per part
    for i, cb in enumerate(callbacks, 1):
        body = cb.json()
        assert cb.method == "POST"
        assert cb.query_params() == {"k": ["1"]}
        assert body["type"] == "dlr"
        assert body["status"] == "DELIVRD"
        assert body["message_uuid"] == sent.message_id
        # JSON bodies echo custom as the client sent it, and units/part as numbers (seed 003)
        assert body["custom"] == body["custom_ticket"] == {"ticket": "T-1"}
        assert (body["units"], body["part"]) == (3, i)
        assert body["submit_time"].endswith("Z")
        assert body["deliv_time"].endswith("Z")
    assert view["status"] == "delivered"
    assert [p["status"] for p in view["parts"]] == ["DELIVRD"] * 3
    assert view["custom"] == {"ticket": "T-1"}
    (hook,) = [r for r in reqs if r.path == "/hooks"]  # its `delivery` destination
    assert hook.json()["message_uuid"] == other.message_id
    assert hook.json()["units"] == 1
    assert other_view["status"] == "delivered"
    (ucs2,) = [s for s in submits if s.get_bytes("destination_addr") == b"447700900124"]
    assert ucs2.get_int("data_coding") == 0  # é is in GSM 03.38
    assert ucs2.get_bytes("short_message") == bytes([0x05])


async def test_restart_between_send_and_submit_loses_nothing(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with open_webhook_receiver() as rx:
        # Run 1: the carrier refuses our binds; the message is queued, then the daemon dies.
        async with daemon_run(tmp_path, rx, sim_password="other", graceful=False) as run:
            sent = await run.daemon.outbound.send(
                SendRequest(
                    from_="ACME", to="447700900123", text="survive", status_url=f"{rx.url}/cb"
                )
            )
            await trio.sleep(3)
            assert run.sim.submits == []
            assert (await run.daemon.outbound.get(sent.message_id))["status"] == "queued"
        # Run 2: a healthy carrier, a new daemon on the same store file.
        async with daemon_run(tmp_path, rx) as run:
            (cb,) = await rx.wait_for(1)
            view = await run.daemon.outbound.get(sent.message_id)
            record = await run.store.get_event(sent.message_id)
    (submit,) = run.sim.submits
    assert submit.get_bytes("short_message") == b"survive"
    assert cb.json()["message_uuid"] == sent.message_id
    assert view["status"] == "delivered"
    assert [j.destination for j in record.jobs] == [SUBMIT_PREFIX + "sim"]
    assert record.jobs[0].state.value == "delivered"
