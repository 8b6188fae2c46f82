from __future__ import annotations

import io
import json
import subprocess
import sys
from typing import Any

import pytest

from gatewayd import decode
from gatewayd.smpp import pdu

HANDSET = "447700900123"


def deliver_hex(short_message: bytes = b"", *, sequence: int = 1, **fields: Any) -> str:
    fields.setdefault("source_addr", HANDSET)
    fields.setdefault("destination_addr", "12345")
    p = pdu.make("deliver_sm", sequence=sequence, short_message=short_message, **fields)
    return pdu.encode(p).hex()


def run(args: list[str], stdin: str = "") -> tuple[int, list[dict[str, Any]]]:
    out = io.StringIO()
    code = decode.main(args, io.StringIO(stdin), out)
    return code, [json.loads(line) for line in out.getvalue().splitlines()]


MO_HEX = deliver_hex(b"Hello \x1b\x65 world", sequence=1)
DLR_TEXT = (
    b"id:0A1B sub:001 dlvrd:001 submit date:2601020304 done date:2601020305 "
    b"stat:DELIVRD err:000 text:Hello"
)
DLR_HEX = deliver_hex(DLR_TEXT, esm_class=0x04, sequence=2)


def parts_hex(texts: list[bytes], ref: int = 7) -> list[str]:
    total = len(texts)
    return [
        deliver_hex(bytes((5, 0, 3, ref, total, i + 1)) + t, esm_class=0x40, sequence=10 + i)
        for i, t in enumerate(texts)
    ]


def test_mo_output_fields() -> None:
    code, [obj] = run([MO_HEX])
    assert code == 0
    assert obj == {
        "type": "mo",
        "from": HANDSET,
        "to": "12345",
        "text": "Hello € world",
        "keyword": "HELLO",
        "class": "a2p",
        "data_coding": 0,
        "parts": 1,
        "complete": True,
    }


def test_receipt_output_fields() -> None:
    code, [obj] = run([DLR_HEX])
    assert code == 0
    assert {k: obj[k] for k in ("type", "message_id", "status", "error", "from", "to")} == {
        "type": "dlr",
        "message_id": "0A1B",
        "status": "DELIVRD",
        "error": "000",
        "from": HANDSET,
        "to": "12345",
    }
    assert obj["submit_date"] == "2026-01-02T03:04:00+00:00"
    assert obj["done_date"] == "2026-01-02T03:05:00+00:00"
    assert obj["normalized_message_id"] == "2587"


def test_receipt_without_dates_prints_null() -> None:
    _, [obj] = run([deliver_hex(b"id:1 stat:UNDELIV", esm_class=0x04)])
    assert (obj["submit_date"], obj["done_date"], obj["status"]) == (None, None, "UNDELIV")


def test_parts_in_any_order_print_one_message() -> None:
    a, b, c = parts_hex([b"one ", b"two ", b"three"])
    code, out = run([c, a, b, a])
    assert code == 0
    assert out == [
        {
            "type": "mo",
            "from": HANDSET,
            "to": "12345",
            "text": "one two three",
            "keyword": "ONE",
            "class": "a2p",
            "data_coding": 0,
            "parts": 3,
            "complete": True,
        }
    ]


def test_incomplete_message_prints_its_pending_parts() -> None:
    a, _, c = parts_hex([b"one ", b"two ", b"three"])
    code, out = run([c, a])
    assert code == 0
    assert [(o["type"], o["seq"], o["total"], o["text"]) for o in out] == [
        ("part", 1, 3, "one "),
        ("part", 3, 3, "three"),
    ]


def test_binary_shows_hex() -> None:
    _, [obj] = run([deliver_hex(b"\xca\xfe", data_coding=4)])
    assert (obj["text"], obj["content"], obj["hex"]) == ("", "binary", "cafe")


def test_other_pdus_are_described() -> None:
    enquire = pdu.encode(pdu.make("enquire_link", sequence=5)).hex()
    code, [obj] = run([enquire])
    assert code == 0
    assert (obj["type"], obj["command"], obj["sequence"]) == ("pdu", "enquire_link", 5)


def test_stdin_with_whitespace_prefixes_comments_and_several_pdus_per_line() -> None:
    spaced = " ".join("0x" + MO_HEX[i : i + 2] for i in range(0, len(MO_HEX), 2))
    stdin = f"# captured on bind acme\n\n  {spaced}  \n{DLR_HEX}{MO_HEX.upper()}\n"
    code, out = run([], stdin)
    assert code == 0
    assert [o["type"] for o in out] == ["mo", "dlr", "mo"]


@pytest.mark.parametrize(
    ("bad", "needle"),
    [
        ("zz", "not hex"),
        ("abc", "not hex"),  # odd digit count
        ("00000010", "shorter than a PDU header"),
        ("0000000f000000150000000000000001", "below the minimum"),
        ("000000ff000000150000000000000001", "only 16 bytes"),
        ("0x", "no bytes"),
    ],
)
def test_malformed_input_is_an_error_object(bad: str, needle: str) -> None:
    code, out = run([bad, MO_HEX])
    assert code == 1
    assert out[0]["type"] == "error"
    assert out[0]["input"] == "arg 1"
    assert needle in out[0]["error"]
    assert out[1]["type"] == "mo"  # the rest is still decoded


def test_codec_rejection_is_an_error_object() -> None:
    # A well-framed PDU with an unknown command id: the codec refuses it.
    code, out = run(["0000001000abcdef0000000000000001", MO_HEX])
    assert code == 1
    assert out[0]["type"] == "error"
    assert out[0]["status"].startswith("0x")
    assert out[1]["type"] == "mo"


def run_subprocess(args: list[str], stdin: str = "") -> subprocess.CompletedProcess[str]:
    script = (
        "import sys; from gatewayd.decode import main; "
        "sys.exit(main(sys.argv[1:], sys.stdin, sys.stdout))"
    )
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        input=stdin,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=60,
        check=False,
    )


def test_subprocess_arguments() -> None:
    ucs2 = deliver_hex(
        "Привет 😀".encode("utf-16-be"), data_coding=8, destination_addr="447700900999"
    )
    a, b = parts_hex([b"Hel", b"lo"])
    result = run_subprocess([ucs2, b, DLR_HEX, "nothex", a])
    assert result.returncode == 1
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [o["type"] for o in lines] == ["mo", "dlr", "error", "mo"]
    assert lines[0]["text"] == "Привет 😀"
    assert lines[0]["class"] == "p2p"
    assert lines[3]["text"] == "Hello"
    assert lines[3]["parts"] == 2


def test_subprocess_stdin_all_good() -> None:
    result = run_subprocess([], f"{MO_HEX}\n{DLR_HEX}\n")
    assert result.returncode == 0, result.stderr
    assert [json.loads(line)["type"] for line in result.stdout.splitlines()] == ["mo", "dlr"]


def test_incomplete_mo_output_names_what_arrived() -> None:
    import datetime as dt

    from gatewayd.smpp import receive

    r = receive.Reassembler(timeout=1)
    now = dt.datetime(2026, 1, 2, tzinfo=dt.UTC)
    p = receive.decode_deliver(
        pdu.decode(bytes.fromhex(parts_hex([b"a", b"b"])[0])), carrier="x", received_at=now
    )
    assert isinstance(p, receive.Part)
    r.add(p, now)
    [mo] = r.expire(now + dt.timedelta(seconds=1))
    out = decode.mo_to_output(mo)
    assert (out["complete"], out["parts"], out["parts_received"], out["text"]) == (False, 2, 1, "a")
