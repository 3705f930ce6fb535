"""rehearse check: predictions compared with real rehearsals, row by row, and the command itself."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from simulator.capability import (
    CheckError,
    CheckResult,
    Outcome,
    check_topology,
    compare_with_ledger,
    load_corpus_instances,
)
from simulator.runner import RunOptions, run_rehearsal
from simulator.scenario import load_scenario
from simulator.topology import load_topology

ROOT = Path(__file__).resolve().parent.parent
CT = ["CTImageStorage", "EnhancedCTImageStorage"]
CT_PAIR = {"modality": "ct", "select": {"glob": ["CT/CT_small.dcm", "CT-enhanced/**"]}}
CT_SMALL = {"modality": "ct", "select": {"glob": ["CT/CT_small.dcm"]}}


@pytest.fixture(autouse=True)
def _corpus_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REHEARSE_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "corpus-cache"))


def predict(topology_path: Path, scenario_path: Path) -> CheckResult:
    topology = load_topology(topology_path)
    scenario = load_scenario(scenario_path, topology)

    return check_topology(topology, load_corpus_instances(scenario, scenario_path, None), scenario)


def rehearse_rows(topology_path: Path, scenario_path: Path, run_dir: Path) -> list[dict[str, Any]]:
    topology = load_topology(topology_path)
    scenario = load_scenario(scenario_path, topology)
    result = run_rehearsal(topology, scenario, RunOptions(topology_path, scenario_path, run_dir))
    lines = (result.run_dir / "ledger.jsonl").read_text(encoding="utf-8").splitlines()

    return [json.loads(line) for line in lines]


def assert_predicted_row_by_row(topology_path: Path, scenario_path: Path, tmp_path: Path) -> None:
    result = predict(topology_path, scenario_path)
    rows = rehearse_rows(topology_path, scenario_path, tmp_path / "run")

    mismatches = compare_with_ledger(result, rows)
    assert [str(m) for m in mismatches] == []
    assert len(result.predictions) == len([r for r in rows if r.get("service", "store") == "store"])


def write_inputs(tmp_path: Path, topology: dict[str, Any],
                 scenario: dict[str, Any]) -> tuple[Path, Path]:
    topology_path = tmp_path / "topology.yaml"
    scenario_path = tmp_path / "scenario.yaml"
    topology_path.write_text(json.dumps({"site": "check-test", **topology}), encoding="utf-8")
    scenario_path.write_text(json.dumps({"name": "check-test", "corpus": "bundled",
                                         "timeout_s": 60, **scenario}), encoding="utf-8")

    return topology_path, scenario_path


def modality(ae_title: str, sop_classes: list[Any], **fields: Any) -> dict[str, Any]:
    return {"kind": "modality", "ae_title": ae_title, "sop_classes": sop_classes, **fields}


def pacs(ae_title: str, sop_classes: list[Any], **fields: Any) -> dict[str, Any]:
    return {"kind": "pacs", "ae_title": ae_title, "sop_classes": sop_classes, **fields}


def router(ae_title: str, sop_classes: list[Any], rules: list[dict[str, Any]],
           **fields: Any) -> dict[str, Any]:
    return {"kind": "router", "ae_title": ae_title, "sop_classes": sop_classes, "rules": rules,
            **fields}


def direct(pacs_fields: dict[str, Any] | None = None, link: dict[str, Any] | None = None,
           ct_fields: dict[str, Any] | None = None) -> dict[str, Any]:
    """A CT modality sending straight to a PACS."""
    return {
        "nodes": {"ct": modality("CT1", CT, **(ct_fields or {})),
                  "pacs": pacs("PACS", CT, **(pacs_fields or {}))},
        "links": [{"from": "ct", "to": "pacs", **(link or {})}],
    }


def routed(router_fields: dict[str, Any], rules: list[dict[str, Any]] | None = None,
           link: dict[str, Any] | None = None, classes: list[str] = CT) -> dict[str, Any]:
    """A CT modality sending through a router to a PACS."""
    return {
        "nodes": {"ct": modality("CT1", classes),
                  "router": router("ROUTER", classes,
                                   rules or [{"name": "all", "forward": ["pacs"]}],
                                   **router_fields),
                  "pacs": pacs("PACS", classes)},
        "links": [{"from": "ct", "to": "router"}, {"from": "router", "to": "pacs", **(link or {})}],
    }


def fault(name: str, fault_type: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "type": fault_type, **fields}


# Every case below was run against the simulator; each row of its ledger must be predicted.
CASES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "calling AE title not accepted": (
        direct({"accept_calling_ae": ["OTHER"]}), {"senders": [CT_SMALL]}),
    "firewall denies by calling AE": (
        direct(link={"firewall": {"rules": [{"action": "deny", "calling_ae": "CT1"}]}}),
        {"senders": [CT_SMALL]}),
    "injected A-ASSOCIATE-RJ": (
        direct(link={"faults": [fault("rj", "associate_reject",
                                      attributes={"result": 2, "source": 3, "reason": 1})]}),
        {"senders": [CT_SMALL]}),
    "answer status failure": (
        direct(link={"faults": [fault("st", "answer_status", direction="upstream",
                                      attributes={"status": 0xC000})]}),
        {"senders": [CT_SMALL]}),
    "answer status success is a false success": (
        direct(link={"faults": [fault("st", "answer_status", direction="upstream",
                                      attributes={"status": 0})]}),
        {"senders": [CT_SMALL]}),
    "middle box smaller than the PDU": (
        direct({"max_pdu": 65536},
               {"faults": [fault("box", "middlebox_limit", attributes={"max_pdu_length": 8192})]}),
        {"senders": [CT_SMALL]}),
    "middle box with clamped Maximum Length": (
        direct({"max_pdu": 65536},
               {"faults": [fault("box", "middlebox_limit", attributes={"max_pdu_length": 8192}),
                           fault("clamp", "clamp_max_length", attributes={"max_length": 8192})]}),
        {"senders": [CT_SMALL]}),
    "bandwidth outlasts the DIMSE timeout": (
        direct(link={"faults": [fault("slow", "bandwidth", direction="upstream",
                                      attributes={"rate": 20})]},
               ct_fields={"timeouts": {"dimse_s": 1}}),
        {"senders": [{**CT_PAIR, "group_by": "instance"}]}),
    "pause outlasts the network timeout": (
        direct({"timeouts": {"network_s": 1}}),
        {"senders": [{**CT_PAIR, "group_by": 2, "pause_between_s": 1.5}]}),
    "idle firewall black-holes the second C-STORE": (
        direct(link={"firewall": {"idle_timeout_s": 0.5}}, ct_fields={"timeouts": {"dimse_s": 1}}),
        {"senders": [{**CT_PAIR, "group_by": 2, "pause_between_s": 1}]}),
    "no rule matches": (
        routed({}, [{"name": "mr-only", "match": {"Modality": "MR"}, "forward": ["pacs"]}]),
        {"senders": [CT_PAIR]}),
    "router transcodes only little endian": (
        {"nodes": {
            "mr": modality("MR1", [{"sop_class": "MRImageStorage", "transfer_syntaxes": [
                "ImplicitVRLittleEndian", "ExplicitVRBigEndian"]}]),
            "router": router("ROUTER", [{"sop_class": "MRImageStorage", "transfer_syntaxes": [
                "ImplicitVRLittleEndian", "ExplicitVRLittleEndian", "ExplicitVRBigEndian"]}],
                [{"name": "all", "forward": ["pacs"]}], transcode=True),
            "pacs": pacs("PACS", [{"sop_class": "MRImageStorage",
                                   "transfer_syntaxes": ["ExplicitVRLittleEndian"]}])},
         "links": [{"from": "mr", "to": "router"}, {"from": "router", "to": "pacs"}]},
        {"senders": [{"modality": "mr", "select": {
            "glob": ["MR/MR_small_implicit.dcm", "MR/MR_small_bigendian.dcm"]}}]}),
    "concurrency over the association limit": (
        direct({"max_associations": 1}), {"senders": [{**CT_PAIR, "concurrency": 8}], "repeat": 4}),
    "link down, retried by the router": (
        routed({"retry": {"max_attempts": 2, "initial_backoff_s": 0.1}},
               link={"faults": [fault("off", "down")]}),
        {"senders": [CT_PAIR]}),
    "fault removed while the router retries": (
        routed({"retry": {"max_attempts": 3, "initial_backoff_s": 0.2}},
               link={"faults": [fault("busy", "answer_status", direction="upstream",
                                      attributes={"status": 0xA700})]}),
        {"senders": [CT_SMALL], "timeline": [
            {"action": "start_sending", "at_s": 0},
            {"action": "remove_fault", "after": {"association_on": "router->pacs"},
             "link": "router->pacs", "name": "busy"}]}),
    "router relabels the character set": (
        routed({"private_tags": ["SIEMENS MEDCOM HEADER"]},
               [{"name": "all", "forward": ["pacs"],
                 "coerce": {"set": {"SpecificCharacterSet": "ISO_IR 100", "InstitutionName": "X"},
                            "remove": ["private:SIEMENS CSA HEADER"]}}],
               classes=["SecondaryCaptureImageStorage", "MRImageStorage"]),
        {"senders": [{"modality": "ct", "select": {
            "glob": ["charset/chrRuss.dcm", "private/MR-SIEMENS-DICOM-WithOverlays.dcm"]}}]}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_case_predicted_row_by_row(case: str, tmp_path: Path) -> None:
    """Each ledger row of a small rehearsal is the outcome the check predicted for it."""
    topology, scenario = CASES[case]
    topology_path, scenario_path = write_inputs(tmp_path, topology, scenario)

    assert_predicted_row_by_row(topology_path, scenario_path, tmp_path)


def test_cutover_predicted_row_by_row(tmp_path: Path) -> None:
    """The bundled cutover rehearsal ends exactly as the check predicts, row by row."""
    assert_predicted_row_by_row(ROOT / "topologies" / "hospital-cutover.yaml",
                                ROOT / "scenarios" / "cutover.yaml", tmp_path)


FIELD_CASES = ["fc01-called-ae", "fc02-never-proposed", "fc03-enhanced-mr", "fc05-middlebox-pdu",
               "fc07-silent-sender", "fc08-status-codes", "fc09-charset-term",
               "fc10-max-pdu-zero", "fc11-tls-mismatch"]


@pytest.mark.parametrize("case", FIELD_CASES)
def test_field_case_predicted_row_by_row(case: str, tmp_path: Path) -> None:
    """Each field case ends as the check predicts, row by row."""
    assert_predicted_row_by_row(ROOT / "topologies" / "field" / f"{case}.yaml",
                                ROOT / "scenarios" / "field" / f"{case}.yaml", tmp_path)


def test_cutover_failures_name_hop_and_cause() -> None:
    """The cutover's known gaps are predicted on the right hop with the right cause."""
    result = predict(ROOT / "topologies" / "hospital-cutover.yaml", ROOT / "scenarios" / "cutover.yaml")

    failed = [p for p in result.predictions if p.outcome == Outcome.FAILED]
    proposal = [p for p in failed if p.failure and p.failure.detail.get("cause") == "proposal"]
    assert {p.failure.hop for p in proposal if p.failure} == {"mr->router"}
    assert {p.source_file for p in proposal} == {"MR/MR_small_jp2klossless.dcm"}
    enhanced_mr = [p for p in failed if p.sop_class_uid == "1.2.840.10008.5.1.4.1.1.4.1"]
    assert {p.route.destination for p in enhanced_mr} == {"new-pacs"}
    assert {p.failure.detail["context_result"] for p in enhanced_mr if p.failure} == {3}
    assert {p.route.rule_sets for p in enhanced_mr} == {(("router", "go-live"),)}
    assert result.failure_predicted


def test_timeline_fault_change_is_a_risk(tmp_path: Path) -> None:
    """A fault removed while the sender still sends makes its failure a risk, not a certainty."""
    topology, scenario = CASES["fault removed while the router retries"]
    topology_path, scenario_path = write_inputs(tmp_path, topology, scenario)

    result = predict(topology_path, scenario_path)

    [prediction] = result.predictions
    assert prediction.outcome == Outcome.AT_RISK
    assert [str(r.failure_kind) for r in prediction.risks] == ["dimse-failure"]
    assert prediction.risks[0].detail["status"] == "0xA700"


def test_fc07_predicts_exactly_one_rejection() -> None:
    """Eleven held-open associations against a limit of ten: the eleventh alone is rejected 2/3/2."""
    result = predict(ROOT / "topologies" / "field" / "fc07-silent-sender.yaml",
                     ROOT / "scenarios" / "field" / "fc07-silent-sender.yaml")

    failed = [p for p in result.predictions if p.outcome == Outcome.FAILED]
    assert len(failed) == 1
    assert failed[0].failure is not None
    assert (failed[0].failure.detail["result"], failed[0].failure.detail["source"],
            failed[0].failure.detail["reason"]) == (2, 3, 2)
    assert failed[0].failure.permanent is False


def test_declarations_mode_explores_every_rule_set() -> None:
    """Without a corpus every declared pair travels every rule set, with attribute conditions named."""
    topology = load_topology(ROOT / "topologies" / "hospital-cutover.yaml")

    result = check_topology(topology)

    assert result.mode == "declarations"
    labels = {route.label for route in result.routes}
    assert "mr > router > old-pacs [router: legacy]" in labels
    assert "mr > router > new-pacs [router: go-live]" in labels
    conditional = [r for r in result.routes if r.destination == "viewer" and r.source == "mr"]
    assert conditional
    assert {r.condition for r in conditional} == {"Modality matches CT"}
    unproposed = [p for p in result.predictions
                  if p.failure and p.failure.detail.get("cause") == "proposal"]
    assert unproposed == []


def test_corpus_mode_names_classes_no_modality_sends() -> None:
    """With only a corpus, instances of classes no modality declares are named in a note."""
    topology = load_topology(ROOT / "topologies" / "hospital-cutover.yaml")
    instances = load_corpus_instances(None, None, None)
    assert instances is None
    scenario_path = ROOT / "scenarios" / "cutover.yaml"
    corpus = load_corpus_instances(load_scenario(scenario_path, topology), scenario_path, None)

    result = check_topology(topology, corpus)

    assert result.mode == "corpus"
    assert any("RTPlanStorage" in note for note in result.notes)
    sent = {p.sop_class_uid for p in result.predictions}
    assert "1.2.840.10008.5.1.4.1.1.481.5" not in sent


def test_router_changes_are_described(tmp_path: Path) -> None:
    """Character set relabelling, coercions and private blocks appear among the changes."""
    topology, scenario = CASES["router relabels the character set"]
    topology_path, scenario_path = write_inputs(tmp_path, topology, scenario)

    result = predict(topology_path, scenario_path)

    by_file = {p.source_file: p for p in result.predictions}
    russian = by_file["charset/chrRuss.dcm"]
    assert any("SpecificCharacterSet to 'ISO_IR 100' (was ISO_IR 144)" in c for c in russian.changes)
    assert any("sets InstitutionName" in c for c in russian.changes)
    assert russian.failure is not None
    assert str(russian.failure.failure_kind) == "integrity-violation"
    siemens = by_file["private/MR-SIEMENS-DICOM-WithOverlays.dcm"]
    assert any("drops the private block of 'SIEMENS MEDCOM OOG'" in c for c in siemens.changes)
    assert not any("SIEMENS MEDCOM HEADER" in c for c in siemens.changes)
    assert not any("SIEMENS CSA HEADER" in c for c in siemens.changes)  # not in this file
    assert siemens.outcome == Outcome.DELIVERED


def test_context_limit_cuts_the_proposal(tmp_path: Path) -> None:
    """Pairs past the 128-context limit are predicted as never proposed, naming the limit."""
    syntaxes = ["ImplicitVRLittleEndian", "ExplicitVRLittleEndian", "ExplicitVRBigEndian",
                "DeflatedExplicitVRLittleEndian", "JPEGBaseline8Bit", "JPEGExtended12Bit",
                "JPEGLosslessSV1", "JPEGLSLossless", "JPEGLSNearLossless", "JPEG2000Lossless",
                "JPEG2000", "RLELossless"]
    classes = ["CTImageStorage", "MRImageStorage", "UltrasoundImageStorage",
               "SecondaryCaptureImageStorage", "DigitalXRayImageStorageForPresentation",
               "DigitalMammographyXRayImageStorageForPresentation", "NuclearMedicineImageStorage",
               "PositronEmissionTomographyImageStorage", "EnhancedCTImageStorage",
               "EnhancedMRImageStorage", "UltrasoundMultiFrameImageStorage"]
    declared = [{"sop_class": c, "transfer_syntaxes": syntaxes} for c in classes]
    path = tmp_path / "topology.yaml"
    path.write_text(json.dumps({"site": "many", "nodes": {
        "mod": modality("MOD", declared), "pacs": pacs("PACS", declared)},
        "links": [{"from": "mod", "to": "pacs"}]}), encoding="utf-8")

    result = check_topology(load_topology(path))

    cut = [p for p in result.predictions if p.outcome == Outcome.FAILED]
    assert len(result.predictions) == 132
    assert len(cut) == 4
    assert all(p.failure and "128 presentation contexts" in p.failure.reason for p in cut)


def test_middle_box_without_corpus_is_a_risk(tmp_path: Path) -> None:
    """With object sizes unknown, a middle box below the receiver's PDU length is a risk."""
    topology, _ = CASES["middle box smaller than the PDU"]
    path = tmp_path / "topology.yaml"
    path.write_text(json.dumps({"site": "box", **topology}), encoding="utf-8")

    result = check_topology(load_topology(path))

    assert {p.outcome for p in result.predictions} == {Outcome.AT_RISK}
    assert {str(r.failure_kind) for p in result.predictions for r in p.risks} == {"pdu-over-limit"}
    assert not result.failure_predicted


def test_scenario_needs_corpus_instances() -> None:
    """check_topology with a scenario but no corpus raises CheckError."""
    topology = load_topology(ROOT / "topologies" / "hospital-cutover.yaml")
    scenario = load_scenario(ROOT / "scenarios" / "cutover.yaml", topology)

    with pytest.raises(CheckError, match="corpus"):
        check_topology(topology, None, scenario)


def rehearse_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "simulator", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=120, check=False)


def test_cli_exit_one_and_json_on_predicted_failure() -> None:
    """check --json prints every cell and exits 1 when a failure is predicted."""
    done = rehearse_cli("check", "topologies/field/fc02-never-proposed.yaml",
                        "--scenario", "scenarios/field/fc02-never-proposed.yaml", "--json")

    assert done.returncode == 1, done.stderr
    document = json.loads(done.stdout)
    assert document["failure_predicted"] is True
    failing = [c for c in document["cells"] if c["outcome"] == "failed"]
    assert len(failing) == 1
    assert failing[0]["transfer_syntax_name"] == "JPEG2000Lossless"
    assert failing[0]["reasons"]


def test_cli_exit_zero_and_table_when_nothing_fails() -> None:
    """check prints the matrix and exits 0 when every delivery is predicted to pass."""
    done = rehearse_cli("check", "topologies/field/fc10-max-pdu-zero.yaml",
                        "--scenario", "scenarios/field/fc10-max-pdu-zero.yaml")

    assert done.returncode == 0, done.stderr
    assert "Routes from sender" in done.stdout
    assert "no failure predicted" in done.stdout


def test_cli_exit_two_on_invalid_input(tmp_path: Path) -> None:
    """A missing topology file or an --against without --node is invalid input, exit 2."""
    missing = rehearse_cli("check", str(tmp_path / "nowhere.yaml"))
    half = rehearse_cli("check", "topologies/hospital-cutover.yaml", "--against",
                        str(tmp_path / "probe.yaml"))

    assert missing.returncode == 2
    assert "file not found" in missing.stderr
    assert half.returncode == 2
    assert "--against and --node go together" in half.stderr
