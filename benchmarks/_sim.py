"""The simulator under measurement: modality -> router -> PACS, run with ``rehearse run``.

The site is generated from a plan: the modality declares exactly the
(SOP class, transfer syntax) pairs of the corpus, and the router and the
PACS accept all of them, so every instance can be delivered. The modality
sends the whole corpus on one association, as the direct senders do. The
files are written as JSON, which is valid YAML.

Timings come from the run's ``events.jsonl``; its ``t_mono`` values and the
RSS samples of the child process both use CLOCK_MONOTONIC.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _plan import Plan
from _procs import REHEARSE_PATH, BenchmarkError, Child, Finished

MODALITY, ROUTER, PACS = "modality", "router", "pacs"


def _sop_classes(plan: Plan) -> list[dict[str, Any]]:
    return [{"sop_class": sop_class, "transfer_syntaxes": syntaxes}
            for sop_class, syntaxes in plan.transfer_syntaxes_by_sop_class().items()]


def write_site(folder: Path, plan: Plan, max_pdu: int, timeouts: dict[str, float] | None,
               scenario_timeout_s: float) -> tuple[Path, Path]:
    """Write topology.yaml and scenario.yaml for ``plan``; return their paths."""
    common: dict[str, Any] = {"max_pdu": max_pdu, "sop_classes": _sop_classes(plan)}
    if timeouts is not None:
        common["timeouts"] = timeouts
    topology = {
        "site": "benchmark",
        "description": "One modality, one router, one PACS, every link through a proxy.",
        "nodes": {
            MODALITY: {"kind": "modality", "ae_title": "BENCH_MODALITY", **common},
            ROUTER: {"kind": "router", "ae_title": "BENCH_ROUTER", **common,
                     "rules": [{"name": "everything-to-pacs", "forward": [PACS]}]},
            PACS: {"kind": "pacs", "ae_title": "BENCH_PACS", **common},
        },
        "links": [{"from": MODALITY, "to": ROUTER}, {"from": ROUTER, "to": PACS}],
    }
    scenario = {
        "name": "benchmark",
        "corpus": str(plan.root),
        "timeout_s": scenario_timeout_s,
        "senders": [{"modality": MODALITY, "group_by": max(1, len(plan.files))}],
        "expectations": [{"name": "every instance reaches the PACS",
                          "delivered": {"source": MODALITY, "to": PACS}}],
    }
    folder.mkdir(parents=True, exist_ok=True)
    topology_path = folder / "topology.yaml"
    scenario_path = folder / "scenario.yaml"
    topology_path.write_text(json.dumps(topology, indent=1), encoding="utf-8")
    scenario_path.write_text(json.dumps(scenario, indent=1), encoding="utf-8")

    return topology_path, scenario_path


@dataclass
class SimulatorRun:
    """Timings, outcome and memory of one ``rehearse run``, from its events, summary and process."""

    run_s: float
    """run.started to run.finished."""
    transfer_s: float
    """First association the modality requested to the last instance the PACS stored."""
    after_transfer_s: float
    """Last instance stored at the PACS to run.finished: stopping, integrity checks, summary."""
    hops_s: dict[str, float]
    """Per link: its first association request to the last instance its receiver stored."""
    peak_rss_by_hop_kb: dict[str, int | None]
    """Highest VmRSS sampled in each window of ``hops_s``."""
    delivered: int
    expected: int
    expectations_held: bool
    problems: list[str]
    """Reasons of failed expectations and the first integrity violations, from summary.json."""
    associations: dict[str, int]
    transfer_cpu_s: float | None
    """CPU seconds the rehearse process used during ``transfer_s``."""
    rss_before_send_kb: int | None
    peak_rss_transfer_kb: int | None
    peak_rss_after_transfer_kb: int | None
    process: Finished


def _events(run_dir: Path, log_path: Path) -> list[dict[str, Any]]:
    path = run_dir / "events.jsonl"
    if not path.is_file():
        raise BenchmarkError(f"rehearse run wrote no {path}; see {log_path}")

    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _one(events: list[dict[str, Any]], kind: str, run_dir: Path) -> dict[str, Any]:
    found = [e for e in events if e["kind"] == kind]
    if not found:
        raise BenchmarkError(f"{run_dir}/events.jsonl has no {kind} event")
    return found[0]


def _problems(summary: dict[str, Any]) -> list[str]:
    problems = [f"{e['name']}: {e.get('reason')}" for e in summary.get("expectations", [])
                if not e.get("passed")]
    problems += [f"integrity violation {v['sop_instance_uid']} at {v['destination']}: "
                 f"{', '.join(v.get('unexplained', []))}"
                 for v in summary.get("integrity_violations", [])[:3]]

    return problems


def _hop_windows(events: list[dict[str, Any]]) -> dict[str, tuple[float, float]]:
    """Return per link the first association request and the last instance its receiver stored."""
    windows: dict[str, tuple[float, float]] = {}
    for sender, receiver in ((MODALITY, ROUTER), (ROUTER, PACS)):
        requested = [e["t_mono"] for e in events if e["kind"] == "association.requested"
                     and e.get("node") == sender and e.get("role") == "requestor"]
        stored = [e["t_mono"] for e in events
                  if e["kind"] == "instance.stored" and e.get("node") == receiver]
        if requested and stored:
            windows[f"{sender}->{receiver}"] = (min(requested), max(stored))

    return windows


def run_simulator(folder: Path, topology: Path, scenario: Path, timeout_s: float) -> SimulatorRun:
    """Run ``rehearse run`` in a child process and measure it."""
    run_dir = folder / "run"
    argv: list[str | Path] = [REHEARSE_PATH, "run", topology, scenario, "--out", run_dir,
                              "--no-progress"]
    child = Child("rehearse", argv, folder / "rehearse.log").start()
    try:
        process = child.wait(timeout_s)
    finally:
        child.kill_quietly()
    if process.returncode not in (0, 1):
        raise BenchmarkError(f"rehearse run exited with {process.returncode}; see {child.log_path}")

    return _measure(run_dir, process, child.log_path)


def _measure(run_dir: Path, process: Finished, log_path: Path) -> SimulatorRun:
    events = _events(run_dir, log_path)
    started = _one(events, "run.started", run_dir)["t_mono"]
    finished = _one(events, "run.finished", run_dir)
    first_request = min(e["t_mono"] for e in events
                        if e["kind"] == "association.requested" and e.get("node") == MODALITY)
    stored = [e["t_mono"] for e in events
              if e["kind"] == "instance.stored" and e.get("node") == PACS]
    last_stored = max(stored) if stored else finished["t_mono"]
    windows = _hop_windows(events)
    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    associations: dict[str, int] = {}
    for event in events:
        if event["kind"] == "association.requested" and event.get("role") == "requestor":
            associations[event["link"]] = associations.get(event["link"], 0) + 1

    return SimulatorRun(
        run_s=finished["t_mono"] - started,
        transfer_s=last_stored - first_request,
        after_transfer_s=finished["t_mono"] - last_stored,
        hops_s={link: end - start for link, (start, end) in windows.items()},
        peak_rss_by_hop_kb={link: process.peak_rss_kb_between(start, end)
                            for link, (start, end) in windows.items()},
        delivered=summary["states"].get("delivered", 0),
        expected=summary["rows"],
        expectations_held=bool(finished.get("expectations_held")),
        problems=_problems(summary),
        associations=associations,
        transfer_cpu_s=process.cpu_s_between(first_request, last_stored),
        rss_before_send_kb=process.rss_kb_before(first_request),
        peak_rss_transfer_kb=process.peak_rss_kb_between(first_request, last_stored),
        peak_rss_after_transfer_kb=process.peak_rss_kb_between(last_stored, float("inf")),
        process=process,
    )


