"""Rehearsals with real peers on loopback: Orthanc and DCMTK's storescp as receivers,
DCMTK's storescu as a sender outside the simulator.

Each test checks the ledger against what the real peer stored or sent, so a
delivery the ledger reports is one the peer confirms, and the other way round.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from peers import DcmtkStoreSCP, Orthanc, dcmtk_storescu, free_port
from pydicom import dcmread
from rehearsal_support import Site, prepare, rehearse

from simulator.corpus import bundled_corpus

WAIT_LIMIT_S = 60.0
"""Guard against a hung run or peer; no test checks how long anything takes."""

UNCOMPRESSED = ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1"]
"""Implicit and explicit VR little endian, the transfer syntaxes Orthanc is limited to."""

SOP_CLASSES = ["CTImageStorage", "MRImageStorage"]
TRANSFER_SYNTAXES = [
    "ExplicitVRLittleEndian", "ImplicitVRLittleEndian", "ExplicitVRBigEndian",
    "JPEG2000Lossless", "JPEG2000",
]
FILES = ["CT/**", "MR/MR_small.dcm", "MR/MR_small_implicit.dcm", "MR/MR_small_bigendian.dcm"]
"""Three uncompressed instances and three that Orthanc, limited to UNCOMPRESSED, must refuse."""


@pytest.fixture(scope="module", autouse=True)
def corpus_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Build the bundled corpus once for this module, in a cache folder of its own."""
    cache = tmp_path_factory.mktemp("corpus-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("REHEARSE_CACHE_DIR", str(cache))
        yield bundled_corpus()


# Sites.


def modality(ae_title: str) -> dict[str, Any]:
    return {"kind": "modality", "ae_title": ae_title, "sop_classes": SOP_CLASSES,
            "transfer_syntaxes": TRANSFER_SYNTAXES}


def router(forward: list[str]) -> dict[str, Any]:
    return {"kind": "router", "ae_title": "ROUTER", "sop_classes": SOP_CLASSES,
            "transfer_syntaxes": TRANSFER_SYNTAXES,
            "retry": {"max_attempts": 3, "initial_backoff_s": 0.1},
            "rules": [{"name": "everything", "forward": forward}]}


def pacs(ae_title: str) -> dict[str, Any]:
    return {"kind": "pacs", "ae_title": ae_title, "sop_classes": SOP_CLASSES,
            "transfer_syntaxes": TRANSFER_SYNTAXES}


def external(ae_title: str, port: int) -> dict[str, Any]:
    return {"kind": "external", "ae_title": ae_title, "port": port, "sop_classes": SOP_CLASSES}


def sending(globs: list[str]) -> dict[str, Any]:
    return {"name": "real-peers", "corpus": "bundled", "timeout_s": 120,
            "senders": [{"modality": "ct", "select": {"glob": globs}, "group_by": "instance"}]}


def delivered_uids(site: Site, destination: str) -> set[str]:
    return {r["sop_instance_uid"] for r in site.rows(destination=destination, state="delivered")}


# Real receivers.


@pytest.mark.orthanc
def test_orthanc_as_new_pacs(tmp_path: Path, orthanc: Callable[..., Orthanc]) -> None:
    """Orthanc stores exactly the instances the ledger reports delivered to it."""
    archive = orthanc(ae_title="NEWPACS", config_overrides={
        "DicomCheckCalledAet": True, "AcceptedTransferSyntaxes": UNCOMPRESSED,
    })
    topology = {
        "site": "orthanc-cutover",
        "nodes": {"ct": modality("CT1"), "router": router(["new-pacs"]),
                  "new-pacs": external("NEWPACS", archive.dicom_port)},
        "links": [{"from": "ct", "to": "router"}, {"from": "router", "to": "new-pacs"}],
    }
    site = rehearse(tmp_path, topology, sending(FILES))

    rows = site.rows(destination="new-pacs")
    assert len(rows) == 6
    stored = {archive.instance_tags(i)["SOPInstanceUID"] for i in archive.instances()}
    assert stored == delivered_uids(site, "new-pacs")
    assert len(stored) == 3
    for row in rows:
        if row["state"] == "delivered":
            assert row["transfer_syntax_uid"] in UNCOMPRESSED
            assert row["status"] == "0x0000"
            continue
        assert row["transfer_syntax_uid"] not in UNCOMPRESSED
        failure = row["failure"]
        assert failure["failure_kind"] == "no-accepted-context"
        assert failure["hop"] == "router->new-pacs"
        assert failure["side"] == "acceptor"
        assert failure["permanent"] is True
        assert failure["detail"]["cause"] == "acceptance"
        assert failure["detail"]["transfer_syntax"] == row["transfer_syntax_uid"]
    assert site.of_kind("forward.retry") == []
    answers = site.of_kind("association.accepted", node="router", link="router->new-pacs")
    assert answers
    assert {e["implementation_version_name"] for e in answers} != {"PYNETDICOM_304"}


@pytest.mark.dcmtk
def test_storescp_as_destination(tmp_path: Path,
                                 dcmtk_storescp: Callable[..., DcmtkStoreSCP]) -> None:
    """DCMTK's storescp wrote a file for every instance the ledger reports delivered to it."""
    archive = dcmtk_storescp(ae_title="ARCHIVE")
    topology = {
        "site": "storescp-destination",
        "nodes": {"ct": modality("CT1"), "router": router(["archive"]),
                  "archive": external("ARCHIVE", archive.port)},
        "links": [{"from": "ct", "to": "router"}, {"from": "router", "to": "archive"}],
    }
    site = rehearse(tmp_path, topology, sending(["CT/CT_small.dcm", "MR/MR_small.dcm",
                                                 "MR/MR_small_implicit.dcm"]))

    rows = site.rows(destination="archive")
    assert len(rows) == 3
    assert {r["state"] for r in rows} == {"delivered"}
    received = {}
    for path in archive.received_files():
        dataset = dcmread(path)
        received[str(dataset.SOPInstanceUID)] = str(dataset.SOPClassUID)
    assert set(received) == delivered_uids(site, "archive")
    for row in rows:
        assert received[row["sop_instance_uid"]] == row["sop_class_uid"]
        assert row["hops"] == ["ct->router", "router->archive"]


# A real sender.


@pytest.mark.dcmtk
def test_storescu_sends_through_router(tmp_path: Path, corpus_root: Path,
                                       dcmtk_scu_available: None) -> None:
    """Instances that DCMTK's storescu sends into the router reach the PACS behind it."""
    listen_port = free_port()
    topology = {
        "site": "real-scanner",
        "nodes": {
            # The scanner is outside the simulator; its port is never dialled.
            "scanner": external("SCANNER", 11112),
            "router": router(["pacs"]),
            "pacs": pacs("PACS"),
        },
        "links": [{"from": "scanner", "to": "router", "listen_port": listen_port},
                  {"from": "router", "to": "pacs"}],
    }
    files = [corpus_root / name for name in ("CT/CT_small.dcm", "MR/MR_small.dcm",
                                             "MR/MR_small_implicit.dcm")]
    uids = {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
    scenario = {"name": "real-scanner", "corpus": "bundled", "timeout_s": 120,
                "timeline": [{"action": "hold", "after": {"delivered": len(files)}}]}
    site = prepare(tmp_path, topology, scenario)
    runner = threading.Thread(target=lambda: asyncio.run(site.rehearsal.run()),
                              name="rehearsal", daemon=True)
    runner.start()
    wait_for_event(site.run_dir / "events.jsonl", "link.started")
    sent = dcmtk_storescu("127.0.0.1", listen_port, "ROUTER", "SCANNER", files,
                          timeout_s=WAIT_LIMIT_S)
    runner.join(timeout=WAIT_LIMIT_S * 2)
    assert not runner.is_alive(), "the rehearsal did not finish"
    site.read()

    assert sent.returncode == 0, sent.stderr
    rows = site.rows(destination="pacs")
    assert {r["sop_instance_uid"] for r in rows} == uids
    for row in rows:
        assert row["state"] == "delivered"
        # The calling AE title names the external node, so expectations can use its name.
        assert row["source"] == "scanner"
        assert row["hops"] == ["scanner->router", "router->pacs"]
        stored = site.run_dir / "nodes" / "pacs" / "store" / f"{row['sop_instance_uid']}.dcm"
        assert row["delivered_path"] == str(stored)
        # The simulator has no source file of a real SCU's object to compare with.
        assert row["intact"] is None
    [request] = site.of_kind("association.requested", node="router", link="scanner->router")
    assert (request["calling_ae"], request["called_ae"]) == ("SCANNER", "ROUTER")
    assert request["assoc_id"].startswith("scanner->router#")
    received = site.of_kind("dimse.received", node="router", assoc_id=request["assoc_id"])
    assert {e["sop_instance_uid"] for e in received} == uids
    assert [s["action"] for s in site.of_kind("scenario.step")] == ["start_sending", "hold"]
    [finished] = site.of_kind("run.finished")
    assert finished["outcome"] == "finished"


def wait_for_event(path: Path, kind: str) -> None:
    deadline = time.monotonic() + WAIT_LIMIT_S
    while True:
        if path.exists():
            # The last line may be incomplete while it is being written.
            complete = path.read_text(encoding="utf-8").split("\n")[:-1]
            if any(json.loads(line)["kind"] == kind for line in complete):
                return
        assert time.monotonic() < deadline, f"no {kind} event within {WAIT_LIMIT_S} s"
        time.sleep(0.05)


# One failure, two receivers.


@pytest.mark.orthanc
def test_called_ae_rejection_same_for_orthanc(tmp_path: Path,
                                              orthanc: Callable[..., Orthanc]) -> None:
    """Orthanc and a simulated PACS that reject an unknown called AE title are recorded alike."""
    archive = orthanc(ae_title="NEWPACS", config_overrides={"DicomCheckCalledAet": True})
    topology = {
        "site": "called-ae-twice",
        "nodes": {"ct": modality("CT1"), "router": router(["orthanc", "pacs"]),
                  "orthanc": external("NEWPACS", archive.dicom_port),
                  "pacs": {**pacs("PACS"), "check_called_ae": True}},
        "links": [{"from": "ct", "to": "router"},
                  {"from": "router", "to": "orthanc", "called_ae": "ANY-SCP"},
                  {"from": "router", "to": "pacs", "called_ae": "ANY-SCP"}],
    }
    site = rehearse(tmp_path, topology, sending(["CT/CT_small.dcm", "MR/MR_small.dcm"]))

    by_orthanc = {r["sop_instance_uid"]: r for r in site.rows(destination="orthanc")}
    by_pacs = {r["sop_instance_uid"]: r for r in site.rows(destination="pacs")}
    assert len(by_orthanc) == 2
    assert by_orthanc.keys() == by_pacs.keys()
    for uid, from_orthanc in by_orthanc.items():
        from_pacs = by_pacs[uid]
        assert from_orthanc["state"] == from_pacs["state"] == "failed"
        orthanc_failure = from_orthanc["failure"]
        pacs_failure = from_pacs["failure"]
        assert orthanc_failure["failure_kind"] == "association-rejected"
        assert orthanc_failure["hop"] == "router->orthanc"
        assert pacs_failure["hop"] == "router->pacs"
        for key in ("failure_kind", "side", "permanent", "reason", "detail"):
            assert orthanc_failure[key] == pacs_failure[key], key
        detail = orthanc_failure["detail"]
        assert (detail["result"], detail["source"], detail["reason"]) == (1, 1, 7)
        assert detail["reason_name"] == "called-AE-title-not-recognized"
    assert site.of_kind("forward.retry") == []
    assert archive.instances() == []
