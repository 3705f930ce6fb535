"""Failures grouped by kind and hop, each with the PDUs of an association that shows it.

For a group's example instances, the association is found from the events
that name both the instance and an association on the failing hop
(``dimse.request``, ``dimse.not_sent``, ``dimse.no_response``). A failure
before any DIMSE message, such as a rejected association or a refused
connection, has no such event. For it the page shows the association on
that hop that started last before the ledger row's final state, and notes
that it was found by time.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from simulator.compare.reader import LedgerEntry, RunData
from simulator.conformance.names import describe_uid

MAX_EXAMPLES = 8
MAX_EXCHANGES = 2
"""Associations shown per failure group."""
CONTEXT_LINES = 4
"""PDU lines kept before and after the lines about the failing instance."""

_PDU_NAMES = {
    "associate_rq": "A-ASSOCIATE-RQ", "associate_ac": "A-ASSOCIATE-AC",
    "associate_rj": "A-ASSOCIATE-RJ", "p_data_tf": "P-DATA-TF", "release_rq": "A-RELEASE-RQ",
    "release_rp": "A-RELEASE-RP", "abort": "A-ABORT",
}
_INSTANCE_EVENTS = ("dimse.request", "dimse.not_sent", "dimse.no_response", "dimse.response")
_WIRE_EVENTS = ("link.pdu", "link.pdu_error", "link.connection_opened", "link.connection_closed",
                "link.upstream_connect_failed")


@dataclass(frozen=True)
class PduLine:
    """One row of an exchange; ``full_detail`` is the tooltip when ``detail`` is shortened."""

    t_ms: float | None
    direction: str
    name: str
    detail: str
    css: str = ""
    full_detail: str = ""


@dataclass
class Exchange:
    """The wire record of one association, for one example instance."""

    assoc_id: str
    link: str
    found_by: str
    sop_instance_uid: str
    sop_class_uid: str
    lines: list[PduLine] = field(default_factory=list)


@dataclass
class FailureGroup:
    failure_kind: str
    hop: str
    rows: list[LedgerEntry]
    exchanges: list[Exchange] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.rows)

    @property
    def side(self) -> str:
        return str((self.rows[0].failure or {}).get("side") or "")

    @property
    def permanent(self) -> object:
        return (self.rows[0].failure or {}).get("permanent")

    @property
    def reasons(self) -> list[str]:
        seen: list[str] = []
        for row in self.rows:
            if row.failure_reason and row.failure_reason not in seen:
                seen.append(row.failure_reason)

        return seen[:5]

    @property
    def examples(self) -> list[LedgerEntry]:
        return self.rows[:MAX_EXAMPLES]


def build_failure_groups(run: RunData) -> list[FailureGroup]:
    """Group the failed rows by (failure kind, hop), largest first, with PDU exchanges."""
    groups: dict[tuple[str, str], list[LedgerEntry]] = defaultdict(list)
    for row in run.rows:
        if not row.delivered:
            groups[(row.failure_kind or row.state, row.failure_hop or "")].append(row)
    result = [FailureGroup(kind, hop, rows) for (kind, hop), rows in
              sorted(groups.items(), key=lambda item: (-len(item[1]), item[0]))]
    if result and run.has_events():
        _attach_exchanges(run, result)

    return result


def _attach_exchanges(run: RunData, groups: list[FailureGroup]) -> None:
    by_instance, starts = _association_index(run)
    selected: dict[str, Exchange] = {}
    for group in groups:
        for row in group.rows:
            if len(group.exchanges) >= MAX_EXCHANGES:
                break
            found = _find_association(row, group.hop, by_instance, starts)
            if found is None or found[0] in {e.assoc_id for e in group.exchanges}:
                continue
            exchange = Exchange(found[0], group.hop, found[1], row.sop_instance_uid,
                                row.sop_class_uid)
            group.exchanges.append(exchange)
            selected.setdefault(found[0], exchange)
    _fill_exchanges(run, groups, set(selected))


def _association_index(run: RunData) -> tuple[dict[tuple[str, str], str],
                                              dict[str, list[tuple[float, str]]]]:
    by_instance: dict[tuple[str, str], str] = {}
    starts: dict[str, list[tuple[float, str]]] = defaultdict(list)
    for event in run.iter_events((*_INSTANCE_EVENTS, "association.requested")):
        assoc_id, link = event.get("assoc_id"), event.get("link")
        if not assoc_id or not link:
            continue
        if event["kind"] == "association.requested":
            if isinstance(event.get("t_mono"), (int, float)):
                starts[link].append((float(event["t_mono"]), assoc_id))
        elif event.get("sop_instance_uid"):
            by_instance[(event["sop_instance_uid"], link)] = assoc_id
    for link_starts in starts.values():
        link_starts.sort()

    return by_instance, starts


def _find_association(row: LedgerEntry, hop: str, by_instance: dict[tuple[str, str], str],
                      starts: dict[str, list[tuple[float, str]]]) -> tuple[str, str] | None:
    assoc_id = by_instance.get((row.sop_instance_uid, hop))
    if assoc_id is not None:
        return assoc_id, "instance"
    if row.finished_mono is None:
        return None
    before = [a for t, a in starts.get(hop, []) if t <= row.finished_mono]

    return (before[-1], "time") if before else None


def _fill_exchanges(run: RunData, groups: list[FailureGroup], assoc_ids: set[str]) -> None:
    records: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for event in run.iter_events(_WIRE_EVENTS):
        if event.get("assoc_id") in assoc_ids:
            records[event["assoc_id"]].append(event)
    for group in groups:
        for exchange in group.exchanges:
            events = records[exchange.assoc_id]
            proposed = _proposed_contexts(events)
            lines = [_pdu_line(e, events, proposed, exchange.sop_class_uid) for e in events]
            exchange.lines = _around(lines, events, exchange.sop_instance_uid)


def _proposed_contexts(events: list[dict[str, Any]]) -> dict[Any, str]:
    """Map each presentation context ID of the A-ASSOCIATE-RQ to its abstract syntax."""
    for event in events:
        if event.get("kind") == "link.pdu" and event.get("pdu") == "associate_rq":
            return {c.get("context_id"): str(c.get("abstract_syntax"))
                    for c in event.get("presentation_contexts") or []}

    return {}


def _around(lines: list[PduLine], events: list[dict[str, Any]], uid: str) -> list[PduLine]:
    """Keep the first and last lines and those near the instance's own commands."""
    keep: set[int] = set(range(min(CONTEXT_LINES, len(lines))))
    keep |= set(range(max(0, len(lines) - CONTEXT_LINES), len(lines)))
    for index, event in enumerate(events):
        if event.get("affected_sop_instance_uid") == uid:
            keep |= set(range(max(0, index - CONTEXT_LINES),
                              min(len(lines), index + CONTEXT_LINES + 1)))
    selected_lines: list[PduLine] = []
    skipped = 0
    for index, line in enumerate(lines):
        if index in keep:
            if skipped:
                selected_lines.append(PduLine(None, "", "...", f"{skipped} PDU(s) not shown",
                                              "gap"))
                skipped = 0
            selected_lines.append(line)
        else:
            skipped += 1

    return selected_lines


def _pdu_line(event: dict[str, Any], all_events: list[dict[str, Any]],
              proposed: dict[Any, str], sop_class_uid: str) -> PduLine:
    t0 = all_events[0].get("t_mono") if all_events else None
    t = event.get("t_mono")
    t_ms = (t - t0) * 1000 if isinstance(t, (int, float)) and isinstance(t0, (int, float)) \
        else None
    arrow = {"upstream": "\N{RIGHTWARDS ARROW}", "downstream": "\N{LEFTWARDS ARROW}"}.get(
        str(event.get("direction")), "")
    kind = event.get("kind")
    if kind == "link.pdu":
        name = _PDU_NAMES.get(str(event.get("pdu")), str(event.get("pdu")))
        css = "bad" if event.get("pdu") in ("abort", "associate_rj") else ""
        if event.get("command"):
            name = f"{name} {event['command']}"
            if event.get("status_category") not in (None, "success"):
                css = "bad"
        short, full = _pdu_detail(event, proposed, sop_class_uid)
        return PduLine(t_ms, arrow, name, short, css, full)
    detail = ", ".join(f"{k}={event[k]}" for k in ("closed_by", "close_kind", "close_reason",
                                                   "error", "error_kind", "detail")
                       if event.get(k) is not None)
    css = "bad" if kind in ("link.pdu_error", "link.upstream_connect_failed") else "conn"

    return PduLine(t_ms, "", str(kind), detail, css, detail)


def _pdu_detail(event: dict[str, Any], proposed: dict[Any, str],
                sop_class_uid: str) -> tuple[str, str]:
    """Return the detail of a PDU, and a longer form when the short one leaves contexts out.

    An association can carry dozens of presentation contexts; the short form
    lists only those for the failing instance's SOP class.
    """
    pdu = event.get("pdu")
    contexts = event.get("presentation_contexts") or []
    if pdu == "associate_rq":
        head = (f"{event.get('calling_ae')} to {event.get('called_ae')}, max PDU "
                f"{_max_length(event)}, {len(contexts)} presentation context(s)")
        mine = [c for c in contexts if c.get("abstract_syntax") == sop_class_uid]
        return (f"{head}; for {describe_uid(sop_class_uid)}: {_rq_contexts(mine) or 'none'}",
                f"{head}: {_rq_contexts(contexts)}")
    if pdu == "associate_ac":
        accepted = sum(1 for c in contexts if c.get("result") == 0)
        head = (f"max PDU {_max_length(event)}, {accepted} of {len(contexts)} context(s) "
                "accepted")
        mine = [c for c in contexts if proposed.get(c.get("context_id")) == sop_class_uid]
        return (f"{head}; for {describe_uid(sop_class_uid)}: {_ac_contexts(mine) or 'none'}",
                f"{head}: {_ac_contexts(contexts)}")
    if pdu in ("associate_rj", "abort"):
        fields = ("result_name", "source_name", "reason_name")
        text = ", ".join(str(event[f]) for f in fields if event.get(f) is not None)
        return text, text
    text = _command_detail(event) if event.get("command") else ""

    return text, text


def _rq_contexts(contexts: list[dict[str, Any]]) -> str:
    return "; ".join(
        f"{c.get('context_id')} {describe_uid(str(c.get('abstract_syntax')))} "
        f"[{', '.join(describe_uid(str(t)) for t in c.get('transfer_syntaxes') or [])}]"
        for c in contexts)


def _ac_contexts(contexts: list[dict[str, Any]]) -> str:
    return "; ".join(
        f"{c.get('context_id')} {c.get('result_name')}"
        + (f" ({describe_uid(str(c['transfer_syntax']))})"
           if c.get("result") == 0 and c.get("transfer_syntax") else "")
        for c in contexts)


def _command_detail(event: dict[str, Any]) -> str:
    parts = []
    if event.get("message_id") is not None:
        parts.append(f"message {event['message_id']}")
    if event.get("affected_sop_class_uid"):
        parts.append(describe_uid(str(event["affected_sop_class_uid"])))
    if event.get("affected_sop_instance_uid"):
        parts.append(str(event["affected_sop_instance_uid"]))
    if event.get("status") is not None:
        parts.append(f"status 0x{int(event['status']):04X} {event.get('status_category', '')}")

    return ", ".join(parts)


def _max_length(event: dict[str, Any]) -> str:
    value = (event.get("user_information") or {}).get("max_length")
    return "unlimited" if value == 0 else str(value)
