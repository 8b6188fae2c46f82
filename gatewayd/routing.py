"""Pure routing: which destinations an event goes to. No I/O, no clock.

MO: the number it was sent to (exact match, ignoring one leading ``+``) → that number's
keyword (``mo.keyword``) → the number's ``incoming`` → ``routes.a2p`` / ``routes.p2p`` by the
message's class. Receipt: the number the reported message was sent *from* (the receipt's
destination address) → its ``delivery`` → ``routes.delivery``.

A list fans out: the result is every name once, in order; each becomes its own job.
An empty result means no destination: the caller decides (store as unrouted, log, count).
"""

from __future__ import annotations

from collections.abc import Iterable

from gatewayd.config import Config, NumberConfig, normalize_number
from gatewayd.events import DeliveryReceipt, MessageClass, MoMessage

__all__ = ["Router", "classify"]


def classify(destination_addr: str, a2p_max_digits: int = 8) -> MessageClass:
    """A2P when the destination has at most ``a2p_max_digits`` digits (a short code or an
    invalid MSISDN), else P2P (seed 002)."""
    digits = normalize_number(destination_addr)
    return MessageClass.A2P if len(digits) <= a2p_max_digits else MessageClass.P2P


def _unique(*groups: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(name for group in groups for name in group))


class Router:
    """Routes events with one config; build a new Router when the config is reloaded."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._numbers: dict[str, NumberConfig] = {
            normalize_number(key): number for key, number in config.numbers.items()
        }

    def number(self, addr: str) -> NumberConfig | None:
        """The configured number for an address, if any."""
        return self._numbers.get(normalize_number(addr))

    def route_mo(self, mo: MoMessage) -> tuple[str, ...]:
        """Destination names for an MO (``mo.message_class`` is already set)."""
        number = self.number(mo.destination.addr)
        if number is not None:
            if mo.keyword:
                by_keyword = number.keywords.get(mo.keyword.upper())
                if by_keyword:
                    return _unique(by_keyword)
            if number.incoming:
                return _unique(number.incoming)
        routes = self.config.routes
        return _unique(routes.a2p if mo.message_class is MessageClass.A2P else routes.p2p)

    def route_receipt(
        self, dlr: DeliveryReceipt, *, message_delivery: Iterable[str] = ()
    ) -> tuple[str, ...]:
        """Destination names for a receipt. ``message_delivery`` is the outbound message's own
        ``delivery`` (when the receipt was correlated to one): it comes first."""
        first = _unique(message_delivery)
        if first:
            return first
        number = self.number(dlr.destination.addr)
        if number is not None and number.delivery:
            return _unique(number.delivery)
        return _unique(self.config.routes.delivery)
