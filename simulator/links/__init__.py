"""Links between the nodes of a simulated site.

Every link runs through a :class:`LinkProxy`, an in-process asyncio TCP
proxy that forwards bytes, records the DICOM Upper Layer PDUs it forwards and
is the place where faults act. The :class:`AssociationRegistry` lets the
proxy and the nodes on both ends agree on one association id.
"""

from simulator.links.pdu import PDUError, PDUReader, PDUType
from simulator.links.proxy import (
    DIRECTIONS,
    Direction,
    LinkError,
    LinkProxy,
    LinkStartError,
    LinkStats,
    Stage,
    StageContext,
)
from simulator.links.registry import AssociationRegistry

__all__ = [
    "DIRECTIONS",
    "AssociationRegistry",
    "Direction",
    "LinkError",
    "LinkProxy",
    "LinkStartError",
    "LinkStats",
    "PDUError",
    "PDUReader",
    "PDUType",
    "Stage",
    "StageContext",
]
