"""`gatewayd simulate` as operators run it: a subprocess, a real bind, JSON-lines log."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import trio

from gatewayd.cli import parseargs
from gatewayd.smpp import pdu as P
from gatewayd.smpp.driver import BindSettings, SmppBind


def test_parseargs_simulate_contract() -> None:
    args = parseargs(
        shlex.split(
            "simulate --host 127.0.0.1 --port 0 --password pw --mo 5 --from 4477 --to 123 "
            "--text Hi --window 3 --rate 50 --dlr-status UNDELIV --dlr-delay 500ms --log x.jsonl"
        )
    )
    assert (args.port, args.password, args.mo, args.mo_from, args.mo_to) == (
        0,
        "pw",
        5,
        "4477",
        "123",
    )
    assert (args.text, args.window, args.rate, args.dlr_status, args.dlr_delay) == (
        "Hi",
        3,
        50.0,
        "UNDELIV",
        0.5,
    )
    assert args.log == "x.jsonl"


async def test_simulate_subprocess_sends_mos_and_logs(tmp_path: Path) -> None:
    log = tmp_path / "sim.jsonl"
    received: list[bytes] = []
    got_all = trio.Event()

    async def consume(pdu: P.Pdu, bind: SmppBind) -> int:
        received.append(pdu.get_bytes("short_message"))
        if len(received) == 3:
            got_all.set()
        return P.ESME_ROK

    with trio.fail_after(30):
        proc = await trio.lowlevel.open_process(
            [
                sys.executable,
                "-m",
                "gatewayd",
                "simulate",
                "--port",
                "0",
                "--mo",
                "3",
                "--text",
                "Hello",
                "--password",
                "pw",
                "--log",
                str(log),
            ],
            stdout=subprocess.PIPE,
        )
        try:
            assert proc.stdout is not None
            line = b""
            while not line.endswith(b"\n"):
                line += await proc.stdout.receive_some(1)
            text = line.decode().strip()
            assert text.startswith("listening on 127.0.0.1:")
            port = int(text.rsplit(":", 1)[1])
            bind = SmppBind(
                BindSettings(
                    carrier="sim",
                    host="127.0.0.1",
                    port=port,
                    system_id="gw",
                    password="pw",
                    bind="transceiver",
                ),
                consume,
            )
            async with trio.open_nursery() as nursery:
                nursery.start_soon(bind.run)
                await got_all.wait()
                resp = await bind.request(
                    "submit_sm",
                    source_addr="123",
                    destination_addr="447700900555",
                    short_message=b"out",
                    registered_delivery=1,
                )
                assert resp.status == P.ESME_ROK
                bind.stop()
        finally:
            proc.terminate()
            await proc.wait()
    assert sorted(received) == [b"Hello 1", b"Hello 2", b"Hello 3"]
    records = [json.loads(x) for x in log.read_text().splitlines()]
    kinds = [r["event"] for r in records]
    assert "bind" in kinds
    assert "submit_sm" in kinds
    submit = next(r for r in records if r["event"] == "submit_sm")
    assert submit["to"] == "447700900555"
    assert [r["status"] for r in records if r["event"] == "deliver_sm_resp"][:3] == [0, 0, 0]
