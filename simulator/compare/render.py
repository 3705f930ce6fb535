"""Print a run comparison: rich tables for a terminal, Markdown for a change ticket."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

from rich.console import Console
from rich.table import Table

from simulator.compare.config import ConfigChange
from simulator.compare.diff import RunDiff
from simulator.compare.matching import RowPair
from simulator.compare.matrix import Cell, CellChange, CellDiff
from simulator.compare.reader import LedgerEntry, RunData
from simulator.compare.timing import Stats, TimingChange

T = TypeVar("T")

MAX_LISTED = 20
"""Rows per section in the terminal and Markdown; ``--json`` lists everything."""

_SECTIONS = (
    (CellChange.REGRESSION, "Regressions", "red"),
    (CellChange.FIX, "Fixes", "green"),
    (CellChange.CHANGED, "Changed failures (same outcome, other failure kind, hop or cause)",
     "yellow"),
    (CellChange.REMOVED, "Cells only in A (B no longer routes these)", "magenta"),
    (CellChange.ADDED, "Cells only in B", "cyan"),
)


def cell_outcome(cell: Cell | None, with_reason: bool = False, multiline: bool = False) -> str:
    """Return a short outcome such as ``failed 0/2: no-accepted-context on router->viewer``.

    ``with_reason`` adds the failure causes, or the first reason when the
    run recorded no cause. ``multiline`` puts each part on its own line,
    for a narrow terminal column.
    """
    if cell is None:
        return "no rows"
    status = f"{cell.status} {cell.delivered}/{cell.rows}"
    failures = [f"{kind} on {hop}" if hop else kind for (kind, hop) in cell.failures]
    explanation = ""
    if with_reason:
        # The cause (from the failure detail) is what a changed cell differs in.
        causes = sorted({c for found in cell.causes.values() for c in found})
        explanation = "; ".join(causes) or cell.first_reason()
    if multiline:
        return "\n".join([status, *failures, *([explanation] if explanation else [])])
    text = f"{status}: {', '.join(failures)}" if failures else status

    return f"{text} ({explanation})" if explanation else text


def cell_reason(cell: CellDiff) -> str:
    """Return the first failure reason of the cell in B, or else in A."""
    for side in (cell.b, cell.a):
        if side is not None and side.first_reason():
            return side.first_reason()

    return ""


def count_of(count: int, singular: str, plural: str) -> str:
    """Return ``1 cell`` or ``2 cells``."""
    return f"{count} {singular if count == 1 else plural}"


def verdict(diff: RunDiff) -> str:
    if not diff.has_regression:
        return "B has no regression against A."
    parts = []
    if diff.regression_cells:
        parts.append(count_of(len(diff.regression_cells), "matrix cell got worse",
                              "matrix cells got worse"))
    if diff.lost:
        parts.append(count_of(len(diff.lost), "delivery made in A is not made in B",
                              "deliveries made in A are not made in B"))
    if diff.integrity_appeared:
        parts.append(count_of(len(diff.integrity_appeared), "new integrity finding",
                              "new integrity findings"))

    return "B has regressions against A: " + "; ".join(parts) + "."


def matching_text(diff: RunDiff) -> str:
    m = diff.matching
    method = {"sop-instance-uid": "by SOP Instance UID and destination",
              "fallback": "by the fallback key (source, source file, destination, occurrence), "
                          "because the SOP Instance UIDs differ",
              "mixed": "by SOP Instance UID where the UIDs agree, else by the fallback key "
                       "(source, source file, destination, occurrence)",
              "none": "no row of A pairs with a row of B"}[m.method]

    return (f"Instances matched {method}: {m.by_uid} by UID, {m.by_fallback} by fallback, "
            f"{m.only_a} only in A, {m.only_b} only in B.")


def _run_line(label: str, run: RunData) -> str:
    delivered = sum(1 for r in run.rows if r.delivered)
    return (f"{label}: {run.path} (run {run.run_id}, format {run.format_version}): "
            f"{delivered} of {len(run.rows)} deliveries made")


def _pair_outcome(row: LedgerEntry | None) -> str:
    if row is None:
        return "no row (not routed there)"
    if row.delivered:
        return "delivered"
    if row.state == "delivered" and row.intact is False:
        return "delivered, not intact"
    if row.failure_kind:
        return f"{row.state}: {row.failure_kind} on {row.failure_hop}"

    return row.state


def _stats_text(stats: Stats | None) -> str:
    if stats is None:
        return "-"
    return f"{stats.median_ms:.1f} / {stats.p95_ms:.1f} (n={stats.samples})"


def _pct_text(value: float | None) -> str:
    if value is None:
        return "-"
    if value == float("inf"):
        return "new"
    return f"{value:+.0f} %"


def _limited(items: list[T]) -> tuple[list[T], int]:
    return items[:MAX_LISTED], max(0, len(items) - MAX_LISTED)


# Terminal ------------------------------------------------------------------


def print_diff(diff: RunDiff, console: Console) -> None:
    """Print the comparison as tables, most important first."""
    console.print(_run_line("A", diff.run_a), highlight=False, markup=False)
    console.print(_run_line("B", diff.run_b), highlight=False, markup=False)
    console.print(matching_text(diff), highlight=False, markup=False)
    for note in diff.notes:
        console.print(f"Note: {note}", highlight=False, markup=False)
    for change, title, colour in _SECTIONS:
        cells = diff.cells_with(change)
        if cells:
            console.print(_cell_table(cells, f"{title}: {len(cells)}", colour))
    unchanged = len(diff.cells_with(CellChange.UNCHANGED))
    console.print(f"{count_of(unchanged, 'matrix cell', 'matrix cells')} unchanged.",
                  highlight=False)
    _print_pairs(console, "Deliveries made in A, not in B", diff.lost)
    _print_pairs(console, "Deliveries made in B, not in A", diff.gained)
    _print_pairs(console, "Integrity findings that appeared in B", diff.integrity_appeared)
    _print_pairs(console, "Integrity findings that disappeared in B", diff.integrity_disappeared)
    _print_timing(console, diff)
    _print_config(console, diff.config_changes)
    style = "bold red" if diff.has_regression else "bold green"
    console.print(verdict(diff), style=style, highlight=False, markup=False)


def _cell_table(cells: list[CellDiff], title: str, colour: str) -> Table:
    table = Table(title=title, title_style=f"bold {colour}", title_justify="left",
                  show_lines=True)
    table.add_column("route, SOP class,\ntransfer syntax", no_wrap=True)
    for header in ("A", "B", "config changes on route"):
        table.add_column(header, overflow="fold")
    listed, more = _limited(cells)
    for cell in listed:
        # A changed cell has the same status in both runs: its causes tell them apart.
        with_reason = cell.change == CellChange.CHANGED
        changes = [path.replace(": ", ":\n", 1) for path in cell.config_changes]
        table.add_row(f"{cell.route}\n{cell.sop_class}\n{cell.transfer_syntax}",
                      cell_outcome(cell.a, with_reason, multiline=True),
                      cell_outcome(cell.b, with_reason, multiline=True),
                      "\n".join(changes) or "-")
    if more:
        table.caption = f"... and {more} more (rehearse diff --json lists all)"

    return table


def _print_pairs(console: Console, title: str, pairs: list[RowPair]) -> None:
    if not pairs:
        console.print(f"{title}: none.", highlight=False, markup=False)
        return
    table = Table(title=f"{title}: {len(pairs)}", title_justify="left")
    for header in ("source, file", "destination", "A", "B", "matched by"):
        table.add_column(header, overflow="fold")
    listed, more = _limited(pairs)
    for pair in listed:
        row = pair.any_row
        table.add_row(f"{row.source}, {row.source_file}", row.destination,
                      _pair_outcome(pair.a), _pair_outcome(pair.b), str(pair.method or "-"))
    if more:
        table.caption = f"... and {more} more (rehearse diff --json lists all)"
    console.print(table)


def _print_timing(console: Console, diff: RunDiff) -> None:
    flagged = diff.flagged_timing
    if not diff.timing:
        console.print("Timing: no measures (neither run has timing events).", markup=False)
        return
    if not flagged:
        console.print(f"Timing: no median or 95th percentile moved by more than "
                      f"{diff.threshold_pct:g} % ({len(diff.timing)} measures).",
                      highlight=False, markup=False)
        return
    table = Table(title=f"Timing moves beyond {diff.threshold_pct:g} %: {len(flagged)} of "
                        f"{len(diff.timing)} measures (ms, median / p95)",
                  title_justify="left")
    for header in ("measure", "link or route", "A", "B", "median", "p95"):
        table.add_column(header, overflow="fold")
    for change in _limited(flagged)[0]:
        table.add_row(change.measure, change.scope, _stats_text(change.a), _stats_text(change.b),
                      _pct_text(change.median_change_pct), _pct_text(change.p95_change_pct))
    console.print(table)


def _print_config(console: Console, changes: list[ConfigChange]) -> None:
    if not changes:
        console.print("Configuration: topology and scenario copies are the same.", markup=False)
        return
    table = Table(title=f"Configuration changes: {len(changes)}", title_justify="left",
                  show_lines=True)
    for header in ("file", "change", "changed matrix cells on the nodes it concerns"):
        table.add_column(header, overflow="fold")
    for change in _limited(changes)[0]:
        table.add_row(change.document, change.describe(), _related_text(change))
    console.print(table)


def _related_text(change: ConfigChange) -> str:
    if not change.nodes:
        return "concerns the whole run"
    if not change.related_cells:
        return f"none (concerns {', '.join(sorted(change.nodes))})"
    listed, more = change.related_cells[:5], len(change.related_cells) - 5

    return "\n".join(listed) + (f"\n... and {more} more" if more > 0 else "")


# Markdown ------------------------------------------------------------------


def diff_markdown(diff: RunDiff) -> str:
    """Return the comparison as Markdown, for a change ticket."""
    lines = [f"# Rehearsal comparison: {diff.run_b.run_id} against {diff.run_a.run_id}", "",
             f"**{verdict(diff)}**", "",
             f"- {_run_line('A', diff.run_a)}", f"- {_run_line('B', diff.run_b)}",
             f"- {matching_text(diff)}"]
    lines += [f"- Note: {note}" for note in diff.notes]
    for change, title, _ in _SECTIONS:
        cells = diff.cells_with(change)
        if cells:
            lines += ["", f"## {title}: {len(cells)}", ""] + _cell_rows_md(cells)
    unchanged = len(diff.cells_with(CellChange.UNCHANGED))
    lines += ["", f"{count_of(unchanged, 'matrix cell', 'matrix cells')} unchanged."]
    for title, pairs in (("Deliveries made in A, not in B", diff.lost),
                         ("Deliveries made in B, not in A", diff.gained),
                         ("Integrity findings that appeared in B", diff.integrity_appeared),
                         ("Integrity findings that disappeared in B",
                          diff.integrity_disappeared)):
        lines += ["", f"## {title}: {len(pairs)}", ""] + _pair_rows_md(pairs)
    lines += ["", "## Timing", ""] + _timing_md(diff)
    lines += ["", "## Configuration changes", ""] + _config_md(diff.config_changes)

    return "\n".join(lines) + "\n"


def _md(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", "<br>")


def _table_md(headers: Iterable[str], rows: Iterable[Iterable[object]]) -> list[str]:
    headers = list(headers)
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_md(v) for v in row) + " |" for row in rows]

    return lines


def _more_md(more: int) -> list[str]:
    return ["", f"... and {more} more (`rehearse diff --json` lists all)."] if more else []


def _cell_rows_md(cells: list[CellDiff]) -> list[str]:
    listed, more = _limited(cells)
    rows = [(c.route, f"{c.sop_class}, {c.transfer_syntax}", cell_outcome(c.a, True),
             cell_outcome(c.b, True), ", ".join(c.config_changes) or "-")
            for c in listed]

    return _table_md(("route", "SOP class, transfer syntax", "A", "B",
                      "config changes on route"), rows) + _more_md(more)


def _pair_rows_md(pairs: list[RowPair]) -> list[str]:
    if not pairs:
        return ["None."]
    listed, more = _limited(pairs)
    rows = [(f"{p.any_row.source}, {p.any_row.source_file}", p.any_row.destination,
             _pair_outcome(p.a), _pair_outcome(p.b), p.method or "-") for p in listed]

    return _table_md(("source, file", "destination", "A", "B", "matched by"), rows) \
        + _more_md(more)


def _timing_md(diff: RunDiff) -> list[str]:
    if not diff.timing:
        return ["No measures: neither run has timing events."]
    flagged = diff.flagged_timing
    intro = (f"{len(flagged)} of {len(diff.timing)} measures moved by more than "
             f"{diff.threshold_pct:g} % (median / 95th percentile in ms, n = samples).")
    if not flagged:
        return [intro]
    rows = [(t.measure, t.scope, _stats_text(t.a), _stats_text(t.b),
             _pct_text(t.median_change_pct), _pct_text(t.p95_change_pct))
            for t in _limited(flagged)[0]]

    return [intro, ""] + _table_md(("measure", "link or route", "A", "B", "median", "p95"), rows)


def _config_md(changes: list[ConfigChange]) -> list[str]:
    if not changes:
        return ["The topology and scenario copies are the same."]
    rows = [(c.document, c.describe(), _related_text(c)) for c in changes]

    return _table_md(("file", "change", "changed matrix cells on the nodes it concerns"), rows)


def timing_rows(changes: list[TimingChange]) -> list[tuple[str, ...]]:
    """Return printable rows of timing changes, for the HTML report."""
    return [(t.measure, t.scope, _stats_text(t.a), _stats_text(t.b),
             _pct_text(t.median_change_pct), _pct_text(t.p95_change_pct)) for t in changes]


__all__ = ["cell_outcome", "cell_reason", "diff_markdown", "matching_text",
           "print_diff", "timing_rows", "verdict"]
