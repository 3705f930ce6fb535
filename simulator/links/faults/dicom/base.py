"""The hooks of :class:`DicomFault`: what a DICOM-level fault receives and can do.

Each DICOM fault type is a :class:`DicomFault` subclass with a pydantic
model of its attributes, registered in
:data:`~simulator.links.faults.base.FAULT_TYPES` by :func:`register_dicom`.
A connection that gets the fault gets one
:class:`~simulator.links.faults.dicom.stage.PDUStage` with one instance of
the subclass. The stage frames both directions into PDUs and calls the
instance's hooks:

1. :meth:`DicomFault.on_pdu_start` when a PDU header has arrived (for a
   P-DATA-TF also the header of its first PDV item), before any byte of
   the PDU is forwarded. The fault returns a :class:`Decision`: pass the
   PDU on as it streams (optionally with a rewritten header), buffer it
   whole, or drop it. It may sleep, send PDUs and close the connection.
2. :meth:`DicomFault.before_pdv` before each PDV item of a P-DATA-TF that
   streams through, for example to hold a data set back.
3. :meth:`DicomFault.on_pdu` with the complete PDU when the fault asked to
   buffer it; it returns the bytes to forward in its place.
4. :meth:`DicomFault.on_pdu_end` once the PDU has been forwarded or dropped.
5. :meth:`DicomFault.before_finish` when the direction's source has
   closed, before the FIN is passed on; it may hold the FIN back.

:meth:`DicomFault.on_command` and :meth:`DicomFault.on_data_set_end`
report the DIMSE messages as they complete, whatever the decision.

A fault instance serves one connection, so it keeps its state in itself.
It reads its attributes from the shared
:class:`~simulator.links.faults.base.ActiveFault` on each use. Each
action is recorded as a ``link.fault_triggered`` event. The draw that gave
the connection the fault is recorded before, as ``link.fault_applied``
with every attribute.
"""

from __future__ import annotations

import asyncio
import enum
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from simulator.links.faults.base import ActiveFault, FaultAttributes, FaultType, register
from simulator.links.pdu import DimseCommand, PDUType
from simulator.links.stages import Forward, StageContext
from simulator.recording.failures import FailureKind, abort_names, rejection_names

if TYPE_CHECKING:
    from simulator.links.faults.dicom.stage import PDUStage


class Action(enum.Enum):
    """Handling of a PDU that :meth:`DicomFault.on_pdu_start` decides on."""

    PASS = "pass"
    """Forward the PDU as its bytes arrive, without buffering its body."""
    BUFFER = "buffer"
    """Keep the whole PDU and hand it to :meth:`DicomFault.on_pdu`."""
    DROP = "drop"
    """Forward nothing of this PDU."""


@dataclass(frozen=True, slots=True)
class Decision:
    """Result of :meth:`DicomFault.on_pdu_start`; ``header`` replaces the 6-byte PDU header."""

    action: Action = Action.PASS
    header: bytes | None = None


PASS = Decision()
BUFFER = Decision(Action.BUFFER)
DROP = Decision(Action.DROP)


@dataclass(frozen=True, slots=True)
class PDVStart:
    """Header of a PDV item, with the DIMSE message it belongs to.

    ``command`` is, for a data PDV, the command whose data set it carries
    (None if that command was not seen). ``first_fragment`` is true for
    the first PDV of a command set or of a data set.
    """

    context_id: int
    control: int
    value_length: int
    command: DimseCommand | None = None
    first_fragment: bool = False

    @property
    def is_command(self) -> bool:
        return bool(self.control & 0x01)

    @property
    def is_last(self) -> bool:
        return bool(self.control & 0x02)


@dataclass(frozen=True, slots=True)
class PDUStart:
    """A PDU whose header has arrived.

    ``index`` counts the PDUs of this direction from 1 and
    ``type_occurrence`` counts those of the same type. ``first_pdv`` is the
    first PDV item of a P-DATA-TF, None for other types.
    """

    pdu_type: PDUType
    length: int
    stream_offset: int
    header: bytes
    index: int
    type_occurrence: int
    first_pdv: PDVStart | None = None

    @property
    def name(self) -> str:
        return self.pdu_type.event_name

    @property
    def single_pdv(self) -> bool:
        """True for a P-DATA-TF whose first PDV item fills it."""
        return self.first_pdv is not None and self.first_pdv.value_length + 6 == self.length


@dataclass(frozen=True, slots=True)
class BufferedPDV:
    """A PDV item of a buffered P-DATA-TF, with its value.

    ``completed_command`` is the command set that this PDV completed, when
    it is the last fragment of one.
    """

    start: PDVStart
    value: bytes
    completed_command: DimseCommand | None = None


@dataclass(frozen=True, slots=True)
class BufferedPDU:
    """A complete buffered PDU: its bytes and, for a P-DATA-TF, its PDV items."""

    start: PDUStart
    data: bytes
    pdvs: tuple[BufferedPDV, ...] = ()


class DicomFault:
    """Base of the DICOM-level faults of one connection; every hook passes the PDU on unchanged."""

    type_name: ClassVar[str] = ""

    def __init__(self, fault: ActiveFault) -> None:
        self.fault = fault

    @property
    def name(self) -> str:
        return self.fault.spec.name

    @property
    def direction(self) -> str:
        """The direction the fault acts in, for the types that use one."""
        return self.fault.spec.direction

    @property
    def attributes(self) -> Any:
        """The validated attributes, read on each use so that an update applies at once."""
        return self.fault.attributes

    async def on_pdu_start(self, start: PDUStart, flow: Flow) -> Decision:
        return PASS

    async def before_pdv(self, pdv: PDVStart, flow: Flow) -> None:
        """Run before a streamed PDV item is forwarded, including the first one of a PDU."""

    async def on_pdu(self, buffered: BufferedPDU, flow: Flow) -> bytes:
        return buffered.data

    async def on_pdu_end(self, start: PDUStart, flow: Flow) -> None:
        """Run once the PDU has been forwarded or dropped."""

    async def before_finish(self, flow: Flow) -> None:
        """Run when the source of ``flow``'s direction has closed, before its FIN is passed on."""

    def on_command(self, context_id: int, command: DimseCommand, flow: Flow) -> None:
        """Note a command set that has just completed."""

    def on_data_set_end(self, context_id: int, command: DimseCommand | None, flow: Flow) -> None:
        """Note a data set whose last fragment has just been read."""

    def reason(self, detail: str) -> str:
        """Return a close reason that names the fault."""
        return f"fault {self.name!r} ({self.type_name}): {detail}"


class Flow:
    """One direction of one connection, as a fault receives it in a hook.

    Sends go through the stages after the PDU stage, so byte-level faults
    later in the chain still act on them. A send into the hook's own
    direction goes out between two whole PDUs, because hooks run between
    them. A send into the reverse direction waits until that direction is
    between PDUs too.
    """

    def __init__(self, stage: PDUStage, ctx: StageContext, forward: Forward) -> None:
        self.stage = stage
        self.ctx = ctx
        self.direction: str = ctx.direction
        self._forward = forward

    @property
    def closed(self) -> bool:
        """True once a fault closed the connection or discards the rest of its bytes."""
        return self.stage.closed

    async def send(self, data: bytes) -> None:
        """Send ``data`` in this direction now; call it only from a hook of this direction."""
        await self._forward(data)

    async def send_reverse(self, data: bytes, timeout_s: float) -> bool:
        """Send ``data`` in the other direction between two of its PDUs.

        Return False, and send nothing, if that direction stayed inside a
        PDU for ``timeout_s`` seconds or is not known.
        """
        reverse = self.ctx.reverse
        if reverse is None:
            return False

        lock = self.stage.output_lock(reverse.direction)
        try:
            async with asyncio.timeout(timeout_s):
                await lock.acquire()
        except TimeoutError:
            return False

        try:
            await reverse.send(data, after=self.stage)
        finally:
            lock.release()

        return True

    def close(self, reason: str, reset: bool = False) -> None:
        """End the connection on both sides, with an RST when ``reset`` is true, else a FIN."""
        self.stage.closed = True
        self.ctx.close(reason, reset=reset)

    def discard_rest(self, reason: str, close_after_s: float) -> None:
        """Drop every further byte in both directions, and close after ``close_after_s``.

        Each FIN is still passed on, so the connection ends as soon as both
        peers have closed. A proxy that closed at once would answer a peer
        still sending with an RST, which can destroy a PDU that the peer has
        not read yet.
        """
        self.stage.closed = True
        self.ctx.call_later(close_after_s, lambda: self.ctx.close(reason))

    def note_abnormal(self, reason: str) -> None:
        """Mark the connection's PDU recording as ending abnormally, for ``link.pdu_trace``."""
        self.ctx.note_abnormal(reason)

    def triggered(self, fault: DicomFault, action: str, **fields: Any) -> None:
        """Emit ``link.fault_triggered``: what ``fault`` did, with its current attributes.

        An action that ends the association is also noted as the link's
        failure, so the client's classification blames the link, not its peer.
        """
        attributes = fault.attributes.model_dump(exclude_none=True)
        self.ctx.recorder.emit(
            "link.fault_triggered",
            fault=fault.name,
            fault_type=fault.type_name,
            direction=self.direction,
            action=action,
            attributes=attributes,
            **fields,
        )
        self.note(fault, action, **fields)

    def note(self, fault: DicomFault, action: str, **fields: Any) -> None:
        """Note the failure an action causes, before the peers can see it.

        Call it before sending what ends the association: a client that
        reads an injected A-ABORT classifies at once, and must find the note.
        Only the first note of a connection counts, so calling it again from
        :meth:`triggered` changes nothing.
        """
        attributes = fault.attributes.model_dump(exclude_none=True)
        kind = _FAILURE_OF_ACTION.get(action)
        if kind is not None:
            detail: dict[str, Any] = {"fault": fault.name, "fault_type": fault.type_name,
                                      **attributes}
            # The PS3.8 fields of what the fault sent, named as for a real peer's.
            if action == "associate-rejected":
                detail.update(rejection_names(attributes["result"], attributes["source"],
                                              attributes.get("reason", 1)))
            elif action == "a-abort":
                detail.update(abort_names(attributes.get("source", 2), attributes.get("reason", 0)))
            if fields.get("length") is not None:
                detail["length"] = fields["length"]
            self.ctx.note_failure(
                kind, f"fault {fault.name} ({fault.type_name}) on the link: {action}",
                detail=detail,
            )


_FAILURE_OF_ACTION = {
    "associate-rejected": FailureKind.ASSOCIATION_REJECTED,
    "a-abort": FailureKind.ASSOCIATION_ABORTED,
    "a-p-abort": FailureKind.CONNECTION_CLOSED,
    "reset": FailureKind.PDU_OVER_LIMIT,
    "abort": FailureKind.PDU_OVER_LIMIT,
    "header-rewritten": FailureKind.ASSOCIATION_ABORTED,
}
"""Fault actions that end an association, and the failure kind the client sees.

``reset`` and ``abort`` are the two actions of ``middlebox_limit``.
"""


def register_dicom(
    fault_class: type[DicomFault], attributes: type[FaultAttributes], summary: str
) -> FaultType:
    """Register a DICOM fault type whose connections each get a PDUStage with one instance.

    DICOM fault types are not live: a fault added while a connection is
    open does not reach it, because the stage must see the stream from its
    first PDU to find the PDU boundaries.
    """
    from simulator.links.faults.dicom.stage import PDUStage

    def build(fault: ActiveFault, rng: random.Random) -> PDUStage:
        return PDUStage(fault, rng, [fault_class(fault)])

    return register(FaultType(fault_class.type_name, attributes, build, summary, live=False))
