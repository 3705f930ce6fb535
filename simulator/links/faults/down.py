"""``down``: take the link down.

No attributes. Toxiproxy does this by disabling the proxy, which closes
its listener and every open connection. Here the listener keeps its port,
so that the link can come back up on the same port. A new connection is
accepted and closed at once, before the proxy connects upstream, and
recorded as ``link.connection_refused_by_fault``. Adding the fault closes
the open connections with a FIN to both sides. Removing it lets new
connections through again.

``direction`` has no effect. ``toxicity`` is drawn for each connection,
so a toxicity below 1 makes a flaky link that refuses some connections.
"""

from __future__ import annotations

import random

from simulator.links.faults.base import (
    ActiveFault,
    FaultAttributes,
    FaultStage,
    FaultType,
    register,
)
from simulator.links.stages import StageContext


class DownAttributes(FaultAttributes):
    pass


class DownStage(FaultStage):
    refuses_connection = True

    def attach(self, ctx: StageContext) -> None:
        super().attach(ctx)
        self.close(ctx, "the link is down")


def build(fault: ActiveFault, rng: random.Random) -> DownStage:
    return DownStage(fault, rng)


FAULT_TYPE = register(
    FaultType("down", DownAttributes, build, "Refuse new connections and close open ones.")
)
