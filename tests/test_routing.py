"""Routing tables: number -> keyword -> incoming -> class fallback; receipts; fan-out."""

from __future__ import annotations

import datetime as dt
import textwrap

import pytest

from gatewayd import config as cf
from gatewayd.events import Address, DeliveryReceipt, MessageClass, MoMessage, ReceiptStatus
from gatewayd.routing import Router, classify

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)

CONFIG = """
carriers:
  acme: {host: h, system_id: gw}
destinations:
  crm: {type: url, url: "https://crm.example.com/in"}
  crm-status: {type: url, url: "https://crm.example.com/status"}
  legacy: {type: url, url: "https://old.example.com/in"}
  audit: {type: url, url: "https://audit.example.com/in"}
  relay: {type: forward, to: "{{to}}", carrier: acme}
  drop: {type: none}
numbers:
  "12345678":
    incoming: crm
    delivery: crm-status
    keywords:
      STOP: [crm, legacy, crm]
      info: audit
  "+4477001":
    incoming: [legacy, audit, legacy]
  "4477002":
    keywords: {JOIN: audit}
routes:
  a2p: [crm, audit]
  p2p: relay
  delivery: audit
"""


@pytest.fixture(scope="module")
def router() -> Router:
    return Router(cf.loads_config(textwrap.dedent(CONFIG), env={}))


def mo(to: str, keyword: str = "", cls: MessageClass | None = None) -> MoMessage:
    return MoMessage(
        id="e1",
        carrier="acme",
        source=Address(addr="447700900123"),
        destination=Address(addr=to),
        text=keyword,
        raw=b"",
        data_coding=0,
        keyword=keyword,
        message_class=cls if cls is not None else classify(to),
        received_at=T0,
    )


def dlr(sent_from: str) -> DeliveryReceipt:
    return DeliveryReceipt(
        id="e2",
        carrier="acme",
        message_id="abc",
        normalized_message_id="abc",
        status=ReceiptStatus.DELIVRD,
        source=Address(addr="447700900123"),  # the handset
        destination=Address(addr=sent_from),  # the number the message was sent from
        received_at=T0,
    )


@pytest.mark.parametrize(
    ("to", "keyword", "expected"),
    [
        # number -> its incoming
        ("12345678", "", ("crm",)),
        ("+12345678", "", ("crm",)),  # a leading + is ignored
        ("12345678", "HELLO", ("crm",)),  # unknown keyword: the number's incoming
        # number -> keyword (case-insensitive), de-duplicated in order
        ("12345678", "STOP", ("crm", "legacy")),
        ("12345678", "stop", ("crm", "legacy")),
        ("12345678", "INFO", ("audit",)),
        # fan-out, de-duplicated, the number written with +
        ("4477001", "", ("legacy", "audit")),
        ("+4477001", "STOP", ("legacy", "audit")),
        # number without incoming: keyword, else the class fallback
        ("4477002", "join", ("audit",)),
        ("4477002", "", ("crm", "audit")),  # 7 digits: A2P
        # no number: class fallback
        ("999", "", ("crm", "audit")),
        ("447700900999", "", ("relay",)),
        ("447700900999", "STOP", ("relay",)),  # keywords belong to numbers
        # no exact match: a prefix or suffix is not the number
        ("1234567", "", ("crm", "audit")),
        ("123456789", "", ("relay",)),
    ],
)
def test_route_mo(router: Router, to: str, keyword: str, expected: tuple[str, ...]) -> None:
    assert router.route_mo(mo(to, keyword)) == expected


def test_class_comes_from_the_message(router: Router) -> None:
    assert router.route_mo(mo("999", cls=MessageClass.P2P)) == ("relay",)
    assert router.route_mo(mo("447700900999", cls=MessageClass.A2P)) == ("crm", "audit")


@pytest.mark.parametrize(
    ("sent_from", "expected"),
    [
        ("12345678", ("crm-status",)),
        ("+12345678", ("crm-status",)),
        ("4477001", ("audit",)),  # a number without delivery: routes.delivery
        ("555", ("audit",)),  # not our number
    ],
)
def test_route_receipt(router: Router, sent_from: str, expected: tuple[str, ...]) -> None:
    assert router.route_receipt(dlr(sent_from)) == expected


def test_receipt_message_delivery_comes_first(router: Router) -> None:
    got = router.route_receipt(dlr("12345678"), message_delivery=["legacy", "legacy", "crm"])
    assert got == ("legacy", "crm")


def test_nothing_configured_routes_nowhere() -> None:
    router = Router(cf.Config())
    assert router.route_mo(mo("12345")) == ()
    assert router.route_mo(mo("447700900123")) == ()
    assert router.route_receipt(dlr("12345")) == ()


def test_hand_built_config() -> None:
    config = cf.Config(
        numbers={"+1555": cf.NumberConfig(number="+1555", incoming=("a", "b"), delivery=("c",))},
        routes=cf.RoutesConfig(a2p=("z",)),
    )
    router = Router(config)
    assert router.number("1555") is config.numbers["+1555"]
    assert router.route_mo(mo("1555")) == ("a", "b")
    assert router.route_receipt(dlr("+1555")) == ("c",)


@pytest.mark.parametrize(
    ("addr", "limit", "cls"),
    [
        ("12345678", 8, MessageClass.A2P),
        ("+12345678", 8, MessageClass.A2P),
        ("123456789", 8, MessageClass.P2P),
        ("12345", 4, MessageClass.P2P),
        ("", 8, MessageClass.A2P),
    ],
)
def test_classify(addr: str, limit: int, cls: MessageClass) -> None:
    assert classify(addr, limit) is cls
