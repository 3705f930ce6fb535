"""``reset_peer``: reset the connection (TCP RST) after the first data.

Attributes, as in Toxiproxy:

- ``timeout``: time in milliseconds (default 0). When the first bytes
  arrive in the fault's direction, the fault drops them and everything
  after, waits ``timeout`` ms and resets both sides of the connection:
  each peer gets an RST, so its next read or write fails with "connection
  reset by peer".
"""

from __future__ import annotations

import asyncio
import random

from simulator.links.faults.base import (
    ActiveFault,
    FaultAttributes,
    FaultStage,
    FaultType,
    attribute,
    register,
)
from simulator.links.stages import Forward, StageContext


class ResetPeerAttributes(FaultAttributes):
    timeout: int = attribute(
        0, unit="ms", le=86_400_000, description="Wait after the first data before the RST."
    )


class ResetPeerStage(FaultStage):
    def __init__(self, fault: ActiveFault, rng: random.Random) -> None:
        super().__init__(fault, rng)
        self._triggered = False

    async def process(self, chunk: bytes, ctx: StageContext, forward: Forward) -> None:
        if self._triggered:
            return

        self._triggered = True
        attributes: ResetPeerAttributes = self.fault.attributes
        await asyncio.sleep(attributes.timeout / 1000)
        self.close(ctx, f"reset {attributes.timeout} ms after the first data", reset=True)


def build(fault: ActiveFault, rng: random.Random) -> ResetPeerStage:
    return ResetPeerStage(fault, rng)


FAULT_TYPE = register(
    FaultType("reset_peer", ResetPeerAttributes, build, "Reset the connection after timeout ms.")
)
