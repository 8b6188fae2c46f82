"""SmtpDestination against a real SMTP server (aiosmtpd) on loopback."""

from __future__ import annotations

import email
import email.policy
import email.utils
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import hypothesis
import hypothesis.strategies as st
import pytest
import trio

from gatewayd.config import EmailDestination, SmtpConfig
from gatewayd.destinations import email as demail
from gatewayd.destinations.base import AttemptResult, Destination, Job, Outcome
from gatewayd.destinations.email import SmtpDestination
from gatewayd.events import Event
from gatewayd.payloads import placeholders, render
from tests.smtp_server import (
    SmtpServer,
    client_tls_context,
    free_port,
    make_tls_files,
    open_scripted_server,
    open_silent_server,
    open_smtp_server,
    server_tls_context,
)
from tests.test_payloads import HOSTILE, make_dlr, make_mo

JOB = Job(id=1, event_id="e", destination="mail", attempt=1)
NOW = 1_760_000_000.0
PASSWORD = "pa55-w0rd-never-shown"
SENDER = "gateway@example.net"
EXTRA_HOSTILE = [
    "nul\x00 bell\x07 esc\x1b del\x7f",
    "x" * 2500,  # longer than an SMTP line
    ".\n.leading dots\n..\n.",
    "From the start of a line\nFrom again",
    "unicode line\u2028separator\x85next",
    "=?utf-8?q?not_an_encoded_word?=",
    "Bcc: victim@example.com\r\nX-Injected: yes",
]


@pytest.fixture
async def rx() -> AsyncIterator[SmtpServer]:
    async with open_smtp_server() as server:
        yield server


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_tls_files(tmp_path_factory.mktemp("smtp-tls"))


def smtp_config(host: str = "127.0.0.1", port: int = 25, **kwargs: Any) -> SmtpConfig:
    fields: dict[str, Any] = {"host": host, "port": port, "from_": SENDER}
    fields.update(kwargs)
    return SmtpConfig(**fields)


def email_dest(server: SmtpServer | None = None, **kwargs: Any) -> EmailDestination:
    fields: dict[str, Any] = {"name": "mail", "to": ("ops@example.com",)}
    if server is not None:
        fields["smtp"] = smtp_config(server.host, server.port)
    fields.update(kwargs)
    return EmailDestination(**fields)


async def deliver_once(
    config: EmailDestination, event: Event | None = None, **kwargs: Any
) -> AttemptResult:
    kwargs.setdefault("timeout", 10.0)
    kwargs.setdefault("local_hostname", "gw.test")
    destination = SmtpDestination(config, wall_clock=lambda: NOW, **kwargs)
    try:
        with trio.fail_after(30):
            return await destination.deliver(event or make_mo(), JOB)
    finally:
        await destination.aclose()


def assert_no_secret(result: AttemptResult, *secrets: str) -> None:
    text = repr(result)
    for secret in secrets:
        assert secret not in text


# --- delivered: what arrives ----------------------------------------------------------------


async def test_default_templates_are_delivered(rx: SmtpServer) -> None:
    mo = make_mo()
    result = await deliver_once(email_dest(rx, to=("a@example.com", "b@example.com")), mo)
    assert result.outcome is Outcome.DELIVERED, result
    assert result.status_code == 250
    assert "queued as Q0001" in result.response_excerpt
    assert result.error == ""
    assert result.target == f"smtp://127.0.0.1:{rx.port} to a@example.com,b@example.com"
    assert result.latency_ms >= 0
    [mail] = rx.messages
    assert mail.mail_from == SENDER
    assert mail.rcpt_tos == ("a@example.com", "b@example.com")
    assert not mail.tls
    assert mail.header("Subject") == "SMS from 447700900123 to 12345678"
    assert mail.header("From") == SENDER
    assert mail.header("To") == "a@example.com, b@example.com"
    assert mail.header("Message-ID") == f"<{mo.id}.mail@example.net>"
    assert mail.header("X-Gatewayd-Event-Id") == mo.id
    assert mail.header("X-Gatewayd-Event-Type") == "mo"
    assert mail.header("Auto-Submitted") == "auto-generated"
    assert email.utils.parsedate_to_datetime(mail.header("Date") or "").timestamp() == NOW
    assert mail.message.get_content_type() == "text/plain"
    assert mail.message.get_content_charset() == "utf-8"
    assert mail.text() == "Hello\n"


async def test_receipt_placeholders(rx: SmtpServer) -> None:
    config = email_dest(
        rx, subject="Receipt {{message_id}}: {{status}}", body="{{status}} at {{done_date}}"
    )
    result = await deliver_once(config, make_dlr())
    assert result.outcome is Outcome.DELIVERED, result
    [mail] = rx.messages
    assert mail.header("Subject") == "Receipt abc123: DELIVRD"
    assert mail.header("X-Gatewayd-Event-Type") == "dlr"
    assert mail.text() == "DELIVRD at 2026-01-02T03:04:05Z\n"


@pytest.mark.parametrize("value", HOSTILE + EXTRA_HOSTILE)
async def test_hostile_values_arrive_intact(rx: SmtpServer, value: str) -> None:
    mo = make_mo(text=value, keyword=value)
    config = email_dest(rx, subject="[{{keyword}}] {{text}}", body="Text: {{text}}\nEnd")
    result = await deliver_once(config, mo)
    assert result.outcome is Outcome.DELIVERED, result
    [mail] = rx.messages
    values = placeholders(mo)
    # The subject is one line: control characters become spaces, nothing else changes.
    assert mail.header("Subject") == demail.one_line(f"[{value}] {value}")
    assert mail.header("Bcc") is None
    assert mail.header("X-Injected") is None
    assert mail.rcpt_tos == ("ops@example.com",)
    expected = demail.normalize_newlines(render("Text: {{text}}\nEnd", values)) + "\n"
    assert demail.normalize_newlines(mail.text()) == expected
    head = mail.content.split(b"\r\n\r\n", 1)[0]
    assert head.isascii()  # RFC 2047 encoded words, no raw 8-bit headers
    assert all(len(line) <= 998 for line in mail.content.split(b"\r\n"))


async def test_message_id_is_stable_per_event_and_destination(rx: SmtpServer) -> None:
    mo, dlr = make_mo(), make_dlr()
    cases: list[tuple[EmailDestination, Event]] = [
        (email_dest(rx), mo),
        (email_dest(rx), mo),
        (email_dest(rx, name="other/name"), mo),
        (email_dest(rx), dlr),
    ]
    for config, event in cases:
        result = await deliver_once(config, event)
        assert result.outcome is Outcome.DELIVERED, result
    ids = [mail.header("Message-ID") for mail in rx.messages]
    assert ids[0] == ids[1]
    assert len({ids[0], ids[2], ids[3]}) == 3
    assert all(i is not None and email.utils.unquote(i).count("@") == 1 for i in ids)


@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(st.text())
def test_any_subject_round_trips(text: str) -> None:
    subject = demail.one_line(text.encode("utf-8", "replace").decode("utf-8"))
    header = f"Subject: {demail.encode_subject(subject)}".encode("ascii")
    assert all(len(line) <= 78 for line in header.split(b"\r\n"))
    parsed = email.message_from_bytes(header + b"\r\n\r\n", policy=email.policy.default)
    assert str(parsed["Subject"]) == subject


def test_message_id_shapes() -> None:
    assert demail.message_id("e1", "crm", "a@b.example") == "<e1.crm@b.example>"
    odd = demail.message_id("e 1>", "x y", "no-domain")
    assert odd.endswith("@gatewayd.invalid>")
    assert " " not in odd
    assert odd.count(">") == 1


def test_target_and_secrets() -> None:
    config = smtp_config("::1", 587, username="gw", password=PASSWORD)
    assert demail.smtp_target(config, ["a@b", "c@d"]) == "smtp://[::1]:587 to a@b,c@d"
    secrets = demail.smtp_secrets(config)
    assert PASSWORD in secrets
    assert len(secrets) == 4
    assert demail.smtp_secrets(smtp_config()) == []


async def test_smtp_destination_satisfies_the_protocol() -> None:
    destination: Destination = SmtpDestination(email_dest(smtp=smtp_config()))
    assert destination.name == "mail"  # (and mypy checks the assignment above)
    await destination.aclose()


def test_needs_smtp_settings() -> None:
    with pytest.raises(ValueError, match="no SMTP settings"):
        SmtpDestination(email_dest())
    # Settings passed beside a hand-built record (Config.smtp) are used.
    destination = SmtpDestination(email_dest(), smtp=smtp_config("mx.example", 2525))
    assert destination.target == "smtp://mx.example:2525 to ops@example.com"


async def test_unknown_placeholder_is_permanent() -> None:
    config = email_dest(smtp=smtp_config(port=free_port()), subject="{{nope}}")
    result = await deliver_once(config)
    assert result.outcome is Outcome.PERMANENT
    assert "cannot build message" in result.error
    assert "nope" in result.error


@pytest.mark.parametrize("offered", [True, False])
async def test_non_ascii_addresses_need_smtputf8(offered: bool) -> None:
    to = ("用户@例子.example", "ops@example.com")
    async with open_smtp_server(smtputf8=offered) as srv:
        result = await deliver_once(email_dest(srv, to=to), make_mo(text="ünï"))
    if offered:
        assert result.outcome is Outcome.DELIVERED, result
        [mail] = srv.messages
        assert mail.rcpt_tos == to
        assert mail.header("To") == ", ".join(to)
        assert mail.text() == "ünï\n"
    else:
        assert result.outcome is Outcome.RETRY, result
        assert "SMTPUTF8" in result.error
        assert srv.messages == []


# --- STARTTLS and AUTH ----------------------------------------------------------------------


@pytest.mark.parametrize("mechanism", ["LOGIN", "PLAIN"])
async def test_starttls_and_auth(tls_files: tuple[Path, Path], mechanism: str) -> None:
    cert, key = tls_files
    async with open_smtp_server(
        tls=server_tls_context(cert, key), users={"gw": PASSWORD}, mechanisms=(mechanism,)
    ) as server:
        smtp = smtp_config(
            server.host, server.port, starttls=True, username="gw", password=PASSWORD
        )
        result = await deliver_once(email_dest(smtp=smtp), ssl_context=client_tls_context(cert))
    assert result.outcome is Outcome.DELIVERED, result
    assert server.auth_attempts == [(mechanism, "gw")]
    [mail] = server.messages
    assert mail.tls
    assert mail.login == "gw"
    assert mail.text() == "Hello\n"
    assert_no_secret(result, PASSWORD)


async def test_wrong_password_is_permanent_and_not_shown(tls_files: tuple[Path, Path]) -> None:
    cert, key = tls_files
    async with open_smtp_server(tls=server_tls_context(cert, key), users={"gw": "right"}) as srv:
        smtp = smtp_config(srv.host, srv.port, starttls=True, username="gw", password=PASSWORD)
        result = await deliver_once(email_dest(smtp=smtp), ssl_context=client_tls_context(cert))
    assert result.outcome is Outcome.PERMANENT, result
    assert result.status_code == 535
    assert "AUTH" in result.error
    assert srv.messages == []
    assert_no_secret(result, PASSWORD, *demail.smtp_secrets(smtp))


async def test_untrusted_certificate_is_retried(tls_files: tuple[Path, Path]) -> None:
    cert, key = tls_files
    async with open_smtp_server(tls=server_tls_context(cert, key), users={"gw": PASSWORD}) as srv:
        smtp = smtp_config(srv.host, srv.port, starttls=True, username="gw", password=PASSWORD)
        # The default context: the system's trust store, which does not know our test CA.
        result = await deliver_once(email_dest(smtp=smtp))
    assert result.outcome is Outcome.RETRY, result
    assert "certificate" in result.error.lower()
    assert "STARTTLS" in result.error
    assert srv.messages == []
    assert srv.auth_attempts == []  # the password was never sent
    assert_no_secret(result, PASSWORD)


async def test_starttls_not_offered_is_retried(rx: SmtpServer) -> None:
    smtp = smtp_config(rx.host, rx.port, starttls=True)
    result = await deliver_once(email_dest(smtp=smtp))
    assert result.outcome is Outcome.RETRY, result
    assert "STARTTLS" in result.error
    assert rx.messages == []


async def test_server_requiring_starttls_refuses_plain_mail(tls_files: tuple[Path, Path]) -> None:
    cert, key = tls_files
    async with open_smtp_server(tls=server_tls_context(cert, key)) as srv:
        result = await deliver_once(email_dest(smtp=smtp_config(srv.host, srv.port)))
    assert result.outcome is Outcome.PERMANENT, result  # 530: a configuration error
    assert result.status_code == 530
    assert srv.messages == []


# --- replies -> outcomes ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "outcome"),
    [
        ("450 4.2.1 mailbox busy", Outcome.RETRY),
        ("452 4.5.3 too many recipients", Outcome.RETRY),
        ("550 5.1.1 no such user", Outcome.PERMANENT),
        ("553 5.1.3 bad address", Outcome.PERMANENT),
    ],
)
async def test_rcpt_reply(rx: SmtpServer, reply: str, outcome: Outcome) -> None:
    rx.rcpt_replies["ops@example.com"] = reply
    result = await deliver_once(email_dest(rx))
    assert result.outcome is outcome, result
    code, text = reply.split(" ", 1)
    assert result.status_code == int(code)
    assert result.response_excerpt == text
    assert f"SMTP {code} at RCPT" in result.error
    assert "ops@example.com" in result.error
    assert rx.messages == []


async def test_partial_refusal_all_permanent(rx: SmtpServer) -> None:
    rx.rcpt_replies["gone@example.com"] = "550 5.1.1 no such user"
    config = email_dest(rx, to=("ops@example.com", "gone@example.com"))
    result = await deliver_once(config)
    assert result.outcome is Outcome.PERMANENT, result
    assert result.status_code == 550
    assert "gone@example.com 550" in result.error
    assert "accepted for ops@example.com" in result.error
    [mail] = rx.messages  # the others got it
    assert mail.rcpt_tos == ("ops@example.com",)


async def test_partial_refusal_with_a_temporary_one_is_retried(rx: SmtpServer) -> None:
    rx.rcpt_replies["gone@example.com"] = "550 5.1.1 no such user"
    rx.rcpt_replies["busy@example.com"] = "451 4.3.0 try later"
    config = email_dest(rx, to=("gone@example.com", "ops@example.com", "busy@example.com"))
    result = await deliver_once(config)
    assert result.outcome is Outcome.RETRY, result
    assert result.status_code == 451
    assert result.response_excerpt == "4.3.0 try later"


async def test_all_refused_mixed_is_retried(rx: SmtpServer) -> None:
    rx.rcpt_replies["gone@example.com"] = "550 5.1.1 no such user"
    rx.rcpt_replies["ops@example.com"] = "450 4.2.1 busy"
    config = email_dest(rx, to=("gone@example.com", "ops@example.com"))
    result = await deliver_once(config)
    assert result.outcome is Outcome.RETRY, result
    assert result.status_code == 450
    assert rx.messages == []


@pytest.mark.parametrize(
    ("reply", "outcome"),
    [("451 4.3.0 queue full", Outcome.RETRY), ("554 5.6.0 content rejected", Outcome.PERMANENT)],
)
async def test_data_reply(rx: SmtpServer, reply: str, outcome: Outcome) -> None:
    rx.data_reply = reply
    result = await deliver_once(email_dest(rx))
    assert result.outcome is outcome, result
    assert result.status_code == int(reply[:3])
    assert result.response_excerpt == reply[4:]
    assert result.error.startswith(f"SMTP {reply[:3]} at DATA")


@pytest.mark.parametrize(
    ("reply", "outcome"),
    [("452 4.3.1 out of storage", Outcome.RETRY), ("553 5.7.1 sender rejected", Outcome.PERMANENT)],
)
async def test_mail_reply(rx: SmtpServer, reply: str, outcome: Outcome) -> None:
    rx.mail_reply = reply
    result = await deliver_once(email_dest(rx))
    assert result.outcome is outcome, result
    assert result.status_code == int(reply[:3])
    assert "at MAIL" in result.error


async def test_password_in_a_reply_is_redacted(tls_files: tuple[Path, Path]) -> None:
    cert, key = tls_files
    async with open_smtp_server(tls=server_tls_context(cert, key), users={"gw": PASSWORD}) as srv:
        srv.rcpt_replies["ops@example.com"] = f"550 5.7.1 why send {PASSWORD} here"
        smtp = smtp_config(srv.host, srv.port, starttls=True, username="gw", password=PASSWORD)
        result = await deliver_once(email_dest(smtp=smtp), ssl_context=client_tls_context(cert))
    assert result.outcome is Outcome.PERMANENT
    assert "<redacted>" in result.error
    assert "<redacted>" in result.response_excerpt
    assert_no_secret(result, PASSWORD)


# --- no answer -------------------------------------------------------------------------------


async def test_connection_refused_is_retried() -> None:
    port = free_port()  # nothing listens there
    smtp = smtp_config(port=port, username="gw", password=PASSWORD)
    result = await deliver_once(email_dest(smtp=smtp))
    assert result.outcome is Outcome.RETRY, result
    assert result.status_code is None
    assert "refused" in result.error.lower()
    assert "connect" in result.error
    assert result.target == f"smtp://127.0.0.1:{port} to ops@example.com"
    assert_no_secret(result, PASSWORD)


async def test_silent_server_times_out() -> None:
    async with open_silent_server() as port:
        result = await deliver_once(email_dest(smtp=smtp_config(port=port)), timeout=0.3)
    assert result.outcome is Outcome.RETRY, result
    assert "timeout" in result.error
    assert "connect" in result.error  # still waiting for the greeting
    assert result.latency_ms < 5000


async def test_cancelled_attempt_releases_its_thread(rx: SmtpServer) -> None:
    limiter = trio.CapacityLimiter(1)
    async with open_silent_server() as port:
        stuck = SmtpDestination(
            email_dest(smtp=smtp_config(port=port)), limiter=limiter, timeout=60.0
        )
        with trio.move_on_after(0.2) as scope:
            await stuck.deliver(make_mo(), JOB)
        assert scope.cancelled_caught
        # The shared limiter's only token comes back when the abandoned thread ends: it
        # must end now (its socket is shut down), not after its 60 s socket timeout.
        good = SmtpDestination(email_dest(rx), limiter=limiter)
        with trio.fail_after(10):
            result = await good.deliver(make_mo(), JOB)
    assert result.outcome is Outcome.DELIVERED, result
    assert len(rx.messages) == 1


async def test_rcpt_421_is_retried(rx: SmtpServer) -> None:
    rx.rcpt_replies["ops@example.com"] = "421 4.3.2 shutting down"
    result = await deliver_once(email_dest(rx))
    assert result.outcome is Outcome.RETRY, result
    assert result.status_code == 421


@pytest.mark.parametrize(
    ("greeting", "outcome"),
    [
        (b"421 4.3.2 busy, come back later\r\n", Outcome.RETRY),
        (b"554 5.3.2 no SMTP service here\r\n", Outcome.PERMANENT),
    ],
)
async def test_greeting_refusal(greeting: bytes, outcome: Outcome) -> None:
    async with open_scripted_server([greeting]) as port:
        result = await deliver_once(email_dest(smtp=smtp_config(port=port)))
    assert result.outcome is outcome, result
    assert result.status_code == int(greeting[:3])
    assert result.error.startswith(f"SMTP {greeting[:3].decode()} at connect")


async def test_dropped_connection_is_retried() -> None:
    replies = [b"220 mx ESMTP\r\n", b"250 mx\r\n", b"250 ok\r\n"]  # hangs up at RCPT
    async with open_scripted_server(replies) as port:
        result = await deliver_once(email_dest(smtp=smtp_config(port=port)))
    assert result.outcome is Outcome.RETRY, result
    assert result.status_code is None
    assert "SMTPServerDisconnected" in result.error
    assert "during RCPT" in result.error


def test_tls_context_helper_verifies(tls_files: tuple[Path, Path]) -> None:
    context = client_tls_context(tls_files[0])
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
