"""Each failure kind produced by a real rehearsal on loopback, checked in the run log.

Every test builds a small site, runs it, and checks the ledger's failure
record field by field (failure_kind, hop, side, permanent, detail) against
the events that the nodes and link proxies recorded.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import pytest
from peers import DcmtkStoreSCP, free_port
from pydicom import dcmread
from pydicom.uid import CTImageStorage
from pynetdicom import AE
from rehearsal_support import Site, prepare, rehearse

from simulator.corpus import bundled_corpus

WAIT_LIMIT_S = 60.0
"""Guard against a hung run; no test checks how long anything takes."""

CT_TRANSFER_SYNTAXES = [
    "ExplicitVRLittleEndian", "ImplicitVRLittleEndian", "JPEG2000Lossless", "JPEG2000",
]
ALL_CT_FILES = ["CT/**", "private/explicit_VR-UN.dcm"]
"""Four CT Image Storage instances: explicit VR, JPEG 2000 and JPEG 2000 lossless."""

CALLED_AE_REJECTION = {
    "result": 1, "result_name": "rejected-permanent",
    "source": 1, "source_name": "service-user",
    "reason": 7, "reason_name": "called-AE-title-not-recognized",
}


@pytest.fixture(scope="module", autouse=True)
def corpus_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Build the bundled corpus once for this module, in a cache folder of its own."""
    cache = tmp_path_factory.mktemp("corpus-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("REHEARSE_CACHE_DIR", str(cache))
        yield bundled_corpus()


# Building and running sites.


def modality(ae_title: str, sop_classes: list[Any], **fields: Any) -> dict[str, Any]:
    return {"kind": "modality", "ae_title": ae_title, "sop_classes": sop_classes, **fields}


def pacs(ae_title: str, sop_classes: list[Any], **fields: Any) -> dict[str, Any]:
    return {"kind": "pacs", "ae_title": ae_title, "sop_classes": sop_classes, **fields}


def router(ae_title: str, sop_classes: list[Any], forward: list[str],
           **fields: Any) -> dict[str, Any]:
    return {"kind": "router", "ae_title": ae_title, "sop_classes": sop_classes,
            "rules": [{"name": "everything", "forward": forward}], **fields}


def external(ae_title: str, port: int, sop_classes: list[Any]) -> dict[str, Any]:
    return {"kind": "external", "ae_title": ae_title, "port": port, "sop_classes": sop_classes}


def sending(modality_name: str, globs: list[str], **fields: Any) -> dict[str, Any]:
    sender = {"modality": modality_name, "select": {"glob": globs}, "group_by": "instance"}
    return {"name": "failure-kind", "corpus": "bundled", "timeout_s": 120,
            "senders": [{**sender, **fields}]}


@dataclass
class Background:
    """A rehearsal running in a thread, for tests that act on the site while it runs."""

    site: Site
    thread: threading.Thread
    error: list[BaseException] = field(default_factory=list)

    def wait_for_event(self, kind: str) -> dict[str, Any]:
        path = self.site.run_dir / "events.jsonl"
        deadline = time.monotonic() + WAIT_LIMIT_S
        while True:
            if path.exists():
                # The last line may be incomplete while it is being written.
                for line in path.read_text(encoding="utf-8").split("\n")[:-1]:
                    event: dict[str, Any] = json.loads(line)
                    if event["kind"] == kind:
                        return event
            assert not self.error, self.error
            assert time.monotonic() < deadline, f"no {kind} event within {WAIT_LIMIT_S} s"
            time.sleep(0.05)

    def join(self) -> Site:
        self.thread.join(timeout=WAIT_LIMIT_S * 2)
        assert not self.thread.is_alive(), "the rehearsal did not finish"
        assert not self.error, self.error
        return self.site.read()


def rehearse_in_background(folder: Path, topology: dict[str, Any],
                           scenario: dict[str, Any]) -> Background:
    site = prepare(folder, topology, scenario)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(site.rehearsal.run())
        except BaseException as exc:  # noqa: BLE001 - reported by join() in the test thread
            errors.append(exc)

    thread = threading.Thread(target=run, name="rehearsal", daemon=True)
    thread.start()

    return Background(site, thread, errors)


def assert_failure(row: dict[str, Any], kind: str, hop: str, side: str, permanent: bool) -> None:
    assert row["state"] == "failed", row
    failure = row["failure"]
    assert failure["failure_kind"] == kind, failure
    assert failure["hop"] == hop, failure
    assert failure["side"] == side, failure
    assert failure["permanent"] is permanent, failure
    assert failure["reason"], failure


# Association rejections.


def test_called_ae_not_recognized(tmp_path: Path) -> None:
    """A PACS rejects an unknown called AE title with RJ 1/1/7, and the router never retries it."""
    topology = {
        "site": "called-ae",
        "nodes": {
            "ct": modality("CT1", ["CTImageStorage"], transfer_syntaxes=CT_TRANSFER_SYNTAXES),
            "router": router("ROUTER", ["CTImageStorage"], ["pacs"],
                             transfer_syntaxes=CT_TRANSFER_SYNTAXES,
                             retry={"max_attempts": 3, "initial_backoff_s": 0.1}),
            "pacs": pacs("PACS", ["CTImageStorage"], check_called_ae=True,
                         transfer_syntaxes=CT_TRANSFER_SYNTAXES),
        },
        "links": [{"from": "ct", "to": "router"},
                  {"from": "router", "to": "pacs", "called_ae": "ANY-SCP"}],
    }
    site = rehearse(tmp_path, topology, sending("ct", ALL_CT_FILES))

    rows = site.rows(source="ct")
    assert len(rows) == 4
    for row in rows:
        assert_failure(row, "association-rejected", "router->pacs", "acceptor", permanent=True)
        assert row["failure"]["detail"] == {**CALLED_AE_REJECTION, "category": "configuration"}
        assert row["status"] is None
        assert row["hops"] == ["ct->router", "router->pacs"]
    assert site.of_kind("forward.retry") == []
    failed = site.of_kind("forward.failed", destination="pacs")
    failed_uids = sorted(e["sop_instance_uid"] for e in failed)
    assert failed_uids == sorted(r["sop_instance_uid"] for r in rows)
    assert {e["attempts"] for e in failed} == {1}

    on_link = site.of_kind("association.requested", node="router", link="router->pacs")
    assert on_link
    for request in on_link:
        assoc_id = request["assoc_id"]
        assert request["called_ae"] == "ANY-SCP"
        [by_pacs] = site.of_kind("association.rejected", node="pacs", assoc_id=assoc_id)
        assert {k: by_pacs[k] for k in CALLED_AE_REJECTION} == CALLED_AE_REJECTION
        [on_wire] = site.of_kind("link.pdu", assoc_id=assoc_id, pdu="associate_rj")
        assert (on_wire["result"], on_wire["source"], on_wire["reason"]) == (1, 1, 7)
        assert site.of_kind("dimse.request", assoc_id=assoc_id) == []
        assert [e for e in site.of_kind("link.pdu", assoc_id=assoc_id) if "command" in e] == []
    for closed in site.of_kind("link.connection_closed", link="router->pacs"):
        assert closed["commands"] == {"upstream": {}, "downstream": {}}
    assert list((site.run_dir / "nodes" / "pacs" / "store").iterdir()) == []


def test_calling_ae_not_recognized(tmp_path: Path) -> None:
    """A PACS that accepts only other calling AE titles sends RJ 1/1/3, a permanent rejection."""
    topology = {
        "site": "calling-ae",
        "nodes": {
            "ct": modality("CT1", ["CTImageStorage", "EnhancedCTImageStorage"]),
            "pacs": pacs("PACS", ["CTImageStorage", "EnhancedCTImageStorage"],
                         accept_calling_ae=["SOME_OTHER_AE"]),
        },
        "links": [{"from": "ct", "to": "pacs"}],
    }
    site = rehearse(tmp_path, topology,
                    sending("ct", ["CT/CT_small.dcm", "CT-enhanced/eCT_Supplemental.dcm"]))

    rows = site.rows(source="ct", destination="pacs")
    assert len(rows) == 2
    for row in rows:
        assert_failure(row, "association-rejected", "ct->pacs", "acceptor", permanent=True)
        assert row["failure"]["detail"] == {
            "result": 1, "result_name": "rejected-permanent",
            "source": 1, "source_name": "service-user",
            "reason": 3, "reason_name": "calling-AE-title-not-recognized",
            "category": "configuration",
        }
    requested = site.of_kind("association.requested", node="pacs")
    assert {e["calling_ae"] for e in requested} == {"CT1"}
    assert len(site.of_kind("association.rejected", node="pacs", reason=3)) == 2
    assert site.of_kind("dimse.request") == []


def test_local_limit_exceeded(tmp_path: Path) -> None:
    """More concurrent associations than max_associations get RJ 2/3/2, a transient rejection."""
    topology = {
        "site": "local-limit",
        "nodes": {
            "ct": modality("CT1", ["CTImageStorage", "EnhancedCTImageStorage"]),
            "pacs": pacs("PACS", ["CTImageStorage", "EnhancedCTImageStorage"],
                         max_associations=1),
        },
        "links": [{"from": "ct", "to": "pacs"}],
    }
    scenario = sending("ct", ["CT/CT_small.dcm", "CT-enhanced/**"], concurrency=8)
    scenario["repeat"] = 4
    site = rehearse(tmp_path, topology, scenario)

    rows = site.rows(source="ct")
    assert len(rows) == 8
    rejected = [r for r in rows if r["state"] == "failed"]
    assert rejected, "eight concurrent associations never exceeded a limit of one"
    for row in rejected:
        assert_failure(row, "association-rejected", "ct->pacs", "acceptor", permanent=False)
        assert row["failure"]["detail"] == {
            "result": 2, "result_name": "rejected-transient",
            "source": 3, "source_name": "service-provider (presentation related function)",
            "reason": 2, "reason_name": "local-limit-exceeded",
            "category": "capacity",
        }
    for row in rows:
        if row["state"] != "failed":
            assert row["state"] == "delivered"
    by_pacs = site.of_kind("association.rejected", node="pacs", role="acceptor")
    assert len(by_pacs) == len(rejected)  # one instance per association
    assert {(e["result"], e["source"], e["reason"]) for e in by_pacs} == {(2, 3, 2)}
    assert site.of_kind("sender.started")[0]["concurrency"] == 8


# Presentation contexts.


def test_context_never_proposed(tmp_path: Path) -> None:
    """An object whose transfer syntax the sender does not declare fails with cause proposal."""
    topology = {
        "site": "not-proposed",
        "nodes": {
            "mr": modality("MR1", [{"sop_class": "MRImageStorage",
                                    "transfer_syntaxes": ["ExplicitVRLittleEndian"]}]),
            "pacs": pacs("PACS", ["MRImageStorage"],
                         transfer_syntaxes=["ExplicitVRLittleEndian", "JPEG2000Lossless"]),
        },
        "links": [{"from": "mr", "to": "pacs"}],
    }
    site = rehearse(tmp_path, topology,
                    sending("mr", ["MR/MR_small.dcm", "MR/MR_small_jp2klossless.dcm"]))

    [row] = site.rows(source_file="MR/MR_small_jp2klossless.dcm")
    assert_failure(row, "no-accepted-context", "mr->pacs", "requestor", permanent=True)
    assert row["failure"]["detail"] == {
        "sop_class": "1.2.840.10008.5.1.4.1.1.4",
        "transfer_syntax": "1.2.840.10008.1.2.4.90",
        "cause": "proposal",
    }
    assert row["attempts"] == 1
    uid = row["sop_instance_uid"]
    [not_sent] = site.of_kind("dimse.not_sent", sop_instance_uid=uid)
    assert not_sent["failure_kind"] == "no-accepted-context"
    assert not_sent["detail"]["cause"] == "proposal"
    assert site.of_kind("dimse.request", sop_instance_uid=uid) == []
    proposed = [cx for e in site.of_kind("link.pdu", pdu="associate_rq")
                for cx in e["presentation_contexts"]]
    assert all("1.2.840.10008.1.2.4.90" not in cx["transfer_syntaxes"] for cx in proposed)
    [other] = site.rows(source_file="MR/MR_small.dcm")
    assert other["state"] == "delivered"


def test_contexts_rejected_by_acceptor(tmp_path: Path) -> None:
    """Context results 3 and 4 come in an A-ASSOCIATE-AC, not an RJ, and fail as acceptance."""
    explicit_only = ["ExplicitVRLittleEndian"]
    topology = {
        "site": "rejected-contexts",
        "nodes": {
            "ct": modality("CT1", [
                {"sop_class": "CTImageStorage", "transfer_syntaxes": explicit_only},
                {"sop_class": "MRImageStorage", "transfer_syntaxes": explicit_only},
            ]),
            "pacs": pacs("PACS", [{"sop_class": "CTImageStorage",
                                   "transfer_syntaxes": ["ImplicitVRLittleEndian"]}]),
        },
        "links": [{"from": "ct", "to": "pacs"}],
    }
    site = rehearse(tmp_path, topology, sending("ct", ["CT/CT_small.dcm", "MR/MR_small.dcm"]))

    expected = {
        "CT/CT_small.dcm": ("1.2.840.10008.5.1.4.1.1.2", 4,
                            "transfer-syntaxes-not-supported (provider rejection)"),
        "MR/MR_small.dcm": ("1.2.840.10008.5.1.4.1.1.4", 3,
                            "abstract-syntax-not-supported (provider rejection)"),
    }
    for source_file, (sop_class, result, result_name) in expected.items():
        [row] = site.rows(source_file=source_file)
        assert_failure(row, "no-accepted-context", "ct->pacs", "acceptor", permanent=True)
        detail = row["failure"]["detail"]
        assert detail["cause"] == "acceptance"
        assert detail["sop_class"] == sop_class
        assert detail["transfer_syntax"] == "1.2.840.10008.1.2.1"
        assert [c["result"] for c in detail["context_results"]] == [result]
        assert [c["result_name"] for c in detail["context_results"]] == [result_name]

    assert site.of_kind("link.pdu", pdu="associate_rj") == []
    answers = site.of_kind("link.pdu", pdu="associate_ac")
    assert len(answers) == 2
    assert sorted(cx["result"] for e in answers for cx in e["presentation_contexts"]) == [3, 4]
    accepted = site.of_kind("association.accepted", node="ct")
    assert [e["all_contexts_rejected"] for e in accepted] == [True, True]
    for event in accepted:
        [failed] = site.of_kind("association.failed", assoc_id=event["assoc_id"])
        assert failed["failure_kind"] == "no-accepted-context"
        assert site.of_kind("link.pdu", assoc_id=event["assoc_id"], pdu="abort")
    assert site.of_kind("dimse.request") == []


# DIMSE statuses.


def test_dimse_failure_keeps_each_status(tmp_path: Path, corpus_root: Path) -> None:
    """0xA900 with Error Comment and Offending Element and a 0x0000 share one association."""
    without = dcmread(corpus_root / "CT" / "CT_small.dcm", stop_before_pixels=True)
    with_number = dcmread(corpus_root / "CT-enhanced" / "eCT_Supplemental.dcm",
                          stop_before_pixels=True)
    assert not str(without.get("AccessionNumber", "")).strip()
    assert str(with_number.get("AccessionNumber", "")).strip()
    topology = {
        "site": "dimse-failure",
        "nodes": {
            "ct": modality("CT1", ["CTImageStorage", "EnhancedCTImageStorage"]),
            "pacs": pacs("PACS", ["CTImageStorage", "EnhancedCTImageStorage"],
                         require_attributes=["AccessionNumber"]),
        },
        "links": [{"from": "ct", "to": "pacs"}],
    }
    site = rehearse(tmp_path, topology,
                    sending("ct", ["CT/CT_small.dcm", "CT-enhanced/**"], group_by=10))

    [failed] = site.rows(source_file="CT/CT_small.dcm")
    assert_failure(failed, "dimse-failure", "ct->pacs", "acceptor", permanent=True)
    assert failed["status"] == "0xA900"
    assert failed["failure"]["detail"] == {
        "status": "0xA900",
        "error_comment": "Missing AccessionNumber",
        "offending_element": ["(0008,0050)"],
    }
    [stored] = site.rows(source_file="CT-enhanced/eCT_Supplemental.dcm")
    assert stored["state"] == "delivered"
    assert stored["status"] == "0x0000"
    assert stored["failure"] is None

    responses = site.of_kind("dimse.response", node="ct")
    assert len({e["assoc_id"] for e in responses}) == 1
    statuses = {e["sop_instance_uid"]: e["status"] for e in responses}
    assert statuses == {failed["sop_instance_uid"]: "0xA900", stored["sop_instance_uid"]: "0x0000"}
    [on_wire] = site.of_kind("link.pdu", command="C-STORE-RSP", status=0xA900)
    assert on_wire["error_comment"] == "Missing AccessionNumber"
    assert on_wire["offending_elements"] == ["(0008,0050)"]
    [sent] = site.of_kind("dimse.sent", node="pacs", status="0xA900")
    assert sent["error_comment"] == "Missing AccessionNumber"


# Connections and timeouts.


def test_connection_refused_retried(tmp_path: Path) -> None:
    """A closed port is refused; the router retries with back-off, then fails it as transient."""
    closed_port = free_port()
    topology = {
        "site": "refused",
        "nodes": {
            "ct": modality("CT1", ["CTImageStorage"]),
            "router": router("ROUTER", ["CTImageStorage"], ["archive"],
                             retry={"max_attempts": 3, "initial_backoff_s": 0.1,
                                    "multiplier": 2, "max_backoff_s": 1}),
            "archive": external("ARCHIVE", closed_port, ["CTImageStorage"]),
        },
        "links": [{"from": "ct", "to": "router"}, {"from": "router", "to": "archive"}],
    }
    site = rehearse(tmp_path, topology, sending("ct", ["CT/CT_small.dcm"]))

    [row] = site.rows(destination="archive")
    assert_failure(row, "connection-refused", "router->archive", "acceptor", permanent=False)
    upstream = f"127.0.0.1:{closed_port}"
    assert row["failure"]["detail"]["upstream"] == upstream
    assert row["failure"]["detail"]["error"] == "connection-refused"
    assert row["attempts"] == 4  # one into the router, three out of it
    retries = site.of_kind("forward.retry", destination="archive")
    assert [(e["attempt"], e["backoff_s"]) for e in retries] == [(1, 0.1), (2, 0.2)]
    assert {e["failure_kind"] for e in retries} == {"connection-refused"}
    [final] = site.of_kind("forward.failed", destination="archive")
    assert final["attempts"] == 3
    assert final["permanent"] is False
    refusals = site.of_kind("link.upstream_connect_failed", link="router->archive")
    assert len(refusals) == 3
    assert {(e["error"], e["upstream"]) for e in refusals} == {("connection-refused", upstream)}


@pytest.mark.dcmtk
def test_dimse_timeout(tmp_path: Path, dcmtk_storescp: Callable[..., DcmtkStoreSCP]) -> None:
    """A storescp that sleeps before its C-STORE-RSP outlasts the sender's 1 s DIMSE timeout."""
    archive = dcmtk_storescp(ae_title="ARCHIVE", extra_args=["--sleep-during", "3"])
    topology = {
        "site": "dimse-timeout",
        "nodes": {
            "ct": modality("CT1", ["CTImageStorage"], timeouts={"dimse_s": 1}),
            "archive": external("ARCHIVE", archive.port, ["CTImageStorage"]),
        },
        "links": [{"from": "ct", "to": "archive"}],
    }
    site = rehearse(tmp_path, topology, sending("ct", ["CT/CT_small.dcm"]))

    [row] = site.rows(destination="archive")
    assert_failure(row, "dimse-timeout", "ct->archive", "acceptor", permanent=False)
    detail = row["failure"]["detail"]
    assert detail["timeout_s"] == 1.0
    assert detail["timed_out_side"] == "requestor"
    assert detail["elapsed_s"] >= 1.0
    [request] = site.of_kind("dimse.request", node="ct")
    assoc_id = request["assoc_id"]
    [timeout] = site.of_kind("timeout", assoc_id=assoc_id)
    assert (timeout["timeout_kind"], timeout["timed_out_side"], timeout["timeout_s"]) == \
        ("dimse", "requestor", 1.0)
    [aborted] = site.of_kind("association.aborted", assoc_id=assoc_id)
    assert (aborted["pdu"], aborted["initiated_by"], aborted["source"]) == ("A-ABORT", "local", 0)
    assert site.of_kind("link.pdu", assoc_id=assoc_id, pdu="abort", direction="upstream")
    assert site.of_kind("link.pdu", assoc_id=assoc_id, command="C-STORE-RSP") == []


def test_network_timeout_of_paused_sender(tmp_path: Path) -> None:
    """A sender idle 2 s between C-STOREs loses its association to a 1 s network timeout."""
    topology = {
        "site": "network-timeout",
        "nodes": {
            "ct": modality("CT1", ["CTImageStorage", "EnhancedCTImageStorage"]),
            "pacs": pacs("PACS", ["CTImageStorage", "EnhancedCTImageStorage"],
                         timeouts={"network_s": 1}),
        },
        "links": [{"from": "ct", "to": "pacs"}],
    }
    scenario = sending("ct", ["CT/CT_small.dcm", "CT-enhanced/**"], group_by=2,
                       pause_between_s=2)
    site = rehearse(tmp_path, topology, scenario)

    [first] = site.of_kind("dimse.request", node="ct")
    [delivered] = site.rows(sop_instance_uid=first["sop_instance_uid"])
    assert delivered["state"] == "delivered"
    [row] = [r for r in site.ledger if r is not delivered]
    assert_failure(row, "network-timeout", "ct->pacs", "requestor", permanent=False)
    assert row["failure"]["detail"] == {"timeout_s": 1.0, "timed_out_side": "acceptor",
                                        "node": "pacs"}
    assoc_id = first["assoc_id"]
    [timeout] = site.of_kind("timeout", node="pacs")
    assert timeout["assoc_id"] == assoc_id
    assert (timeout["timeout_kind"], timeout["timed_out_side"], timeout["timeout_s"]) == \
        ("network", "acceptor", 1.0)
    [by_pacs] = site.of_kind("association.aborted", node="pacs")
    assert (by_pacs["pdu"], by_pacs["initiated_by"], by_pacs["source"]) == ("A-ABORT", "local", 0)
    [by_ct] = site.of_kind("association.aborted", node="ct")
    assert (by_ct["pdu"], by_ct["initiated_by"]) == ("A-ABORT", "peer")
    assert site.of_kind("link.pdu", assoc_id=assoc_id, pdu="abort", direction="downstream")


def test_network_timeout_of_real_scu(tmp_path: Path) -> None:
    """A PACS aborts a silent association from an SCU outside the simulator after 1 s."""
    listen_port = free_port()
    topology = {
        "site": "network-timeout",
        "nodes": {
            # The scanner is outside the simulator; its port is never dialled.
            "scanner": external("SCANNER", 11112, ["CTImageStorage"]),
            "pacs": pacs("PACS", ["CTImageStorage"], timeouts={"network_s": 1}),
        },
        "links": [{"from": "scanner", "to": "pacs", "listen_port": listen_port}],
    }
    scenario = {"name": "silent-sender", "corpus": "bundled", "timeout_s": 120,
                "timeline": [{"action": "hold", "at_s": 4}]}
    background = rehearse_in_background(tmp_path, topology, scenario)
    background.wait_for_event("link.started")
    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", listen_port, ae_title="PACS")
    try:
        assert assoc.is_established
        deadline = time.monotonic() + WAIT_LIMIT_S
        while assoc.is_established and time.monotonic() < deadline:
            time.sleep(0.05)
        assert assoc.is_aborted
    finally:
        assoc.abort()
        ae.shutdown()
    site = background.join()

    [accepted] = site.of_kind("association.accepted", node="pacs")
    assoc_id = accepted["assoc_id"]
    assert accepted["link"] == "scanner->pacs"
    [aborted] = site.of_kind("association.aborted", node="pacs")
    assert aborted["assoc_id"] == assoc_id
    assert (aborted["pdu"], aborted["initiated_by"], aborted["source"]) == ("A-ABORT", "local", 0)
    [timeout] = site.of_kind("timeout", node="pacs")
    assert timeout["assoc_id"] == assoc_id
    assert (timeout["timeout_kind"], timeout["timed_out_side"], timeout["timeout_s"]) == \
        ("network", "acceptor", 1.0)
    assert site.of_kind("link.pdu", assoc_id=assoc_id, pdu="abort", direction="downstream")
    [closed] = site.of_kind("link.connection_closed", assoc_id=assoc_id)
    assert closed["closed_by"] == "server"
    # The classification waits for a simulated requestor; no instance was sent, so no row.
    failure = site.rehearsal.registry.peer_failure(assoc_id)
    assert failure is not None
    record = failure.as_record()
    assert (record["failure_kind"], record["hop"], record["side"], record["permanent"]) == \
        ("network-timeout", "scanner->pacs", "requestor", False)
    assert record["detail"] == {"timeout_s": 1.0, "timed_out_side": "acceptor", "node": "pacs"}
    assert site.ledger == []


class SilentPeer:
    """A TCP server on loopback that accepts connections, reads, and never sends a byte."""

    def __init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._server.getsockname()[1]
        self.received = bytearray()
        self._connections: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, name="silent-peer", daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._server.close()
        for connection in self._connections:
            connection.close()
        self._thread.join(timeout=WAIT_LIMIT_S)

    def _serve(self) -> None:
        try:
            connection, _ = self._server.accept()
        except OSError:
            return
        self._connections.append(connection)
        while chunk := connection.recv(65536):
            self.received += chunk


def test_acse_timeout(tmp_path: Path) -> None:
    """A peer that never responds to the A-ASSOCIATE-RQ outlasts the sender's 1 s ACSE timeout."""
    with SilentPeer() as peer:
        topology = {
            "site": "acse-timeout",
            "nodes": {
                "ct": modality("CT1", ["CTImageStorage"], timeouts={"acse_s": 1}),
                "silent": external("SILENT", peer.port, ["CTImageStorage"]),
            },
            "links": [{"from": "ct", "to": "silent"}],
        }
        site = rehearse(tmp_path, topology, sending("ct", ["CT/CT_small.dcm"]))

    [row] = site.rows(destination="silent")
    assert_failure(row, "acse-timeout", "ct->silent", "acceptor", permanent=False)
    assert row["failure"]["detail"] == {"timeout_s": 1.0, "timed_out_side": "requestor"}
    [requested] = site.of_kind("association.requested", node="ct")
    assoc_id = requested["assoc_id"]
    [timeout] = site.of_kind("timeout", assoc_id=assoc_id)
    assert (timeout["timeout_kind"], timeout["timed_out_side"], timeout["timeout_s"]) == \
        ("acse", "requestor", 1.0)
    [aborted] = site.of_kind("association.aborted", assoc_id=assoc_id)
    assert (aborted["pdu"], aborted["initiated_by"]) == ("A-ABORT", "local")
    on_wire = [(e["direction"], e["pdu"]) for e in site.of_kind("link.pdu", assoc_id=assoc_id)]
    assert on_wire == [("upstream", "associate_rq"), ("upstream", "abort")]
    assert peer.received[0] == 0x01  # the A-ASSOCIATE-RQ reached the peer
