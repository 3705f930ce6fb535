"""``limit_data``: close the connection once a number of bytes has passed.

Attributes, as in Toxiproxy:

- ``bytes``: number of bytes it should transmit before the connection is
  closed (required).

The fault passes exactly ``bytes`` bytes in its direction, counted from
when it was added, then closes the connection with a FIN to both sides.
With 0 it closes when the first bytes arrive, as Toxiproxy does.
"""

from __future__ import annotations

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


class LimitDataAttributes(FaultAttributes):
    bytes: int = attribute(
        ..., unit="bytes", le=2**62, description="Bytes to pass before the connection is closed."
    )


class LimitDataStage(FaultStage):
    def __init__(self, fault: ActiveFault, rng: random.Random) -> None:
        super().__init__(fault, rng)
        self._passed = 0
        self._closed = False

    async def process(self, chunk: bytes, ctx: StageContext, forward: Forward) -> None:
        if self._closed:
            return

        attributes: LimitDataAttributes = self.fault.attributes
        piece = chunk[: max(0, attributes.bytes - self._passed)]
        if piece:
            await forward(piece)
            self._passed += len(piece)
        if self._passed >= attributes.bytes:
            self._closed = True
            self.close(ctx, f"{self._passed} bytes passed, the limit")


def build(fault: ActiveFault, rng: random.Random) -> LimitDataStage:
    return LimitDataStage(fault, rng)


FAULT_TYPE = register(
    FaultType("limit_data", LimitDataAttributes, build, "Close after bytes bytes have passed.")
)
