"""``latency``: delay all data by ``latency`` +/- ``jitter``.

Attributes, as in Toxiproxy:

- ``latency``: time in milliseconds (default 0);
- ``jitter``: time in milliseconds (default 0). Each chunk gets a delay
  drawn uniformly from ``latency - jitter`` to ``latency + jitter - 1`` ms;
  a negative draw means no delay.

The delay counts from the moment the proxy read the chunk, and the proxy
keeps reading meanwhile, so latency does not limit the rate (see
:mod:`simulator.links.stages`). Chunks keep their order: a chunk whose
draw is shorter still waits for the chunk before it. An update of the
attributes applies from the next chunk of every open connection.

NOTE: two latency faults on the same direction do not add up, because
both count from the read time: the larger delay wins.
"""

from __future__ import annotations

import asyncio
import random
import time

from simulator.links.faults.base import (
    ActiveFault,
    FaultAttributes,
    FaultStage,
    FaultType,
    attribute,
    register,
)
from simulator.links.stages import Forward, StageContext

MAX_LATENCY_MS = 600_000


class LatencyAttributes(FaultAttributes):
    latency: int = attribute(0, unit="ms", le=MAX_LATENCY_MS, description="Delay of all data.")
    jitter: int = attribute(0, unit="ms", le=MAX_LATENCY_MS, description="Random +/- variation.")


class LatencyStage(FaultStage):
    async def process(self, chunk: bytes, ctx: StageContext, forward: Forward) -> None:
        attributes: LatencyAttributes = self.fault.attributes
        delay_ms = attributes.latency
        if attributes.jitter > 0:
            delay_ms += self.rng.randrange(-attributes.jitter, attributes.jitter)
        wait_s = ctx.read_time_s + delay_ms / 1000 - time.monotonic()
        if wait_s > 0:
            await asyncio.sleep(wait_s)
        await forward(chunk)


def build(fault: ActiveFault, rng: random.Random) -> LatencyStage:
    return LatencyStage(fault, rng)


FAULT_TYPE = register(
    FaultType("latency", LatencyAttributes, build, "Delay all data by latency +/- jitter.")
)
