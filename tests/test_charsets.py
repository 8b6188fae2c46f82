from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gatewayd import charsets as cs

GSM_CHARS = sorted(set(cs.GSM_BASIC.replace("\x1b", "")) | set(cs.GSM_EXTENSION.values()))
gsm_text = st.text(alphabet=st.sampled_from(GSM_CHARS), max_size=400)


@pytest.mark.parametrize(
    ("septets", "text"),
    [
        (b"Hello", "Hello"),
        (b"\x00\x01\x02\x03", "@£$¥"),  # the first row of TS 23.038 §6.2.1
        (b"\x1b\x65 5", "€ 5"),
        (b"\x1b\x3c\x1b\x3e\x1b\x28\x1b\x29\x1b\x3d\x1b\x14\x1b\x2f\x1b\x40", "[]{}~^\\|"),
        (b"\x11\x10\x1f\x5f\x60\x7f", "_ΔÉ§¿à"),
        (b"\x24\x40", "¤¡"),  # 0x24 is the currency sign, 0x40 inverted exclamation
        (b"abc\x1b", "abc "),  # a trailing lone escape shows a space
        (b"\x1b\x1b", " "),  # ESC ESC: reserved, shown as a space
        (b"\x1b\x41", "A"),  # unknown extension code: the basic character (§6.2.1.1)
        (b"a\x80b", "a\ufffdb"),  # not a septet
    ],
)
def test_gsm_decode(septets: bytes, text: str) -> None:
    assert cs.gsm_decode(septets) == text


def test_gsm_encode_escapes_and_length() -> None:
    assert cs.gsm_encode("a€[") == b"a\x1b\x65\x1b\x3c"
    assert cs.gsm_septet_length("a€[") == 5
    assert cs.gsm_fits("Hello @ £5 {x}")
    assert not cs.gsm_fits("`")  # grave accent is not GSM (smpplib maps it wrongly)
    assert not cs.gsm_fits("😀")
    with pytest.raises(cs.GsmEncodeError):
        cs.gsm_encode("ç")  # only upper-case Ç is in the table
    with pytest.raises(cs.GsmEncodeError):
        cs.gsm_septet_length("é😀")


@given(gsm_text)
def test_gsm_round_trip(text: str) -> None:
    encoded = cs.gsm_encode(text)
    assert cs.gsm_decode(encoded) == text
    assert len(encoded) == cs.gsm_septet_length(text)


@given(st.binary(max_size=300))
def test_gsm_decode_never_raises(data: bytes) -> None:
    assert isinstance(cs.gsm_decode(data), str)


@pytest.mark.parametrize(
    ("data", "dc", "gsm_as", "text", "kind", "encoding"),
    [
        (b"Hi \x1b\x65", 0, "gsm", "Hi €", "text", "gsm"),
        (b"caf\xe9", 0, "latin1", "café", "text", "latin1"),
        (b"caf\xe9", 0, "ascii", "caf\ufffd", "text", "ascii"),
        (b"plain", 1, "gsm", "plain", "text", "ascii"),
        (b"Gr\xfc\xdfe", 3, "gsm", "Grüße", "text", "latin1"),
        ("Привет 😀".encode("utf-16-be"), 8, "gsm", "Привет 😀", "text", "ucs2"),
        (b"\x00a\x00", 8, "gsm", "a\ufffd", "text", "ucs2"),  # odd byte count
        (b"\xd8\x3d\x00a", 8, "gsm", "\ufffda", "text", "ucs2"),  # lone high surrogate
        (b"\xde\x00", 8, "gsm", "\ufffd", "text", "ucs2"),  # lone low surrogate
        (b"\x01\x02\xff", 4, "gsm", "", "binary", "binary"),
        (b"\x01\x02\xff", 2, "gsm", "", "binary", "binary"),
        ("Привет".encode("iso8859-5"), 6, "gsm", "Привет", "text", "iso8859-5"),
        (b"\x82\xa0", 5, "gsm", "", "unknown", "unknown"),  # JIS X 0208: kept, not guessed
        (b"\x00\x01", 0x0B, "gsm", "", "unknown", "unknown"),  # reserved
        (b"Hello", 0xF0, "gsm", "Hello", "text", "gsm"),  # GSM DCS: class 0, default alphabet
        (b"\x00\x41", 0x18, "gsm", "A", "text", "ucs2"),  # GSM DCS: class 0, UCS-2
        (b"\x05", 0xF4, "gsm", "", "binary", "binary"),  # GSM DCS: 8-bit data
        (b"\x05", 0x24, "gsm", "", "unknown", "unknown"),  # compressed
        (b"\x05", 0x80, "gsm", "", "unknown", "unknown"),  # reserved group
    ],
)
def test_decode_text(
    data: bytes, dc: int, gsm_as: cs.GsmAs, text: str, kind: str, encoding: str
) -> None:
    result = cs.decode_text(data, dc, gsm_as=gsm_as)
    assert (result.text, result.kind, result.encoding) == (text, kind, encoding)
    assert result.raw == data  # nothing is ever dropped
    assert result.hex == data.hex()


@given(st.binary(max_size=300), st.integers(min_value=-5, max_value=300))
def test_decode_text_never_raises(data: bytes, dc: int) -> None:
    result = cs.decode_text(data, dc)
    result.text.encode("utf-8")  # always printable as JSON/UTF-8: no lone surrogates
    assert result.raw == data


# --- splitting -------------------------------------------------------------------------------


def test_split_single_parts() -> None:
    assert cs.split_for_sms("") == (0, [b""])
    assert cs.split_for_sms("a" * 160) == (0, [b"a" * 160])
    assert cs.split_for_sms("€" * 80) == (0, [b"\x1b\x65" * 80])
    assert cs.split_for_sms("é" * 70) == (0, [b"\x05" * 70])  # é is GSM
    assert cs.split_for_sms("ç" * 70) == (8, ["ç".encode("utf-16-be") * 70])


def test_split_gsm_multipart_sizes() -> None:
    dc, parts = cs.split_for_sms("a" * 161)
    assert dc == 0
    assert [len(p) for p in parts] == [153, 8]


def test_split_never_cuts_an_escape() -> None:
    # 152 plain septets then '€' (ESC + 0x65) straddle the 153-septet boundary.
    dc, parts = cs.split_for_sms("a" * 152 + "€" + "b" * 20)
    assert dc == 0
    assert parts[0] == b"a" * 152
    assert parts[1].startswith(b"\x1b\x65")


def test_split_never_cuts_a_surrogate_pair() -> None:
    text = "ç" * 66 + "😀" + "x" * 10  # the pair would sit at units 67-68
    dc, parts = cs.split_for_sms(text)
    assert dc == 8
    assert len(parts[0]) == 66 * 2
    assert parts[1].startswith("😀".encode("utf-16-be"))


def test_split_too_long() -> None:
    with pytest.raises(ValueError, match="255"):
        cs.split_for_sms("a" * 153 * 256)


texts = st.one_of(gsm_text, st.text(max_size=600).filter(lambda t: "\x00" not in t))


@given(texts)
def test_split_properties(text: str) -> None:
    try:
        text.encode("utf-16-be")
    except UnicodeEncodeError:
        return  # lone surrogates in a str cannot be sent at all
    dc, parts = cs.split_for_sms(text)
    if dc == 0:
        assert b"".join(parts) == cs.gsm_encode(text)
        assert all(len(p) <= (160 if len(parts) == 1 else 153) for p in parts)
        # Each part decodes on its own to its share of the text: no escape was cut.
        assert "".join(cs.gsm_decode(p) for p in parts) == text
    else:
        assert dc == 8
        assert all(len(p) <= (140 if len(parts) == 1 else 134) for p in parts)
        assert all(len(p) % 2 == 0 for p in parts)
        # Each part is valid UTF-16 on its own: no surrogate pair was cut.
        assert "".join(p.decode("utf-16-be") for p in parts) == text


def _reference_gsm_decode(septets: bytes) -> str:
    """gsm_decode as first written: one septet at a time."""
    out: list[str] = []
    i = 0
    n = len(septets)
    while i < n:
        code = septets[i]
        i += 1
        if code > 0x7F:
            out.append("\ufffd")
        elif code == cs.ESCAPE:
            if i >= n:
                out.append(" ")
                break
            nxt = septets[i]
            i += 1
            if nxt in cs.GSM_EXTENSION:
                out.append(cs.GSM_EXTENSION[nxt])
            elif nxt == cs.ESCAPE:
                out.append(" ")
            elif nxt > 0x7F:
                out.append("\ufffd")
            else:
                out.append(cs.GSM_BASIC[nxt])
        else:
            out.append(cs.GSM_BASIC[code])
    return "".join(out)


@given(st.binary(max_size=300))
def test_gsm_decode_matches_the_septet_by_septet_reference(data: bytes) -> None:
    assert cs.gsm_decode(data) == _reference_gsm_decode(data)


@given(st.binary(max_size=300).map(lambda b: b.replace(b"\x1b", b"")))
def test_gsm_decode_without_escapes_matches_the_reference(data: bytes) -> None:
    assert cs.gsm_decode(data) == _reference_gsm_decode(data)
