"""``bandwidth``: limit a direction to a maximum rate.

Attributes, as in Toxiproxy:

- ``rate``: rate in KB/s, where 1 KB is 1000 bytes, as Toxiproxy computes it.

Each piece is held for its transmission time at ``rate`` after the end of
the previous piece, so an idle direction has no credit to burst with.
Chunks larger than 100 ms of transmission are cut into 100 ms pieces, as
Toxiproxy does. An update of ``rate`` applies from the next piece of every
open connection.
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

PIECE_S = 0.1
"""Transmission time of the largest piece, in seconds."""


class BandwidthAttributes(FaultAttributes):
    rate: int = attribute(
        ..., unit="KB/s", ge=1, le=10_000_000, description="Maximum rate, 1 KB = 1000 bytes."
    )


class BandwidthStage(FaultStage):
    def __init__(self, fault: ActiveFault, rng: random.Random) -> None:
        super().__init__(fault, rng)
        self._free_at_s = 0.0

    async def process(self, chunk: bytes, ctx: StageContext, forward: Forward) -> None:
        position = 0
        while position < len(chunk):
            attributes: BandwidthAttributes = self.fault.attributes
            rate_bytes_per_s = attributes.rate * 1000
            piece = chunk[position : position + max(1, int(rate_bytes_per_s * PIECE_S))]
            position += len(piece)
            # Schedule from when the chunk was read, not from now: each sleep ends
            # a little late, and restarting from now would add that lateness to
            # every piece (about 6 % too slow at 10,000 KB/s). After a stall the
            # backlog goes out at once, at most the stage queue's bytes.
            self._free_at_s = max(self._free_at_s, ctx.read_time_s) + len(piece) / rate_bytes_per_s
            await asyncio.sleep(max(0.0, self._free_at_s - time.monotonic()))
            await forward(piece)


def build(fault: ActiveFault, rng: random.Random) -> BandwidthStage:
    return BandwidthStage(fault, rng)


FAULT_TYPE = register(
    FaultType("bandwidth", BandwidthAttributes, build, "Limit the rate to rate KB/s.")
)
