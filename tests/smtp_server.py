"""A real SMTP server for tests: aiosmtpd on loopback, recording what it accepts.

aiosmtpd's ``Controller`` runs an asyncio loop in a thread, so it works beside trio; it
cannot bind port 0 (it needs the port up front), so :func:`free_port` picks one first.

Options: STARTTLS (``tls=``, an ``ssl.SSLContext`` for the server side; when given,
STARTTLS is required before MAIL), AUTH (``users={"name": "password"}``: LOGIN and PLAIN,
offered only after STARTTLS unless there is no TLS at all), and chosen failure replies
(``rcpt_replies`` per address, ``mail_reply``, ``data_reply``), which may be changed while
the server runs.

:func:`make_tls_files` makes a self-signed certificate with the ``openssl`` CLI (the
``cryptography`` package is not installed here), and :func:`open_silent_server` accepts
connections and never says a word (for timeouts); :func:`open_scripted_server` plays
fixed replies and hangs up (greeting failures, dropped connections).
"""

from __future__ import annotations

import contextlib
import email
import email.message
import email.policy
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

HOST = "127.0.0.1"


def free_port(host: str = HOST) -> int:
    """A TCP port that was free a moment ago (bind to port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
    return port


@attrs.frozen(kw_only=True)
class ReceivedMail:
    """One message the server accepted."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    content: bytes  # as received (CRLF line ends, dots unstuffed)
    tls: bool  # the transaction ran over TLS (after STARTTLS)
    login: str | None  # the authenticated user, if any

    @property
    def message(self) -> email.message.EmailMessage:
        parsed = email.message_from_bytes(self.content, policy=email.policy.default)
        assert isinstance(parsed, email.message.EmailMessage)
        return parsed

    def header(self, name: str) -> str | None:
        value = self.message[name]
        return None if value is None else str(value)

    def text(self) -> str:
        """The decoded plain-text body, CRLF read as LF (as a mail client shows it)."""
        body = self.message.get_body(("plain",))
        assert body is not None
        content = body.get_content()
        assert isinstance(content, str)
        return content.replace("\r\n", "\n")


class SmtpServer:
    """The handler and the recordings; use :func:`open_smtp_server` to run one."""

    def __init__(self, *, users: Mapping[str, str] | None = None) -> None:
        self.host = HOST
        self.port = 0
        self.users = dict(users or {})
        self.messages: list[ReceivedMail] = []
        self.auth_attempts: list[tuple[str, str]] = []  # (mechanism, login)
        self.mail_reply: str | None = None  # e.g. "451 4.3.0 try later"
        self.rcpt_replies: dict[str, str] = {}  # address -> reply instead of 250
        self.data_reply: str | None = None  # reply to the end of DATA instead of 250
        self._lock = threading.Lock()
        self._queued = 0

    # --- aiosmtpd hooks (run in the server's thread) ------------------------------------

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        if self.mail_reply is not None:
            return self.mail_reply
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        reply = self.rcpt_replies.get(address)
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.data_reply is not None:
            return self.data_reply
        content = envelope.original_content or b""
        auth: Any = session.auth_data
        login = auth.login.decode() if isinstance(auth, LoginPassword) else None
        with self._lock:
            self._queued += 1
            queue_id = f"Q{self._queued:04d}"
            self.messages.append(
                ReceivedMail(
                    mail_from=envelope.mail_from or "",
                    rcpt_tos=tuple(envelope.rcpt_tos),
                    content=content,
                    tls=session.ssl is not None,
                    login=login,
                )
            )
        return f"250 2.0.0 Ok: queued as {queue_id}"

    def authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        if not isinstance(data, LoginPassword):
            return AuthResult(success=False, handled=False)
        login, password = data.login.decode(), data.password.decode()
        self.auth_attempts.append((mechanism, login))
        ok = login in self.users and self.users[login] == password
        return AuthResult(success=ok, handled=False, auth_data=data)


@asynccontextmanager
async def open_smtp_server(
    *,
    tls: ssl.SSLContext | None = None,
    users: Mapping[str, str] | None = None,
    mechanisms: tuple[str, ...] = ("LOGIN", "PLAIN"),
    smtputf8: bool = False,
) -> AsyncIterator[SmtpServer]:
    """Run an :class:`SmtpServer` on loopback for the ``async with`` block.

    ``mechanisms``: the AUTH mechanisms offered (of aiosmtpd's LOGIN and PLAIN);
    ``smtputf8``: offer SMTPUTF8 (RFC 6531: non-ASCII addresses).
    """
    handler = SmtpServer(users=users)
    kwargs: dict[str, Any] = {"enable_SMTPUTF8": smtputf8}
    if tls is not None:
        kwargs.update(tls_context=tls, require_starttls=True)
    if users is not None:
        kwargs.update(
            authenticator=handler.authenticate,
            auth_required=True,
            auth_require_tls=tls is not None,
            auth_exclude_mechanism=[m for m in ("LOGIN", "PLAIN") if m not in mechanisms],
        )
    controller: Controller | None = None
    for _ in range(5):  # another process may take the port between free_port and bind
        port = free_port()
        candidate = Controller(handler, hostname=HOST, port=port, ready_timeout=10.0, **kwargs)
        try:
            await trio.to_thread.run_sync(candidate.start)
        except OSError:
            with contextlib.suppress(Exception):
                candidate.loop.close()
            continue
        controller = candidate
        handler.port = port
        break
    assert controller is not None, "no free port for the SMTP server"
    try:
        yield handler
    finally:
        await trio.to_thread.run_sync(controller.stop)


@asynccontextmanager
async def open_silent_server() -> AsyncIterator[int]:
    """A loopback listener that accepts connections and never answers; yields its port."""
    listeners = await trio.open_tcp_listeners(0, host=HOST)
    port: int = listeners[0].socket.getsockname()[1]
    held: list[trio.SocketStream] = []

    async def accept_forever() -> None:
        while True:
            stream = await listeners[0].accept()
            held.append(stream)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(accept_forever)
            yield port
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            for stream in held:
                await stream.aclose()
            for listener in listeners:
                await listener.aclose()


@asynccontextmanager
async def open_scripted_server(replies: list[bytes]) -> AsyncIterator[int]:
    """A loopback peer that sends ``replies[0]`` on connect, then the next reply for each
    line it receives, and hangs up when they run out; yields its port."""

    async def serve(stream: trio.SocketStream) -> None:
        async with stream:
            pending = list(replies)
            buffer = b""
            await stream.send_all(pending.pop(0))
            while pending:
                chunk = await stream.receive_some()
                if not chunk:
                    return
                buffer += chunk
                while b"\r\n" in buffer and pending:
                    _, buffer = buffer.split(b"\r\n", 1)
                    await stream.send_all(pending.pop(0))

    listeners = await trio.open_tcp_listeners(0, host=HOST)
    port: int = listeners[0].socket.getsockname()[1]
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, serve, listeners)
            yield port
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            for listener in listeners:
                await listener.aclose()


def make_tls_files(directory: Path, hostname: str = "localhost") -> tuple[Path, Path]:
    """A self-signed certificate and key for ``hostname`` (and 127.0.0.1), via openssl."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    cert, key = directory / "cert.pem", directory / "key.pem"
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
            str(key),
            "-out",
            str(cert),
            "-days",
            "2",
            "-subj",
            f"/CN={hostname}",
            "-addext",
            f"subjectAltName=DNS:{hostname},IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def server_tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


def client_tls_context(cert: Path) -> ssl.SSLContext:
    """Trusts exactly the test certificate; verifies it and the host name."""
    return ssl.create_default_context(cafile=str(cert))


__all__ = [
    "ReceivedMail",
    "SmtpServer",
    "client_tls_context",
    "free_port",
    "make_tls_files",
    "open_scripted_server",
    "open_silent_server",
    "open_smtp_server",
    "server_tls_context",
]
