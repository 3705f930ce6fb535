"""The simulator's failure records checked against real DICOM peers.

Each failure is reached once through a real peer (DCMTK's storescp, Orthanc)
and once through a simulated node, in the same rehearsal, and the ledger
rows must classify it alike: failure_kind, side, permanent and the PS3.8
numbers in detail. Where real peers legitimately behave differently, each
test asserts what each peer sent on the wire, as the link proxy recorded it
in ``link.pdu`` events, and how the simulator classified that.

One rehearsal serves every DCMTK check and one every Orthanc check, so each
peer configuration starts once per module (an Orthanc stop takes about 3 s).
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import require_binary
from peers import ORTHANC_PATH, STORESCP_PATH, DcmtkStoreSCP, Orthanc
from pydicom import dcmread
from pydicom.uid import generate_uid

from simulator.corpus import bundled_corpus
from simulator.runner import Rehearsal, RunOptions
from simulator.scenario import load_scenario
from simulator.topology import load_topology

CT_SMALL = "CT/CT_small.dcm"
ENHANCED_CT = "CT-enhanced/eCT_Supplemental.dcm"
CT_J2K_LOSSLESS = "CT/693_J2KR.dcm"
PHOTOACOUSTIC = "PA/photoacoustic.dcm"
"""A CT copied into Photoacoustic Image Storage, a SOP class DCMTK 3.6.7 and Orthanc 1.10 do not know."""

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
PHOTOACOUSTIC_IMAGE = "1.2.840.10008.5.1.4.1.1.6.3"
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
UNCOMPRESSED = ["ExplicitVRLittleEndian", "ImplicitVRLittleEndian"]
SOP_CLASSES = ["CTImageStorage", "EnhancedCTImageStorage", "PhotoacousticImageStorage"]

ORTHANC_MAX_PDU = 8192
STORESCP_MAX_PDU = 4096


@pytest.fixture(scope="module")
def corpus_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Build a corpus of bundled CT files plus one object of a SOP class the peers do not know."""
    cache = tmp_path_factory.mktemp("corpus-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("REHEARSE_CACHE_DIR", str(cache))
        bundled = bundled_corpus()
    root = tmp_path_factory.mktemp("corpus")
    for relpath in (CT_SMALL, ENHANCED_CT, CT_J2K_LOSSLESS):
        (root / relpath).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(bundled / relpath, root / relpath)
    dataset = dcmread(bundled / CT_SMALL)
    dataset.SOPClassUID = PHOTOACOUSTIC_IMAGE
    dataset.SOPInstanceUID = generate_uid()
    dataset.file_meta.MediaStorageSOPClassUID = dataset.SOPClassUID
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    (root / PHOTOACOUSTIC).parent.mkdir(parents=True)
    dataset.save_as(root / PHOTOACOUSTIC, enforce_file_format=True)

    yield root


# Running a site and reading its run log.


@dataclass
class Site:
    """A finished run: its events and ledger rows."""

    run_dir: Path
    events: list[dict[str, Any]] = field(default_factory=list)
    ledger: list[dict[str, Any]] = field(default_factory=list)

    def of_kind(self, kind: str, **fields: Any) -> list[dict[str, Any]]:
        return [e for e in self.events
                if e["kind"] == kind and all(e.get(k) == v for k, v in fields.items())]

    def rows(self, **fields: Any) -> list[dict[str, Any]]:
        return [r for r in self.ledger if all(r.get(k) == v for k, v in fields.items())]

    def row(self, source: str, source_file: str = CT_SMALL) -> dict[str, Any]:
        [row] = self.rows(source=source, source_file=source_file)
        return row

    def wire(self, link: str, pdu: str, direction: str) -> list[dict[str, Any]]:
        """Return the ``link.pdu`` events of one PDU type on one link and direction."""
        return self.of_kind("link.pdu", link=link, pdu=pdu, direction=direction)

    def closed(self, link: str) -> dict[str, Any]:
        [closed] = self.of_kind("link.connection_closed", link=link)
        return closed


def rehearse(folder: Path, topology: dict[str, Any], scenario: dict[str, Any]) -> Site:
    """Write the inputs as YAML (JSON is valid YAML), run them and read the run log."""
    folder.mkdir(parents=True, exist_ok=True)
    topology_path = folder / "topology-input.yaml"
    scenario_path = folder / "scenario-input.yaml"
    topology_path.write_text(json.dumps(topology, indent=2), encoding="utf-8")
    scenario_path.write_text(json.dumps(scenario, indent=2), encoding="utf-8")
    loaded = load_topology(topology_path)
    options = RunOptions(topology_path, scenario_path, folder / "run")
    asyncio.run(Rehearsal(loaded, load_scenario(scenario_path, loaded), options).run())
    site = Site(options.out_dir)
    site.events = _read_jsonl(site.run_dir / "events.jsonl")
    site.ledger = _read_jsonl(site.run_dir / "ledger.jsonl")

    return site


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def failure_of(row: dict[str, Any]) -> dict[str, Any]:
    assert row["state"] == "failed", row
    failure: dict[str, Any] = row["failure"]
    return failure


def answered_context(site: Site, row: dict[str, Any]) -> tuple[int, int]:
    """Return the ID of the context proposed for a row that was not sent, and the result on the wire.

    The A-ASSOCIATE-AC's transfer syntax of a rejected context is not
    significant (PS3.8 9.3.3.2), so the context is found by its ID in the request.
    """
    [not_sent] = site.of_kind("dimse.not_sent", sop_instance_uid=row["sop_instance_uid"])
    assoc_id = not_sent["assoc_id"]
    [request] = site.of_kind("link.pdu", pdu="associate_rq", assoc_id=assoc_id)
    [proposed] = [cx for cx in request["presentation_contexts"]
                  if cx["abstract_syntax"] == row["sop_class_uid"]
                  and cx["transfer_syntaxes"] == [row["transfer_syntax_uid"]]]
    [answer] = site.of_kind("link.pdu", pdu="associate_ac", assoc_id=assoc_id)
    [answered] = [cx for cx in answer["presentation_contexts"]
                  if cx["context_id"] == proposed["context_id"]]

    return proposed["context_id"], answered["result"]


def assert_same(real: dict[str, Any], simulated: dict[str, Any], *detail_keys: str) -> None:
    """Assert that two failure records agree on kind, side, permanence and the detail numbers."""
    for key in ("failure_kind", "side", "permanent"):
        assert real[key] == simulated[key], (key, real, simulated)
    for key in detail_keys:
        assert real["detail"][key] == simulated["detail"][key], (key, real, simulated)


# The DCMTK site: one storescp per fault switch, each beside its simulated counterpart.


@dataclass(frozen=True)
class Pair:
    """One failure reached through storescp and, when ``pacs`` is given, through a simulated PACS.

    The modality ``ct-NAME`` sends ``files`` to storescp ``scp-NAME``, and
    ``ct-NAME-sim`` sends them to the simulated ``pacs-NAME``.
    """

    storescp_args: tuple[str, ...]
    files: tuple[str, ...] = (CT_SMALL,)
    modality: dict[str, Any] = field(default_factory=dict)
    sender: dict[str, Any] = field(default_factory=dict)
    link: dict[str, Any] = field(default_factory=dict)
    pacs: dict[str, Any] | None = None
    pacs_link: dict[str, Any] | None = None


def _fault(name: str, fault_type: str, direction: str = "upstream", **attributes: Any) -> dict[str, Any]:
    return {"name": name, "type": fault_type, "direction": direction, "attributes": attributes}


PAUSED = {"group_by": 2, "pause_between_s": 2}
"""Two C-STOREs on one association with 2 s of silence between them."""

STALLED = {"faults": [_fault("stall-data-set", "stall", delay_ms=2000)]}
"""The link delays each data set by 2 s after its command set went through."""

DELAYED_REQUEST = {"faults": [_fault("slow-wan", "latency", latency=3000)]}
"""The link delays everything the requestor sends, the A-ASSOCIATE-RQ included, by 3 s."""

PAIRS: dict[str, Pair] = {
    "refuse": Pair(
        ("--refuse",), pacs={},
        pacs_link={"faults": [_fault("refuse", "associate_reject", result=1, source=1, reason=1)]},
    ),
    "reject": Pair(("--reject",)),
    "abort-during": Pair(
        ("--abort-during",), pacs={},
        pacs_link={"faults": [_fault("abort", "abort", after_pdata=1, source=0, reason=0)]},
    ),
    "abort-after": Pair(("--abort-after",)),
    "sleep-during": Pair(
        ("--sleep-during", "3"), modality={"timeouts": {"dimse_s": 1}}, pacs={},
        pacs_link={"faults": [_fault("stall-data-set", "stall", delay_ms=3000)]},
    ),
    "sleep-after": Pair(("--sleep-after", "2"), modality={"timeouts": {"dimse_s": 1, "acse_s": 1}}),
    "max-pdu": Pair(("-pdu", str(STORESCP_MAX_PDU)), files=(ENHANCED_CT,),
                    pacs={"max_pdu": STORESCP_MAX_PDU}),
    "acse-timeout": Pair(("-ta", "1"), link=DELAYED_REQUEST, pacs={"timeouts": {"acse_s": 1}}),
    "socket-timeout": Pair(("-ts", "1"), files=(CT_SMALL, ENHANCED_CT), sender=PAUSED,
                           pacs={"timeouts": {"network_s": 1}}),
    "dimse-timeout-idle": Pair(("-td", "1"), files=(CT_SMALL, ENHANCED_CT), sender=PAUSED,
                               pacs={"timeouts": {"dimse_s": 1}}),
    "dimse-timeout-stall": Pair(("-td", "1"), modality={"timeouts": {"dimse_s": 10}}, link=STALLED,
                                pacs={"timeouts": {"dimse_s": 1}}),
    "jpeg2000": Pair((), files=(CT_J2K_LOSSLESS,),
                     modality={"transfer_syntaxes": ["JPEG2000Lossless", "ExplicitVRLittleEndian"]},
                     pacs={"transfer_syntaxes": UNCOMPRESSED}),
}


@dataclass
class DcmtkSite:
    """The finished DCMTK rehearsal and the storescp of each pair, by pair name."""

    site: Site
    peers: dict[str, DcmtkStoreSCP]


def _dcmtk_topology(peers: dict[str, DcmtkStoreSCP]) -> dict[str, Any]:
    nodes: dict[str, Any] = {}
    links: list[dict[str, Any]] = []
    for name, pair in PAIRS.items():
        modality = {"kind": "modality", "ae_title": "CT1", "sop_classes": SOP_CLASSES,
                    **pair.modality}
        nodes[f"ct-{name}"] = modality
        nodes[f"scp-{name}"] = {"kind": "external", "ae_title": "ARCHIVE",
                                "port": peers[name].port, "sop_classes": SOP_CLASSES}
        links.append({"from": f"ct-{name}", "to": f"scp-{name}", **pair.link})
        if pair.pacs is None:
            continue
        nodes[f"ct-{name}-sim"] = modality
        nodes[f"pacs-{name}"] = {"kind": "pacs", "ae_title": "PACS", "sop_classes": SOP_CLASSES,
                                 **pair.pacs}
        link = pair.link if pair.pacs_link is None else pair.pacs_link
        links.append({"from": f"ct-{name}-sim", "to": f"pacs-{name}", **link})

    return {"site": "dcmtk-ground-truth", "nodes": nodes, "links": links}


def _senders(topology: dict[str, Any], files_of: Mapping[str, tuple[str, ...]],
             fields_of: Mapping[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Give each modality its own copy of its files, so that no two rows share a SOP Instance UID."""
    senders = []
    modalities = [n for n, node in topology["nodes"].items() if node["kind"] == "modality"]
    for copy, name in enumerate(modalities):
        senders.append({"name": name, "modality": name, "copy": copy,
                        "select": {"glob": list(files_of[name])}, "group_by": "instance",
                        **fields_of.get(name, {})})

    return senders


@pytest.fixture(scope="module")
def dcmtk(tmp_path_factory: pytest.TempPathFactory, corpus_root: Path) -> Iterator[DcmtkSite]:
    """Run one rehearsal against one storescp per fault switch and their simulated counterparts."""
    require_binary(STORESCP_PATH, "dcmtk")
    root = tmp_path_factory.mktemp("dcmtk-site")
    peers = {name: DcmtkStoreSCP(root / f"storescp-{name}", ae_title="ARCHIVE",
                                 extra_args=pair.storescp_args)
             for name, pair in PAIRS.items()}
    try:
        for peer in peers.values():
            peer.start()
        topology = _dcmtk_topology(peers)
        files_of = {f"ct-{n}{s}": p.files for n, p in PAIRS.items() for s in ("", "-sim")}
        fields_of = {f"ct-{n}{s}": p.sender for n, p in PAIRS.items() for s in ("", "-sim")}
        scenario = {"name": "dcmtk-ground-truth", "corpus": str(corpus_root), "timeout_s": 120,
                    "senders": _senders(topology, files_of, fields_of)}
        yield DcmtkSite(rehearse(root, topology, scenario), peers)
    finally:
        for peer in peers.values():
            peer.stop()


@pytest.mark.dcmtk
def test_refuse_sends_rj_1_1_1(dcmtk: DcmtkSite) -> None:
    """storescp --refuse sends RJ 1/1/1; a simulated rejection of 1/1/1 is classified alike."""
    site = dcmtk.site
    [rejection] = site.wire("ct-refuse->scp-refuse", "associate_rj", "downstream")
    assert (rejection["result"], rejection["source"], rejection["reason"]) == (1, 1, 1)
    real = failure_of(site.row("ct-refuse"))
    assert real["failure_kind"] == "association-rejected"
    assert real["side"] == "acceptor"
    assert real["permanent"] is True
    assert real["detail"] == {
        "result": 1, "result_name": "rejected-permanent",
        "source": 1, "source_name": "service-user",
        "reason": 1, "reason_name": "no-reason-given",
        "category": "configuration",
    }

    # A simulated PACS has no setting that rejects with 1/1/1, so a fault on its link does.
    simulated = failure_of(site.row("ct-refuse-sim"))
    assert simulated["failure_kind"] == real["failure_kind"]
    assert simulated["permanent"] is real["permanent"]
    for key in ("result", "source", "reason"):
        assert simulated["detail"][key] == real["detail"][key], key
    [injected] = site.of_kind("link.fault_triggered", link="ct-refuse-sim->pacs-refuse")
    assert injected["action"] == "associate-rejected"
    assert injected["attributes"] == {"result": 1, "source": 1, "reason": 1}
    for link in ("ct-refuse->scp-refuse", "ct-refuse-sim->pacs-refuse"):
        assert site.closed(link)["commands"] == {"upstream": {}, "downstream": {}}


@pytest.mark.dcmtk
def test_reject_accepts_requestor_with_implementation_uid(dcmtk: DcmtkSite) -> None:
    """storescp --reject rejects only requests without an Implementation Class UID, so it stores."""
    site = dcmtk.site
    [request] = site.wire("ct-reject->scp-reject", "associate_rq", "upstream")
    assert request["user_information"]["implementation_class_uid"]
    assert site.wire("ct-reject->scp-reject", "associate_rj", "downstream") == []
    row = site.row("ct-reject")
    assert row["state"] == "delivered"
    assert row["status"] == "0x0000"
    assert len(dcmtk.peers["reject"].received_files()) == 1


@pytest.mark.dcmtk
@pytest.mark.parametrize("switch", ["abort-during", "abort-after"])
def test_abort_sends_a_abort_0_0(dcmtk: DcmtkSite, switch: str) -> None:
    """storescp --abort-during and --abort-after send A-ABORT 0/0 instead of a C-STORE-RSP."""
    site = dcmtk.site
    link = f"ct-{switch}->scp-{switch}"
    [abort] = site.wire(link, "abort", "downstream")
    assert (abort["source"], abort["reason"]) == (0, 0)
    assert site.of_kind("link.pdu", link=link, command="C-STORE-RSP") == []
    real = failure_of(site.row(f"ct-{switch}"))
    assert real["failure_kind"] == "association-aborted"
    assert real["side"] == "acceptor"
    assert real["permanent"] is False
    assert real["detail"] == {"source": 0, "source_name": "service-user",
                              "reason": 0, "reason_name": "not-significant"}
    assert dcmtk.peers[switch].received_files() == []

    # A simulated PACS never aborts a store, so an abort fault with the same numbers does.
    simulated = failure_of(site.row("ct-abort-during-sim"))
    assert simulated["failure_kind"] == real["failure_kind"]
    assert simulated["permanent"] is real["permanent"]
    assert (simulated["detail"]["source"], simulated["detail"]["reason"]) == (0, 0)
    [injected] = site.of_kind("link.fault_triggered", link="ct-abort-during-sim->pacs-abort-during")
    assert injected["action"] == "a-abort"
    assert (injected["attributes"]["source"], injected["attributes"]["reason"]) == (0, 0)


@pytest.mark.dcmtk
def test_injected_rj_and_abort_blame_link(dcmtk: DcmtkSite) -> None:
    """An A-ASSOCIATE-RJ or A-ABORT that a fault injected is recorded with side link and the fault."""
    site = dcmtk.site
    assert site.of_kind("link.proxy_error") == []
    for sender, fault in (("ct-refuse-sim", "refuse"), ("ct-abort-during-sim", "abort")):
        simulated = failure_of(site.row(sender))
        assert simulated["side"] == "link"
        assert simulated["detail"]["fault"] == fault


@pytest.mark.dcmtk
def test_sleep_during_is_dimse_timeout(dcmtk: DcmtkSite) -> None:
    """storescp --sleep-during 3 and a stalled simulated PACS both outlast a 1 s DIMSE timeout."""
    site = dcmtk.site
    real = failure_of(site.row("ct-sleep-during"))
    simulated = failure_of(site.row("ct-sleep-during-sim"))
    assert real["failure_kind"] == "dimse-timeout"
    assert_same(real, simulated, "timeout_s", "timed_out_side")
    assert real["side"] == "acceptor"
    assert real["permanent"] is False
    assert real["detail"]["timeout_s"] == 1.0
    for link in ("ct-sleep-during->scp-sleep-during", "ct-sleep-during-sim->pacs-sleep-during"):
        [abort] = site.wire(link, "abort", "upstream")
        assert (abort["source"], abort["reason"]) == (0, 0)
        assert site.of_kind("link.pdu", link=link, command="C-STORE-RSP") == []


@pytest.mark.dcmtk
def test_sleep_after_times_out_release(dcmtk: DcmtkSite) -> None:
    """storescp --sleep-after 2 stores at once, then outlasts the sender's 1 s ACSE timeout on release."""
    site = dcmtk.site
    row = site.row("ct-sleep-after")
    assert (row["state"], row["status"], row["failure"]) == ("delivered", "0x0000", None)
    [response] = site.of_kind("dimse.response", node="ct-sleep-after")
    assoc_id = response["assoc_id"]
    [timeout] = site.of_kind("timeout", assoc_id=assoc_id)
    assert (timeout["timeout_kind"], timeout["timed_out_side"], timeout["timeout_s"]) == \
        ("acse", "requestor", 1.0)
    [aborted] = site.of_kind("association.aborted", assoc_id=assoc_id)
    assert (aborted["pdu"], aborted["initiated_by"], aborted["source"]) == ("A-ABORT", "local", 2)
    link = "ct-sleep-after->scp-sleep-after"
    [release] = site.wire(link, "release_rq", "upstream")
    [abort] = site.wire(link, "abort", "upstream")
    assert (abort["source"], abort["reason"]) == (2, 0)
    # storescp answers the release once it wakes, after the requestor has aborted.
    late = site.wire(link, "release_rp", "downstream")
    assert all(release["seq"] < abort["seq"] < rp["seq"] for rp in late)


@pytest.mark.dcmtk
def test_max_pdu_negotiated_and_kept(dcmtk: DcmtkSite) -> None:
    """storescp -pdu 4096 and a PACS with max_pdu 4096 both advertise 4096, and no PDU exceeds it."""
    site = dcmtk.site
    for sender, link in (("ct-max-pdu", "ct-max-pdu->scp-max-pdu"),
                         ("ct-max-pdu-sim", "ct-max-pdu-sim->pacs-max-pdu")):
        [answer] = site.wire(link, "associate_ac", "downstream")
        assert answer["user_information"]["max_length"] == STORESCP_MAX_PDU
        [accepted] = site.of_kind("association.accepted", node=sender)
        assert accepted["max_pdu_acceptor"] == STORESCP_MAX_PDU
        assert accepted["max_pdu_requestor"] == 16382
        closed = site.closed(link)
        assert closed["max_pdu_length"]["upstream"] == STORESCP_MAX_PDU
        assert closed["oversize_pdus"] == {"upstream": 0, "downstream": 0}
        assert max(int(size) for size in closed["pdu_sizes"]["upstream"]) <= STORESCP_MAX_PDU
        row = site.row(sender, ENHANCED_CT)
        assert row["state"] == "delivered"
        assert row["status"] == "0x0000"


@pytest.mark.dcmtk
def test_acse_timeout_of_acceptor_closes(dcmtk: DcmtkSite) -> None:
    """storescp -ta 1 and a PACS with acse_s 1 both close a connection whose request is late, with a FIN."""
    site = dcmtk.site
    real = failure_of(site.row("ct-acse-timeout"))
    simulated = failure_of(site.row("ct-acse-timeout-sim"))
    assert real["failure_kind"] == "connection-closed"
    assert_same(real, simulated)
    assert real["side"] == "acceptor"
    assert real["permanent"] is False
    for link in ("ct-acse-timeout->scp-acse-timeout", "ct-acse-timeout-sim->pacs-acse-timeout"):
        closed = site.closed(link)
        assert (closed["closed_by"], closed["close_kind"]) == ("server", "fin")
        assert closed["pdus"]["downstream"] == {}


@pytest.mark.dcmtk
def test_idle_association_ends_differently(dcmtk: DcmtkSite) -> None:
    """An idle association: storescp -ts 1 closes the socket, a PACS with network_s 1 sends A-ABORT 0/0."""
    site = dcmtk.site
    # The corpus orders CT-enhanced/ before CT/, so the enhanced CT goes first.
    assert site.row("ct-socket-timeout", ENHANCED_CT)["state"] == "delivered"
    assert site.row("ct-socket-timeout-sim", ENHANCED_CT)["state"] == "delivered"
    real = failure_of(site.row("ct-socket-timeout"))
    simulated = failure_of(site.row("ct-socket-timeout-sim"))

    # storescp sends no PDU, so the requestor records a closed connection and blames the acceptor.
    dcmtk_link = "ct-socket-timeout->scp-socket-timeout"
    assert site.wire(dcmtk_link, "abort", "downstream") == []
    assert site.closed(dcmtk_link)["closed_by"] == "server"
    assert (real["failure_kind"], real["side"], real["permanent"]) == \
        ("connection-closed", "acceptor", False)

    # pynetdicom sends an A-ABORT, and the simulated PACS notes its network timeout for the requestor.
    [abort] = site.wire("ct-socket-timeout-sim->pacs-socket-timeout", "abort", "downstream")
    assert (abort["source"], abort["reason"]) == (0, 0)
    assert (simulated["failure_kind"], simulated["side"], simulated["permanent"]) == \
        ("network-timeout", "requestor", False)
    assert simulated["detail"] == {"timeout_s": 1.0, "timed_out_side": "acceptor",
                                   "node": "pacs-socket-timeout"}


@pytest.mark.dcmtk
def test_acceptor_dimse_timeout_when_idle(dcmtk: DcmtkSite) -> None:
    """storescp -td 1 and a PACS with dimse_s 1 both keep an association idle for 2 s between C-STOREs."""
    site = dcmtk.site
    for sender in ("ct-dimse-timeout-idle", "ct-dimse-timeout-idle-sim"):
        for source_file in (CT_SMALL, ENHANCED_CT):
            row = site.row(sender, source_file)
            assert row["state"] == "delivered", row
            assert row["status"] == "0x0000"
    assert len(dcmtk.peers["dimse-timeout-idle"].received_files()) == 2


@pytest.mark.dcmtk
def test_acceptor_dimse_timeout_stalled_data(dcmtk: DcmtkSite) -> None:
    """A data set held 2 s after its command: storescp -td 1 aborts, a PACS with dimse_s 1 waits."""
    site = dcmtk.site
    [abort] = site.wire("ct-dimse-timeout-stall->scp-dimse-timeout-stall", "abort", "downstream")
    assert (abort["source"], abort["reason"]) == (0, 0)
    real = failure_of(site.row("ct-dimse-timeout-stall"))
    assert (real["failure_kind"], real["side"], real["permanent"]) == \
        ("association-aborted", "acceptor", False)
    assert (real["detail"]["source"], real["detail"]["reason"]) == (0, 0)
    assert "DIMSE No data available" in dcmtk.peers["dimse-timeout-stall"].log_text()

    # NOTE: pynetdicom applies no DIMSE timeout to an acceptor that waits for a data set.
    # So a simulated PACS's dimse_s does not model DCMTK's -td; its network_s ends such a wait.
    simulated = site.row("ct-dimse-timeout-stall-sim")
    assert simulated["state"] == "delivered"
    assert simulated["status"] == "0x0000"


@pytest.mark.dcmtk
def test_unaccepted_transfer_syntax_result_4(dcmtk: DcmtkSite) -> None:
    """storescp and a simulated PACS both reject a JPEG 2000 context with result 4."""
    site = dcmtk.site
    real = failure_of(site.row("ct-jpeg2000", CT_J2K_LOSSLESS))
    simulated = failure_of(site.row("ct-jpeg2000-sim", CT_J2K_LOSSLESS))
    assert real["failure_kind"] == "no-accepted-context"
    assert_same(real, simulated, "cause", "sop_class", "transfer_syntax")
    assert (real["side"], real["permanent"], real["detail"]["cause"]) == ("acceptor", True, "acceptance")
    for sender in ("ct-jpeg2000", "ct-jpeg2000-sim"):
        row = site.row(sender, CT_J2K_LOSSLESS)
        context_id, result = answered_context(site, row)
        assert result == 4
        results = row["failure"]["detail"]["context_results"]
        assert [(c["context_id"], c["result"]) for c in results] == [(context_id, 4)]


# The Orthanc site: one strict Orthanc beside simulated PACS with the same declaration.


ORTHANC_CONFIG = {
    "DicomCheckCalledAet": True,
    "DicomModalities": {"scanner": ["CT1", "127.0.0.1", 11112]},
    "DicomAlwaysAllowStore": False,
    "AcceptedTransferSyntaxes": [IMPLICIT_LE, EXPLICIT_LE],
    "MaximumPduLength": ORTHANC_MAX_PDU,
    "UnknownSopClassAccepted": False,
}
"""Orthanc 1.10 in its strictest storage configuration. Only the calling AE title CT1 may store."""

SIMULATED_STRICT_PACS = {
    "kind": "pacs", "ae_title": "ORTHANC", "check_called_ae": True, "accept_calling_ae": ["CT1"],
    "transfer_syntaxes": UNCOMPRESSED, "max_pdu": ORTHANC_MAX_PDU,
    "sop_classes": ["CTImageStorage", "EnhancedCTImageStorage"],
}
"""The same declaration as ORTHANC_CONFIG, for a simulated PACS."""

ORTHANC_SENDERS = {
    # name: (calling AE, called AE or None for the receiver's own)
    "known": ("CT1", None),
    "stranger": ("CT2", None),
    "misaddressed": ("CT1", "ANY-SCP"),
}
ORTHANC_FILES = (CT_SMALL, CT_J2K_LOSSLESS, PHOTOACOUSTIC)


@dataclass
class OrthancSite:
    """The finished Orthanc rehearsal, with what Orthanc stored and logged."""

    site: Site
    stored: list[str]
    """SOP Instance UIDs that Orthanc's REST API lists after the run."""
    log: str


@pytest.fixture(scope="module")
def orthanc_site(tmp_path_factory: pytest.TempPathFactory, corpus_root: Path) -> Iterator[OrthancSite]:
    """Run one rehearsal against a strict Orthanc and a simulated PACS that declares the same."""
    require_binary(ORTHANC_PATH, "orthanc")
    root = tmp_path_factory.mktemp("orthanc-site")
    with Orthanc(root / "orthanc", ae_title="ORTHANC", config_overrides=ORTHANC_CONFIG) as orthanc:
        nodes: dict[str, Any] = {
            "orthanc": {"kind": "external", "ae_title": "ORTHANC", "port": orthanc.dicom_port,
                        "sop_classes": SOP_CLASSES},
            "pacs": SIMULATED_STRICT_PACS,
        }
        links = []
        for name, (calling_ae, called_ae) in ORTHANC_SENDERS.items():
            for receiver in ("orthanc", "pacs"):
                sender = f"{name}-{receiver}"
                nodes[sender] = {"kind": "modality", "ae_title": calling_ae, "sop_classes": SOP_CLASSES,
                                 "transfer_syntaxes": [*UNCOMPRESSED, "JPEG2000Lossless"]}
                link = {"from": sender, "to": receiver}
                links.append(link if called_ae is None else {**link, "called_ae": called_ae})
        topology = {"site": "orthanc-ground-truth", "nodes": nodes, "links": links}
        modalities = [n for n, node in nodes.items() if node["kind"] == "modality"]
        files_of = {n: ORTHANC_FILES for n in modalities}
        # The known sender opens one association per instance, so that one rejected
        # context cannot hide the result of another.
        fields_of = {n: {"group_by": len(ORTHANC_FILES)} for n in modalities if not n.startswith("known")}
        scenario = {"name": "orthanc-ground-truth", "corpus": str(corpus_root), "timeout_s": 120,
                    "senders": _senders(topology, files_of, fields_of)}
        site = rehearse(root, topology, scenario)
        stored = [orthanc.instance_tags(i)["SOPInstanceUID"] for i in orthanc.instances()]
        yield OrthancSite(site, stored, orthanc.log_text())


@pytest.mark.orthanc
def test_orthanc_called_ae_rj_1_1_7(orthanc_site: OrthancSite) -> None:
    """Orthanc with DicomCheckCalledAet and a simulated PACS with check_called_ae both send RJ 1/1/7."""
    site = orthanc_site.site
    for receiver in ("orthanc", "pacs"):
        [rejection] = site.wire(f"misaddressed-{receiver}->{receiver}", "associate_rj", "downstream")
        assert (rejection["result"], rejection["source"], rejection["reason"]) == (1, 1, 7)
    for source_file in ORTHANC_FILES:
        real = failure_of(site.row("misaddressed-orthanc", source_file))
        simulated = failure_of(site.row("misaddressed-pacs", source_file))
        assert real["failure_kind"] == "association-rejected"
        assert_same(real, simulated, "result", "source", "reason", "reason_name", "category")
        assert (real["side"], real["permanent"]) == ("acceptor", True)


@pytest.mark.orthanc
def test_orthanc_unknown_calling_ae_aborts(orthanc_site: OrthancSite) -> None:
    """Orthanc accepts an unknown calling AE, then aborts its C-STORE; a simulated PACS sends RJ 1/1/3."""
    site = orthanc_site.site
    orthanc_link = "stranger-orthanc->orthanc"
    assert site.wire(orthanc_link, "associate_rj", "downstream") == []
    assert site.wire(orthanc_link, "associate_ac", "downstream")
    [store] = site.of_kind("link.pdu", link=orthanc_link, command="C-STORE-RQ")
    assert site.of_kind("link.pdu", link=orthanc_link, command="C-STORE-RSP") == []
    assert 'Rejected Store request from remote DICOM modality with AET "CT2"' in orthanc_site.log
    [row] = site.rows(sop_instance_uid=store["affected_sop_instance_uid"], destination="orthanc")
    real = failure_of(row)
    assert real["hop"] == orthanc_link
    assert (real["side"], real["permanent"]) == ("acceptor", False)
    # Orthanc sends A-ABORT 0/0 and closes at once, while the requestor may still be sending
    # the data set. The kernel then resets the connection, and the A-ABORT can be lost.
    aborts = site.wire(orthanc_link, "abort", "downstream")
    if aborts:
        assert [(a["source"], a["reason"]) for a in aborts] == [(0, 0)]
        assert real["failure_kind"] == "association-aborted"
        assert real["detail"] == {"source": 0, "source_name": "service-user",
                                  "reason": 0, "reason_name": "not-significant"}
    else:
        closed = site.closed(orthanc_link)
        assert (closed["closed_by"], closed["close_kind"]) == ("server", "reset")
        assert real["failure_kind"] == "connection-closed"
    stranger_uids = {r["sop_instance_uid"] for r in site.rows(source="stranger-orthanc")}
    assert stranger_uids.isdisjoint(orthanc_site.stored)

    [rejection] = site.wire("stranger-pacs->pacs", "associate_rj", "downstream")
    assert (rejection["result"], rejection["source"], rejection["reason"]) == (1, 1, 3)
    simulated = failure_of(site.row("stranger-pacs"))
    assert simulated["failure_kind"] == "association-rejected"
    assert (simulated["side"], simulated["permanent"]) == ("acceptor", True)
    assert simulated["detail"]["reason_name"] == "calling-AE-title-not-recognized"


@pytest.mark.orthanc
def test_orthanc_transfer_syntax_result_3(orthanc_site: OrthancSite) -> None:
    """Orthanc rejects an unaccepted transfer syntax with result 3, pynetdicom with 4; both are acceptance."""
    site = orthanc_site.site
    real = failure_of(site.row("known-orthanc", CT_J2K_LOSSLESS))
    simulated = failure_of(site.row("known-pacs", CT_J2K_LOSSLESS))
    assert real["failure_kind"] == "no-accepted-context"
    assert_same(real, simulated, "cause", "sop_class", "transfer_syntax")
    assert (real["side"], real["permanent"], real["detail"]["cause"]) == ("acceptor", True, "acceptance")
    for sender, expected in (("known-orthanc", 3), ("known-pacs", 4)):
        row = site.row(sender, CT_J2K_LOSSLESS)
        context_id, result = answered_context(site, row)
        assert result == expected
        results = row["failure"]["detail"]["context_results"]
        assert [(c["context_id"], c["result"]) for c in results] == [(context_id, expected)]


@pytest.mark.orthanc
def test_orthanc_unknown_sop_class_result_3(orthanc_site: OrthancSite) -> None:
    """Orthanc with UnknownSopClassAccepted false and a PACS that lacks the SOP class both send result 3."""
    site = orthanc_site.site
    real = failure_of(site.row("known-orthanc", PHOTOACOUSTIC))
    simulated = failure_of(site.row("known-pacs", PHOTOACOUSTIC))
    assert real["failure_kind"] == "no-accepted-context"
    assert_same(real, simulated, "cause", "sop_class", "transfer_syntax")
    assert real["detail"]["sop_class"] == PHOTOACOUSTIC_IMAGE
    for row_failure in (real, simulated):
        assert [c["result"] for c in row_failure["detail"]["context_results"]] == [3]
    for link in ("known-orthanc->orthanc", "known-pacs->pacs"):
        all_rejected = [e for e in site.wire(link, "associate_ac", "downstream")
                        if all(cx["result"] != 0 for cx in e["presentation_contexts"])]
        [answer] = all_rejected
        assert {cx["result"] for cx in answer["presentation_contexts"]} == {3}
        # Every context was rejected, so the requestor ended the association with an A-ABORT.
        assert site.of_kind("link.pdu", link=link, pdu="abort", assoc_id=answer["assoc_id"],
                            direction="upstream")


@pytest.mark.orthanc
def test_orthanc_maximum_pdu_length(orthanc_site: OrthancSite) -> None:
    """Orthanc's MaximumPduLength is recorded as the acceptor's maximum, like a PACS's max_pdu."""
    site = orthanc_site.site
    for sender, link in (("known-orthanc", "known-orthanc->orthanc"), ("known-pacs", "known-pacs->pacs")):
        answers = site.wire(link, "associate_ac", "downstream")
        assert {a["user_information"]["max_length"] for a in answers} == {ORTHANC_MAX_PDU}
        accepted = site.of_kind("association.accepted", node=sender)
        assert {a["max_pdu_acceptor"] for a in accepted} == {ORTHANC_MAX_PDU}
        row = site.row(sender)
        assert row["state"] == "delivered"
        assert row["status"] == "0x0000"
    [stored] = orthanc_site.stored
    assert stored == site.row("known-orthanc")["sop_instance_uid"]
