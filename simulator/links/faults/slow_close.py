"""``slow_close``: delay the close of a direction.

Attributes, as in Toxiproxy:

- ``delay``: time in milliseconds (default 0).

When the source side of the direction closes, the FIN reaches the other
side ``delay`` ms later. Data passes unchanged.
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


class SlowCloseAttributes(FaultAttributes):
    delay: int = attribute(0, unit="ms", le=86_400_000, description="Delay of the close.")


class SlowCloseStage(FaultStage):
    async def finish(self, ctx: StageContext, forward: Forward) -> None:
        attributes: SlowCloseAttributes = self.fault.attributes
        await asyncio.sleep(attributes.delay / 1000)


def build(fault: ActiveFault, rng: random.Random) -> SlowCloseStage:
    return SlowCloseStage(fault, rng)


FAULT_TYPE = register(
    FaultType("slow_close", SlowCloseAttributes, build, "Delay the close by delay ms.")
)
