"""Crash safety: SIGKILL the daemon mid-stream; every MO it acknowledged is delivered.

The daemon runs as a real process (``python -m gatewayd run``) against the simulator and a
real HTTP receiver in this test process; real time, with deadlines on every wait.
"""

from __future__ import annotations

import collections
import json
import signal
import textwrap
from pathlib import Path

import pytest
import trio

from gatewayd.smpp.simulator import Simulator, SimulatorSettings
from gatewayd.webhook_receiver import ReceivedRequest, Reply, open_webhook_receiver
from tests.e2e.helpers import start_daemon

pytestmark = pytest.mark.slow


def write_config(path: Path, sim_port: int, rx_url: str) -> None:
    path.write_text(
        textwrap.dedent(
            f"""\
            store: ./gw.db
            carriers:
              sim:
                host: 127.0.0.1
                port: {sim_port}
                system_id: gw
                password: pw
                window: 10
                reconnect: {{min: 100ms, max: 500ms}}
            destinations:
              crm:
                type: url
                url: {rx_url}/crm
                retry: {{attempts: 1000, interval: 200ms}}
            routes:
              a2p: crm
            drain_grace: 1s
            api: {{listen: "127.0.0.1:0"}}
            """
        ),
        encoding="utf-8",
    )


async def test_sigkill_mid_stream_loses_nothing_acknowledged(tmp_path: Path) -> None:
    n = 400
    sim = Simulator(
        SimulatorSettings(port=0, password="pw", mo=n, window=10, rate=400, resend_delay=0.3)
    )
    healthy = False
    delivered: collections.Counter[str] = collections.Counter()

    async def answer(req: ReceivedRequest) -> Reply:
        if not healthy:
            return Reply(status=503)
        delivered[json.loads(req.body)["text"]] += 1
        return Reply(status=200)

    async with open_webhook_receiver() as rx, trio.open_nursery() as nursery:
        rx.respond_with(answer)
        port = await nursery.start(sim.serve)
        config = tmp_path / "gatewayd.yaml"
        write_config(config, port, rx.url)
        with trio.fail_after(120):
            proc = await start_daemon(config)
            kills = 0
            for threshold in (60, 150, 260):
                while len(sim.acked) < threshold:
                    await trio.sleep(0.01)
                proc.send_signal(signal.SIGKILL)
                await proc.wait()
                kills += 1
                proc = await start_daemon(config)
            await sim.mo_done.wait()
            acked = set(sim.acked)
            assert len(acked) == n  # the simulator resent what was never acknowledged
            healthy = True
            while len(delivered) < n:
                await trio.sleep(0.05)
            await trio.sleep(1.0)  # anything still to come would be a duplicate
            proc.send_signal(signal.SIGTERM)
            assert await proc.wait() == 0
        nursery.cancel_scope.cancel()

    assert kills == 3
    assert set(delivered) == acked
    # The receiver answered 503 until every kill was over: nothing had been delivered when
    # the daemon died, so there is nothing it could deliver twice.
    assert max(delivered.values()) == 1
