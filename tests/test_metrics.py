"""``daemon.metrics.render()`` (what ``GET /metrics`` serves), parsed by prometheus_client's
own text parser while messages flow through the whole daemon."""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing
from prometheus_client.parser import text_string_to_metric_families

from gatewayd.smpp import pdu as P
from tests.e2e.helpers import mo_fields
from tests.e2e.test_operations import bound, running

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(body: bytes) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


RECEIPT = (
    b"id:0A1B sub:001 dlvrd:001 submit date:2611220101 done date:2611220102 "
    b"stat:DELIVRD err:000 text:x"
)


async def test_figures_move_as_messages_flow(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with running(tmp_path) as h:
        await bound(h)
        m = h.daemon.metrics
        body, content_type = m.render()
        assert content_type.startswith("text/plain; version=0.0.4")
        before = scrape(body)
        assert value(before, "gatewayd_binds_up", carrier="sim") == 1
        assert value(before, "gatewayd_binds", carrier="sim", state="bound") == 1
        assert value(before, "gatewayd_deliver_sm_received_total", carrier="sim", kind="mo") == 0
        assert ("gatewayd_receipts_total", frozenset({("result", "matched")})) in before
        assert ("gatewayd_receipts_total", frozenset({("result", "unmatched")})) in before

        assert await h.sim.deliver("a", mo_fields(b"hello one")) == P.ESME_ROK
        assert await h.sim.deliver("b", mo_fields(b"hello two")) == P.ESME_ROK
        assert await h.sim.deliver("dlr", mo_fields(RECEIPT, esm=0x04)) == P.ESME_ROK
        part = b"\x05\x00\x03\x09\x03\x01first part "  # 1 of 3: held
        assert await h.sim.deliver("part", mo_fields(part, esm=0x40)) == P.ESME_ROK
        await h.rx.wait_for(3)
        await trio.sleep(m.stats_interval + 1)  # the cached store stats refresh
        after = scrape(m.render()[0])

    assert value(after, "gatewayd_deliver_sm_received_total", carrier="sim", kind="mo") == 2
    assert value(after, "gatewayd_deliver_sm_received_total", carrier="sim", kind="dlr") == 1
    assert value(after, "gatewayd_deliver_sm_acks_total", status="ESME_ROK") == 4
    assert value(after, "gatewayd_attempts_total", destination="crm", outcome="delivered") == 2
    assert value(after, "gatewayd_attempts_total", destination="status", outcome="delivered") == 1
    assert value(after, "gatewayd_delivery_latency_seconds_count", destination="crm") == 2
    assert value(after, "gatewayd_delivery_latency_seconds_sum", destination="crm") >= 0
    assert value(after, "gatewayd_store_commit_seconds_count") > value(
        before, "gatewayd_store_commit_seconds_count"
    )
    # the recorded attempts (and claims) committed relaxed, without an fsync
    assert value(after, "gatewayd_store_relaxed_commits_total") > value(
        before, "gatewayd_store_relaxed_commits_total"
    )
    assert value(after, "gatewayd_jobs", destination="crm", state="delivered") == 2
    assert value(after, "gatewayd_jobs", destination="status", state="delivered") == 1
    assert value(after, "gatewayd_store_events") == 3
    assert value(after, "gatewayd_concat_parts_pending") == 1
    assert value(after, "gatewayd_concat_messages_pending") == 1
    assert value(after, "gatewayd_attempts_in_flight", destination="crm") == 0
    assert value(after, "gatewayd_window_in_use", carrier="sim", bind="sim#1") == 0
    assert value(after, "gatewayd_bind_reconnects_total", carrier="sim") == 0


async def test_failures_retries_and_dead_letters_are_counted(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with running(tmp_path) as h:
        m = h.daemon.metrics
        h.rx.respond_with(503, then=503)
        await h.sim.deliver("x", mo_fields(b"will fail"))
        await h.rx.wait_for(1)
        await trio.sleep(m.stats_interval + 1)
        retrying = scrape(m.render()[0])
        assert value(retrying, "gatewayd_attempts_total", destination="crm", outcome="retry") == 1
        assert value(retrying, "gatewayd_jobs", destination="crm", state="queued") == 1
        await h.rx.wait_for(4)  # the try and 3 retries
        await trio.sleep(m.stats_interval + 1)
        dead = scrape(m.render()[0])
    assert value(dead, "gatewayd_attempts_total", destination="crm", outcome="retry") == 4
    assert value(dead, "gatewayd_dead_letters_total", destination="crm") == 1
    assert value(dead, "gatewayd_jobs", destination="crm", state="dead") == 1
    assert value(dead, "gatewayd_jobs", destination="crm", state="queued") == 0
    assert value(dead, "gatewayd_delivery_latency_seconds_count", destination="crm") == 0


async def test_receipts_counter_and_temporary_error_acks(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with running(tmp_path) as h:
        m = h.daemon.metrics
        m.receipts.labels(result="matched").inc()
        m.receipts.labels(result="unmatched").inc(2)
        h.daemon.acks[P.ESME_RX_T_APPN] = 3  # as _consume counts them
        samples = scrape(m.render()[0])
    assert value(samples, "gatewayd_receipts_total", result="matched") >= 1
    assert value(samples, "gatewayd_receipts_total", result="unmatched") >= 2
    assert value(samples, "gatewayd_deliver_sm_acks_total", status="ESME_RX_T_APPN") == 3


async def test_reconnects_survive_a_rebind_on_reload(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with running(tmp_path) as h:
        await bound(h)
        bind = h.daemon.binds["sim"][0]
        bind.reconnects = 2  # as if the connection had dropped twice
        h.daemon.metrics.bind_retired(bind)
        h.daemon.binds["sim"] = []
        samples = scrape(h.daemon.metrics.render()[0])
        h.daemon.binds["sim"] = [bind]
    assert value(samples, "gatewayd_bind_reconnects_total", carrier="sim") == 2
    assert value(samples, "gatewayd_binds_up", carrier="sim") == 0
