"""The timeline of a run as SVG geometry: one lane per link, one bar per association.

Times are seconds since ``run.started`` on the simulator's monotonic clock.
Overlapping associations on one link stack in tracks. Faults shade their
link's lane from ``link.fault_added`` to ``link.fault_removed`` (or the end
of the run), and scenario steps are vertical lines over every lane.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from simulator.compare.reader import RunData

LABEL_WIDTH_PX = 170
PLOT_WIDTH_PX = 1130
BAR_HEIGHT_PX = 7
TRACK_GAP_PX = 2
LANE_PADDING_PX = 6
STEP_LABEL_ROW_PX = 14
LABEL_CHAR_PX = 6.5
"""Estimated width of one label character at the page's 11 px font."""
AXIS_HEIGHT_PX = 22
MAX_TRACKS = 16
"""Tracks per lane; further overlapping associations share the last track."""

_TICK_STEPS_S = (0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600)
_MAX_TICKS = 12
_ASSOCIATION_EVENTS = ("association.requested", "association.accepted", "association.rejected",
                       "association.released", "association.aborted")
_TIMELINE_EVENTS = ("run.started", "run.finished", "scenario.step", "link.fault_added",
                    "link.fault_removed", *_ASSOCIATION_EVENTS)


@dataclass
class Association:
    assoc_id: str
    link: str
    start_s: float
    end_s: float | None = None
    outcome: str = "open"


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    css: str
    tooltip: str
    height: float = BAR_HEIGHT_PX


@dataclass(frozen=True)
class Lane:
    label: str
    y: float
    height: float


@dataclass(frozen=True)
class Marker:
    x: float
    label_y: float
    label: str
    tooltip: str
    anchor: str = "start"

    @property
    def label_x(self) -> float:
        return self.x + 3 if self.anchor == "start" else self.x - 3


@dataclass
class Timeline:
    """Everything the template draws, in pixels."""

    width: float
    height: float
    plot_top: float
    plot_bottom: float
    lanes: list[Lane] = field(default_factory=list)
    bars: list[Bar] = field(default_factory=list)
    faults: list[Bar] = field(default_factory=list)
    steps: list[Marker] = field(default_factory=list)
    ticks: list[tuple[float, str]] = field(default_factory=list)
    associations: int = 0


@dataclass
class _Collected:
    start_s: float | None = None
    end_s: float | None = None
    associations: dict[str, Association] = field(default_factory=dict)
    faults: list[tuple[str, str, float, float | None, dict[str, Any]]] = field(default_factory=list)
    steps: list[tuple[float, dict[str, Any]]] = field(default_factory=list)


def build_timeline(run: RunData) -> Timeline | None:
    """Return the timeline of a run, or None when it has no timed events."""
    collected = _collect(run)
    if collected.start_s is None:
        return None
    t0 = collected.start_s
    t_end = max([collected.end_s or t0] + [a.end_s or a.start_s for a in
                                           collected.associations.values()])
    span_s = max(t_end - t0, 0.001)
    lanes = _lane_order(run, collected)
    step_rows = min(len(collected.steps), 8)
    plot_top = AXIS_HEIGHT_PX + step_rows * STEP_LABEL_ROW_PX + 4
    timeline = Timeline(LABEL_WIDTH_PX + PLOT_WIDTH_PX + 10, 0, plot_top, plot_top,
                        associations=len(collected.associations))

    def x_of(t: float) -> float:
        return LABEL_WIDTH_PX + (t - t0) / span_s * PLOT_WIDTH_PX

    y: float = plot_top
    for link in lanes:
        y = _draw_lane(timeline, link, collected, y, x_of, t_end)
    timeline.plot_bottom = y
    timeline.height = y + 4
    timeline.ticks = [(x_of(t0 + s), _tick_label(s)) for s in _ticks(span_s)]
    for index, (t, step) in enumerate(collected.steps):
        label = f"step {step.get('step', index)}: {step.get('action', '?')}"
        x = x_of(t)
        # A label that would run past the right edge is drawn to the left of its line.
        anchor = "end" if x + len(label) * LABEL_CHAR_PX > timeline.width else "start"
        timeline.steps.append(Marker(x, AXIS_HEIGHT_PX + (index % 8 + 1) * STEP_LABEL_ROW_PX,
                                     label, f"{label} at {t - t0:.3f} s {_step_detail(step)}",
                                     anchor))

    return timeline


def _collect(run: RunData) -> _Collected:
    collected = _Collected()
    open_faults: dict[tuple[str, str], tuple[float, dict[str, Any]]] = {}
    for event in run.iter_events(_TIMELINE_EVENTS):
        kind, t = event.get("kind"), event.get("t_mono")
        if not isinstance(t, (int, float)):
            continue
        if kind == "run.started":
            collected.start_s = t
        elif kind == "run.finished":
            collected.end_s = t
        elif kind == "scenario.step":
            collected.steps.append((t, event))
        elif kind == "link.fault_added":
            open_faults[(str(event.get("link")), str(event.get("fault")))] = (t, event)
        elif kind == "link.fault_removed":
            key = (str(event.get("link")), str(event.get("fault")))
            if key in open_faults:
                started, added = open_faults.pop(key)
                collected.faults.append((key[0], key[1], started, t, added))
        else:
            _association_event(collected, event, t)
    for (link, name), (started, added) in open_faults.items():
        collected.faults.append((link, name, started, None, added))
    if collected.start_s is None and collected.associations:
        collected.start_s = min(a.start_s for a in collected.associations.values())

    return collected


def _association_event(collected: _Collected, event: dict[str, Any], t: float) -> None:
    assoc_id, link = event.get("assoc_id"), event.get("link")
    if not assoc_id or not link:
        return
    association = collected.associations.get(assoc_id)
    if association is None:
        association = collected.associations[assoc_id] = Association(assoc_id, link, t)
    association.start_s = min(association.start_s, t)
    kind = str(event.get("kind"))
    if kind in ("association.released", "association.aborted", "association.rejected"):
        association.end_s = max(association.end_s or t, t)
        # An abort or rejection seen by either side outranks a release seen by the other.
        outcome = kind.removeprefix("association.")
        if association.outcome in ("open", "released"):
            association.outcome = outcome


def _lane_order(run: RunData, collected: _Collected) -> list[str]:
    lanes = list(run.link_endpoints())
    seen = {a.link for a in collected.associations.values()} | {f[0] for f in collected.faults}
    lanes = [link for link in lanes if link in seen]

    return lanes + sorted(seen - set(lanes))


def _draw_lane(timeline: Timeline, link: str, collected: _Collected, y: float,
               x_of: Any, t_end: float) -> float:
    associations = sorted((a for a in collected.associations.values() if a.link == link),
                          key=lambda a: a.start_s)
    track_ends: list[float] = []
    placed: list[tuple[Association, int]] = []
    for association in associations:
        end = association.end_s if association.end_s is not None else t_end
        track = next((i for i, last in enumerate(track_ends) if last <= association.start_s),
                     None)
        if track is None:
            track = min(len(track_ends), MAX_TRACKS - 1)
            if track == len(track_ends):
                track_ends.append(end)
        track_ends[track] = max(track_ends[track], end)
        placed.append((association, track))
    tracks = max(1, len(track_ends))
    height = 2 * LANE_PADDING_PX + tracks * (BAR_HEIGHT_PX + TRACK_GAP_PX)
    timeline.lanes.append(Lane(link, y, height))
    for association, track in placed:
        end = association.end_s if association.end_s is not None else t_end
        x0 = x_of(association.start_s)
        duration_ms = (end - association.start_s) * 1000
        timeline.bars.append(Bar(
            x0, y + LANE_PADDING_PX + track * (BAR_HEIGHT_PX + TRACK_GAP_PX),
            max(x_of(end) - x0, 1.5), f"assoc-{association.outcome}",
            f"{association.assoc_id} on {link}: {association.outcome} after {duration_ms:.1f} ms",
        ))
    for fault_link, name, started, ended, added in collected.faults:
        if fault_link != link:
            continue
        x0 = x_of(started)
        x1 = x_of(ended if ended is not None else t_end)
        until = "the end of the run" if ended is None else f"{ended - started:.3f} s later"
        timeline.faults.append(Bar(
            x0, y, max(x1 - x0, 2.0), "fault",
            f"fault {name} ({added.get('fault_type')}, {added.get('direction')}, toxicity "
            f"{added.get('toxicity')}, {added.get('attributes')}) on {link}, removed {until}",
            height,
        ))

    return y + height


def _ticks(span_s: float) -> list[float]:
    step = next((s for s in _TICK_STEPS_S if span_s / s <= _MAX_TICKS), _TICK_STEPS_S[-1])
    count = int(span_s / step) + 1

    return [i * step for i in range(count)]


def _tick_label(seconds: float) -> str:
    return f"{seconds:g} s"


def _step_detail(step: dict[str, Any]) -> str:
    parts = [f"{key}={step[key]}" for key in ("router", "rule_set", "senders", "link")
             if step.get(key)]

    return "(" + ", ".join(parts) + ")" if parts else ""
