"""A second instance of each field failure kind, as bundled scenarios; each checks its run log.

Every case under topologies/field/ and scenarios/field/ named fcNN-extra-*
is another failure of the kind of field case FC-NN, set up differently, and
its test checks what that kind must record.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from simulator.corpus import bundled_corpus
from simulator.runner import RunOptions, RunResult, run_rehearsal
from simulator.scenario import load_scenario
from simulator.topology import load_topology

ROOT = Path(__file__).resolve().parent.parent

RT_STRUCTURE_SET = "1.2.840.10008.5.1.4.1.1.481.3"
RT_PLAN = "1.2.840.10008.5.1.4.1.1.481.5"
RT_DOSE = "1.2.840.10008.5.1.4.1.1.481.2"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"


@pytest.fixture(autouse=True)
def _corpus_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REHEARSE_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "corpus-cache"))


def rehearse(case: str, tmp_path: Path, corpus: Path | None = None) -> RunResult:
    topology_path = ROOT / "topologies" / "field" / f"{case}.yaml"
    scenario_path = ROOT / "scenarios" / "field" / f"{case}.yaml"
    topology = load_topology(topology_path)
    scenario = load_scenario(scenario_path, topology)
    options = RunOptions(topology_path, scenario_path, tmp_path / "run", corpus=corpus)

    return run_rehearsal(topology, scenario, options)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def events(result: RunResult, kind: str, **fields: Any) -> list[dict[str, Any]]:
    return [e for e in read_jsonl(result.run_dir / "events.jsonl")
            if e["kind"] == kind and all(e.get(k) == v for k, v in fields.items())]


def ledger(result: RunResult, **fields: Any) -> list[dict[str, Any]]:
    return [r for r in read_jsonl(result.run_dir / "ledger.jsonl")
            if all(r.get(k) == v for k, v in fields.items())]


def test_fc01_extra_calling_ae_rejected_after_cutover(tmp_path: Path) -> None:
    """After the cutover the new archive rejects the router's calling AE with RJ 1/1/3, never retried."""
    result = rehearse("fc01-extra-calling-ae-cutover", tmp_path)

    assert result.expectations_held
    [before] = ledger(result, destination="old-pacs")
    assert before["state"] == "delivered"
    after = ledger(result, destination="new-pacs")
    assert len(after) == 2
    for row in after:
        assert row["state"] == "failed"
        assert row["status"] is None
        failure = row["failure"]
        assert (failure["failure_kind"], failure["hop"], failure["side"], failure["permanent"]) == \
            ("association-rejected", "router->new-pacs", "acceptor", True)
        assert failure["detail"] == {
            "result": 1, "result_name": "rejected-permanent",
            "source": 1, "source_name": "service-user",
            "reason": 3, "reason_name": "calling-AE-title-not-recognized",
            "category": "configuration",
        }
    [cutover] = events(result, "router.cutover", node="router")
    assert (cutover["from_rule_set"], cutover["to_rule_set"]) == ("legacy", "go-live")
    requested = events(result, "association.requested", node="new-pacs")
    assert {(e["calling_ae"], e["called_ae"]) for e in requested} == {("ROUTER", "NEW_PACS")}
    assert len(events(result, "association.rejected", node="new-pacs", reason=3)) == len(requested)
    assert not events(result, "dimse.received", node="new-pacs")
    assert not events(result, "forward.retry")
    assert {e["attempts"] for e in events(result, "forward.failed", destination="new-pacs")} == {1}


def test_fc02_extra_jpeg_ls_never_proposed_by_router(tmp_path: Path) -> None:
    """A JPEG-LS MR the router accepts but declares for the SCP role only is never proposed onward."""
    result = rehearse("fc02-extra-jpegls-router", tmp_path)

    assert result.expectations_held
    [ingress] = events(result, "association.accepted", node="mr")
    accepted = {(c["sop_class"], c.get("transfer_syntax")) for c in ingress["contexts"] if c["result"] == 0}
    assert (MR_IMAGE, JPEG_LS_LOSSLESS) in accepted
    [row] = ledger(result, sop_class_uid=MR_IMAGE)
    assert row["transfer_syntax_uid"] == JPEG_LS_LOSSLESS
    assert row["state"] == "failed"
    failure = row["failure"]
    assert (failure["failure_kind"], failure["hop"], failure["side"], failure["permanent"]) == \
        ("no-accepted-context", "router->pacs", "requestor", True)
    assert failure["detail"] == {"sop_class": MR_IMAGE, "transfer_syntax": JPEG_LS_LOSSLESS,
                                 "cause": "proposal"}
    for request in events(result, "association.requested", node="router", link="router->pacs"):
        assert MR_IMAGE not in {c["sop_class"] for c in request["contexts"]}
    sent = {e.get("affected_sop_instance_uid") for e in events(result, "link.pdu", link="router->pacs")}
    assert row["sop_instance_uid"] not in sent
    [left] = events(result, "spool.left", node="router")
    assert left["count"] == 1


def one_study_corpus(tmp_path: Path, relpaths: list[str]) -> Path:
    """Copy bundled files into one study, as a planning system exports one RT study."""
    root = tmp_path / "corpus"
    study_uid = generate_uid()
    for relpath in relpaths:
        dataset = dcmread(bundled_corpus() / relpath)
        dataset.StudyInstanceUID = study_uid
        target = root / relpath
        target.parent.mkdir(parents=True, exist_ok=True)
        dataset.save_as(target, enforce_file_format=True)
    return root


# pydicom's RT Dose test file has a UID with a leading zero in one component.
@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_fc03_extra_rt_structure_set_partial_study(tmp_path: Path) -> None:
    """RT Structure Set is rejected with result 3 while RT Plan and RT Dose of the same study are stored."""
    corpus = one_study_corpus(tmp_path, ["RT/rtplan.dcm", "RT/rtdose.dcm", "RT/rtstruct.dcm"])
    result = rehearse("fc03-extra-rt-structure-set", tmp_path, corpus)

    assert result.expectations_held
    [accepted] = events(result, "association.accepted", role="requestor")
    by_class = {c["sop_class"]: c["result"] for c in accepted["contexts"]}
    assert by_class[RT_STRUCTURE_SET] == 3
    assert by_class[RT_PLAN] == by_class[RT_DOSE] == 0
    [row] = ledger(result, sop_class_uid=RT_STRUCTURE_SET)
    failure = row["failure"]
    assert (failure["failure_kind"], failure["side"], failure["permanent"]) == \
        ("no-accepted-context", "acceptor", True)
    assert failure["detail"]["cause"] == "acceptance"
    assert [c["result"] for c in failure["detail"]["context_results"]] == [3]
    assert {r["state"] for r in ledger(result) if r["sop_class_uid"] != RT_STRUCTURE_SET} == {"delivered"}
    studies = result.summary["studies"]["pacs"]
    assert studies["partially-delivered"] == 1
    assert studies["delivered"] == 0


def test_fc05_extra_middle_box_and_unlimited_modality(tmp_path: Path) -> None:
    """A 4096-byte middle box resets a modality that advertises 0; rewriting turns its 0 into 4096."""
    result = rehearse("fc05-extra-middlebox-unlimited", tmp_path)

    assert result.expectations_held
    [plain] = events(result, "association.accepted", role="requestor", link="modality->pacs")
    assert (plain["max_pdu_requestor"], plain["max_pdu_acceptor"]) == (0, 32768)
    [over] = events(result, "link.pdu_over_middlebox_limit", link="modality->pacs")
    assert (over["direction"], over["pdu"], over["limit"]) == ("upstream", "p_data_tf", 4096)
    assert 4096 < over["length"] <= 32768
    [failed] = ledger(result, source="modality")
    failure = failed["failure"]
    assert (failure["failure_kind"], failure["hop"], failure["side"], failure["permanent"]) == \
        ("pdu-over-limit", "modality->pacs", "link", True)
    assert failure["detail"]["fault"] == "middle-box"
    assert failure["detail"]["max_pdu_length"] == 4096

    [clamped] = events(result, "association.accepted", role="acceptor", link="modality-b->pacs")
    assert (clamped["max_pdu_requestor"], clamped["max_pdu_acceptor"]) == (4096, 32768)
    substituted = events(result, "association.max_length_substituted", link="modality-b->pacs")
    assert {(e["declared_by"], e["declared"], e["received"]) for e in substituted} == {
        ("requestor", 0, 4096), ("acceptor", 32768, 4096)}
    [closed] = events(result, "link.connection_closed", link="modality-b->pacs")
    assert closed["oversize_pdus"] == {"upstream": 0, "downstream": 0}
    assert max(int(size) for size in closed["pdu_sizes"]["upstream"]) <= 4096
    assert not events(result, "link.pdu_over_middlebox_limit", link="modality-b->pacs")


def test_fc07_extra_viewer_keeps_sub_associations_open(tmp_path: Path) -> None:
    """Four open sub-associations fill a viewer; the fifth gets RJ 2/3/2, and each idle one is aborted."""
    result = rehearse("fc07-extra-viewer-open-associations", tmp_path)

    assert result.expectations_held
    rows = ledger(result)
    assert len(rows) == 5
    rejected = [r for r in rows if r["state"] == "failed"]
    assert len(rejected) == 1
    failure = rejected[0]["failure"]
    assert (failure["failure_kind"], failure["hop"], failure["side"], failure["permanent"]) == \
        ("association-rejected", "archive-mover->viewer", "acceptor", False)
    assert (failure["detail"]["result"], failure["detail"]["source"], failure["detail"]["reason"]) == \
        (2, 3, 2)
    assert failure["detail"]["category"] == "capacity"
    assert [r["state"] for r in rows].count("delivered") == 4
    timeouts = events(result, "timeout", node="viewer", timeout_kind="network")
    assert len(timeouts) == 4
    assert {(t["timed_out_side"], t["timeout_s"]) for t in timeouts} == {("acceptor", 2.0)}
    aborted = events(result, "association.aborted", node="viewer", initiated_by="local")
    assert {a["assoc_id"] for a in aborted} == {t["assoc_id"] for t in timeouts}
    closed = {e["assoc_id"] for e in events(result, "link.connection_closed",
                                            link="archive-mover->viewer")}
    assert {t["assoc_id"] for t in timeouts} <= closed
    assert len(events(result, "association.held_open", node="archive-mover")) == 4


def test_fc08_extra_out_of_resources_retried(tmp_path: Path) -> None:
    """0xA700 from a box in front of the PACS is kept, classified transient, retried, and then stored."""
    result = rehearse("fc08-extra-out-of-resources", tmp_path)

    assert result.expectations_held
    responses = events(result, "dimse.response", node="router")
    first = responses[0]
    assert first["status"] == "0xA700"
    assert responses[-1]["status"] == "0x0000"
    assert (first["status_category"], first["error_comment"]) == ("failure", "Out of resources")
    retries = events(result, "forward.retry", node="router")
    assert retries
    retry = retries[0]
    assert (retry["failure_kind"], retry["side"], retry["permanent"], retry["attempt"]) == \
        ("dimse-failure", "acceptor", False, 1)
    assert retry["detail"] == {"status": "0xA700", "error_comment": "Out of resources"}
    assert {r["detail"]["status"] for r in retries} == {"0xA700"}
    [answered] = events(result, "link.fault_triggered", fault="out-of-resources")
    assert (answered["action"], answered["status"]) == ("answered", 0xA700)
    [row] = ledger(result)
    assert (row["state"], row["status"], row["failure"]) == ("delivered", "0x0000", None)
    assert row["attempts"] == 1 + len(responses)
    assert not events(result, "forward.failed")


def test_fc09_extra_correct_utf8_term_keeps_names(tmp_path: Path) -> None:
    """A router that writes ISO_IR 192 passes a strict PACS, and every decoded name is unchanged."""
    result = rehearse("fc09-extra-utf8-correct-term", tmp_path)

    assert result.expectations_held
    coerced = events(result, "router.coerced", node="router")
    assert len(coerced) == 6
    for event in coerced:
        assert [c["action"] for c in event["changes"]] == ["reencode-utf8"]
        assert event["changes"][0]["to"] == "ISO_IR 192"
    rows = ledger(result)
    assert len(rows) == 6
    for row in rows:
        assert (row["state"], row["status"], row["failure"]) == ("delivered", "0x0000", None)
        assert row["intact"] is True
        integrity = row["integrity"]
        assert integrity["character_set"]["stored"] == ["ISO_IR 192"]
        assert integrity["changed"] == ["(0008,0005) SpecificCharacterSet"]
        assert "person_names_changed" not in integrity
        assert "unexplained" not in integrity
    assert not events(result, "dimse.sent", node="strict-pacs", status="0xA900")


def test_fc10_extra_one_side_unlimited(tmp_path: Path) -> None:
    """Maximum Length 0 on one side and 16384 on the other is kept as negotiated, each way round."""
    result = rehearse("fc10-extra-one-side-zero", tmp_path)

    assert result.expectations_held
    expected = {"unlimited-sender->finite-pacs": (0, 16384), "finite-sender->unlimited-pacs": (16384, 0)}
    for link, (requestor_max, acceptor_max) in expected.items():
        for role in ("requestor", "acceptor"):
            [accepted] = events(result, "association.accepted", link=link, role=role)
            assert (accepted["max_pdu_requestor"], accepted["max_pdu_acceptor"]) == \
                (requestor_max, acceptor_max)
        [request] = events(result, "link.pdu", link=link, pdu="associate_rq")
        assert request["user_information"]["max_length"] == requestor_max
        [answer] = events(result, "link.pdu", link=link, pdu="associate_ac")
        assert answer["user_information"]["max_length"] == acceptor_max
        [closed] = events(result, "link.connection_closed", link=link)
        assert closed["oversize_pdus"] == {"upstream": 0, "downstream": 0}
        limits = closed["max_pdu_length"]
        assert limits["upstream"] == (acceptor_max or "unlimited")
        assert limits["downstream"] == (requestor_max or "unlimited")
    # The finite sender sends the whole data set in one PDU to the unlimited PACS.
    [to_unlimited] = events(result, "link.connection_closed", link="finite-sender->unlimited-pacs")
    assert max(int(size) for size in to_unlimited["pdu_sizes"]["upstream"]) > 16384
    for row in ledger(result):
        assert (row["state"], row["status"]) == ("delivered", "0x0000")
    assert not events(result, "association.max_length_substituted")


def test_fc11_extra_tls_both_ends_delivers(tmp_path: Path) -> None:
    """A TLS sender and a TLS receiver store, and both sides follow one association id."""
    result = rehearse("fc11-extra-tls-both-ends", tmp_path)

    assert result.expectations_held
    [row] = ledger(result)
    assert (row["state"], row["status"], row["failure"], row["intact"]) == \
        ("delivered", "0x0000", None, True)
    [sent] = events(result, "association.requested", node="tls-sender")
    [received] = events(result, "association.requested", node="tls-pacs")
    assert received["assoc_id"] == sent["assoc_id"]
    [closed] = events(result, "link.connection_closed", link="tls-sender->tls-pacs")
    assert closed["assoc_id"] == sent["assoc_id"]
    assert closed["bytes_written"]["upstream"] > 0


def test_fc11_extra_tls_both_ends_is_no_mismatch(tmp_path: Path) -> None:
    """A link with TLS at both ends records no TLS mismatch and notes no failure."""
    result = rehearse("fc11-extra-tls-both-ends", tmp_path)

    assert not events(result, "link.tls_mismatch")
    assert not events(result, "link.failure_noted")
