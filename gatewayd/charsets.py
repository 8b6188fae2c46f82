"""Text encodings of short messages: GSM 03.38, Latin-1, ASCII, UCS-2/UTF-16BE. Pure code.

Inbound: :func:`decode_text` turns the user data of a PDU into a :class:`DecodedText` by its
``data_coding`` (SMPP 3.4 §5.2.19). It never raises: a coding we cannot read is kept as bytes
with ``kind="unknown"``, binary data as bytes with ``kind="binary"``.

Outbound: :func:`split_for_sms` picks GSM 03.38 when the text fits the default alphabet and
its extension table, else UCS-2, and cuts the text into the bodies of concatenated parts
(without the UDH, which the caller adds) never inside a GSM escape sequence or a UTF-16
surrogate pair. smpplib's ``gsm.make_parts`` is not used: it cuts both.

GSM 03.38 text travels over SMPP unpacked, one septet per octet (SMPP 3.4 §5.2.19, value 0
"SMSC default alphabet"); the SMSC packs it for the air interface. So the functions here work
on one septet per byte and never pack.
"""

from __future__ import annotations

import codecs
from typing import Literal

import attrs

# 3GPP TS 23.038 §6.2.1: the GSM 7-bit default alphabet, indexed by septet value.
# 0x1B is the escape to the extension table (§6.2.1.1) and has no character of its own.
GSM_BASIC: str = (
    "@£$¥èéùìòÇ\nØø\rÅå"
    "Δ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ"
    " !\"#¤%&'()*+,-./"
    "0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNO"
    "PQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmno"
    "pqrstuvwxyzäöñüà"
)
ESCAPE = 0x1B

# 3GPP TS 23.038 §6.2.1.1: the default extension table, reached by ESC + septet.
GSM_EXTENSION: dict[int, str] = {
    0x0A: "\f",  # page break
    0x14: "^",
    0x28: "{",
    0x29: "}",
    0x2F: "\\",
    0x3C: "[",
    0x3D: "~",
    0x3E: "]",
    0x40: "|",
    0x65: "€",
}

_ENCODE_BASIC: dict[str, int] = {ch: i for i, ch in enumerate(GSM_BASIC) if i != ESCAPE}
_ENCODE_EXTENSION: dict[str, int] = {ch: code for code, ch in GSM_EXTENSION.items()}

# SMPP 3.4 §5.2.19 data_coding values.
DC_DEFAULT = 0x00  # SMSC default alphabet; GSM 03.38 for nearly every carrier
DC_IA5 = 0x01  # IA5 / ASCII
DC_BINARY_2 = 0x02  # octet unspecified (8-bit binary)
DC_LATIN1 = 0x03
DC_BINARY_4 = 0x04  # octet unspecified (8-bit binary)
DC_CYRILLIC = 0x06  # ISO-8859-5
DC_HEBREW = 0x07  # ISO-8859-8
DC_UCS2 = 0x08
DC_ISO2022JP = 0x0A  # ISO-2022-JP (music codes)
DC_KSC5601 = 0x0E

GSM_SINGLE_SEPTETS = 160  # 3GPP TS 23.040 §9.2.3.24: 140 octets = 160 septets
GSM_PART_SEPTETS = 153  # 160 minus the 6-octet concat UDH (7 septets with fill bits)
UCS2_SINGLE_CHARS = 70  # 140 octets / 2
UCS2_PART_CHARS = 67  # (140 - 6) octets / 2
MAX_PARTS = 255  # 3GPP TS 23.040 §9.2.3.24.1: the part count is one octet

GsmAs = Literal["gsm", "latin1", "ascii"]
TextKind = Literal["text", "binary", "unknown"]


@attrs.frozen(kw_only=True)
class DecodedText:
    """The user data of a message read by its data_coding.

    ``kind`` is ``"text"`` when ``text`` holds the message; ``"binary"`` (data_coding 2 or
    4, or 8-bit data in a GSM DCS) when the message is data, ``text`` is empty and ``hex``
    holds it; ``"unknown"`` when we do not know the coding: ``text`` is empty, ``hex`` holds
    the bytes, nothing is dropped. ``encoding`` names what was used (``"gsm"``,
    ``"latin1"``, ``"ucs2"``, ``"binary"``, ``"unknown"``...).
    """

    text: str
    kind: TextKind
    encoding: str
    raw: bytes

    @property
    def hex(self) -> str:
        return self.raw.hex()


class GsmEncodeError(ValueError):
    """The text has a character outside the GSM 03.38 default alphabet and extension table."""


# --- GSM 03.38 -------------------------------------------------------------------------------


# Byte -> character for text without escapes: the basic table, U+FFFD for non-septets.
_GSM_DECODING_TABLE = GSM_BASIC + "\ufffd" * 128


def gsm_decode(septets: bytes) -> str:
    """Decode GSM 03.38 septets, one per byte. Never raises.

    An escape followed by a code the extension table does not define shows the basic
    character for that code, as TS 23.038 §6.2.1.1 tells a receiver to do; ESC ESC (reserved
    for a further extension) and a trailing lone ESC show a space. A byte with the eighth bit
    set is not a septet at all: it becomes U+FFFD.
    """
    if ESCAPE not in septets:
        # The common case, in C: one table lookup per byte (no escape to pair up).
        return codecs.charmap_decode(septets, "strict", _GSM_DECODING_TABLE)[0]
    out: list[str] = []
    i = 0
    n = len(septets)
    while i < n:
        code = septets[i]
        i += 1
        if code > 0x7F:
            out.append("\ufffd")
        elif code == ESCAPE:
            if i >= n:
                out.append(" ")
                break
            nxt = septets[i]
            i += 1
            if nxt in GSM_EXTENSION:
                out.append(GSM_EXTENSION[nxt])
            elif nxt == ESCAPE:
                out.append(" ")
            elif nxt > 0x7F:
                out.append("\ufffd")
            else:
                out.append(GSM_BASIC[nxt])
        else:
            out.append(GSM_BASIC[code])
    return "".join(out)


def gsm_encode(text: str) -> bytes:
    """Encode text as GSM 03.38 septets, one per byte (extension characters as ESC + code).

    Raises :class:`GsmEncodeError` if a character is not in the alphabet; check
    :func:`gsm_fits` first to choose UCS-2 instead.
    """
    out = bytearray()
    for ch in text:
        code = _ENCODE_BASIC.get(ch)
        if code is not None:
            out.append(code)
            continue
        ext = _ENCODE_EXTENSION.get(ch)
        if ext is None:
            raise GsmEncodeError(f"character {ch!r} (U+{ord(ch):04X}) is not in GSM 03.38")
        out += bytes((ESCAPE, ext))
    return bytes(out)


def gsm_fits(text: str) -> bool:
    """True if every character is in the GSM 03.38 default alphabet or its extension table."""
    return all(ch in _ENCODE_BASIC or ch in _ENCODE_EXTENSION for ch in text)


def gsm_septet_length(text: str) -> int:
    """Septets the text takes in GSM 03.38: extension characters count two (ESC + code).

    Raises :class:`GsmEncodeError` if the text does not fit.
    """
    total = 0
    for ch in text:
        if ch in _ENCODE_BASIC:
            total += 1
        elif ch in _ENCODE_EXTENSION:
            total += 2
        else:
            raise GsmEncodeError(f"character {ch!r} (U+{ord(ch):04X}) is not in GSM 03.38")
    return total


# --- UCS-2 / UTF-16BE ------------------------------------------------------------------------


def ucs2_decode(data: bytes) -> str:
    """Decode UTF-16BE (a superset of UCS-2: handsets send emoji as surrogate pairs).

    Never raises: an unpaired surrogate or a trailing odd byte becomes U+FFFD, so the result
    is always encodable as UTF-8/JSON.
    """
    return data.decode("utf-16-be", errors="replace")


# --- data_coding dispatch --------------------------------------------------------------------

_SIMPLE_CODECS: dict[int, tuple[str, str]] = {
    DC_IA5: ("ascii", "ascii"),
    DC_LATIN1: ("latin-1", "latin1"),
    DC_CYRILLIC: ("iso8859-5", "iso8859-5"),
    DC_HEBREW: ("iso8859-8", "iso8859-8"),
    DC_ISO2022JP: ("iso2022-jp", "iso2022-jp"),
    DC_KSC5601: ("euc-kr", "ksc5601"),
}


def _alphabet(data_coding: int) -> Literal["default", "8bit", "ucs2", "unknown"]:
    """Which alphabet a data_coding value means.

    SMPP 3.4 §5.2.19 defines 0x00-0x0E; carriers also pass GSM DCS values through
    (3GPP TS 23.038 §4), so those groups are read as well:
    0x00-0x3F general data coding (bits 3-2 the alphabet; bit 5 set = compressed: unknown),
    0xC0-0xDF message waiting with the default alphabet, 0xE0-0xEF with UCS-2,
    0xF0-0xFF data coding/message class (bit 2: 8-bit data, else default alphabet).
    Values SMPP 3.4 defines itself (0x00-0x0E) are handled by the caller before this.
    """
    dc = data_coding & 0xFF
    if dc <= 0x3F:
        if dc & 0x20:
            return "unknown"
        group = (dc >> 2) & 0x03
        if group == 0:
            return "default"
        if group == 1:
            return "8bit"
        if group == 2:
            return "ucs2"
        return "unknown"
    if 0xC0 <= dc <= 0xDF:
        return "default"
    if 0xE0 <= dc <= 0xEF:
        return "ucs2"
    if dc >= 0xF0:
        return "8bit" if dc & 0x04 else "default"
    return "unknown"


def decode_text(data: bytes, data_coding: int, *, gsm_as: GsmAs = "gsm") -> DecodedText:
    """Decode message user data (UDH already removed) by its data_coding. Never raises.

    ``gsm_as`` says how to read data_coding 0 ("SMSC default alphabet"), which carriers
    interpret differently: GSM 03.38 unpacked (the default), Latin-1 or ASCII.
    """
    if data_coding == DC_DEFAULT:
        if gsm_as == "latin1":
            return DecodedText(
                text=data.decode("latin-1"), kind="text", encoding="latin1", raw=data
            )
        if gsm_as == "ascii":
            text = data.decode("ascii", errors="replace")
            return DecodedText(text=text, kind="text", encoding="ascii", raw=data)
        return DecodedText(text=gsm_decode(data), kind="text", encoding="gsm", raw=data)
    if data_coding in (DC_BINARY_2, DC_BINARY_4):
        return DecodedText(text="", kind="binary", encoding="binary", raw=data)
    if data_coding == DC_UCS2:
        return DecodedText(text=ucs2_decode(data), kind="text", encoding="ucs2", raw=data)
    if data_coding in _SIMPLE_CODECS:
        codec, name = _SIMPLE_CODECS[data_coding]
        text = data.decode(codec, errors="replace")
        return DecodedText(text=text, kind="text", encoding=name, raw=data)
    if data_coding <= 0x0F:
        # 5 (JIS X 0208), 9 (pictogram), 13 (JIS X 0212) and the reserved values: keep the
        # bytes rather than guess.
        return DecodedText(text="", kind="unknown", encoding="unknown", raw=data)
    alphabet = _alphabet(data_coding)
    if alphabet == "default":
        return DecodedText(text=gsm_decode(data), kind="text", encoding="gsm", raw=data)
    if alphabet == "ucs2":
        return DecodedText(text=ucs2_decode(data), kind="text", encoding="ucs2", raw=data)
    if alphabet == "8bit":
        return DecodedText(text="", kind="binary", encoding="binary", raw=data)
    return DecodedText(text="", kind="unknown", encoding="unknown", raw=data)


# --- outbound splitting ----------------------------------------------------------------------


def _split(units: list[bytes], per_part: int, cannot_end: set[bytes]) -> list[bytes]:
    """Cut a sequence of code units into parts of at most ``per_part`` units.

    A part never ends on a unit in ``cannot_end`` (a GSM escape, a UTF-16 high surrogate):
    that unit moves to the next part with its partner.
    """
    parts: list[bytes] = []
    start = 0
    while start < len(units):
        end = min(start + per_part, len(units))
        if end < len(units) and units[end - 1] in cannot_end:
            end -= 1
        parts.append(b"".join(units[start:end]))
        start = end
    return parts


def split_for_sms(text: str) -> tuple[int, list[bytes]]:
    """Choose a coding for ``text`` and cut it into part bodies: ``(data_coding, parts)``.

    GSM 03.38 (data_coding 0, septets unpacked one per byte) when the text fits, else UCS-2
    (data_coding 8, UTF-16BE). One part up to 160 septets / 70 UCS-2 units; beyond that parts
    of 153 septets / 67 units, leaving room for the 6-octet concatenation UDH the caller adds
    (3GPP TS 23.040 §9.2.3.24.1). No part ends inside a GSM escape sequence or between the
    halves of a surrogate pair, so a part may be one unit short. Empty text gives one empty
    part. Raises ValueError if more than 255 parts would be needed.
    """
    if gsm_fits(text):
        data = gsm_encode(text)
        if len(data) <= GSM_SINGLE_SEPTETS:
            return DC_DEFAULT, [data]
        units = [bytes((b,)) for b in data]
        # 0x1B is not itself an extension code, so every ESC gsm_encode emits leads an
        # escape sequence and must stay in the same part as the code after it.
        parts = _split(units, GSM_PART_SEPTETS, {bytes((ESCAPE,))})
        coding = DC_DEFAULT
    else:
        data = text.encode("utf-16-be", errors="surrogatepass")
        if len(data) <= UCS2_SINGLE_CHARS * 2:
            return DC_UCS2, [data]
        units = [data[i : i + 2] for i in range(0, len(data), 2)]
        high = {bytes((hi, lo)) for hi in range(0xD8, 0xDC) for lo in range(256)}
        parts = _split(units, UCS2_PART_CHARS, high)
        coding = DC_UCS2
    if len(parts) > MAX_PARTS:
        raise ValueError(f"text needs {len(parts)} parts; at most {MAX_PARTS} are possible")
    return coding, parts
