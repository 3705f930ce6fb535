"""Self-contained HTML reports of a run, or of two runs compared.

The page needs no network: CSS and JavaScript are inline and the timeline
is inline SVG. It identifies instances by UID and source file only, as the
run files do: no patient data. Templates are Jinja2 with autoescape on.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined

from simulator import __version__
from simulator.compare.diff import RunDiff, pair_record
from simulator.compare.matrix import CellChange, build_matrix
from simulator.compare.reader import LedgerEntry, RunData
from simulator.compare.render import matching_text, timing_rows, verdict
from simulator.conformance.names import describe_uid
from simulator.report._failures import build_failure_groups
from simulator.report._grid import diff_grid, run_grid
from simulator.report._timeline import build_timeline

__all__ = ["MAX_LEDGER_ROWS", "render_diff_report", "render_run_report"]

_SECTION_TITLES = {
    CellChange.REGRESSION: "Regressions: cells whose outcome got worse",
    CellChange.FIX: "Fixes: cells whose outcome got better",
    CellChange.CHANGED: "Changed failures: same outcome, other failure kind, hop or cause",
    CellChange.REMOVED: "Cells only in A: B no longer routes these",
    CellChange.ADDED: "Cells only in B",
}

MAX_LEDGER_ROWS = 5000
"""Ledger rows written into the page, failures first; a larger ledger is cut, and the page notes it."""


@dataclass(frozen=True)
class LedgerView:
    """One ledger row as the page shows it."""

    source: str
    source_file: str
    destination: str
    route: str
    sop_class: str
    transfer_syntax: str
    state: str
    failure_kind: str
    hop: str
    reason: str
    attempts: int
    sop_instance_uid: str


def _environment() -> Environment:
    environment = Environment(
        loader=PackageLoader("simulator.report", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    environment.filters["uid_name"] = describe_uid

    return environment


def render_run_report(run: RunData) -> str:
    """Return the HTML report of one run."""
    rows = sorted(run.rows, key=lambda r: (r.delivered, r.source, r.destination, r.source_file))
    context = {
        **_page_context(f"Rehearsal {run.run_id}"),
        "run": _run_context(run),
        "grid": run_grid(build_matrix(run.rows)),
        "timeline": build_timeline(run),
        "failures": build_failure_groups(run),
        "integrity": [_integrity_context(r) for r in run.rows if r.intact is False],
        "ledger": [_ledger_view(r) for r in rows[:MAX_LEDGER_ROWS]],
        "ledger_total": len(rows),
        "expectations": run.summary.get("expectations") or [],
        "spool_left": run.summary.get("spool_left") or [],
    }

    return _environment().get_template("report.html.j2").render(context)


def render_diff_report(diff: RunDiff) -> str:
    """Return the HTML report of run B compared with run A."""
    context = {
        **_page_context(f"Rehearsal {diff.run_b.run_id} against {diff.run_a.run_id}"),
        "diff": diff,
        "run_a": _run_context(diff.run_a),
        "run_b": _run_context(diff.run_b),
        "verdict": verdict(diff),
        "matching": matching_text(diff),
        "sections": [(str(change), title, diff.cells_with(change))
                     for change, title in _SECTION_TITLES.items() if diff.cells_with(change)],
        "unchanged": len(diff.cells_with(CellChange.UNCHANGED)),
        "grid": diff_grid(diff.cells),
        "lost": [pair_record(p) for p in diff.lost],
        "gained": [pair_record(p) for p in diff.gained],
        "integrity_appeared": [pair_record(p) for p in diff.integrity_appeared],
        "integrity_disappeared": [pair_record(p) for p in diff.integrity_disappeared],
        "timing": timing_rows(diff.timing),
        "timing_flags": [t.flagged for t in diff.timing],
        "config": diff.config_changes,
    }

    return _environment().get_template("diff.html.j2").render(context)


def _page_context(title: str) -> dict[str, Any]:
    return {"title": title, "version": __version__,
            "generated": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")}


def _run_context(run: RunData) -> dict[str, Any]:
    summary = run.summary
    delivered = sum(1 for r in run.rows if r.delivered)
    return {
        "path": str(run.path), "run_id": run.run_id, "format_version": run.format_version,
        "site": summary.get("site", ""), "scenario": summary.get("scenario", ""),
        "seed": summary.get("seed", ""), "outcome": summary.get("outcome", ""),
        "rows": len(run.rows), "delivered": delivered, "not_delivered": len(run.rows) - delivered,
        "notes": run.notes,
    }


def _ledger_view(row: LedgerEntry) -> LedgerView:
    state = row.state
    if row.state == "delivered" and row.intact is False:
        state = "not intact"

    return LedgerView(
        source=row.source, source_file=row.source_file, destination=row.destination,
        route=f"{row.source} -> {row.destination}",
        sop_class=describe_uid(row.sop_class_uid),
        transfer_syntax=describe_uid(row.transfer_syntax_uid), state=state,
        failure_kind=row.failure_kind or "", hop=row.failure_hop or "",
        reason=row.failure_reason or "", attempts=row.attempts,
        sop_instance_uid=row.sop_instance_uid,
    )


def _integrity_context(row: LedgerEntry) -> dict[str, Any]:
    integrity = row.integrity or {}
    return {
        "sop_instance_uid": row.sop_instance_uid, "destination": row.destination,
        "source_file": row.source_file, "route": f"{row.source} -> {row.destination}",
        "unexplained": integrity.get("unexplained", []),
        "pixel_data": integrity.get("pixel_data", ""),
    }
