"""``corrupt_pdu``: change the type byte or the length field of one PDU.

The fault picks one PDU in its ``direction``, by position or by type and
occurrence, and rewrites its 6-byte header as it passes. The body is
forwarded unchanged, so after a new length the receiver frames the stream
differently from the sender, as behind a corrupting middle box.

Attributes:

- ``pdu_index``: position of the PDU in the direction, counting from 1.
- ``pdu_type``: instead of ``pdu_index``, the PDU type as a number 1 to 7
  or a name such as ``p_data_tf`` or ``associate_ac``;
- ``occurrence``: with ``pdu_type``, which PDU of that type, from 1 (default 1).
- ``new_type``: the type byte to write, 0 to 255;
- ``new_length``: instead of ``new_type``, the PDU-length to write, 0 to
  4,294,967,295.
"""

from __future__ import annotations

import struct

from pydantic import Field, field_validator, model_validator

from simulator.links.faults.base import FaultAttributes, attribute
from simulator.links.faults.dicom.base import (
    PASS,
    Decision,
    DicomFault,
    Flow,
    PDUStart,
    register_dicom,
)
from simulator.links.pdu import PDUType

_TYPE_NAMES = {pdu_type.event_name: pdu_type for pdu_type in PDUType}
MAX_INDEX = 2**31 - 1


class CorruptPDUAttributes(FaultAttributes):
    pdu_index: int | None = attribute(
        None, unit="", ge=1, le=MAX_INDEX, description="Position of the PDU, from 1."
    )
    pdu_type: str | int | None = Field(None, description="PDU type: 1 to 7 or a name.")
    occurrence: int = attribute(
        1, unit="", ge=1, le=MAX_INDEX, description="Which PDU of pdu_type, from 1."
    )
    new_type: int | None = attribute(None, unit="", le=255, description="Type byte to write.")
    new_length: int | None = attribute(
        None, unit="bytes", le=2**32 - 1, description="PDU-length to write."
    )

    @field_validator("pdu_type")
    @classmethod
    def _check_type(cls, value: str | int | None) -> str | None:
        if value is None:
            return None
        if isinstance(value, str) and value.lower() in _TYPE_NAMES:
            return value.lower()
        if isinstance(value, int) and value in PDUType._value2member_map_:
            return PDUType(value).event_name

        raise ValueError(f"{value!r} is not a PDU type; use 1 to 7 or one of {sorted(_TYPE_NAMES)}")

    @model_validator(mode="after")
    def _check_choices(self) -> CorruptPDUAttributes:
        if (self.pdu_index is None) == (self.pdu_type is None):
            raise ValueError("give exactly one of pdu_index and pdu_type")
        if (self.new_type is None) == (self.new_length is None):
            raise ValueError("give exactly one of new_type and new_length")

        return self


class CorruptPDU(DicomFault):
    """Rewrite the header of one chosen PDU."""

    type_name = "corrupt_pdu"

    def _matches(self, start: PDUStart, attributes: CorruptPDUAttributes) -> bool:
        if attributes.pdu_index is not None:
            return start.index == attributes.pdu_index

        return start.name == attributes.pdu_type and start.type_occurrence == attributes.occurrence

    async def on_pdu_start(self, start: PDUStart, flow: Flow) -> Decision:
        attributes: CorruptPDUAttributes = self.attributes
        if flow.direction != self.direction or not self._matches(start, attributes):
            return PASS

        new_type = int(start.pdu_type) if attributes.new_type is None else attributes.new_type
        new_length = start.length if attributes.new_length is None else attributes.new_length
        flow.triggered(
            self,
            "header-rewritten",
            pdu=start.name,
            stream_offset=start.stream_offset,
            original_type=int(start.pdu_type),
            original_length=start.length,
            written_type=new_type,
            written_length=new_length,
        )

        return Decision(header=struct.pack(">BBI", new_type, start.header[1], new_length))


FAULT_TYPE = register_dicom(
    CorruptPDU, CorruptPDUAttributes, "Rewrite the type or length of one PDU's header."
)
