"""``gatewayd decode``: hex PDUs in, one JSON object per line out. For operators and debugging.

Each argument (or, with none, each non-empty stdin line not starting with ``#``) is hex:
whitespace and ``0x`` prefixes are ignored, and several PDUs back to back are split by their
command_length (SMPP 3.4 §3.2), so a captured byte stream can be pasted whole.

Output, one object per line:

* ``{"type": "mo", "from", "to", "text", "keyword", "class", "data_coding", "parts",
  "complete", ...}`` for a message (parts of a concatenated message, in any order, print one
  MO when the last part is read);
* ``{"type": "dlr", "message_id", "status", "error", "submit_date", "done_date", "from",
  "to", ...}`` for a receipt, dates in ISO 8601 (null when absent);
* ``{"type": "pdu", "command", ...}`` for any other PDU (it decoded; it is just no event);
* ``{"type": "part", ...}`` at the end, one per part of a message still incomplete;
* ``{"type": "error", "input", "error", ...}`` for input that is not hex or not a valid PDU.

Exit status: 0 when everything decoded, 1 when any input was an error (the rest is still
decoded and printed).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator, Sequence
from typing import Any, TextIO

from gatewayd import charsets
from gatewayd.events import DeliveryReceipt, MoMessage
from gatewayd.smpp import pdu as pdu_mod
from gatewayd.smpp import receive

CARRIER = "decode"
_SNIPPET = 64  # hex characters of bad input echoed in an error object


def _inputs(hex_args: Sequence[str], stdin: TextIO) -> Iterator[tuple[str, str]]:
    if hex_args:
        for index, arg in enumerate(hex_args, 1):
            yield f"arg {index}", arg
        return
    for number, line in enumerate(stdin, 1):
        text = line.strip()
        if text and not text.startswith("#"):
            yield f"line {number}", text


def parse_hex(text: str) -> bytes:
    """Hex with any whitespace and ``0x``/``0X`` prefixes on its tokens. Raises ValueError."""
    tokens = []
    for token in text.split():
        tokens.append(token[2:] if token[:2] in ("0x", "0X") else token)
    return bytes.fromhex("".join(tokens))


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def mo_to_output(mo: MoMessage) -> dict[str, Any]:
    """The printed form of an MO."""
    out: dict[str, Any] = {
        "type": "mo",
        "from": mo.source.addr,
        "to": mo.destination.addr,
        "text": mo.text,
        "keyword": mo.keyword,
        "class": mo.message_class.value,
        "data_coding": mo.data_coding,
        "parts": mo.parts,
        "complete": mo.complete,
    }
    if mo.content != "text":
        # Binary or unreadable: the text is empty, so show the bytes.
        out["content"] = mo.content
        out["hex"] = mo.raw.hex()
    if mo.parts_received is not None:
        out["parts_received"] = mo.parts_received
    return out


def dlr_to_output(dlr: DeliveryReceipt) -> dict[str, Any]:
    """The printed form of a delivery receipt."""
    return {
        "type": "dlr",
        "message_id": dlr.message_id,
        "status": dlr.status.value,
        "error": dlr.error,
        "submit_date": _iso(dlr.submit_date),
        "done_date": _iso(dlr.done_date),
        "from": dlr.source.addr,
        "to": dlr.destination.addr,
        "normalized_message_id": dlr.normalized_message_id,
        "sub": dlr.submitted,
        "dlvrd": dlr.delivered,
        "text": dlr.text,
    }


def part_to_output(part: receive.Part) -> dict[str, Any]:
    """The printed form of a part whose message never completed."""
    alone = charsets.decode_text(part.data, part.data_coding, gsm_as=part.gsm_as)
    return {
        "type": "part",
        "from": part.source.addr,
        "to": part.destination.addr,
        "reference": part.reference,
        "total": part.total,
        "seq": part.seq,
        "scheme": part.scheme,
        "data_coding": part.data_coding,
        "text": alone.text,  # this part decoded alone: a split escape or pair shows as U+FFFD
        "hex": part.data.hex(),
    }


def _frames(data: bytes) -> Iterator[tuple[int, bytes | str]]:
    """(offset, frame) for each PDU in ``data``, or (offset, reason) where framing fails."""
    offset = 0
    while offset < len(data):
        rest = data[offset:]
        if len(rest) < pdu_mod.HEADER_LENGTH:
            yield offset, f"{len(rest)} bytes is shorter than a PDU header (16)"
            return
        length = int.from_bytes(rest[:4], "big")
        if length < pdu_mod.MIN_COMMAND_LENGTH:
            yield offset, f"command_length {length} is below the minimum of 16"
            return
        if length > len(rest):
            yield offset, f"command_length {length} but only {len(rest)} bytes given"
            return
        yield offset, rest[:length]
        offset += length


def _emit(stdout: TextIO, obj: dict[str, Any]) -> None:
    stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")


def main(hex_args: Sequence[str], stdin: TextIO, stdout: TextIO) -> int:
    """Run ``gatewayd decode``; returns the exit status."""
    reassembler = receive.Reassembler()
    options = receive.ReceiveOptions()
    failed = False

    def error(label: str, reason: str, snippet: str, **extra: Any) -> None:
        nonlocal failed
        failed = True
        obj: dict[str, Any] = {"type": "error", "input": label, "error": reason}
        obj.update(extra)
        obj["hex"] = snippet[:_SNIPPET] + ("..." if len(snippet) > _SNIPPET else "")
        _emit(stdout, obj)

    for label, text in _inputs(hex_args, stdin):
        try:
            data = parse_hex(text)
        except ValueError as exc:
            error(label, f"not hex: {exc}", text.strip())
            continue
        if not data:
            error(label, "no bytes", text.strip())
            continue
        for offset, frame in _frames(data):
            where = {"offset": offset} if offset else {}
            if isinstance(frame, str):
                error(label, frame, data[offset:].hex(), **where)
                continue
            try:
                decoded = pdu_mod.decode(frame)
            except pdu_mod.PduError as exc:
                error(label, exc.reason, frame.hex(), status=f"0x{exc.status:08X}", **where)
                continue
            if decoded.command not in ("deliver_sm", "data_sm"):
                _emit(
                    stdout,
                    {
                        "type": "pdu",
                        "command": decoded.command,
                        "command_id": f"0x{decoded.command_id:08X}",
                        "status": f"0x{decoded.status:08X}",
                        "sequence": decoded.sequence,
                    },
                )
                continue
            now = dt.datetime.now(dt.UTC)
            event = receive.decode_deliver(
                decoded, carrier=CARRIER, received_at=now, options=options
            )
            if isinstance(event, receive.Part):
                whole = reassembler.add(event, now)
                if whole is not None:
                    _emit(stdout, mo_to_output(whole))
            elif isinstance(event, MoMessage):
                _emit(stdout, mo_to_output(event))
            else:
                _emit(stdout, dlr_to_output(event))

    for part in reassembler.pending():
        _emit(stdout, part_to_output(part))
    return 1 if failed else 0
