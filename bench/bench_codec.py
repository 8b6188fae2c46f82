"""Codec throughput: framing + decode + deliver_sm_resp encode, and decode alone.

Run ``python bench/bench_codec.py`` (``--count``, ``--runs``). Prints one summary line
and writes bench/results/codec.json. Each figure is the median of ``--runs`` runs.

Measured paths:

* pipeline: a stream of receipt deliver_sm PDUs fed in 4 KiB chunks (a TCP read) to a
  Framer; every frame decoded and answered with ``encode(response_for(pdu))``.
* decode, walker: ``gatewayd.smpp.pdu.decode`` per frame.
* decode, smpplib: ``smpplib.smpp.parse_pdu`` per frame (no validation at all), and
  smpplib followed by our walker as validator (what "smpplib + validation" costs).
* encode deliver_sm: smpplib's ``generate_params`` (what ``encode`` uses) vs our layout
  writer, for reference.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import smpplib.smpp

from gatewayd.smpp import pdu as P

RESULTS = Path(__file__).resolve().parent / "results" / "codec.json"
CHUNK = 4096


class _Seq:
    sequence = 0

    def next_sequence(self) -> int:
        return 0


def sample_frame(i: int) -> bytes:
    """A delivery receipt as carriers send them: receipt text plus TLVs (SMPP 3.4 App. B)."""
    text = (
        f"id:{i:010d} sub:001 dlvrd:001 submit date:2401020304 done date:2401020305 "
        "stat:DELIVRD err:000 text:Hello from the benchmark"
    ).encode()
    pdu = P.make(
        "deliver_sm",
        sequence=i,
        source_addr_ton=1,
        source_addr_npi=1,
        source_addr="447700900123",
        destination_addr="12345",
        esm_class=0x04,
        short_message=text,
        receipted_message_id=f"{i:010d}",
        message_state=2,
    )
    return P.encode(pdu)


def timed(fn: Callable[[], object], runs: int) -> float:
    """Median wall time of ``runs`` calls, in seconds."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20_000, help="PDUs per pipeline run")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    # smpplib logs every unknown TLV; silence it here only, and restore it (tests call main).
    sl_log = logging.getLogger("smpplib.command")
    level = sl_log.level
    sl_log.setLevel(logging.ERROR)
    try:
        return _run(args)
    finally:
        sl_log.setLevel(level)


def _run(args: argparse.Namespace) -> int:

    count: int = args.count
    runs: int = args.runs
    frames = [sample_frame(i) for i in range(count)]
    stream = b"".join(frames)
    chunks = [stream[i : i + CHUNK] for i in range(0, len(stream), CHUNK)]

    def pipeline() -> None:
        framer = P.Framer()
        decode, encode, response_for = P.decode, P.encode, P.response_for
        done = 0
        for chunk in chunks:
            framer.feed(chunk)
            while (frame := framer.next_frame()) is not None:
                encode(response_for(decode(frame)))
                done += 1
        assert done == count

    few = frames[: max(1, count // 4)]  # smpplib is slow: fewer frames, same per-PDU figure

    def walker() -> None:
        for frame in frames:
            P.decode(frame)

    def smpplib_parse() -> None:
        client = _Seq()
        for frame in few:
            smpplib.smpp.parse_pdu(frame, client=client, allow_unknown_opt_params=True)

    def smpplib_validated() -> None:
        client = _Seq()
        for frame in few:
            smpplib.smpp.parse_pdu(frame, client=client, allow_unknown_opt_params=True)
            P.decode(frame)

    sample = P.decode(frames[0])
    layout = P._LAYOUTS["deliver_sm"]

    def encode_smpplib() -> None:
        for _ in few:
            P.encode(sample)

    def encode_native() -> None:
        for _ in few:
            P._encode_native(layout, sample.fields)

    def per_pdu_us(seconds: float, n: int) -> float:
        return round(seconds / n * 1e6, 2)

    t_pipe = timed(pipeline, runs)
    pipe = {
        "pdus": count,
        "pdus_per_s": round(count / t_pipe),
        "us_per_pdu": per_pdu_us(t_pipe, count),
    }
    dec = {
        "walker": per_pdu_us(timed(walker, runs), count),
        "smpplib_parse": per_pdu_us(timed(smpplib_parse, runs), len(few)),
        "smpplib_parse_plus_validation": per_pdu_us(timed(smpplib_validated, runs), len(few)),
    }
    results = {
        "pipeline": pipe,
        "decode_us_per_pdu": dec,
        "encode_deliver_sm_us_per_pdu": {
            "smpplib_generate": per_pdu_us(timed(encode_smpplib, runs), len(few)),
            "native_mandatory_part": per_pdu_us(timed(encode_native, runs), len(few)),
        },
        "frame_bytes": len(frames[0]),
        "runs": runs,
        "statistic": "median",
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "smpplib": getattr(smpplib, "__version__", "2.2.4"),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(
        f"codec: {pipe['pdus_per_s']:,} deliver_sm/s "
        f"({pipe['us_per_pdu']} us/PDU frame+decode+resp) | decode us/PDU: "
        f"walker {dec['walker']}, smpplib {dec['smpplib_parse']}, "
        f"smpplib+validation {dec['smpplib_parse_plus_validation']} "
        f"(median of {runs}) -> {args.output}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
