"""``gatewayd test-destination``: probe_destination per destination type, and the CLI as
a subprocess against a real webhook receiver."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import trio
import trio.testing

from gatewayd.cli import parseargs
from gatewayd.config import Config, loads_config
from gatewayd.probe import ProbeResult, format_result, probe_destination
from tests.sip_uas import open_uas
from tests.smtp_server import open_smtp_server
from tests.webhook import Reply, open_webhook_receiver

SECRET = "probe-secret-0123456789"
TOKEN = "probe-bearer-9876543210"


def config_text(rx_url: str, smtp_port: int = 2525, sip_uri: str = "sip:desk@127.0.0.1") -> str:
    return textwrap.dedent(
        f"""\
        store: ./gw.db
        smtp: {{host: 127.0.0.1, port: {smtp_port}, from: gw@example.com}}
        destinations:
          crm:
            type: url
            url: {rx_url}/crm
            auth: {{jwt: {{secret: {SECRET}}}}}
          keyed:
            type: url
            url: {rx_url}/keyed?api_key={SECRET}
            headers: {{X-Token: {TOKEN}}}
            auth: {{bearer: {TOKEN}}}
          status:
            type: url
            url: {rx_url}/status?id={{{{message_id}}}}&status={{{{status}}}}
            method: GET
          mail:
            type: email
            to: ops@example.com
          desk:
            type: device
            uri: {sip_uri}
            username: alice
            password: wonderland
          drop:
            type: none
        routes:
          a2p: crm
        """
    )


def load(tmp_path: Path, text: str) -> Config:
    return loads_config(text, base_dir=tmp_path)


async def test_url_probe_shows_request_and_response(tmp_path: Path) -> None:
    async with open_webhook_receiver() as rx:
        config = load(tmp_path, config_text(rx.url))
        rx.respond_with(Reply(status=202, headers=(("x-reply", "1"),), body=b"queued"))
        result = await probe_destination(config, "crm", "mo")
        assert result.ok
        assert result.outcome == "delivered"
        assert result.request is not None
        assert result.response is not None
        assert (result.request.method, result.request.url) == ("POST", f"{rx.url}/crm")
        assert dict(result.request.headers)["Authorization"] == "<redacted>"
        body = json.loads(result.request.body)
        assert body["type"] == "mo"
        assert body["id"] == result.event_id
        assert result.response.status == 202
        assert result.response.reason == "Accepted"
        assert ("x-reply", "1") in result.response.headers
        assert result.response.body == "queued"
        [sent] = rx.requests
        assert sent.json()["id"] == result.event_id
        assert (sent.header("authorization") or "").startswith("Bearer ")
        text = format_result(result)
        assert "> POST " in text
        assert "< 202 Accepted" in text
        assert text.splitlines()[-1].startswith("OK: delivered")


async def test_url_probe_redacts_every_secret(tmp_path: Path) -> None:
    async with open_webhook_receiver() as rx:
        config = load(tmp_path, config_text(rx.url))
        rx.respond_with(Reply(status=401, body=f"bad token {TOKEN}".encode()))
        result = await probe_destination(config, "keyed", "dlr")
        assert not result.ok
        assert result.outcome == "retry"
        dumped = json.dumps(result.to_dict())
        assert SECRET not in dumped
        assert TOKEN not in dumped
        assert SECRET not in format_result(result)
        # ...but the receiver got the real credentials
        [sent] = rx.requests
        assert sent.query_params()["api_key"] == [SECRET]
        assert sent.header("x-token") == TOKEN
        assert sent.json()["type"] == "dlr"


async def test_get_probe_and_unreachable_receiver(tmp_path: Path) -> None:
    async with open_webhook_receiver() as rx:
        config = load(tmp_path, config_text(rx.url))
        result = await probe_destination(config, "status", "dlr")
        assert result.ok
        assert rx.requests[0].query_params()["status"] == ["DELIVRD"]
        url = rx.url
    # the receiver is gone: connection refused
    config = load(tmp_path, config_text(url))
    result = await probe_destination(config, "crm", "mo")
    assert not result.ok
    assert result.response is None
    assert result.request is not None
    assert result.error
    assert "FAILED: retry" in format_result(result)


async def test_email_probe(tmp_path: Path) -> None:
    async with open_smtp_server() as smtp:
        config = load(tmp_path, config_text("http://127.0.0.1:9", smtp_port=smtp.port))
        result = await probe_destination(config, "mail", "mo")
        assert result.ok, result
        assert result.request is not None
        assert result.request.method == "SMTP"
        assert result.request.url.startswith(f"smtp://127.0.0.1:{smtp.port} to ops@example.com")
        assert dict(result.request.headers)["To"] == "ops@example.com"
        assert "Hello from gatewayd" in result.request.body
        assert result.response is not None
        assert result.response.status == 250
        assert len(smtp.messages) == 1


async def test_device_probe(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    async with open_uas(auth=407) as uas:
        config = load(tmp_path, config_text("http://127.0.0.1:9", sip_uri=uas.uri()))
        result = await probe_destination(config, "desk", "mo")
        assert result.ok, result
        assert result.request is not None
        assert result.response is not None
        assert result.request.method == "MESSAGE"
        # the request shown is the one answered: with digest credentials, redacted
        assert dict(result.request.headers)["Proxy-Authorization"] == "<redacted>"
        assert result.request.body == "Hello from gatewayd"
        assert result.response.status == 200
        assert "wonderland" not in json.dumps(result.to_dict())


async def test_none_probe_sends_nothing(tmp_path: Path) -> None:
    config = load(tmp_path, config_text("http://127.0.0.1:9"))
    result = await probe_destination(config, "drop", "mo")
    assert result == ProbeResult(
        destination="drop",
        type="none",
        kind="mo",
        event_id=result.event_id,
        outcome="nothing sent",
        ok=True,
    )


def test_parseargs() -> None:
    args = parseargs(["test-destination", "crm", "--dlr", "--config", "x.yaml", "--json"])
    assert (args.command, args.name, args.dlr, args.config, args.json) == (
        "test-destination",
        "crm",
        True,
        "x.yaml",
        True,
    )
    args = parseargs(["test-destination", "crm"])
    assert (args.dlr, args.json, args.config) == (False, False, "/etc/gatewayd/gatewayd.yaml")


async def run_cli(*argv: str) -> trio.CompletedProcess[bytes]:
    return await trio.run_process(
        [sys.executable, "-m", "gatewayd", "test-destination", *argv, "--log-format", "json"],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )


async def test_cli_as_a_subprocess(tmp_path: Path) -> None:
    async with open_webhook_receiver() as rx:
        path = tmp_path / "gatewayd.yaml"
        path.write_text(config_text(rx.url))
        rx.respond_with(200, Reply(status=503, body=b"down"), then=200)

        done = await run_cli("crm", "--config", str(path))
        out = done.stdout.decode()
        assert done.returncode == 0, done.stderr.decode()
        assert f"> POST {rx.url}/crm" in out
        assert "> Authorization: <redacted>" in out
        assert "< 200 OK" in out
        assert SECRET not in out + done.stderr.decode()

        done = await run_cli("crm", "--dlr", "--json", "--config", str(path))
        assert done.returncode == 1
        result = json.loads(done.stdout)
        assert result["kind"] == "dlr"
        assert result["ok"] is False
        assert result["response"]["status"] == 503
        assert result["response"]["body"] == "down"
        assert [r.json()["type"] for r in rx.requests] == ["mo", "dlr"]

        done = await run_cli("keyed", "--json", "--config", str(path))
        assert done.returncode == 0
        assert SECRET not in done.stdout.decode()
        assert TOKEN not in done.stdout.decode()

        done = await run_cli("nope", "--config", str(path))
        assert done.returncode == 1
        assert b"no destination 'nope'" in done.stderr
        assert b"crm" in done.stderr

        done = await run_cli("crm", "--config", str(tmp_path / "missing.yaml"))
        assert done.returncode == 1
        assert b"missing.yaml" in done.stderr
