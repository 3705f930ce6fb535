"""Every run compares its ledger with what the check predicts from the declarations."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from peers import DcmtkStoreSCP
from simulator.runner import RunOptions, RunResult, run_rehearsal
from simulator.scenario import load_scenario
from simulator.topology import load_topology

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _corpus_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REHEARSE_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "corpus-cache"))


def rehearse(topology_path: Path, scenario_path: Path, out: Path) -> RunResult:
    topology = load_topology(topology_path)
    scenario = load_scenario(scenario_path, topology)

    return run_rehearsal(topology, scenario, RunOptions(topology_path, scenario_path, out))


def read_events(result: RunResult, kind: str) -> list[dict[str, Any]]:
    lines = (result.run_dir / "events.jsonl").read_text(encoding="utf-8").splitlines()
    return [e for e in map(json.loads, lines) if e["kind"] == kind]


def test_bundled_run_agrees_with_check(tmp_path: Path) -> None:
    """The bundled cutover behaves exactly as its declarations predict."""
    result = rehearse(ROOT / "topologies" / "hospital-cutover.yaml",
                      ROOT / "scenarios" / "cutover.yaml", tmp_path / "run")

    predictions = result.summary["predicted_against_observed"]
    assert predictions["predicted_rows"] == result.summary["rows"]
    assert predictions["disagreements"] == 0
    assert not read_events(result, "check.disagreement")


def test_misdeclared_external_node_is_a_finding(
    tmp_path: Path, dcmtk_storescp: Callable[..., DcmtkStoreSCP]
) -> None:
    """A real system that accepts more than its declaration says is reported as a disagreement."""
    storescp = dcmtk_storescp(ae_title="VENDOR_PACS")
    topology_path = tmp_path / "site.yaml"
    topology_path.write_text(f"""
site: misdeclared
nodes:
  mr:
    kind: modality
    ae_title: MR_SCANNER
    sop_classes: [MRImageStorage]
  vendor:
    kind: external
    ae_title: VENDOR_PACS
    host: 127.0.0.1
    port: {storescp.port}
    # The conformance statement lists CT only; storescp accepts every storage class.
    sop_classes: [CTImageStorage]
links:
  - {{from: mr, to: vendor}}
""", encoding="utf-8")
    scenario_path = tmp_path / "scenario.yaml"
    scenario_path.write_text("""
name: misdeclared
corpus: bundled
senders:
  - {modality: mr, select: {glob: ["MR/MR_small.dcm"]}}
""", encoding="utf-8")

    result = rehearse(topology_path, scenario_path, tmp_path / "run")

    assert result.summary["states"] == {"delivered": 1}
    predictions = result.summary["predicted_against_observed"]
    assert predictions["disagreements"] == 1
    finding = read_events(result, "check.disagreement")[0]
    assert finding["destination"] == "vendor"
    assert finding["predicted"]["outcome"] == "failed"
    assert finding["observed"]["outcome"] == "delivered"
    report = (result.run_dir / "report.md").read_text(encoding="utf-8")
    assert "## Check against observation" in report


def test_include_phi_adds_patient_data(tmp_path: Path) -> None:
    """--include-phi puts patient name, ID and birth date in the ledger, and only then."""
    topology_path = ROOT / "topologies" / "field" / "fc10-max-pdu-zero.yaml"
    scenario_path = ROOT / "scenarios" / "field" / "fc10-max-pdu-zero.yaml"
    topology = load_topology(topology_path)
    scenario = load_scenario(scenario_path, topology)
    without = run_rehearsal(topology, scenario, RunOptions(topology_path, scenario_path,
                                                           tmp_path / "without"))
    with_phi = run_rehearsal(topology, scenario, RunOptions(topology_path, scenario_path,
                                                            tmp_path / "with", include_phi=True))

    def rows(result: RunResult) -> list[dict[str, Any]]:
        lines = (result.run_dir / "ledger.jsonl").read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines]

    assert rows(without)[0]["patient"] is None
    patient = rows(with_phi)[0]["patient"]
    assert patient["name"] == "CompressedSamples^CT1"
    assert patient["id"] == "1CT1"
