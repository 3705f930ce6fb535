"""Print a check result as rich tables: one matrix per source modality.

Rows are (SOP class, transfer syntax) pairs, columns are routes. A cell
that fails or is at risk names the hop and the failure kind, and points
to a numbered footnote with the full reason.
"""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from simulator.capability.model import (
    Cell,
    CheckResult,
    HopPrediction,
    Outcome,
    PredictedFailure,
    Route,
)
from simulator.conformance.names import describe_uid

_STYLES = {
    Outcome.DELIVERED: "green",
    Outcome.FAILED: "bold red",
    Outcome.AT_RISK: "yellow",
    Outcome.NEVER_ATTEMPTED: "dim",
}


class _Footnotes:
    def __init__(self) -> None:
        self.texts: dict[str, int] = {}

    def number(self, text: str) -> int:
        return self.texts.setdefault(text, len(self.texts) + 1)


def print_check(result: CheckResult, console: Console) -> None:
    """Print the matrices, the footnotes, the changes routers make, the notes and a summary."""
    footnotes = _Footnotes()
    cells = result.cells
    for source in dict.fromkeys(cell.route.source for cell in cells):
        console.print(_matrix(source, [c for c in cells if c.route.source == source], footnotes))
    if footnotes.texts:
        console.print("Reasons:", style="bold")
        for text, number in footnotes.texts.items():
            console.print(f"  [{number}] {text}", highlight=False, markup=False)
    changes = dict.fromkeys(change for cell in cells for change in cell.changes)
    if changes:
        console.print("Changes routers make on the way:", style="bold")
        for change in changes:
            console.print(f"  - {change}", highlight=False, markup=False)
    hop_notes = _hop_notes(result)
    if hop_notes:
        console.print("Hops:", style="bold")
        for note in hop_notes:
            console.print(f"  - {note}", highlight=False, markup=False)
    if result.notes:
        console.print("Notes:", style="bold")
        for note in result.notes:
            console.print(f"  - {note}", highlight=False, markup=False)
    console.print(_summary(result), highlight=False)


def _matrix(source: str, cells: list[Cell], footnotes: _Footnotes) -> Table:
    routes: list[Route] = list(dict.fromkeys(cell.route for cell in cells))
    pairs = list(dict.fromkeys((c.sop_class_uid, c.transfer_syntax_uid) for c in cells))
    table = Table(title=f"Routes from {source}", show_lines=True, title_justify="left")
    table.add_column("SOP class / transfer syntax", overflow="fold")
    for route in routes:
        table.add_column(_route_header(route), overflow="fold")
    by_key = {(c.route, c.sop_class_uid, c.transfer_syntax_uid): c for c in cells}
    for sop_class, syntax in pairs:
        row: list[Text | str] = [f"{describe_uid(sop_class)}\n{describe_uid(syntax)}"]
        for route in routes:
            cell = by_key.get((route, sop_class, syntax))
            row.append(_cell_text(cell, footnotes) if cell else Text("-", style="dim"))
        table.add_row(*row)

    return table


def _route_header(route: Route) -> str:
    lines = [" > ".join(route.nodes or (route.source, route.destination))]
    if route.rule_sets:
        lines.append(", ".join(f"{r}: {s or 'rules'}" for r, s in route.rule_sets))
    if route.condition:
        lines.append(f"if {route.condition}")

    return "\n".join(lines)


def _cell_text(cell: Cell, footnotes: _Footnotes) -> Text:
    outcome = cell.outcome
    total = len(cell.predictions)
    if outcome == Outcome.DELIVERED:
        label = "ok" if total == 1 else f"ok ({total})"
        return Text(label, style=_STYLES[outcome])
    count = cell.count(outcome)
    label = {Outcome.FAILED: "FAIL", Outcome.AT_RISK: "at risk",
             Outcome.NEVER_ATTEMPTED: "not sent"}[outcome]
    text = Text(f"{label} {count}/{total}" if total > 1 else label, style=_STYLES[outcome])
    for prediction in cell.predictions:
        failures = [prediction.failure] if prediction.failure else list(prediction.risks)
        for failure in failures:
            number = footnotes.number(failure.reason)
            short = f"\n{failure.hop or 'routing'}: {_short(failure)} [{number}]"
            if short not in text.plain:
                text.append(short)

    return text


def _short(failure: PredictedFailure) -> str:
    """Return the failure kind with its key evidence: cause, A-ASSOCIATE-RJ codes, status, timeout."""
    detail = failure.detail
    if "cause" in detail:
        return f"{failure.failure_kind} ({detail['cause']})"
    if {"result", "source", "reason"} <= detail.keys():
        return f"{failure.failure_kind} {detail['result']}/{detail['source']}/{detail['reason']}"
    if "status" in detail:
        return f"{failure.failure_kind} {detail['status']}"
    if "timeout_s" in detail:
        return f"{failure.failure_kind} ({detail['timeout_s']} s)"

    return str(failure.failure_kind)


def _hop_notes(result: CheckResult) -> list[str]:
    """Return the hops' notes once each, and per link the time budget of its largest data set."""
    notes: dict[str, None] = {}
    largest: dict[str, HopPrediction] = {}
    for prediction in result.predictions:
        for hop in prediction.hops:
            notes.update(dict.fromkeys(hop.notes))
            if hop.budget is None:
                continue
            known = largest.get(hop.link)
            if known is None or (hop.dataset_bytes or 0) > (known.dataset_bytes or 0):
                largest[hop.link] = hop
    budgets = [f"largest data set: {hop.budget}" for hop in largest.values() if hop.budget]

    return [*budgets, *notes]


def _summary(result: CheckResult) -> str:
    counts = {o: sum(1 for p in result.predictions if p.outcome == o) for o in Outcome}
    parts = [f"{counts[o]} {o}" for o in Outcome if counts[o]]
    verdict = "failures predicted" if result.failure_predicted else "no failure predicted"

    return (f"{result.site} ({result.mode}): {len(result.predictions)} deliveries checked on "
            f"{len(result.routes)} routes: {', '.join(parts) or 'none'}; {verdict}.")
