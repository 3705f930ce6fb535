"""``stall``: hold a DIMSE data set back after its command set has gone through.

In its ``direction`` (upstream for the requests of the link's client), the
fault waits ``delay_ms`` before forwarding the first PDV item of each data
set. The receiver then has the complete command set and sees nothing more
for that time, while the sender's further bytes wait in the proxy and in
the TCP buffers.

Attributes:

- ``delay_ms``: hold time in milliseconds, 1 to 3,600,000.
- ``command``: optional DIMSE command name, for example ``C-STORE-RQ``;
  only the data sets of that command are held. By default every data set is.
"""

from __future__ import annotations

import asyncio

from pydantic import Field, field_validator

from simulator.links.faults.base import FaultAttributes, attribute
from simulator.links.faults.dicom.base import DicomFault, Flow, PDVStart, register_dicom
from simulator.links.pdu import COMMAND_FIELDS

MAX_DELAY_MS = 3_600_000


class StallAttributes(FaultAttributes):
    delay_ms: int = attribute(
        ..., unit="ms", ge=1, le=MAX_DELAY_MS, description="Hold time before each data set."
    )
    command: str | None = Field(None, description="Hold only data sets of this DIMSE command.")

    @field_validator("command")
    @classmethod
    def _check_command(cls, value: str | None) -> str | None:
        if value is not None and value not in COMMAND_FIELDS.values():
            raise ValueError(f"{value!r} is not a DIMSE command name such as C-STORE-RQ")

        return value


class Stall(DicomFault):
    """Delay the bytes between a command set's last fragment and its data set."""

    type_name = "stall"

    async def before_pdv(self, pdv: PDVStart, flow: Flow) -> None:
        if flow.direction != self.direction or pdv.is_command or not pdv.first_fragment:
            return

        attributes: StallAttributes = self.attributes
        command = pdv.command
        if command is None or attributes.command not in (None, command.command):
            return

        flow.triggered(
            self,
            "data-set-held",
            command=command.command,
            message_id=command.message_id,
            context_id=pdv.context_id,
        )
        await asyncio.sleep(attributes.delay_ms / 1000)


FAULT_TYPE = register_dicom(
    Stall, StallAttributes, "Hold each DIMSE data set back for delay_ms after its command set."
)
