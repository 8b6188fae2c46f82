"""``type: device`` destinations: each event becomes one SIP ``MESSAGE`` (RFC 3428).

The request: Request-URI and To = the configured URI; From =
``"<sender>" <sip:<sender>@<our address>>`` with a tag; a fresh Call-ID, ``CSeq: 1
MESSAGE``, a Via branch ``z9hG4bK...`` with ``rport`` (RFC 3581), ``Max-Forwards: 70``,
``Content-Type: text/plain;charset=UTF-8`` and the text as the body (for a receipt, one
short status line). ``X-Event-Id`` carries the event id so a receiver can de-duplicate
(delivery is at-least-once). It goes to ``proxy`` if set (named in a ``Route`` header with
``;lr``: an outbound proxy, §8.1.2), else to the URI's host:port (5060), over UDP
(retransmitted per RFC 3261 §17.1.2) or TCP. No RFC 3263 NAPTR/SRV lookups: A/AAAA only.

Outcome rules (issue 5):

- 2xx -> DELIVERED;
- 401 / 407 -> answered once with digest credentials (``Authorization`` /
  ``Proxy-Authorization``), and the answer to that request is judged by these rules;
- a 401/407 *after* our credentials -> RETRY, not PERMANENT: the issue retries every
  other final on the schedule, like the HTTP destination does for a 401, because a
  wrong password is fixed by a config reload well within the retry window and the next
  attempt then uses the new credentials; the dispatcher dead-letters after the last
  attempt. Each attempt answers at most one challenge, so it never loops. The same for
  a challenge when no credentials are configured;
- any other final (3xx-6xx: 404, 480, 486, 503, ...) -> RETRY, with ``Retry-After``
  (delta-seconds, RFC 3261 §20.33) in ``retry_after``;
- no final response within timer F (32 s), DNS or connection failures -> RETRY;
- what can never work -> PERMANENT: a ``sips:`` URI (needs TLS, which this client does
  not speak), a URI or proxy that does not parse, a challenge with an algorithm we do not
  implement.

``status_code`` is the SIP status of the last final response and ``response_excerpt``
its reason phrase. The password never appears in ``error`` or ``target``.
"""

from __future__ import annotations

import contextlib
import logging
import re
import urllib.parse

import attrs
import trio

from gatewayd import __version__
from gatewayd.config import DeviceDestination
from gatewayd.destinations.base import AttemptResult, Job, Outcome
from gatewayd.destinations.http import redact
from gatewayd.events import DeliveryReceipt, Event, MoMessage
from gatewayd.sip import digest
from gatewayd.sip.driver import (
    Channel,
    NextHop,
    Resolver,
    SipTransportError,
    TransactionResult,
    next_hop,
    open_channel,
    resolve,
    run_transaction,
)
from gatewayd.sip.message import (
    BuildError,
    Headers,
    ParseError,
    Request,
    Response,
    SipUri,
    format_hostport,
    new_branch,
    new_call_id,
    new_tag,
    parse_hostport,
    parse_uri,
    quote_string,
)
from gatewayd.sip.transaction import DEFAULT_TIMERS, Timers

__all__ = ["Exchange", "SipDestination", "message_body", "sender_number"]

log = logging.getLogger("gatewayd.destinations.device")

USER_AGENT = f"gatewayd/{__version__}"
MAX_FORWARDS = 70  # §8.1.1.6
CONTENT_TYPE = "text/plain;charset=UTF-8"
EXCERPT_CHARS = 200
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# §25.1 user = 1*( unreserved / escaped / user-unreserved ); ";" and "?" are left out on
# purpose (legal, but they confuse parsers that split the URI before the "@").
_USER_SAFE = "-_.!~*'()&=+$,/"


def _clean(text: str) -> str:
    """``text`` made encodable as UTF-8: surrogate pairs joined, lone ones replaced."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def sender_number(event: Event) -> str:
    """The number the message is from: ``+`` and digits when international (TON 1)."""
    addr = event.source.addr
    if event.source.ton == 1 and addr.isdigit():
        return "+" + addr
    return addr


def message_body(event: Event) -> str:
    """The MESSAGE body: an MO's text; for a receipt, one short status line."""
    if isinstance(event, MoMessage):
        if event.content != "text":
            return f"[{event.content} message, {len(event.raw)} bytes]"
        return _clean(event.text)
    assert isinstance(event, DeliveryReceipt)
    line = f"Delivery receipt: message {_clean(event.message_id)} {event.status.value}"
    if event.error and event.error.strip("0"):
        line += f" (error {_clean(event.error)})"
    return line


@attrs.frozen(kw_only=True)
class Exchange:
    """What one attempt sent and got back (``test-destination`` prints it)."""

    result: AttemptResult
    transactions: tuple[TransactionResult, ...] = ()


class SipDestination:
    """A ``type: device`` destination (implements ``destinations.base.Destination``)."""

    def __init__(
        self,
        config: DeviceDestination,
        *,
        timers: Timers = DEFAULT_TIMERS,
        resolver: Resolver = resolve,
    ) -> None:
        self.name = config.name
        self.config = config
        self._timers = timers
        self._resolver = resolver
        self._secrets = [s for s in (config.password,) if s]
        self._uri: SipUri | None = None
        self._uri_error = ""
        try:
            self._uri = parse_uri(config.uri)
        except ParseError as exc:
            self._uri_error = f"bad SIP URI: {exc}"
        if self._uri is not None and self._uri.password:
            self._secrets.append(self._uri.password)
            self._secrets.append(urllib.parse.unquote(self._uri.password))
        self.target = self._uri.for_request() if self._uri else self._redact(config.uri)
        # An outbound proxy is a pre-loaded route set of one loose router (§8.1.2): the
        # Request-URI stays the device, a Route header names the proxy.
        self._route: str | None = None
        if config.proxy:
            with contextlib.suppress(ParseError):
                self._route = f"<{_proxy_uri(config.proxy)}>"

    def _redact(self, text: str) -> str:
        return redact(text, self._secrets)

    def build_request(
        self,
        event: Event,
        *,
        local_host: str,
        local_port: int,
        transport: str = "udp",
        branch: str | None = None,
        call_id: str | None = None,
        tag: str | None = None,
    ) -> Request:
        """The MESSAGE for ``event`` as sent from ``local_host:local_port``."""
        if self._uri is None:
            raise BuildError(self._uri_error)
        uri = self._uri.for_request()
        number = sender_number(event)
        user = urllib.parse.quote(number, safe=_USER_SAFE) or "anonymous"
        display = quote_string(_CONTROL.sub(" ", _clean(number)))
        host = format_hostport(local_host)
        via = (
            f"SIP/2.0/{transport.upper()} {format_hostport(local_host, local_port)}"
            f";branch={branch or new_branch()};rport"
        )
        headers = Headers.of(
            [
                ("Via", via),
                ("Max-Forwards", str(MAX_FORWARDS)),
                ("From", f"{display} <sip:{user}@{host}>;tag={tag or new_tag()}"),
                ("To", f"<{uri}>"),
                ("Call-ID", call_id or new_call_id(host)),
                ("CSeq", "1 MESSAGE"),
                ("User-Agent", USER_AGENT),
                ("X-Event-Id", event.id),
                ("Content-Type", CONTENT_TYPE),
            ]
        )
        if self._route is not None:
            headers = headers.with_header("Route", self._route)
        body = message_body(event).encode("utf-8")
        return Request(method="MESSAGE", uri=uri, headers=headers, body=body)

    async def deliver(self, event: Event, job: Job) -> AttemptResult:
        return (await self.exchange(event)).result

    async def exchange(self, event: Event) -> Exchange:
        """One attempt, with every transaction it ran."""
        start = trio.current_time()
        done: list[TransactionResult] = []

        def result(
            outcome: Outcome,
            *,
            error: str = "",
            response: Response | None = None,
            retry_after: float | None = None,
        ) -> Exchange:
            log.debug(
                "sip attempt: %s",
                outcome.value,
                extra={
                    "destination": self.name,
                    "event_id": event.id,
                    "status_code": response.status if response is not None else None,
                    "transmissions": [tx.transmissions for tx in done],
                },
            )
            return Exchange(
                result=AttemptResult(
                    outcome=outcome,
                    target=self.target,
                    status_code=response.status if response is not None else None,
                    latency_ms=(trio.current_time() - start) * 1000.0,
                    error=self._redact(error),
                    response_excerpt=(
                        self._redact(response.reason[:EXCERPT_CHARS]) if response else ""
                    ),
                    retry_after=retry_after,
                ),
                transactions=tuple(done),
            )

        if self._uri is None:
            return result(Outcome.PERMANENT, error=self._uri_error)
        if self._uri.scheme == "sips":
            return result(Outcome.PERMANENT, error="sips: URIs need TLS, which is not supported")
        try:
            hop = next_hop(
                self.config.uri, proxy=self.config.proxy, transport=self.config.transport
            )
        except ParseError as exc:
            return result(Outcome.PERMANENT, error=f"bad proxy or URI: {exc}")

        # Connecting gets the same bound as a transaction (timer F); each transaction is
        # bounded by timer F itself, so an attempt cannot outlive ~3 x 32 s.
        channel: Channel | None = None
        with trio.move_on_after(self._timers.timer_f):
            try:
                channel = await open_channel(hop, resolver=self._resolver)
            except SipTransportError as exc:
                return result(Outcome.RETRY, error=f"{hop}: {exc}")
        if channel is None:
            return result(
                Outcome.RETRY, error=f"{hop}: timeout connecting ({self._timers.timer_f:g}s)"
            )
        async with channel:
            try:
                request = self.build_request(
                    event,
                    local_host=channel.local_host,
                    local_port=channel.local_port,
                    transport=hop.transport,
                )
            except BuildError as exc:
                return result(Outcome.PERMANENT, error=f"cannot build the request: {exc}")
            outcome = await self._run(channel, request, hop, done)
            if isinstance(outcome, str):
                return result(Outcome.RETRY, error=outcome)
            response = outcome
            challenge = digest.challenge_headers(response)
            if challenge is not None:
                if not (self.config.username and self.config.password is not None):
                    return result(
                        Outcome.RETRY,
                        response=response,
                        error=f"SIP {response.status} {response.reason}: "
                        "credentials required but none configured",
                    )
                try:
                    request = digest.authorize(
                        request,
                        response,
                        username=self.config.username,
                        password=self.config.password,
                    )
                except (digest.DigestError, BuildError) as exc:
                    return result(Outcome.PERMANENT, response=response, error=str(exc))
                outcome = await self._run(channel, request, hop, done)
                if isinstance(outcome, str):
                    return result(Outcome.RETRY, error=outcome)
                response = outcome
                if digest.challenge_headers(response) is not None:
                    # Answered once already: the credentials were refused. See the
                    # module docstring for why this is RETRY.
                    return result(
                        Outcome.RETRY,
                        response=response,
                        error=f"SIP {response.status} {response.reason}: credentials rejected",
                    )
        if 200 <= response.status < 300:
            return result(Outcome.DELIVERED, response=response)
        return result(
            Outcome.RETRY,
            response=response,
            error=f"SIP {response.status} {response.reason}".rstrip(),
            retry_after=_retry_after(response),
        )

    async def _run(
        self, channel: Channel, request: Request, hop: NextHop, done: list[TransactionResult]
    ) -> Response | str:
        """Run one transaction: its final response, or the error text."""
        tx = await run_transaction(channel, request, timers=self._timers)
        done.append(tx)
        if tx.response is None:
            return f"{hop}: {tx.error}"
        return tx.response

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


def _proxy_uri(proxy: str) -> str:
    """The configured proxy as a loose-routing ``sip:`` URI (``;lr`` added if missing)."""
    if proxy.lower().startswith(("sip:", "sips:", "<sip")):
        uri = parse_uri(proxy)
    else:
        host, port = parse_hostport(proxy)
        uri = SipUri(scheme="sip", user=None, host=host, port=port)
    if uri.param("lr") is None:
        uri = attrs.evolve(uri, params=(*uri.params, ("lr", "")))
    return uri.for_request()


def _retry_after(response: Response) -> float | None:
    """``Retry-After: 120 (comment);duration=...`` -> 120.0 (RFC 3261 §20.33)."""
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    match = re.match(r"\s*(\d{1,9})", value)
    return float(match.group(1)) if match else None
