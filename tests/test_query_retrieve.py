"""Query/Retrieve on loopback: C-FIND matching, C-MOVE and C-GET through rehearsals.

The matching tests query a running PACS node directly with a pynetdicom
SCU; the retrieve tests run whole rehearsals, in which a modality fills the
PACS and viewers query and retrieve from it through link proxies. Every
identifier value in the corpus is synthetic, and each run log is checked
for the absence of the patient names, IDs and birth dates.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE

from simulator.errors import ConfigError
from simulator.links.registry import AssociationRegistry
from simulator.nodes.qr_index import MODELS
from simulator.nodes.runtime import NodeServices
from simulator.nodes.storage import StorageNodeRuntime
from simulator.nodes.tls import RunTls
from simulator.recording.ledger import Ledger
from simulator.recording.recorder import BoundRecorder, Recorder
from simulator.runner import RunOptions, RunResult, run_rehearsal
from simulator.scenario import load_scenario
from simulator.topology import load_topology
from simulator.topology.model import StorageNode

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"

# (study key, patient name, patient ID, birth date, study date, series as (modality, SOP class, images))
STUDIES = [
    ("A", "Doe^Jane", "PID-A-7731", "19700101", "20240110", [("CT", CT, 3), ("MR", MR, 1)]),
    ("B", "Smith^John", "PID-B-8842", "19800202", "20240305", [("CT", CT, 2)]),
    ("C", "Doe^John", "PID-C-9953", "19900303", "20230720", [("MR", MR, 1)]),
]
PATIENT_DATA = [text for study in STUDIES for text in study[1:4]] + ["Doe", "Smith"]
INSTANCES = sum(images for study in STUDIES for _, _, images in study[5])

QR_SOP_CLASSES = [
    "StudyRootQueryRetrieveInformationModelFind", "StudyRootQueryRetrieveInformationModelMove",
    "StudyRootQueryRetrieveInformationModelGet", "PatientRootQueryRetrieveInformationModelFind",
    "PatientRootQueryRetrieveInformationModelMove", "PatientRootQueryRetrieveInformationModelGet",
]


@dataclass(frozen=True)
class SyntheticCorpus:
    root: Path
    study_uids: dict[str, str]


def make_corpus(root: Path) -> SyntheticCorpus:
    """Write the STUDIES as small uncompressed images, one file per instance."""
    study_uids = {}
    for key, name, patient_id, birth_date, study_date, series_list in STUDIES:
        study_uid = study_uids[key] = generate_uid()
        for series_number, (modality, sop_class, images) in enumerate(series_list, 1):
            series_uid = generate_uid()
            for number in range(1, images + 1):
                dataset = _image(sop_class, modality, number)
                dataset.update({"PatientName": name, "PatientID": patient_id,
                                "PatientBirthDate": birth_date, "StudyDate": study_date,
                                "StudyTime": "101500", "StudyInstanceUID": study_uid,
                                "SeriesInstanceUID": series_uid, "SeriesNumber": series_number})
                target = root / key / f"{modality}-{number}.dcm"
                target.parent.mkdir(parents=True, exist_ok=True)
                dataset.save_as(target, enforce_file_format=True)
    return SyntheticCorpus(root, study_uids)


def _image(sop_class: str, modality: str, number: int) -> Dataset:
    dataset = Dataset()
    dataset.SOPClassUID = sop_class
    dataset.SOPInstanceUID = generate_uid()
    dataset.Modality = modality
    dataset.InstanceNumber = number
    dataset.Rows = dataset.Columns = 8
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.BitsAllocated = dataset.BitsStored = 16
    dataset.HighBit = 15
    dataset.PixelRepresentation = 0
    dataset.PixelData = bytes(range(128))
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian

    return dataset


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def assert_no_patient_data(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    for value in PATIENT_DATA:
        assert value not in text, f"{value!r} appears in {path.name}"


# C-FIND matching against a running PACS node.


@dataclass
class RunningPacs:
    runtime: StorageNodeRuntime
    port: int
    corpus: SyntheticCorpus
    events_path: Path
    recorder: Recorder


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningPacs]:
    """Start a PACS node that declares both information models and store the corpus in it."""
    root = tmp_path_factory.mktemp("qr-pacs")
    corpus = make_corpus(root / "corpus")
    recorder = Recorder(root / "events.jsonl", "qr-matching")
    services = NodeServices(
        recorder=BoundRecorder(recorder, {"node": "pacs"}), registry=AssociationRegistry(),
        work_dir=root / "pacs", ledger=Ledger(recorder), instances={},
        expand_destinations=lambda node, *_: [node], tls=RunTls(),
    )
    declaration = StorageNode.model_validate({
        "name": "pacs", "kind": "pacs", "ae_title": "PACS",
        "sop_classes": ["CTImageStorage", "MRImageStorage", *QR_SOP_CLASSES],
    })
    runtime = StorageNodeRuntime(declaration, services)
    port = runtime.start(0)
    _store_all(port, corpus.root)
    yield RunningPacs(runtime, port, corpus, root / "events.jsonl", recorder)
    runtime.stop()
    recorder.close()


def _store_all(port: int, root: Path) -> None:
    ae = AE(ae_title="LOADER")
    ae.add_requested_context(CT, ExplicitVRLittleEndian)
    ae.add_requested_context(MR, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="PACS")
    assert assoc.is_established
    for path in sorted(root.rglob("*.dcm")):
        assert assoc.send_c_store(path).Status == 0x0000
    assoc.release()
    ae.shutdown()


def c_find(pacs: RunningPacs, keys: dict[str, Any], level: str = "STUDY",
           model: str = "study") -> tuple[int, list[int], list[Dataset]]:
    """Send one C-FIND; return the final status, the pending statuses and the identifiers."""
    ae = AE(ae_title="FINDSCU")
    ae.add_requested_context(MODELS[model].find)
    assoc = ae.associate("127.0.0.1", pacs.port, ae_title="PACS")
    assert assoc.is_established
    identifier = Dataset()
    identifier.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(identifier, keyword, value)
    pending: list[int] = []
    matches: list[Dataset] = []
    final = -1
    for status, response in assoc.send_c_find(identifier, MODELS[model].find):
        if status.Status in (0xFF00, 0xFF01):
            pending.append(int(status.Status))
            matches.append(response)
        else:
            final = int(status.Status)
    assoc.release()
    ae.shutdown()

    return final, pending, matches


def studies_of(pacs: RunningPacs, matches: list[Dataset]) -> set[str]:
    by_uid = {uid: key for key, uid in pacs.corpus.study_uids.items()}
    return {by_uid[str(m.StudyInstanceUID)] for m in matches}


# (case id, keys at the STUDY level of Study Root, studies expected)
STUDY_MATCHES = [
    ("universal", {"StudyInstanceUID": ""}, {"A", "B", "C"}),
    ("name wildcard star", {"PatientName": "Doe^*"}, {"A", "C"}),
    ("name wildcard any case", {"PatientName": "doe^j*"}, {"A", "C"}),
    ("name wildcard question mark", {"PatientName": "Doe^J?ne"}, {"A"}),
    ("name single value", {"PatientName": "Smith^John"}, {"B"}),
    ("lone star is universal", {"PatientName": "*"}, {"A", "B", "C"}),
    ("date range", {"StudyDate": "20240101-20241231"}, {"A", "B"}),
    ("date range open start", {"StudyDate": "-20231231"}, {"C"}),
    ("date range open end", {"StudyDate": "20240301-"}, {"B"}),
    ("date single value", {"StudyDate": "20240110"}, {"A"}),
    ("modality in study", {"ModalitiesInStudy": "MR"}, {"A", "C"}),
    ("no match", {"PatientID": "PID-Z-0000"}, set()),
]


@pytest.mark.parametrize(("keys", "expected"), [c[1:] for c in STUDY_MATCHES],
                         ids=[c[0] for c in STUDY_MATCHES])
def test_find_study_matching(pacs: RunningPacs, keys: dict[str, Any], expected: set[str]) -> None:
    """C-FIND at the STUDY level matches single values, wildcards, ranges and universal keys."""
    final, pending, matches = c_find(pacs, {"StudyInstanceUID": "", **keys})

    assert final == 0x0000
    assert studies_of(pacs, matches) == expected
    assert len(pending) == len(expected)
    assert set(pending) <= {0xFF00}


def test_find_uid_list(pacs: RunningPacs) -> None:
    """A list of Study Instance UIDs matches each study in it."""
    uids = [pacs.corpus.study_uids["A"], pacs.corpus.study_uids["C"]]
    final, _, matches = c_find(pacs, {"StudyInstanceUID": uids})

    assert final == 0x0000
    assert studies_of(pacs, matches) == {"A", "C"}


def test_find_returns_computed_keys(pacs: RunningPacs) -> None:
    """Computed study attributes come back with the values of the stored series."""
    final, _, matches = c_find(pacs, {"StudyInstanceUID": pacs.corpus.study_uids["A"],
                                      "ModalitiesInStudy": "", "NumberOfStudyRelatedInstances": "",
                                      "NumberOfStudyRelatedSeries": ""})

    assert final == 0x0000
    assert len(matches) == 1
    assert list(matches[0].ModalitiesInStudy) == ["CT", "MR"]
    assert int(matches[0].NumberOfStudyRelatedInstances) == 4
    assert int(matches[0].NumberOfStudyRelatedSeries) == 2
    assert matches[0].QueryRetrieveLevel == "STUDY"


def test_find_series_level(pacs: RunningPacs) -> None:
    """A SERIES query inside one study matches on Modality and counts the instances."""
    final, _, matches = c_find(pacs, {"StudyInstanceUID": pacs.corpus.study_uids["A"],
                                      "SeriesInstanceUID": "", "Modality": "CT",
                                      "NumberOfSeriesRelatedInstances": ""}, level="SERIES")

    assert final == 0x0000
    assert len(matches) == 1
    assert int(matches[0].NumberOfSeriesRelatedInstances) == 3


def test_find_series_needs_study_uid(pacs: RunningPacs) -> None:
    """A hierarchical SERIES query without its study's UID fails with 0xA900."""
    final, pending, _ = c_find(pacs, {"SeriesInstanceUID": "", "Modality": "CT"}, level="SERIES")

    assert final == 0xA900
    assert pending == []


def test_find_patient_root_levels(pacs: RunningPacs) -> None:
    """Patient Root matches at the PATIENT level, and at the IMAGE level below a patient and study."""
    final, _, patients = c_find(pacs, {"PatientID": "", "PatientName": "Doe^*",
                                       "NumberOfPatientRelatedStudies": ""},
                                level="PATIENT", model="patient")
    assert final == 0x0000
    assert len(patients) == 2
    assert {int(p.NumberOfPatientRelatedStudies) for p in patients} == {1}

    final, _, images = c_find(pacs, {"PatientID": "PID-A-7731",
                                     "StudyInstanceUID": pacs.corpus.study_uids["A"],
                                     "SeriesInstanceUID": "", "SOPInstanceUID": "",
                                     "InstanceNumber": "2"}, level="IMAGE", model="patient")
    assert final == 0xA900, "IMAGE needs the series UID as well"

    final, _, series = c_find(pacs, {"PatientID": "PID-A-7731",
                                     "StudyInstanceUID": pacs.corpus.study_uids["A"],
                                     "SeriesInstanceUID": "", "Modality": "CT"},
                              level="SERIES", model="patient")
    final, _, images = c_find(pacs, {"PatientID": "PID-A-7731",
                                     "StudyInstanceUID": pacs.corpus.study_uids["A"],
                                     "SeriesInstanceUID": str(series[0].SeriesInstanceUID),
                                     "SOPInstanceUID": "", "InstanceNumber": "2"},
                              level="IMAGE", model="patient")
    assert final == 0x0000
    assert len(images) == 1
    assert int(images[0].InstanceNumber) == 2


def test_find_study_root_has_no_patient_level(pacs: RunningPacs) -> None:
    """Study Root rejects the PATIENT level with 0xA900."""
    final, _, _ = c_find(pacs, {"PatientID": ""}, level="PATIENT")

    assert final == 0xA900


def test_find_unsupported_key_warns(pacs: RunningPacs) -> None:
    """A key below the query level is not matched and the matches come as 0xFF01."""
    final, pending, matches = c_find(pacs, {"StudyInstanceUID": "", "BodyPartExamined": "CHEST"})

    assert final == 0x0000
    assert len(matches) == 3
    assert set(pending) == {0xFF01}
    assert all("BodyPartExamined" in m and not m.BodyPartExamined for m in matches)


def test_find_events_hold_names_only(pacs: RunningPacs) -> None:
    """qr.request events carry key names and counts, never the values."""
    c_find(pacs, {"StudyInstanceUID": "", "PatientName": "Doe^*", "PatientBirthDate": ""})
    events = read_jsonl(pacs.events_path)
    requests = [e for e in events if e["kind"] == "qr.request" and e.get("service") == "find"]

    assert requests
    last = requests[-1]
    assert last["query_keys"] == ["PatientBirthDate", "PatientName", "StudyInstanceUID"]
    assert last["matching_keys"] == ["PatientName"]
    assert last["matches"] == 2
    final = [e for e in events if e["kind"] == "qr.response" and e["command"] == "C-FIND-RSP"]
    assert final[-1]["pending_responses"] == 2
    assert_no_patient_data(pacs.events_path)


# Retrieves in rehearsals.

TOPOLOGY = """\
site: qr-test
nodes:
  modality:
    kind: modality
    ae_title: MODALITY
    sop_classes: [CTImageStorage, MRImageStorage]
  pacs:
    kind: pacs
    ae_title: PACS
    sop_classes: [CTImageStorage, MRImageStorage, {qr}]
  viewer:
    kind: viewer
    ae_title: VIEWER
    sop_classes: [CTImageStorage, MRImageStorage, {qr}]
  reader:
    kind: viewer
    ae_title: READER
    sop_classes:
      - {{sop_class: CTImageStorage, roles: [scu]}}
      - {{sop_class: MRImageStorage, roles: [scu]}}
      - StudyRootQueryRetrieveInformationModelFind
      - StudyRootQueryRetrieveInformationModelGet
  workstation:
    kind: viewer
    ae_title: WORKSTATION
    sop_classes: [CTImageStorage, MRImageStorage]
  ct-viewer:
    kind: viewer
    ae_title: CT_VIEWER
    sop_classes: [CTImageStorage]
links:
  - {{from: modality, to: pacs}}
  - {{from: viewer, to: pacs}}
  - {{from: reader, to: pacs}}
  - {{from: pacs, to: viewer}}
  - {{from: pacs, to: workstation}}
  - {{from: pacs, to: ct-viewer}}
""".format(qr=", ".join(QR_SOP_CLASSES))

SCENARIO_HEAD = """\
name: qr-test
corpus: bundled
senders:
  - {modality: modality, group_by: 10}
timeline:
  - {action: start_sending, at_s: 0}
"""


def rehearse(tmp_path: Path, corpus: SyntheticCorpus, steps: list[str]) -> RunResult:
    topology_path = tmp_path / "topology.yaml"
    scenario_path = tmp_path / "scenario.yaml"
    topology_path.write_text(TOPOLOGY, encoding="utf-8")
    scenario_path.write_text(SCENARIO_HEAD + "".join(f"  - {s}\n" for s in steps),
                             encoding="utf-8")
    topology = load_topology(topology_path)
    scenario = load_scenario(scenario_path, topology)

    return run_rehearsal(topology, scenario, RunOptions(topology_path, scenario_path,
                                                        tmp_path / "run", corpus=corpus.root))


def events(result: RunResult, kind: str, **fields: Any) -> list[dict[str, Any]]:
    return [e for e in read_jsonl(result.run_dir / "events.jsonl")
            if e["kind"] == kind and all(e.get(k) == v for k, v in fields.items())]


def step_responses(result: RunResult, step: int) -> list[dict[str, Any]]:
    """Return the C-MOVE-RSPs and C-GET-RSPs the requestor of one retrieve step received."""
    requested = events(result, "qr.retrieve_requested", step=step)[0]
    return [e for e in events(result, "qr.response", assoc_id=requested["assoc_id"],
                              role="requestor")
            if e["command"] in ("C-MOVE-RSP", "C-GET-RSP")]


def ledger(result: RunResult, **fields: Any) -> list[dict[str, Any]]:
    return [r for r in read_jsonl(result.run_dir / "ledger.jsonl")
            if all(r.get(k) == v for k, v in fields.items())]


@pytest.fixture(scope="module")
def move_run(tmp_path_factory: pytest.TempPathFactory) -> RunResult:
    """One rehearsal with three C-MOVEs: to the viewer, to the workstation, to an unknown AE."""
    tmp_path = tmp_path_factory.mktemp("qr-move")
    corpus = make_corpus(tmp_path / "corpus")
    step = "{action: retrieve, after: {idle: true}, viewer: viewer, from: pacs, service: move"
    return rehearse(tmp_path, corpus, [
        step + ", keys: {StudyDate: 20240101-20241231}}",
        step + ", model: patient, level: SERIES, keys: {Modality: MR}, "
               "move_destination: WORKSTATION}",
        step + ", keys: {PatientName: Doe^John}, move_destination: NOWHERE}",
        "{action: add_fault, after: {idle: true}, link: pacs->workstation, "
        "fault: {name: cut, type: down}}",
        step + ", keys: {StudyDate: 20240305}, move_destination: WORKSTATION}",
        step + ", keys: {StudyDate: 20240110}, move_destination: CT_VIEWER}",
    ])


def test_move_delivers_to_viewer(move_run: RunResult) -> None:
    """A C-MOVE to the viewer's own AE title delivers every instance of the matching studies."""
    rows = ledger(move_run, service="move", destination="viewer")

    assert len(rows) == 6
    for row in rows:
        assert row["state"] == "delivered"
        assert row["source"] == "pacs"
        assert row["hops"] == ["pacs->viewer"]
        assert row["intact"] is True
    stored = {r["sop_instance_uid"] for r in ledger(move_run, service="store")}
    assert {r["sop_instance_uid"] for r in rows} <= stored


def test_move_records_sub_association(move_run: RunResult) -> None:
    """qr.sub_association ties the C-MOVE to the association the viewer's SCP accepted."""
    requested = events(move_run, "qr.retrieve_requested", node="viewer", step=1)[0]
    subs = events(move_run, "qr.sub_association", assoc_id=requested["assoc_id"])

    assert len(subs) == 1
    sub = subs[0]
    assert sub["parent_assoc_id"] == requested["assoc_id"]
    assert sub["destination"] == "viewer"
    assert sub["destination_ae"] == "VIEWER"
    assert sub["sub_link"] == "pacs->viewer"
    accepted = events(move_run, "association.accepted", assoc_id=sub["sub_assoc_id"], role="acceptor")
    assert accepted and accepted[0]["node"] == "viewer"
    assert events(move_run, "association.released", assoc_id=sub["sub_assoc_id"], node="viewer")


def test_move_responses_count_down(move_run: RunResult) -> None:
    """Every C-MOVE-RSP the viewer receives carries the sub-operation counts, ending in success."""
    requested = events(move_run, "qr.retrieve_requested", node="viewer", step=1)[0]
    responses = events(move_run, "qr.response", node="viewer", assoc_id=requested["assoc_id"],
                       command="C-MOVE-RSP")

    assert [r["remaining"] for r in responses[:-1]] == [5, 4, 3, 2, 1, 0]
    assert [r["completed"] for r in responses[:-1]] == [1, 2, 3, 4, 5, 6]
    assert all(r["status"] == "0xFF00" for r in responses[:-1])
    assert responses[-1]["status"] == "0x0000"
    assert responses[-1]["completed"] == 6
    assert responses[-1]["failed"] == 0
    served = events(move_run, "qr.response", node="pacs", assoc_id=requested["assoc_id"],
                    command="C-MOVE-RSP")
    assert [r["status"] for r in served] == [r["status"] for r in responses]


def test_move_patient_root_series(move_run: RunResult) -> None:
    """A Patient Root SERIES retrieve walks patients and studies and moves only the MR series."""
    rows = [r for r in ledger(move_run, service="move", destination="workstation")
            if r["sop_class_uid"] == MR]

    assert len(rows) == 2
    assert all(r["state"] == "delivered" for r in rows)
    served = events(move_run, "qr.request", node="pacs", service="move", level="SERIES")
    assert [e["instances"] for e in served] == [1, 1], "one C-MOVE per patient and study"
    finds = events(move_run, "qr.find_finished", node="viewer", step=2)
    assert [f["level"] for f in finds[:2]] == ["PATIENT", "STUDY"]
    assert events(move_run, "qr.retrieve_finished", node="viewer", step=2)


def test_move_unknown_destination(move_run: RunResult) -> None:
    """A Move Destination the PACS has no link to gets 0xA801 and nothing is sent."""
    failed = events(move_run, "qr.retrieve_failed", node="viewer", step=3)

    assert len(failed) == 1
    assert failed[0]["failure_kind"] == "move-destination-unknown"
    assert failed[0]["detail"]["status"] == "0xA801"
    rows = ledger(move_run, service="move", destination="NOWHERE")
    assert len(rows) == 1
    assert rows[0]["state"] == "failed"
    assert rows[0]["failure"]["failure_kind"] == "move-destination-unknown"
    assert rows[0]["failure"]["side"] == "acceptor"
    assert rows[0]["failure"]["detail"]["known_destinations"] == ["CT_VIEWER", "VIEWER",
                                                                  "WORKSTATION"]
    assert not events(move_run, "qr.sub_association", move_destination="NOWHERE")


def test_move_destination_down(move_run: RunResult) -> None:
    """A known destination the PACS cannot reach fails every row with the link's evidence."""
    responses = step_responses(move_run, 5)
    failed = events(move_run, "qr.retrieve_failed", node="viewer", step=5)

    assert responses[-1]["status"] == "0xA801"
    assert failed[0]["detail"]["status"] == "0xA801"
    rows = [r for r in ledger(move_run, service="move", destination="workstation")
            if r["state"] == "failed"]
    assert len(rows) == 2
    for row in rows:
        assert row["failure"]["failure_kind"] == "connection-refused"
        assert row["failure"]["side"] == "link"
        assert row["failure"]["hop"] == "pacs->workstation"
    sub = events(move_run, "qr.sub_association", destination="workstation")[-1]["sub_assoc_id"]
    assert events(move_run, "association.failed", assoc_id=sub)


def test_move_partly_failed_warns(move_run: RunResult) -> None:
    """A C-MOVE whose destination rejects one SOP class ends 0xB000 with that instance listed."""
    final = step_responses(move_run, 6)[-1]
    rows = ledger(move_run, service="move", destination="ct-viewer")
    failed = [r for r in rows if r["state"] == "failed"]

    assert (final["status"], final["completed"], final["failed"]) == ("0xB000", 3, 1)
    assert len(rows) == 4
    assert len(failed) == 1
    assert final["failed_sop_instance_uids"] == [failed[0]["sop_instance_uid"]]
    assert failed[0]["sop_class_uid"] == MR
    assert failed[0]["failure"]["failure_kind"] == "no-accepted-context"
    assert failed[0]["failure"]["side"] == "acceptor"
    assert failed[0]["failure"]["detail"]["cause"] == "acceptance"
    retrieve = events(move_run, "qr.retrieve_failed", node="viewer", step=6)[0]
    assert retrieve["failure_kind"] == "sub-operation-failed"


def test_move_run_has_no_patient_data(move_run: RunResult) -> None:
    """No event, ledger row or summary of a retrieve run contains a patient name, ID or birth date."""
    for name in ("events.jsonl", "ledger.jsonl", "summary.json", "report.md"):
        assert_no_patient_data(move_run.run_dir / name)


@pytest.fixture(scope="module")
def get_run(tmp_path_factory: pytest.TempPathFactory) -> RunResult:
    """One rehearsal with two C-GETs: by a viewer with SCP roles, by a reader without."""
    tmp_path = tmp_path_factory.mktemp("qr-get")
    corpus = make_corpus(tmp_path / "corpus")
    step = "{action: retrieve, after: {idle: true}, from: pacs, service: get"
    return rehearse(tmp_path, corpus, [
        step + ", viewer: viewer, keys: {ModalitiesInStudy: CT}}",
        step + ", viewer: reader}",
    ])


def test_get_with_role_selection(get_run: RunResult) -> None:
    """A viewer that proposes the SCP role receives every C-STORE of its C-GET."""
    roles = events(get_run, "qr.roles", node="viewer")[0]["contexts"]
    rows = ledger(get_run, service="get", destination="viewer")

    assert roles
    assert all(c["role_selection_proposed"] and c["requestor_scp"] for c in roles)
    assert len(rows) == 6
    for row in rows:
        assert row["state"] == "delivered"
        assert row["hops"] == ["viewer->pacs"]
        assert row["intact"] is True
    stored = events(get_run, "instance.stored", node="viewer")
    assert len(stored) == 6


def test_get_without_role_selection(get_run: RunResult) -> None:
    """Without role selection every sub-operation fails, blamed on the requestor's negotiation."""
    roles = events(get_run, "qr.roles", node="reader")[0]["contexts"]
    assert roles
    assert not any(c["role_selection_proposed"] or c["requestor_scp"] for c in roles)

    final = events(get_run, "qr.response", node="reader", command="C-GET-RSP")[-1]
    assert final["status"] == "0xA702"
    assert final["failed"] == INSTANCES
    assert final["completed"] == 0
    assert len(final["failed_sop_instance_uids"]) == INSTANCES

    rows = ledger(get_run, service="get", destination="reader")
    assert len(rows) == INSTANCES
    for row in rows:
        assert row["state"] == "failed"
        assert row["failure"]["failure_kind"] == "sub-operation-failed"
        assert row["failure"]["side"] == "requestor"
        assert row["failure"]["detail"]["cause"] == "role-not-negotiated"
        assert row["failure"]["detail"]["role_selection_proposed"] is False
    failed = events(get_run, "qr.retrieve_failed", node="reader")[0]
    assert failed["detail"]["cause"] == "role-not-negotiated"
    assert failed["side"] == "requestor"


def test_get_rows_apart_from_routing(get_run: RunResult) -> None:
    """Retrieve rows carry service get; the modality's rows keep service store."""
    services = {(r["source"], r["service"]) for r in ledger(get_run)}

    assert services == {("modality", "store"), ("pacs", "get")}
    assert_no_patient_data(get_run.run_dir / "events.jsonl")


# Scenario checks against the topology.


def test_retrieve_step_needs_link(tmp_path: Path) -> None:
    """A retrieve step whose viewer has no link to the queried node is an error at its line."""
    topology_path = tmp_path / "topology.yaml"
    topology_path.write_text(TOPOLOGY, encoding="utf-8")
    scenario_path = tmp_path / "scenario.yaml"
    scenario_path.write_text(SCENARIO_HEAD + "  - {action: retrieve, after: {idle: true}, "
                             "viewer: workstation, from: pacs, service: find}\n",
                             encoding="utf-8")

    with pytest.raises(ConfigError) as caught:
        load_scenario(scenario_path, load_topology(topology_path))

    problems = caught.value.problems
    assert any(p.startswith("line 7: timeline[1].from: no link goes from workstation to pacs")
               for p in problems), problems
    assert any("workstation does not declare StudyRootQueryRetrieveInformationModelFind" in p
               for p in problems), problems


def test_retrieve_step_key_level(tmp_path: Path) -> None:
    """A key below the retrieve level is an error that names the level to use."""
    scenario_path = tmp_path / "scenario.yaml"
    scenario_path.write_text(SCENARIO_HEAD + "  - {action: retrieve, viewer: viewer, from: pacs, "
                             "service: move, keys: {Modality: CT}}\n", encoding="utf-8")

    with pytest.raises(ConfigError) as caught:
        load_scenario(scenario_path)

    assert "set level: SERIES; use ModalitiesInStudy at the STUDY level" in str(caught.value)
