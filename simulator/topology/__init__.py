"""Site topologies: nodes, their declared conformance, and links."""

from __future__ import annotations

from pathlib import Path

from simulator.topology.model import (
    Coercion,
    ExternalNode,
    Link,
    ModalityNode,
    NodeBase,
    NodeKind,
    RetryPolicy,
    Role,
    RouterNode,
    Rule,
    SopClassSupport,
    StorageNode,
    Timeouts,
    Topology,
)
from simulator.yamlfile import load_model, raise_cross_check


def load_topology(path: Path) -> Topology:
    """Load and validate a topology file; raise ConfigError listing every problem."""
    topology, document = load_model(path, Topology, "topology")
    raise_cross_check(path, document, topology.cross_check())

    return topology


__all__ = [
    "Coercion",
    "ExternalNode",
    "Link",
    "ModalityNode",
    "NodeBase",
    "NodeKind",
    "RetryPolicy",
    "Role",
    "RouterNode",
    "Rule",
    "SopClassSupport",
    "StorageNode",
    "Timeouts",
    "Topology",
    "load_topology",
]
