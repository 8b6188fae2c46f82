"""``gatewayd history`` and ``gatewayd replay`` against a store file, as an operator runs them."""

from __future__ import annotations

import datetime as dt
import json
import textwrap
import time
from pathlib import Path

import attrs
import pytest
import trio

from gatewayd import cli
from gatewayd.destinations.base import AttemptResult, Outcome
from gatewayd.events import Address, MessageClass, MoMessage, new_event_id
from gatewayd.history import parse_age
from gatewayd.store import JobState, PersistItem, SqliteStore


@attrs.frozen
class Events:
    config: Path
    delivered: str
    dead: str
    retrying: str


def make_mo(text: str, source: str, now_ms: int) -> MoMessage:
    return MoMessage(
        id=new_event_id(now_ms),
        carrier="acme",
        source=Address(addr=source, ton=1, npi=1),
        destination=Address(addr="12345"),
        text=text,
        raw=text.encode(),
        data_coding=0,
        message_class=MessageClass.A2P,
        received_at=dt.datetime.now(dt.UTC),
    )


async def _populate(path: Path) -> tuple[str, str, str]:
    store = SqliteStore(path, use_thread=False)  # no writer: each write its own transaction
    ids = []
    outcomes = [
        (Outcome.DELIVERED, 200, "", JobState.DELIVERED, "447700900001"),
        (Outcome.PERMANENT, 410, "HTTP 410 Gone", JobState.DEAD, "447700900002"),
        (Outcome.RETRY, 503, "HTTP 503 Service Unavailable", None, "447700900003"),
    ]
    # One millisecond apart: ids (UUIDv7) order by their millisecond, randomly within one.
    base_ms = int(time.time() * 1000)
    for n, (outcome, code, error, final, source) in enumerate(outcomes):
        mo = make_mo(f"secret words from {source}", source, base_ms + n)
        await store.persist(PersistItem(event=mo, destinations=("crm",)))
        (claimed,) = await store.claim_due("crm", time.time() + 1, 1)
        await store.record_attempt(
            claimed.job.id,
            AttemptResult(
                outcome=outcome,
                target="https://crm.example/in",
                status_code=code,
                latency_ms=42.0,
                error=error,
                response_excerpt='{"ok": true}' if code == 200 else "",
            ),
            next_at=None if final else time.time() + 600,
            final_state=final,
        )
        ids.append(mo.id)
    store.close()
    return ids[0], ids[1], ids[2]


@pytest.fixture
def events(tmp_path: Path) -> Events:
    config = tmp_path / "gatewayd.yaml"
    config.write_text(
        textwrap.dedent(
            """\
            store: ./gw.db
            destinations:
              crm: {type: url, url: "https://crm.example/in"}
              other: {type: url, url: "https://other.example/in"}
            routes:
              a2p: crm
            """
        ),
        encoding="utf-8",
    )
    delivered, dead, retrying = trio.run(_populate, tmp_path / "gw.db")
    return Events(config=config, delivered=delivered, dead=dead, retrying=retrying)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main([*argv, "--log-level", "WARNING"])
    out, err = capsys.readouterr()
    return code, out, err


def test_table_shows_every_push_newest_first(
    events: Events, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "history", "--config", str(events.config))
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == [
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
    ]
    assert [line.split()[2] for line in lines[1:]] == [
        events.retrying,
        events.dead,
        events.delivered,
    ]
    delivered = lines[3].split()
    assert delivered[6:] == ["crm", "delivered", "1", "200", "42ms"]  # RECEIVED is 2 words
    assert "HTTP 410 Gone" in lines[2]
    assert "secret words" not in out  # no message text in the table


def test_filters_and_json_lines(events: Events, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "history", "--config", str(events.config), "--status", "dead")
    assert code == 0
    assert events.dead in out
    assert events.delivered not in out
    code, out, _ = run(capsys, "history", "--config", str(events.config), "--status", "failed")
    assert events.retrying in out
    assert events.dead not in out
    code, out, _ = run(
        capsys, "history", "--config", str(events.config), "--number", "447700900001", "--json"
    )
    (line,) = out.splitlines()
    obj = json.loads(line)
    assert obj["id"] == events.delivered
    assert obj["status"] == "delivered"
    assert obj["from"] == "447700900001"
    assert [j["state"] for j in obj["jobs"]] == ["delivered"]
    (attempt,) = obj["attempts"]
    assert (attempt["attempt"], attempt["status_code"], attempt["latency_ms"]) == (1, 200, 42.0)
    assert attempt["response_excerpt"] == '{"ok": true}'
    assert "text" not in obj
    code, out, _ = run(capsys, "history", "--config", str(events.config), "--destination", "other")
    assert "no events" in out
    code, out, _ = run(capsys, "history", "--config", str(events.config), "--since", "1h")
    assert len(out.splitlines()) == 4
    code, out, _ = run(capsys, "history", "--config", str(events.config), "--limit", "1")
    assert len(out.splitlines()) == 3
    assert "--limit for more" in out


def test_event_detail_with_every_attempt(
    events: Events, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "history", "--config", str(events.config), "--event", events.dead)
    assert code == 0
    assert f"event     {events.dead}" in out
    assert "status    dead" in out
    assert "https://crm.example/in" in out
    assert "410" in out
    assert "secret words" not in out
    code, out, _ = run(
        capsys, "history", "--config", str(events.config), "--event", events.dead, "--text"
    )
    assert "text      secret words from 447700900002" in out
    code, out, _ = run(
        capsys, "history", "--config", str(events.config), "--event", events.dead, "--json"
    )
    obj = json.loads(out)
    assert obj["event"]["id"] == events.dead
    assert "text" not in obj["event"]
    assert obj["attempts"][0]["outcome"] == "permanent"
    code, _, err = run(capsys, "history", "--config", str(events.config), "--event", "nope")
    assert code == 1
    assert "no event nope" in err


def test_replay_queues_new_jobs_the_history_shows(
    events: Events, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "replay", events.dead, "--config", str(events.config))
    assert code == 0
    assert "queued 1 new job" in out
    code, out, _ = run(
        capsys, "history", "--config", str(events.config), "--event", events.dead, "--json"
    )
    jobs = json.loads(out)["jobs"]
    assert [j["state"] for j in jobs] == ["dead", "queued"]
    assert jobs[0]["replayed_by"] == jobs[1]["job_id"]
    code, out, _ = run(
        capsys, "replay", events.delivered, "--destination", "other", "--config", str(events.config)
    )
    assert code == 0
    code, out, _ = run(
        capsys, "history", "--config", str(events.config), "--destination", "other", "--json"
    )
    assert [json.loads(line)["id"] for line in out.splitlines()] == [events.delivered]


def test_replay_dead_letters_and_errors(
    events: Events, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out, _ = run(capsys, "replay", "--dead-letters", "--config", str(events.config))
    assert (code, out) == (0, "replayed 1 dead letter\n")
    code, out, _ = run(capsys, "replay", "--dead-letters", "--config", str(events.config))
    assert out == "replayed 0 dead letters\n"
    code, _, err = run(capsys, "replay", "nope", "--config", str(events.config))
    assert (code, err) == (1, "gatewayd replay: no event nope\n")
    code, _, err = run(
        capsys, "replay", events.dead, "--destination", "ghost", "--config", str(events.config)
    )
    assert code == 1
    assert "no destination 'ghost'" in err
    code, _, err = run(capsys, "replay", "--config", str(events.config))
    assert code == 2
    code, _, err = run(capsys, "history", "--store", str(tmp_path / "missing.db"))
    assert code == 1
    assert "no store at" in err
    code, _, err = run(capsys, "history", "--config", str(tmp_path / "missing.yaml"))
    assert code == 1
    assert "cannot read" in err


def test_store_option_bypasses_the_config(
    events: Events, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "history", "--store", str(events.config.parent / "gw.db"))
    assert code == 0
    assert events.delivered in out


def test_default_config_path() -> None:
    args = cli.parseargs(["history"])
    assert args.config == "/etc/gatewayd/gatewayd.yaml"
    args = cli.parseargs(["replay", "01ABC", "--destination", "crm"])
    assert (args.event_id, args.destination) == ("01ABC", "crm")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("15m", 900), ("1h", 3600), ("7d", 604800), ("2w", 1209600), ("30", 30)],
)
def test_parse_age(text: str, seconds: float) -> None:
    assert parse_age(text) == seconds
