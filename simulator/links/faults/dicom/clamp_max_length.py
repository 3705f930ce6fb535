"""``clamp_max_length``: lower the Maximum Length Received that each side advertises.

As a well-behaved middle box with a PDU limit does, the proxy rewrites the
Maximum Length sub-item (0x51) of the A-ASSOCIATE-RQ and of the
A-ASSOCIATE-AC to ``min(value, max_length)``; a value of 0 (unlimited)
becomes ``max_length``. Both peers then send PDUs no longer than
``max_length``. The fault acts in both directions whatever its
``direction``. Each rewrite is recorded with the original and the new value.

Attributes:

- ``max_length``: largest PDU-length, in bytes, that either peer may send,
  1 to 4,294,967,295.
"""

from __future__ import annotations

from simulator.links.faults.base import FaultAttributes, attribute
from simulator.links.faults.dicom.base import (
    BUFFER,
    PASS,
    BufferedPDU,
    Decision,
    DicomFault,
    Flow,
    PDUStart,
    register_dicom,
)
from simulator.links.pdu import HEADER_LENGTH, AssociateAC, AssociateRQ, PDUType
from simulator.links.pdu_items import MalformedItemError, parse_acse

_ASSOCIATE_TYPES = (PDUType.A_ASSOCIATE_RQ, PDUType.A_ASSOCIATE_AC)


class ClampMaxLengthAttributes(FaultAttributes):
    max_length: int = attribute(
        ..., unit="bytes", ge=1, le=2**32 - 1, description="Largest PDU-length either peer sends."
    )


class ClampMaxLength(DicomFault):
    """Rewrite the Maximum Length sub-item of A-ASSOCIATE-RQ and -AC."""

    type_name = "clamp_max_length"

    async def on_pdu_start(self, start: PDUStart, flow: Flow) -> Decision:
        return BUFFER if start.pdu_type in _ASSOCIATE_TYPES else PASS

    async def on_pdu(self, buffered: BufferedPDU, flow: Flow) -> bytes:
        start = buffered.start
        body = buffered.data[HEADER_LENGTH:]
        try:
            pdu = parse_acse(start.pdu_type, start.length, start.stream_offset, body)
        except MalformedItemError as exc:
            flow.triggered(self, "not-rewritten", pdu=start.name, detail=str(exc))
            return buffered.data

        assert isinstance(pdu, AssociateRQ | AssociateAC)
        original = pdu.user_information.max_length
        offset = pdu.user_information.max_length_offset
        if original is None or offset is None:
            detail = "the PDU has no Maximum Length sub-item"
            flow.triggered(self, "not-rewritten", pdu=start.name, detail=detail)
            return buffered.data

        max_length = self.attributes.max_length
        clamped = max_length if original == 0 else min(original, max_length)
        data = bytearray(buffered.data)
        data[offset : offset + 4] = clamped.to_bytes(4, "big")
        flow.triggered(
            self,
            "max-length-rewritten",
            pdu=start.name,
            original_max_length=original,
            rewritten_max_length=clamped,
        )

        return bytes(data)


FAULT_TYPE = register_dicom(
    ClampMaxLength,
    ClampMaxLengthAttributes,
    "Rewrite the Maximum Length in A-ASSOCIATE-RQ and -AC to at most max_length.",
)
