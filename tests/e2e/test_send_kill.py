"""The send API loses nothing across a SIGKILL between its 202 and the submit_sm.

The daemon runs as a real process whose carrier is down: the API answers 202 (the message
and its submit job are on disk), the daemon is SIGKILLed before it could submit, the SMSC
comes up, a new daemon starts on the same store, and every message reaches the SMSC.
"""

from __future__ import annotations

import signal
import textwrap
from pathlib import Path

import httpx
import pytest
import trio

from gatewayd.smpp.simulator import Simulator, SimulatorSettings
from tests.e2e.helpers import free_port, start_daemon

pytestmark = pytest.mark.slow

TOKEN = "send-token-0123456789"


async def wait_healthy(client: httpx.AsyncClient) -> None:
    while True:
        try:
            if (await client.get("/healthz")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        await trio.sleep(0.05)


async def test_sigkill_between_202_and_submit_loses_nothing(tmp_path: Path) -> None:
    smsc_port, api_port = free_port(), free_port()
    config = tmp_path / "gatewayd.yaml"
    config.write_text(
        textwrap.dedent(
            f"""\
            store: ./gw.db
            carriers:
              sim:
                host: 127.0.0.1
                port: {smsc_port}
                system_id: gw
                password: pw
                reconnect: {{min: 100ms, max: 300ms}}
            api:
              listen: 127.0.0.1:{api_port}
              tokens: [{TOKEN}]
            """
        ),
        encoding="utf-8",
    )
    texts = [f"queued before the kill {i}" for i in range(5)] + ["ünïcödé 👋 " * 20]
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}", headers=headers) as c:
        with trio.fail_after(60):
            proc = await start_daemon(config)
            try:
                await wait_healthy(c)
                ids = []
                parts = 0
                for text in texts:
                    resp = await c.post(
                        "/v1/messages", json={"from": "12345", "to": "447700900999", "text": text}
                    )
                    assert resp.status_code == 202, resp.text
                    ids.append(resp.json()["id"])
                    parts += resp.json()["parts"]
                bad = await c.post("/v1/messages", json={"to": "", "text": 5})
                assert bad.status_code == 400
                assert len(bad.json()["problems"]) >= 2
            finally:
                proc.send_signal(signal.SIGKILL)
                await proc.wait()

            # The SMSC comes up only now: nothing can have been submitted before the kill.
            sim = Simulator(
                SimulatorSettings(host="127.0.0.1", port=smsc_port, password="pw", dlr=False)
            )
            async with trio.open_nursery() as nursery:
                await nursery.start(sim.serve)
                proc = await start_daemon(config)
                try:
                    await wait_healthy(c)
                    assert parts > 6  # the unicode text is several UCS-2 parts
                    while len(sim.submits) < parts:
                        await trio.sleep(0.05)
                    for message_id in ids:
                        while (await c.get(f"/v1/messages/{message_id}")).json().get(
                            "status"
                        ) != "submitted":
                            await trio.sleep(0.05)
                finally:
                    proc.send_signal(signal.SIGTERM)
                    assert await proc.wait() == 0
                nursery.cancel_scope.cancel()
    assert len(sim.submits) == parts  # each part exactly once
    singles = sorted(
        p.get_bytes("short_message") for p in sim.submits if not p.get_int("esm_class")
    )
    assert singles == sorted(t.encode() for t in texts[:5])
    assert {p.get_bytes("destination_addr") for p in sim.submits} == {b"447700900999"}
