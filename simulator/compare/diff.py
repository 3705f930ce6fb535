"""Compare two runs: outcome matrix, instances, integrity, timing and configuration.

B has a regression against A when any of these holds:

- a matrix cell's outcome got worse (delivered to partial or failed, or a
  smaller delivered fraction);
- an instance delivered intact in A is not in B: it failed, was never
  attempted, or B no longer routes it to that destination;
- an integrity finding appeared (a delivery B stored changed in a way no
  declared coercion explains).

Timing moves are flagged but are not regressions: rehearsal timing on a
shared machine is noisy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from simulator.compare.config import (
    ConfigChange,
    attribute_nodes,
    diff_documents,
    mentioned_uids,
)
from simulator.compare.matching import Matching, RowPair, match_rows
from simulator.compare.matrix import (
    CellChange,
    CellDiff,
    build_matrix,
    cell_nodes,
    diff_matrices,
)
from simulator.compare.reader import LedgerEntry, RunData
from simulator.compare.timing import DEFAULT_THRESHOLD_PCT, TimingChange, compare_timing
from simulator.conformance.names import describe_uid

DIFF_FORMAT_VERSION = 1


@dataclass
class RunDiff:
    """Everything ``rehearse diff`` prints, for one pair of runs."""

    run_a: RunData
    run_b: RunData
    matching: Matching
    cells: list[CellDiff]
    lost: list[RowPair]
    gained: list[RowPair]
    integrity_appeared: list[RowPair]
    integrity_disappeared: list[RowPair]
    timing: list[TimingChange]
    threshold_pct: float
    config_changes: list[ConfigChange]
    notes: list[str] = field(default_factory=list)

    def cells_with(self, change: CellChange) -> list[CellDiff]:
        return [c for c in self.cells if c.change == change]

    @property
    def regression_cells(self) -> list[CellDiff]:
        return self.cells_with(CellChange.REGRESSION)

    @property
    def has_regression(self) -> bool:
        return bool(self.regression_cells or self.lost or self.integrity_appeared)

    @property
    def flagged_timing(self) -> list[TimingChange]:
        return [t for t in self.timing if t.flagged]

    def counts(self) -> dict[str, int]:
        counts = {str(change): len(self.cells_with(change)) for change in CellChange}
        counts.update(
            delivered_only_in_a=len(self.lost), delivered_only_in_b=len(self.gained),
            integrity_appeared=len(self.integrity_appeared),
            integrity_disappeared=len(self.integrity_disappeared),
            timing_flagged=len(self.flagged_timing), config_changes=len(self.config_changes),
        )

        return counts

    def as_record(self) -> dict[str, Any]:
        """Return the JSON document of ``rehearse diff --json``."""
        changed_cells = [c for c in self.cells if c.change != CellChange.UNCHANGED]
        return {
            "diff_format_version": DIFF_FORMAT_VERSION,
            "run_a": _run_record(self.run_a),
            "run_b": _run_record(self.run_b),
            "regression": self.has_regression,
            "counts": self.counts(),
            "matching": self.matching.as_record(),
            "matrix": [c.as_record() for c in changed_cells],
            "instances": {
                "delivered_only_in_a": [pair_record(p) for p in self.lost],
                "delivered_only_in_b": [pair_record(p) for p in self.gained],
            },
            "integrity": {
                "appeared": [pair_record(p) for p in self.integrity_appeared],
                "disappeared": [pair_record(p) for p in self.integrity_disappeared],
            },
            "timing": {"threshold_pct": self.threshold_pct,
                       "measures": [t.as_record() for t in self.timing]},
            "config": [c.as_record() for c in self.config_changes],
            "notes": self.notes,
        }


def compare_runs(run_a: RunData, run_b: RunData,
                 threshold_pct: float = DEFAULT_THRESHOLD_PCT) -> RunDiff:
    """Compare run B against run A."""
    matching = match_rows(run_a.rows, run_b.rows)
    cells = diff_matrices(build_matrix(run_a.rows), build_matrix(run_b.rows))
    config_changes = _config_changes(run_a, run_b)
    _link_config_to_cells(config_changes, cells, run_a, run_b)
    notes = [f"A: {n}" for n in run_a.notes] + [f"B: {n}" for n in run_b.notes]

    return RunDiff(
        run_a=run_a, run_b=run_b, matching=matching, cells=cells,
        lost=[p for p in matching.pairs if _delivered(p.a) and not _delivered(p.b)],
        gained=[p for p in matching.pairs if _delivered(p.b) and not _delivered(p.a)],
        integrity_appeared=[p for p in matching.pairs
                            if _not_intact(p.b) and not _not_intact(p.a)],
        integrity_disappeared=[p for p in matching.pairs
                               if _not_intact(p.a) and not _not_intact(p.b)],
        timing=compare_timing(run_a, run_b, threshold_pct),
        threshold_pct=threshold_pct,
        config_changes=config_changes,
        notes=notes,
    )


def _delivered(row: LedgerEntry | None) -> bool:
    return row is not None and row.delivered


def _not_intact(row: LedgerEntry | None) -> bool:
    return row is not None and row.state == "delivered" and row.intact is False


def _config_changes(run_a: RunData, run_b: RunData) -> list[ConfigChange]:
    nodes = run_a.node_names() | run_b.node_names()
    links = {**run_a.link_endpoints(), **run_b.link_endpoints()}
    senders = {**_sender_nodes(run_a), **_sender_nodes(run_b)}
    changes: list[ConfigChange] = []
    for document, a, b in (("topology", run_a.topology, run_b.topology),
                           ("scenario", run_a.scenario, run_b.scenario)):
        if a is None or b is None:
            continue
        for change in diff_documents(document, a, b):
            change.nodes = attribute_nodes(change, nodes, links, senders)
            change.uids = mentioned_uids(change)
            changes.append(change)

    return changes


def _sender_nodes(run: RunData) -> dict[str, str]:
    senders = (run.scenario or {}).get("senders") or []
    return {str(s["name"]): str(s["modality"]) for s in senders
            if isinstance(s, dict) and s.get("name") and s.get("modality")}


def _link_config_to_cells(changes: list[ConfigChange], cells: list[CellDiff],
                          run_a: RunData, run_b: RunData) -> None:
    """Name, on each changed cell, the config changes that may explain it, and back.

    A change may explain a cell when it concerns a node on the cell's route
    and, if it names SOP classes or transfer syntaxes, names the cell's.
    Changes that concern the whole run (``seed``, ``corpus``) are listed
    once, not on every cell.
    """
    links = {**run_a.link_endpoints(), **run_b.link_endpoints()}
    for cell in cells:
        if cell.change == CellChange.UNCHANGED:
            continue
        involved = cell_nodes(cell, links)
        for change in changes:
            if not change.nodes & involved:
                continue
            if change.uids and not change.uids & {cell.key[2], cell.key[3]}:
                continue
            cell.config_changes.append(f"{change.document}: {change.path}")
            change.related_cells.append(cell_label(cell))


def cell_label(cell: CellDiff) -> str:
    return f"{cell.route}, {cell.sop_class}, {cell.transfer_syntax}"


def _run_record(run: RunData) -> dict[str, Any]:
    summary = run.summary
    return {
        "path": str(run.path), "run_id": run.run_id, "format_version": run.format_version,
        "site": summary.get("site"), "scenario": summary.get("scenario"),
        "seed": summary.get("seed"), "outcome": summary.get("outcome"),
        "rows": len(run.rows),
        "delivered": sum(1 for r in run.rows if r.delivered),
    }


def pair_record(pair: RowPair) -> dict[str, Any]:
    """Return one matched delivery as JSON: what it is, and its state in A and in B."""
    row = pair.any_row
    return {
        "source": row.source, "source_file": row.source_file, "destination": row.destination,
        "sop_class": describe_uid(row.sop_class_uid),
        "transfer_syntax": describe_uid(row.transfer_syntax_uid),
        "matched_by": None if pair.method is None else str(pair.method),
        "a": _side_record(pair.a), "b": _side_record(pair.b),
    }


def _side_record(row: LedgerEntry | None) -> dict[str, Any] | None:
    if row is None:
        return None
    return {
        "sop_instance_uid": row.sop_instance_uid, "state": row.state, "intact": row.intact,
        "failure_kind": row.failure_kind, "hop": row.failure_hop, "reason": row.failure_reason,
        "unexplained": (row.integrity or {}).get("unexplained", []) if row.intact is False
        else [],
    }
