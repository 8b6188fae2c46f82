"""``gatewayd demo``: the whole job on one machine, no network, no arguments.

It starts the built-in SMSC simulator and a webhook receiver on free loopback ports, writes
a config for them in a temporary folder, runs the daemon against them, has the simulator
send MOs (GSM 03.38 with escapes, UCS-2 with an emoji, a 3-part concatenated message, a
keyword, a P2P message), sends a message through the send API whose delivery receipt comes
back correlated to it, then prints what the receiver got.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import TextIO

import httpx
import jwt
import trio

from gatewayd import charsets
from gatewayd.app import Daemon
from gatewayd.config import load_config
from gatewayd.smpp import pdu as P
from gatewayd.smpp.simulator import Simulator, SimulatorSettings
from gatewayd.webhook_receiver import ReceivedRequest, open_webhook_receiver

JWT_SECRET = "demo-secret-change-me-0123456789abcdef"
API_TOKEN = "demo-api-token-0123456789"

CONFIG = """\
# Written by `gatewayd demo`: a carrier (the built-in simulator) and a webhook receiver.
store: ./demo.db
carriers:
  sim:
    host: 127.0.0.1
    port: {sim_port}
    system_id: demo
    password: ${{DEMO_PASSWORD}}
    bind: transceiver
destinations:
  webhook:
    type: url
    url: {rx}/sms/in
    auth: {{jwt: {{secret: {secret}}}}}
  status:
    type: url
    url: {rx}/sms/status?id={{{{message_id}}}}&status={{{{status}}}}
    method: GET
  stop-list:
    type: url
    url: {rx}/legacy/stop.php
    format: form
    body: {{from: "{{{{from}}}}", msg: "{{{{text}}}}", uid: "{{{{id}}}}"}}
numbers:
  "12345":
    incoming: webhook
    delivery: status
    keywords:
      STOP: [webhook, stop-list]
routes:
  a2p: webhook
  p2p: webhook
  delivery: status
api:
  listen: 127.0.0.1:0            # any free port: the demo must not clash with a real gatewayd
  tokens: [{token}]
  status_url_allow: [127.0.0.0/8]  # the demo's receiver is on loopback
"""

GSM_TEXT = "Price: 10€ [promo] {today} ~ ok"
UCS2_TEXT = "Привет, мир 👋"
LONG_TEXT = (
    "This long message is split by the phone into three parts, each with a UDH "
    "carrying the same reference; gatewayd joins them in any order, keeps each part "
    "on disk until the last one arrives, and delivers exactly one message. " * 2
).strip()


def _mo(
    text: bytes, *, to: str = "12345", dc: int = 0, esm: int = 0
) -> dict[str, int | bytes | str]:
    return {
        "source_addr_ton": 1,
        "source_addr_npi": 1,
        "source_addr": "447700900001",
        "dest_addr_ton": 0,
        "dest_addr_npi": 1,
        "destination_addr": to,
        "esm_class": esm,
        "data_coding": dc,
        "short_message": text,
    }


def _parts(text: str, ref: int) -> list[bytes]:
    data = charsets.gsm_encode(text)
    size = 153
    chunks = [data[i : i + size] for i in range(0, len(data), size)]
    return [bytes([5, 0, 3, ref, len(chunks), n + 1]) + chunk for n, chunk in enumerate(chunks)]


async def _send_all(sim: Simulator) -> int:
    """Send the demo's deliver_sm; returns how many webhook requests they should cause."""
    sent = [
        ("MO GSM 03.38", _mo(charsets.gsm_encode(GSM_TEXT))),
        ("MO UCS-2", _mo(UCS2_TEXT.encode("utf-16-be"), dc=8)),
        ("MO keyword", _mo(b"STOP all offers please")),
        ("MO P2P", _mo(b"Hi, it's me", to="447700900777")),
    ]
    parts = _parts(LONG_TEXT, ref=42)
    # the parts arrive out of order, as they do from real networks
    for i in (2, 0, 1):
        sent.append((f"MO part {i + 1}/3", _mo(parts[i], esm=0x40)))
    for key, fields in sent:
        status = await sim.deliver(key, fields)
        if status != P.ESME_ROK:
            raise RuntimeError(f"{key}: deliver_sm answered 0x{status:08x}")
    # GSM, UCS-2, keyword (fan-out to 2), P2P, the joined long one
    return 1 + 1 + 2 + 1 + 1


async def _send_via_api(api_port: int, rx_url: str, out: TextIO) -> None:
    """An outbound message through the send API; its receipt comes back to its status_url."""
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{api_port}",
        headers={"Authorization": f"Bearer {API_TOKEN}"},
    ) as client:
        body = {
            "from": "12345",
            "to": "447700900001",
            "text": "Your code is 482913",
            "status_url": f"{rx_url}/dlr",
            "custom": {"order": "A-1001"},
        }
        resp = await client.post("/v1/messages", json=body)
        resp.raise_for_status()
        answer = resp.json()
        out.write(
            f"POST /v1/messages -> {resp.status_code} {json.dumps(answer)}: queued on disk, "
            "submitted to the SMSC, whose receipt comes back to the status_url.\n"
        )


def _describe(req: ReceivedRequest) -> str:
    if req.method == "GET":
        params = req.query_params()
        fields = {k: v[0] for k, v in params.items()}
        return f"GET  {req.path:<20} {json.dumps(fields, ensure_ascii=False)}"
    ctype = req.header("content-type") or ""
    if "json" in ctype:
        body = req.json()
        auth = req.header("authorization") or ""
        verified = ""
        if auth.startswith("Bearer "):
            jwt.decode(auth[7:], JWT_SECRET, algorithms=["HS256"])
            verified = "  [JWT verified]"
        summary = {
            k: body.get(k)
            for k in (
                "type",
                "class",
                "from",
                "to",
                "keyword",
                "parts",
                "text",
                "status",
                "message_uuid",
                "units",
                "custom",
            )
            if body.get(k) not in (None, "")
        }
        text = summary.get("text")
        if isinstance(text, str) and len(text) > 60:
            summary["text"] = f"{text[:57]}... ({len(text)} chars)"
        return f"POST {req.path:<20} {json.dumps(summary, ensure_ascii=False)}{verified}"
    form = {k: v[0] for k, v in req.form().items()}
    return f"POST {req.path:<20} form {json.dumps(form, ensure_ascii=False)}"


async def run_demo(out: TextIO, *, wait_limit: float = 30.0) -> int:
    with tempfile.TemporaryDirectory(prefix="gatewayd-demo-") as tmp:
        async with open_webhook_receiver() as rx, trio.open_nursery() as nursery:
            sim = Simulator(SimulatorSettings(port=0, password="demo-pw", dlr_delay=0.2))
            sim_port = await nursery.start(sim.serve)
            path = Path(tmp) / "gatewayd.yaml"
            path.write_text(
                CONFIG.format(sim_port=sim_port, rx=rx.url, secret=JWT_SECRET, token=API_TOKEN),
                encoding="utf-8",
            )
            config = load_config(path, env={"DEMO_PASSWORD": "demo-pw"})
            out.write(
                f"gatewayd demo\n  SMSC simulator  127.0.0.1:{sim_port}\n"
                f"  webhook receiver {rx.url}\n  config           {path}\n\n"
            )
            daemon = Daemon(config)
            await nursery.start(daemon.run)
            with trio.fail_after(wait_limit):
                expected = await _send_all(sim)
                mos = len(sim.acked)
                out.write(
                    f"The simulator sent {mos} deliver_sm; each was acknowledged "
                    "only after it was stored.\n"
                )
                assert daemon.api_port is not None
                await _send_via_api(daemon.api_port, rx.url, out)
                out.write("\nWhat the receiver got:\n")
                requests = await rx.wait_for(expected + 1)
            for req in requests:
                out.write(f"  {_describe(req)}\n")
            out.write(
                f"\n{len(requests)} webhook requests for {mos + 1} deliver_sm "  # + the receipt
                "(the 3 parts became one message; STOP fanned out to 2 destinations;\n"
                "the receipt was matched to the message it reports on).\n"
            )
            daemon.stop()
            with trio.fail_after(10):
                await daemon.stopped.wait()
            nursery.cancel_scope.cancel()
    return 0
