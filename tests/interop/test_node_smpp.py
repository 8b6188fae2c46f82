"""Interop with an independent SMPP implementation (node-smpp from the npm registry).

Skipped, with the reason, where node or the module is absent (.ci/run installs both).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import trio

from gatewayd.smpp import pdu as P
from gatewayd.smpp.driver import BindSettings, BindState, SmppBind
from gatewayd.smpp.simulator import Simulator, SimulatorSettings

HERE = Path(__file__).parent
NODE = shutil.which("node")

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(NODE is None, reason="node is not installed"),
    pytest.mark.skipif(
        not (HERE / "node_modules" / "smpp").is_dir(),
        reason="node-smpp not installed: npm install --prefix tests/interop",
    ),
]


async def _lines(proc: trio.Process) -> list[dict[str, object]]:
    assert proc.stdout is not None
    out = b""
    async for chunk in proc.stdout:
        out += chunk
    return [json.loads(line) for line in out.decode().splitlines() if line.strip()]


async def test_node_esme_receives_simulator_mos() -> None:
    sim = Simulator(SimulatorSettings(port=0, mo=5, text="SIM"))
    async with trio.open_nursery() as nursery:
        port = await nursery.start(sim.serve)
        with trio.fail_after(30):
            proc = await trio.lowlevel.open_process(
                [NODE or "node", str(HERE / "esme.js"), "127.0.0.1", str(port), "5"],
                stdout=subprocess.PIPE,
                cwd=HERE,
            )
            lines = await _lines(proc)
            assert await proc.wait() == 0, lines
            await sim.mo_done.wait()
        nursery.cancel_scope.cancel()
    assert lines[0] == {"bound": 0}
    texts = sorted(str(line["text"]) for line in lines[1:])
    assert texts == [f"SIM {i}" for i in range(1, 6)]
    assert all(line["to"] == "12345" for line in lines[1:])
    assert len(sim.acked) == 5


async def test_driver_binds_to_node_smsc() -> None:
    received: list[bytes] = []

    async def consume(pdu: P.Pdu, bind: SmppBind) -> int:
        received.append(pdu.get_bytes("short_message"))
        return P.ESME_ROK

    with trio.fail_after(30):
        proc = await trio.lowlevel.open_process(
            [NODE or "node", str(HERE / "smsc.js"), "4"], stdout=subprocess.PIPE, cwd=HERE
        )
        assert proc.stdout is not None
        first = b""
        while not first.endswith(b"\n"):
            first += await proc.stdout.receive_some(1)
        port = int(json.loads(first)["port"])
        bind = SmppBind(
            BindSettings(carrier="node", host="127.0.0.1", port=port, system_id="gw", password="x"),
            consume,
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(bind.run)
            while len(received) < 4 or bind.state is not BindState.BOUND:
                await trio.sleep(0.01)
            resp = await bind.request(
                "submit_sm",
                source_addr="12345",
                destination_addr="447700900999",
                short_message=b"x",
            )
            assert resp.get_bytes("message_id") == b"abc123"
            bind.stop()
        lines = await _lines(proc)
        assert await proc.wait() == 0
    assert sorted(received) == [f"NODE {i}".encode() for i in range(1, 5)]
    assert {"submit": "447700900999"} in lines
    assert any(line.get("unbind") for line in lines)
    assert sum(1 for line in lines if "ack" in line and line["status"] == 0) == 4
