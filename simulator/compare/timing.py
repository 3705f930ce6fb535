"""Timing per hop and per route, and how it moved between two runs.

Three measures, each as median and 95th percentile in milliseconds:

- ``dimse`` per link: C-STORE request to response on the requestor side
  (``elapsed_s`` of ``dimse.response``, or the difference of the two
  events' ``t_mono`` when a run did not record it);
- ``association`` per link: ``association.requested`` to
  ``association.released`` or ``association.aborted``, requestor side (the
  acceptor side for an association only an acceptor recorded, such as one
  from a real SCU);
- ``delivery`` per route: first attempt to final state of each delivered
  ledger row.

A measure is flagged when its median or 95th percentile moved by more than
the threshold, in percent of run A's value.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from simulator.compare.reader import LedgerEntry, RunData

DEFAULT_THRESHOLD_PCT = 20.0
_ASSOCIATION_ENDS = ("association.released", "association.aborted")
_TIMING_EVENTS = ("dimse.request", "dimse.response", "association.requested", *_ASSOCIATION_ENDS)


@dataclass(frozen=True)
class Stats:
    samples: int
    median_ms: float
    p95_ms: float

    def as_record(self) -> dict[str, Any]:
        return {"samples": self.samples, "median_ms": round(self.median_ms, 3),
                "p95_ms": round(self.p95_ms, 3)}


@dataclass(frozen=True)
class TimingChange:
    """One measure on one link or route in both runs."""

    measure: str
    scope: str
    a: Stats | None
    b: Stats | None
    median_change_pct: float | None
    p95_change_pct: float | None
    flagged: bool

    def as_record(self) -> dict[str, Any]:
        return {
            "measure": self.measure, "scope": self.scope,
            "a": None if self.a is None else self.a.as_record(),
            "b": None if self.b is None else self.b.as_record(),
            "median_change_pct": _round(self.median_change_pct),
            "p95_change_pct": _round(self.p95_change_pct), "flagged": self.flagged,
        }


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Return a percentile by linear interpolation between the closest ranks."""
    if len(sorted_values) == 1:
        return sorted_values[0]
    position = fraction * (len(sorted_values) - 1)
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)

    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def stats(durations_s: Iterable[float]) -> Stats | None:
    values = sorted(d * 1000.0 for d in durations_s)
    if not values:
        return None

    return Stats(len(values), percentile(values, 0.5), percentile(values, 0.95))


def measure_run(run: RunData) -> dict[tuple[str, str], Stats]:
    """Return the stats of every measure and scope in one run, keyed by (measure, scope)."""
    samples: dict[tuple[str, str], list[float]] = defaultdict(list)
    _collect_events(run, samples)
    for route, durations in _delivery_durations(run.rows).items():
        samples[("delivery", route)].extend(durations)

    measured: dict[tuple[str, str], Stats] = {}
    for key, durations in samples.items():
        result = stats(durations)
        if result is not None:
            measured[key] = result

    return measured


def compare_timing(run_a: RunData, run_b: RunData,
                   threshold_pct: float = DEFAULT_THRESHOLD_PCT) -> list[TimingChange]:
    """Compare every measure both or either run has; flag moves beyond ``threshold_pct``."""
    measured_a, measured_b = measure_run(run_a), measure_run(run_b)
    changes = []
    for measure, scope in sorted(set(measured_a) | set(measured_b)):
        a, b = measured_a.get((measure, scope)), measured_b.get((measure, scope))
        median_pct = _change_pct(a.median_ms, b.median_ms) if a and b else None
        p95_pct = _change_pct(a.p95_ms, b.p95_ms) if a and b else None
        flagged = any(p is not None and abs(p) > threshold_pct for p in (median_pct, p95_pct))
        changes.append(TimingChange(measure, scope, a, b, median_pct, p95_pct, flagged))

    return changes


def _collect_events(run: RunData, samples: dict[tuple[str, str], list[float]]) -> None:
    requests: dict[tuple[str, str], float] = {}
    opened: dict[tuple[str, str], tuple[str, float]] = {}
    with_requestor: set[str] = set()
    for event in run.iter_events(_TIMING_EVENTS):
        kind, assoc_id, link = event["kind"], event.get("assoc_id"), event.get("link")
        role, t_mono = str(event.get("role")), event.get("t_mono")
        if assoc_id is None or link is None or not isinstance(t_mono, (int, float)):
            continue
        if kind == "dimse.request" and role == "requestor":
            requests[(assoc_id, event.get("sop_instance_uid") or "")] = t_mono
        elif kind == "dimse.response" and role == "requestor":
            started = requests.pop((assoc_id, event.get("sop_instance_uid") or ""), None)
            elapsed_s = event.get("elapsed_s")
            if isinstance(elapsed_s, (int, float)):
                samples[("dimse", link)].append(float(elapsed_s))
            elif started is not None:
                samples[("dimse", link)].append(t_mono - started)
        elif kind == "association.requested":
            opened[(assoc_id, role)] = (link, t_mono)
            if role == "requestor":
                with_requestor.add(assoc_id)
        elif (assoc_id, role) in opened:
            link, started = opened.pop((assoc_id, role))
            # Both sides record an association: time the requestor's, and the
            # acceptor's only when no requestor recorded it (a real SCU, say).
            if role == "requestor" or assoc_id not in with_requestor:
                samples[("association", link)].append(t_mono - started)


def _delivery_durations(rows: list[LedgerEntry]) -> dict[str, list[float]]:
    durations: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        if row.delivered and row.first_attempt_mono is not None and row.finished_mono is not None:
            durations[f"{row.source} -> {row.destination}"].append(
                row.finished_mono - row.first_attempt_mono)

    return durations


def _change_pct(before: float, after: float) -> float | None:
    if before == 0:
        return None if after == 0 else math.inf

    return (after - before) / before * 100.0


def _round(value: float | None) -> float | str | None:
    if value is None:
        return None
    if math.isinf(value):
        return "inf"

    return round(value, 1)
