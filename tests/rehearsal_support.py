"""A rehearsal run from test inputs, and its run log read back for assertions."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simulator.runner import Rehearsal, RunOptions
from simulator.scenario import load_scenario
from simulator.topology import load_topology


@dataclass
class Site:
    """A rehearsal and, once it has finished, its events and ledger rows."""

    rehearsal: Rehearsal
    run_dir: Path
    events: list[dict[str, Any]] = field(default_factory=list)
    ledger: list[dict[str, Any]] = field(default_factory=list)

    def of_kind(self, kind: str, **fields: Any) -> list[dict[str, Any]]:
        return [e for e in self.events
                if e["kind"] == kind and all(e.get(k) == v for k, v in fields.items())]

    def rows(self, **fields: Any) -> list[dict[str, Any]]:
        return [r for r in self.ledger if all(r.get(k) == v for k, v in fields.items())]

    def read(self) -> Site:
        self.events = read_jsonl(self.run_dir / "events.jsonl")
        self.ledger = read_jsonl(self.run_dir / "ledger.jsonl")
        return self


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def prepare(folder: Path, topology: dict[str, Any], scenario: dict[str, Any]) -> Site:
    """Write the inputs as YAML (JSON is valid YAML) and load them into a rehearsal."""
    folder.mkdir(parents=True, exist_ok=True)
    topology_path = folder / "topology-input.yaml"
    scenario_path = folder / "scenario-input.yaml"
    topology_path.write_text(json.dumps(topology, indent=2), encoding="utf-8")
    scenario_path.write_text(json.dumps(scenario, indent=2), encoding="utf-8")
    loaded = load_topology(topology_path)
    options = RunOptions(topology_path, scenario_path, folder / "run")
    rehearsal = Rehearsal(loaded, load_scenario(scenario_path, loaded), options)

    return Site(rehearsal, options.out_dir)


def rehearse(folder: Path, topology: dict[str, Any], scenario: dict[str, Any]) -> Site:
    """Run the rehearsal to its end and read its run log."""
    site = prepare(folder, topology, scenario)
    asyncio.run(site.rehearsal.run())

    return site.read()
