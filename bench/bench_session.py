"""Session throughput: deliver_sm through the sans-I/O ESME session, answered, bytes out.

Run ``python bench/bench_session.py`` (``--count``, ``--runs``). Prints one summary line and
writes bench/results/session.json (median of ``--runs``). What it measures per PDU: framing,
decode, the state table and window bookkeeping, ``respond`` (deliver_sm_resp encode) and
``data_to_send`` — everything the daemon does for an MO below the store, on one core.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from gatewayd.smpp import pdu as P
from gatewayd.smpp import session as S

RESULTS = Path(__file__).resolve().parent / "results" / "session.json"
CHUNK = 4096


def stream(count: int) -> bytes:
    return b"".join(
        P.encode(
            P.make(
                "deliver_sm",
                sequence=i,
                source_addr="447700900123",
                destination_addr="12345",
                esm_class=0,
                short_message=f"TEXT {i}".encode(),  # the simulator's MO shape
            )
        )
        for i in range(1, count + 1)
    )


def bound_session(window: int) -> S.Session:
    esme = S.Session(role=S.Role.ESME, window=window)
    smsc = S.Session(role=S.Role.SMSC, window=window)
    esme.send_bind("transceiver", 0.0, system_id="gw", password="pw")
    smsc.receive_data(esme.data_to_send(), 0.0)
    ev = smsc.next_event()
    assert isinstance(ev, S.BindRequested)
    smsc.respond(ev.pdu, P.ESME_ROK, system_id="sim")
    esme.receive_data(smsc.data_to_send(), 0.0)
    while esme.next_event() is not None:
        pass
    return esme


def run_once(data: bytes, count: int) -> float:
    esme = bound_session(window=count + 1)
    t0 = time.process_time()
    handled = 0
    for off in range(0, len(data), CHUNK):
        esme.receive_data(data[off : off + CHUNK], 1.0)
        while (ev := esme.next_event()) is not None:
            if isinstance(ev, S.RequestReceived):
                esme.respond(ev.pdu, P.ESME_ROK)
                handled += 1
        esme.data_to_send()
    elapsed = time.process_time() - t0
    assert handled == count, handled
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--count", type=int, default=20000)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    data = stream(args.count)
    times = [run_once(data, args.count) for _ in range(args.runs)]
    med = statistics.median(times)
    result = {
        "count": args.count,
        "runs": args.runs,
        "median_s": med,
        "pdus_per_s": args.count / med,
        "us_per_pdu": med / args.count * 1e6,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))
    print(
        f"session: {result['pdus_per_s']:,.0f} deliver_sm/s "
        f"({result['us_per_pdu']:.1f} us/PDU: frame+decode+state+resp) median of {args.runs}"
    )


if __name__ == "__main__":
    main()
