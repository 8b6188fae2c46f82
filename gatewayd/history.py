"""``gatewayd history`` and ``gatewayd replay``: the per-push history, and re-delivery.

Both open the store file named by the config (or ``--store``) directly, without the
daemon's group-commit writer: reads go through SQLite's WAL beside a running daemon, and
each write (a replay) is its own short transaction. The running daemon's dispatcher sees
replayed jobs within its poll interval (a few seconds); a stopped one at its next start.

Message text is personal data: it is shown only in the detail view and only with
``--text``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

import trio

from gatewayd.config import parse_duration
from gatewayd.events import event_to_dict
from gatewayd.store import (
    AttemptRecord,
    EventNotFound,
    EventRecord,
    EventStatus,
    JobRecord,
    SqliteStore,
    StoreError,
)

__all__ = ["add_commands", "main", "parse_age"]

# --status failed: events with a failed attempt that will be retried.
STATUS_CHOICES = {
    "failed": EventStatus.RETRYING,
    **{s.value: s for s in EventStatus},
}


def parse_age(text: str) -> float:
    """``90s``, ``15m``, ``1h``, ``7d``, ``2w`` (or plain seconds) -> seconds (argparse type)."""
    try:
        return parse_duration(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an age: {text!r} (e.g. 15m, 1h, 7d)") from None


CommandFactory = Callable[[str, str], argparse.ArgumentParser]


def add_commands(command: CommandFactory, default_config: str) -> None:
    """Add ``history`` and ``replay`` to the CLI (``command(name, help)`` makes a parser)."""
    h = command("history", "the per-push history: events, attempts, status codes, errors")
    h.add_argument("--config", default=default_config)
    h.add_argument("--store", default=None, help="the store file (default: from the config)")
    h.add_argument("--number", default=None, help="events from or to this number")
    h.add_argument("--destination", default=None, help="events with a job for this destination")
    h.add_argument("--status", choices=sorted(STATUS_CHOICES), default=None)
    h.add_argument("--since", type=parse_age, default=None, help="e.g. 15m, 1h, 7d")
    h.add_argument("--limit", type=int, default=20, help="events to show (newest first)")
    h.add_argument("--event", default=None, help="one event in detail, with every attempt")
    h.add_argument("--text", action="store_true", help="show message text (--event only)")
    h.add_argument("--json", action="store_true", help="JSON lines instead of a table")

    r = command("replay", "deliver an event again (new jobs), or every dead letter")
    r.add_argument("event_id", nargs="?", metavar="EVENT_ID")
    r.add_argument("--destination", default=None, help="only to this destination")
    r.add_argument("--dead-letters", action="store_true", help="replay every dead letter instead")
    r.add_argument("--config", default=default_config)
    r.add_argument("--store", default=None, help="the store file (default: from the config)")
    r.add_argument("--json", action="store_true", help="print the result as JSON")


def main(args: argparse.Namespace, out: TextIO, err: TextIO | None = None) -> int:
    """Run ``history`` or ``replay``; 0 on success, 1 on an error (printed to ``err``)."""
    from gatewayd.config import ConfigError, load_config

    err = sys.stderr if err is None else err

    name = f"gatewayd {args.command}"
    destinations: Sequence[str] | None = None
    if args.store is not None:
        path = Path(args.store)
    else:
        try:
            config = load_config(args.config)
        except ConfigError as exc:
            print(exc, file=err)
            return 1
        path = config.store
        destinations = tuple(config.destinations)
    if args.command == "replay":
        if (args.event_id is None) == (not args.dead_letters):
            print(f"{name}: give an EVENT_ID or --dead-letters (not both)", file=err)
            return 2
        if (
            destinations is not None
            and args.destination is not None
            and args.destination not in destinations
        ):
            print(f"{name}: no destination {args.destination!r} in the config", file=err)
            return 1
    if not path.exists():
        print(f"{name}: no store at {path}", file=err)
        return 1
    try:
        store = SqliteStore(path, use_thread=False)
    except StoreError as exc:
        print(f"{name}: {exc}", file=err)
        return 1
    try:
        if args.command == "replay":
            return trio.run(_replay, args, store, out, err)
        if args.event is not None:
            return trio.run(_detail, args, store, out, err)
        return trio.run(_history, args, store, out)
    except StoreError as exc:
        print(f"{name}: {exc}", file=err)
        return 1
    finally:
        store.close()


# --------------------------------------------------------------------------- history


def _when(epoch: float | dt.datetime) -> str:
    if isinstance(epoch, dt.datetime):
        value = epoch.astimezone(dt.UTC)
    else:
        value = dt.datetime.fromtimestamp(epoch, dt.UTC)
    return value.strftime("%Y-%m-%d %H:%M:%SZ")


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _job_dict(job: JobRecord) -> dict[str, Any]:
    return {
        "job_id": job.id,
        "destination": job.destination,
        "state": job.state.value,
        "attempts": job.attempts,
        "next_at": job.next_at,
        "last_error": job.last_error,
        "replayed_by": job.replayed_by,
    }


def _attempt_dict(a: AttemptRecord) -> dict[str, Any]:
    return {
        "job_id": a.job_id,
        "destination": a.destination,
        "attempt": a.attempt,
        "at": _when(a.at),
        "target": a.target,
        "status_code": a.status_code,
        "latency_ms": round(a.latency_ms, 1),
        "outcome": a.outcome,
        "error": a.error,
        "response_excerpt": a.response_excerpt,
    }


def _last_attempt(record: EventRecord, job: JobRecord) -> AttemptRecord | None:
    mine = [a for a in record.attempts if a.job_id == job.id]
    return mine[-1] if mine else None


async def _history(args: argparse.Namespace, store: SqliteStore, out: TextIO) -> int:
    since = None if args.since is None else time.time() - args.since
    page = await store.list_events(
        status=None if args.status is None else STATUS_CHOICES[args.status],
        destination=args.destination,
        number=args.number,
        since=since,
        limit=max(args.limit, 1),
    )
    records = [await store.get_event(summary.id) for summary in page.items]
    if args.json:
        for summary, record in zip(page.items, records, strict=True):
            obj = {
                "id": summary.id,
                "type": summary.type,
                "carrier": summary.carrier,
                "from": summary.source,
                "to": summary.destination,
                "received_at": _when(summary.received_at),
                "status": summary.status.value,
                "jobs": [_job_dict(j) for j in record.jobs],
                "attempts": [_attempt_dict(a) for a in record.attempts],
            }
            out.write(json.dumps(obj, ensure_ascii=False) + "\n")
        return 0
    header = (
        "RECEIVED",
        "EVENT",
        "TYPE",
        "FROM",
        "TO",
        "DESTINATION",
        "STATE",
        "TRIES",
        "CODE",
        "LATENCY",
        "ERROR",
    )
    rows: list[tuple[str, ...]] = []
    for summary, record in zip(page.items, records, strict=True):
        common = (
            _when(summary.received_at),
            summary.id,
            summary.type,
            summary.source,
            summary.destination,
        )
        if not record.jobs:
            rows.append((*common, "-", summary.status.value, "0", "", "", ""))
        for job in record.jobs:
            last = _last_attempt(record, job)
            state = job.state.value + (" (replayed)" if job.replayed_by is not None else "")
            rows.append(
                (
                    *common,
                    job.destination,
                    state,
                    str(job.attempts),
                    "" if last is None or last.status_code is None else str(last.status_code),
                    "" if last is None else f"{last.latency_ms:.0f}ms",
                    _clip(job.last_error, 48),
                )
            )
    _table(header, rows, out)
    if not rows:
        out.write("no events\n")
    elif page.next_cursor is not None:
        out.write(f"(newest {len(page.items)} shown; --limit for more)\n")
    return 0


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], out: TextIO) -> None:
    widths = [len(h) for h in header]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    for row in (header, *rows):
        out.write("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n")


async def _detail(args: argparse.Namespace, store: SqliteStore, out: TextIO, err: TextIO) -> int:
    try:
        record = await store.get_event(args.event)
    except EventNotFound:
        print(f"gatewayd history: no event {args.event}", file=err)
        return 1
    event = event_to_dict(record.event)
    event.pop("schema", None)
    event.pop("raw", None)
    if not args.text:
        event.pop("text", None)
    if args.json:
        obj = {
            "event": event,
            "status": record.status.value,
            "jobs": [_job_dict(j) for j in record.jobs],
            "attempts": [_attempt_dict(a) for a in record.attempts],
        }
        out.write(json.dumps(obj, ensure_ascii=False) + "\n")
        return 0
    e = record.event
    lines = [
        ("event", e.id),
        ("type", e.type + (f" ({e.message_class.value})" if e.type == "mo" else "")),
        ("carrier", e.carrier),
        ("from", e.source.addr),
        ("to", e.destination.addr),
        ("received", _when(e.received_at)),
        ("status", record.status.value),
    ]
    if e.type == "dlr":
        lines.append(("receipt", f"{e.message_id} {e.status.value}"))
    if args.text:
        lines.append(("text", e.text))
    for key, value in lines:
        out.write(f"{key:9} {value}\n")
    out.write("\njobs\n")
    _table(
        ("JOB", "DESTINATION", "STATE", "TRIES", "NEXT", "LAST ERROR"),
        [
            (
                str(j.id),
                j.destination,
                j.state.value + (f" (replayed by {j.replayed_by})" if j.replayed_by else ""),
                str(j.attempts),
                _when(j.next_at) if j.state.value == "queued" else "",
                _clip(j.last_error, 60),
            )
            for j in record.jobs
        ],
        out,
    )
    out.write("\nattempts\n")
    _table(
        ("JOB", "#", "AT", "DESTINATION", "CODE", "LATENCY", "OUTCOME", "TARGET", "ERROR"),
        [
            (
                str(a.job_id),
                str(a.attempt),
                _when(a.at),
                a.destination,
                "" if a.status_code is None else str(a.status_code),
                f"{a.latency_ms:.0f}ms",
                a.outcome,
                _clip(a.target, 60),
                _clip(a.error or a.response_excerpt, 60),
            )
            for a in record.attempts
        ],
        out,
    )
    return 0


# --------------------------------------------------------------------------- replay


async def _replay(args: argparse.Namespace, store: SqliteStore, out: TextIO, err: TextIO) -> int:
    if args.dead_letters:
        n = await store.replay_dead(args.destination)
        if args.json:
            out.write(json.dumps({"replayed": n}) + "\n")
        else:
            out.write(f"replayed {n} dead letter{'' if n == 1 else 's'}\n")
        return 0
    try:
        ids = await store.replay(args.event_id, args.destination)
    except EventNotFound:
        print(f"gatewayd replay: no event {args.event_id}", file=err)
        return 1
    if args.json:
        out.write(json.dumps({"event_id": args.event_id, "jobs": ids}) + "\n")
    elif not ids:
        out.write(f"event {args.event_id} had no destination to replay to\n")
    else:
        out.write(
            f"queued {len(ids)} new job{'' if len(ids) == 1 else 's'} for event "
            f"{args.event_id}: {', '.join(map(str, ids))}\n"
            "a running gatewayd delivers them within its poll interval\n"
        )
    return 0
