"""In-process fault harness: a daemon under the autojump clock, scripted SMSC peers.

The store runs inline (``use_thread=False``) and the daemon's wall clock follows trio's
clock, so retry schedules, timeouts and enquire_link timers are deterministic under
``autojump_clock``.

The bytes between the daemon and its peers cross real loopback sockets, and the autojump
clock knows nothing of them: as soon as every task waits, it leaps to the next timer, even
while a response is still on its way (a slow or loaded machine). A response in flight would
then time out in virtual time and a bind drop, or an attempt fail. So a scenario runs
:func:`paced`: virtual time passes in steps of at most :data:`PACE`, which the loopback
keeps up with. And a test that asserts on what a peer saw first waits (:func:`wait_until`)
for the peer to have read it.
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
PACE = 0.01  # seconds of virtual time the autojump clock may leap at once in a scenario
STOP_LIMIT = 60.0  # seconds (virtual) the daemon may take to stop at the end of a scenario


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


@contextlib.asynccontextmanager
async def paced(step: float = PACE) -> AsyncIterator[None]:
    """Within the block, let the autojump clock leap at most ``step`` at a time.

    A timer every ``step`` is always the next one due, so however long a task sleeps or
    waits for an event, the clock moves in small steps while bytes cross a real socket
    (see the module docstring). Timers still fire at their exact deadlines.
    """

    async def pacer() -> None:
        while True:
            await trio.sleep(step)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(pacer)
        try:
            yield
        finally:
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
    # paced to the end: the stop's unbind and drain cross the loopback too
    async with real_time_limit(), paced(), trio.open_nursery() as nursery:
        await nursery.start(daemon.run)
        try:
            yield Running(daemon=daemon, store=store, config=config)
        finally:
            daemon.stop()
            with trio.move_on_after(STOP_LIMIT):
                await daemon.stopped.wait()
            nursery.cancel_scope.cancel()
        # (not reached when the block raised: that error is the one to see)
        if not daemon.stopped.is_set():
            raise AssertionError(f"the daemon did not stop within {STOP_LIMIT:g}s")


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


async def wait_until(predicate: Callable[[], bool], step: float = PACE) -> None:
    """Poll ``predicate`` every ``step`` (virtual) seconds until it holds (callers set a
    deadline). Polled, not an Event wait: the clock moves in steps meanwhile."""
    while not predicate():
        await trio.sleep(step)


async def pass_time(seconds: float) -> None:
    """Let ``seconds`` of virtual time pass in :func:`wait_until`'s small steps.

    Under autojump a plain sleep (or an Event wait) outside :func:`paced` leaps to the next
    timer as soon as every task waits, even while bytes are still crossing a real socket:
    a response in flight would time out and the bind drop. In small steps the clock cannot
    outrun the loopback.
    """
    end = trio.current_time() + seconds
    await wait_until(lambda: trio.current_time() >= end)
