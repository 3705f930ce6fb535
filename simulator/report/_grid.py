"""The route matrix as a grid: routes down, SOP class and transfer syntax across."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from simulator.compare.matrix import Cell, CellChange, CellDiff, CellKey
from simulator.compare.render import cell_outcome
from simulator.conformance.names import describe_uid

_CellT = TypeVar("_CellT")
_CHANGE_MARKS = {
    CellChange.REGRESSION: "\N{BLACK DOWN-POINTING TRIANGLE}",
    CellChange.FIX: "\N{BLACK UP-POINTING TRIANGLE}",
    CellChange.CHANGED: "\N{NOT EQUAL TO}",
    CellChange.ADDED: "+",
    CellChange.REMOVED: "\N{MINUS SIGN}",
}


@dataclass(frozen=True)
class GridCell:
    """One coloured square: its CSS class, its text and its tooltip."""

    css: str
    text: str
    tooltip: str
    route: str
    sop_class: str
    transfer_syntax: str


@dataclass
class GridRow:
    route: str
    cells: list[GridCell]


@dataclass
class Grid:
    """Column groups (SOP class, span), column labels (transfer syntax) and rows."""

    groups: list[tuple[str, int]] = field(default_factory=list)
    group_labels: list[str] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)
    rows: list[GridRow] = field(default_factory=list)


def run_grid(cells: dict[CellKey, Cell]) -> Grid:
    """Lay out one run's matrix: a cell's colour is its status."""
    return _layout(cells, _run_cell)


def diff_grid(cells: list[CellDiff]) -> Grid:
    """Lay out a comparison: a cell's colour is its change from A to B."""
    return _layout({c.key: c for c in cells}, _diff_cell)


def _layout(cells: dict[CellKey, _CellT],
            make: Callable[[CellKey, _CellT | None], GridCell]) -> Grid:
    columns = sorted({(describe_uid(k[2]), describe_uid(k[3]), k[2], k[3]) for k in cells})
    routes = sorted({(k[0], k[1]) for k in cells})
    grid = Grid()
    for sop_class, _, _, _ in columns:
        if grid.groups and grid.groups[-1][0] == sop_class:
            grid.groups[-1] = (sop_class, grid.groups[-1][1] + 1)
        else:
            grid.groups.append((sop_class, 1))
    grid.group_labels = [_short_sop_class(name) for name, _ in grid.groups]
    grid.columns = [transfer_syntax for _, transfer_syntax, _, _ in columns]
    for source, destination in routes:
        row = GridRow(f"{source} -> {destination}", [])
        for _, _, sop_class_uid, transfer_syntax_uid in columns:
            key = (source, destination, sop_class_uid, transfer_syntax_uid)
            row.cells.append(make(key, cells.get(key)))
        grid.rows.append(row)

    return grid


def _short_sop_class(keyword: str) -> str:
    """Drop the ``ImageStorage`` or ``Storage`` ending, and allow line breaks between words.

    A zero-width space before each inner capital lets a narrow column header
    wrap ``UltrasoundMultiFrame`` instead of widening every cell under it.
    """
    for ending in ("ImageStorage", "Storage"):
        if keyword.endswith(ending) and len(keyword) > len(ending):
            keyword = keyword.removesuffix(ending)
            break

    return re.sub(r"(?<=[a-z])(?=[A-Z])", "\u200b", keyword)


def _names(key: CellKey) -> tuple[str, str, str]:
    return f"{key[0]} -> {key[1]}", describe_uid(key[2]), describe_uid(key[3])


def _run_cell(key: CellKey, cell: Cell | None) -> GridCell:
    route, sop_class, transfer_syntax = _names(key)
    if cell is None:
        return GridCell("empty", "", f"{route}\n{sop_class}, {transfer_syntax}: no instances",
                        route, sop_class, transfer_syntax)
    counts = (f"{cell.delivered} delivered, {cell.failed} failed, "
              f"{cell.never_attempted} never attempted")
    lines = [route, f"{sop_class}, {transfer_syntax}", counts]
    lines += _failure_lines(cell)

    return GridCell(cell.status, f"{cell.delivered}/{cell.rows}", "\n".join(lines), route,
                    sop_class, transfer_syntax)


def _failure_lines(cell: Cell) -> list[str]:
    lines = []
    for (kind, hop), count in cell.failures.most_common():
        lines.append(f"{count} x {kind}" + (f" on {hop}" if hop else ""))
        lines += [f"  {reason}" for reason in cell.reasons.get((kind, hop), [])]

    return lines


def _diff_cell(key: CellKey, cell: CellDiff | None) -> GridCell:
    route, sop_class, transfer_syntax = _names(key)
    if cell is None:
        return GridCell("empty", "", f"{route}\n{sop_class}, {transfer_syntax}: in neither run",
                        route, sop_class, transfer_syntax)
    lines = [route, f"{sop_class}, {transfer_syntax}", f"change: {cell.change}",
             f"A: {cell_outcome(cell.a, True)}", f"B: {cell_outcome(cell.b, True)}"]
    if cell.config_changes:
        lines.append("configuration changes on this route: " + ", ".join(cell.config_changes))
    # The cell shows B; a mark shows which way it moved, and the tooltip has A.
    text = f"{_CHANGE_MARKS.get(cell.change, '')}{_fraction(cell.b or cell.a)}"

    latest = cell.b or cell.a
    status = "" if latest is None else f" status-{latest.status}"

    return GridCell(f"change-{cell.change}{status}", text, "\n".join(lines), route, sop_class,
                    transfer_syntax)


def _fraction(cell: Cell | None) -> str:
    return "-" if cell is None else f"{cell.delivered}/{cell.rows}"
