"""``type: email`` destinations: one plain-text message per event, sent over SMTP.

Each attempt renders the ``subject`` and ``body`` templates with the event's placeholders
(the same names as URL templates; values are inserted as they are: plain text needs no
escaping, and the MIME encoder makes any text safe to send; the subject is one line, so
control characters in it become spaces), builds a UTF-8 ``text/plain`` message and runs
one SMTP transaction. What happened becomes an :class:`AttemptResult`,
never an exception. The outcome rules (issue 5):

- the message accepted at the end of DATA (250) -> DELIVERED;
- a 5xx reply (greeting, EHLO, AUTH, MAIL, DATA) -> PERMANENT: dead-letter at once;
- a 4xx reply, a dropped connection, a connection or TLS error, a timeout, or a server
  that lacks an extension we need (STARTTLS, AUTH, SMTPUTF8) -> RETRY. Only an explicit
  5xx from the server is taken as "never": everything else may heal within the schedule;
- recipients refused at RCPT: if every refusal is a 5xx -> PERMANENT, otherwise RETRY
  with the first temporary refusal's code. That holds whether or not the other recipients
  accepted the message: a retry sends it to all of them again, and they de-duplicate by
  ``Message-ID`` (delivery is at-least-once);
- a message we cannot build (unknown placeholder) -> PERMANENT.

``status_code`` is the deciding SMTP reply code and ``response_excerpt`` its text (the
DATA reply, usually naming the queue id, on success). ``target`` is
``smtp://host:port to a@b,c@d``. Errors never carry the password, nor its base64 forms
as sent by AUTH PLAIN and LOGIN.

Receivers can de-duplicate: ``Message-ID`` is derived from the event id and the
destination name (the same for every attempt), and ``X-Gatewayd-Event-Id`` carries the
event id itself.

I/O: no trio-native SMTP client is well kept, so :mod:`smtplib` runs in a worker thread
(``trio.to_thread.run_sync``) under a :class:`trio.CapacityLimiter` (``STACK.md``), one
per destination unless one is shared. ``timeout`` bounds the whole attempt (waiting for
the limiter included) and every socket operation. When the deadline passes or the task is
cancelled, the thread is abandoned and its socket shut down so it ends at once; the
limiter's token is only returned when the thread has finished, so abandoned threads stay
counted. An abandoned transaction may still have been accepted: that is the at-least-once
case above.

Exception map (all caught in :meth:`SmtpDestination.send`)::

    smtplib.SMTPResponseException (code)  4xx -> RETRY, 5xx -> PERMANENT, other -> RETRY
                                          "SMTP 535 at AUTH: 5.7.8 Authentication failed"
    total deadline                        -> RETRY  "timeout: no answer within 30s during DATA"
    TimeoutError (a socket operation)     -> RETRY  "timeout during RCPT: ..."
    smtplib.SMTPServerDisconnected,       -> RETRY  "SMTPServerDisconnected: ... (during MAIL)"
      SMTPNotSupportedError, OSError
      (refused, DNS, ssl.SSLError)
    payloads.UnknownPlaceholder           -> PERMANENT "cannot build message: ..."
"""

from __future__ import annotations

import base64
import contextlib
import email.message
import email.policy
import email.utils
import hashlib
import re
import smtplib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Mapping

import attrs
import trio

from gatewayd.config import EmailDestination, SmtpConfig
from gatewayd.destinations.base import AttemptResult, Job, Outcome
from gatewayd.destinations.http import redact
from gatewayd.events import Event
from gatewayd.payloads import UnknownPlaceholder, placeholders, render

EXCERPT_CHARS = 1024  # response_excerpt bound
ERROR_REPLY_CHARS = 200  # how much of a reply's first line the error repeats
DEFAULT_TIMEOUT = 30.0  # seconds, for the whole attempt (EmailDestination has no field)

WallClock = Callable[[], float]

# Control characters (and Unicode line breaks) have no place in a one-line header.
_HEADER_BREAKS = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]+")
# Control characters other than tab and newline: send the body base64 so they arrive.
_BODY_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_ID_SAFE = re.compile(r"[A-Za-z0-9_-]+")  # fits a msg-id's left part as it is
_FOLD_WIDTH = 76  # header lines stay under 78 characters (RFC 5322 §2.1.1)
_WORD_BYTES = 42  # per encoded word: "Subject: " + "=?utf-8?b?" + 56 + "?=" = 77 characters
_DOMAIN = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?")


# --- the message ----------------------------------------------------------------------------


def one_line(text: str) -> str:
    """``text`` as a header value: every run of control characters becomes one space."""
    return _HEADER_BREAKS.sub(" ", text).strip()


def normalize_newlines(text: str) -> str:
    """CRLF and lone CR become LF (the generator writes CRLF on the wire)."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def encode_subject(subject: str) -> str:
    """The ``Subject`` field body as it goes on the wire: folded, ASCII, decodable exactly.

    The email package decodes whatever looks like an encoded word in a value it is given
    (an SMS saying ``=?utf-8?q?x?=`` would arrive as ``x``) and folds some values oddly
    (a long one starting with ``[`` gains a leading space), so we write the field ourselves:
    printable ASCII is folded before spaces; anything else becomes UTF-8 base64 encoded
    words (RFC 2047) of whole characters, one per line, which readers join without the
    folding whitespace between them (RFC 2047 §6.2).
    """
    if all(" " <= c <= "~" for c in subject) and "=?" not in subject:
        folded = _fold_before_spaces(subject)
        if folded is not None:
            return folded
    words: list[str] = []
    chunk = ""
    for char in subject:
        if len((chunk + char).encode("utf-8")) > _WORD_BYTES:
            words.append(chunk)
            chunk = ""
        chunk += char
    words.append(chunk)
    return "\r\n ".join(
        "=?utf-8?b?" + base64.b64encode(word.encode("utf-8")).decode("ascii") + "?="
        for word in words
    )


def _fold_before_spaces(text: str) -> str | None:
    lines: list[str] = []
    line = ""
    budget = _FOLD_WIDTH - len("Subject: ")
    for token in re.findall(r" *[^ ]+", text):  # (one_line stripped the ends)
        if line and len(line) + len(token) > budget:
            lines.append(line)
            line, budget = "", _FOLD_WIDTH
        if not line and len(token) > budget:
            return None  # a word too long for a line: encoded words can split it
        line += token
    lines.append(line)
    return "\r\n".join(lines)


def _id_part(value: str) -> str:
    return value if _ID_SAFE.fullmatch(value) else hashlib.sha256(value.encode()).hexdigest()[:16]


def message_id(event_id: str, destination: str, sender: str) -> str:
    """``<event.destination@sender-domain>``: the same for every attempt of one job."""
    domain = sender.rpartition("@")[2]
    if "@" not in sender or not _DOMAIN.fullmatch(domain):
        domain = "gatewayd.invalid"
    return f"<{_id_part(event_id)}.{_id_part(destination)}@{domain}>"


def build_message(
    config: EmailDestination,
    smtp: SmtpConfig,
    event: Event,
    extra: Mapping[str, str] | None = None,
    *,
    now: float,
) -> email.message.EmailMessage:
    """The message that delivers ``event`` to ``config`` (``now``: Unix time, for Date)."""
    values = placeholders(event, extra)
    subject = one_line(render(config.subject, values))
    body = normalize_newlines(render(config.body, values))
    message = email.message.EmailMessage(policy=email.policy.SMTP)
    message["From"] = smtp.from_
    message["To"] = ", ".join(config.to)
    message.set_raw("Subject", encode_subject(subject))  # (not parsed: see encode_subject)
    message["Date"] = email.utils.formatdate(now, usegmt=True)
    message["Message-ID"] = message_id(event.id, config.name, smtp.from_)
    message["Auto-Submitted"] = "auto-generated"  # RFC 3834: no auto-replies to us
    message["X-Gatewayd-Event-Id"] = one_line(event.id)
    message["X-Gatewayd-Event-Type"] = event.type
    if not body.endswith("\n"):
        body += "\n"
    cte = "base64" if _BODY_CONTROLS.search(body) else None
    message.set_content(body, subtype="plain", charset="utf-8", cte=cte)
    return message


def _needs_smtputf8(addresses: Iterable[str]) -> bool:
    return any(not address.isascii() for address in addresses)


def message_bytes(message: email.message.EmailMessage, *, smtputf8: bool = False) -> bytes:
    """The message as sent: CRLF line ends; UTF-8 headers only with SMTPUTF8."""
    policy = email.policy.SMTPUTF8 if smtputf8 else email.policy.SMTP
    return message.as_bytes(policy=policy)


# --- the SMTP transaction (in a worker thread) ------------------------------------------


@attrs.frozen(kw_only=True)
class Reply:
    """One SMTP reply."""

    code: int
    text: str


def _text(reply: bytes | str) -> str:
    return reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply


@attrs.frozen(kw_only=True)
class _Transcript:
    """How a transaction that got to the end of its replies went."""

    stage: str  # the last command sent
    reply: Reply | None  # the deciding reply (DATA's on success), None: all RCPT refused
    accepted: bool  # the message was accepted at the end of DATA
    refused: Mapping[str, Reply] = attrs.field(factory=dict)  # recipient -> RCPT reply


class _Client(smtplib.SMTP):
    """``smtplib.SMTP`` created unconnected but knowing the host name for STARTTLS.

    smtplib records the name that ``starttls`` verifies the certificate against (and sends
    as SNI) only when its constructor connects; we connect later, after registering the
    client so that :meth:`_Session.abort` can reach its socket.
    """

    def __init__(self, host: str, *, timeout: float, local_hostname: str | None) -> None:
        super().__init__(timeout=timeout, local_hostname=local_hostname)
        self._host = host


class _Aborted(Exception):
    """The attempt was given up from the trio side (the thread's result is discarded)."""


class _Session:
    """One SMTP conversation: :meth:`run` in a worker thread, :meth:`abort` from trio."""

    def __init__(
        self,
        smtp: SmtpConfig,
        *,
        context: ssl.SSLContext,
        timeout: float,
        local_hostname: str | None,
    ) -> None:
        self.smtp = smtp
        self.context = context
        self.timeout = timeout
        self.local_hostname = local_hostname
        self.stage = "waiting for a worker thread"  # (the limiter may be full)
        self._client: smtplib.SMTP | None = None
        self._aborted = False
        self._lock = threading.Lock()

    def _enter(self, stage: str) -> None:
        if self._aborted:
            raise _Aborted(stage)
        self.stage = stage

    def abort(self) -> None:
        """Make a blocked :meth:`run` fail now: shut its socket down (thread-safe)."""
        with self._lock:
            self._aborted = True
            client = self._client
        sock = getattr(client, "sock", None)
        if isinstance(sock, socket.socket):
            # The plain socket's shutdown (an SSLSocket's own would drop its state under the
            # worker's feet): the blocked recv returns and the worker unwinds.
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)

    def run(self, sender: str, recipients: tuple[str, ...], data: bytes) -> _Transcript:
        smtp = self.smtp
        self._enter("connect")
        client = _Client(smtp.host, timeout=self.timeout, local_hostname=self.local_hostname)
        self.local_hostname = client.local_hostname  # (getfqdn can be slow: computed once)
        with self._lock:
            if self._aborted:
                raise _Aborted(self.stage)
            self._client = client
        try:
            code, text = client.connect(smtp.host, smtp.port)
            if code != 220:
                raise smtplib.SMTPConnectError(code, text)
            self._enter("EHLO")
            client.ehlo_or_helo_if_needed()
            if smtp.starttls:
                self._enter("STARTTLS")
                client.starttls(context=self.context)
                self._enter("EHLO")
                client.ehlo_or_helo_if_needed()
            if smtp.username:
                self._enter("AUTH")
                client.login(smtp.username, smtp.password or "")
            self._enter("MAIL")
            options = ["SMTPUTF8"] if _needs_smtputf8((sender, *recipients)) else []
            code, text = client.mail(sender, options)
            if code != 250:
                return self._done(
                    client,
                    _Transcript(
                        stage="MAIL", reply=Reply(code=code, text=_text(text)), accepted=False
                    ),
                )
            refused: dict[str, Reply] = {}
            for recipient in recipients:
                self._enter("RCPT")
                code, text = client.rcpt(recipient)
                if code not in (250, 251):
                    refused[recipient] = Reply(code=code, text=_text(text))
            if len(refused) == len(recipients):
                return self._done(
                    client, _Transcript(stage="RCPT", reply=None, accepted=False, refused=refused)
                )
            self._enter("DATA")
            code, text = client.data(data)
            reply = Reply(code=code, text=_text(text))
            if code != 250:
                return self._done(
                    client, _Transcript(stage="DATA", reply=reply, accepted=False, refused=refused)
                )
            # Accepted: whatever happens from here on does not change the outcome.
            return self._done(
                client, _Transcript(stage="DATA", reply=reply, accepted=True, refused=refused)
            )
        finally:
            client.close()

    def _done(self, client: smtplib.SMTP, transcript: _Transcript) -> _Transcript:
        if not self._aborted:
            with contextlib.suppress(smtplib.SMTPException, OSError):
                client.quit()
        return transcript


# --- judging ----------------------------------------------------------------------------


def _reply_outcome(code: int) -> Outcome:
    return Outcome.PERMANENT if 500 <= code < 600 else Outcome.RETRY


def _first_line(text: str) -> str:
    line = text.splitlines()[0] if text else ""
    return line[:ERROR_REPLY_CHARS]


def _describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    cause = exc.__cause__ or exc.__context__
    if cause is not None and str(cause) and str(cause) not in text:
        text += f" ({type(cause).__name__}: {cause})"
    return text


def _format_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def smtp_target(smtp: SmtpConfig, to: Iterable[str]) -> str:
    """``smtp://host:port to a@b,c@d`` (no credentials)."""
    return f"smtp://{_format_host(smtp.host)}:{smtp.port} to {','.join(to)}"


def smtp_secrets(smtp: SmtpConfig) -> list[str]:
    """The password and the base64 forms AUTH PLAIN and AUTH LOGIN put on the wire."""
    if not smtp.password:
        return []
    password = smtp.password
    user = smtp.username or ""
    forms = [
        password.encode(),
        f"\0{user}\0{password}".encode(),
        f"{user}\0{user}\0{password}".encode(),
    ]
    return [password, *(base64.b64encode(form).decode("ascii") for form in forms)]


# --- the destination --------------------------------------------------------------------


class SmtpDestination:
    """A ``type: email`` destination (implements ``destinations.base.Destination``).

    ``smtp`` overrides ``config.smtp`` (a hand-built record may leave that None: then pass
    ``Config.smtp``). ``ssl_context`` verifies the server for STARTTLS (default: the
    system's trust store, host name checked). ``limiter`` bounds the worker threads (default:
    one of ``config.concurrency`` for this destination alone).
    """

    def __init__(
        self,
        config: EmailDestination,
        *,
        limiter: trio.CapacityLimiter | None = None,
        smtp: SmtpConfig | None = None,
        ssl_context: ssl.SSLContext | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        local_hostname: str | None = None,
        wall_clock: WallClock = time.time,
    ) -> None:
        settings = smtp if smtp is not None else config.smtp
        if settings is None:
            raise ValueError(f"email destination {config.name!r} has no SMTP settings")
        if not config.to:
            raise ValueError(f"email destination {config.name!r} has no recipients")
        self.name = config.name
        self.config = config
        self.smtp = settings
        self.timeout = timeout
        self.target = smtp_target(settings, config.to)
        self._limiter = limiter or trio.CapacityLimiter(max(1, config.concurrency))
        self._context = ssl_context or ssl.create_default_context()
        self._local_hostname = local_hostname
        self._wall_clock = wall_clock
        self._secrets = smtp_secrets(settings)

    def prepare(
        self, event: Event, extra: Mapping[str, str] | None = None
    ) -> email.message.EmailMessage:
        """The message an attempt would send now (``test-destination`` prints it)."""
        return build_message(self.config, self.smtp, event, extra, now=self._wall_clock())

    async def deliver(self, event: Event, job: Job) -> AttemptResult:
        return await self.send(event)

    async def send(self, event: Event, extra: Mapping[str, str] | None = None) -> AttemptResult:
        """One attempt; ``extra`` adds correlation placeholders (custom, units, ...)."""
        start = trio.current_time()

        def result(
            outcome: Outcome, *, reply: Reply | None = None, error: str = ""
        ) -> AttemptResult:
            code = reply.code if reply is not None and reply.code >= 0 else None
            excerpt = reply.text[:EXCERPT_CHARS] if reply is not None else ""
            return AttemptResult(
                outcome=outcome,
                target=self.target,
                status_code=code,
                latency_ms=(trio.current_time() - start) * 1000.0,
                error=redact(error, self._secrets),
                response_excerpt=redact(excerpt, self._secrets),
            )

        try:
            message = self.prepare(event, extra)
            sender, recipients = self.smtp.from_, tuple(self.config.to)
            data = message_bytes(message, smtputf8=_needs_smtputf8((sender, *recipients)))
        except (UnknownPlaceholder, ValueError, UnicodeError) as exc:
            return result(Outcome.PERMANENT, error=f"cannot build message: {_describe(exc)}")

        session = _Session(
            self.smtp,
            context=self._context,
            timeout=self.timeout,
            local_hostname=self._local_hostname,
        )
        finished = False
        try:
            with trio.move_on_after(self.timeout):
                transcript = await trio.to_thread.run_sync(
                    session.run,
                    sender,
                    recipients,
                    data,
                    abandon_on_cancel=True,
                    limiter=self._limiter,
                    thread_name=f"smtp {self.name}",
                )
                finished = True
            self._local_hostname = session.local_hostname
            if not finished:
                return result(
                    Outcome.RETRY,
                    error=f"timeout: no answer within {self.timeout:g}s during {session.stage}",
                )
        except smtplib.SMTPResponseException as exc:
            reply = Reply(code=exc.smtp_code, text=_text(exc.smtp_error))
            return result(
                _reply_outcome(exc.smtp_code),
                reply=reply,
                error=f"SMTP {exc.smtp_code} at {session.stage}: {_first_line(reply.text)}",
            )
        except TimeoutError as exc:
            return result(Outcome.RETRY, error=f"timeout during {session.stage}: {_describe(exc)}")
        except (smtplib.SMTPException, OSError) as exc:
            # SMTPServerDisconnected, SMTPNotSupportedError, refused, DNS, ssl.SSLError ...
            return result(Outcome.RETRY, error=f"{_describe(exc)} (during {session.stage})")
        finally:
            if not finished:
                session.abort()  # timeout, cancellation or an error: let the thread go
        return self._judge(transcript, result)

    def _judge(
        self, transcript: _Transcript, result: Callable[..., AttemptResult]
    ) -> AttemptResult:
        refused = transcript.refused
        refusals = ", ".join(
            f"{rcpt} {reply.code} {_first_line(reply.text)}".rstrip()
            for rcpt, reply in refused.items()
        )
        if transcript.reply is not None and not transcript.accepted:
            # MAIL or DATA answered with something else than 250.
            reply = transcript.reply
            error = f"SMTP {reply.code} at {transcript.stage}: {_first_line(reply.text)}"
            if refused:
                error += f"; recipients refused: {refusals}"
            return result(_reply_outcome(reply.code), reply=reply, error=error)
        if not refused:
            return result(Outcome.DELIVERED, reply=transcript.reply)
        temporary = [reply for reply in refused.values() if not 500 <= reply.code < 600]
        deciding = temporary[0] if temporary else next(iter(refused.values()))
        outcome = Outcome.RETRY if temporary else Outcome.PERMANENT
        error = f"SMTP {deciding.code} at RCPT: recipients refused: {refusals}"
        if transcript.accepted:
            accepted = [rcpt for rcpt in self.config.to if rcpt not in refused]
            error += f" (accepted for {','.join(accepted)})"
        return result(outcome, reply=deciding, error=error)

    async def aclose(self) -> None:
        """Nothing is held between attempts (one connection per attempt)."""


__all__ = [
    "Reply",
    "SmtpDestination",
    "build_message",
    "message_bytes",
    "message_id",
    "normalize_newlines",
    "one_line",
    "smtp_secrets",
    "smtp_target",
]
