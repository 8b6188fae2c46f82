"""systemd's notify protocol (``sd_notify(3)``), spoken directly.

The service manager passes ``NOTIFY_SOCKET``: the path of an ``AF_UNIX`` datagram socket,
or, starting with ``@``, a name in the abstract namespace (the ``@`` stands for the
leading NUL byte). Each notification is one datagram of ``KEY=VALUE`` lines. Without
``NOTIFY_SOCKET`` (not under systemd, or ``Type=simple``) every call does nothing.

What gatewayd sends (``Type=notify`` in ``systemd/gatewayd.service``):

- ``READY=1`` once every component has started (binds may still be connecting),
  and again after each reload;
- ``RELOADING=1`` with ``MONOTONIC_USEC=`` when a SIGHUP reload begins
  (``Type=notify-reload`` requires the timestamp; older managers ignore it);
- ``STOPPING=1`` when a shutdown begins;
- ``WATCHDOG=1`` every half ``WATCHDOG_USEC`` when the unit sets ``WatchdogSec=``
  (:meth:`Notifier.watchdog_loop`), so a wedged event loop gets the process restarted;
- ``STATUS=`` one-line descriptions that ``systemctl status`` shows.

Sending never raises: a lost notification must not take the daemon down.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

import trio

__all__ = ["Notifier", "watchdog_interval"]

log = logging.getLogger("gatewayd.sdnotify")


def _address(value: str) -> str | bytes | None:
    if not value:
        return None
    if value.startswith("@"):
        return b"\0" + value[1:].encode()  # abstract namespace
    if value.startswith("/"):
        return value
    return None  # vsock and other forms are not for us


def watchdog_interval(env: Mapping[str, str]) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings (half of ``WATCHDOG_USEC``), or None.

    ``WATCHDOG_PID``, when set, names the process the watchdog is meant for.
    """
    usec = env.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    pid = env.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return None
    return int(usec) / 2_000_000


class Notifier:
    """Sends notifications to ``NOTIFY_SOCKET`` (taken from ``env``, default the process's)."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self.address = _address(env.get("NOTIFY_SOCKET", ""))
        self.watchdog_seconds = watchdog_interval(env) if self.address is not None else None
        self._sock: socket.socket | None = None
        if self.address is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.setblocking(False)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, *lines: str) -> bool:
        """Send one datagram of ``lines``; False if not under systemd or it failed."""
        if self._sock is None or self.address is None:
            return False
        data = "\n".join(lines).encode()
        try:
            self._sock.sendto(data, self.address)
        except OSError as exc:  # the manager went away, or its queue is full
            log.warning("sd_notify failed: %s", exc)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.notify("READY=1", *self._status(status))

    def reloading(self, status: str | None = "reloading the configuration") -> bool:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}", *self._status(status))

    def stopping(self, status: str | None = "stopping: draining attempts in flight") -> bool:
        return self.notify("STOPPING=1", *self._status(status))

    def status(self, text: str) -> bool:
        return self.notify(*self._status(text))

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    async def watchdog_loop(self) -> None:
        """Ping the watchdog every half ``WATCHDOG_USEC`` until cancelled (if it is set)."""
        if self.watchdog_seconds is None:
            return
        while True:
            self.watchdog()
            await trio.sleep(self.watchdog_seconds)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    @staticmethod
    def _status(text: str | None) -> tuple[str, ...]:
        if not text:
            return ()
        return ("STATUS=" + " ".join(text.split()),)  # one line
