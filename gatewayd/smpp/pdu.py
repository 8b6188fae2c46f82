"""SMPP 3.4 PDUs: framing, decoding and encoding. The only module that imports smpplib.

Exceptions::

    PduError                  a PDU we cannot accept; carries the status to answer with
      FrameError              command_length outside the bounds: the stream cannot be resynchronised
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs

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
