"""``timeout``: stop all data, and close the connection after a time without data.

Attributes, as in Toxiproxy:

- ``timeout``: time in milliseconds (default 0). With 0 the connection
  stays open and the fault drops all data in its direction until it is
  removed. With a positive value the fault drops all data and closes the
  connection, with a FIN to both sides, ``timeout`` ms after the later of
  the start and the last chunk it dropped. Toxiproxy behaves the same way,
  because it starts a new timer for every chunk it drops.

On an open connection, adding the fault starts the timer, updating
``timeout`` restarts it, and removing the fault lets data through again
from the next chunk. Bytes dropped in the meantime stay lost.
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
from simulator.recording.failures import FailureKind


class TimeoutAttributes(FaultAttributes):
    timeout: int = attribute(
        0, unit="ms", le=86_400_000, description="Close after this long; 0 never closes."
    )


class TimeoutStage(FaultStage):
    def __init__(self, fault: ActiveFault, rng: random.Random) -> None:
        super().__init__(fault, rng)
        self._timer: asyncio.TimerHandle | None = None

    def attach(self, ctx: StageContext) -> None:
        super().attach(ctx)
        self._arm()

    def refresh(self) -> None:
        self._arm()

    def detach(self, ctx: StageContext) -> None:
        if self._timer is not None:
            self._timer.cancel()

    async def process(self, chunk: bytes, ctx: StageContext, forward: Forward) -> None:
        # The chunk is dropped: whatever the client sees next is this fault's doing.
        ctx.note_failure(
            FailureKind.CONNECTION_BLACKHOLED,
            self.reason("data stopped on the link, as Toxiproxy's timeout toxic does"),
            detail={"fault": self.fault.name, "fault_type": self.fault.spec.type},
        )
        self._arm()

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        attributes: TimeoutAttributes = self.fault.attributes
        if attributes.timeout > 0 and self.ctx is not None:
            self._timer = self.ctx.call_later(attributes.timeout / 1000, self._expire)

    def _expire(self) -> None:
        assert self.ctx is not None
        attributes: TimeoutAttributes = self.fault.attributes
        self.close(self.ctx, f"no data passed for {attributes.timeout} ms")


def build(fault: ActiveFault, rng: random.Random) -> TimeoutStage:
    return TimeoutStage(fault, rng)


FAULT_TYPE = register(
    FaultType("timeout", TimeoutAttributes, build, "Drop all data; close after timeout ms.")
)
