"""The daemon: one nursery tree of binds, the store writer, the dispatcher and timers.

Ingest path, for every ``deliver_sm`` a carrier sends (the heart of "never lose one")::

    decode (MO | receipt | part) -> route -> store.persist (event + one job per
    destination, and any concatenation part, in ONE group-committed transaction)
    -> only then ESME_ROK

If the store cannot commit, the carrier's temporary error status (ESME_RX_T_APPN by
default) goes back instead so the SMSC resends; the reassembler is rolled back so the
resent part counts as new. A resend of something already stored is recognised by its
dedup key and acknowledged without a second delivery.

The deliver_sm of one read are handled as a batch (``_consume_batch``): their persists run
concurrently so they share one group commit, and each is acknowledged the moment its own
commit is known (one slow part or receipt does not hold up the others).

Shutdown (SIGTERM): stop the binds (unbind: no new deliver_sm), let attempts in flight
finish within ``drain_grace``, leave everything else queued in the store, return.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

import attrs
import trio

from gatewayd.config import (
    CarrierConfig,
    Config,
    DestinationConfig,
    DeviceDestination,
    EmailDestination,
    ForwardDestination,
    NoneDestination,
    RetryPolicy,
    UrlDestination,
)
from gatewayd.destinations.base import Destination
from gatewayd.destinations.http import HttpDestination
from gatewayd.destinations.none import DropDestination
from gatewayd.dispatch import REMOVED_REASON, Dispatcher
from gatewayd.events import DeliveryReceipt, Event, MoMessage
from gatewayd.metrics import Metrics
from gatewayd.outbound import Outbound
from gatewayd.routing import Router
from gatewayd.smpp import pdu as P
from gatewayd.smpp.driver import BindSettings, SmppBind
from gatewayd.smpp.receive import (
    Part,
    Reassembler,
    ReassemblyKey,
    ReceiveOptions,
    decode_deliver,
    dedup_key,
)
from gatewayd.store import (
    ConcatPart,
    JobState,
    PersistItem,
    PersistResult,
    PersistStatus,
    SqliteStore,
    Store,
    StoreError,
)

log = logging.getLogger("gatewayd")

DestinationFactory = Callable[[DestinationConfig, "Daemon"], Destination]


class ReloadError(Exception):
    """A new configuration could not be applied; the old one stays in force."""


def concat_key(key: ReassemblyKey) -> str:
    """The store's text key for one concatenated message."""
    return json.dumps(list(key), separators=(",", ":"))


def bind_settings(carrier: CarrierConfig) -> BindSettings:
    return BindSettings(
        carrier=carrier.name,
        host=carrier.host,
        port=carrier.port,
        system_id=carrier.system_id,
        password=carrier.password,
        system_type=carrier.system_type,
        address_range=carrier.address_range,
        bind=carrier.bind,
        window=carrier.window,
        enquire_link=carrier.enquire_link,
        response_timeout=carrier.response_timeout,
        reconnect_min=carrier.reconnect_min,
        reconnect_max=carrier.reconnect_max,
        tls=carrier.tls,
        tls_verify=carrier.tls_verify,
        tls_ca=None if carrier.tls_ca is None else str(carrier.tls_ca),
        max_command_length=carrier.max_command_length,
    )


def build_destination(config: DestinationConfig, daemon: Daemon) -> Destination:
    """The delivery object for one configured destination."""
    if isinstance(config, UrlDestination):
        return HttpDestination(config, wall_clock=daemon.wall_clock)
    if isinstance(config, NoneDestination):
        return DropDestination(config.name)
    if isinstance(config, EmailDestination):
        from gatewayd.destinations.email import SmtpDestination

        return SmtpDestination(config, smtp=config.smtp or daemon.config.smtp)
    if isinstance(config, DeviceDestination):
        from gatewayd.destinations.device import SipDestination

        return SipDestination(config)
    if isinstance(config, ForwardDestination):
        from gatewayd.destinations.forward import SmsForwardDestination

        return SmsForwardDestination(config, daemon.outbound)
    raise NotImplementedError(f"destination type {config.type!r} is not available yet")


def _retry_and_concurrency(config: DestinationConfig) -> tuple[RetryPolicy, int]:
    retry = getattr(config, "retry", RetryPolicy())
    concurrency = getattr(config, "concurrency", 4)
    return retry, concurrency


class Daemon:
    """Everything ``gatewayd run`` runs. ``await nursery.start(daemon.run)``; ``stop()``."""

    def __init__(
        self,
        config: Config,
        *,
        store: Store | None = None,
        wall_clock: Callable[[], float] = time.time,
        destination_factory: DestinationFactory = build_destination,
    ) -> None:
        self.config = config
        self.wall_clock = wall_clock
        self.router = Router(config)
        self.store: Store = store or SqliteStore(
            config.store,
            synchronous=config.synchronous,
            relax_records=config.relaxed_records,
            dedup_window=config.dedup_window,
            wall_clock=wall_clock,
        )
        self.reassembler = Reassembler(config.reassembly_timeout)
        # The send API's back end, submit_sm and receipt correlation (gatewayd.outbound).
        self.outbound = Outbound(
            config, self.store, binds=lambda name: self.binds.get(name, []), wall_clock=wall_clock
        )
        self._destination_factory = destination_factory
        self.destinations: dict[str, Destination] = {}
        self.dispatcher: Dispatcher | None = None
        self.binds: dict[str, list[SmppBind]] = {}
        self._options = {
            name: ReceiveOptions(gsm_as=c.charset, a2p_max_digits=config.classify.a2p_max_digits)
            for name, c in config.carriers.items()
        }
        self._part_locks: dict[ReassemblyKey, trio.Lock] = {}
        self._stop_requested = trio.Event()
        self.ready = trio.Event()
        self.stopped = trio.Event()
        # counters for logs, readiness and metrics
        self.received: dict[tuple[str, str], int] = {}  # (carrier, kind) -> deliver_sm
        self.acks: dict[int, int] = {}  # command_status -> count
        self.duplicates = 0
        self.api_port: int | None = None  # the API listener's bound port (gatewayd.api)
        self.metrics = Metrics(self)
        self.outbound.on_receipt = lambda matched: self.metrics.receipts.labels(
            result="matched" if matched else "unmatched"
        ).inc()
        self.retention_interval = 300.0  # seconds between prune rounds
        self.log_text = False  # log message text at debug level (gatewayd run --log-text)
        self._reload_lock = trio.Lock()
        self._bind_nursery: trio.Nursery | None = None
        self._bind_carrier: dict[SmppBind, CarrierConfig] = {}  # what each bind was made from

    # ------------------------------------------------------------------ lifecycle

    def stop(self) -> None:
        """Begin a graceful shutdown (what SIGTERM does)."""
        self._stop_requested.set()

    @property
    def stopping(self) -> bool:
        """A shutdown was requested (``/readyz`` answers 503 while draining)."""
        return self._stop_requested.is_set()

    async def run(self, *, task_status: trio.TaskStatus[Daemon] = trio.TASK_STATUS_IGNORED) -> None:
        cfg = self.config
        try:
            async with trio.open_nursery() as root:
                await root.start(self.store.run)
                await self._restore_parts()
                for name, dcfg in cfg.destinations.items():
                    self.destinations[name] = self._destination_factory(dcfg, self)
                self.dispatcher = Dispatcher(
                    self.store,
                    self.outbound.targets(
                        {
                            name: (dest, *_retry_and_concurrency(cfg.destinations[name]))
                            for name, dest in self.destinations.items()
                        }
                    ),
                    wall_clock=self.wall_clock,
                    on_attempt=self.metrics.attempt_recorded,
                )
                await root.start(self.dispatcher.run)
                await self._dead_letter_orphans()
                from gatewayd.api import serve_api

                await root.start(serve_api, self)
                await root.start(self.metrics.run)
                root.start_soon(self._retention_loop)
                binds_done = trio.Event()
                root.start_soon(self._run_binds, binds_done)
                root.start_soon(self._expire_loop)
                self.ready.set()
                log.info(
                    "gatewayd running",
                    extra={"carriers": len(cfg.carriers), "destinations": len(cfg.destinations)},
                )
                task_status.started(self)
                await self._stop_requested.wait()
                log.info("stopping: unbinding, draining attempts in flight")
                grace = self.config.drain_grace  # the reloaded value, if any
                deadline = trio.current_time() + grace
                for binds in self.binds.values():
                    for bind in binds:
                        bind.stop()
                with trio.move_on_after(max(5.0, grace)):
                    await binds_done.wait()
                # Attempts kept going while the binds unbound: one grace period in all.
                await self.dispatcher.drain(max(deadline - trio.current_time(), 1.0))
                root.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                for dest in self.destinations.values():
                    with trio.move_on_after(2):
                        await dest.aclose()
                with trio.move_on_after(2):
                    await self.outbound.aclose()
            self.store.close()
            self.stopped.set()
            log.info("stopped")

    async def _dead_letter_orphans(self) -> None:
        """Queued jobs for a destination the config no longer has (removed while the daemon
        was down): no lane would ever take them, so dead-letter them with the reason; a
        replay with ``--destination`` sends them elsewhere."""
        assert self.dispatcher is not None
        known = set(self.dispatcher.destinations)
        stats = await self.store.stats()
        orphans = {
            jc.destination
            for jc in stats.jobs
            if jc.state in (JobState.QUEUED, JobState.INFLIGHT) and jc.destination not in known
        }
        for name in sorted(orphans):
            count = await self.store.dead_letter_destination(name, REMOVED_REASON)
            log.warning(
                "jobs for a destination that is not configured: dead-lettered",
                extra={"destination": name, "jobs": count},
            )

    async def _run_binds(self, done: trio.Event) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._bind_nursery = nursery
                for carrier in self.config.carriers.values():
                    self._start_binds(carrier)
                # Reloads add and replace binds here: keep the nursery open until stop.
                await self._stop_requested.wait()
        finally:
            self._bind_nursery = None
            done.set()

    def _start_binds(self, carrier: CarrierConfig) -> None:
        assert self._bind_nursery is not None
        settings = bind_settings(carrier)
        binds = [
            SmppBind(
                settings,
                self._consume,
                name=f"{carrier.name}#{i + 1}",
                batch_consumer=self._consume_batch,
            )
            for i in range(carrier.sessions)
        ]
        self.binds[carrier.name] = binds
        for bind in binds:
            self._bind_carrier[bind] = carrier
            self._bind_nursery.start_soon(self._run_bind, bind)

    async def _run_bind(self, bind: SmppBind) -> None:
        try:
            await bind.run()
        finally:
            self._bind_carrier.pop(bind, None)

    # ------------------------------------------------------------------ ingest

    async def _consume(self, pdu: P.Pdu, bind: SmppBind) -> int:
        """deliver_sm -> durable event + jobs -> the status for deliver_sm_resp."""
        carrier, options, received_at = self._receiving(bind)
        decoded, key = self._decode(pdu, carrier.name, options, received_at)
        return await self._ingest(carrier, decoded, key, received_at)

    def _receiving(self, bind: SmppBind) -> tuple[CarrierConfig, ReceiveOptions, dt.datetime]:
        """The carrier, decoding options and receive time for what ``bind`` just read."""
        # A bind being replaced by a reload still answers with the settings it was made from.
        carrier = self._bind_carrier.get(bind) or self.config.carriers[bind.settings.carrier]
        options = self._options.get(carrier.name) or ReceiveOptions(
            gsm_as=carrier.charset, a2p_max_digits=self.config.classify.a2p_max_digits
        )
        return carrier, options, dt.datetime.fromtimestamp(self.wall_clock(), dt.UTC)

    def _decode(
        self, pdu: P.Pdu, carrier: str, options: ReceiveOptions, received_at: dt.datetime
    ) -> tuple[MoMessage | DeliveryReceipt | Part, str]:
        """One deliver_sm decoded and counted, with its dedup key."""
        decoded = decode_deliver(pdu, carrier=carrier, received_at=received_at, options=options)
        counter = (carrier, decoded.type)
        self.received[counter] = self.received.get(counter, 0) + 1
        return decoded, dedup_key(pdu, carrier)

    async def _consume_batch(
        self, pdus: Sequence[P.Pdu], bind: SmppBind, answer: Callable[[int, int], None]
    ) -> None:
        """What one read brought, at once: every deliver_sm decoded, the whole MOs made
        durable together (one group commit), each answered as soon as its own is.

        Same outcomes per PDU as :meth:`_consume`; parts (per-message locks) and receipts
        (correlation reads the store) take :meth:`_ingest` each, concurrently."""
        if len(pdus) == 1:
            answer(0, await self._consume(pdus[0], bind))
            return
        carrier, options, received_at = self._receiving(bind)
        name = carrier.name
        mos: list[tuple[int, MoMessage, PersistItem]] = []
        others: list[tuple[int, MoMessage | DeliveryReceipt | Part, str]] = []
        for index, pdu in enumerate(pdus):
            try:
                decoded, key = self._decode(pdu, name, options, received_at)
                if isinstance(decoded, MoMessage):
                    destinations = self.router.route_mo(decoded)
                    item = PersistItem(event=decoded, destinations=destinations, dedup_key=key)
                    mos.append((index, decoded, item))
                else:
                    others.append((index, decoded, key))
            except Exception:
                # What the runner does for a failing handler: the SMSC resends it.
                self._handler_failed(name)
                answer(index, P.ESME_RX_T_APPN)

        def stored(position: int, result: PersistResult | Exception) -> None:
            index, event, item = mos[position]
            if isinstance(result, StoreError):
                answer(index, self._store_failed(carrier, result))
            elif isinstance(result, Exception):
                self._handler_failed(name, result)
                answer(index, P.ESME_RX_T_APPN)
            else:
                self._persisted(event, item.destinations, result)
                answer(index, self._acked(P.ESME_ROK))

        async def ingest(index: int, decoded: MoMessage | DeliveryReceipt | Part, key: str) -> None:
            try:
                status = await self._ingest(carrier, decoded, key, received_at)
            except Exception as exc:
                self._handler_failed(name, exc)
                status = P.ESME_RX_T_APPN
            answer(index, status)

        async with trio.open_nursery() as nursery:
            for position, (_, _, item) in enumerate(mos):
                nursery.start_soon(self._persist_one, item, position, stored)
            for index, decoded, key in others:
                nursery.start_soon(ingest, index, decoded, key)

    async def _persist_one(
        self,
        item: PersistItem,
        position: int,
        done: Callable[[int, PersistResult | Exception], None],
    ) -> None:
        """One of a batch's persists, run concurrently with the others so the store's writer
        commits them as one group; ``done`` gets its result or error the moment it has it."""
        try:
            result: PersistResult | Exception = await self.store.persist(item)
        except Exception as exc:
            result = exc
        done(position, result)

    @staticmethod
    def _handler_failed(carrier: str, exc: BaseException | None = None) -> None:
        log.error(
            "request handler failed; answering a temporary error",
            exc_info=exc if exc is not None else True,
            extra={"carrier": carrier},
        )

    async def _ingest(
        self,
        carrier: CarrierConfig,
        decoded: MoMessage | DeliveryReceipt | Part,
        key: str,
        received_at: dt.datetime,
    ) -> int:
        """Make one decoded deliver_sm durable; the status for its deliver_sm_resp."""
        try:
            if isinstance(decoded, Part):
                await self._ingest_part(decoded, key, received_at)
            else:
                await self._persist_event(decoded, key)
        except StoreError as exc:
            return self._store_failed(carrier, exc)
        return self._acked(P.ESME_ROK)

    def _store_failed(self, carrier: CarrierConfig, exc: StoreError) -> int:
        log.error(
            "store cannot commit; answering a temporary error so the SMSC resends",
            extra={"carrier": carrier.name, "error": str(exc)},
        )
        return self._acked(carrier.temp_error_status)

    def _acked(self, status: int) -> int:
        self.acks[status] = self.acks.get(status, 0) + 1
        return status

    async def _persist_event(
        self, event: Event, dedup: str | None, completed: tuple[str, ...] = ()
    ) -> None:
        if isinstance(event, MoMessage):
            destinations = self.router.route_mo(event)
        else:
            assert isinstance(event, DeliveryReceipt)
            # Correlated to an outbound message: its status_url / delivery come first.
            destinations = await self.outbound.route_receipt(event, self.router)
        result = await self.store.persist(
            PersistItem(
                event=event,
                destinations=destinations,
                dedup_key=dedup,
                completed_concat_keys=completed,
            )
        )
        self._persisted(event, destinations, result)

    def _persisted(
        self, event: Event, destinations: tuple[str, ...], result: PersistResult
    ) -> None:
        extra = {"event_id": result.event_id, "carrier": event.carrier, "type": event.type}
        if result.status is PersistStatus.DUPLICATE:
            self.duplicates += 1
            log.info("duplicate deliver_sm acknowledged without a new delivery", extra=extra)
        elif not destinations:
            log.warning("no route for this event: stored, not delivered", extra=extra)
        elif log.isEnabledFor(logging.DEBUG):
            if self.log_text:  # only with --log-text at debug level: text is personal data
                extra["message_text"] = getattr(event, "text", None)
            log.debug("stored", extra={**extra, "destinations": list(destinations)})

    async def _ingest_part(self, part: Part, dedup: str, now: dt.datetime) -> None:
        # One lock per message: the reassembler's step and its persist happen together, so
        # a failed commit can roll exactly that step back.
        lock = self._part_locks.setdefault(part.key, trio.Lock())
        try:
            async with lock:
                if self.reassembler.is_duplicate(part):
                    # A resend of a part we hold or already delivered (our resp was lost):
                    # acknowledge it; storing it again would start a phantom message.
                    self.duplicates += 1
                    return
                state = self.reassembler.snapshot(part.key)
                message = self.reassembler.add(part, now)
                try:
                    if message is None:
                        await self.store.persist(
                            PersistItem(
                                event=None,
                                concat_part=ConcatPart(
                                    key=concat_key(part.key), seq=part.seq, json=part.to_json()
                                ),
                            )
                        )
                    else:
                        await self._persist_event(message, dedup, (concat_key(part.key),))
                except BaseException:
                    # Not acknowledged (commit failed, or cancelled while waiting for it):
                    # memory must not hold the part either, so the SMSC's resend counts.
                    self.reassembler.rollback(part.key, state)
                    raise
        finally:
            self._release_part_lock(part.key, lock)

    def _release_part_lock(self, key: ReassemblyKey, lock: trio.Lock) -> None:
        idle = lock.statistics().tasks_waiting == 0 and not lock.locked()
        if idle and self._part_locks.get(key) is lock:
            del self._part_locks[key]

    async def _restore_parts(self) -> None:
        stored = await self.store.load_concat_parts()
        parts = [Part.from_json(p.json) for p in stored]
        for key, message in self.reassembler.restore_keyed(parts):
            # complete on its own (its completion was not recorded): deliver it once and
            # drop its parts in the same transaction, or every restart would deliver it again
            await self._persist_event(message, None, (concat_key(key),))
        if parts:
            log.info(
                "restored concatenation parts",
                extra={"parts": len(parts), "messages": self.reassembler.pending_messages},
            )

    async def _expire_loop(self) -> None:
        """Deliver, marked incomplete, messages whose parts did not all arrive in time."""
        while True:
            deadline = self.reassembler.next_deadline()
            now = dt.datetime.fromtimestamp(self.wall_clock(), dt.UTC)
            delay = 5.0 if deadline is None else (deadline - now).total_seconds()
            await trio.sleep(min(max(delay, 0.0), 5.0) if math.isfinite(delay) else 5.0)
            now = dt.datetime.fromtimestamp(self.wall_clock(), dt.UTC)
            for key in self.reassembler.due(now):
                # under the message's lock: a part of it may be waiting for its commit
                lock = self._part_locks.setdefault(key, trio.Lock())
                try:
                    async with lock:
                        state = self.reassembler.snapshot(key)
                        message = self.reassembler.expire_one(key, now)
                        if message is None:
                            continue
                        try:
                            await self._persist_event(message, None, (concat_key(key),))
                        except StoreError:
                            # not durable as a message: hold its parts again, retry later
                            self.reassembler.rollback(key, state)
                            continue
                        log.warning(
                            "concatenated message incomplete after the timeout: delivered as is",
                            extra={"event_id": message.id, "carrier": message.carrier},
                        )
                finally:
                    self._release_part_lock(key, lock)

    # ------------------------------------------------------------------ reload

    async def reload(self, new: Config) -> None:
        """Switch to ``new`` (SIGHUP), or raise :class:`ReloadError` and change nothing.

        Carriers whose settings changed are re-bound (their old binds unbind); the others
        keep their binds and windows. Routes and destinations switch at once for events
        routed from now on; jobs keep their destination by name, and a removed
        destination's queued jobs are dead-lettered by the dispatcher. Destination objects
        that were replaced are closed once no attempt uses them.
        """
        async with self._reload_lock:
            if self._stop_requested.is_set() or self.dispatcher is None:
                raise ReloadError("the daemon is not running")
            old = self.config
            if (new.store, new.synchronous) != (old.store, old.synchronous):
                log.warning("store settings take effect at the next restart, not on reload")
                new = attrs.evolve(new, store=old.store, synchronous=old.synchronous)
            built: dict[str, Destination] = {}
            try:
                for name, dcfg in new.destinations.items():
                    if name not in self.destinations or old.destinations.get(name) != dcfg:
                        built[name] = self._destination_factory(dcfg, self)
                router = Router(new)
            except Exception as exc:
                await self._close_destinations(built.values())
                raise ReloadError(f"cannot apply the new configuration: {exc}") from exc
            # The switch: nothing awaits between these assignments.
            destinations = {n: built.get(n) or self.destinations[n] for n in new.destinations}
            replaced = [d for n, d in self.destinations.items() if destinations.get(n) is not d]
            self.config = new
            self.router = router
            self.destinations = destinations
            self._options = {
                name: ReceiveOptions(gsm_as=c.charset, a2p_max_digits=new.classify.a2p_max_digits)
                for name, c in new.carriers.items()
            }
            self.reassembler.timeout = dt.timedelta(seconds=new.reassembly_timeout)
            rebound = []
            for name in (*old.carriers, *(n for n in new.carriers if n not in old.carriers)):
                carrier = new.carriers.get(name)
                if old.carriers.get(name) == carrier:
                    continue
                rebound.append(name)
                for bind in self.binds.pop(name, []):
                    self.metrics.bind_retired(bind)
                    bind.stop()
                if carrier is not None and self._bind_nursery is not None:
                    self._start_binds(carrier)
            self.outbound.reconfigure(new)
            await self.dispatcher.update_destinations(
                self.outbound.targets(  # keeps the internal submit/status-url lanes
                    {
                        name: (dest, *_retry_and_concurrency(new.destinations[name]))
                        for name, dest in destinations.items()
                    }
                )
            )
            await self._close_destinations(replaced)
            log.info(
                "configuration reloaded",
                extra={
                    "carriers_rebound": rebound,
                    "destinations_changed": sorted(
                        {*built, *(n for n in old.destinations if n not in new.destinations)}
                    ),
                },
            )

    async def reload_from_file(self) -> bool:
        """Re-read the config file (SIGHUP). On any error log it, keep the old config and
        return False."""
        from gatewayd.config import ConfigError, load_config

        path = self.config.file
        if path is None:
            log.error("reload: the configuration was not read from a file")
            return False
        log.info("reloading the configuration", extra={"file": str(path)})
        try:
            new = await trio.to_thread.run_sync(load_config, path)
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("reload failed, old configuration kept: %s", problem)
            return False
        try:
            await self.reload(new)
        except ReloadError as exc:
            log.error("reload failed, old configuration kept: %s", exc)
            return False
        return True

    @staticmethod
    async def _close_destinations(destinations: Iterable[Destination]) -> None:
        with trio.CancelScope(shield=True):
            for dest in destinations:
                with trio.move_on_after(2):
                    try:
                        await dest.aclose()
                    except Exception:
                        log.exception(
                            "closing a destination failed", extra={"destination": dest.name}
                        )

    # ------------------------------------------------------------------ retention

    async def prune(self) -> int:
        """Delete delivered events older than ``retention.delivered``, dead ones older
        than ``retention.dead``; returns how many events went."""
        retention = self.config.retention
        now = self.wall_clock()
        try:
            n = await self.store.prune(now - retention.delivered, now - retention.dead)
        except StoreError as exc:
            log.warning("pruning old events failed: %s", exc)
            return 0
        if n:
            log.info("pruned old events and their attempts", extra={"events": n})
        return n

    async def _retention_loop(self) -> None:
        while True:
            await self.prune()
            await trio.sleep(self.retention_interval)

    # ------------------------------------------------------------------ status

    def bind_states(self) -> Mapping[str, list[SmppBind]]:
        return self.binds
