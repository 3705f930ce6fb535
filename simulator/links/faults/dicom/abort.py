"""``abort``: abort the association from the proxy after some PDUs or instances.

The fault counts in its ``direction`` (upstream for the requests of the
link's client). Once the count is reached, the next P-DATA-TF in that
direction is not forwarded. Instead the proxy sends an A-ABORT to both
peers, drops what they still send and waits for them to close the TCP
connections, as PS3.8 has the sender of an A-ABORT do. Closing at once
could make the kernel answer a peer that is still sending with an RST,
which destroys the A-ABORT before the peer has read it. For an A-P-ABORT
the proxy only closes both TCP connections with a FIN.

Attributes, exactly one of ``after_pdata`` and ``after_instances``:

- ``after_pdata``: P-DATA-TF PDUs forwarded before the abort, 0 or more.
- ``after_instances``: complete C-STORE-RQ data sets forwarded before the
  abort, 0 or more. A requestor without asynchronous operations sends the
  next P-DATA-TF only after the response to the previous request, so it
  has all ``after_instances`` responses before it sees the abort.
- ``kind``: ``a-abort`` (default) sends A-ABORT PDUs; ``a-p-abort`` only
  closes the TCP connections, which a DICOM peer reports as a provider abort.
- ``source``: A-ABORT source, 0 service-user or 2 service-provider (default 2).
- ``reason``: A-ABORT reason, 0 to 6 but not 3 (default 0); it must be 0
  for source 0. For source 2: 0 reason-not-specified, 1 unrecognized-PDU,
  2 unexpected-PDU, 4 unrecognized-PDU-parameter, 5
  unexpected-PDU-parameter, 6 invalid-PDU-parameter-value.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from simulator.links.faults.base import ActiveFault, FaultAttributes, attribute
from simulator.links.faults.dicom import encode
from simulator.links.faults.dicom.base import (
    DROP,
    PASS,
    Decision,
    DicomFault,
    Flow,
    PDUStart,
    register_dicom,
)
from simulator.links.pdu import ABORT_REASONS, ABORT_SOURCES, DimseCommand, PDUType

SEND_TIMEOUT_S = 5.0
"""How long an A-ABORT may wait for the reverse direction to be between PDUs."""

CLOSE_TIMEOUT_S = 10.0
"""How long the proxy waits after an A-ABORT for the peers to close, like PS3.8's ARTIM timer."""

MAX_COUNT = 2**31 - 1


class AbortAttributes(FaultAttributes):
    after_pdata: int | None = attribute(
        None, unit="PDUs", le=MAX_COUNT, description="P-DATA-TF PDUs before the abort."
    )
    after_instances: int | None = attribute(
        None, unit="instances", le=MAX_COUNT, description="C-STORE data sets before the abort."
    )
    kind: Literal["a-abort", "a-p-abort"] = Field("a-abort", description="A-ABORT or A-P-ABORT.")
    source: int = attribute(2, unit="", le=2, description="A-ABORT source: 0 or 2.")
    reason: int = attribute(0, unit="", le=6, description="A-ABORT reason.")

    @model_validator(mode="after")
    def _check(self) -> AbortAttributes:
        if (self.after_pdata is None) == (self.after_instances is None):
            raise ValueError("give exactly one of after_pdata and after_instances")
        if self.source not in ABORT_SOURCES:
            raise ValueError(
                f"source {self.source} is not 0 (service-user) or 2 (service-provider)"
            )
        reasons = ABORT_REASONS if self.source == 2 else {0: "not-significant"}
        if self.reason not in reasons:
            raise ValueError(
                f"reason {self.reason} is not defined for source {self.source}; "
                f"use one of {sorted(reasons)}"
            )

        return self


async def abort_both_sides(
    flow: Flow, source: int, reason: int, close_reason: str
) -> dict[str, bool]:
    """Send an A-ABORT in both directions; return, per direction, whether it was sent.

    The caller is in a hook of ``flow``'s direction, between two PDUs, so
    the abort goes out in that direction at once. In the reverse direction
    it waits until that direction is between PDUs, for up to
    :data:`SEND_TIMEOUT_S`. Then the proxy drops what the peers still send
    and waits for them to close, as PS3.8 has the sender of an A-ABORT do,
    for up to :data:`CLOSE_TIMEOUT_S` before it closes with ``close_reason``.
    """
    abort = encode.a_abort(source, reason)
    await flow.send(abort)
    reverse_sent = await flow.send_reverse(abort, SEND_TIMEOUT_S)
    flow.note_abnormal("abort")
    flow.discard_rest(close_reason, CLOSE_TIMEOUT_S)
    reverse = "downstream" if flow.direction == "upstream" else "upstream"

    return {flow.direction: True, reverse: reverse_sent}


class Abort(DicomFault):
    """Abort after a number of P-DATA-TF PDUs or C-STORE-RQ data sets in one direction."""

    type_name = "abort"

    def __init__(self, fault: ActiveFault) -> None:
        super().__init__(fault)
        self.pdata_forwarded = 0
        self.instances_forwarded = 0

    def on_data_set_end(self, context_id: int, command: DimseCommand | None, flow: Flow) -> None:
        if flow.direction != self.direction or command is None:
            return
        if command.command == "C-STORE-RQ":
            self.instances_forwarded += 1

    async def on_pdu_start(self, start: PDUStart, flow: Flow) -> Decision:
        if flow.direction != self.direction or start.pdu_type is not PDUType.P_DATA_TF:
            return PASS

        attributes: AbortAttributes = self.attributes
        if attributes.after_pdata is not None:
            waiting = self.pdata_forwarded < attributes.after_pdata
        else:
            waiting = self.instances_forwarded < (attributes.after_instances or 0)
        if waiting:
            self.pdata_forwarded += 1
            return PASS

        await self._abort(start, flow, attributes)

        return DROP

    async def _abort(self, start: PDUStart, flow: Flow, attributes: AbortAttributes) -> None:
        close_reason = self.reason(f"{attributes.kind} by the proxy")
        sent: dict[str, bool] = {}
        flow.note(self, attributes.kind)
        if attributes.kind == "a-abort":
            sent = await abort_both_sides(flow, attributes.source, attributes.reason, close_reason)
        flow.triggered(
            self,
            attributes.kind,
            pdu=start.name,
            stream_offset=start.stream_offset,
            pdata_forwarded=self.pdata_forwarded,
            instances_forwarded=self.instances_forwarded,
            abort_sent=sent,
        )
        flow.note_abnormal("abort")
        if attributes.kind == "a-p-abort":
            flow.close(close_reason)


FAULT_TYPE = register_dicom(
    Abort,
    AbortAttributes,
    "Abort (A-ABORT to both peers, or A-P-ABORT) after after_pdata PDUs or after_instances.",
)
