"""``middlebox_limit``: a middle box that handles PDUs only up to its own size limit.

Such a box passes the A-ASSOCIATE-RQ and -AC through unchanged, so the
peers may negotiate larger PDUs than it can handle. When a PDU longer than
``max_pdu_length`` arrives in either direction, the proxy records
``link.pdu_over_middlebox_limit`` with the PDU's length and the limit,
does not forward the PDU, and ends the connection. Lengths are PDU-length
fields, the bytes after the 6-byte header, like the Maximum Length
Received of PS3.8 annex D.1. The fault acts in both directions whatever
its ``direction``.

Attributes:

- ``max_pdu_length``: largest PDU-length the box passes, 1 to
  4,294,967,295 bytes.
- ``action``: ``reset`` (default) resets both TCP connections; ``abort``
  sends an A-ABORT (source 2 service-provider, reason 0) to both peers,
  then drops their bytes until they close, as the ``abort`` fault does.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from simulator.links.faults.base import FAULT_TYPES, ActiveFault, FaultAttributes, attribute
from simulator.links.faults.dicom.abort import abort_both_sides
from simulator.links.faults.dicom.base import (
    DROP,
    PASS,
    Decision,
    DicomFault,
    Flow,
    PDUStart,
    register_dicom,
)
from simulator.links.faults.spec import FaultSpec


class MiddleboxLimitAttributes(FaultAttributes):
    max_pdu_length: int = attribute(
        ..., unit="bytes", ge=1, le=2**32 - 1, description="Largest PDU-length the box passes."
    )
    action: Literal["reset", "abort"] = Field("reset", description="How the box ends it.")


class MiddleboxLimit(DicomFault):
    """End the connection at the first PDU longer than the middle box's limit."""

    type_name = "middlebox_limit"

    async def on_pdu_start(self, start: PDUStart, flow: Flow) -> Decision:
        attributes: MiddleboxLimitAttributes = self.attributes
        if start.length <= attributes.max_pdu_length:
            return PASS

        flow.note_abnormal("middlebox-limit")
        flow.ctx.recorder.emit(
            "link.pdu_over_middlebox_limit",
            fault=self.name,
            direction=flow.direction,
            pdu=start.name,
            length=start.length,
            limit=attributes.max_pdu_length,
            action=attributes.action,
            stream_offset=start.stream_offset,
        )
        limit = attributes.max_pdu_length
        close_reason = self.reason(f"PDU-length {start.length} is over the limit {limit}")
        sent: dict[str, bool] = {}
        flow.note(self, attributes.action, length=start.length)
        if attributes.action == "abort":
            sent = await abort_both_sides(flow, 2, 0, close_reason)
        flow.triggered(
            self,
            attributes.action,
            pdu=start.name,
            length=start.length,
            stream_offset=start.stream_offset,
            abort_sent=sent,
        )
        if attributes.action == "reset":
            flow.close(close_reason, reset=True)

        return DROP


FAULT_TYPE = register_dicom(
    MiddleboxLimit,
    MiddleboxLimitAttributes,
    "End the connection at the first PDU longer than max_pdu_length (reset or abort).",
)


def middlebox_fault(
    max_pdu_length: int, action: Literal["reset", "abort"] = "reset"
) -> ActiveFault:
    """Return the fault for a proxy's own ``max_pdu_length``, named ``max_pdu_length``.

    Raise ValueError for a limit outside 1..4,294,967,295 or an unknown action.
    """
    if isinstance(max_pdu_length, bool) or not 1 <= max_pdu_length <= 2**32 - 1:
        raise ValueError(f"max_pdu_length must be 1 to 4294967295 bytes, not {max_pdu_length!r}")
    if action not in ("reset", "abort"):
        raise ValueError(f"max_pdu_action must be 'reset' or 'abort', not {action!r}")
    attributes = {"max_pdu_length": max_pdu_length, "action": action}
    spec = FaultSpec(name="max_pdu_length", type=FAULT_TYPE.name, attributes=attributes)
    fault_type = FAULT_TYPES[FAULT_TYPE.name]

    return ActiveFault(spec, fault_type.attributes.model_validate(attributes), fault_type)
