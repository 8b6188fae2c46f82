"""The admin / send API: the daemon in-process, its real listener, httpx as the client."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio
import trio.testing

from gatewayd import api
from gatewayd.app import Daemon
from gatewayd.config import BasicAuth, Config, UrlDestination, loads_config
from gatewayd.smpp import pdu as P
from gatewayd.smpp.simulator import Simulator, SimulatorSettings
from gatewayd.store import SqliteStore
from tests.e2e.helpers import JWT_SECRET, config_text, mo_fields
from tests.webhook import Reply, WebhookReceiver, open_webhook_receiver

ADMIN = "admin-token-0123456789abcdef"
SENDER = "send-token-0123456789abcdef"
HEADER_SECRET = "hdr-secret-9876543210"

API_EXTRA = f"""\
api:
  listen: 127.0.0.1:8025
  admin_tokens: [{ADMIN}]
  tokens: [{SENDER}]
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@attrs.define
class Api:
    daemon: Daemon
    rx: WebhookReceiver
    sim: Simulator
    config: Config
    client: httpx.AsyncClient

    async def admin(self, method: str, path: str, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {ADMIN}", **kw.pop("headers", {})}
        return await self.client.request(method, path, headers=headers, **kw)


@contextlib.asynccontextmanager
async def api_daemon(
    tmp_path: Path,
    *,
    start_sim: bool = True,
    tweak: Callable[[Config, str], Config] | None = None,
) -> AsyncIterator[Api]:
    """Simulator + webhook receiver + daemon with its API on 127.0.0.1, a free port."""
    sim_port = 0 if start_sim else _free_port()
    sim = Simulator(SimulatorSettings(port=sim_port, password="pw", resend_delay=5.0))
    async with open_webhook_receiver() as rx, trio.open_nursery() as nursery:
        if start_sim:
            sim_port = await nursery.start(sim.serve)
        config = loads_config(
            config_text(sim_port, rx.url, API_EXTRA).replace(
                "enquire_link: 30s", "enquire_link: 30s\n    reconnect: {min: 1s, max: 2s}"
            ),
            base_dir=tmp_path,
        )
        # The config file refuses port 0 (listen must name a port): set it here.
        config = attrs.evolve(config, api=attrs.evolve(config.api, port=0))
        if tweak is not None:
            config = tweak(config, rx.url)
        base = time.time()

        def wall() -> float:
            return base + trio.current_time()

        store = SqliteStore(
            config.store, dedup_window=config.dedup_window, use_thread=False, wall_clock=wall
        )
        daemon = Daemon(config, store=store, wall_clock=wall)
        await nursery.start(daemon.run)
        try:
            async with httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{daemon.api_port or 9}", trust_env=False
            ) as client:
                yield Api(daemon=daemon, rx=rx, sim=sim, config=config, client=client)
        finally:
            daemon.stop()
            with trio.move_on_after(60):
                await daemon.stopped.wait()
            nursery.cancel_scope.cancel()


async def wait_bound(daemon: Daemon) -> None:
    while not all(any(b.is_bound for b in bs) for bs in daemon.binds.values()) or not (
        daemon.binds
    ):
        await trio.sleep(0.1)


ADMIN_ENDPOINTS = [
    ("GET", "/metrics"),
    ("GET", "/v1/binds"),
    ("GET", "/v1/events"),
    ("GET", "/v1/events/nope"),
    ("POST", "/v1/events/nope/replay"),
    ("POST", "/v1/dead-letters/replay"),
    ("POST", "/v1/destinations/crm/test"),
]
SEND_ENDPOINTS = [("POST", "/v1/messages"), ("GET", "/v1/messages/nope")]


async def test_auth_per_endpoint_class(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with api_daemon(tmp_path) as api:
        c = api.client
        for path in ("/healthz", "/readyz"):
            r = await c.get(path)
            assert r.status_code in (200, 503), path
        for method, path in ADMIN_ENDPOINTS + SEND_ENDPOINTS:
            r = await c.request(method, path)
            assert r.status_code == 401, (method, path)
            assert r.headers["www-authenticate"].startswith("Bearer")
            assert r.json()["error"] == "unauthorized"
            for bad in ("Bearer wrong-token", "Basic " + ADMIN, "Bearer"):
                r = await c.request(method, path, headers={"Authorization": bad})
                assert r.status_code in (401, 403), (method, path, bad)
                assert ADMIN not in r.text
                assert "wrong-token" not in r.text
        # a send token is not an admin token
        for method, path in ADMIN_ENDPOINTS:
            r = await c.request(method, path, headers={"Authorization": f"Bearer {SENDER}"})
            assert r.status_code == 403, (method, path)
            assert SENDER not in r.text
        # the right tokens get through (whatever the endpoint then answers)
        for method, path in ADMIN_ENDPOINTS:
            r = await api.admin(method, path)
            assert r.status_code not in (401, 403), (method, path, r.text)
        for token in (SENDER, ADMIN):
            for method, path in SEND_ENDPOINTS:
                r = await c.request(method, path, headers={"Authorization": f"Bearer {token}"})
                assert r.status_code not in (401, 403), (method, path)


async def test_unknown_route_is_json_404(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with api_daemon(tmp_path) as api:
        r = await api.admin("GET", "/v1/nothing")
        assert r.status_code == 404
        assert r.json()["error"]
        r = await api.admin("DELETE", "/v1/binds")
        assert r.status_code == 405


async def test_readyz_503_until_a_bind_is_up_then_200(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with api_daemon(tmp_path, start_sim=False) as api:
        assert (await api.client.get("/healthz")).status_code == 200
        r = await api.client.get("/readyz")
        assert r.status_code == 503
        body = r.json()
        assert body["not_ready"] == ["sim"]
        assert body["store"] is True
        assert any("sim" in p for p in body["problems"])
        for _ in range(20):
            binds = (await api.admin("GET", "/v1/binds")).json()["carriers"]["sim"]
            if binds[0]["last_error"]:
                break
            await trio.sleep(0.5)
        assert binds[0]["state"] != "bound"
        assert binds[0]["name"] == "sim#1"
        assert "connect" in binds[0]["last_error"]  # refused: nothing listens yet
        # now the SMSC comes up on the configured port; the bind reconnects
        port = api.config.carriers["sim"].port
        api.sim.settings = attrs.evolve(api.sim.settings, port=port)
        async with trio.open_nursery() as nursery:
            await nursery.start(api.sim.serve)
            await wait_bound(api.daemon)
            r = await api.client.get("/readyz")
            assert r.status_code == 200, r.text
            assert r.json()["ready"] is True
            binds = (await api.admin("GET", "/v1/binds")).json()["carriers"]["sim"]
            assert binds[0]["state"] == "bound"
            assert binds[0]["reconnects"] >= 1
            assert binds[0]["window_in_use"] == 0
            assert "pw" not in json.dumps(binds)
            api.daemon.stop()
            r = await api.client.get("/readyz")
            assert r.status_code == 503
            assert "stopping" in r.json()["problems"]
            nursery.cancel_scope.cancel()


async def test_events_list_detail_replay_and_dead_letters(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with api_daemon(tmp_path) as api:
        # crm retries 3 times, 10 s apart: 4 x 503 make the job dead
        api.rx.respond_with(503, 503, 503, 503, then=200)
        assert await api.sim.deliver("a", mo_fields(b"hello there")) == P.ESME_ROK
        await api.rx.wait_for(4)
        for _ in range(50):
            r = await api.admin("GET", "/v1/events", params={"status": "dead"})
            if r.json()["items"]:
                break
            await trio.sleep(1)
        items = r.json()["items"]
        assert len(items) == 1
        event_id = items[0]["id"]
        assert items[0]["from"] == "447700900001"
        assert items[0]["to"] == "12345"
        # filters
        for params, n in [
            ({"number": "12345"}, 1),
            ({"number": "999"}, 0),
            ({"destination": "crm"}, 1),
            ({"destination": "legacy"}, 0),
            ({"since": "1h"}, 1),
            ({"since": "2000-01-01T00:00:00Z"}, 1),
            ({"since": "2999-01-01T00:00:00"}, 0),
            ({"status": "delivered"}, 0),
        ]:
            r = await api.admin("GET", "/v1/events", params=params)
            assert r.status_code == 200, r.text
            assert len(r.json()["items"]) == n, params
        r = await api.admin(
            "GET", "/v1/events", params={"status": "bogus", "since": "yesterday", "limit": "0"}
        )
        assert r.status_code == 400
        problems = r.json()["problems"]
        assert len(problems) == 3
        # detail: the event, its job, every attempt
        r = await api.admin("GET", f"/v1/events/{event_id}")
        assert r.status_code == 200
        detail = r.json()
        assert detail["status"] == "dead"
        assert detail["event"]["text"] == "hello there"
        assert [j["state"] for j in detail["jobs"]] == ["dead"]
        assert [a["status_code"] for a in detail["attempts"]] == [503] * 4
        assert [a["attempt"] for a in detail["attempts"]] == [1, 2, 3, 4]
        assert JWT_SECRET not in r.text
        assert (await api.admin("GET", "/v1/events/nope")).status_code == 404
        # replay: unknown event, unknown destination
        r = await api.admin("POST", "/v1/events/nope/replay")
        assert r.status_code == 404
        r = await api.admin("POST", f"/v1/events/{event_id}/replay", params={"destination": "x"})
        assert r.status_code == 400
        assert "no destination 'x'" in r.json()["problems"][0]
        r = await api.admin("POST", f"/v1/events/{event_id}/replay", content=b"{bad")
        assert r.status_code == 400
        # dead-letter replay of all dead jobs of crm: the receiver now answers 200
        r = await api.admin("POST", "/v1/dead-letters/replay", params={"destination": "crm"})
        assert r.status_code == 202
        assert r.json()["replayed"] == 1
        await api.rx.wait_for(5)
        for _ in range(50):
            detail = (await api.admin("GET", f"/v1/events/{event_id}")).json()
            if detail["status"] == "delivered":
                break
            await trio.sleep(1)
        assert detail["status"] == "delivered"
        assert [a["status_code"] for a in detail["attempts"]] == [503] * 4 + [200]
        r = await api.admin("POST", "/v1/dead-letters/replay")
        assert r.json()["replayed"] == 0
        # event replay with a JSON body naming the destination: a new job id
        r = await api.admin("POST", f"/v1/events/{event_id}/replay", json={"destination": "crm"})
        assert r.status_code == 202, r.text
        job_ids = r.json()["job_ids"]
        assert len(job_ids) == 1
        assert job_ids[0] not in [j["id"] for j in detail["jobs"]]
        await api.rx.wait_for(6)
        assert [q.path for q in api.rx.requests] == ["/crm"] * 6


async def test_events_paging(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    async with api_daemon(tmp_path) as api:
        for i in range(5):
            await api.sim.deliver(f"m{i}", mo_fields(f"msg {i}".encode()))
        seen: list[str] = []
        cursor = None
        while True:
            params = {"limit": "2"} | ({"cursor": cursor} if cursor else {})
            page = (await api.admin("GET", "/v1/events", params=params)).json()
            assert len(page["items"]) <= 2
            seen += [i["id"] for i in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert len(seen) == len(set(seen)) == 5
        assert seen == sorted(seen, reverse=True)


async def test_destination_test_against_a_real_receiver(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    def add_hooked(config: Config, rx_url: str) -> Config:
        hooked = UrlDestination(
            name="hooked",
            url=f"{rx_url}/hook?key={HEADER_SECRET}",
            headers={"X-Api-Key": HEADER_SECRET},
            auth=BasicAuth(username="u", password=HEADER_SECRET + "-pw"),
        )
        return attrs.evolve(config, destinations={**config.destinations, "hooked": hooked})

    async with api_daemon(tmp_path, tweak=add_hooked) as api:
        api.rx.respond_with(
            Reply(status=201, headers=(("x-echo", "yes"),), body=b'{"accepted":true}')
        )
        r = await api.admin("POST", "/v1/destinations/crm/test")
        assert r.status_code == 200, r.text
        result = r.json()
        assert result["ok"] is True
        assert result["outcome"] == "delivered"
        assert result["request"]["method"] == "POST"
        assert result["request"]["url"] == f"{api.rx.url}/crm"
        headers = dict(result["request"]["headers"])
        assert headers["Authorization"] == "<redacted>"
        assert json.loads(result["request"]["body"])["type"] == "mo"
        assert result["response"]["status"] == 201
        assert dict(result["response"]["headers"])["x-echo"] == "yes"
        assert result["response"]["body"] == '{"accepted":true}'
        assert JWT_SECRET not in r.text
        sent = api.rx.requests[-1]
        assert sent.path == "/crm"
        assert sent.json()["id"] == result["event_id"]
        # a receipt to the composed GET status URL
        r = await api.admin("POST", "/v1/destinations/status/test", params={"kind": "dlr"})
        result = r.json()
        assert result["kind"] == "dlr"
        assert result["request"]["method"] == "GET"
        assert api.rx.requests[-1].query_params()["status"] == ["DELIVRD"]
        # secrets in the URL and headers never come back
        r = await api.admin("POST", "/v1/destinations/hooked/test")
        assert r.status_code == 200
        assert HEADER_SECRET not in r.text
        assert api.rx.requests[-1].header("x-api-key") == HEADER_SECRET
        assert api.rx.requests[-1].query_params()["key"] == [HEADER_SECRET]
        # a failing receiver: still 200 for the test itself, ok false
        api.rx.respond_with(500)
        r = await api.admin("POST", "/v1/destinations/crm/test")
        assert r.json()["ok"] is False
        assert r.json()["response"]["status"] == 500
        # type none sends nothing
        n = len(api.rx.requests)
        r = await api.admin("POST", "/v1/destinations/drop/test")
        assert r.json()["outcome"] == "nothing sent"
        assert len(api.rx.requests) == n
        assert (await api.admin("POST", "/v1/destinations/nope/test")).status_code == 404
        r = await api.admin("POST", "/v1/destinations/crm/test", params={"kind": "x"})
        assert r.status_code == 400


# ----------------------------------------------------------------------------- send API

SEND = {"Authorization": f"Bearer {SENDER}"}


async def test_send_api_validation_lists_every_problem(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with api_daemon(tmp_path) as api:
        c = api.client
        r = await c.post("/v1/messages", headers=SEND, json={})
        assert r.status_code == 400
        assert sorted(r.json()["problems"]) == [
            "from: required",
            "text: required",
            "to: required",
        ]
        r = await c.post(
            "/v1/messages",
            headers=SEND,
            json={
                "from": "not a valid sender at all",
                "to": "12ab",
                "text": "",
                "status_url": "ftp://example.com/x",
                "delivery": 5,
                "custom": "x" * 5000,
                "colour": "red",
            },
        )
        assert r.status_code == 400
        problems = r.json()["problems"]
        for field in ("from", "to", "text", "status_url", "delivery", "custom", "colour"):
            assert any(p.startswith(f"{field}:") for p in problems), (field, problems)
        assert len(problems) == 7
        for body in (b"[1, 2]", b"{not json", b'"text"'):
            r = await c.post(
                "/v1/messages",
                headers={**SEND, "Content-Type": "application/json"},
                content=body,
            )
            assert r.status_code == 400, body
            assert r.json()["problems"]
        r = await c.post(
            "/v1/messages", headers={**SEND, "Content-Type": "text/plain"}, content=b"{}"
        )
        assert r.status_code == 400
        # status URLs to loopback/private/metadata addresses are refused up front
        for url in ("http://127.0.0.1/x", "http://169.254.169.254/", "http://[::1]:80/"):
            r = await c.post(
                "/v1/messages",
                headers=SEND,
                json={"from": "12345", "to": "447700900001", "text": "hi", "status_url": url},
            )
            assert r.status_code == 400, url
            assert r.json()["problems"][0].startswith("status_url:")
        # unknown carrier (and delivery destination): 422
        r = await c.post(
            "/v1/messages",
            headers=SEND,
            json={"from": "12345", "to": "447700900001", "text": "hi", "carrier": "nope"},
        )
        assert r.status_code == 422
        assert "nope" in r.json()["problems"][0]
        r = await c.post(
            "/v1/messages",
            headers=SEND,
            json={"from": "Acme", "to": "+447700900001", "text": "hi", "delivery": "nope"},
        )
        assert r.status_code == 422
        # too big a body
        r = await c.post(
            "/v1/messages",
            headers={**SEND, "Content-Type": "application/json"},
            content=b'{"text": "' + b"x" * 100_000 + b'"}',
        )
        assert r.status_code == 413
        assert r.json()["error"]


# The send path (gatewayd.outbound) is written by another engineer: run this once the
# daemon sets ``self.outbound`` (a static look at the attribute names its code assigns).
OUTBOUND = importlib.util.find_spec("gatewayd.outbound") is not None and any(
    "outbound" in fn.__code__.co_names for fn in (Daemon.__init__, Daemon.run)
)


@pytest.mark.skipif(not OUTBOUND, reason="the daemon does not wire gatewayd.outbound yet")
async def test_send_api_accepts_and_reports(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with api_daemon(tmp_path) as api:
        await wait_bound(api.daemon)
        r = await api.client.post(
            "/v1/messages",
            headers=SEND,
            json={"from": "12345", "to": "447700900001", "text": "hello", "custom": {"t": 1}},
        )
        assert r.status_code == 202, r.text
        body = r.json()
        assert body["parts"] == 1
        # submitted to the SMSC, whose receipt then marks it delivered
        for _ in range(60):
            r = await api.client.get(f"/v1/messages/{body['id']}", headers=SEND)
            assert r.status_code == 200
            if r.json()["status"] == "delivered":
                break
            await trio.sleep(1)
        message = r.json()
        assert message["status"] == "delivered", message
        assert message["custom"] == {"t": 1}
        assert len(api.sim.submits) == 1
        # a long text: several parts; a carrier that does not exist: 422 (nothing sent)
        r = await api.client.post(
            "/v1/messages",
            headers=SEND,
            json={"from": "12345", "to": "447700900001", "text": "x" * 400},
        )
        assert r.status_code == 202
        assert r.json()["parts"] == 3
        r = await api.client.get("/v1/messages/does-not-exist", headers=SEND)
        assert r.status_code == 404


METRICS = importlib.util.find_spec("gatewayd.metrics") is not None


@pytest.mark.skipif(not METRICS, reason="gatewayd.metrics is not there yet")
async def test_metrics_is_prometheus_text(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    async with api_daemon(tmp_path) as api:
        r = await api.admin("GET", "/metrics")
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/plain")
        families = list(text_string_to_metric_families(r.text))
        assert families
        assert ADMIN not in r.text
        assert SENDER not in r.text


async def test_port_in_use_logs_and_runs_without_the_api(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    taken = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = taken.socket.getsockname()[1]

    def on_taken_port(config: Config, rx_url: str) -> Config:
        return attrs.evolve(config, api=attrs.evolve(config.api, port=port))

    try:
        async with api_daemon(tmp_path, tweak=on_taken_port) as api:
            assert api.daemon.api_port is None
            await wait_bound(api.daemon)  # messages still flow
            assert await api.sim.deliver("a", mo_fields(b"hello")) == P.ESME_ROK
            await api.rx.wait_for(1)
    finally:
        await taken.aclose()
    assert any("API listener cannot start" in r.getMessage() for r in caplog.records)


def test_attempt_history_hides_destination_secrets(tmp_path: Path) -> None:
    from gatewayd.api import _attempt
    from gatewayd.store import AttemptRecord

    config = loads_config(
        config_text(1, f"http://u:{HEADER_SECRET}@127.0.0.1:9?token={HEADER_SECRET}"),
        base_dir=tmp_path,
    )
    record = AttemptRecord(
        job_id=1,
        event_id="e",
        destination="crm",
        attempt=1,
        at=0.0,
        target=f"http://127.0.0.1:9/crm?token={HEADER_SECRET}",
        status_code=401,
        latency_ms=1.0,
        error=f"HTTP 401 {JWT_SECRET}",
        response_excerpt=f"you sent {HEADER_SECRET}",
        outcome="retry",
    )
    out = json.dumps(_attempt(record, config))
    assert HEADER_SECRET not in out
    assert JWT_SECRET not in out
    assert "<redacted>" in out


def test_absurdly_nested_json_is_a_client_error() -> None:
    with pytest.raises(ValueError, match="nested"):
        api._loads(b"[" * 60_000)
