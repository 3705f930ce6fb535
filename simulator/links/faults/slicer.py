"""``slicer``: slice data into small pieces, with an optional delay after each.

Attributes, as in Toxiproxy:

- ``average_size``: size in bytes of an average piece (required);
- ``size_variation``: variation in bytes of the piece size; must be
  smaller than ``average_size`` (default 0);
- ``delay``: time in MICROseconds to wait after each piece (default 0).
  Toxiproxy uses microseconds here and milliseconds everywhere else.

A chunk larger than ``average_size + size_variation`` is cut in two near
its middle, the cut moved by up to ``size_variation`` bytes, and each half
is cut again in the same way. Pieces therefore never exceed
``average_size + size_variation`` bytes, and no byte is lost. The receiver
sees the pieces as separate reads only while it reads faster than they
arrive, because its TCP stack may merge them.
"""

from __future__ import annotations

import asyncio
import random

from pydantic import model_validator

from simulator.links.faults.base import (
    ActiveFault,
    FaultAttributes,
    FaultStage,
    FaultType,
    attribute,
    register,
)
from simulator.links.stages import Forward, StageContext

MAX_PIECE_BYTES = 16 * 1024 * 1024


class SlicerAttributes(FaultAttributes):
    average_size: int = attribute(
        ..., unit="bytes", ge=1, le=MAX_PIECE_BYTES, description="Size of an average piece."
    )
    size_variation: int = attribute(
        0, unit="bytes", le=MAX_PIECE_BYTES, description="Variation of the piece size."
    )
    delay: int = attribute(
        0, unit="microseconds", le=60_000_000, description="Wait after each piece."
    )

    @model_validator(mode="after")
    def _variation_below_average(self) -> SlicerAttributes:
        if self.size_variation >= self.average_size:
            msg = (
                f"size_variation {self.size_variation} bytes must be smaller than "
                f"average_size {self.average_size} bytes"
            )
            raise ValueError(msg)

        return self


def slice_sizes(length: int, average: int, variation: int, rng: random.Random) -> list[int]:
    """Return the sizes of the pieces of a ``length``-byte chunk, in order."""
    sizes: list[int] = []
    pending = [length]
    while pending:
        size = pending.pop()
        if size - average <= variation:
            sizes.append(size)
            continue

        offset = rng.randrange(-variation, variation) if variation else 0
        left = min(max(size // 2 + offset, 1), size - 1)
        # The left piece goes on top of the stack, so pieces come out in stream order.
        pending.append(size - left)
        pending.append(left)

    return sizes


class SlicerStage(FaultStage):
    async def process(self, chunk: bytes, ctx: StageContext, forward: Forward) -> None:
        attributes: SlicerAttributes = self.fault.attributes
        sizes = slice_sizes(
            len(chunk), attributes.average_size, attributes.size_variation, self.rng
        )
        position = 0
        for size in sizes:
            await forward(chunk[position : position + size])
            position += size
            if attributes.delay > 0:
                await asyncio.sleep(attributes.delay / 1_000_000)


def build(fault: ActiveFault, rng: random.Random) -> SlicerStage:
    return SlicerStage(fault, rng)


FAULT_TYPE = register(
    FaultType("slicer", SlicerAttributes, build, "Slice data into pieces of about average_size.")
)
