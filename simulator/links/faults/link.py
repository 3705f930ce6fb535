"""The active faults of one link, and which connections get them.

For every new connection :meth:`LinkFaults.stages_for_connection` draws,
for each fault, whether the connection gets it, with probability
``toxicity``. Each draw uses its own generator, seeded with the run's
seed, the link, the fault, the fault's toxicity revision and the
connection id. The outcome therefore depends only on those, not on the
order in which connections or faults come, and a run with the same seed
draws the same pattern. The draw is recorded as ``link.fault_applied`` or
``link.fault_skipped``; the stage of the fault takes its own random
numbers (jitter, slice sizes) from the same generator.

Changes act on open connections too, as in Toxiproxy, for every fault
type whose ``live`` flag is set, which all types of this package do:

- ``add`` draws for each open connection and adds the stage where the draw hits;
- ``update`` of the attributes reaches the stages at once, and a new
  ``toxicity`` draws again for every open connection. Toxiproxy draws again
  on any update. Here a change of attributes alone keeps the draw, so that
  tuning a latency does not move it to other connections;
- ``remove`` takes the stage out of every open connection.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from simulator.links.faults.base import FAULT_TYPES, ActiveFault, FaultStage
from simulator.links.faults.spec import FaultError, FaultSpec, fault_problems
from simulator.links.stages import DIRECTIONS, Direction, Stage, StageChain
from simulator.recording.recorder import BoundRecorder


@dataclass(eq=False)
class _Connection:
    """The stages that one connection got, by fault name, and its chains once it relays."""

    conn_id: int
    stages: dict[str, tuple[Direction, Stage]] = field(default_factory=dict)
    chains: Mapping[Direction, StageChain] | None = None


class LinkFaults:
    """The active faults of the link ``link_name``; ``seed`` makes every draw reproducible."""

    def __init__(self, link_name: str, seed: int, recorder: BoundRecorder) -> None:
        self.link_name = link_name
        self.seed = seed
        self._recorder = recorder.bind(link=link_name)
        self._faults: dict[str, ActiveFault] = {}
        self._connections: dict[int, _Connection] = {}

    def specs(self) -> list[FaultSpec]:
        """Return the specs of the active faults, in the order they were added."""
        return [fault.spec for fault in self._faults.values()]

    def add(self, spec: FaultSpec) -> None:
        """Activate a fault; raise FaultError when it is invalid or its name is taken."""
        if spec.name in self._faults:
            raise FaultError(
                f"link {self.link_name}: a fault named {spec.name!r} is already active; "
                "remove it first or choose another name"
            )
        fault = ActiveFault(spec, self._validate(spec), FAULT_TYPES[spec.type])
        self._faults[spec.name] = fault
        self._recorder.emit("link.fault_added", seed=self.seed, **_spec_fields(spec))
        if not fault.fault_type.live:
            return

        for connection in self._open_connections():
            self._draw(fault, connection, open_connection=True)

    def update(
        self,
        name: str,
        attributes: Mapping[str, Any] | None = None,
        toxicity: float | None = None,
    ) -> None:
        """Change attributes, which merge into the current ones, and toxicity of a fault."""
        fault = self._get(name)
        previous = fault.spec
        values = previous.model_dump()
        values["attributes"] = {**previous.attributes, **(attributes or {})}
        if toxicity is not None:
            values["toxicity"] = toxicity
        try:
            spec = FaultSpec.model_validate(values)
        except ValidationError as exc:
            raise FaultError(f"link {self.link_name}: fault {name!r}: {exc}") from exc
        fault.attributes = self._validate(spec)
        fault.spec = spec
        self._recorder.emit(
            "link.fault_updated",
            previous_toxicity=previous.toxicity,
            previous_attributes=previous.attributes,
            **_spec_fields(spec),
        )
        if not fault.fault_type.live:
            return

        if spec.toxicity != previous.toxicity:
            fault.revision += 1
            for connection in self._open_connections():
                self._detach(fault, connection)
                self._draw(fault, connection, open_connection=True)
            return

        for connection in self._open_connections():
            _, stage = connection.stages.get(name, (None, None))
            if isinstance(stage, FaultStage):
                stage.refresh()

    def remove(self, name: str) -> None:
        """Deactivate a fault; raise FaultError when no fault has that name."""
        fault = self._get(name)
        del self._faults[name]
        self._recorder.emit("link.fault_removed", **_spec_fields(fault.spec))
        if not fault.fault_type.live:
            return

        for connection in self._open_connections():
            self._detach(fault, connection)

    def stages_for_connection(self, conn_id: int) -> dict[Direction, list[Stage]]:
        """Draw the faults for a new connection and return the stages it gets, per direction.

        The proxy then calls :meth:`track_connection` so that later changes
        reach the connection, and :meth:`forget_connection` when it ends.
        """
        connection = _Connection(conn_id)
        self._connections[conn_id] = connection
        for fault in self._faults.values():
            self._draw(fault, connection, open_connection=False)
        stages: dict[Direction, list[Stage]] = {direction: [] for direction in DIRECTIONS}
        for direction, stage in connection.stages.values():
            stages[direction].append(stage)

        return stages

    def track_connection(self, conn_id: int, chains: Mapping[Direction, StageChain]) -> None:
        """Let later changes reach the connection through its chains."""
        self._connections[conn_id].chains = chains

    def forget_connection(self, conn_id: int) -> None:
        self._connections.pop(conn_id, None)

    def _validate(self, spec: FaultSpec) -> Any:
        problems = fault_problems(spec)
        if problems:
            raise FaultError(f"link {self.link_name}: " + "; ".join(problems))

        return FAULT_TYPES[spec.type].attributes.model_validate(spec.attributes)

    def _get(self, name: str) -> ActiveFault:
        fault = self._faults.get(name)
        if fault is None:
            active = ", ".join(self._faults) or "none"
            raise FaultError(
                f"link {self.link_name}: no active fault is named {name!r} (active: {active})"
            )

        return fault

    def _open_connections(self) -> list[_Connection]:
        """Return the connections whose chains are known, in id order for reproducible draws."""
        return [
            connection
            for _, connection in sorted(self._connections.items())
            if connection.chains is not None
        ]

    def _draw(self, fault: ActiveFault, connection: _Connection, open_connection: bool) -> None:
        """Draw whether ``connection`` gets ``fault``, record it, and add the stage on a hit."""
        rng = random.Random(
            f"{self.seed}:{self.link_name}:{fault.name}:{fault.revision}:{connection.conn_id}"
        )
        applied = rng.random() < fault.spec.toxicity
        self._recorder.emit(
            "link.fault_applied" if applied else "link.fault_skipped",
            conn_id=connection.conn_id,
            open_connection=open_connection,
            **_spec_fields(fault.spec),
        )
        if not applied:
            return

        stage = fault.fault_type.build(fault, rng)
        direction = fault.spec.direction
        connection.stages[fault.name] = (direction, stage)
        if connection.chains is not None:
            connection.chains[direction].add(stage)

    def _detach(self, fault: ActiveFault, connection: _Connection) -> None:
        entry = connection.stages.pop(fault.name, None)
        if entry is not None and connection.chains is not None:
            direction, stage = entry
            connection.chains[direction].remove(stage)


def _spec_fields(spec: FaultSpec) -> dict[str, Any]:
    return {
        "fault": spec.name,
        "fault_type": spec.type,
        "direction": spec.direction,
        "toxicity": spec.toxicity,
        "attributes": spec.attributes,
    }
