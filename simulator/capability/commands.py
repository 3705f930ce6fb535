"""The work of ``rehearse check`` and ``rehearse probe`` once their options are parsed.

Both return an exit code: 0 when nothing is wrong, 1 when ``check``
predicts a failure or finds drift that matters, 2 on invalid input
(SimulatorError, raised to the command line, which prints it).
"""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console

from simulator.capability.check import check_topology, load_corpus_instances
from simulator.capability.drift import compare_declaration, drift_matters
from simulator.capability.errors import CheckError, ProbeError
from simulator.capability.probe import ProbeOptions, ProbeResult, probe_system
from simulator.capability.probe_yaml import load_probe_file, render_probe_yaml
from simulator.capability.render import print_check
from simulator.conformance.names import UnknownNameError, describe_uid, resolve_sop_class
from simulator.topology.model import Topology

EXIT_OK = 0
EXIT_PROBLEM = 1


def run_check(topology_path: Path, corpus: Path | None, scenario_path: Path | None,
              as_json: bool, against: Path | None, node: str | None, out: Console) -> int:
    """Predict every route's outcome, or compare a node with a probe file; return the exit code."""
    from simulator.scenario import load_scenario
    from simulator.topology import load_topology

    topology = load_topology(topology_path)
    if against is not None or node is not None:
        return _run_drift(topology, against, node, as_json, out)
    scenario = None if scenario_path is None else load_scenario(scenario_path, topology)
    instances = load_corpus_instances(scenario, scenario_path, corpus)
    result = check_topology(topology, instances, scenario)
    if as_json:
        out.print_json(json.dumps(result.as_dict(), default=str))
    else:
        print_check(result, out)

    return EXIT_PROBLEM if result.failure_predicted else EXIT_OK


def _run_drift(topology: Topology, against: Path | None, node: str | None, as_json: bool,
               out: Console) -> int:
    if against is None or node is None:
        raise CheckError("--against and --node go together: give the probe file and the "
                         "name of the declared node to compare it with")
    nodes = topology.nodes
    if node not in nodes:
        raise CheckError(f"--node {node!r} is not a node of the topology "
                         f"(nodes: {', '.join(sorted(nodes))})")
    probed = load_probe_file(against)
    drifts = compare_declaration(nodes[node], probed)
    if as_json:
        out.print_json(json.dumps({"node": node, "probe": str(against),
                                   "drift": [d.as_dict() for d in drifts]}))
    else:
        out.print(f"{node} as declared, compared with {against}:", highlight=False)
        for drift in drifts:
            out.print(f"  {drift.kind:<10} {drift.message}", highlight=False, markup=False)
        if not drifts:
            out.print("  no difference in what was probed", highlight=False)

    return EXIT_PROBLEM if drift_matters(drifts) else EXIT_OK


def parse_sop_classes(text: str | None) -> tuple[str, ...] | None:
    """Resolve a comma-separated list of SOP class keywords or UIDs; raise ProbeError."""
    if text is None:
        return None
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise ProbeError("--sop-classes is empty; give keywords or UIDs separated by commas")
    try:
        return tuple(dict.fromkeys(resolve_sop_class(name) for name in names))
    except UnknownNameError as exc:
        raise ProbeError(f"--sop-classes: {exc}") from exc


def run_probe(options: ProbeOptions, out_path: Path | None, out: Console, err: Console) -> int:
    """Probe one system, print what it accepts, and write the YAML declaration when asked."""
    def progress(number: int, total: int, purpose: str) -> None:
        err.print(f"association {number}/{total}: {purpose}", highlight=False)

    result = probe_system(options, progress)
    text = render_probe_yaml(result)
    if out_path is not None:
        try:
            out_path.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise ProbeError(f"--out {out_path}: cannot write the probe file ({exc.strerror}); "
                             "choose another path") from exc
    out.print(text if out_path is None else _probe_summary(result, out_path), highlight=False,
              markup=False)

    return EXIT_OK


def _probe_summary(result: ProbeResult, out_path: Path) -> str:
    first = (f"{len(result.accepted)} SOP classes accepted, max PDU {result.max_pdu}, "
             f"checks called AE title: {result.checks_called_ae}, "
             f"checks calling AE title: {result.checks_calling_ae}, "
             f"{result.associations} associations.")
    lines = [first]
    for sop_class, syntaxes in result.accepted.items():
        lines.append(f"  {describe_uid(sop_class)}: {', '.join(describe_uid(t) for t in syntaxes)}")
    lines.append(f"Wrote {out_path}")

    return "\n".join(lines)
