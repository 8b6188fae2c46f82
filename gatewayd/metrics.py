"""Prometheus metrics for one :class:`~gatewayd.app.Daemon`, on a registry of its own.

``daemon.metrics.render()`` returns ``(body, content_type)`` for ``GET /metrics``.

Three kinds of figures, each read where it is cheapest:

- Counted as it happens (hooks): attempts by destination and outcome, the delivery
  latency (event received -> delivered), store commit latency (every commit appends to
  ``SqliteStore.commit_seconds``; that list is wrapped so each append is observed), and
  receipts matched/unmatched (the outbound code calls
  ``metrics.receipts.labels(result="matched").inc()``).
- Read from the daemon at scrape time, in memory and O(binds): deliver_sm received by
  carrier and kind, acks by status, bind states, reconnects, window in use, attempts in
  flight, concatenation parts pending, store commits made relaxed (``synchronous=NORMAL``,
  ``SqliteStore.relaxed_commits``).
- Read from the store by a background task (:meth:`Metrics.run`) every
  ``stats_interval`` seconds and cached, so a scrape never runs SQL on the event loop:
  jobs by destination and state, events stored.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

import trio
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client import generate_latest as _generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gatewayd.destinations.base import AttemptResult, Outcome
from gatewayd.smpp import pdu as P
from gatewayd.smpp.driver import BindState
from gatewayd.store import ClaimedJob, JobState, StoreError, StoreStats

if TYPE_CHECKING:
    from gatewayd.app import Daemon
    from gatewayd.smpp.driver import SmppBind

__all__ = ["Metrics", "status_label"]
log = logging.getLogger("gatewayd.metrics")

# What generate_latest writes: the classic text format (prometheus_client >= 0.22 calls
# 1.0.0 "latest", which some scrapers do not negotiate).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Seconds from receiving an event to a 2xx (or the equivalent) at its destination.
DELIVERY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
# One group commit: statements plus the fsync.
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


def status_label(status: int) -> str:
    """``ESME_ROK`` for a known command_status, ``0x00000064`` otherwise."""
    for name, value in vars(P).items():
        if name.startswith("ESME_") and value == status:
            return name
    return f"0x{status:08x}"


class _ObservingList(list[float]):
    """A list whose ``append`` also feeds a histogram (the store's commit timings)."""

    def __init__(self, items: Iterable[float], observe: Callable[[float], None]) -> None:
        super().__init__(items)
        self._observe = observe

    def append(self, value: float, /) -> None:
        super().append(value)
        self._observe(value)


class _DaemonCollector(Collector):
    """Figures read from the daemon's memory (and the cached store stats) per scrape."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self._metrics
        d = m.daemon
        received = CounterMetricFamily(
            "gatewayd_deliver_sm_received",
            "deliver_sm PDUs received, by carrier and kind (mo, dlr, part)",
            labels=["carrier", "kind"],
        )
        for (carrier, kind), n in sorted(d.received.items()):
            received.add_metric([carrier, kind], n)
        yield received
        acks = CounterMetricFamily(
            "gatewayd_deliver_sm_acks",
            "deliver_sm_resp sent, by command_status",
            labels=["status"],
        )
        for status, n in sorted(d.acks.items()):
            acks.add_metric([status_label(status)], n)
        yield acks
        yield CounterMetricFamily(
            "gatewayd_deliver_sm_duplicates",
            "resent deliver_sm acknowledged without a new delivery",
            value=d.duplicates,
        )
        yield from self._binds(d)
        inflight = GaugeMetricFamily(
            "gatewayd_attempts_in_flight",
            "delivery attempts in progress, by destination",
            labels=["destination"],
        )
        dispatcher = d.dispatcher
        for name in d.config.destinations:
            inflight.add_metric([name], 0 if dispatcher is None else dispatcher.inflight(name))
        yield inflight
        yield GaugeMetricFamily(
            "gatewayd_concat_parts_pending",
            "parts of concatenated messages held until their set is complete",
            value=d.reassembler.pending_count,
        )
        yield GaugeMetricFamily(
            "gatewayd_concat_messages_pending",
            "concatenated messages with parts held",
            value=d.reassembler.pending_messages,
        )
        relaxed = getattr(d.store, "relaxed_commits", None)
        if isinstance(relaxed, int):
            yield CounterMetricFamily(
                "gatewayd_store_relaxed_commits",
                "group commits of only attempt records and claims, made with synchronous=NORMAL",
                value=relaxed,
            )
        yield from self._store_stats(m.stats)

    def _binds(self, d: Daemon) -> Iterator[Metric]:
        states = GaugeMetricFamily(
            "gatewayd_binds", "SMPP binds by carrier and state", labels=["carrier", "state"]
        )
        up = GaugeMetricFamily(
            "gatewayd_binds_up", "SMPP binds bound, by carrier", labels=["carrier"]
        )
        reconnects = CounterMetricFamily(
            "gatewayd_bind_reconnects",
            "times a bind's connection ended and was retried, by carrier",
            labels=["carrier"],
        )
        window = GaugeMetricFamily(
            "gatewayd_window_in_use",
            "requests awaiting a response on a bind (its window in use)",
            labels=["carrier", "bind"],
        )
        carriers = sorted(set(d.config.carriers) | set(d.binds))
        for carrier in carriers:
            binds: list[SmppBind] = list(d.binds.get(carrier, ()))
            for state in BindState:
                states.add_metric([carrier, state.value], sum(1 for b in binds if b.state is state))
            up.add_metric([carrier], sum(1 for b in binds if b.is_bound))
            total = self._metrics.retired_reconnects.get(carrier, 0)
            reconnects.add_metric([carrier], total + sum(b.reconnects for b in binds))
            for b in binds:
                window.add_metric([carrier, b.name], b.window_in_use)
        yield states
        yield up
        yield reconnects
        yield window

    @staticmethod
    def _store_stats(stats: StoreStats | None) -> Iterator[Metric]:
        jobs = GaugeMetricFamily(
            "gatewayd_jobs",
            "delivery jobs in the store by destination and state (refreshed every few seconds)",
            labels=["destination", "state"],
        )
        events = GaugeMetricFamily("gatewayd_store_events", "events in the store")
        if stats is not None:
            for count in stats.jobs:
                jobs.add_metric([count.destination, count.state.value], count.count)
            events.add_metric([], stats.events)
        yield jobs
        yield events


class Metrics:
    """The daemon's metrics; see the module docstring."""

    def __init__(self, daemon: Daemon, *, stats_interval: float = 5.0) -> None:
        self.daemon = daemon
        self.stats_interval = stats_interval
        self.registry = CollectorRegistry()
        self.stats: StoreStats | None = None
        self.retired_reconnects: dict[str, int] = {}
        self.attempts = Counter(
            "gatewayd_attempts",
            "delivery attempts by destination and outcome (delivered, retry, permanent, dropped)",
            ["destination", "outcome"],
            registry=self.registry,
        )
        self.dead_letters = Counter(
            "gatewayd_dead_letters",
            "jobs dead-lettered by destination",
            ["destination"],
            registry=self.registry,
        )
        self.delivery_latency = Histogram(
            "gatewayd_delivery_latency_seconds",
            "from receiving an event to its delivery, by destination",
            ["destination"],
            buckets=DELIVERY_BUCKETS,
            registry=self.registry,
        )
        self.commit_latency = Histogram(
            "gatewayd_store_commit_seconds",
            "duration of one group commit (statements and fsync)",
            buckets=COMMIT_BUCKETS,
            registry=self.registry,
        )
        self.receipts = Counter(
            "gatewayd_receipts",
            "delivery receipts matched to an outbound message, or not",
            ["result"],
            registry=self.registry,
        )
        for result in ("matched", "unmatched"):
            self.receipts.labels(result=result)
        # Labelled children (labels() returns an instance of the metric's class), looked up
        # once: labels() costs more than the inc() itself.
        self._attempt_counters: dict[tuple[str, Outcome], Counter] = {}
        self._dead_counters: dict[str, Counter] = {}
        self._latency_histograms: dict[str, Histogram] = {}
        self.registry.register(_DaemonCollector(self))
        timings = getattr(daemon.store, "commit_seconds", None)
        if isinstance(timings, list) and not isinstance(timings, _ObservingList):
            daemon.store.commit_seconds = _ObservingList(  # type: ignore[attr-defined]
                timings, self.commit_latency.observe
            )

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition and its content type."""
        return _generate_latest(self.registry), CONTENT_TYPE

    # ----------------------------------------------------------------- hooks

    def attempt_recorded(
        self, destination: str, item: ClaimedJob, result: AttemptResult, final: JobState | None
    ) -> None:
        """The dispatcher recorded an attempt (``Dispatcher(on_attempt=...)``)."""
        outcome = result.outcome
        key = (destination, outcome)
        counter = self._attempt_counters.get(key)
        if counter is None:
            counter = self.attempts.labels(destination=destination, outcome=outcome.value)
            self._attempt_counters[key] = counter
        counter.inc()
        if final is JobState.DEAD:
            dead = self._dead_counters.get(destination)
            if dead is None:
                dead = self._dead_counters[destination] = self.dead_letters.labels(
                    destination=destination
                )
            dead.inc()
        if outcome is Outcome.DELIVERED:
            received = item.event.received_at.timestamp()
            latency = max(self.daemon.wall_clock() - received, 0.0)
            histogram = self._latency_histograms.get(destination)
            if histogram is None:
                histogram = self._latency_histograms[destination] = self.delivery_latency.labels(
                    destination=destination
                )
            histogram.observe(latency)

    def bind_retired(self, bind: SmppBind) -> None:
        """A bind is replaced (reload): keep its reconnects in the carrier's total."""
        carrier = bind.settings.carrier
        self.retired_reconnects[carrier] = self.retired_reconnects.get(carrier, 0) + (
            bind.reconnects
        )

    # ----------------------------------------------------------------- store stats

    async def refresh(self) -> None:
        """Read job counts from the store now."""
        try:
            self.stats = await self.daemon.store.stats()
        except StoreError as exc:
            log.warning("store stats for metrics failed: %s", exc)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Refresh the cached store stats every ``stats_interval`` seconds."""
        await self.refresh()
        task_status.started()
        while True:
            await trio.sleep(self.stats_interval)
            await self.refresh()
