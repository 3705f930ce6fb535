"""The fault type registry and what every fault stage shares.

A fault type is one module that calls :func:`register` with a
:class:`FaultType`: its name, a pydantic model of its attributes and a
function that builds the :class:`~simulator.links.stages.Stage` for one
connection. The stage reads its attributes from the :class:`ActiveFault`
on every use, so an update of the attributes reaches open connections.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from simulator.links.stages import Stage, StageContext

if TYPE_CHECKING:
    from simulator.links.faults.spec import FaultSpec


class FaultAttributes(BaseModel):
    """Base of the attribute models: immutable, and unknown attributes are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid")


def attribute(default: Any, *, unit: str, le: int, description: str, ge: int = 0) -> Any:
    """Declare an integer attribute with its unit and range, which error messages quote."""
    return Field(
        default=default,
        ge=ge,
        le=le,
        strict=True,
        description=description,
        json_schema_extra={"unit": unit},
    )


@dataclass(eq=False)
class ActiveFault:
    """A fault active on a link: its spec, its validated attributes, and its toxicity revision.

    ``revision`` counts the changes of toxicity; it is part of the seed of
    each connection's draw, so a new toxicity means a new draw.
    """

    spec: FaultSpec
    attributes: Any
    fault_type: FaultType
    revision: int = 0

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass(frozen=True)
class FaultType:
    """A registered fault type.

    ``build`` returns the stage of one connection, given the fault and a
    random generator seeded for that fault and connection. ``live`` is true
    when adding, updating and removing the fault also acts on connections
    that are already open, as Toxiproxy does for all its toxics.
    """

    name: str
    attributes: type[FaultAttributes]
    build: Callable[[ActiveFault, random.Random], Stage]
    summary: str
    live: bool = True


FAULT_TYPES: dict[str, FaultType] = {}
"""Registered fault types by name."""


def register(fault_type: FaultType) -> FaultType:
    """Add ``fault_type`` to :data:`FAULT_TYPES`; a second type of the same name is an error."""
    if fault_type.name in FAULT_TYPES:
        raise ValueError(f"fault type {fault_type.name!r} is registered twice")

    FAULT_TYPES[fault_type.name] = fault_type

    return fault_type


class FaultStage(Stage):
    """Stage of one fault on one connection; :attr:`ctx` is set once attached."""

    def __init__(self, fault: ActiveFault, rng: random.Random) -> None:
        self.fault = fault
        self.name = fault.name
        self.rng = rng
        self.ctx: StageContext | None = None

    def attach(self, ctx: StageContext) -> None:
        self.ctx = ctx

    def refresh(self) -> None:
        """React at once to updated attributes; most stages just read them on the next chunk."""

    def reason(self, detail: str) -> str:
        """Return a close reason that names the fault."""
        return f"fault {self.fault.name!r} ({self.fault.spec.type}): {detail}"

    def close(self, ctx: StageContext, detail: str, reset: bool = False) -> None:
        """End the connection for this fault, naming it in the failure the client will see."""
        ctx.close(self.reason(detail), reset=reset,
                  fault={"fault": self.fault.name, "fault_type": self.fault.spec.type})
