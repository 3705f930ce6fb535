"""Capability matching before a run, and probing what a real system accepts.

:func:`check_topology` predicts, for every route the routing rules can
produce and every (SOP class, transfer syntax) sent on it, whether each
hop passes, fails or may fail, with the failure kind the simulator would
record. :func:`compare_with_ledger` compares those predictions with the
ledger of a run. :func:`probe_system` discovers what a live system accepts,
and :func:`compare_declaration` lists where a declared node and a probed
system differ.
"""

from simulator.capability.check import check_topology, load_corpus_instances
from simulator.capability.compare import Mismatch, compare_with_ledger
from simulator.capability.errors import CapabilityError, CheckError, ProbeError
from simulator.capability.model import (
    Cell,
    CheckResult,
    HopPrediction,
    InstancePrediction,
    Outcome,
    PredictedFailure,
    Route,
)

__all__ = [
    "CapabilityError",
    "Cell",
    "CheckError",
    "CheckResult",
    "HopPrediction",
    "InstancePrediction",
    "Mismatch",
    "Outcome",
    "PredictedFailure",
    "ProbeError",
    "Route",
    "check_topology",
    "compare_with_ledger",
    "load_corpus_instances",
]
