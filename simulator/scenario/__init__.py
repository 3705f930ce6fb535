"""Scenarios: corpus selection, grouping, timeline and expectations."""

from __future__ import annotations

from pathlib import Path

from simulator.scenario.model import (
    After,
    Expectation,
    ExpectedFailure,
    NoFailures,
    RouteFilter,
    Scenario,
    Selection,
    Sender,
    Step,
)
from simulator.topology.model import Topology
from simulator.yamlfile import load_model, raise_cross_check


def load_scenario(path: Path, topology: Topology | None = None) -> Scenario:
    """Load and validate a scenario file, and check it against a topology when given."""
    scenario, document = load_model(path, Scenario, "scenario")
    if topology is not None:
        raise_cross_check(path, document, scenario.cross_check(topology))

    return scenario


__all__ = [
    "After",
    "Expectation",
    "ExpectedFailure",
    "NoFailures",
    "RouteFilter",
    "Scenario",
    "Selection",
    "Sender",
    "Step",
    "load_scenario",
]
