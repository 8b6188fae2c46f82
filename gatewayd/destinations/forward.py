"""``type: forward``: relay an MO as ``submit_sm`` to another number (seed 004's "Forward").

``to``, ``from`` and ``prefix`` are templates over the event's placeholders
(``to: "{{to}}"`` relays a P2P MO to the MSISDN it was sent to; ``from`` defaults to the
original sender; ``prefix: "From {{from}}: "``). Each attempt creates the outbound message
once (its id derived from the job, so a retry finds it and resumes at the first part not
yet submitted) and submits it through the carrier's :class:`~gatewayd.outbound.Submitter`.
Its carrier message ids are stored, so the receipts that come back are correlated to it.

Outcomes: every part accepted -> DELIVERED; a carrier error, throttling that did not
clear, no bound bind -> RETRY on the destination's schedule; something that can never be
sent (a receipt, binary content, a rendered ``to`` that is no number, text too long) ->
PERMANENT.
"""

from __future__ import annotations

import re

from gatewayd.config import ForwardDestination
from gatewayd.destinations.base import AttemptResult, Job, Outcome
from gatewayd.events import Event, MoMessage
from gatewayd.outbound import Outbound, count_parts, forward_message_id
from gatewayd.payloads import UnknownPlaceholder, placeholders, render
from gatewayd.store import StoreError

__all__ = ["SmsForwardDestination"]

_NUMBER = re.compile(r"\+?[0-9]{1,20}")
_ALPHANUMERIC = re.compile(r"[A-Za-z0-9 ]{1,11}")


class SmsForwardDestination:
    """A ``type: forward`` destination (implements ``destinations.base.Destination``)."""

    def __init__(self, config: ForwardDestination, outbound: Outbound) -> None:
        self.name = config.name
        self.config = config
        self._outbound = outbound

    def render(self, event: MoMessage) -> tuple[str, str, str]:
        """(from, to, text) for ``event``. Raises UnknownPlaceholder."""
        values = placeholders(event)
        cfg = self.config
        to = render(cfg.to, values).strip()
        sender = event.source.addr if cfg.from_ is None else render(cfg.from_, values).strip()
        text = render(cfg.prefix, values) + event.text if cfg.prefix else event.text
        return sender, to, text

    async def deliver(self, event: Event, job: Job) -> AttemptResult:
        def permanent(error: str, target: str = "") -> AttemptResult:
            return AttemptResult(outcome=Outcome.PERMANENT, target=target, error=error)

        if not isinstance(event, MoMessage):
            return permanent("only mobile-originated messages can be forwarded")
        if event.content != "text":
            return permanent(f"cannot forward {event.content} content as text")
        try:
            sender, to, text = self.render(event)
        except UnknownPlaceholder as exc:
            return permanent(f"unknown placeholder {exc}")
        target = f"smpp:{self.config.carrier}:{to}"
        if not _NUMBER.fullmatch(to):
            return permanent(f"'to' rendered to {to!r}, which is not a phone number", target)
        if not (_NUMBER.fullmatch(sender) or _ALPHANUMERIC.fullmatch(sender)):
            return permanent(f"'from' rendered to {sender!r}, which is not a sender", target)
        try:
            count_parts(text)
        except ValueError as exc:
            return permanent(str(exc), target)
        message_id = forward_message_id(event.id, job.id)
        try:
            await self._outbound.create_forward(
                message_id=message_id,
                carrier=self.config.carrier,
                from_=sender,
                to=to,
                text=text,
            )
        except StoreError as exc:
            return AttemptResult(outcome=Outcome.RETRY, target=target, error=f"store: {exc}")
        return await self._outbound.submit_message(message_id)

    async def aclose(self) -> None:
        return None
