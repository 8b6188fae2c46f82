"""The sd_notify protocol against a datagram socket standing in for systemd."""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

import pytest
import trio
import trio.testing

from gatewayd.sdnotify import Notifier, watchdog_interval


def _receiver(address: str | bytes) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(5)
    return sock


def _lines(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode().split("\n")


def test_path_socket_gets_ready_reloading_stopping(tmp_path: Path) -> None:
    path = tmp_path / "notify"
    with _receiver(str(path)) as rx:
        n = Notifier({"NOTIFY_SOCKET": str(path)})
        assert n.enabled
        assert n.ready("running")
        assert _lines(rx) == ["READY=1", "STATUS=running"]
        assert n.reloading()
        lines = _lines(rx)
        assert lines[0] == "RELOADING=1"
        assert lines[1].startswith("MONOTONIC_USEC=")
        assert int(lines[1].split("=")[1]) > 0
        assert n.stopping("stopping\nnow")
        assert _lines(rx) == ["STOPPING=1", "STATUS=stopping now"]  # STATUS is one line
        assert n.watchdog()
        assert _lines(rx) == ["WATCHDOG=1"]
        n.close()
        assert not n.notify("READY=1")


def test_abstract_namespace_socket() -> None:
    name = f"gatewayd-test-{uuid.uuid4().hex}"
    with _receiver(b"\0" + name.encode()) as rx:
        n = Notifier({"NOTIFY_SOCKET": "@" + name})
        assert n.ready()
        assert _lines(rx) == ["READY=1"]
        n.close()


@pytest.mark.parametrize("value", ["", "relative/path", "vsock:2:1234"])
def test_without_a_usable_socket_everything_is_a_no_op(value: str) -> None:
    n = Notifier({"NOTIFY_SOCKET": value} if value else {})
    assert not n.enabled
    assert not n.ready()
    assert not n.stopping()
    assert n.watchdog_seconds is None


def test_a_missing_manager_does_not_raise(tmp_path: Path) -> None:
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody")})
    assert n.enabled
    assert not n.ready()  # ENOENT: logged, not raised
    n.close()


def test_watchdog_interval_is_half_watchdog_usec() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "x"}) is None
    assert watchdog_interval({}) is None
    mine = str(os.getpid())
    assert watchdog_interval({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": mine}) == 0.5
    assert watchdog_interval({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}) is None


async def test_watchdog_loop_pings_every_half_period(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    path = tmp_path / "notify"
    rx = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    await rx.bind(str(path))
    n = Notifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "2000000"})
    assert n.watchdog_seconds == 1.0
    times: list[float] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(n.watchdog_loop)
        for _ in range(3):
            assert await rx.recv(100) == b"WATCHDOG=1"
            times.append(trio.current_time())
        nursery.cancel_scope.cancel()
    assert times == [0.0, 1.0, 2.0]
    rx.close()
    n.close()


async def test_watchdog_loop_returns_when_not_asked_for() -> None:
    with trio.fail_after(1):
        await Notifier({}).watchdog_loop()
