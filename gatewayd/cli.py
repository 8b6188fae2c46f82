"""Command line: argv -> command. The only place that configures logging."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def parseargs(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse ``argv`` (without the program name) into a namespace; testable without a subprocess."""
    parser = argparse.ArgumentParser(prog="gatewayd", description="SMPP routing daemon")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sim = sub.add_parser("simulate", help="run the built-in SMSC simulator")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=2775)

    dec = sub.add_parser("decode", help="decode hex PDUs (arguments or stdin) to JSON events")
    dec.add_argument("hex", nargs="*", help="PDUs in hex; read lines from stdin if none")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parseargs(argv)
    print(f"gatewayd {args.command}: not implemented yet", file=sys.stderr)
    return 2
