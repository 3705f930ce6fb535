"""What ``rehearse check`` predicts: per instance, per route, per hop.

A :class:`Route` is the path one instance takes from a modality to a final
destination, through routers and the rule sets they apply. For each hop of
a route, a :class:`HopPrediction` predicts whether the hop passes, fails or may
fail, and why. An :class:`InstancePrediction` is the outcome of one instance
on one route, as the ledger row for (instance, destination) should show it.
:class:`CheckResult` aggregates them into :class:`Cell` objects, one per
(route, SOP class, transfer syntax), for the matrix that ``check`` prints.

Failure kinds and their details use the vocabulary of
:mod:`simulator.recording.failures`, so a prediction can be compared with
an observed ledger row field by field.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from simulator.conformance.names import describe_uid
from simulator.recording.failures import FailureKind, Side


class Outcome(StrEnum):
    """Predicted outcome of an instance on a route, or of one hop."""

    DELIVERED = "delivered"
    FAILED = "failed"
    AT_RISK = "at-risk"
    """May fail: the outcome depends on timing or on a fault's toxicity."""
    NOT_REACHED = "not-reached"
    """A hop after a failing one."""
    NEVER_ATTEMPTED = "never-attempted"
    """The scenario never starts the sender of this instance."""


@dataclass(frozen=True)
class PredictedFailure:
    """A failure as the simulator would classify it (see simulator.recording.failures.Failure)."""

    failure_kind: FailureKind
    hop: str | None
    side: Side
    permanent: bool
    reason: str
    detail: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "failure_kind": str(self.failure_kind),
            "hop": self.hop,
            "side": str(self.side),
            "permanent": self.permanent,
            "reason": self.reason,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class Route:
    """The path from a modality to a final destination.

    ``rule_sets`` names the rule set each router on the way applies (None
    for a router's plain ``rules``), and ``rules`` the rules that matched.
    ``condition`` is set when the route depends on attribute values that are
    unknown, because no corpus was given.
    """

    source: str
    destination: str
    links: tuple[str, ...]
    nodes: tuple[str, ...] = ()
    """Every node on the way, from the source to the last receiver."""
    rule_sets: tuple[tuple[str, str | None], ...] = ()
    rules: tuple[tuple[str, tuple[str, ...]], ...] = ()
    condition: str | None = None

    @property
    def label(self) -> str:
        text = " > ".join(self.nodes or (self.source, self.destination))
        if self.rule_sets:
            sets = ", ".join(f"{router}: {name or 'rules'}" for router, name in self.rule_sets)
            text += f" [{sets}]"
        if self.condition:
            text += f" (if {self.condition})"

        return text

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "destination": self.destination,
            "links": list(self.links),
            "nodes": list(self.nodes),
            "rule_sets": [{"router": r, "rule_set": s} for r, s in self.rule_sets],
            "rules": [{"router": r, "rules": list(names)} for r, names in self.rules],
            "condition": self.condition,
            "label": self.label,
        }


@dataclass(frozen=True)
class HopPrediction:
    """One hop of a route: what the sender proposes, what the receiver does with it."""

    link: str
    sender: str
    receiver: str
    outcome: Outcome
    transfer_syntax_uid: str
    """The transfer syntax the instance travels in on this hop, after any transcoding."""
    failure: PredictedFailure | None = None
    risks: tuple[PredictedFailure, ...] = ()
    notes: tuple[str, ...] = ()
    budget: str | None = None
    """The time this data set needs on the link, when latency or bandwidth slow it down."""
    dataset_bytes: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "link": self.link,
            "budget": self.budget,
            "sender": self.sender,
            "receiver": self.receiver,
            "outcome": str(self.outcome),
            "transfer_syntax": self.transfer_syntax_uid,
            "failure": None if self.failure is None else self.failure.as_dict(),
            "risks": [risk.as_dict() for risk in self.risks],
            "notes": list(self.notes),
        }


@dataclass(frozen=True)
class InstancePrediction:
    """The predicted ledger row of one instance sent by one sender on one route."""

    sender: str
    source_file: str | None
    sop_class_uid: str
    transfer_syntax_uid: str
    size_bytes: int | None
    route: Route
    outcome: Outcome
    failure: PredictedFailure | None
    risks: tuple[PredictedFailure, ...]
    hops: tuple[HopPrediction, ...]
    changes: tuple[str, ...] = ()
    """Changes routers on the way make to the instance: coercions, private blocks, character sets."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "sender": self.sender,
            "source_file": self.source_file,
            "sop_class": self.sop_class_uid,
            "transfer_syntax": self.transfer_syntax_uid,
            "size_bytes": self.size_bytes,
            "source": self.route.source,
            "destination": self.route.destination,
            "route": self.route.label,
            "outcome": str(self.outcome),
            "failure": None if self.failure is None else self.failure.as_dict(),
            "risks": [risk.as_dict() for risk in self.risks],
            "changes": list(self.changes),
        }


@dataclass(frozen=True)
class Cell:
    """All instances of one (SOP class, transfer syntax) on one route."""

    route: Route
    sop_class_uid: str
    transfer_syntax_uid: str
    predictions: tuple[InstancePrediction, ...]

    def count(self, outcome: Outcome) -> int:
        return sum(1 for p in self.predictions if p.outcome == outcome)

    @property
    def outcome(self) -> Outcome:
        """FAILED when any instance fails, else AT_RISK when any may fail, else the common outcome."""
        for outcome in (Outcome.FAILED, Outcome.AT_RISK, Outcome.NEVER_ATTEMPTED):
            if self.count(outcome):
                return outcome
        return Outcome.DELIVERED

    @property
    def reasons(self) -> list[str]:
        """The distinct reasons of failures and risks, each with its hop and failure kind."""
        reasons: dict[str, None] = {}
        for prediction in self.predictions:
            for failure in _failures_of(prediction):
                reasons[f"{failure.hop or 'routing'}: {failure.failure_kind}: {failure.reason}"] = None
        return list(reasons)

    @property
    def changes(self) -> list[str]:
        return list(dict.fromkeys(c for p in self.predictions for c in p.changes))

    @property
    def hops(self) -> tuple[HopPrediction, ...]:
        """The hops of the instance with the worst outcome, to show where it goes wrong."""
        order = [Outcome.FAILED, Outcome.AT_RISK, Outcome.NEVER_ATTEMPTED, Outcome.DELIVERED]
        worst = min(self.predictions, key=lambda p: order.index(p.outcome))

        return worst.hops

    def as_dict(self) -> dict[str, Any]:
        return {
            "route": self.route.as_dict(),
            "sop_class": self.sop_class_uid,
            "sop_class_name": describe_uid(self.sop_class_uid),
            "transfer_syntax": self.transfer_syntax_uid,
            "transfer_syntax_name": describe_uid(self.transfer_syntax_uid),
            "outcome": str(self.outcome),
            "instances": len(self.predictions),
            "failed": self.count(Outcome.FAILED),
            "at_risk": self.count(Outcome.AT_RISK),
            "largest_size_bytes": max((p.size_bytes or 0 for p in self.predictions), default=0)
            or None,
            "reasons": self.reasons,
            "changes": self.changes,
            "hops": [hop.as_dict() for hop in self.hops],
        }


def _failures_of(prediction: InstancePrediction) -> Iterable[PredictedFailure]:
    if prediction.failure is not None:
        yield prediction.failure
    yield from prediction.risks


@dataclass
class CheckResult:
    """Everything ``check_topology`` predicts for one topology.

    ``mode`` is ``declarations`` (no corpus: one instance per declared SOP
    class and transfer syntax), ``corpus`` (every modality sends the corpus
    instances of the SOP classes it declares) or ``scenario`` (the
    scenario's senders, selections and timeline). ``notes`` are findings
    that belong to no single route, such as corpus files no modality sends.
    """

    site: str
    mode: str
    predictions: list[InstancePrediction] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    retrieves: list[Any] = field(default_factory=list)
    """Timeout budgets of the scenario's C-MOVE and C-GET steps (RetrievePrediction)."""

    @property
    def cells(self) -> list[Cell]:
        grouped: dict[tuple[Route, str, str], list[InstancePrediction]] = {}
        for prediction in self.predictions:
            key = (prediction.route, prediction.sop_class_uid, prediction.transfer_syntax_uid)
            grouped.setdefault(key, []).append(prediction)

        return [Cell(route, sop, ts, tuple(items)) for (route, sop, ts), items in grouped.items()]

    @property
    def routes(self) -> list[Route]:
        return list(dict.fromkeys(p.route for p in self.predictions))

    @property
    def failure_predicted(self) -> bool:
        return any(p.outcome == Outcome.FAILED for p in self.predictions) or any(
            r.dimse_timeout_predicted for r in self.retrieves
        )

    def as_dict(self) -> dict[str, Any]:
        counts = {str(o): sum(1 for p in self.predictions if p.outcome == o) for o in Outcome}
        return {
            "site": self.site,
            "mode": self.mode,
            "failure_predicted": self.failure_predicted,
            "retrieves": [r.as_dict() for r in self.retrieves],
            "counts": {k: v for k, v in counts.items() if v},
            "routes": [route.as_dict() for route in self.routes],
            "cells": [cell.as_dict() for cell in self.cells],
            "instances": [p.as_dict() for p in self.predictions],
            "notes": self.notes,
        }
