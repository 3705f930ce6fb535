"""``answer_status``: answer C-STORE-RQs from the proxy with a chosen status.

In its ``direction`` (upstream for the requests of the link's client), the
fault takes each C-STORE-RQ that matches ``sop_class`` out of the stream,
together with its data set, so the receiving peer sees nothing of that
message. Once the data set has been read, the proxy sends a C-STORE-RSP
back on the same presentation context. Its command set, in Implicit VR
Little Endian, has CommandGroupLength, AffectedSOPClassUID, CommandField
0x8001, MessageIDBeingRespondedTo, CommandDataSetType 0x0101, Status,
ErrorComment (if given) and AffectedSOPInstanceUID.

P-DATA-TF PDUs that carry a command set, or more than one PDV item, are
buffered to find the commands. Other P-DATA-TF PDUs stream through, or,
when they carry the data set of an answered request, are dropped as they
arrive without being buffered.

Attributes:

- ``status``: Status (0000,0900) of the response, 0 to 65535 (0xFFFF), for
  example 0xA700 (out of resources) or 0xC000 (cannot understand).
- ``error_comment``: optional ErrorComment (0000,0902), up to 64 ASCII characters.
- ``sop_class``: optional SOP Class UID; only requests with this
  AffectedSOPClassUID are answered, the others pass.
"""

from __future__ import annotations

from pydantic import Field

from simulator.links.faults.base import ActiveFault, FaultAttributes, attribute
from simulator.links.faults.dicom import encode
from simulator.links.faults.dicom.base import (
    BUFFER,
    DROP,
    PASS,
    BufferedPDU,
    BufferedPDV,
    Decision,
    DicomFault,
    Flow,
    PDUStart,
    register_dicom,
)
from simulator.links.pdu import DimseCommand, PDUType

SEND_TIMEOUT_S = 30.0
"""How long a response may wait for the reverse direction to be between PDUs."""


class AnswerStatusAttributes(FaultAttributes):
    status: int = attribute(..., unit="", le=0xFFFF, description="C-STORE-RSP Status.")
    error_comment: str | None = Field(
        None, max_length=64, pattern=r"^[\x20-\x7e]*$", description="ErrorComment, ASCII."
    )
    sop_class: str | None = Field(
        None, pattern=r"^[0-9.]{1,64}$", description="Answer only this SOP Class UID."
    )


class AnswerStatus(DicomFault):
    """Answer matching C-STORE-RQs with a fixed status instead of forwarding them."""

    type_name = "answer_status"

    def __init__(self, fault: ActiveFault) -> None:
        super().__init__(fault)
        self._dropping: dict[int, DimseCommand] = {}
        """Answered requests whose data set is still arriving, by presentation context ID."""
        self._fragments: dict[int, list[BufferedPDV]] = {}
        """Command fragments buffered until their command set is complete, by context ID."""
        self._answers: list[tuple[int, DimseCommand]] = []

    def _matches(self, command: DimseCommand | None) -> bool:
        if command is None or command.command != "C-STORE-RQ":
            return False

        sop_class = self.attributes.sop_class
        return sop_class is None or command.affected_sop_class_uid == sop_class

    async def on_pdu_start(self, start: PDUStart, flow: Flow) -> Decision:
        pdv = start.first_pdv
        if flow.direction != self.direction or pdv is None:
            return PASS
        if pdv.is_command or not start.single_pdv or self._fragments:
            return BUFFER
        if pdv.context_id not in self._dropping:
            return PASS

        if pdv.is_last:
            self._answers.append((pdv.context_id, self._dropping.pop(pdv.context_id)))

        return DROP

    async def on_pdu(self, buffered: BufferedPDU, flow: Flow) -> bytes:
        if buffered.start.pdu_type is not PDUType.P_DATA_TF:
            return buffered.data

        forwarded: list[BufferedPDV] = []
        for pdv in buffered.pdvs:
            forwarded.extend(self._take(pdv))
        if len(forwarded) == len(buffered.pdvs):
            return buffered.data
        if not forwarded:
            return b""

        return encode.p_data_tf((p.start.context_id, p.start.control, p.value) for p in forwarded)

    def _take(self, pdv: BufferedPDV) -> list[BufferedPDV]:
        """Return the PDV items to forward now, given one PDV of a buffered P-DATA-TF."""
        context_id = pdv.start.context_id
        if pdv.start.is_command and not pdv.start.is_last:
            self._fragments.setdefault(context_id, []).append(pdv)
            return []

        if pdv.start.is_command:
            command_pdvs = [*self._fragments.pop(context_id, []), pdv]
            command = pdv.completed_command
            if command is None or not self._matches(command):
                return command_pdvs
            if command.has_data_set is False:
                self._answers.append((context_id, command))
            else:
                self._dropping[context_id] = command
            return []

        if context_id not in self._dropping:
            return [pdv]

        if pdv.start.is_last:
            self._answers.append((context_id, self._dropping.pop(context_id)))
        return []

    async def on_pdu_end(self, start: PDUStart, flow: Flow) -> None:
        while self._answers and not flow.closed:
            context_id, command = self._answers.pop(0)
            await self._answer(context_id, command, flow)

    async def _answer(self, context_id: int, command: DimseCommand, flow: Flow) -> None:
        attributes: AnswerStatusAttributes = self.attributes
        response = encode.c_store_rsp(
            command.affected_sop_class_uid or "",
            command.affected_sop_instance_uid or "",
            command.message_id or 0,
            attributes.status,
            attributes.error_comment,
        )
        pdu = encode.p_data_tf([(context_id, encode.COMMAND_LAST, response)])
        sent = await flow.send_reverse(pdu, SEND_TIMEOUT_S)
        flow.triggered(
            self,
            "answered",
            command=command.command,
            context_id=context_id,
            message_id=command.message_id,
            affected_sop_class_uid=command.affected_sop_class_uid,
            affected_sop_instance_uid=command.affected_sop_instance_uid,
            status=attributes.status,
            response_sent=sent,
        )


FAULT_TYPE = register_dicom(
    AnswerStatus,
    AnswerStatusAttributes,
    "Answer C-STORE-RQs (of sop_class) with a C-STORE-RSP of the given status.",
)
