"""``hold_release``: hold the A-RELEASE-RP back, for a time or for ever.

The fault acts on every A-RELEASE-RP whatever its ``direction``, because a
release response always travels to the side that requested the release.
The connection stays open while the response is held, so a requestor whose
release timeout is shorter than the hold gives up and aborts.

Attributes, exactly one of:

- ``delay_ms``: hold time in milliseconds, 1 to 3,600,000; then the
  A-RELEASE-RP is forwarded unchanged.
- ``forever``: ``true`` never forwards the A-RELEASE-RP. The FIN that an
  acceptor sends after it is held back too, until the requestor aborts or
  closes its side, so the requestor gets neither the response nor a close.
"""

from __future__ import annotations

import asyncio

from pydantic import Field, model_validator

from simulator.links.faults.base import ActiveFault, FaultAttributes, attribute
from simulator.links.faults.dicom.base import (
    DROP,
    PASS,
    Decision,
    DicomFault,
    Flow,
    PDUStart,
    register_dicom,
)
from simulator.links.pdu import PDUType

MAX_DELAY_MS = 3_600_000


class HoldReleaseAttributes(FaultAttributes):
    delay_ms: int | None = attribute(
        None, unit="ms", ge=1, le=MAX_DELAY_MS, description="Hold time of the A-RELEASE-RP."
    )
    forever: bool = Field(False, strict=True, description="Never forward the A-RELEASE-RP.")

    @model_validator(mode="after")
    def _check_one(self) -> HoldReleaseAttributes:
        if (self.delay_ms is not None) == self.forever:
            raise ValueError("give exactly one of delay_ms (1 to 3600000 ms) and forever: true")

        return self


class HoldRelease(DicomFault):
    """Delay or swallow the A-RELEASE-RP."""

    type_name = "hold_release"

    def __init__(self, fault: ActiveFault) -> None:
        super().__init__(fault)
        self._swallowed_in: set[str] = set()
        """Directions in which an A-RELEASE-RP was swallowed, so their FIN is held too."""
        self._requestor_gone = asyncio.Event()

    async def on_pdu_start(self, start: PDUStart, flow: Flow) -> Decision:
        if start.pdu_type is PDUType.A_ABORT and flow.direction not in self._swallowed_in:
            self._requestor_gone.set()
        if start.pdu_type is not PDUType.A_RELEASE_RP:
            return PASS

        attributes: HoldReleaseAttributes = self.attributes
        flow.triggered(self, "release-held", pdu=start.name, stream_offset=start.stream_offset)
        if attributes.forever or attributes.delay_ms is None:
            self._swallowed_in.add(flow.direction)
            return DROP

        await asyncio.sleep(attributes.delay_ms / 1000)

        return PASS

    async def before_finish(self, flow: Flow) -> None:
        if flow.direction not in self._swallowed_in:
            self._requestor_gone.set()
            return

        # Hold the acceptor's FIN until the requestor aborts or closes, or the proxy ends it.
        waits = [
            asyncio.ensure_future(self._requestor_gone.wait()),
            asyncio.ensure_future(flow.ctx.wait_ended()),
        ]
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for wait in waits:
            wait.cancel()


FAULT_TYPE = register_dicom(
    HoldRelease, HoldReleaseAttributes, "Hold the A-RELEASE-RP back for delay_ms, or for ever."
)
