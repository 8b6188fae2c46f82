"""A fast HTTP/1.1 webhook receiver for the pipeline benchmarks (runs as its own process).

A raw asyncio protocol (no HTTP library): it parses just enough HTTP/1.x to find each
request's end (``Content-Length``; keep-alive; ``Connection: close``), answers
``200 OK`` at once, and records, per request, the MO it carries and the arrival time
(``time.time()``, comparable across processes on one machine).

The MO is found anywhere in the request (URL query or body, JSON or form or text): the
benchmark's simulator sends texts ``TEXT <i> <send-epoch>``; the regex below accepts the
space raw, ``+`` or ``%20``, so gatewayd's JSON body and Kannel's URL templates both match.

Control is a line protocol on stdin/stdout, so the benchmark needs no second port::

    -> reset              forget everything received
    -> count              answers "ok count MOS OTHER" (requests with and without an MO)
    -> dump FILE          write {"arrivals": [[i, sent, arrived], ...], "other": n} to FILE
    <- ok ...             after each command

    python bench/receiver.py [--port 0]      # prints "listening on 127.0.0.1:PORT"
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time

RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n"
    b"Connection: keep-alive\r\n\r\nok"
)
RESPONSE_CLOSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
MO = re.compile(rb"TEXT(?: |\+|%20)(\d+)(?: |\+|%20)(\d+\.\d+)")
CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.IGNORECASE)
CLOSE = re.compile(rb"\r\nconnection:[ \t]*close", re.IGNORECASE)
KEEP_ALIVE = re.compile(rb"\r\nconnection:[ \t]*keep-alive", re.IGNORECASE)


class Counter:
    def __init__(self) -> None:
        self.arrivals: list[tuple[int, float, float]] = []
        self.other = 0

    def reset(self) -> None:
        self.arrivals = []
        self.other = 0


class Http(asyncio.Protocol):
    def __init__(self, counter: Counter) -> None:
        self.counter = counter
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        now = time.time()
        buffer = self.buffer + data
        out: list[bytes] = []
        close = False
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                break
            head = buffer[: end + 2]
            m = CONTENT_LENGTH.search(head)
            length = int(m.group(1)) if m else 0
            total = end + 4 + length
            if len(buffer) < total:
                break
            request = buffer[:total]
            buffer = buffer[total:]
            mo = MO.search(request)
            if mo is None:
                self.counter.other += 1
            else:
                self.counter.arrivals.append((int(mo.group(1)), float(mo.group(2)), now))
            http10 = head[: head.find(b"\r\n")].endswith(b"HTTP/1.0")
            if CLOSE.search(head) or (http10 and not KEEP_ALIVE.search(head)):
                close = True
                out.append(RESPONSE_CLOSE)
                break
            out.append(RESPONSE)
        self.buffer = buffer
        assert self.transport is not None
        if out:
            self.transport.write(b"".join(out))
        if close:
            self.transport.close()


def write_json(path: str, payload: object) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(payload, f)


async def control(counter: Counter) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = (await reader.readline()).decode().strip()
        if not line:
            return  # stdin closed: the benchmark is gone
        cmd, _, arg = line.partition(" ")
        if cmd == "reset":
            counter.reset()
            print("ok reset", flush=True)
        elif cmd == "count":
            print(f"ok count {len(counter.arrivals)} {counter.other}", flush=True)
        elif cmd == "dump":
            payload = {"arrivals": counter.arrivals, "other": counter.other}
            await loop.run_in_executor(None, write_json, arg, payload)
            print(f"ok dump {len(counter.arrivals)}", flush=True)
        else:
            print(f"error unknown command {cmd!r}", flush=True)


async def main(port: int) -> None:
    counter = Counter()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Http(counter), "127.0.0.1", port, backlog=1024)
    bound = server.sockets[0].getsockname()[1]
    print(f"listening on 127.0.0.1:{bound}", flush=True)
    async with server:
        await control(counter)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=0)
    asyncio.run(main(parser.parse_args().port))
