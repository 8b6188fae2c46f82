"""SMPP 3.4 PDUs: framing, decoding and encoding. The only module that imports smpplib.

Exceptions::

    PduError                  a PDU we cannot accept; carries the status to answer with
      FrameError              command_length outside the bounds: the stream cannot be resynchronised

Layouts come from smpplib's declarative tables (``command.<Class>.params`` /
``params_order`` and ``consts.OPTIONAL_PARAMS``), compiled once at import, so smpplib
stays the single source of truth for what each PDU holds. Decoding is our own
validating walker over those layouts: smpplib's parser is ~4x slower and accepts
truncated bodies, C-strings without NUL and ``sm_length`` past the end. Each layout's
walk is also compiled into one straight-line function (``_compile_fast``) that decodes
well-formed bodies and hands anything irregular back to the walker, which then names the
error. Encoding of
mandatory parameters goes through smpplib's ``generate_params`` (header-only and
message_id-only responses take a ``struct`` fast path); TLVs are always written by us,
because smpplib drops empty values and UTF-8-encodes C-string TLVs while counting
characters.

How a malformed PDU is answered (``PduError.status``):

=====================================================================  ======================
frame shorter than 16 bytes, command_length != frame length            ESME_RINVCMDLEN
body ends inside the mandatory part (field or C-string NUL missing)    ESME_RINVCMDLEN
command_id we do not handle (answered with generic_nack, §4.3)         ESME_RINVCMDID
C-Octet String longer than its maximum (NUL included)                  ESME_RINVMSGLEN
sm_length > 254 or past the end of the body (§4.4.1)                   ESME_RINVMSGLEN
TLV header or value truncated, trailing bytes that are not a TLV        ESME_RINVOPTPARSTREAM
fixed-size TLV (integers, network_error_code) with another length      ESME_RINVPARLEN
=====================================================================  ======================
"""

from __future__ import annotations

import struct
import types
from collections.abc import Callable, Mapping
from typing import Any, Final

import attrs
from smpplib import command as _sl_command
from smpplib import consts as _sl_consts
from smpplib import ptypes as _sl_ptypes
from smpplib import smpp as _sl_smpp

# Command ids (SMPP 3.4 §5.1.2.1).
GENERIC_NACK = 0x80000000
BIND_RECEIVER = 0x00000001
BIND_RECEIVER_RESP = 0x80000001
BIND_TRANSMITTER = 0x00000002
BIND_TRANSMITTER_RESP = 0x80000002
SUBMIT_SM = 0x00000004
SUBMIT_SM_RESP = 0x80000004
DELIVER_SM = 0x00000005
DELIVER_SM_RESP = 0x80000005
UNBIND = 0x00000006
UNBIND_RESP = 0x80000006
BIND_TRANSCEIVER = 0x00000009
BIND_TRANSCEIVER_RESP = 0x80000009
OUTBIND = 0x0000000B
ENQUIRE_LINK = 0x00000015
ENQUIRE_LINK_RESP = 0x80000015
ALERT_NOTIFICATION = 0x00000102
DATA_SM = 0x00000103
DATA_SM_RESP = 0x80000103

RESPONSE_BIT = 0x80000000

# Command status values (SMPP 3.4 §5.1.3).
ESME_ROK = 0x00000000
ESME_RINVMSGLEN = 0x00000001
ESME_RINVCMDLEN = 0x00000002
ESME_RINVCMDID = 0x00000003
ESME_RINVBNDSTS = 0x00000004
ESME_RALYBND = 0x00000005
ESME_RSYSERR = 0x00000008
ESME_RINVSRCADR = 0x0000000A
ESME_RINVDSTADR = 0x0000000B
ESME_RBINDFAIL = 0x0000000D
ESME_RINVPASWD = 0x0000000E
ESME_RINVSYSID = 0x0000000F
ESME_RMSGQFUL = 0x00000014
ESME_RTHROTTLED = 0x00000058
ESME_RINVOPTPARSTREAM = 0x000000C0
ESME_ROPTPARNOTALLWD = 0x000000C1
ESME_RINVPARLEN = 0x000000C2
ESME_RMISSINGOPTPARAM = 0x000000C3
ESME_RINVOPTPARAMVAL = 0x000000C4
ESME_RX_T_APPN = 0x00000064
ESME_RX_P_APPN = 0x00000065
ESME_RX_R_APPN = 0x00000066
ESME_RUNKNOWNERR = 0x000000FF

HEADER_LENGTH = 16
MIN_COMMAND_LENGTH = 16
DEFAULT_MAX_COMMAND_LENGTH = 65536


@attrs.frozen(kw_only=True)
class Tlv:
    """One optional parameter exactly as it was on the wire (SMPP 3.4 §3.2.4.1)."""

    tag: int
    value: bytes


@attrs.frozen(kw_only=True, eq=True)
class Pdu:
    """A decoded PDU.

    ``command`` is the SMPP name (``"deliver_sm"``), ``command_id`` its number.
    ``fields`` holds the mandatory parameters by SMPP name plus every known TLV by name:
    integers as ``int``, C-Octet Strings and octet strings as ``bytes`` (no trailing NUL).
    ``tlvs`` holds every optional parameter in wire order, known and unknown alike, so
    nothing a carrier sent is lost.
    """

    command: str
    command_id: int
    status: int = 0
    sequence: int
    fields: Mapping[str, int | bytes] = attrs.field(factory=dict)
    tlvs: tuple[Tlv, ...] = ()

    @property
    def is_response(self) -> bool:
        return bool(self.command_id & RESPONSE_BIT)

    def get_int(self, name: str, default: int = 0) -> int:
        value = self.fields.get(name, default)
        return value if isinstance(value, int) else default

    def get_bytes(self, name: str, default: bytes = b"") -> bytes:
        value = self.fields.get(name, default)
        return value if isinstance(value, bytes) else default


class PduError(Exception):
    """A PDU we cannot accept.

    ``status`` is the command_status to answer with; ``command_id`` and ``sequence`` are
    those of the offending PDU when the header could be read (else 0). The session answers
    a request with its ``_resp`` carrying ``status`` where one exists, else generic_nack.
    """

    def __init__(self, reason: str, *, status: int, command_id: int = 0, sequence: int = 0):
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.command_id = command_id
        self.sequence = sequence


class FrameError(PduError):
    """command_length outside [16, max]: the byte stream cannot be trusted past this point."""


# ---------------------------------------------------------------------------------------
# Layouts, compiled once from smpplib's tables.

# Parameter kinds.
_INT: Final = 0  # big-endian unsigned integer of ``size`` octets (§3.1)
_CSTR: Final = 1  # C-Octet String, NUL-terminated, ``max`` counts the NUL (§3.1)
_OSTR: Final = 2  # Octet String: length from ``len_field`` (mandatory) or the TLV length
_FLAG: Final = 3  # TLV whose presence is the value (alert_on_message_delivery, §5.3.2.41)


@attrs.frozen(kw_only=True)
class _Param:
    name: str
    kind: int
    size: int = 0  # fixed size in octets (ints; fixed-size octet strings); 0 = variable
    max: int = 0  # maximum size in octets, NUL included for C-strings; 0 = unbounded
    len_field: str = ""  # mandatory octet strings: the field holding their length


@attrs.frozen(kw_only=True)
class _TlvSpec:
    name: str
    tag: int
    param: _Param


@attrs.frozen(kw_only=True)
class _Layout:
    command: str
    command_id: int
    params: tuple[_Param, ...]  # mandatory parameters in wire order
    by_name: Mapping[str, _Param]
    defaults: Mapping[str, int | bytes]
    steps: tuple[tuple[Any, ...], ...]  # compiled decode program, see _compile
    fast: _FastDecoder  # the same program as straight-line code, see _compile_fast
    sl_class: Any  # smpplib class encoding the mandatory part, None if it has none
    sl_tlvs: frozenset[str]  # TLV names smpplib's class lists (informational, tests)
    length_of: Mapping[str, str]  # len_field -> the octet string it measures
    single_cstr: str  # name of the only mandatory param when it is one C-string, else ""


# The PDUs we handle and the smpplib class describing each. smpplib has no outbind:
# its layout (§4.1.7.1) is written out below.
_SL_CLASSES: Final[dict[str, Any]] = {
    "bind_transmitter": _sl_command.BindTransmitter,
    "bind_transmitter_resp": _sl_command.BindTransmitterResp,
    "bind_receiver": _sl_command.BindReceiver,
    "bind_receiver_resp": _sl_command.BindReceiverResp,
    "bind_transceiver": _sl_command.BindTransceiver,
    "bind_transceiver_resp": _sl_command.BindTransceiverResp,
    "unbind": _sl_command.Unbind,
    "unbind_resp": _sl_command.UnbindResp,
    "enquire_link": _sl_command.EnquireLink,
    "enquire_link_resp": _sl_command.EnquireLinkResp,
    "generic_nack": _sl_command.GenericNAck,
    "submit_sm": _sl_command.SubmitSM,
    "submit_sm_resp": _sl_command.SubmitSMResp,
    "deliver_sm": _sl_command.DeliverSM,
    "deliver_sm_resp": _sl_command.DeliverSMResp,
    "data_sm": _sl_command.DataSM,
    "data_sm_resp": _sl_command.DataSMResp,
    "alert_notification": _sl_command.AlertNotification,
}

_COMMAND_IDS: Final[dict[str, int]] = {
    "generic_nack": GENERIC_NACK,
    "bind_receiver": BIND_RECEIVER,
    "bind_receiver_resp": BIND_RECEIVER_RESP,
    "bind_transmitter": BIND_TRANSMITTER,
    "bind_transmitter_resp": BIND_TRANSMITTER_RESP,
    "submit_sm": SUBMIT_SM,
    "submit_sm_resp": SUBMIT_SM_RESP,
    "deliver_sm": DELIVER_SM,
    "deliver_sm_resp": DELIVER_SM_RESP,
    "unbind": UNBIND,
    "unbind_resp": UNBIND_RESP,
    "bind_transceiver": BIND_TRANSCEIVER,
    "bind_transceiver_resp": BIND_TRANSCEIVER_RESP,
    "outbind": OUTBIND,
    "enquire_link": ENQUIRE_LINK,
    "enquire_link_resp": ENQUIRE_LINK_RESP,
    "alert_notification": ALERT_NOTIFICATION,
    "data_sm": DATA_SM,
    "data_sm_resp": DATA_SM_RESP,
}

COMMAND_IDS: Final[Mapping[str, int]] = types.MappingProxyType(_COMMAND_IDS)
_NAMES_BY_ID: Final[dict[int, str]] = {v: k for k, v in _COMMAND_IDS.items()}

# Where smpplib's TLV tables contradict SMPP 3.4 §5.3.2 (or each other), the spec wins.
_TLV_OVERRIDES: Final[dict[str, _Param]] = {
    # §5.3.2.2: Integer(1); smpplib's SubmitSM says 2 octets, its DataSM 1.
    "source_addr_subunit": _Param(name="source_addr_subunit", kind=_INT, size=1),
    # §5.3.2.15/16: Octet String (a type octet, then the subaddress), not NUL-terminated.
    "source_subaddress": _Param(name="source_subaddress", kind=_OSTR, max=23),
    "dest_subaddress": _Param(name="dest_subaddress", kind=_OSTR, max=23),
    # §5.3.2.29: Integer(1); smpplib lists the tag in no class.
    "set_dpf": _Param(name="set_dpf", kind=_INT, size=1),
    # §5.3.2.31: 3 octets (network type, error code); smpplib's DataSMResp says C-string.
    "network_error_code": _Param(name="network_error_code", kind=_OSTR, size=3),
    # §5.3.2.33: Integer(1); smpplib's DataSMResp says C-string.
    "delivery_failure_reason": _Param(name="delivery_failure_reason", kind=_INT, size=1),
    # §5.3.2.38: Octet String (data_coding octet, then display characters).
    "callback_num_atag": _Param(name="callback_num_atag", kind=_OSTR, max=65),
}


def _param_from_smpplib(name: str, p: Any) -> _Param:
    if p.type is int:
        return _Param(name=name, kind=_INT, size=p.size)
    if p.type is str:
        return _Param(name=name, kind=_CSTR, size=getattr(p, "size", 0), max=getattr(p, "max", 0))
    if p.type is _sl_ptypes.ostr:
        return _Param(
            name=name,
            kind=_OSTR,
            size=getattr(p, "size", 0),
            max=getattr(p, "max", 0),
            len_field=getattr(p, "len_field", ""),
        )
    if p.type is _sl_ptypes.flag:
        return _Param(name=name, kind=_FLAG)
    raise TypeError(f"smpplib parameter {name!r} has unknown type {p.type!r}")  # pragma: no cover


def _is_tlv(cls: Any, name: str) -> bool:
    # smpplib's own rule (Command.field_is_optional): a name in OPTIONAL_PARAMS is a TLV
    # unless the class lists it in mandatory_fields.
    return name in _sl_consts.OPTIONAL_PARAMS and name not in getattr(cls, "mandatory_fields", ())


def _build_tlv_specs() -> dict[str, _TlvSpec]:
    seen: dict[str, set[_Param]] = {}
    for cls in _SL_CLASSES.values():
        for name in cls.params_order:
            if _is_tlv(cls, name):
                seen.setdefault(name, set()).add(_param_from_smpplib(name, cls.params[name]))
    specs: dict[str, _TlvSpec] = {}
    for name, tag in _sl_consts.OPTIONAL_PARAMS.items():
        candidates = seen.get(name, set())
        if name in _TLV_OVERRIDES:
            param = _TLV_OVERRIDES[name]
        elif len(candidates) == 1:
            (param,) = candidates
        else:  # pragma: no cover - only if a new smpplib changes its tables
            raise RuntimeError(f"smpplib describes TLV {name!r} ambiguously: {candidates}")
        specs[name] = _TlvSpec(name=name, tag=tag, param=param)
    return specs


_TLV_BY_NAME: Final[dict[str, _TlvSpec]] = _build_tlv_specs()
_TLV_BY_TAG: Final[dict[int, _TlvSpec]] = {s.tag: s for s in _TLV_BY_NAME.values()}

# Integer parameters of consecutive fixed sizes are read with one precompiled Struct.
_INT_FORMATS: Final = {1: "B", 2: "H", 4: "I"}
_STEP_INTS: Final = 0
_STEP_CSTR: Final = 1
_STEP_OSTR: Final = 2


def _compile(params: tuple[_Param, ...]) -> tuple[tuple[Any, ...], ...]:
    """Turn a layout into a decode program: runs of ints become one Struct."""
    steps: list[tuple[Any, ...]] = []
    run: list[_Param] = []

    def flush() -> None:
        if run:
            fmt = ">" + "".join(_INT_FORMATS[p.size] for p in run)
            steps.append((_STEP_INTS, struct.Struct(fmt), tuple(p.name for p in run)))
            run.clear()

    for p in params:
        if p.kind == _INT:
            run.append(p)
            continue
        flush()
        if p.kind == _CSTR:
            steps.append((_STEP_CSTR, p.name, p.max))
        elif p.kind == _OSTR:
            steps.append((_STEP_OSTR, p.name, p.len_field, p.max))
        else:  # pragma: no cover - no mandatory flags exist
            raise TypeError(p)
    flush()
    return tuple(steps)


# fast(frame, n, fields) -> the position after the mandatory part, or -1
_FastDecoder = Callable[[bytes, int, dict[str, int | bytes]], int]


def _compile_fast(steps: tuple[tuple[Any, ...], ...]) -> _FastDecoder:
    """The decode program as one straight-line function, for well-formed bodies.

    It fills ``fields`` exactly as the walker in :func:`decode` does and returns where the
    mandatory part ends, or -1 at the first irregularity, where the walker takes over to
    say what is wrong (same checks, in the same order: see tests/smpp/test_fast_paths.py).
    """
    env: dict[str, Any] = {}
    lines = ["def fast(frame, n, fields):", f"    pos = {HEADER_LENGTH}"]
    for i, step in enumerate(steps):
        if step[0] == _STEP_INTS:
            st, names = step[1], step[2]
            env[f"s{i}"] = st
            values = [f"v{i}_{j}" for j in range(len(names))]
            lines.append(f"    if pos + {st.size} > n: return -1")
            lines.append(f"    ({', '.join(values)},) = s{i}.unpack_from(frame, pos)")
            lines += [f"    fields[{name!r}] = {v}" for name, v in zip(names, values, strict=True)]
            lines.append(f"    pos += {st.size}")
        elif step[0] == _STEP_CSTR:
            name, maxlen = step[1], step[2]
            lines.append(f"    nul = frame.find(b'\\x00', pos, pos + {maxlen})")
            lines.append("    if nul < 0: return -1")
            lines.append(f"    fields[{name!r}] = frame[pos:nul]")
            lines.append("    pos = nul + 1")
        else:
            name, len_field, maxlen = step[1], step[2], step[3]
            lines.append(f"    size = fields[{len_field!r}]")
            lines.append(f"    if size > {maxlen} or pos + size > n: return -1")
            lines.append(f"    fields[{name!r}] = frame[pos : pos + size]")
            lines.append("    pos += size")
    lines.append("    return pos")
    exec("\n".join(lines), env)  # the source is built above from smpplib's tables
    fast: _FastDecoder = env["fast"]
    return fast


def _default(p: _Param) -> int | bytes:
    return 0 if p.kind == _INT else b""


def _build_layout(command: str, params: tuple[_Param, ...], sl_class: Any) -> _Layout:
    defaults = {p.name: _default(p) for p in params}
    if "interface_version" in defaults:
        defaults["interface_version"] = 0x34  # §5.2.4: we speak SMPP 3.4
    single = params[0].name if len(params) == 1 and params[0].kind == _CSTR else ""
    sl_tlvs = frozenset(n for n in getattr(sl_class, "params_order", ()) if _is_tlv(sl_class, n))
    return _Layout(
        command=command,
        command_id=_COMMAND_IDS[command],
        params=params,
        by_name={p.name: p for p in params},
        defaults=defaults,
        steps=_compile(params),
        fast=_compile_fast(_compile(params)),
        sl_class=sl_class if params else None,
        sl_tlvs=sl_tlvs,
        length_of={p.len_field: p.name for p in params if p.len_field},
        single_cstr=single,
    )


def _build_layouts() -> dict[str, _Layout]:
    layouts: dict[str, _Layout] = {}
    for command, cls in _SL_CLASSES.items():
        params = tuple(
            _param_from_smpplib(n, cls.params[n]) for n in cls.params_order if not _is_tlv(cls, n)
        )
        layouts[command] = _build_layout(command, params, cls)
    # outbind (§4.1.7.1): system_id C-string max 16, password C-string max 9.
    outbind = (
        _Param(name="system_id", kind=_CSTR, max=16),
        _Param(name="password", kind=_CSTR, max=9),
    )
    layouts["outbind"] = _build_layout("outbind", outbind, None)
    return layouts


_LAYOUTS: Final[dict[str, _Layout]] = _build_layouts()
_LAYOUTS_BY_ID: Final[dict[int, _Layout]] = {lo.command_id: lo for lo in _LAYOUTS.values()}

_HEADER: Final = struct.Struct(">IIII")
_TLV_HEADER: Final = struct.Struct(">HH")
_LENGTH: Final = struct.Struct(">I")


def command_name(command_id: int) -> str | None:
    """The SMPP name of a command id we handle, else None."""
    return _NAMES_BY_ID.get(command_id)


def header(frame: bytes) -> tuple[int, int, int, int]:
    """(command_length, command_id, command_status, sequence_number) of a frame (§3.2)."""
    if len(frame) < HEADER_LENGTH:
        raise PduError(f"{len(frame)} bytes is shorter than a header", status=ESME_RINVCMDLEN)
    length, command_id, status, sequence = _HEADER.unpack_from(frame)
    return length, command_id, status, sequence


# ---------------------------------------------------------------------------------------
# Framing.


class Framer:
    """Splits a byte stream into whole PDUs by command_length (§3.2), sans I/O.

    Bytes are kept in one bytearray with a read offset, compacted only when the consumed
    prefix is at least half of it, so a chunk holding thousands of small PDUs costs O(n).
    """

    def __init__(self, max_length: int = DEFAULT_MAX_COMMAND_LENGTH) -> None:
        if max_length < MIN_COMMAND_LENGTH:
            raise ValueError(f"max_length {max_length} < {MIN_COMMAND_LENGTH}")
        self._max = max_length
        self._buf = bytearray()
        self._pos = 0
        self._error: FrameError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned as a frame."""
        return len(self._buf) - self._pos

    def feed(self, data: bytes | bytearray) -> None:
        """Append received bytes."""
        if self._error is not None:
            self._raise_again(self._error)
        pos = self._pos
        if pos and pos * 2 >= len(self._buf):
            # Drop the consumed prefix only when it is at least half the buffer, so every
            # byte is moved O(1) times on average.
            del self._buf[:pos]
            self._pos = 0
        self._buf += data

    def next_frame(self) -> bytes | None:
        """One whole PDU's bytes, or None until more bytes arrive."""
        if self._error is not None:
            self._raise_again(self._error)
        buf = self._buf
        pos = self._pos
        available = len(buf) - pos
        if available < HEADER_LENGTH:
            # The length is checked only once the whole header is here so that the
            # generic_nack can echo the offending sequence_number (§4.3.1).
            return None
        (length,) = _LENGTH.unpack_from(buf, pos)
        if length < MIN_COMMAND_LENGTH or length > self._max:
            # Never trust (or allocate) the claimed size: a bad length means we cannot
            # find the next PDU boundary, so the framer refuses everything from here on.
            _, command_id, _, sequence = _HEADER.unpack_from(buf, pos)
            self._error = FrameError(
                f"command_length {length} outside [{MIN_COMMAND_LENGTH}, {self._max}]",
                status=ESME_RINVCMDLEN,
                command_id=command_id,
                sequence=sequence,
            )
            self._buf = bytearray()
            self._pos = 0
            raise self._error
        if available < length:
            return None
        end = pos + length
        frame = bytes(buf[pos:end])
        if end == len(buf):
            buf.clear()
            self._pos = 0
        else:
            self._pos = end
        return frame

    @staticmethod
    def _raise_again(error: FrameError) -> None:
        raise FrameError(
            f"framer unusable after: {error.reason}",
            status=error.status,
            command_id=error.command_id,
            sequence=error.sequence,
        )


# ---------------------------------------------------------------------------------------
# Decoding.


def _tlv_field(spec: _TlvSpec, value: bytes) -> int | bytes | None:
    """The ``fields`` value of a known TLV, or None when its length is wrong for its type."""
    p = spec.param
    kind = p.kind
    if kind == _INT:
        if len(value) != p.size:
            return None
        return int.from_bytes(value, "big")
    if kind == _CSTR:
        # Tolerate a missing NUL: several SMSCs send receipted_message_id without one, and
        # the length field already delimits the value (§3.2.4).
        return value[:-1] if value[-1:] == b"\x00" else value
    if p.size and len(value) != p.size:
        return None
    return value


def _walk(
    layout: _Layout, frame: bytes, n: int, command_id: int, sequence: int
) -> tuple[dict[str, int | bytes], int]:
    """The mandatory part by the decode program, step by step, naming what is wrong (the
    table in the module docstring). Returns the fields and where the TLVs start."""
    fields: dict[str, int | bytes] = {}
    pos = HEADER_LENGTH
    reason = ""
    err = ESME_RINVCMDLEN
    for step in layout.steps:
        kind = step[0]
        if kind == _STEP_INTS:
            st = step[1]
            if pos + st.size > n:
                reason = f"body ends before {step[2][0]}"
                break
            for name, value in zip(step[2], st.unpack_from(frame, pos), strict=True):
                fields[name] = value
            pos += st.size
        elif kind == _STEP_CSTR:
            name, maxlen = step[1], step[2]
            nul = frame.find(b"\x00", pos, pos + maxlen)
            if nul < 0:
                if pos + maxlen >= n:
                    reason = f"{name}: no NUL before the end of the body"
                else:
                    reason, err = f"{name}: longer than {maxlen - 1} octets", ESME_RINVMSGLEN
                break
            fields[name] = frame[pos:nul]
            pos = nul + 1
        else:
            name, len_field, maxlen = step[1], step[2], step[3]
            size = fields[len_field]
            assert isinstance(size, int)
            if size > maxlen:
                reason, err = f"{len_field} {size} > {maxlen}", ESME_RINVMSGLEN
                break
            if pos + size > n:
                reason, err = f"{len_field} {size} runs past the end of the body", ESME_RINVMSGLEN
                break
            fields[name] = frame[pos : pos + size]
            pos += size
    if reason:
        raise PduError(
            f"{layout.command}: {reason}", status=err, command_id=command_id, sequence=sequence
        )
    return fields, pos


def decode(frame: bytes) -> Pdu:
    """Decode and validate exactly one PDU (as returned by ``Framer.next_frame``)."""
    if type(frame) is not bytes:
        frame = bytes(frame)
    n = len(frame)
    if n < HEADER_LENGTH:
        raise PduError(f"{n} bytes is shorter than a header", status=ESME_RINVCMDLEN)
    length, command_id, status, sequence = _HEADER.unpack_from(frame)
    if length != n:
        raise PduError(
            f"command_length {length} but frame has {n} bytes",
            status=ESME_RINVCMDLEN,
            command_id=command_id,
            sequence=sequence,
        )
    layout = _LAYOUTS_BY_ID.get(command_id)
    if layout is None:
        raise PduError(
            f"unsupported command_id 0x{command_id:08x}",
            status=ESME_RINVCMDID,
            command_id=command_id,
            sequence=sequence,
        )
    fields: dict[str, int | bytes]
    if n == HEADER_LENGTH and status and command_id & RESPONSE_BIT:
        # A response with a non-zero status may omit its body (e.g. §4.1.2, §4.4.2).
        fields = dict(layout.defaults)
        return Pdu(command=layout.command, command_id=command_id, status=status,
                   sequence=sequence, fields=fields)  # fmt: skip

    fields = {}
    pos = layout.fast(frame, n, fields)
    if pos < 0:  # malformed: the walker finds out what exactly
        fields, pos = _walk(layout, frame, n, command_id, sequence)

    # Optional parameters (§3.2.4, §5.3): whatever follows the mandatory part must be a
    # well-formed TLV stream. Unknown tags, and known tags smpplib does not list for this
    # command, are kept: §3.2.4 says unknown optional parameters are to be ignored.
    if pos == n:  # no TLVs: the usual deliver_sm
        return Pdu(command=layout.command, command_id=command_id, status=status,
                   sequence=sequence, fields=fields)  # fmt: skip
    tlvs: list[Tlv] = []
    by_tag = _TLV_BY_TAG
    reason = ""
    err = ESME_RINVOPTPARSTREAM
    while pos < n:
        if pos + 4 > n:
            reason, err = f"{n - pos} trailing bytes are not a TLV header", ESME_RINVOPTPARSTREAM
            break
        tag, size = _TLV_HEADER.unpack_from(frame, pos)
        pos += 4
        end = pos + size
        if end > n:
            reason, err = f"TLV 0x{tag:04x} length {size} runs past the end", ESME_RINVOPTPARSTREAM
            break
        value = frame[pos:end]
        pos = end
        tlvs.append(Tlv(tag=tag, value=value))
        spec = by_tag.get(tag)
        if spec is not None:
            decoded = _tlv_field(spec, value)
            if decoded is None:
                reason, err = f"TLV {spec.name}: bad length {size}", ESME_RINVPARLEN
                break
            fields[spec.name] = decoded
    if reason:
        raise PduError(
            f"{layout.command}: {reason}", status=err, command_id=command_id, sequence=sequence
        )
    return Pdu(
        command=layout.command,
        command_id=command_id,
        status=status,
        sequence=sequence,
        fields=fields,
        tlvs=tuple(tlvs),
    )


# ---------------------------------------------------------------------------------------
# Building and encoding.


def _check_value(command: str, p: _Param, value: object) -> None:
    """Raise TypeError/ValueError for a value the wire format cannot carry."""
    if p.kind == _INT:
        if not isinstance(value, int):
            raise TypeError(f"{command}.{p.name} must be int, not {type(value).__name__}")
        if not 0 <= value < 1 << (8 * p.size):
            raise ValueError(f"{command}.{p.name}={value} does not fit {p.size} octet(s)")
        return
    if not isinstance(value, bytes):
        raise TypeError(f"{command}.{p.name} must be bytes, not {type(value).__name__}")
    if p.kind == _CSTR:
        if b"\x00" in value:
            raise ValueError(f"{command}.{p.name} contains NUL")
        # smpplib would silently truncate; refusing is the only honest option.
        if p.max and len(value) >= p.max:
            raise ValueError(f"{command}.{p.name} is {len(value)} octets, max {p.max - 1}")
    elif p.kind == _OSTR:
        if p.size and len(value) != p.size:
            raise ValueError(f"{command}.{p.name} must be {p.size} octets")
        if p.len_field and p.max and len(value) > p.max:
            raise ValueError(f"{command}.{p.name} is {len(value)} octets, max {p.max}")


def _tlv_value(command: str, spec: _TlvSpec, value: int | bytes) -> bytes:
    """Wire value of a known TLV given in ``fields`` form."""
    p = spec.param
    if p.kind == _INT:
        _check_value(command, p, value)
        assert isinstance(value, int)
        return value.to_bytes(p.size, "big")
    if not isinstance(value, bytes):
        raise TypeError(f"{command}.{spec.name} must be bytes, not {type(value).__name__}")
    if p.kind == _CSTR:
        if b"\x00" in value:
            raise ValueError(f"{command}.{spec.name} contains NUL")
        value += b"\x00"
    elif p.size and len(value) != p.size:
        raise ValueError(f"{command}.{spec.name} must be {p.size} octets")
    if len(value) > 0xFFFF:
        raise ValueError(f"{command}.{spec.name} is longer than a TLV can carry")
    return value


def _layout_for(command: str) -> _Layout:
    layout = _LAYOUTS.get(command)
    if layout is None:
        raise ValueError(f"unsupported command {command!r}")
    return layout


def make(
    command: str,
    *,
    sequence: int,
    status: int = 0,
    tlvs: tuple[Tlv, ...] = (),
    **fields: int | bytes | str,
) -> Pdu:
    """Build a PDU shaped exactly as ``decode`` would return it.

    ``fields`` may name mandatory parameters (missing ones get defaults) and known TLVs;
    ``str`` values are stored as latin-1 bytes. Known TLVs given as fields come first on
    the wire, then ``tlvs`` as given. ``sm_length`` is derived from ``short_message``.
    """
    layout = _layout_for(command)
    out: dict[str, int | bytes] = dict(layout.defaults)
    wire: list[Tlv] = []
    for name, raw in fields.items():
        value = raw.encode("latin-1") if isinstance(raw, str) else raw
        p = layout.by_name.get(name)
        if p is not None:
            if name not in layout.length_of:
                _check_value(command, p, value)
            out[name] = value
            continue
        spec = _TLV_BY_NAME.get(name)
        if spec is None:
            raise ValueError(f"{command} has no parameter {name!r}")
        encoded = _tlv_value(command, spec, value)
        wire.append(Tlv(tag=spec.tag, value=encoded))
        decoded = _tlv_field(spec, encoded)
        assert decoded is not None
        out[name] = decoded
    for len_field, target in layout.length_of.items():
        target_value = out[target]
        actual = len(target_value) if isinstance(target_value, bytes) else 0
        if len_field in fields and fields[len_field] != actual:
            raise ValueError(
                f"{command}.{len_field}={fields[len_field]!r} but {target} is {actual}"
            )
        out[len_field] = actual
    for tlv in tlvs:
        _check_tlv(tlv)
        spec = _TLV_BY_TAG.get(tlv.tag)
        if spec is not None:
            decoded = _tlv_field(spec, tlv.value)
            if decoded is None:
                raise ValueError(f"{command}: TLV {spec.name} has a bad length")
            out[spec.name] = decoded
    return Pdu(
        command=command,
        command_id=layout.command_id,
        status=status,
        sequence=sequence,
        fields=out,
        tlvs=(*wire, *tlvs),
    )


def response_for(
    request: Pdu,
    status: int = ESME_ROK,
    *,
    tlvs: tuple[Tlv, ...] = (),
    **fields: int | bytes | str,
) -> Pdu:
    """The response to ``request``: its ``_resp``, or generic_nack if it has none (§4.3)."""
    name = request.command + "_resp"
    if request.is_response or name not in _COMMAND_IDS:
        name = "generic_nack"
    return make(name, sequence=request.sequence, status=status, tlvs=tlvs, **fields)


# Requests whose _resp holds only message_id (§4.4.2, §4.6.2, §4.7.2): with no fields, it
# is a header and an empty C-string, or the header alone when the status is an error.
_BARE_RESPONSES: Final[dict[int, int]] = {
    DELIVER_SM: DELIVER_SM_RESP,
    DATA_SM: DATA_SM_RESP,
    SUBMIT_SM: SUBMIT_SM_RESP,
}


def encode_bare_response(request: Pdu, status: int) -> bytes | None:
    """``encode(response_for(request, status))`` for a deliver_sm, data_sm or submit_sm
    answered with no fields; None for anything else (use ``response_for``)."""
    command_id = _BARE_RESPONSES.get(request.command_id)
    if command_id is None or not 0 <= status <= 0xFFFFFFFF:
        return None
    if status:
        return _HEADER.pack(HEADER_LENGTH, command_id, status, request.sequence)
    return _HEADER.pack(HEADER_LENGTH + 1, command_id, 0, request.sequence) + b"\x00"


def _check_tlv(tlv: Tlv) -> None:
    if not 0 <= tlv.tag <= 0xFFFF:
        raise ValueError(f"TLV tag {tlv.tag} out of range")
    if len(tlv.value) > 0xFFFF:
        raise ValueError(f"TLV 0x{tlv.tag:04x} value longer than 65535 octets")


class _SequenceSource:
    """What smpplib wants as ``client``: only used to number requests (STACK.md)."""

    sequence = 0

    def next_sequence(self) -> int:
        return 0


_SEQUENCE_SOURCE: Final = _SequenceSource()


def _mandatory_value(layout: _Layout, p: _Param, fields: Mapping[str, int | bytes]) -> int | bytes:
    if p.name in layout.length_of:
        target = fields.get(layout.length_of[p.name], b"")
        return len(target) if isinstance(target, bytes) else 0
    value = fields.get(p.name, layout.defaults[p.name])
    _check_value(layout.command, p, value)
    return value


def _encode_native(layout: _Layout, fields: Mapping[str, int | bytes]) -> bytes:
    """The mandatory part, written from our layout (outbind; differential tests)."""
    parts: list[bytes] = []
    for p in layout.params:
        value = _mandatory_value(layout, p, fields)
        if isinstance(value, int):
            parts.append(value.to_bytes(p.size, "big"))
        elif p.kind == _CSTR:
            parts.append(value + b"\x00")
        else:
            parts.append(value)
    return b"".join(parts)


def _encode_smpplib(layout: _Layout, fields: Mapping[str, int | bytes]) -> bytes:
    """The mandatory part, written by smpplib's ``generate_params``."""
    # The client only feeds smpplib's sequence numbering; we write the header ourselves.
    sl = _sl_smpp.make_pdu(layout.command, client=_SEQUENCE_SOURCE)
    # Set attributes after construction: smpplib's __init__ ignores or overrides some
    # keywords (bind_* always resets interface_version to 0x34).
    for p in layout.params:
        value = _mandatory_value(layout, p, fields)  # validated: smpplib would truncate
        # smpplib wants str for C-Octet Strings (it encodes them latin-1 via six.b).
        setattr(sl, p.name, value.decode("latin-1") if p.kind == _CSTR else value)  # type: ignore[union-attr]
    body: bytes = sl.generate_params()
    return body


def _encode_tlvs(layout: _Layout, pdu: Pdu) -> bytes:
    """``pdu.tlvs`` as they are, then known TLVs present only in ``fields``."""
    present = {t.tag for t in pdu.tlvs}
    parts: list[bytes] = []
    for t in pdu.tlvs:
        _check_tlv(t)
        parts.append(_TLV_HEADER.pack(t.tag, len(t.value)))
        parts.append(t.value)
    by_name = layout.by_name
    for name, value in pdu.fields.items():
        if name in by_name:
            continue
        spec = _TLV_BY_NAME.get(name)
        if spec is None:
            raise ValueError(f"{layout.command} has no parameter {name!r}")
        if spec.tag in present:
            continue  # the wire form in ``tlvs`` wins over the convenience form
        raw = _tlv_value(layout.command, spec, value)
        parts.append(_TLV_HEADER.pack(spec.tag, len(raw)))
        parts.append(raw)
    return b"".join(parts)


def encode(pdu: Pdu) -> bytes:
    """Encode a PDU; ValueError/TypeError for values the wire format cannot carry."""
    layout = _layout_for(pdu.command)
    command_id = layout.command_id
    if pdu.command_id != command_id:
        raise ValueError(f"{pdu.command} has command_id 0x{command_id:08x}")
    fields = pdu.fields
    if not pdu.tlvs and len(fields) <= len(layout.params):
        tlv_bytes = b""
        if any(name not in layout.by_name for name in fields):
            tlv_bytes = _encode_tlvs(layout, pdu)
    else:
        tlv_bytes = _encode_tlvs(layout, pdu)

    if not layout.params:
        body = tlv_bytes
    elif (
        pdu.status
        and command_id & RESPONSE_BIT
        and not tlv_bytes
        and all(fields.get(k, v) == v for k, v in layout.defaults.items())
    ):
        # A response with a non-zero status and nothing to say goes header-only
        # (§4.1.2, §4.4.2: "the body is not returned if command_status is non-zero").
        body = b""
    elif layout.single_cstr:
        # message_id / system_id only: the hot path for deliver_sm_resp (§4.6.2).
        name = layout.single_cstr
        value = fields.get(name, b"")
        _check_value(layout.command, layout.params[0], value)
        assert isinstance(value, bytes)
        body = value + b"\x00" + tlv_bytes
    elif layout.sl_class is None:
        body = _encode_native(layout, fields) + tlv_bytes
    else:
        body = _encode_smpplib(layout, fields) + tlv_bytes
    if pdu.status > 0xFFFFFFFF or pdu.sequence > 0xFFFFFFFF or pdu.status < 0 or pdu.sequence < 0:
        raise ValueError("command_status and sequence_number are 32-bit unsigned")
    return _HEADER.pack(HEADER_LENGTH + len(body), command_id, pdu.status, pdu.sequence) + body
