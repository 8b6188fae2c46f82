"""SipDestination against the project's test UAS on loopback (autojump clock), and sipp.

The sipp tests run a real subprocess, so they use real time with deadlines; they are
skipped, with the reason, where ``sipp`` (Debian package ``sip-tester``) is absent.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from gatewayd.config import DeviceDestination
from gatewayd.destinations.base import AttemptResult, Destination, Job, Outcome
from gatewayd.destinations.device import SipDestination, message_body, sender_number
from gatewayd.events import Address, ReceiptStatus
from gatewayd.sip import digest
from gatewayd.sip.driver import NextHop, SipTransportError, next_hop, resolve
from gatewayd.sip.message import Request, header_param
from gatewayd.sip.transaction import top_branch
from tests.sip_uas import TestUas, open_uas
from tests.test_payloads import make_dlr, make_mo

JOB = Job(id=1, event_id="e", destination="desk", attempt=1)
PASSWORD = "wonderland-secret"
SIPP = shutil.which("sipp")
SIPP_SCENARIO = Path(__file__).parent.parent / "sip" / "sipp_uas_message.xml"
SIPP_407_SCENARIO = Path(__file__).parent.parent / "sip" / "sipp_uas_message_407.xml"
SIPP_401_SCENARIO = Path(__file__).parent.parent / "sip" / "sipp_uas_message_401.xml"


def device(uas: TestUas, **kwargs: Any) -> DeviceDestination:
    fields: dict[str, Any] = {"name": "desk", "uri": uas.uri(), "transport": uas.transport}
    fields.update(kwargs)
    return DeviceDestination(**fields)


async def deliver(config: DeviceDestination, event: Any = None, **kwargs: Any) -> AttemptResult:
    destination = SipDestination(config, **kwargs)
    try:
        with trio.fail_after(200):
            return await destination.deliver(event or make_mo("Héllo 😀"), JOB)
    finally:
        await destination.aclose()


def assert_no_secret(result: AttemptResult, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in repr(result)


# --- the request we build ----------------------------------------------------------------


def test_request_shape() -> None:
    config = DeviceDestination(name="desk", uri="sip:desk@pbx.example.com;transport=udp")
    request = SipDestination(config).build_request(
        make_mo("Hi there"), local_host="192.0.2.7", local_port=5099
    )
    assert request.method == "MESSAGE"
    assert request.uri == "sip:desk@pbx.example.com;transport=udp"
    h = request.headers
    assert h.get("To") == "<sip:desk@pbx.example.com;transport=udp>"
    assert h.get("From") is not None
    assert (h.get("From") or "").startswith('"+447700900123" <sip:+447700900123@192.0.2.7>;tag=')
    assert header_param(h.get("From") or "", "tag")
    assert h.get("Content-Type") == "text/plain;charset=UTF-8"
    assert h.get("Max-Forwards") == "70"
    assert h.get("CSeq") == "1 MESSAGE"
    assert (h.get("Call-ID") or "").endswith("@192.0.2.7")
    assert (h.get("Via") or "").startswith("SIP/2.0/UDP 192.0.2.7:5099;branch=z9hG4bK")
    assert top_branch(request) is not None
    assert h.get("X-Event-Id") == make_mo().id
    assert request.body == b"Hi there"
    wire = request.to_bytes()
    assert b"\r\nContent-Length: 8\r\n\r\nHi there" in wire


def test_request_hostile_sender_and_text() -> None:
    config = DeviceDestination(name="desk", uri="sip:desk@[2001:db8::1]:5070")
    event = make_mo('line\r\nInjected: yes "q" \\', source=Address(addr='Shop\r\n"X"'))
    request = SipDestination(config).build_request(event, local_host="::1", local_port=5060)
    wire = request.to_bytes()
    head = wire.split(b"\r\n\r\n", 1)[0]
    assert b"Injected" not in head
    assert request.body == b'line\r\nInjected: yes "q" \\'
    assert (request.headers.get("From") or "").startswith(
        '"Shop  \\"X\\"" <sip:Shop%0D%0A%22X%22@[::1]>'
    )
    assert (request.headers.get("Via") or "").startswith("SIP/2.0/UDP [::1]:5060;")


def test_bodies_and_numbers() -> None:
    assert message_body(make_mo("x")) == "x"
    assert message_body(make_dlr()) == "Delivery receipt: message abc123 DELIVRD"
    failed = make_dlr(status=ReceiptStatus.UNDELIV, error="034")
    assert message_body(failed) == "Delivery receipt: message abc123 UNDELIV (error 034)"
    assert message_body(make_mo("", content="binary", raw=b"\x01\x02")) == (
        "[binary message, 2 bytes]"
    )
    assert sender_number(make_mo()) == "+447700900123"
    assert sender_number(make_dlr()) == "447700900123"


def test_next_hop() -> None:
    assert next_hop("sip:a@pbx.example.com", proxy=None, transport="udp") == NextHop(
        host="pbx.example.com", port=5060, transport="udp"
    )
    assert next_hop("sip:a@h:5070", proxy="10.0.0.1:5062", transport="tcp") == NextHop(
        host="10.0.0.1", port=5062, transport="tcp"
    )
    assert next_hop("sip:a@h", proxy="sip:proxy.example.com;lr", transport="udp").port == 5060
    assert next_hop("sip:a@h", proxy="[2001:db8::5]:5080", transport="udp").host == ("2001:db8::5")


async def test_protocol_conformance() -> None:
    destination: Destination = SipDestination(DeviceDestination(name="d", uri="sip:a@b"))
    await destination.aclose()


# --- over loopback with the test UAS ------------------------------------------------------


async def test_udp_delivery(autojump_clock: trio.testing.MockClock) -> None:
    async with open_uas() as uas:
        result = await deliver(device(uas))
    assert result.outcome is Outcome.DELIVERED, result
    assert result.status_code == 200
    assert result.response_excerpt == "OK"
    assert result.error == ""
    assert result.target == uas.uri()
    [request] = uas.requests
    assert request.body == "Héllo 😀".encode()
    assert request.headers.get("Content-Type") == "text/plain;charset=UTF-8"
    assert len(uas.received) == 1


async def test_udp_retransmission_delivers(autojump_clock: trio.testing.MockClock) -> None:
    async with open_uas(drop_first=2) as uas:
        start = trio.current_time()
        result = await deliver(device(uas))
    assert result.outcome is Outcome.DELIVERED, result
    # The original and two retransmissions (timer E: 0.5 s, then 1 s later) were received;
    # the first two were dropped, the third answered.
    assert [c.dropped for c in uas.received] == [True, True, False]
    assert [round(c.at - start, 3) for c in uas.received] == [0.0, 0.5, 1.5]
    assert len(uas.requests) == 1
    assert len({c.raw for c in uas.received}) == 1  # byte-identical copies
    assert result.latency_ms == pytest.approx(1500, abs=1)


async def test_tcp_delivery_no_retransmission(autojump_clock: trio.testing.MockClock) -> None:
    async with open_uas(transport="tcp", provisional=True) as uas:
        result = await deliver(device(uas))
    assert result.outcome is Outcome.DELIVERED, result
    assert len(uas.received) == 1
    assert (uas.requests[0].headers.get("Via") or "").startswith("SIP/2.0/TCP 127.0.0.1:")


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_noise_is_ignored(autojump_clock: trio.testing.MockClock, transport: str) -> None:
    async with open_uas(transport=transport, noise=True, script=[202]) as uas:
        result = await deliver(device(uas))
    assert result.outcome is Outcome.DELIVERED, result
    assert result.status_code == 202
    assert len(uas.received) == 1


async def test_tcp_hang_up_retries(autojump_clock: trio.testing.MockClock) -> None:
    async with open_uas(transport="tcp", hang_up=True) as uas:
        result = await deliver(device(uas))
    assert result.outcome is Outcome.RETRY
    assert "closed by the peer" in result.error or "connection lost" in result.error
    assert result.latency_ms < 1000


async def test_tcp_silent_peer_times_out_without_retransmitting(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_uas(transport="tcp", silent=True) as uas:
        start = trio.current_time()
        result = await deliver(device(uas))
        elapsed = trio.current_time() - start
    assert result.outcome is Outcome.RETRY
    assert "timer F" in result.error
    assert elapsed == pytest.approx(32.0)
    assert len(uas.received) == 1


@pytest.mark.parametrize("status", [407, 401])
@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_digest_challenge_answered_once(
    autojump_clock: trio.testing.MockClock, status: int, transport: str
) -> None:
    async with open_uas(auth=status, password=PASSWORD, transport=transport) as uas:
        result = await deliver(device(uas, username="alice", password=PASSWORD))
    assert result.outcome is Outcome.DELIVERED, result
    first, second = uas.requests
    credentials = "Proxy-Authorization" if status == 407 else "Authorization"
    assert first.headers.get(credentials) is None
    assert (second.headers.get(credentials) or "").startswith("Digest ")
    assert uas.auth_results == [True]
    # A new transaction (branch, CSeq) in the same call (Call-ID, From tag).
    assert top_branch(first) != top_branch(second)
    assert first.headers.get("CSeq") == "1 MESSAGE"
    assert second.headers.get("CSeq") == "2 MESSAGE"
    assert first.headers.get("Call-ID") == second.headers.get("Call-ID")
    assert first.headers.get("From") == second.headers.get("From")
    assert first.body == second.body
    assert_no_secret(result, PASSWORD)
    assert PASSWORD.encode() not in b"".join(c.raw for c in uas.received)


async def test_digest_sha256(autojump_clock: trio.testing.MockClock) -> None:
    async with open_uas(auth=401, password=PASSWORD, algorithm="SHA-256") as uas:
        result = await deliver(device(uas, username="alice", password=PASSWORD))
    assert result.outcome is Outcome.DELIVERED, result
    _, params = digest.parse_auth_params(uas.requests[1].headers.get("Authorization") or "")
    assert params["algorithm"] == "SHA-256"
    assert len(params["response"]) == 64


@pytest.mark.parametrize("status", [401, 407])
async def test_wrong_password_is_final_not_a_loop(
    autojump_clock: trio.testing.MockClock, status: int
) -> None:
    async with open_uas(auth=status, password="the-right-one") as uas:
        result = await deliver(device(uas, username="alice", password=PASSWORD))
    assert result.outcome is Outcome.RETRY
    assert result.status_code == status
    assert "credentials rejected" in result.error
    assert len(uas.requests) == 2  # the first, and one answer to the challenge: no more
    assert uas.auth_results == [False]
    assert_no_secret(result, PASSWORD)


async def test_challenge_without_credentials(autojump_clock: trio.testing.MockClock) -> None:
    async with open_uas(auth=407) as uas:
        result = await deliver(device(uas))
    assert result.outcome is Outcome.RETRY
    assert result.status_code == 407
    assert "none configured" in result.error
    assert len(uas.requests) == 1


async def test_unsupported_challenge_is_permanent(autojump_clock: trio.testing.MockClock) -> None:
    async with open_uas(auth=401, algorithm="AKAv1-MD5") as uas:
        result = await deliver(device(uas, username="alice", password=PASSWORD))
    assert result.outcome is Outcome.PERMANENT
    assert "AKAv1-MD5" in result.error
    assert len(uas.requests) == 1


@pytest.mark.parametrize(("status", "reason"), [(486, "Busy Here"), (503, "Service Unavailable")])
async def test_failure_finals_retry(
    autojump_clock: trio.testing.MockClock, status: int, reason: str
) -> None:
    async with open_uas(script=[status], retry_after=120) as uas:
        result = await deliver(device(uas))
    assert result.outcome is Outcome.RETRY
    assert result.status_code == status
    assert result.response_excerpt == reason
    assert result.error == f"SIP {status} {reason}"
    assert result.retry_after == 120.0
    assert len(uas.received) == 1


async def test_no_response_timer_f(autojump_clock: trio.testing.MockClock) -> None:
    async with open_uas(silent=True) as uas:
        start = trio.current_time()
        result = await deliver(device(uas))
        elapsed = trio.current_time() - start
    assert result.outcome is Outcome.RETRY
    assert result.status_code is None
    assert "timer F" in result.error
    assert elapsed == pytest.approx(32.0)
    times = [round(c.at - start, 3) for c in uas.received]
    assert times == [0.0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]


async def test_via_proxy_and_resolver(autojump_clock: trio.testing.MockClock) -> None:
    asked: list[tuple[str, int, str]] = []

    async def resolver(host: str, port: int, transport: str) -> list[tuple[int, tuple[Any, ...]]]:
        asked.append((host, port, transport))
        return [(socket.AF_INET, ("127.0.0.1", port))]

    async with open_uas() as uas:
        config = device(uas, uri="sip:desk@pbx.invalid", proxy=f"proxy.invalid:{uas.port}")
        result = await deliver(config, resolver=resolver)
    assert result.outcome is Outcome.DELIVERED, result
    assert asked == [("proxy.invalid", uas.port, "udp")]
    assert uas.requests[0].uri == "sip:desk@pbx.invalid"
    assert uas.requests[0].headers.get("Route") == f"<sip:proxy.invalid:{uas.port};lr>"
    assert uas.requests[0].headers.get("To") == "<sip:desk@pbx.invalid>"


def test_route_header_from_proxy_uri() -> None:
    config = DeviceDestination(name="d", uri="sip:a@b", proxy="sip:edge.example.com;lr")
    request = SipDestination(config).build_request(make_mo(), local_host="h", local_port=1)
    assert request.headers.get("Route") == "<sip:edge.example.com;lr>"
    plain = SipDestination(DeviceDestination(name="d", uri="sip:a@b"))
    assert plain.build_request(make_mo(), local_host="h", local_port=1).headers.get("Route") is None


async def test_dns_failure_retries() -> None:
    async def resolver(host: str, port: int, transport: str) -> list[tuple[int, tuple[Any, ...]]]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    config = DeviceDestination(name="d", uri="sip:desk@no-such-host.invalid")
    result = await deliver(config, resolver=resolver)
    assert result.outcome is Outcome.RETRY
    assert "cannot resolve no-such-host.invalid" in result.error


async def test_real_resolver_numeric_and_failure() -> None:
    assert await resolve("127.0.0.1", 5060, "udp") == [(socket.AF_INET, ("127.0.0.1", 5060))]
    with pytest.raises(SipTransportError, match="cannot resolve"):
        await resolve("bad host name", 5060, "tcp")


async def test_tcp_refused_retries(autojump_clock: trio.testing.MockClock) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = DeviceDestination(name="d", uri=f"sip:desk@127.0.0.1:{port}", transport="tcp")
    result = await deliver(config)
    assert result.outcome is Outcome.RETRY
    assert "cannot connect" in result.error


async def test_permanent_cases() -> None:
    sips = await deliver(DeviceDestination(name="d", uri="sips:desk@pbx.example.com"))
    assert sips.outcome is Outcome.PERMANENT
    assert "TLS" in sips.error
    bad = await deliver(DeviceDestination(name="d", uri="sip:desk@bad host"))
    assert bad.outcome is Outcome.PERMANENT
    proxy = await deliver(DeviceDestination(name="d", uri="sip:a@b", proxy="bad host:x"))
    assert proxy.outcome is Outcome.PERMANENT


async def test_uri_password_never_shown(autojump_clock: trio.testing.MockClock) -> None:
    async with open_uas(silent=True, transport="tcp") as uas:
        config = device(uas, uri=f"sip:desk:{PASSWORD}@127.0.0.1:{uas.port}")
        result = await deliver(config)
    assert result.target == f"sip:desk@127.0.0.1:{uas.port}"
    assert_no_secret(result, PASSWORD)
    assert PASSWORD.encode() not in uas.received[0].raw


async def test_receipt_delivery(autojump_clock: trio.testing.MockClock) -> None:
    async with open_uas() as uas:
        result = await deliver(device(uas), make_dlr())
    assert result.outcome is Outcome.DELIVERED
    request = uas.requests[0]
    assert isinstance(request, Request)
    assert request.body == b"Delivery receipt: message abc123 DELIVRD"
    assert (request.headers.get("From") or "").startswith('"447700900123" <sip:447700900123@')


# --- sipp: an independent implementation, as a subprocess, in real time --------------------


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def run_sipp(
    scenario: Path, tmp_path: Path, config_for_port: Any
) -> tuple[AttemptResult, int, str]:
    """Run sipp as a UAS on a free UDP port, deliver once to it, wait for it to exit."""
    assert SIPP is not None
    port = free_udp_port()
    log = tmp_path / "sipp.log"
    command = [SIPP, "-sf", str(scenario), "-i", "127.0.0.1", "-p", str(port), "-m", "1"]
    command += ["-nostdin", "-timeout", "30s", "-timeout_error"]
    command += ["-trace_err", "-error_file", str(tmp_path / "sipp_errors.log")]
    with log.open("wb") as out:
        proc = await trio.lowlevel.open_process(
            command, stdin=subprocess.DEVNULL, stdout=out, stderr=out, cwd=tmp_path
        )
        try:
            with trio.fail_after(45):
                # sipp may not listen yet: UDP retransmission (timer E) covers its start-up.
                result = await deliver(config_for_port(port), make_mo("sipp interop ✓"))
                code = await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    errors = tmp_path / "sipp_errors.log"
    detail = log.read_text(errors="replace")[-2000:]
    if errors.exists():
        detail += errors.read_text(errors="replace")[-2000:]
    return result, code, detail


sipp_only = pytest.mark.skipif(
    SIPP is None, reason="sipp is not installed (Debian package sip-tester)"
)


@pytest.mark.interop
@sipp_only
async def test_sipp_uas_answers_200(tmp_path: Path) -> None:
    result, code, detail = await run_sipp(
        SIPP_SCENARIO,
        tmp_path,
        lambda port: DeviceDestination(name="sipp", uri=f"sip:desk@127.0.0.1:{port}"),
    )
    assert result.outcome is Outcome.DELIVERED, (result, detail)
    assert result.status_code == 200
    assert code == 0, detail


@pytest.mark.interop
@sipp_only
@pytest.mark.parametrize("scenario", [SIPP_407_SCENARIO, SIPP_401_SCENARIO], ids=["407", "401"])
async def test_sipp_uas_digest_challenge(tmp_path: Path, scenario: Path) -> None:
    result, code, detail = await run_sipp(
        scenario,
        tmp_path,
        lambda port: DeviceDestination(
            name="sipp",
            uri=f"sip:desk@127.0.0.1:{port}",
            username="alice",
            password=PASSWORD,
        ),
    )
    assert result.outcome is Outcome.DELIVERED, (result, detail)
    assert result.status_code == 200
    assert code == 0, detail
    assert PASSWORD not in detail
