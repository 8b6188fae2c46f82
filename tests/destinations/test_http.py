"""HttpDestination and StatusUrlDelivery against a real HTTP receiver on loopback."""

from __future__ import annotations

import functools
import hashlib
import json
import math
import shutil
import socket
import ssl
import subprocess
import urllib.parse
from collections.abc import AsyncIterator
from typing import Any

import httpcore
import httpx
import jwt
import pytest
import trio

from gatewayd.config import BasicAuth, BearerAuth, JwtAuth, UrlDestination
from gatewayd.destinations import http as dhttp
from gatewayd.destinations.base import AttemptResult, Destination, Job, Outcome
from gatewayd.destinations.http import HttpDestination, StatusUrlDelivery, address_allowed
from gatewayd.payloads import default_json
from tests.test_payloads import HOSTILE, SECRET, make_dlr, make_mo
from tests.webhook import ReceivedRequest, Reply, WebhookReceiver, open_webhook_receiver

JOB = Job(id=1, event_id="e", destination="crm", attempt=1)
NOW = 1_760_000_000.0


@pytest.fixture
async def rx() -> AsyncIterator[WebhookReceiver]:
    async with open_webhook_receiver() as receiver:
        yield receiver


def url_dest(rx: WebhookReceiver, path: str = "/in", **kwargs: Any) -> UrlDestination:
    fields: dict[str, Any] = {"name": "crm", "url": rx.url + path, "timeout": 5.0}
    fields.update(kwargs)
    return UrlDestination(**fields)


async def deliver_once(config: UrlDestination, event: Any = None, **kwargs: Any) -> AttemptResult:
    destination = HttpDestination(config, wall_clock=lambda: NOW, **kwargs)
    try:
        with trio.fail_after(30):
            return await destination.deliver(event or make_mo(), JOB)
    finally:
        await destination.aclose()


def assert_no_secret(result: AttemptResult, *secrets: str) -> None:
    text = repr(result)
    for secret in secrets:
        assert secret not in text


# --- success and the body that arrives ------------------------------------------------------


async def test_default_json_post_is_delivered(rx: WebhookReceiver) -> None:
    result = await deliver_once(url_dest(rx))
    assert result.outcome is Outcome.DELIVERED
    assert result.status_code == 200
    assert result.response_excerpt == "ok"
    assert result.error == ""
    assert result.target == rx.url + "/in"
    assert result.latency_ms >= 0
    [request] = rx.requests
    assert request.method == "POST"
    assert request.path == "/in"
    assert request.json() == default_json(make_mo())
    assert request.header("content-type") == "application/json"
    assert request.header("idempotency-key") == make_mo().id
    assert (request.header("user-agent") or "").startswith("gatewayd/")


async def test_http_destination_satisfies_the_protocol() -> None:
    destination: Destination = HttpDestination(UrlDestination(name="x", url="https://h/"))
    assert destination.name == "x"  # (and mypy checks the assignment above)
    await destination.aclose()


@pytest.mark.parametrize("value", HOSTILE)
@pytest.mark.parametrize("how", ["json", "form", "get"])
async def test_hostile_values_arrive_intact(rx: WebhookReceiver, how: str, value: str) -> None:
    mo = make_mo(text=value, keyword=value)
    config = url_dest(
        rx,
        "/in/{{keyword}}?msg={{text}}&fixed=1",
        method="GET" if how == "get" else "POST",
        format="form" if how == "form" else "json",
        body={"text": "{{text}}", "pair": "{{from}}&{{text}}"},
    )
    result = await deliver_once(config, mo)
    assert result.outcome is Outcome.DELIVERED, result
    [request] = rx.requests
    assert urllib.parse.unquote(request.path) == f"/in/{value}"
    query = request.query_params()
    expected = {"text": value, "pair": f"447700900123&{value}"}
    if how == "get":
        assert query == {"msg": [value], "fixed": ["1"], **{k: [v] for k, v in expected.items()}}
        assert request.body == b""
    else:
        assert query == {"msg": [value], "fixed": ["1"]}
        if how == "json":
            assert request.json() == expected
        else:
            assert request.form() == {k: [v] for k, v in expected.items()}


async def test_jwt_is_verified_by_the_receiver(rx: WebhookReceiver) -> None:
    config = url_dest(rx, auth=JwtAuth(secret=SECRET))
    result = await deliver_once(config, make_dlr())
    assert result.outcome is Outcome.DELIVERED
    [request] = rx.requests
    scheme, token = (request.header("authorization") or "").split(" ", 1)
    assert scheme == "Bearer"
    claims = jwt.decode(
        token, SECRET, algorithms=["HS256"], options={"verify_iat": False, "verify_exp": False}
    )
    assert claims["body_sha256"] == hashlib.sha256(request.body).hexdigest()
    assert claims["jti"] == make_dlr().id
    assert claims["exp"] - claims["iat"] == 300
    assert_no_secret(result, SECRET, token)


async def test_basic_and_bearer_auth(rx: WebhookReceiver) -> None:
    await deliver_once(url_dest(rx, auth=BasicAuth(username="u", password="p@ss")))
    await deliver_once(url_dest(rx, auth=BearerAuth(token="tok-123")))
    basic, bearer = rx.requests
    assert basic.header("authorization") == "Basic dTpwQHNz"
    assert bearer.header("authorization") == "Bearer tok-123"


async def test_userinfo_in_the_url_is_used_but_never_shown(rx: WebhookReceiver) -> None:
    url = rx.url.replace("http://", "http://user:hunter2@") + "/in"
    result = await deliver_once(UrlDestination(name="x", url=url))
    assert result.outcome is Outcome.DELIVERED
    assert result.target == rx.url + "/in"
    assert rx.requests[0].header("authorization") == "Basic dXNlcjpodW50ZXIy"


async def test_extra_placeholders_via_send(rx: WebhookReceiver) -> None:
    destination = HttpDestination(url_dest(rx, "/s?c={{custom}}"))
    try:
        result = await destination.send(make_dlr(), {"custom": "t 1"})
    finally:
        await destination.aclose()
    assert result.outcome is Outcome.DELIVERED
    assert rx.requests[0].query_params() == {"c": ["t 1"]}
    assert rx.requests[0].json()["custom"] == "t 1"


async def test_keep_alive_reuses_one_connection(rx: WebhookReceiver) -> None:
    destination = HttpDestination(url_dest(rx))
    try:
        for _ in range(3):
            assert (await destination.deliver(make_mo(), JOB)).outcome is Outcome.DELIVERED
    finally:
        await destination.aclose()
    assert {r.connection for r in rx.requests} == {0}


async def test_response_excerpt_is_bounded(rx: WebhookReceiver) -> None:
    rx.respond_with(Reply(status=200, body="é".encode() * 50_000))
    result = await deliver_once(url_dest(rx))
    assert result.outcome is Outcome.DELIVERED
    assert len(result.response_excerpt.encode()) <= 1024 + 3
    assert len(result.response_excerpt) <= 1024


# --- failures -----------------------------------------------------------------------------


async def test_configured_success_set(rx: WebhookReceiver) -> None:
    rx.respond_with(200, 202)
    config = url_dest(rx, success=frozenset({202}))
    first = await deliver_once(config)
    second = await deliver_once(config)
    assert (first.outcome, first.status_code, first.error) == (Outcome.RETRY, 200, "HTTP 200 OK")
    assert (second.outcome, second.status_code) == (Outcome.DELIVERED, 202)


@pytest.mark.parametrize("status", [400, 401, 404, 408, 429, 500, 503])
async def test_failed_statuses_retry(rx: WebhookReceiver, status: int) -> None:
    rx.respond_with(Reply(status=status, body=b"nope"))
    result = await deliver_once(url_dest(rx))
    assert result.outcome is Outcome.RETRY
    assert result.status_code == status
    assert result.error.startswith(f"HTTP {status}")
    assert result.response_excerpt == "nope"
    assert result.retry_after is None


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("120", 120.0),
        ("Sun, 12 Oct 2025 09:00:30 GMT", 30.0),
        ("Sun, 12 Oct 2025 08:00:00 GMT", 0.0),
        ("soon", None),
    ],
)
async def test_retry_after(rx: WebhookReceiver, header: str, expected: float | None) -> None:
    rx.respond_with(Reply(status=503, headers=(("Retry-After", header),)))
    noon = 1_760_259_600.0  # Sun, 12 Oct 2025 09:00:00 UTC
    destination = HttpDestination(url_dest(rx), wall_clock=lambda: noon)
    try:
        result = await destination.deliver(make_mo(), JOB)
    finally:
        await destination.aclose()
    assert result.outcome is Outcome.RETRY
    assert result.retry_after == expected


async def test_redirects_are_not_followed(rx: WebhookReceiver) -> None:
    rx.respond_with(Reply(status=302, headers=(("Location", rx.url + "/elsewhere"),)))
    result = await deliver_once(url_dest(rx))
    assert result.outcome is Outcome.RETRY
    assert result.status_code == 302
    assert len(rx.requests) == 1


async def test_timeout_when_the_receiver_never_answers(
    rx: WebhookReceiver, autojump_clock: trio.testing.MockClock
) -> None:
    rx.respond_with(Reply(delay=math.inf))
    start = trio.current_time()
    result = await deliver_once(url_dest(rx, timeout=10.0, auth=BearerAuth(token="tok-secret")))
    assert result.outcome is Outcome.RETRY
    assert result.status_code is None
    assert "timeout" in result.error.lower()
    assert 10.0 <= trio.current_time() - start < 11.0
    assert 10_000 <= result.latency_ms < 11_000
    assert_no_secret(result, "tok-secret")


async def test_a_slow_answer_within_the_timeout_is_judged(
    rx: WebhookReceiver, autojump_clock: trio.testing.MockClock
) -> None:
    rx.respond_with(Reply(status=503, delay=9.0))
    result = await deliver_once(url_dest(rx, timeout=10.0))
    assert (result.outcome, result.status_code) == (Outcome.RETRY, 503)
    assert 9_000 <= result.latency_ms < 10_000


async def test_connection_refused_retries() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://user:pw-secret@127.0.0.1:{port}/in"
    result = await deliver_once(
        UrlDestination(name="x", url=url, auth=BasicAuth(username="u", password="pw2-secret"))
    )
    assert result.outcome is Outcome.RETRY
    assert result.status_code is None
    assert "ConnectError" in result.error
    assert result.target == f"http://127.0.0.1:{port}/in"
    assert_no_secret(result, "pw-secret", "pw2-secret")


async def test_dropped_connection_retries(rx: WebhookReceiver) -> None:
    rx.respond_with(Reply(drop=True))
    result = await deliver_once(url_dest(rx))
    assert result.outcome is Outcome.RETRY
    assert result.status_code is None
    assert "RemoteProtocolError" in result.error


@pytest.mark.parametrize(("status", "outcome"), [(200, Outcome.DELIVERED), (500, Outcome.RETRY)])
async def test_a_status_is_judged_even_if_the_body_is_cut_short(
    rx: WebhookReceiver, status: int, outcome: Outcome
) -> None:
    rx.respond_with(Reply(status=status, body=b"partial", truncate=True))
    result = await deliver_once(url_dest(rx))
    assert (result.outcome, result.status_code) == (outcome, status)
    assert result.response_excerpt == "partial"


async def test_unbuildable_requests_are_permanent(rx: WebhookReceiver) -> None:
    unknown = await deliver_once(url_dest(rx, "/in?x={{nope}}"))
    assert unknown.outcome is Outcome.PERMANENT
    assert "nope" in unknown.error
    header = await deliver_once(url_dest(rx, headers={"X-Key": "sec\r\nret"}))
    assert header.outcome is Outcome.PERMANENT
    assert "sec" not in header.error
    scheme = await deliver_once(UrlDestination(name="x", url="ftp://127.0.0.1/x"))
    assert scheme.outcome is Outcome.PERMANENT
    assert rx.requests == []


async def test_secrets_in_transport_errors_are_redacted() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(
            f"peer said {request.headers['authorization']} / {request.headers['x-key']}"
        )

    def factory(config: UrlDestination) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.MockTransport(handler))

    cases: list[tuple[BasicAuth | BearerAuth | JwtAuth, str]] = [
        (BearerAuth(token="tok-abcdef"), "tok-abcdef"),
        (JwtAuth(secret=SECRET), "eyJ"),
        (BasicAuth(username="u", password="pw-abcdef"), "dTpwdy1hYmNkZWY="),
    ]
    for auth, secret in cases:
        config = UrlDestination(
            name="x", url="https://h.example/in", auth=auth, headers={"X-Key": "hdr-secret"}
        )
        result = await deliver_once(config, client_factory=factory)
        assert result.outcome is Outcome.RETRY
        assert "<redacted>" in result.error
        assert_no_secret(result, secret, "hdr-secret")


async def test_client_is_small_and_does_not_follow_redirects() -> None:
    client = dhttp.make_client(
        UrlDestination(name="x", url="https://h/", concurrency=7, timeout=3.0)
    )
    try:
        assert client.follow_redirects is False
        assert client.timeout == httpx.Timeout(3.0)
        pool = client._transport._pool  # type: ignore[attr-defined]
        assert pool._max_connections == 7
    finally:
        await client.aclose()


def test_retry_after_parsing_and_helpers() -> None:
    assert dhttp.parse_retry_after(None, 0) is None
    assert dhttp.parse_retry_after(" 7 ", 0) == 7.0
    assert dhttp.parse_retry_after("-1", 0) is None
    assert dhttp.public_target("https://a:b@h:1/p?q=1") == "https://h:1/p?q=1"
    assert dhttp.public_target("https://h/p?mail=a@b") == "https://h/p?mail=a@b"
    assert dhttp.redact("x abcd abcde", ["abcd", "abcde", ""]) == "x <redacted> <redacted>"
    assert dhttp.redact("attempts to connect", ["t", "to"]) == "attempts to connect"


# --- status URLs (SSRF guard) -------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        ("93.184.215.14", True),
        ("2606:4700:4700::1111", True),
        ("127.0.0.1", False),
        ("127.9.9.9", False),
        ("::1", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("100.64.0.1", False),
        ("169.254.169.254", False),
        ("fe80::1%eth0", False),
        ("fd00:ec2::254", False),
        ("224.0.0.1", False),
        ("ff02::1", False),
        ("0.0.0.0", False),
        ("::", False),
        ("240.0.0.1", False),
        ("255.255.255.255", False),
        ("::ffff:127.0.0.1", False),
        ("::ffff:8.8.8.8", True),
        ("2002:7f00:1::", False),  # 6to4 wrapping 127.0.0.1
        ("64:ff9b::a00:1", False),  # NAT64 of 10.0.0.1
        ("not-an-ip", False),
    ],
)
def test_address_policy(address: str, allowed: bool) -> None:
    assert address_allowed(address) is allowed


def test_address_allow_list() -> None:
    allow = dhttp.parse_networks(["10.0.0.0/8", "::1/128"])
    assert address_allowed("10.9.8.7", allow)
    assert address_allowed("::1", allow)
    assert not address_allowed("127.0.0.1", allow)
    assert not address_allowed("192.168.0.1", allow)


async def status_deliver(url: str, event: Any = None, **kwargs: Any) -> AttemptResult:
    delivery = StatusUrlDelivery(timeout=5.0, wall_clock=lambda: NOW, **kwargs)
    try:
        with trio.fail_after(30):
            return await delivery.deliver(url, event or make_dlr(), {"custom": "c-1"})
    finally:
        await delivery.aclose()


async def test_status_url_to_loopback_is_blocked(rx: WebhookReceiver) -> None:
    result = await status_deliver(rx.url + "/status")
    assert result.outcome is Outcome.PERMANENT
    assert "blocked" in result.error
    assert rx.requests == []


async def test_status_url_metadata_address_is_blocked_without_connecting() -> None:
    result = await status_deliver("http://169.254.169.254/latest/meta-data/")
    assert result.outcome is Outcome.PERMANENT
    assert "169.254.169.254" in result.error


async def test_status_url_allowed_network_is_delivered(rx: WebhookReceiver) -> None:
    result = await status_deliver(rx.url + "/status?x={{id}}", allow=["127.0.0.0/8"])
    assert result.outcome is Outcome.DELIVERED
    [request] = rx.requests
    assert request.target == "/status?x={{id}}"  # taken as given, never rendered
    assert request.json() == {**default_json(make_dlr()), "custom": "c-1"}
    assert request.header("idempotency-key") == make_dlr().id


async def test_status_url_form_format(rx: WebhookReceiver) -> None:
    result = await status_deliver(rx.url + "/status", allow=["127.0.0.0/8"], format="form")
    assert result.outcome is Outcome.DELIVERED
    assert rx.requests[0].form()["status"] == ["DELIVRD"]


async def test_dns_rebinding_to_loopback_is_blocked(rx: WebhookReceiver) -> None:
    async def rebinding(host: str, port: int) -> list[str]:
        assert host == "status.example.test"
        return ["127.0.0.1"]

    url = f"http://status.example.test:{rx.port}/status"
    result = await status_deliver(url, resolver=rebinding)
    assert result.outcome is Outcome.PERMANENT
    assert rx.requests == []


async def test_resolved_address_is_used_with_the_original_host_header(rx: WebhookReceiver) -> None:
    calls: list[str] = []

    async def resolver(host: str, port: int) -> list[str]:
        calls.append(host)
        return ["10.1.2.3", "127.0.0.1"]  # the first is not allowed: skipped, never tried

    url = f"http://status.example.test:{rx.port}/status"
    result = await status_deliver(url, resolver=resolver, allow=["127.0.0.0/8"])
    assert result.outcome is Outcome.DELIVERED, result
    assert calls == ["status.example.test"]
    assert rx.requests[0].header("host") == f"status.example.test:{rx.port}"


async def test_status_url_redirect_is_not_followed(rx: WebhookReceiver) -> None:
    rx.respond_with(Reply(status=307, headers=(("Location", "http://169.254.169.254/"),)))
    result = await status_deliver(rx.url + "/s", allow=["127.0.0.0/8"])
    assert (result.outcome, result.status_code) == (Outcome.RETRY, 307)
    assert len(rx.requests) == 1


@pytest.mark.parametrize(
    "url", ["ftp://example.com/x", "file:///etc/passwd", "/relative", "http:///nohost"]
)
async def test_status_url_must_be_absolute_http(url: str) -> None:
    result = await status_deliver(url)
    assert result.outcome is Outcome.PERMANENT


async def test_unresolvable_status_host_retries() -> None:
    async def failing(host: str, port: int) -> list[str]:
        raise OSError("Name or service not known")

    result = await status_deliver("https://nowhere.example.test/s", resolver=failing)
    assert result.outcome is Outcome.RETRY
    assert "cannot resolve" in result.error


async def test_guarded_backend_connects_to_the_ip_not_the_name() -> None:
    seen: list[str] = []

    class Recorder(httpcore.AsyncMockBackend):
        async def connect_tcp(
            self, host: str, port: int, *args: Any, **kwargs: Any
        ) -> httpcore.AsyncNetworkStream:
            seen.append(host)
            return await super().connect_tcp(host, port, *args, **kwargs)

    async def resolver(host: str, port: int) -> list[str]:
        return ["93.184.215.14"]

    backend = dhttp.GuardedBackend((), resolver=resolver, inner=Recorder([]))
    stream = await backend.connect_tcp("example.com", 443, timeout=1.0)
    await stream.aclose()
    assert seen == ["93.184.215.14"]
    with pytest.raises(dhttp.BlockedAddress):
        await backend.connect_unix_socket("/run/x.sock")


# --- the receiver itself ------------------------------------------------------------------


async def test_receiver_sequence_then_default_and_handler(rx: WebhookReceiver) -> None:
    rx.respond_with(503, Reply(status=429, body=b"slow"), then=201)
    async with httpx.AsyncClient() as client:
        statuses = [(await client.post(rx.url + "/x", content=b"b")).status_code for _ in range(4)]
        assert statuses == [503, 429, 201, 201]

        async def handler(request: ReceivedRequest) -> Reply:
            return Reply(status=200, body=request.body[::-1])

        rx.respond_with(handler)
        response = await client.post(rx.url + "/y", content=b"abc")
        assert response.content == b"cba"
        rx.respond_with(lambda request: Reply(status=204, body=b""))
        assert (await client.get(rx.url + "/z?a=1")).status_code == 204
    requests = await rx.wait_for(6)
    assert [r.path for r in requests] == ["/x"] * 4 + ["/y", "/z"]
    assert requests[-1].query_params() == {"a": ["1"]}
    assert requests[0].arrived_at <= requests[-1].arrived_at
    assert json.dumps(requests[0].body.decode()) == '"b"'


async def test_receiver_wait_for_blocks_until_requests_arrive(rx: WebhookReceiver) -> None:
    async with trio.open_nursery() as nursery:
        got: list[int] = []

        async def waiter() -> None:
            got.append(len(await rx.wait_for(2)))

        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        async with httpx.AsyncClient() as client:
            await client.post(rx.url, content=b"1")
            await client.post(rx.url, content=b"2", headers={"Connection": "close"})
    assert got == [2]


# --- TLS: the name in the URL is verified although we connect to the resolved IP ---------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = str(directory / "cert.pem"), str(directory / "key.pem")
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            key,
            "-out",
            cert,
            "-days",
            "2",
            "-subj",
            "/CN=status.example.test",
            "-addext",
            "subjectAltName=DNS:status.example.test",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.mark.parametrize(
    ("name", "ok"), [("status.example.test", True), ("other.example.test", False)]
)
async def test_status_url_tls_verifies_the_url_host(
    tls_files: tuple[str, str], name: str, ok: bool
) -> None:
    cert, key = tls_files
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    client = ssl.create_default_context(cafile=cert)

    async def resolver(host: str, port: int) -> list[str]:
        return ["127.0.0.1"]

    async with open_webhook_receiver(ssl_context=server) as tls_rx:
        url = f"https://{name}:{tls_rx.port}/status"
        result = await status_deliver(url, resolver=resolver, allow=["127.0.0.0/8"], verify=client)
    if ok:
        assert result.outcome is Outcome.DELIVERED, result
        assert tls_rx.requests[0].header("host") == f"{name}:{tls_rx.port}"
    else:
        assert result.outcome is Outcome.RETRY
        assert "certificate" in result.error.lower() or "hostname" in result.error.lower()


# --- DirectSender: the client's machinery skipped, the same request built ------------------


def _prepared(method: str, url: str, headers: list[tuple[str, str]], body: bytes) -> Any:
    from gatewayd.payloads import PreparedRequest

    return PreparedRequest(method=method, url=url, headers=tuple(headers), body=body)


UA = ("User-Agent", "gatewayd/x")


DIRECT_CASES: list[tuple[str, str, list[tuple[str, str]], bytes]] = [
    ("POST", "http://h.example/in", [UA, ("Content-Type", "application/json")], b"{}"),
    ("POST", "https://h.example:8443/in?a=1&b=%20", [UA, ("Idempotency-Key", "e1")], b"x"),
    ("POST", "http://h.example/in", [UA], b""),
    ("PUT", "http://h.example/in", [UA], b""),
    ("PATCH", "http://h.example/in", [UA], b"y"),
    ("GET", "http://h.example/in?id=1", [UA, ("Idempotency-Key", "e1")], b""),
    ("DELETE", "http://h.example/in", [UA], b""),
    ("POST", "http://u:p%40ss@h.example/in", [UA], b"z"),
    ("POST", "http://us%C3%A9r@h.example/in", [UA], b"z"),
    ("POST", "http://u:p@h.example/in", [UA, ("Authorization", "Bearer t")], b"z"),
    ("POST", "http://h.example/in", [("accept", "a/b"), ("X-A", "1"), ("x-a", "2")], b"z"),
    ("POST", "http://h.example/in", [("Host", "other"), ("Content-Length", "1")], b"z"),
    ("POST", "http://h.example/in", [("Transfer-Encoding", "chunked")], b""),
    ("POST", "http://[::1]:81/in", [("Connection", "close")], b"z"),
    ("POST", "http://xn--bcher-kva.example/in", [UA], b"z"),
    ("post", "http://h.example/in", [UA], b""),  # httpx upper-cases, then adds Content-Length
]


@pytest.mark.parametrize(("method", "url", "headers", "body"), DIRECT_CASES)
def test_direct_sender_builds_what_the_client_builds(
    method: str, url: str, headers: list[tuple[str, str]], body: bytes
) -> None:
    client = dhttp.make_client(UrlDestination(name="x", url="https://h/", timeout=3.0))
    direct = dhttp.DirectSender.for_client(client)
    assert direct is not None
    request = _prepared(method, url, headers, body)
    has_auth = request.header("Authorization") is not None
    plan = direct.plan(url, has_auth)
    for _ in range(2):  # the second time from the caches
        ours = direct.build(request, plan)
        assert ours is not None
        theirs = client.build_request(
            method, plan.url, headers=list(request.headers), content=body or None
        )
        # what client.send adds: Basic auth from the URL's userinfo
        auth = client._build_request_auth(theirs)
        theirs = next(auth.auth_flow(theirs))
        assert (ours.method, ours.url) == (theirs.method, theirs.url)
        assert ours.headers.raw == theirs.headers.raw
        assert ours.content == theirs.content
        assert ours.extensions == theirs.extensions
    assert plan.target == dhttp.public_target(url)


@pytest.mark.parametrize(
    ("method", "url", "headers", "body"),
    [
        *DIRECT_CASES,
        ("post", "http://h.example/in", [UA], b"lower-case method"),
        ("patch", "http://h.example/in", [UA], b""),
        ("POST", "http://h.example/in", [("X-Bad", "a\x01b")], b"z"),  # a CTL in a value
        ("POST", "http://h.example/in", [("X Bad", "1"), ("X-A", "\x7f")], b"z"),
        (
            "GET",
            "http://h.example/in",
            [("X-A", "1"), ("Connection", "x"), ("connection", "y")],
            b"",
        ),
        ("GET", "http://h.example/in", [("Connection", "Close")], b""),
        ("POST", "http://h.example/big", [UA], b"b" * 70_000),  # sent apart by the transport
        ("POST", "ftp://h.example/in", [UA], b"z"),
    ],
)
def test_direct_sender_encodes_the_bytes_the_transport_sends(
    method: str, url: str, headers: list[tuple[str, str]], body: bytes
) -> None:
    from gatewayd.destinations.transport import LeanTransport, _serialize

    client = dhttp.make_client(UrlDestination(name="x", url="https://h/", timeout=3.0))
    direct = dhttp.DirectSender.for_client(client)
    assert direct is not None
    request = _prepared(method, url, headers, body)
    plan = direct.plan(url, request.header("Authorization") is not None)
    for _ in range(2):  # the second time from the caches
        try:
            ours: Any = direct.encode(request, plan)
        except httpx.HTTPError as exc:
            ours = (type(exc), str(exc))
        built = direct.build(request, plan)
        assert built is not None
        try:
            url_ = built.url
            if url_.scheme not in ("http", "https"):
                raise httpx.UnsupportedProtocol(f"unsupported URL scheme {url_.scheme!r}")
            head, rest, _, close = _serialize(built)
            origin = (url_.scheme, url_.host, url_.port or (443 if url_.scheme == "https" else 80))
            theirs: Any = (origin, head + (rest or b""), close)
        except httpx.HTTPError as exc:
            theirs = (type(exc), str(exc))
        assert ours == theirs
    assert isinstance(client._transport, LeanTransport)


@pytest.mark.parametrize(
    ("read", "error"),
    [
        (2.0, "timeout: ReadTimeout: read timed out after 2.0s"),
        (10.0, "timeout: no response within 10s"),  # the overall deadline wins a tie
        (20.0, "timeout: no response within 10s"),
    ],
)
async def test_read_timeout_and_overall_deadline_on_the_direct_path(
    rx: WebhookReceiver, autojump_clock: trio.testing.MockClock, read: float, error: str
) -> None:
    def factory(config: UrlDestination) -> httpx.AsyncClient:
        client = dhttp.make_client(config)
        client.timeout = httpx.Timeout(30.0, read=read)
        return client

    rx.respond_with(Reply(delay=math.inf))
    destination = HttpDestination(url_dest(rx, timeout=10.0), client_factory=factory)
    try:
        assert destination._direct is not None
        result = await destination.deliver(make_mo(), JOB)
    finally:
        await destination.aclose()
    assert (result.outcome, result.status_code, result.error) == (Outcome.RETRY, None, error)
    assert result.latency_ms == min(read, 10.0) * 1000


async def test_a_body_still_arriving_is_read_within_the_deadline(
    rx: WebhookReceiver, autojump_clock: trio.testing.MockClock
) -> None:
    # 300 kB cannot all be in the first read: the rest streams, within the same deadline.
    rx.respond_with(Reply(status=503, body=b"y" * 300_000, headers=(("Retry-After", "7"),)))
    result = await deliver_once(url_dest(rx))
    assert (result.outcome, result.status_code, result.retry_after) == (Outcome.RETRY, 503, 7.0)
    assert result.response_excerpt == "y" * dhttp.EXCERPT_BYTES


def test_direct_sender_encode_refuses_like_the_transport_once_the_layout_is_cached() -> None:
    from gatewayd.destinations.transport import _serialize

    client = dhttp.make_client(UrlDestination(name="x", url="https://h/", timeout=3.0))
    direct = dhttp.DirectSender.for_client(client)
    assert direct is not None
    url = "http://h.example/a%2Fb?q=%25"
    plan = direct.plan(url, False)

    def both(value: str) -> tuple[Any, Any]:
        request = _prepared("POST", url, [UA, ("X-V", value)], b"{}")
        try:
            ours: Any = direct.encode(request, plan)[1]  # type: ignore[index]
        except (httpx.HTTPError, UnicodeEncodeError) as exc:
            ours = (type(exc), str(exc))
        try:
            built = direct.build(request, plan)
            assert built is not None
            theirs: Any = _serialize(built)[0]
        except (httpx.HTTPError, UnicodeEncodeError) as exc:
            theirs = (type(exc), str(exc))
        return ours, theirs

    for value in ["ok", "caf\u00e9", "a\x01b", "tab\tok", "100%", "%s %d"]:
        ours, theirs = both(value)
        assert ours == theirs, value
    assert both("100%")[0].startswith(b"POST /a%2Fb?q=%25 HTTP/1.1\r\nHost: h.example\r\n")
    assert [wire.template is not None for wire in plan.wires.values()] == [True]  # the fast way


def test_direct_sender_only_for_plain_clients() -> None:
    async def hook(request: httpx.Request) -> None:
        pass

    assert dhttp.DirectSender.for_client(httpx.AsyncClient()) is not None
    for client in [
        httpx.AsyncClient(auth=("u", "p")),
        httpx.AsyncClient(follow_redirects=True),
        httpx.AsyncClient(event_hooks={"request": [hook]}),
        httpx.AsyncClient(base_url="http://h/"),
        httpx.AsyncClient(params={"a": "1"}),
        httpx.AsyncClient(cookies={"a": "1"}),
        httpx.AsyncClient(mounts={"http://": httpx.AsyncHTTPTransport()}),
    ]:
        assert dhttp.DirectSender.for_client(client) is None


async def test_other_clients_still_go_through_client_send() -> None:
    seen: list[httpx.Request] = []

    async def hook(request: httpx.Request) -> None:
        seen.append(request)

    def factory(config: UrlDestination) -> httpx.AsyncClient:
        transport = httpx.MockTransport(lambda request: httpx.Response(201, content=b"hi"))
        return httpx.AsyncClient(transport=transport, event_hooks={"request": [hook]})

    result = await deliver_once(
        UrlDestination(name="x", url="https://h/in"), client_factory=factory
    )
    assert (result.outcome, result.status_code, result.response_excerpt) == (
        Outcome.DELIVERED,
        201,
        "hi",
    )
    assert len(seen) == 1


@pytest.mark.parametrize("factory", [None, functools.partial(dhttp.make_client, stock=True)])
async def test_direct_and_client_paths_send_the_same_bytes(
    rx: WebhookReceiver, factory: Any
) -> None:
    """Through the real transports, the receiver sees the same request either way."""
    config = url_dest(rx, auth=BasicAuth(username="u", password="p"), headers={"X-K": "v"})
    direct = HttpDestination(config, client_factory=factory, wall_clock=lambda: NOW)
    slow = HttpDestination(config, client_factory=factory, wall_clock=lambda: NOW)
    slow._direct = None
    try:
        for destination in (direct, slow, direct):
            result = await destination.deliver(make_mo(), JOB)
            assert result.outcome is Outcome.DELIVERED
    finally:
        await direct.aclose()
        await slow.aclose()
    first, second, third = rx.requests
    assert first.headers == second.headers == third.headers
    assert first.body == second.body == third.body
    assert first.target == second.target


async def test_direct_sender_after_close_raises_like_the_client() -> None:
    destination = HttpDestination(UrlDestination(name="x", url="http://127.0.0.1:9/in"))
    await destination.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await destination.deliver(make_mo(), JOB)


async def test_gzip_response_is_decoded_in_the_excerpt(rx: WebhookReceiver) -> None:
    import gzip

    rx.respond_with(
        Reply(status=200, body=gzip.compress(b"zipped ok"), headers=(("Content-Encoding", "gzip"),))
    )
    result = await deliver_once(url_dest(rx))
    assert (result.outcome, result.response_excerpt) == (Outcome.DELIVERED, "zipped ok")
