"""Summaries of a finished run: ``summary.json``, ``report.md`` and the expectation verdicts."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from simulator.conformance.names import describe_uid
from simulator.recording.ledger import LedgerRow, RowState
from simulator.recording.recorder import RUN_FORMAT_VERSION
from simulator.scenario.model import Expectation, RouteFilter

if TYPE_CHECKING:
    from simulator.runner import Rehearsal


def _matches(row: LedgerRow, flt: RouteFilter) -> bool:
    if flt.source is not None and row.source != flt.source:
        return False
    if flt.to is not None and row.destination != flt.to:
        return False
    if flt.sop_class is not None and row.sop_class_uid not in flt.sop_class:
        return False
    if flt.transfer_syntax is not None and row.transfer_syntax_uid not in flt.transfer_syntax:
        return False
    return True


def _failure_kind(row: LedgerRow) -> str | None:
    return None if row.failure is None else str(row.failure.get("failure_kind"))


def evaluate(expectation: Expectation, rows: list[LedgerRow]) -> dict[str, Any]:
    """Return the verdict of one expectation over the final ledger."""
    verdict: dict[str, Any] = {"name": expectation.label}
    if expectation.delivered is not None or expectation.not_delivered is not None:
        flt = expectation.delivered or expectation.not_delivered
        assert flt is not None
        matched = [r for r in rows if _matches(r, flt)]
        delivered = [r for r in matched if r.state == RowState.DELIVERED and r.intact is not False]
        verdict["matched_rows"] = len(matched)
        verdict["delivered_rows"] = len(delivered)
        if not matched:
            verdict.update(passed=False, reason="no ledger row matches this expectation")
        elif expectation.delivered is not None:
            missing = [r for r in matched if r not in delivered]
            verdict["passed"] = not missing
            verdict["reason"] = (f"{len(missing)} of {len(matched)} not delivered intact"
                                 if missing else "all delivered")
            verdict["examples"] = [_row_brief(r) for r in missing[:5]]
        else:
            verdict["passed"] = not delivered
            verdict["reason"] = (f"{len(delivered)} delivered" if delivered else "none delivered")
        return verdict
    if expectation.no_failures is not None:
        spec = expectation.no_failures
        failed = [r for r in rows if r.failure is not None and r.state != RowState.DELIVERED
                  and (spec.link is None or spec.link in r.hops and r.failure.get("hop") == spec.link)
                  and (spec.node is None or spec.node in (r.source, r.destination))]
        verdict["passed"] = not failed
        verdict["reason"] = f"{len(failed)} failed deliveries" if failed else "no failures"
        verdict["examples"] = [_row_brief(r) for r in failed[:5]]
        return verdict
    expected = expectation.failure
    assert expected is not None
    found = [r for r in rows if _failure_kind(r) == expected.kind
             and (expected.hop is None or (r.failure or {}).get("hop") == expected.hop)]
    verdict["passed"] = len(found) >= expected.min_count
    verdict["reason"] = (f"{len(found)} deliveries failed with {expected.kind} "
                         f"(expected at least {expected.min_count})")

    return verdict


def _row_brief(row: LedgerRow) -> dict[str, Any]:
    return {
        "sop_instance_uid": row.sop_instance_uid, "destination": row.destination,
        "state": str(row.state), "failure_kind": _failure_kind(row),
        "hop": (row.failure or {}).get("hop"), "reason": (row.failure or {}).get("reason"),
    }


def build_summary(rehearsal: Rehearsal, outcome: str, spool_left: list[dict[str, Any]]) -> dict[str, Any]:
    rows = list(rehearsal.ledger)
    states = Counter(str(r.state) for r in rows)
    routes: dict[str, Counter[str]] = defaultdict(Counter)
    by_object: dict[str, Counter[str]] = defaultdict(Counter)
    failures: dict[tuple[str, str], list[LedgerRow]] = defaultdict(list)
    for row in rows:
        routes[f"{row.source} -> {row.destination}"][str(row.state)] += 1
        key = f"{describe_uid(row.sop_class_uid)} | {describe_uid(row.transfer_syntax_uid)}"
        by_object[key][str(row.state)] += 1
        if row.failure is not None:
            failures[(str(row.failure.get("failure_kind")), str(row.failure.get("hop")))].append(row)
    integrity = [r for r in rows if r.intact is False]
    studies = _study_outcomes(rows)

    return {
        "format_version": RUN_FORMAT_VERSION,
        "run_id": rehearsal.run_id,
        "site": rehearsal.topology.site,
        "scenario": rehearsal.scenario.name,
        "seed": rehearsal.seed,
        "outcome": outcome,
        "instances": rehearsal.progress.total,
        "sent": rehearsal.progress.sent,
        "rows": len(rows),
        "states": dict(states),
        "routes": {k: dict(v) for k, v in sorted(routes.items())},
        "objects": {k: dict(v) for k, v in sorted(by_object.items())},
        "studies": studies,
        "failures": [
            {"failure_kind": kind, "hop": hop, "count": len(group),
             "side": group[0].failure.get("side") if group[0].failure else None,
             "permanent": group[0].failure.get("permanent") if group[0].failure else None,
             "reason": group[0].failure.get("reason") if group[0].failure else None}
            for (kind, hop), group in sorted(failures.items(), key=lambda kv: -len(kv[1]))
        ],
        "integrity_violations": [
            {"sop_instance_uid": r.sop_instance_uid, "destination": r.destination,
             "unexplained": (r.integrity or {}).get("unexplained", [])}
            for r in integrity
        ],
        "spool_left": spool_left,
        "expectations": [evaluate(e, rows) for e in rehearsal.scenario.expectations],
        "event_listener_errors": rehearsal.recorder.listener_errors,
        "predicted_against_observed": rehearsal.predictions,
    }


def _study_outcomes(rows: list[LedgerRow]) -> dict[str, dict[str, int]]:
    """Count studies per destination: delivered, partially delivered (never success), failed."""
    by_study: dict[tuple[str, str], list[LedgerRow]] = defaultdict(list)
    for row in rows:
        by_study[(row.destination, row.study_instance_uid)].append(row)
    outcomes: dict[str, Counter[str]] = defaultdict(Counter)
    for (destination, _), study_rows in by_study.items():
        delivered = sum(1 for r in study_rows if r.state == RowState.DELIVERED and r.intact is not False)
        if delivered == len(study_rows):
            outcomes[destination]["delivered"] += 1
        elif delivered:
            outcomes[destination]["partially-delivered"] += 1
        else:
            outcomes[destination]["failed"] += 1

    return {d: {k: c.get(k, 0) for k in ("delivered", "partially-delivered", "failed")}
            for d, c in sorted(outcomes.items())}


def render_markdown(summary: dict[str, Any]) -> str:
    lines = [
        f"# Rehearsal {summary['run_id']}",
        "",
        f"Site **{summary['site']}**, scenario **{summary['scenario']}**, seed {summary['seed']}: "
        f"{summary['outcome']}. {summary['instances']} instances, {summary['sent']} sent, "
        f"{summary['rows']} expected deliveries.",
        "",
        "## Expectations",
        "",
    ]
    if not summary["expectations"]:
        lines.append("None declared.")
    for verdict in summary["expectations"]:
        mark = "PASS" if verdict["passed"] else "FAIL"
        lines.append(f"- **{mark}** {verdict['name']}: {verdict.get('reason', '')}")
    lines += ["", "## Deliveries by route", "", "| route | delivered | failed | never attempted |",
              "|---|---|---|---|"]
    for route, counts in summary["routes"].items():
        lines.append(f"| {route} | {counts.get('delivered', 0)} | {counts.get('failed', 0)} | "
                     f"{counts.get('never-attempted', 0)} |")
    lines += ["", "## Studies by destination", "",
              "| destination | delivered | partially delivered | failed |", "|---|---|---|---|"]
    for destination, counts in summary["studies"].items():
        lines.append(f"| {destination} | {counts['delivered']} | "
                     f"{counts['partially-delivered']} | {counts['failed']} |")
    lines += ["", "## Deliveries by SOP class and transfer syntax", "",
              "| SOP class, transfer syntax | delivered | failed | never attempted |",
              "|---|---|---|---|"]
    for key, counts in summary["objects"].items():
        sop_class, transfer_syntax = key.split(" | ")
        lines.append(f"| {sop_class}, {transfer_syntax} | {counts.get('delivered', 0)} | "
                     f"{counts.get('failed', 0)} | {counts.get('never-attempted', 0)} |")
    lines += ["", "## Failures by kind and hop", ""]
    if not summary["failures"]:
        lines.append("No failures.")
    else:
        lines += ["| kind | hop | side | permanent | count | first reason |", "|---|---|---|---|---|---|"]
        for f in summary["failures"]:
            lines.append(f"| {f['failure_kind']} | {f['hop']} | {f['side']} | {f['permanent']} | "
                         f"{f['count']} | {f['reason']} |")
    if summary["integrity_violations"]:
        lines += ["", "## Integrity violations", ""]
        for v in summary["integrity_violations"]:
            lines.append(f"- {v['sop_instance_uid']} at {v['destination']}: "
                         f"{', '.join(v['unexplained'])}")
    predictions = summary.get("predicted_against_observed") or {}
    if predictions.get("disagreements"):
        lines += ["", "## Check against observation", "",
                  f"{predictions['disagreements']} ledger rows differ from what `rehearse check` "
                  "predicts from the declarations: a declaration does not describe what its "
                  "node does, or the node misbehaves.", ""]
        lines += [f"- {finding}" for finding in predictions.get("findings", [])]
    if summary["spool_left"]:
        lines += ["", "## Left in router spools", ""]
        for entry in summary["spool_left"]:
            lines.append(f"- {entry['node']}: {entry['sop_instance_uid']} waiting for "
                         f"{', '.join(entry['waiting_for']) or 'no destination (unrouted)'}")
    lines.append("")

    return "\n".join(lines)


def write_summary_json(run_dir: Path, summary: dict[str, Any]) -> None:
    """Write ``summary.json``; the runner writes it again to add the ``mqtt`` counts."""
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n",
                                          encoding="utf-8")


def write_outputs(rehearsal: Rehearsal, outcome: str, spool_left: list[dict[str, Any]]) -> dict[str, Any]:
    summary = build_summary(rehearsal, outcome, spool_left)
    run_dir: Path = rehearsal.run_dir
    write_summary_json(run_dir, summary)
    (run_dir / "report.md").write_text(render_markdown(summary), encoding="utf-8")

    return summary
