"""Encoders for the PDUs and the DIMSE response that the DICOM faults send themselves.

Layouts follow PS3.8 section 9.3 for the PDUs and PS3.7 section 9.3.1.2 for
the C-STORE-RSP command set, which is always Implicit VR Little Endian.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

from simulator.links.pdu import PDUType

C_STORE_RSP = 0x8001
"""CommandField (0000,0100) of a C-STORE-RSP."""

NO_DATA_SET = 0x0101
"""CommandDataSetType (0000,0800) value meaning that no data set follows."""

COMMAND_LAST = 0x03
"""Message control header of a PDV with the last fragment of a command set (here the only one)."""


def pdu(pdu_type: PDUType, body: bytes) -> bytes:
    """Return a PDU: type, reserved byte, 4-byte big-endian length, then ``body``."""
    return struct.pack(">BBI", pdu_type, 0, len(body)) + body


def associate_rj(result: int, source: int, reason: int) -> bytes:
    """Return an A-ASSOCIATE-RJ PDU (PS3.8 section 9.3.4)."""
    return pdu(PDUType.A_ASSOCIATE_RJ, bytes([0, result, source, reason]))


def a_abort(source: int, reason: int) -> bytes:
    """Return an A-ABORT PDU (PS3.8 section 9.3.8)."""
    return pdu(PDUType.A_ABORT, bytes([0, 0, source, reason]))


def p_data_tf(pdvs: Iterable[tuple[int, int, bytes]]) -> bytes:
    """Return a P-DATA-TF PDU of PDV items given as (context ID, message control header, value)."""
    items = b"".join(
        struct.pack(">IBB", len(value) + 2, context_id, control) + value
        for context_id, control, value in pdvs
    )

    return pdu(PDUType.P_DATA_TF, items)


def _element(element: int, value: bytes) -> bytes:
    """Encode one group 0000 element in Implicit VR Little Endian."""
    return struct.pack("<HHI", 0x0000, element, len(value)) + value


def _uid(uid: str) -> bytes:
    raw = uid.encode("ascii")
    return raw + b"\x00" if len(raw) % 2 else raw


def _text(text: str) -> bytes:
    raw = text.encode("ascii")
    return raw + b" " if len(raw) % 2 else raw


def c_store_rsp(
    sop_class_uid: str,
    sop_instance_uid: str,
    message_id: int,
    status: int,
    error_comment: str | None = None,
) -> bytes:
    """Return the command set of a C-STORE-RSP, with CommandGroupLength first.

    ``message_id`` is the MessageID of the request, which the response
    carries as MessageIDBeingRespondedTo.
    """
    elements = [
        _element(0x0002, _uid(sop_class_uid)),
        _element(0x0100, struct.pack("<H", C_STORE_RSP)),
        _element(0x0120, struct.pack("<H", message_id)),
        _element(0x0800, struct.pack("<H", NO_DATA_SET)),
        _element(0x0900, struct.pack("<H", status)),
    ]
    if error_comment is not None:
        elements.append(_element(0x0902, _text(error_comment)))
    elements.append(_element(0x1000, _uid(sop_instance_uid)))
    body = b"".join(elements)

    return _element(0x0000, struct.pack("<I", len(body))) + body
