"""Operating the daemon: reload, drain, retention, sd_notify, logs without secrets.

In-process tests run under ``autojump_clock`` with inline store writes (as in
``helpers.running``); the subprocess tests run ``python -m gatewayd run`` in real time
against the simulator and webhook receiver in this process, with a deadline on every wait,
and stand in for systemd with a datagram socket as ``NOTIFY_SOCKET``.
"""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import socket
import textwrap
from pathlib import Path

import attrs
import pytest
import trio
import trio.testing

from gatewayd import cli, logs
from gatewayd.app import Daemon, ReloadError
from gatewayd.config import Config, loads_config
from gatewayd.dispatch import REMOVED_REASON
from gatewayd.smpp import pdu as P
from gatewayd.smpp.simulator import Simulator, SimulatorSettings
from gatewayd.store import EventStatus, JobState
from gatewayd.webhook_receiver import ReceivedRequest, Reply, open_webhook_receiver
from tests.e2e.helpers import (
    JWT_SECRET,
    Harness,
    config_text,
    free_port,
    mo_fields,
    running,
    start_daemon,
)

# --------------------------------------------------------------------------- in-process


def _free_api(config: Config) -> Config:
    return attrs.evolve(config, api=attrs.evolve(config.api, port=0))


async def bound(h: Harness, carrier: str = "sim") -> None:
    """Wait until the carrier's binds exist and are bound (they start after ``run``)."""
    with trio.fail_after(30):
        while not h.daemon.binds.get(carrier) or not all(
            b.is_bound for b in h.daemon.binds[carrier]
        ):
            await trio.sleep(0.1)


def reconfigured(h: Harness, source: str) -> Config:
    return _free_api(loads_config(source, base_dir=h.config.store.parent))


async def test_reload_switches_a_destination_url_without_dropping_the_bind(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with running(tmp_path) as h:
        port = h.sim.port
        assert await h.sim.deliver("before", mo_fields(b"before")) == P.ESME_ROK
        await h.rx.wait_for(1)
        bind = h.daemon.binds["sim"][0]
        crm_before = h.daemon.destinations["crm"]
        status_before = h.daemon.destinations["status"]

        new = config_text(port, h.rx.url).replace("/crm\n", "/crm-v2\n")
        await h.daemon.reload(reconfigured(h, new))

        assert await h.sim.deliver("after", mo_fields(b"after")) == P.ESME_ROK
        reqs = await h.rx.wait_for(2)
        await trio.sleep(5)
        assert h.daemon.binds["sim"] == [bind]  # the same bind object, still bound
        assert bind.is_bound
        assert h.daemon.destinations["crm"] is not crm_before
        assert h.daemon.destinations["status"] is status_before  # unchanged: kept
    assert [(r.path, r.json()["text"]) for r in reqs] == [("/crm", "before"), ("/crm-v2", "after")]
    assert [b[:2] for b in h.sim.binds] == [("gw", "transceiver")]  # bound once, never again


async def test_reload_rebinds_only_a_changed_carrier(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with running(tmp_path) as h:
        await bound(h)
        old_bind = h.daemon.binds["sim"][0]
        new = config_text(h.sim.port, h.rx.url).replace("window: 10", "window: 5")
        await h.daemon.reload(reconfigured(h, new))
        (new_bind,) = h.daemon.binds["sim"]
        assert new_bind is not old_bind
        with trio.fail_after(30):
            await new_bind.bound_event.wait()
        assert new_bind.settings.window == 5
        assert await h.sim.deliver("after", mo_fields(b"after rebind")) == P.ESME_ROK
        reqs = await h.rx.wait_for(1)
        await trio.sleep(10)
        assert old_bind.state.value == "stopped"  # unbound cleanly
    assert reqs[0].json()["text"] == "after rebind"
    assert len(h.sim.binds) == 2


async def test_reload_that_cannot_be_applied_keeps_the_old_config(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    calls: list[str] = []

    async with running(tmp_path) as h:
        real = h.daemon._destination_factory

        def failing(config: object, daemon: Daemon) -> object:
            calls.append(getattr(config, "name", ""))
            raise OSError("cannot read the CA file")

        h.daemon._destination_factory = failing  # type: ignore[assignment]
        old = h.daemon.config
        new = config_text(h.sim.port, h.rx.url).replace("/crm\n", "/crm-v2\n")
        with pytest.raises(ReloadError, match="CA file"):
            await h.daemon.reload(reconfigured(h, new))
        h.daemon._destination_factory = real
        assert h.daemon.config is old
        assert await h.sim.deliver("x", mo_fields(b"still old")) == P.ESME_ROK
        reqs = await h.rx.wait_for(1)
    assert calls == ["crm"]
    assert reqs[0].path == "/crm"


async def test_reload_dead_letters_a_removed_destinations_queue(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with running(tmp_path) as h:
        h.rx.respond_with(503, then=503)  # crm's job waits for its retry
        await h.sim.deliver("x", mo_fields(b"stuck"))
        await h.rx.wait_for(1)
        # crm removed; the a2p route now goes to getter
        new = (
            config_text(h.sim.port, h.rx.url)
            .replace("incoming: crm", "incoming: getter")
            .replace("STOP: [crm, legacy]", "STOP: [legacy]")
            .replace("a2p: crm", "a2p: getter")
        )
        start = new.index("  crm:\n")
        end = new.index("  status:\n")
        new = new[:start] + new[end:]
        await h.daemon.reload(reconfigured(h, new))
        assert "crm" not in h.daemon.destinations
        page = await h.store.list_events(limit=10)
        record = await h.store.get_event(page.items[0].id)
        assert record.status is EventStatus.DEAD
        assert [(j.destination, j.state, j.last_error) for j in record.jobs] == [
            ("crm", JobState.DEAD, REMOVED_REASON)
        ]
        h.rx.respond_with(200)
        await h.sim.deliver("y", mo_fields(b"new route"))
        reqs = await h.rx.wait_for(2)
        await trio.sleep(20)  # the removed destination gets nothing more
        assert len(h.rx.requests) == 2
    assert reqs[-1].path == "/get"


async def test_retention_prunes_delivered_and_later_dead_events(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    retention = "retention: {delivered: 1h, dead: 2h}\n"

    async with running(tmp_path, text=lambda p, u: config_text(p, u, retention)) as h:
        h.daemon.retention_interval = 600
        h.rx.respond_with(200, 500, 500, 500, 500)  # crm: first delivered, second dead
        await h.sim.deliver("ok", mo_fields(b"kept for an hour"))
        await h.rx.wait_for(1)
        await h.sim.deliver("dead", mo_fields(b"dead letter"))
        await h.rx.wait_for(5)
        await trio.sleep(60)
        statuses = sorted(s.status.value for s in (await h.store.list_events()).items)
        assert statuses == ["dead", "delivered"]
        await trio.sleep(3600 + 600)  # older than an hour, and a prune round since
        statuses = sorted(s.status.value for s in (await h.store.list_events()).items)
        assert statuses == ["dead"]
        await trio.sleep(3600)
        assert (await h.store.list_events()).items == ()


async def test_logs_carry_no_message_text_and_no_secrets(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    secrets = {
        "carrier": "cpw7f3a9",
        "basic": "basic-pw-91c2",
        "bearer": "bearer-token-55e1",
        "admin": "admin-token-0d9b",
        "jwt": JWT_SECRET,
    }
    extra = textwrap.dedent(
        f"""\
        api:
          admin_tokens: [{secrets["admin"]}]
          tokens: [send-token-4c4c]
        """
    )

    def text(port: int, url: str) -> str:
        source = config_text(port, url, extra).replace(
            "password: pw", "password: " + secrets["carrier"]
        )
        return source.replace(
            "  getter:\n    type: url\n",
            "  getter:\n    type: url\n"
            f"    auth: {{basic: {{username: u, password: {secrets['basic']}}}}}\n",
        ).replace(
            "  status:\n    type: url\n",
            f"  status:\n    type: url\n    auth: {{bearer: {secrets['bearer']}}}\n",
        )

    buffer = io.StringIO()
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    logs.configure("json", "DEBUG", stream=buffer)
    try:
        sim = SimulatorSettings(port=0, password=secrets["carrier"], resend_delay=5.0)
        async with running(tmp_path, sim_settings=sim, text=text) as h:
            h.rx.respond_with(200, 503, then=200)
            await h.sim.deliver("a", mo_fields(b"private words alpha"))
            await h.sim.deliver("b", mo_fields(b"INFO private words beta"))
            receipt = (
                b"id:0A1B sub:001 dlvrd:001 submit date:2611220101 done date:2611220102 "
                b"stat:DELIVRD err:000 text:private receipt"
            )
            await h.sim.deliver("dlr", mo_fields(receipt, esm=0x04))
            await h.rx.wait_for(4)
            await trio.sleep(30)
            await h.daemon.reload(reconfigured(h, text(h.sim.port, h.rx.url)))
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    output = buffer.getvalue()
    assert '"msg": "stored"' in output  # debug records were written
    for line in output.splitlines():
        json.loads(line)  # one JSON object per line
    for needle in ("private words", "private receipt", *secrets.values(), "send-token-4c4c"):
        assert needle not in output, needle


async def test_log_text_only_when_enabled(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    buffer = io.StringIO()
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    logs.configure("text", "DEBUG", stream=buffer)
    try:
        async with running(tmp_path) as h:
            h.daemon.log_text = True  # gatewayd run --log-level DEBUG --log-text
            await h.sim.deliver("a", mo_fields(b"shown on purpose"))
            await h.rx.wait_for(1)
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    assert "message_text=shown on purpose" in buffer.getvalue()


def test_run_takes_the_log_options() -> None:
    args = cli.parseargs(["run", "--log-format", "text", "--log-level", "DEBUG", "--log-text"])
    assert (args.log_format, args.log_level, args.log_text) == ("text", "DEBUG", True)
    assert cli.parseargs(["run"]).log_text is False


# --------------------------------------------------------------------------- subprocess


def write_config(path: Path, sim_port: int, rx_url: str, crm_path: str = "/crm") -> None:
    path.write_text(
        textwrap.dedent(
            f"""\
            store: ./gw.db
            carriers:
              sim:
                host: 127.0.0.1
                port: {sim_port}
                system_id: gw
                password: pw
                window: 10
                reconnect: {{min: 100ms, max: 500ms}}
            destinations:
              crm:
                type: url
                url: {rx_url}{crm_path}
                retry: {{attempts: 1000, interval: 200ms}}
            routes:
              a2p: crm
            api:
              listen: 127.0.0.1:{free_port()}
            drain_grace: 3s
            """
        ),
        encoding="utf-8",
    )


class FakeSystemd:
    """A NOTIFY_SOCKET: collects the daemon's notifications."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.messages: list[list[str]] = []
        self._changed = trio.Event()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with self.sock:
            await self.sock.bind(str(self.path))
            task_status.started()
            while True:
                data = await self.sock.recv(4096)
                self.messages.append(data.decode().split("\n"))
                self._changed.set()
                self._changed = trio.Event()

    def keys(self) -> list[str]:
        """The first line of every notification but the watchdog pings."""
        return [m[0] for m in self.messages if m[0] != "WATCHDOG=1"]

    async def wait_for(self, count: int, key: str) -> None:
        while self.keys().count(key) < count:
            await self._changed.wait()


@pytest.mark.slow
async def test_notify_reload_and_stop_as_systemd_sees_them(tmp_path: Path) -> None:
    sim = Simulator(SimulatorSettings(port=0, password="pw", resend_delay=0.3))
    systemd = FakeSystemd(tmp_path / "notify")
    log_path = tmp_path / "stderr.log"
    async with open_webhook_receiver() as rx, trio.open_nursery() as nursery:
        port = await nursery.start(sim.serve)
        await nursery.start(systemd.serve)
        config = tmp_path / "gatewayd.yaml"
        write_config(config, port, rx.url)
        env = {"NOTIFY_SOCKET": str(systemd.path), "WATCHDOG_USEC": "400000"}
        with trio.fail_after(60):
            proc = await start_daemon(config, stderr=log_path, env={**os.environ, **env})
            await systemd.wait_for(1, "READY=1")
            assert await sim.deliver("one", mo_fields(b"first")) == P.ESME_ROK
            await rx.wait_for(1)

            # a reload that changes the destination URL: new deliveries go there
            write_config(config, port, rx.url, crm_path="/crm-v2")
            proc.send_signal(signal.SIGHUP)
            await systemd.wait_for(2, "READY=1")
            assert await sim.deliver("two", mo_fields(b"second")) == P.ESME_ROK
            await rx.wait_for(2)

            # a broken file: the error is logged, the old config stays in force
            config.write_text("carriers: [this is not a mapping\n", encoding="utf-8")
            proc.send_signal(signal.SIGHUP)
            await systemd.wait_for(3, "READY=1")
            assert await sim.deliver("three", mo_fields(b"third")) == P.ESME_ROK
            await rx.wait_for(3)

            while sum(m == ["WATCHDOG=1"] for m in systemd.messages) < 3:
                await trio.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            assert await proc.wait() == 0
        nursery.cancel_scope.cancel()

    assert systemd.keys() == [
        "READY=1",
        "RELOADING=1",
        "READY=1",
        "RELOADING=1",
        "READY=1",
        "STOPPING=1",
    ]
    reloading = next(m for m in systemd.messages if m[0] == "RELOADING=1")
    assert reloading[1].startswith("MONOTONIC_USEC=")
    failed_ready = [m for m in systemd.messages if m[0] == "READY=1"][2]
    assert "STATUS=reload failed: old configuration kept" in failed_ready
    assert [r.path for r in rx.requests] == ["/crm", "/crm-v2", "/crm-v2"]
    assert len(sim.binds) == 1  # one bind through both reloads
    records = [json.loads(line) for line in log_path.read_text().splitlines()]
    errors = [r["msg"] for r in records if r["level"] == "error"]
    assert any("reload failed, old configuration kept" in e for e in errors), errors
    assert any(r["msg"] == "configuration reloaded" for r in records)


@pytest.mark.slow
async def test_sigterm_mid_stream_loses_nothing_and_exits_within_the_grace(
    tmp_path: Path,
) -> None:
    n = 150
    sim = Simulator(
        SimulatorSettings(port=0, password="pw", mo=n, window=10, rate=150, resend_delay=0.3)
    )
    delivered: dict[str, int] = {}

    async def slow(req: ReceivedRequest) -> Reply:
        await trio.sleep(0.2)  # attempts are in flight when SIGTERM comes
        text = json.loads(req.body)["text"]
        delivered[text] = delivered.get(text, 0) + 1
        return Reply(status=200)

    log_path = tmp_path / "stderr.log"
    async with open_webhook_receiver() as rx, trio.open_nursery() as nursery:
        rx.respond_with(slow)
        port = await nursery.start(sim.serve)
        config = tmp_path / "gatewayd.yaml"
        write_config(config, port, rx.url)
        with trio.fail_after(90):
            proc = await start_daemon(config, stderr=log_path)
            while len(sim.acked) < n // 3:
                await trio.sleep(0.01)
            stopped_at = trio.current_time()
            proc.send_signal(signal.SIGTERM)
            assert await proc.wait() == 0
            took = trio.current_time() - stopped_at
            acked_by_first = set(sim.acked)
            # the rest of the stream goes to a second run, which also delivers the backlog
            proc = await start_daemon(config, stderr=log_path)
            await sim.mo_done.wait()
            while len(delivered) < n:
                await trio.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            assert await proc.wait() == 0
        nursery.cancel_scope.cancel()

    assert took < 3 + 5  # drain_grace (3s) plus the unbind; TimeoutStopSec has more margin
    assert acked_by_first < set(sim.acked)
    assert set(delivered) == {f"TEXT {i}" for i in range(1, n + 1)}
    records = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert any(r["msg"].startswith("stopping: unbinding") for r in records)
    # the attempts in flight finished within the grace period: none was cut off
    assert not any(r["msg"].startswith("drain grace period over") for r in records)
