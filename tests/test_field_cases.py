"""Field failures reproduced as bundled scenarios; each checks what its run log must record."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from simulator.corpus import bundled_corpus
from simulator.runner import RunOptions, RunResult, run_rehearsal
from simulator.scenario import load_scenario
from simulator.topology import load_topology

ROOT = Path(__file__).resolve().parent.parent


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


def one_study_corpus(tmp_path: Path, relpaths: list[str]) -> Path:
    """Copy bundled files into one study, as a scanner writes classic and enhanced series."""
    root = tmp_path / "corpus"
    study_uid = generate_uid()
    for relpath in relpaths:
        dataset = dcmread(bundled_corpus() / relpath)
        dataset.StudyInstanceUID = study_uid
        target = root / relpath
        target.parent.mkdir(parents=True, exist_ok=True)
        dataset.save_as(target, enforce_file_format=True)
    return root


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def events(result: RunResult, kind: str, **fields: Any) -> list[dict[str, Any]]:
    found = []
    for event in read_jsonl(result.run_dir / "events.jsonl"):
        if event["kind"] == kind and all(event.get(k) == v for k, v in fields.items()):
            found.append(event)
    return found


def ledger(result: RunResult) -> list[dict[str, Any]]:
    return read_jsonl(result.run_dir / "ledger.jsonl")


def test_fc01_called_ae_rejected_never_retried(tmp_path: Path) -> None:
    """An unrecognized called AE is a permanent 1/1/7 rejection, with no DIMSE and no retry."""
    result = rehearse("fc01-called-ae", tmp_path)

    assert result.expectations_held
    rows = ledger(result)
    assert len(rows) == 2
    for row in rows:
        assert row["state"] == "failed"
        failure = row["failure"]
        assert failure["failure_kind"] == "association-rejected"
        assert failure["permanent"] is True
        assert failure["side"] == "acceptor"
        assert (failure["detail"]["result"], failure["detail"]["source"],
                failure["detail"]["reason"]) == (1, 1, 7)
        assert failure["detail"]["reason_name"] == "called-AE-title-not-recognized"
    assert {row["failure"]["hop"] for row in rows} == {"modality->archive", "router->archive"}
    requested = events(result, "association.requested", role="acceptor", node="archive")
    assert {e["called_ae"] for e in requested} == {"ANY-SCP"}
    assert not events(result, "dimse.received", node="archive")
    assert not events(result, "forward.retry")
    assert len(events(result, "forward.failed", node="router")) == 1


def test_fc02_unproposed_transfer_syntax(tmp_path: Path) -> None:
    """A JPEG 2000 object the sender never proposed fails on its proposal, with nothing on the wire."""
    result = rehearse("fc02-never-proposed", tmp_path)

    assert result.expectations_held
    failed = [r for r in ledger(result) if r["state"] == "failed"]
    assert len(failed) == 1
    failure = failed[0]["failure"]
    assert failed[0]["transfer_syntax_uid"] == "1.2.840.10008.1.2.4.90"
    assert failure["failure_kind"] == "no-accepted-context"
    assert failure["side"] == "requestor"
    assert failure["detail"]["cause"] == "proposal"
    wire_commands = [e for e in events(result, "link.pdu")
                     if e.get("command") == "C-STORE-RQ"]
    sent = {e.get("affected_sop_instance_uid") for e in wire_commands}
    assert failed[0]["sop_instance_uid"] not in sent
    proposed = events(result, "association.requested", role="requestor")[0]["contexts"]
    assert "1.2.840.10008.1.2.4.90" not in {ts for cx in proposed for ts in cx["transfer_syntaxes"]}


def test_fc03_enhanced_mr_partial_study(tmp_path: Path) -> None:
    """Enhanced MR is rejected with result 3 while classic MR of the same study is delivered."""
    corpus = one_study_corpus(
        tmp_path, ["MR/MR_small.dcm", "MR/MR_small_implicit.dcm", "MR-enhanced/emri_small.dcm"]
    )
    result = rehearse("fc03-enhanced-mr", tmp_path, corpus)

    assert result.expectations_held
    accepted = events(result, "association.accepted", role="requestor")[0]
    by_class = {cx["sop_class"]: cx for cx in accepted["contexts"]}
    assert by_class["1.2.840.10008.5.1.4.1.1.4.1"]["result"] == 3
    assert by_class["1.2.840.10008.5.1.4.1.1.4"]["result"] == 0
    studies = result.summary["studies"]
    assert studies["pacs"]["partially-delivered"] == 1
    assert studies["pacs"]["delivered"] == 0


def test_fc07_silent_sender_fills_router(tmp_path: Path) -> None:
    """Pushes that never release hit the idle timeout, and the eleventh is rejected 2/3/2 for capacity."""
    result = rehearse("fc07-silent-sender", tmp_path)

    assert result.expectations_held
    rows = ledger(result)
    rejected = [r for r in rows if r["failure"] and r["failure"]["failure_kind"] == "association-rejected"]
    assert len(rejected) == 1
    detail = rejected[0]["failure"]["detail"]
    assert (detail["result"], detail["source"], detail["reason"]) == (2, 3, 2)
    assert detail["reason_name"] == "local-limit-exceeded"
    assert detail["category"] == "capacity"
    assert rejected[0]["failure"]["permanent"] is False
    timeouts = events(result, "timeout", node="router", timeout_kind="network")
    assert len(timeouts) == 10
    aborted = events(result, "association.aborted", node="router", initiated_by="local")
    assert len(aborted) == 10
    closed = {e["assoc_id"] for e in events(result, "link.connection_closed", link="scanner->router")}
    assert {t["assoc_id"] for t in timeouts} <= closed


def test_fc08_statuses_not_collapsed(tmp_path: Path) -> None:
    """Each instance keeps its own status: 0xA900 with comment and offending element, and 0x0000."""
    result = rehearse("fc08-status-codes", tmp_path)

    responses = events(result, "dimse.response", node="ct")
    statuses = {e["sop_instance_uid"]: e for e in responses}
    assert {e["status"] for e in responses} == {"0x0000", "0xA900"}
    assert len({e["assoc_id"] for e in responses}) == 1
    failed = [e for e in statuses.values() if e["status"] == "0xA900"]
    for response in failed:
        assert response["status_category"] == "failure"
        assert response["error_comment"].startswith("Missing")
        assert response["offending_element"]
    rows = {r["sop_instance_uid"]: r for r in ledger(result)}
    for uid, response in statuses.items():
        assert rows[uid]["status"] == response["status"]
    assert result.summary["states"]["failed"] == len(failed)


def test_fc10_max_pdu_zero_is_unlimited(tmp_path: Path) -> None:
    """Maximum Length 0 is negotiated and recorded as 0 (unlimited) on both sides, and stores."""
    result = rehearse("fc10-max-pdu-zero", tmp_path)

    assert result.expectations_held
    for role in ("requestor", "acceptor"):
        accepted = events(result, "association.accepted", role=role)[0]
        assert accepted["max_pdu_requestor"] == 0
        assert accepted["max_pdu_acceptor"] == 0
    request = events(result, "link.pdu", pdu="associate_rq")[0]
    assert request["user_information"]["max_length"] == 0
    response = events(result, "dimse.response", node="sender")[0]
    assert response["status"] == "0x0000"
    assert not events(result, "association.max_length_substituted")


def test_fc09_invalid_character_set_term(tmp_path: Path) -> None:
    """A router that writes 'ISO IR 192' is caught on its hop; strict and lenient PACS differ."""
    result = rehearse("fc09-charset-term", tmp_path)

    assert result.expectations_held
    coerced = events(result, "router.coerced", node="router")
    assert len(coerced) == 8
    for event in coerced:
        written = [c for c in event["changes"] if c["action"] == "write-term"]
        assert written == [{"action": "write-term", "tag": "(0008,0005)", "to": "ISO IR 192"}]
    rows = ledger(result)
    strict = [r for r in rows if r["destination"] == "strict-pacs"]
    lenient = [r for r in rows if r["destination"] == "lenient-pacs"]
    assert len(strict) == len(lenient) == 4
    for row in strict:
        assert row["state"] == "failed"
        assert row["status"] == "0xA900"
        assert row["failure"]["hop"] == "router->strict-pacs"
        assert row["failure"]["detail"]["error_comment"] == "Unknown Specific Character Set 'ISO IR 192'"
        assert row["failure"]["detail"]["offending_element"] == ["(0008,0005)"]
    for row in lenient:
        assert row["state"] == "delivered"
        assert row["status"] == "0xB007"
        assert row["failure"]["failure_kind"] == "dimse-warning"
        assert row["integrity"]["character_set"]["stored"] == ["ISO IR 192"]
        assert row["integrity"]["changed"] == ["(0008,0005) SpecificCharacterSet"]
        assert not row["integrity"].get("person_names_changed")


def test_fc05_middle_box_pdu_limit(tmp_path: Path) -> None:
    """A middle box smaller than both ends resets on the first oversize PDU; rewriting fixes it."""
    result = rehearse("fc05-middlebox-pdu", tmp_path)

    assert result.expectations_held
    plain = [e for e in events(result, "association.accepted", role="requestor")
             if e["link"] == "modality->pacs"][0]
    assert plain["max_pdu_requestor"] == 16384
    assert plain["max_pdu_acceptor"] == 65536
    over = events(result, "link.pdu_over_middlebox_limit", link="modality->pacs")[0]
    assert over["limit"] == 8192
    assert over["length"] > 8192
    failed = [r for r in ledger(result) if r["source"] == "modality"][0]
    assert failed["state"] == "failed"
    assert failed["failure"]["failure_kind"] == "pdu-over-limit"
    assert failed["failure"]["side"] == "link"
    assert failed["failure"]["detail"]["fault"] == "middle-box"
    clamped = [e for e in events(result, "association.accepted", role="acceptor")
               if e["link"] == "modality-b->pacs"][0]
    assert clamped["max_pdu_requestor"] == 8192
    substituted = events(result, "association.max_length_substituted", link="modality-b->pacs")
    assert {(e["declared_by"], e["declared"], e["received"]) for e in substituted} == {
        ("requestor", 16384, 8192), ("acceptor", 65536, 8192)}
    assert not events(result, "link.pdu_over_middlebox_limit", link="modality-b->pacs")


def test_fc11_tls_on_one_side(tmp_path: Path) -> None:
    """TLS against plain TCP is a TLS mismatch in both directions, never a huge PDU."""
    result = rehearse("fc11-tls-mismatch", tmp_path)

    assert result.expectations_held
    mismatch = events(result, "link.tls_mismatch", link="tls-sender->plain-pacs")[0]
    assert mismatch["direction"] == "upstream"
    assert mismatch["claimed_length"] > 16_000_000
    assert not events(result, "link.pdu_oversize", link="tls-sender->plain-pacs")
    rows = {r["source"]: r for r in ledger(result)}
    forward = rows["tls-sender"]["failure"]
    assert forward["failure_kind"] == "tls-mismatch"
    assert forward["side"] == "requestor"
    reverse = rows["plain-sender"]["failure"]
    assert reverse["failure_kind"] == "tls-mismatch"
    assert reverse["side"] == "acceptor"
    assert reverse["detail"] == {**reverse["detail"], "requestor_tls": False, "acceptor_tls": True}


def tomosynthesis_corpus(root: Path, sizes_mb: list[float]) -> Path:
    """Write one study of breast tomosynthesis objects, one per size, in instance order."""
    study_uid, series_uid = generate_uid(), generate_uid()
    root.mkdir(parents=True)
    for number, size_mb in enumerate(sizes_mb, 1):
        rows = columns = 256
        frames = max(1, int(size_mb * 1_000_000 / (rows * columns * 2)))
        dataset = Dataset()
        dataset.SOPClassUID = "1.2.840.10008.5.1.4.1.1.13.1.3"
        dataset.SOPInstanceUID = generate_uid()
        dataset.StudyInstanceUID = study_uid
        dataset.SeriesInstanceUID = series_uid
        dataset.PatientID = "TOMO-0001"
        dataset.Modality = "MG"
        dataset.InstanceNumber = number
        dataset.Rows, dataset.Columns, dataset.NumberOfFrames = rows, columns, frames
        dataset.SamplesPerPixel = 1
        dataset.PhotometricInterpretation = "MONOCHROME2"
        dataset.BitsAllocated = dataset.BitsStored = 16
        dataset.HighBit = 15
        dataset.PixelRepresentation = 0
        dataset.PixelData = bytes(rows * columns * 2 * frames)
        dataset.file_meta = FileMetaDataset()
        dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        dataset.save_as(root / f"tomo-{number:02d}.dcm", enforce_file_format=True)
    return root


def test_fc04_cget_without_role_selection(tmp_path: Path) -> None:
    """CT accepted with the default role, so every C-GET sub-operation fails on the requestor."""
    result = rehearse("fc04-cget-no-role", tmp_path)

    assert result.expectations_held
    accepted = events(result, "association.accepted", node="viewer", role="requestor")[0]
    ct_contexts = [c for c in accepted["contexts"] if c["sop_class"] == "1.2.840.10008.5.1.4.1.1.2"]
    assert ct_contexts
    assert {c["result"] for c in ct_contexts} == {0}
    requested = events(result, "association.requested", node="viewer", role="requestor")[0]
    assert requested["role_selection"] == []
    roles = events(result, "qr.roles", node="viewer")[0]["contexts"]
    assert all(c["requestor_scu"] and not c["requestor_scp"] for c in roles)
    instances = len(ledger(result)) // 2
    final = events(result, "qr.response", node="viewer", command="C-GET-RSP")[-1]
    assert final["status"] == "0xA702"
    assert final["failed"] == instances == 2
    assert final["completed"] == 0
    assert not events(result, "dimse.request", node="pacs", command="C-STORE-RQ",
                      sub_operation_of="get")
    for row in [r for r in ledger(result) if r["service"] == "get"]:
        failure = row["failure"]
        assert failure["failure_kind"] == "sub-operation-failed"
        assert failure["side"] == "requestor"
        assert failure["detail"]["cause"] == "role-not-negotiated"
        assert failure["hop"] == "viewer->pacs"
    retrieve = events(result, "qr.retrieve_failed", node="viewer")[0]
    assert retrieve["side"] == "requestor"
    assert retrieve["detail"]["cause"] == "role-not-negotiated"


def test_fc04_cget_with_role_selection(tmp_path: Path) -> None:
    """The same C-GET with SCP/SCU Role Selection brings the whole series to the viewer."""
    result = rehearse("fc04-cget-with-role", tmp_path)

    assert result.expectations_held
    requested = events(result, "association.requested", node="viewer", role="requestor")[0]
    assert requested["role_selection"] == [
        {"sop_class": "1.2.840.10008.5.1.4.1.1.2", "scu_role": True, "scp_role": True}]
    final = events(result, "qr.response", node="viewer", command="C-GET-RSP")[-1]
    assert (final["status"], final["completed"], final["failed"]) == ("0x0000", 2, 0)
    rows = [r for r in ledger(result) if r["service"] == "get"]
    assert len(rows) == 2
    assert all(r["state"] == "delivered" and r["intact"] for r in rows)


def test_fc06_move_slow_link_dimse_timeout(tmp_path: Path) -> None:
    """The viewer's DIMSE timeout stops a C-MOVE over a slow link; blamed on tuning, not the peer."""
    corpus = tomosynthesis_corpus(tmp_path / "tomo", [0.3] * 5 + [2.0] * 7)
    result = rehearse("fc06-move-slow-link", tmp_path, corpus)

    assert result.expectations_held
    timeout = events(result, "timeout", node="viewer", timeout_kind="dimse")
    assert len(timeout) == 1
    control = timeout[0]["assoc_id"]
    assert timeout[0]["link"] == "viewer->pacs"
    aborted = events(result, "association.aborted", node="viewer", assoc_id=control)
    assert aborted[0]["initiated_by"] == "local"
    last_seen = events(result, "qr.response", node="viewer", assoc_id=control)[-1]
    assert last_seen["status"] == "0xFF00"

    # pynetdicom 3.0.4's Move SCP finishes the C-STORE on the wire, then stops and
    # releases the sub-association: it does not abort it.
    stopped = events(result, "qr.sub_operations_stopped", node="pacs", assoc_id=control)[0]
    sub = events(result, "qr.sub_association", node="pacs", assoc_id=control)[0]["sub_assoc_id"]
    assert events(result, "association.released", node="viewer", assoc_id=sub)
    moved = [r for r in ledger(result) if r["service"] == "move"]
    delivered = [r for r in moved if r["state"] == "delivered"]
    failed = [r for r in moved if r["state"] == "failed"]
    assert len(moved) == 12
    assert stopped["completed"] == len(delivered) > last_seen["completed"]
    assert stopped["remaining"] == len(failed) == 12 - len(delivered)
    for row in failed:
        failure = row["failure"]
        assert failure["failure_kind"] == "dimse-timeout"
        assert failure["side"] == "requestor"
        assert failure["hop"] == "pacs->viewer"
        assert failure["detail"]["category"] == "timeout-vs-link-speed"
        assert failure["detail"]["rate_kb_s"] == 1000
        assert failure["detail"]["transfer_s_estimate"] > failure["detail"]["timeout_s"]
    viewer_failure = events(result, "qr.retrieve_failed", node="viewer")[0]
    assert viewer_failure["failure_kind"] == "dimse-timeout"
    assert viewer_failure["detail"]["category"] == "timeout-vs-link-speed"


def test_fc06_cget_slow_link_aborts_mid_store(tmp_path: Path) -> None:
    """Over C-GET the viewer's DIMSE timeout aborts its association in the middle of a C-STORE."""
    result = rehearse("fc06-cget-slow-link", tmp_path)

    assert result.expectations_held
    control = events(result, "timeout", node="viewer", timeout_kind="dimse")[0]["assoc_id"]
    sent = events(result, "dimse.request", node="pacs", assoc_id=control, command="C-STORE-RQ")
    assert len(sent) == 1
    assert not events(result, "dimse.response", node="pacs", assoc_id=control,
                      command="C-STORE-RSP")
    in_flight = next(r for r in ledger(result) if r["service"] == "get"
                     and r["sop_instance_uid"] == sent[0]["sop_instance_uid"])
    assert in_flight["state"] == "failed"
    assert in_flight["failure"]["failure_kind"] == "dimse-timeout"
    assert in_flight["failure"]["detail"]["category"] == "timeout-vs-link-speed"
    assert in_flight["failure"]["detail"]["in_flight_sop_instance_uid"] == in_flight["sop_instance_uid"]


def test_fc06_move_destination_unknown(tmp_path: Path) -> None:
    """A C-MOVE to an AE title the PACS has no link for gets 0xA801 and sends nothing."""
    result = rehearse("fc06-move-unknown-destination", tmp_path)

    assert result.expectations_held
    unknown = events(result, "qr.move_destination_unknown", node="pacs")[0]
    assert unknown["move_destination"] == "VIEWER"
    assert unknown["known_destinations"] == ["WORKSTATION"]
    responses = events(result, "qr.response", node="viewer", command="C-MOVE-RSP")
    assert responses[0]["status"] == "0xA801"
    assert len(events(result, "qr.sub_association", node="pacs")) == 1


def test_fc06_timeout_budget_predicted_before_run(tmp_path: Path) -> None:
    """The check predicts the C-MOVE's DIMSE timeout from the object size and the link's speed."""
    from simulator.capability import check_topology
    from simulator.corpus import Corpus

    corpus = tomosynthesis_corpus(tmp_path / "tomo", [0.3] * 5 + [2.0] * 7)
    topology = load_topology(ROOT / "topologies" / "field" / "fc06-move-slow-link.yaml")
    scenario = load_scenario(ROOT / "scenarios" / "field" / "fc06-move-slow-link.yaml", topology)

    result = check_topology(topology, Corpus.load(corpus).instances, scenario)

    [retrieve] = result.retrieves
    assert retrieve.service == "move"
    assert retrieve.rate_kb_per_s == 1000
    assert retrieve.transfer_s is not None and retrieve.dimse_timeout_s == 1
    assert retrieve.transfer_s > retrieve.dimse_timeout_s
    assert retrieve.dimse_timeout_predicted
    assert result.failure_predicted
    assert any("dimse-timeout is predicted" in note for note in result.notes)


def odd_fragment_corpus(root: Path) -> Path:
    """Write MR_small_jp2klossless with its JPEG 2000 fragment made one byte odd."""
    dataset = dcmread(bundled_corpus() / "MR" / "MR_small_jp2klossless.dcm")
    value = dataset.PixelData
    # Items: an empty Basic Offset Table, then one fragment; give the fragment
    # an odd length by dropping its last byte and writing the new length.
    fragment_at = 8
    length = int.from_bytes(value[fragment_at + 4:fragment_at + 8], "little")
    body = value[fragment_at + 8:fragment_at + 8 + length - 1]
    item = b"\xfe\xff\x00\xe0" + (length - 1).to_bytes(4, "little") + body
    # pydicom pads the odd value with one byte when writing; the item length stays odd.
    dataset.PixelData = value[:fragment_at] + item
    target = root / "MR" / "MR_small_jp2klossless.dcm"
    target.parent.mkdir(parents=True)
    dataset.save_as(target, enforce_file_format=True)
    return root


def test_fc02_odd_fragment_aborts_data_phase(tmp_path: Path) -> None:
    """A proposed and accepted JPEG 2000 object with an odd fragment is aborted in the data phase."""
    corpus = odd_fragment_corpus(tmp_path / "corpus")
    result = rehearse("fc02-odd-fragment", tmp_path, corpus)

    assert result.expectations_held
    [finding] = events(result, "dimse.dataset_finding", node="pacs")
    assert finding["finding"] == "odd-fragment-length"
    assert finding["length"] % 2 == 1
    [row] = ledger(result)
    assert row["state"] == "failed"
    failure = row["failure"]
    assert failure["failure_kind"] == "association-aborted"
    assert failure["detail"]["dataset_finding"]["finding"] == "odd-fragment-length"
    requests = events(result, "link.pdu", command="C-STORE-RQ")
    assert requests, "the C-STORE went on the wire: the context was proposed and accepted"
    aborted = events(result, "association.aborted", node="pacs", initiated_by="local")
    assert aborted
