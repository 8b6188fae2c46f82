"""In-process fault harness: a daemon under the autojump clock, scripted SMSC peers.

The store runs inline (``use_thread=False``) and the daemon's wall clock follows trio's
clock, so retry schedules, timeouts and enquire_link timers are deterministic under
``autojump_clock``.
"""

from __future__ import annotations

import contextlib
import struct
import textwrap
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import attrs
import trio

from gatewayd.app import Daemon
from gatewayd.config import Config, loads_config
from gatewayd.smpp import pdu as P
from gatewayd.store import SqliteStore
from tests.smpp.peers import RawPeer

StoreFactory = Callable[..., SqliteStore]

REAL_TIME_LIMIT = 120.0  # seconds of real time an in-process scenario may take


class Livelock(AssertionError):
    """The scenario outlived its real-time limit: under a mock clock, virtual time only moves
    when every task sleeps, so a task that spins without sleeping stops the clock (and any
    ``fail_after``) for good."""


@contextlib.asynccontextmanager
async def real_time_limit(seconds: float = REAL_TIME_LIMIT) -> AsyncIterator[None]:
    """Fail (instead of hanging) if the block takes more than ``seconds`` of real time."""
    done = threading.Event()

    async def watchdog() -> None:
        finished = await trio.to_thread.run_sync(done.wait, seconds, abandon_on_cancel=True)
        if not finished:
            raise Livelock(
                f"still running after {seconds:g}s of real time, virtual time stuck at "
                f"{trio.current_time():.6f}: a task spins without sleeping"
            )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watchdog)
        try:
            yield
        finally:
            done.set()
            nursery.cancel_scope.cancel()


@attrs.define
class Running:
    daemon: Daemon
    store: SqliteStore
    config: Config


def carrier_yaml(port: int, **options: str) -> str:
    """One carrier ``sim`` block (indented for ``carriers:``) with extra keys as YAML."""
    lines = [
        "  sim:",
        "    host: 127.0.0.1",
        f"    port: {port}",
        "    system_id: gw",
        "    password: pw",
    ]
    lines += [f"    {key}: {value}" for key, value in options.items()]
    return "\n".join(lines) + "\n"


def config_yaml(carriers: str, rest: str, *, store: str = "./gw.db") -> str:
    return f"store: {store}\ncarriers:\n" + carriers + textwrap.dedent(rest)


@contextlib.asynccontextmanager
async def daemon_running(
    tmp_path: Path, text: str, *, store_factory: StoreFactory = SqliteStore
) -> AsyncIterator[Running]:
    """Run a :class:`Daemon` for ``text`` (a YAML config) until the block ends."""
    config = loads_config(text, base_dir=tmp_path)
    config = attrs.evolve(config, api=attrs.evolve(config.api, port=0))  # any free port
    base = time.time()

    def wall() -> float:  # wall time that follows trio's (autojump) clock
        return base + trio.current_time()

    store = store_factory(
        config.store, dedup_window=config.dedup_window, use_thread=False, wall_clock=wall
    )
    daemon = Daemon(config, store=store, wall_clock=wall)
    async with real_time_limit(), trio.open_nursery() as nursery:
        await nursery.start(daemon.run)
        try:
            yield Running(daemon=daemon, store=store, config=config)
        finally:
            daemon.stop()
            with trio.move_on_after(60):
                await daemon.stopped.wait()
            nursery.cancel_scope.cancel()


def mo_fields(text: str, *, source: str = "447700900001", to: str = "12345") -> dict[str, Any]:
    return {
        "source_addr_ton": 1,
        "source_addr_npi": 1,
        "source_addr": source,
        "dest_addr_ton": 0,
        "dest_addr_npi": 1,
        "destination_addr": to,
        "esm_class": 0,
        "data_coding": 0,
        "short_message": text.encode("latin-1"),
    }


def deliver_sm(sequence: int, text: str, **kw: str) -> bytes:
    return P.encode(P.make("deliver_sm", sequence=sequence, **mo_fields(text, **kw)))


def reset(stream: trio.SocketStream) -> None:
    """Make the next close a TCP RST instead of a FIN."""
    stream.socket.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_LINGER, struct.pack("ii", 1, 0))


async def await_response(
    stream: trio.SocketStream, peer: RawPeer, framer: P.Framer, sequence: int
) -> P.Pdu | None:
    """Read until the response to ``sequence``, answering the ESME's requests meanwhile."""
    while True:
        pdu = await peer.read_pdu(stream, framer)
        if pdu is None:
            return None
        if pdu.is_response:
            if pdu.sequence == sequence:
                return pdu
            continue
        await stream.send_all(P.encode(P.response_for(pdu)))


async def serve_requests(stream: trio.SocketStream, peer: RawPeer, framer: P.Framer) -> None:
    """Answer whatever the ESME asks (enquire_link, unbind) until it closes."""
    while (pdu := await peer.read_pdu(stream, framer)) is not None:
        if not pdu.is_response:
            await stream.send_all(P.encode(P.response_for(pdu)))
            if pdu.command == "unbind":
                return


async def wait_until(predicate: Callable[[], bool], step: float = 0.01) -> None:
    while not predicate():
        await trio.sleep(step)
