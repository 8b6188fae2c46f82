"""The SMSC side of the outbound benchmarks (``bench_receipts.py``, ``bench_forward.py``).

gatewayd's own simulator (``gatewayd.smpp.simulator.Simulator``, the code behind
``gatewayd simulate``), run as a process of its own, plus what a benchmark needs:

- every ``submit_sm`` is recorded with its arrival time (``time.time()``) and its text;
- receipts (``--dlr-delay``) are the simulator's own (``registered_delivery`` 1);
- optional MOs (``--mo N``) with texts ``TEXT <i> <send epoch>`` to ``--to`` (a long
  number: P2P), paced (``--rate``) and windowed (``--window`` per bind) like
  ``Simulator._send_mos``, started by ``go`` on stdin once every bind is up.

Control on stdin (one line each; answers on stdout)::

    --ids hex       the simulator's own ids ("%08X"); --ids decimal: "1", "2", ...

    go              start the MOs (answers "done {json}" when all are acknowledged)
    count           "ok count SUBMITS RECEIPTS_ACKED MOS_ACKED"
    dump FILE       {"submits": [[arrived, text], ...], "mos": [[sent, acked], ...]}

    python bench/smsc.py [--mo N] [--to 447700900123] [--dlr-delay 0.1 | --no-dlr]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import itertools
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import send_mos, serve_until_bound
from gatewayd.smpp import pdu as P
from gatewayd.smpp.simulator import Simulator, SimulatorSettings


class RecordingSimulator(Simulator):
    """The simulator, recording each submit_sm's arrival time and text."""

    def __init__(self, settings: SimulatorSettings, *, decimal_ids: bool = False) -> None:
        super().__init__(settings)
        self.submitted: list[tuple[float, str]] = []
        self.receipts_acked = 0
        self.decimal_ids = decimal_ids
        self._decimal = itertools.count(1)

    def _submitted(self, submit: P.Pdu) -> str:
        self.submitted.append(
            (time.time(), submit.get_bytes("short_message").decode("latin-1", "replace"))
        )
        if not self.decimal_ids:
            message_id = super()._submitted(submit)  # "%08X": the simulator's own ids
            self.submits.clear()  # it keeps every PDU; the bench needs only the text
            return message_id
        # --ids decimal: "1", "2", ... (no hex/decimal ambiguity), same receipt otherwise
        message_id = str(next(self._decimal))
        if self.settings.dlr and submit.get_int("registered_delivery") & 0x03:
            assert self._nursery is not None
            self._nursery.start_soon(self._send_receipt, submit, message_id, self._wall())
        return message_id

    async def _send_receipt(self, submit: P.Pdu, message_id: str, submitted: dt.datetime) -> None:
        await super()._send_receipt(submit, message_id, submitted)
        self.receipts_acked += 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mo", type=int, default=0, help="MOs to send after 'go'")
    parser.add_argument("--to", default="447700900123", help="the MOs' destination number")
    parser.add_argument("--from", dest="from_", default="447700900001")
    parser.add_argument("--window", type=int, default=10, help="per bind")
    parser.add_argument("--rate", type=float, default=0.0, help="MO/s offered; 0: max")
    parser.add_argument("--sessions", type=int, default=1, help="binds to wait for")
    parser.add_argument("--dlr-delay", type=float, default=0.1)
    parser.add_argument("--no-dlr", action="store_true", help="send no receipts")
    parser.add_argument(
        "--ids", choices=["hex", "decimal"], default="hex", help="submit_sm_resp message ids"
    )
    args = parser.parse_args(argv)

    async def run() -> None:
        settings = SimulatorSettings(
            host="127.0.0.1",
            port=0,
            mo=0,
            window=args.window,
            dlr=not args.no_dlr,
            dlr_delay=args.dlr_delay,
        )
        sim = RecordingSimulator(settings, decimal_ids=args.ids == "decimal")
        mos: list[tuple[float, float]] = []
        async with trio.open_nursery() as nursery:
            await serve_until_bound(sim, nursery, args.sessions)

            async def go() -> None:
                summary = await send_mos(
                    sim,
                    args.mo,
                    window=args.window,
                    rate=args.rate,
                    acks=mos,
                    source=args.from_,
                    dest=args.to,
                )
                print("done " + json.dumps(summary), flush=True)

            while True:
                line = (await trio.to_thread.run_sync(sys.stdin.readline)).strip()
                if not line:
                    nursery.cancel_scope.cancel()
                    return
                cmd, _, arg = line.partition(" ")
                if cmd == "go":
                    nursery.start_soon(go)
                elif cmd == "count":
                    print(
                        f"ok count {len(sim.submitted)} {sim.receipts_acked} {len(mos)}",
                        flush=True,
                    )
                elif cmd == "dump":
                    payload = json.dumps({"submits": sim.submitted, "mos": mos})
                    await trio.to_thread.run_sync(Path(arg).write_text, payload)
                    print(f"ok dump {len(sim.submitted)}", flush=True)
                else:
                    print(f"error unknown command {cmd!r}", flush=True)

    with contextlib.suppress(KeyboardInterrupt):
        trio.run(run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
