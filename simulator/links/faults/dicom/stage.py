"""The PDU-aware stage that runs the DICOM-level faults of a connection.

A :class:`PDUStage` frames one direction's byte stream into PDUs (6-byte
header: type, reserved, 4-byte big-endian length) and, inside a
P-DATA-TF, into PDV items. At every PDU header it asks its faults what to
do (see :mod:`simulator.links.faults.dicom.base`). A PDU that no fault
buffers streams through: its header goes out after the decision and its
body as it arrives, so a large P-DATA-TF is never held in memory whole.

The stage tracks DIMSE messages per presentation context in every mode:
command fragments are kept until the command set is complete and decoded,
data set fragments are only counted.

The stage gives up framing a direction, and forwards its bytes unchanged,
when a PDU type is not one of PS3.8 (a TLS record, for example), because
it can no longer tell where PDUs start. A P-DATA-TF whose PDV items do not
fit is forwarded unchanged to its end, and framing resumes after it.
"""

from __future__ import annotations

import asyncio
import random
import struct
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from simulator.links.faults.base import ActiveFault, FaultStage
from simulator.links.faults.dicom.base import (
    Action,
    BufferedPDU,
    BufferedPDV,
    DicomFault,
    Flow,
    PDUStart,
    PDVStart,
)
from simulator.links.pdu import MAX_COMMAND_LENGTH, DimseCommand, PDUType
from simulator.links.pdu_items import decode_command_set
from simulator.links.stages import DIRECTIONS, Forward, StageContext

HEADER_LENGTH = 6
"""Length of a PDU header and of a PDV item header."""


class _MessageTracker:
    """DIMSE messages of one direction, per presentation context."""

    def __init__(self) -> None:
        # Command fragments per context; None once over MAX_COMMAND_LENGTH.
        self._fragments: dict[int, bytearray | None] = {}
        self._commands: dict[int, DimseCommand] = {}
        self._data_started: set[int] = set()
        self._current: PDVStart | None = None

    def describe(self, raw: bytes) -> PDVStart:
        """Return the PDV item whose 6-byte header is ``raw``, without changing any state."""
        item_length, context_id, control = struct.unpack(">IBB", raw)
        if control & 0x01:
            return PDVStart(
                context_id, control, item_length - 2, None, context_id not in self._fragments
            )

        return PDVStart(
            context_id,
            control,
            item_length - 2,
            self._commands.get(context_id),
            context_id not in self._data_started,
        )

    def begin(self, pdv: PDVStart) -> None:
        self._current = pdv
        if pdv.is_command:
            self._fragments.setdefault(pdv.context_id, bytearray())
        else:
            self._data_started.add(pdv.context_id)

    def value(self, piece: bytes | memoryview) -> None:
        pdv = self._current
        if pdv is None or not pdv.is_command:
            return
        fragments = self._fragments.get(pdv.context_id)
        if fragments is not None and len(fragments) + len(piece) <= MAX_COMMAND_LENGTH:
            fragments += piece
        else:
            self._fragments[pdv.context_id] = None

    def end(self) -> tuple[PDVStart, DimseCommand | None]:
        """Finish the current PDV; return it and the command set it completed, if any."""
        pdv = self._current
        assert pdv is not None
        self._current = None
        if not pdv.is_last:
            return pdv, None
        if not pdv.is_command:
            self._data_started.discard(pdv.context_id)
            return pdv, None

        fragments = self._fragments.pop(pdv.context_id, None)
        command = _decode(fragments, pdv.context_id)
        if command is None:
            self._commands.pop(pdv.context_id, None)
        else:
            self._commands[pdv.context_id] = command

        return pdv, command


def _decode(fragments: bytearray | None, context_id: int) -> DimseCommand | None:
    if fragments is None:
        return None
    try:
        return decode_command_set(bytes(fragments), context_id, 0)
    except Exception:  # noqa: BLE001 - pydicom raises many types; the reader reports the error
        return None


@dataclass
class _Framing:
    """Framing state of one direction of one connection."""

    tracker: _MessageTracker = field(default_factory=_MessageTracker)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    head: bytearray = field(default_factory=bytearray)
    start: PDUStart | None = None
    action: Action = Action.PASS
    buffering: list[DicomFault] = field(default_factory=list)
    buffered: bytearray = field(default_factory=bytearray)
    remaining: int = 0
    pdv_head: bytearray = field(default_factory=bytearray)
    pdv: PDVStart | None = None
    pdv_remaining: int = 0
    pdvs_broken: bool = False
    consumed: int = 0
    pdu_index: int = 0
    type_counts: Counter[int] = field(default_factory=Counter)
    passthrough: bool = False
    out: bytearray = field(default_factory=bytearray)


class PDUStage(FaultStage):
    """Stage of one connection that frames PDUs and calls the hooks of its DICOM faults.

    The fault machinery puts the stage into the chain of the fault's
    direction; when attached there, the stage adds itself to the chain of
    the other direction too, so it sees both directions of the connection.
    """

    name = "dicom-pdu"

    def __init__(
        self, fault: ActiveFault, rng: random.Random, handlers: Sequence[DicomFault]
    ) -> None:
        super().__init__(fault, rng)
        self.handlers = tuple(handlers)
        self.closed = False
        self._framings: dict[str, _Framing] = {direction: _Framing() for direction in DIRECTIONS}
        self._attached: set[str] = set()

    def attach(self, ctx: StageContext) -> None:
        if self.ctx is None:
            super().attach(ctx)
        self._attached.add(ctx.direction)
        reverse = ctx.reverse
        if reverse is None or reverse.chain is None or reverse.direction in self._attached:
            return

        self._attached.add(reverse.direction)
        reverse.chain.add(self)

    def output_lock(self, direction: str) -> asyncio.Lock:
        """Return the lock that ``direction`` holds from a PDU's first byte out to its last."""
        return self._framings[direction].lock

    def _framing(self, ctx: StageContext) -> _Framing:
        return self._framings[ctx.direction]

    async def process(self, chunk: bytes, ctx: StageContext, forward: Forward) -> None:
        framing = self._framing(ctx)
        flow = Flow(self, ctx, forward)
        view = memoryview(chunk)
        position = 0
        while position < len(view):
            if flow.closed:
                return
            if framing.passthrough:
                framing.out += view[position:]
                break
            if framing.start is None:
                position = await self._read_head(framing, view, position, flow)
            else:
                position = await self._read_body(framing, view, position, flow)
        await self._flush(framing, flow)

    async def finish(self, ctx: StageContext, forward: Forward) -> None:
        """Pass on what is held of an unfinished PDU: the source closed in the middle of it."""
        framing = self._framing(ctx)
        flow = Flow(self, ctx, forward)
        for handler in self.handlers:
            await handler.before_finish(flow)
        if not flow.closed:
            framing.out += framing.head + framing.buffered + framing.pdv_head
            await self._flush(framing, flow)
        framing.head.clear()
        framing.buffered.clear()
        if framing.start is not None and framing.lock.locked():
            framing.lock.release()

    async def _flush(self, framing: _Framing, flow: Flow) -> None:
        if framing.out and not flow.closed:
            data = bytes(framing.out)
            framing.out.clear()
            await flow.send(data)
        framing.out.clear()

    async def _read_head(
        self, framing: _Framing, view: memoryview, position: int, flow: Flow
    ) -> int:
        """Collect the PDU header, and the first PDV item header of a P-DATA-TF, then decide."""
        head = framing.head
        target_length = HEADER_LENGTH if len(head) < HEADER_LENGTH else 2 * HEADER_LENGTH
        take = min(target_length - len(head), len(view) - position)
        head += view[position : position + take]
        position += take
        if len(head) < HEADER_LENGTH:
            return position

        if head[0] not in PDUType._value2member_map_:
            framing.passthrough = True
            framing.out += head
            head.clear()
            return position

        pdu_type = PDUType(head[0])
        length = int.from_bytes(head[2:6], "big")
        needs_pdv = pdu_type is PDUType.P_DATA_TF and length >= HEADER_LENGTH
        if needs_pdv and len(head) < 2 * HEADER_LENGTH:
            return position

        await self._begin_pdu(framing, pdu_type, length, flow)

        return position

    async def _begin_pdu(
        self, framing: _Framing, pdu_type: PDUType, length: int, flow: Flow
    ) -> None:
        head = bytes(framing.head)
        framing.head.clear()
        framing.pdu_index += 1
        framing.type_counts[pdu_type] += 1
        first_pdv = None
        if len(head) > HEADER_LENGTH:
            first_pdv = framing.tracker.describe(head[HEADER_LENGTH:])
        start = PDUStart(
            pdu_type,
            length,
            framing.consumed,
            head[:HEADER_LENGTH],
            framing.pdu_index,
            framing.type_counts[pdu_type],
            first_pdv,
        )
        framing.consumed += HEADER_LENGTH + length
        framing.start = start
        framing.remaining = length - (len(head) - HEADER_LENGTH)
        await self._flush(framing, flow)
        await framing.lock.acquire()
        header = await self._decide(framing, start, flow)
        if flow.closed:
            return

        if framing.action is Action.BUFFER:
            framing.buffered += header + head[HEADER_LENGTH:]
        elif first_pdv is not None:
            await self._begin_first_pdv(framing, first_pdv, header + head[HEADER_LENGTH:], flow)
        else:
            framing.pdvs_broken = pdu_type is PDUType.P_DATA_TF
            if framing.action is Action.PASS:
                framing.out += header
        if framing.remaining == 0:
            await self._end_pdu(framing, flow)

    async def _decide(self, framing: _Framing, start: PDUStart, flow: Flow) -> bytes:
        """Ask each fault about the PDU; return the header to send if it passes."""
        header = start.header
        framing.action = Action.PASS
        framing.buffering = []
        for fault in self.handlers:
            decision = await fault.on_pdu_start(start, flow)
            if flow.closed:
                framing.action = Action.DROP
                break
            if decision.header is not None:
                header = decision.header
            if decision.action is Action.DROP:
                framing.action = Action.DROP
                break
            if decision.action is Action.BUFFER:
                framing.action = Action.BUFFER
                framing.buffering.append(fault)

        return header

    async def _begin_first_pdv(
        self, framing: _Framing, pdv: PDVStart, head: bytes, flow: Flow
    ) -> None:
        if not _pdv_fits(pdv, framing.remaining):
            framing.pdvs_broken = True
            if framing.action is Action.PASS:
                framing.out += head
            return

        if framing.action is Action.PASS:
            for fault in self.handlers:
                await fault.before_pdv(pdv, flow)
            framing.out += head
        await self._start_pdv(framing, pdv, flow)

    async def _start_pdv(self, framing: _Framing, pdv: PDVStart, flow: Flow) -> None:
        framing.tracker.begin(pdv)
        framing.pdv = pdv
        framing.pdv_remaining = pdv.value_length
        if pdv.value_length == 0:
            self._end_pdv(framing, flow)

    def _end_pdv(self, framing: _Framing, flow: Flow) -> None:
        framing.pdv = None
        pdv, command = framing.tracker.end()
        self._notify(pdv, command, flow)

    def _notify(self, pdv: PDVStart, command: DimseCommand | None, flow: Flow) -> None:
        for fault in self.handlers:
            if command is not None:
                fault.on_command(pdv.context_id, command, flow)
            elif pdv.is_last and not pdv.is_command:
                fault.on_data_set_end(pdv.context_id, pdv.command, flow)

    async def _read_body(
        self, framing: _Framing, view: memoryview, position: int, flow: Flow
    ) -> int:
        start = framing.start
        assert start is not None
        if framing.action is Action.BUFFER:
            take = min(framing.remaining, len(view) - position)
            framing.buffered += view[position : position + take]
            position += take
            framing.remaining -= take
        elif start.pdu_type is not PDUType.P_DATA_TF or framing.pdvs_broken:
            take = min(framing.remaining, len(view) - position)
            if framing.action is Action.PASS:
                framing.out += view[position : position + take]
            position += take
            framing.remaining -= take
        elif framing.pdv is None:
            position = await self._read_pdv_head(framing, view, position, flow)
        else:
            position = self._read_pdv_value(framing, view, position, flow)
        if framing.remaining == 0 and framing.start is not None:
            await self._end_pdu(framing, flow)

        return position

    async def _read_pdv_head(
        self, framing: _Framing, view: memoryview, position: int, flow: Flow
    ) -> int:
        take = min(HEADER_LENGTH - len(framing.pdv_head), framing.remaining, len(view) - position)
        framing.pdv_head += view[position : position + take]
        framing.remaining -= take
        position += take
        if len(framing.pdv_head) < HEADER_LENGTH:
            if framing.remaining == 0:
                # The PDU ends inside a PDV item header: pass the stray bytes on.
                self._pass_broken(framing)
            return position

        raw = bytes(framing.pdv_head)
        framing.pdv_head.clear()
        pdv = framing.tracker.describe(raw)
        if not _pdv_fits(pdv, framing.remaining):
            framing.pdvs_broken = True
            if framing.action is Action.PASS:
                framing.out += raw
            return position

        if framing.action is Action.PASS:
            await self._flush(framing, flow)
            for fault in self.handlers:
                await fault.before_pdv(pdv, flow)
            framing.out += raw
        await self._start_pdv(framing, pdv, flow)

        return position

    def _pass_broken(self, framing: _Framing) -> None:
        framing.pdvs_broken = True
        if framing.action is Action.PASS:
            framing.out += framing.pdv_head
        framing.pdv_head.clear()

    def _read_pdv_value(
        self, framing: _Framing, view: memoryview, position: int, flow: Flow
    ) -> int:
        take = min(framing.pdv_remaining, len(view) - position)
        piece = view[position : position + take]
        if framing.action is Action.PASS:
            framing.out += piece
        framing.tracker.value(piece)
        framing.pdv_remaining -= take
        framing.remaining -= take
        if framing.pdv_remaining == 0:
            self._end_pdv(framing, flow)

        return position + take

    async def _end_pdu(self, framing: _Framing, flow: Flow) -> None:
        start = framing.start
        assert start is not None
        if framing.action is Action.BUFFER:
            await self._release_buffered(framing, start, flow)
        await self._flush(framing, flow)
        for fault in self.handlers:
            if flow.closed:
                break
            await fault.on_pdu_end(start, flow)
        framing.start = None
        framing.pdv = None
        framing.pdvs_broken = False
        framing.buffered.clear()
        framing.lock.release()

    async def _release_buffered(self, framing: _Framing, start: PDUStart, flow: Flow) -> None:
        """Hand a buffered PDU to the faults that asked for it and queue what they return."""
        data = bytes(framing.buffered)
        pdvs: tuple[BufferedPDV, ...] = ()
        if start.pdu_type is PDUType.P_DATA_TF:
            pdvs = self._split_pdvs(framing, data, flow)
        for fault in framing.buffering:
            data = await fault.on_pdu(BufferedPDU(start, data, pdvs), flow)
            if flow.closed:
                return
        framing.out += data

    def _split_pdvs(self, framing: _Framing, data: bytes, flow: Flow) -> tuple[BufferedPDV, ...]:
        """Return the PDV items of a buffered P-DATA-TF, tracking their messages."""
        pdvs: list[BufferedPDV] = []
        position = HEADER_LENGTH
        while len(data) - position >= HEADER_LENGTH:
            pdv = framing.tracker.describe(data[position : position + HEADER_LENGTH])
            position += HEADER_LENGTH
            if not _pdv_fits(pdv, len(data) - position):
                break
            value = data[position : position + pdv.value_length]
            position += pdv.value_length
            framing.tracker.begin(pdv)
            framing.tracker.value(value)
            _, command = framing.tracker.end()
            self._notify(pdv, command, flow)
            pdvs.append(BufferedPDV(pdv, value, command))

        return tuple(pdvs)


def _pdv_fits(pdv: PDVStart, remaining: int) -> bool:
    """Return True if a PDV item's value is not negative and fits what is left of its PDU."""
    return 0 <= pdv.value_length <= remaining
