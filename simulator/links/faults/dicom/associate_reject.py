"""``associate_reject``: answer the A-ASSOCIATE-RQ with an A-ASSOCIATE-RJ from the proxy.

The request never reaches the acceptor. Once the whole A-ASSOCIATE-RQ has
arrived, the proxy sends the A-ASSOCIATE-RJ back to the requestor and
closes both TCP connections with a FIN. The fault acts on the
A-ASSOCIATE-RQ whatever its ``direction``, because a request always comes
from the link's client.

Attributes, PS3.8 section 9.3.4 codes:

- ``result``: 1 rejected-permanent (default) or 2 rejected-transient.
- ``source``: 1 service-user (default), 2 service-provider (ACSE related)
  or 3 service-provider (presentation related).
- ``reason``: default 1. The allowed values depend on ``source``: 1, 2, 3
  or 7 for source 1; 1 or 2 for source 2; 1 or 2 for source 3.
"""

from __future__ import annotations

from pydantic import model_validator

from simulator.links.faults.base import FaultAttributes, attribute
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
from simulator.links.pdu import (
    ASSOCIATE_RJ_REASONS,
    ASSOCIATE_RJ_RESULTS,
    ASSOCIATE_RJ_SOURCES,
    PDUType,
)

SEND_TIMEOUT_S = 10.0
"""How long the A-ASSOCIATE-RJ may wait for the reverse direction to be between PDUs."""


class AssociateRejectAttributes(FaultAttributes):
    result: int = attribute(1, unit="", ge=1, le=2, description="A-ASSOCIATE-RJ result.")
    source: int = attribute(1, unit="", ge=1, le=3, description="A-ASSOCIATE-RJ source.")
    reason: int = attribute(1, unit="", ge=1, le=7, description="A-ASSOCIATE-RJ reason/diag.")

    @model_validator(mode="after")
    def _check_reason(self) -> AssociateRejectAttributes:
        reasons = ASSOCIATE_RJ_REASONS[self.source]
        if self.reason not in reasons:
            allowed = ", ".join(f"{code} ({name})" for code, name in reasons.items())
            source_name = ASSOCIATE_RJ_SOURCES[self.source]
            raise ValueError(
                f"reason {self.reason} is not defined for source {self.source} "
                f"({source_name}); use one of {allowed}"
            )

        return self


class AssociateReject(DicomFault):
    """Reject the association with a fixed result, source and reason."""

    type_name = "associate_reject"

    async def on_pdu_start(self, start: PDUStart, flow: Flow) -> Decision:
        if start.pdu_type is PDUType.A_ASSOCIATE_RQ:
            return DROP

        return PASS

    async def on_pdu_end(self, start: PDUStart, flow: Flow) -> None:
        if start.pdu_type is not PDUType.A_ASSOCIATE_RQ:
            return

        attributes: AssociateRejectAttributes = self.attributes
        source = attributes.source
        rejection = encode.associate_rj(attributes.result, source, attributes.reason)
        flow.note(self, "associate-rejected")
        # The rejection goes back to the side that sent the request.
        delivered = await flow.send_reverse(rejection, SEND_TIMEOUT_S)
        flow.triggered(
            self,
            "associate-rejected",
            pdu=start.name,
            stream_offset=start.stream_offset,
            result_name=ASSOCIATE_RJ_RESULTS[attributes.result],
            source_name=ASSOCIATE_RJ_SOURCES[source],
            reason_name=ASSOCIATE_RJ_REASONS[source][attributes.reason],
            delivered=delivered,
        )
        flow.close(self.reason("association rejected by the proxy"))


FAULT_TYPE = register_dicom(
    AssociateReject,
    AssociateRejectAttributes,
    "Answer the A-ASSOCIATE-RQ with an A-ASSOCIATE-RJ of the given result, source and reason.",
)
