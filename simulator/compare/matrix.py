"""The outcome matrix: per route (source, destination), per SOP class and transfer syntax.

A cell counts the ledger rows of one (source, destination, SOP class,
transfer syntax). Its status is ``delivered`` when every row arrived intact,
``failed`` when none did, ``partial`` in between, and ``never-attempted``
when no row was tried. Comparing two runs classifies each cell as a
regression, a fix, a changed failure (same status, but another failure
kind, hop or cause), added, removed, or unchanged.

The cause of a failure is read from its ``detail``: the PS3.8 results of
the instance's presentation contexts, a DIMSE status, a timeout, or the
source and reason of a rejection or abort. Reason texts are not compared,
because they also describe the batch an instance happened to travel in
("every context was rejected"), which changes from run to run.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from simulator.compare.reader import LedgerEntry
from simulator.conformance.names import describe_uid

CellKey = tuple[str, str, str, str]
"""(source, destination, SOP class UID, transfer syntax UID).

The source of a row for another service than ``store`` (a retrieve) is
written ``source (service)``, so its cells stay apart from routing.
"""

MAX_REASONS = 5
"""Distinct failure reasons a cell keeps per (failure kind, hop)."""

_STATUS_RANK = {"delivered": 2, "partial": 1, "failed": 0, "never-attempted": 0}


class CellChange(StrEnum):
    REGRESSION = "regression"
    FIX = "fix"
    CHANGED = "changed"
    ADDED = "added"
    REMOVED = "removed"
    UNCHANGED = "unchanged"


@dataclass
class Cell:
    """The rows of one matrix cell in one run."""

    key: CellKey
    delivered: int = 0
    failed: int = 0
    never_attempted: int = 0
    failures: Counter[tuple[str, str]] = field(default_factory=Counter)
    reasons: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    causes: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    hops: set[str] = field(default_factory=set)

    @property
    def rows(self) -> int:
        return self.delivered + self.failed + self.never_attempted

    @property
    def status(self) -> str:
        if self.delivered == self.rows:
            return "delivered"
        if self.delivered:
            return "partial"
        if self.never_attempted == self.rows:
            return "never-attempted"

        return "failed"

    @property
    def delivered_fraction(self) -> float:
        return self.delivered / self.rows if self.rows else 0.0

    def add(self, row: LedgerEntry) -> None:
        self.hops.update(row.hops)
        if row.delivered:
            self.delivered += 1
            return
        if row.state == "never-attempted":
            self.never_attempted += 1
        else:
            self.failed += 1
        failure = (row.failure_kind or "unknown", row.failure_hop or "")
        self.failures[failure] += 1
        cause = failure_cause(row.failure)
        if cause is not None:
            self.causes.setdefault(failure, set()).add(cause)
        reasons = self.reasons.setdefault(failure, [])
        if row.failure_reason and row.failure_reason not in reasons and len(reasons) < MAX_REASONS:
            reasons.append(row.failure_reason)

    def first_reason(self) -> str:
        """Return the first reason of the most common failure, or an empty string."""
        for failure, _ in self.failures.most_common():
            if self.reasons.get(failure):
                return self.reasons[failure][0]

        return ""

    def as_record(self) -> dict[str, Any]:
        return {
            "status": self.status, "rows": self.rows, "delivered": self.delivered,
            "failed": self.failed, "never_attempted": self.never_attempted,
            "failures": [
                {"failure_kind": kind, "hop": hop or None, "count": count,
                 "reasons": self.reasons.get((kind, hop), [])}
                for (kind, hop), count in self.failures.most_common()
            ],
        }


@dataclass
class CellDiff:
    key: CellKey
    change: CellChange
    a: Cell | None
    b: Cell | None
    config_changes: list[str] = field(default_factory=list)

    @property
    def source(self) -> str:
        return self.key[0]

    @property
    def destination(self) -> str:
        return self.key[1]

    @property
    def route(self) -> str:
        return f"{self.key[0]} -> {self.key[1]}"

    @property
    def sop_class(self) -> str:
        return describe_uid(self.key[2])

    @property
    def transfer_syntax(self) -> str:
        return describe_uid(self.key[3])

    @property
    def hops(self) -> set[str]:
        hops: set[str] = set()
        for side in (self.a, self.b):
            if side is not None:
                hops |= side.hops

        return hops

    def as_record(self) -> dict[str, Any]:
        return {
            "source": self.key[0], "destination": self.key[1],
            "sop_class_uid": self.key[2], "sop_class": self.sop_class,
            "transfer_syntax_uid": self.key[3], "transfer_syntax": self.transfer_syntax,
            "change": str(self.change),
            "a": None if self.a is None else self.a.as_record(),
            "b": None if self.b is None else self.b.as_record(),
            "config_changes": self.config_changes,
        }


def build_matrix(rows: Iterable[LedgerEntry]) -> dict[CellKey, Cell]:
    """Group ledger rows into cells."""
    cells: dict[CellKey, Cell] = {}
    for row in rows:
        source = row.source if row.service == "store" else f"{row.source} ({row.service})"
        key = (source, row.destination, row.sop_class_uid, row.transfer_syntax_uid)
        cells.setdefault(key, Cell(key)).add(row)

    return cells


def diff_matrices(cells_a: dict[CellKey, Cell], cells_b: dict[CellKey, Cell]) -> list[CellDiff]:
    """Classify every cell of either run, sorted by route, SOP class and transfer syntax."""
    keys = sorted(set(cells_a) | set(cells_b))

    return [CellDiff(k, classify(cells_a.get(k), cells_b.get(k)), cells_a.get(k), cells_b.get(k))
            for k in keys]


def classify(a: Cell | None, b: Cell | None) -> CellChange:
    """Classify one cell; a cell only one run has is added or removed."""
    if a is None:
        return CellChange.ADDED
    if b is None:
        return CellChange.REMOVED
    rank_a, rank_b = _STATUS_RANK[a.status], _STATUS_RANK[b.status]
    if rank_b < rank_a:
        return CellChange.REGRESSION
    if rank_b > rank_a:
        return CellChange.FIX
    if a.status == "partial" and b.delivered_fraction != a.delivered_fraction:
        return CellChange.REGRESSION if b.delivered_fraction < a.delivered_fraction \
            else CellChange.FIX
    if set(a.failures) != set(b.failures) or _causes_differ(a, b):
        return CellChange.CHANGED

    return CellChange.UNCHANGED


def failure_cause(failure: dict[str, Any] | None) -> str | None:
    """Return what caused a failure, from its detail, or None when the detail records no cause."""
    detail = (failure or {}).get("detail") or {}
    if not isinstance(detail, dict):
        return None
    results = detail.get("context_results")
    if results:
        names = sorted({str(r.get("result_name")) for r in results if isinstance(r, dict)})
        return ", ".join(names)
    if detail.get("status"):
        return f"status {detail['status']}"
    if detail.get("timeout_s") is not None:
        return f"{detail.get('timed_out_side', '')} timeout {detail['timeout_s']} s".strip()
    named = [str(detail[k]) for k in ("result_name", "source_name", "reason_name") if detail.get(k)]
    if named:
        return " / ".join(named)
    if detail.get("cause"):
        return str(detail["cause"])

    return None


def _causes_differ(a: Cell, b: Cell) -> bool:
    # A run without failure details (format 0) has no causes: compare only where both have them.
    shared = set(a.causes) & set(b.causes)

    return any(a.causes[failure] != b.causes[failure] for failure in shared)


def cell_nodes(cell: CellDiff, link_endpoints: dict[str, tuple[str, str]]) -> set[str]:
    """Return the nodes a cell's route involves: source, destination and every hop's ends."""
    nodes = {cell.source, cell.destination}
    for hop in cell.hops:
        if hop in link_endpoints:
            nodes.update(link_endpoints[hop])
        elif "->" in hop:
            nodes.update(part.strip() for part in hop.split("->", 1))

    return nodes
