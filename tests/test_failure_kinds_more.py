"""The failure kinds that tests/test_failure_kinds.py leaves out, each from a real rehearsal.

Every test builds a small site on loopback, runs it, and checks the failure
record in the ledger field by field (failure_kind, hop, side, permanent,
detail) against the events that the nodes and link proxies recorded.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import pytest
from peers import DcmtkStoreSCP, free_port
from pydicom import dcmread
from pydicom.uid import EnhancedCTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.dimse import DIMSEServiceProvider
from rehearsal_support import Site, prepare, rehearse

from simulator.corpus import bundled_corpus
from simulator.nodes.association import association_socket, set_tcp_nodelay
from simulator.routing import write_character_set_term

WAIT_LIMIT_S = 60.0
"""Guard against a hung run; no test checks how long anything takes."""

CT_SMALL = "CT/CT_small.dcm"
ENHANCED_CT = "CT-enhanced/eCT_Supplemental.dcm"
CT_CLASSES = ["CTImageStorage", "EnhancedCTImageStorage"]
OVERSIZE_PDU_BYTES = 16384
RECEIVER_MAX_PDU = 4096


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


def external(ae_title: str, port: int, sop_classes: list[Any]) -> dict[str, Any]:
    return {"kind": "external", "ae_title": ae_title, "port": port, "sop_classes": sop_classes}


def fault(name: str, fault_type: str, direction: str = "upstream", **attributes: Any) -> dict[str, Any]:
    return {"name": name, "type": fault_type, "direction": direction, "attributes": attributes}


def direct(sender: dict[str, Any], receiver: dict[str, Any], **link: Any) -> dict[str, Any]:
    """Return a site where modality ``ct`` sends to ``pacs`` over one link."""
    return {"site": "failure-kind", "nodes": {"ct": sender, "pacs": receiver},
            "links": [{"from": "ct", "to": "pacs", **link}]}


def sending(globs: list[str], corpus: str = "bundled", **fields: Any) -> dict[str, Any]:
    sender = {"modality": "ct", "select": {"glob": globs}, "group_by": "instance", **fields}
    return {"name": "failure-kind", "corpus": corpus, "timeout_s": 120, "senders": [sender]}


@dataclass
class Background:
    """A rehearsal running in a thread, for tests that act on the site while it runs."""

    site: Site
    thread: threading.Thread
    errors: list[BaseException]

    def wait_for(self, kind: str, count: int = 1) -> list[dict[str, Any]]:
        path = self.site.run_dir / "events.jsonl"
        deadline = time.monotonic() + WAIT_LIMIT_S
        while True:
            found = []
            if path.exists():
                # The last line may be incomplete while it is being written.
                lines = path.read_text(encoding="utf-8").split("\n")[:-1]
                found = [e for e in map(json.loads, lines) if e["kind"] == kind]
            if len(found) >= count:
                return found
            assert not self.errors, self.errors
            assert time.monotonic() < deadline, f"fewer than {count} {kind} events in {WAIT_LIMIT_S} s"
            time.sleep(0.05)

    def join(self) -> Site:
        self.thread.join(timeout=WAIT_LIMIT_S * 2)
        assert not self.thread.is_alive(), "the rehearsal did not finish"
        assert not self.errors, self.errors
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


def assert_failure(row: dict[str, Any], kind: str, hop: str | None, side: str,
                   permanent: bool) -> dict[str, Any]:
    """Check the common fields of a failed row's failure record and return its detail."""
    assert row["state"] == "failed", row
    failure = row["failure"]
    assert failure["failure_kind"] == kind, failure
    assert failure["hop"] == hop, failure
    assert failure["side"] == side, failure
    assert failure["permanent"] is permanent, failure
    assert failure["reason"], failure
    detail: dict[str, Any] = failure["detail"]
    return detail


# The acceptor and the TCP connection.


@pytest.mark.dcmtk
def test_association_aborted_by_acceptor(tmp_path: Path,
                                         dcmtk_storescp: Callable[..., DcmtkStoreSCP]) -> None:
    """storescp --abort-during sends A-ABORT 0/0 in the middle of a C-STORE; the abort is transient."""
    archive = dcmtk_storescp(ae_title="ARCHIVE", extra_args=["--abort-during"])
    topology = direct(modality("CT1", CT_CLASSES), external("ARCHIVE", archive.port, CT_CLASSES))
    site = rehearse(tmp_path, topology, sending([CT_SMALL]))

    [row] = site.ledger
    detail = assert_failure(row, "association-aborted", "ct->pacs", "acceptor", permanent=False)
    assert detail == {"source": 0, "source_name": "service-user",
                      "reason": 0, "reason_name": "not-significant"}
    assert row["status"] is None
    [request] = site.of_kind("dimse.request", node="ct")
    [by_peer] = site.of_kind("association.aborted", assoc_id=request["assoc_id"], initiated_by="peer")
    assert (by_peer["pdu"], by_peer["source"], by_peer["reason"]) == ("A-ABORT", 0, 0)
    [on_wire] = site.of_kind("link.pdu", pdu="abort", direction="downstream")
    assert (on_wire["source"], on_wire["reason"]) == (0, 0)
    assert site.of_kind("link.pdu", command="C-STORE-RSP") == []
    assert archive.received_files() == []


class FullBacklogListener:
    """A listening socket whose accept queue is full, so the kernel drops further SYNs."""

    QUEUE_FILLERS = 3

    def __init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0), backlog=0)
        self.port: int = self._server.getsockname()[1]
        self._fillers: list[socket.socket] = []

    def __enter__(self) -> Self:
        # Linux queues backlog + 1 connections; nothing here ever calls accept().
        for _ in range(self.QUEUE_FILLERS):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", self.port))
            self._fillers.append(filler)
        return self

    def __exit__(self, *_exc: object) -> None:
        for filler in self._fillers:
            filler.close()
        self._server.close()


def test_connection_timeout(tmp_path: Path) -> None:
    """The link proxy's connect to a host that drops SYNs times out after the sender's connection_s."""
    with FullBacklogListener() as listener:
        topology = direct(modality("CT1", CT_CLASSES, timeouts={"connection_s": 1}),
                          external("ARCHIVE", listener.port, CT_CLASSES))
        site = rehearse(tmp_path, topology, sending([CT_SMALL]))

    [row] = site.ledger
    upstream = f"127.0.0.1:{listener.port}"
    detail = assert_failure(row, "connection-timeout", "ct->pacs", "acceptor", permanent=False)
    assert detail == {"upstream": upstream, "error": "connection-timeout",
                      "detail": "no connection after 1.0 s"}
    [connect] = site.of_kind("link.upstream_connect_failed")
    assert (connect["error"], connect["upstream"]) == ("connection-timeout", upstream)
    [timeout] = site.of_kind("timeout", node="ct")
    assert (timeout["timeout_kind"], timeout["timed_out_side"], timeout["timeout_s"]) == \
        ("connection", "requestor", 1.0)
    assert site.of_kind("link.pdu", direction="downstream") == []


def test_connection_closed_by_firewall(tmp_path: Path) -> None:
    """A firewall rule that denies the calling AE closes the connection; detail.cause is firewall-denied."""
    firewall = {"rules": [{"action": "deny", "calling_ae": "CT1", "name": "no-ct1"}]}
    topology = direct(modality("CT1", CT_CLASSES), pacs("PACS", CT_CLASSES), firewall=firewall)
    site = rehearse(tmp_path, topology, sending([CT_SMALL]))

    [row] = site.ledger
    detail = assert_failure(row, "connection-closed", "ct->pacs", "link", permanent=False)
    assert detail["cause"] == "firewall-denied"
    [denied] = site.of_kind("link.firewall_denied")
    assert denied["rule"] == "no-ct1"
    assert site.of_kind("association.requested", node="pacs") == []
    assert site.of_kind("link.connection_opened") == []


def test_connection_reset(tmp_path: Path) -> None:
    """A reset_peer fault on the link resets the connection; the record names the fault and is transient."""
    resets = fault("wan-reset", "reset_peer", timeout=0)
    topology = direct(modality("CT1", CT_CLASSES), pacs("PACS", CT_CLASSES), faults=[resets])
    site = rehearse(tmp_path, topology, sending([CT_SMALL]))

    [row] = site.ledger
    detail = assert_failure(row, "connection-reset", "ct->pacs", "link", permanent=False)
    # NOTE: docs/failures.md puts the fault's name in detail, but the proxy writes it in the reason only.
    assert detail == {"direction": "upstream", "fault": "wan-reset", "fault_type": "reset_peer"}
    assert "wan-reset" in row["failure"]["reason"]
    [closed] = site.of_kind("link.connection_closed")
    assert (closed["closed_by"], closed["close_kind"]) == ("proxy", "reset")
    assert site.of_kind("association.requested", node="pacs") == []


def test_connection_blackholed(tmp_path: Path) -> None:
    """A firewall drops a connection idle for 1 s from its state, so the next C-STORE waits for the DIMSE timeout."""
    topology = direct(modality("CT1", CT_CLASSES, timeouts={"dimse_s": 1}),
                      pacs("PACS", CT_CLASSES), firewall={"idle_timeout_s": 1})
    site = rehearse(tmp_path, topology,
                    sending([CT_SMALL, ENHANCED_CT], group_by=2, pause_between_s=2))

    # The corpus orders CT-enhanced/ before CT/, so the enhanced CT goes first.
    [first] = site.rows(source_file=ENHANCED_CT)
    assert first["state"] == "delivered"
    [row] = site.rows(source_file=CT_SMALL)
    detail = assert_failure(row, "connection-blackholed", "ct->pacs", "link", permanent=False)
    assert detail == {}
    [blackholed] = site.of_kind("link.firewall_blackholed")
    assert blackholed["trigger"] == "idle"
    [no_response] = site.of_kind("dimse.no_response", node="ct")
    assert no_response["sop_instance_uid"] == row["sop_instance_uid"]
    assert site.of_kind("dimse.received", node="pacs", sop_instance_uid=row["sop_instance_uid"]) == []


def test_tls_mismatch_both_ways(tmp_path: Path) -> None:
    """TLS into a plain port blames the requestor, plain into a TLS port the acceptor; both permanent."""
    topology = {
        "site": "tls-mismatch",
        "nodes": {
            "tls-ct": modality("CT1", CT_CLASSES, tls=True, timeouts={"acse_s": 3}),
            "plain-ct": modality("CT2", CT_CLASSES, timeouts={"acse_s": 3}),
            "plain-pacs": pacs("PLAIN", CT_CLASSES),
            "tls-pacs": pacs("SECURE", CT_CLASSES, tls=True),
        },
        "links": [{"from": "tls-ct", "to": "plain-pacs"}, {"from": "plain-ct", "to": "tls-pacs"}],
    }
    scenario = {"name": "tls-mismatch", "corpus": "bundled", "timeout_s": 120, "senders": [
        {"modality": "tls-ct", "select": {"glob": [CT_SMALL]}},
        {"modality": "plain-ct", "copy": 1, "select": {"glob": [CT_SMALL]}},
    ]}
    site = rehearse(tmp_path, topology, scenario)

    [forward] = site.rows(source="tls-ct")
    detail = assert_failure(forward, "tls-mismatch", "tls-ct->plain-pacs", "requestor", permanent=True)
    [mismatch] = site.of_kind("link.tls_mismatch", link="tls-ct->plain-pacs")
    assert (mismatch["direction"], mismatch["tls_record"]) == ("upstream", "handshake")
    assert detail == {"claimed_length": mismatch["claimed_length"], "direction": "upstream"}
    assert site.of_kind("link.pdu_oversize") == []

    [reverse] = site.rows(source="plain-ct")
    detail = assert_failure(reverse, "tls-mismatch", "plain-ct->tls-pacs", "acceptor", permanent=True)
    assert (detail["requestor_tls"], detail["acceptor_tls"]) == (False, True)
    [request] = site.of_kind("link.pdu", link="plain-ct->tls-pacs", pdu="associate_rq")
    assert request["called_ae"] == "SECURE"
    assert site.of_kind("link.pdu", link="plain-ct->tls-pacs", direction="downstream") == []


# PDU lengths.


def test_pdu_over_limit_at_middle_box(tmp_path: Path) -> None:
    """A middle box limited to 8192 bytes resets on the first longer PDU; the link is blamed, permanently."""
    box = fault("middle-box", "middlebox_limit", max_pdu_length=8192)
    topology = direct(modality("CT1", CT_CLASSES), pacs("PACS", CT_CLASSES, max_pdu=65536),
                      faults=[box])
    site = rehearse(tmp_path, topology, sending([ENHANCED_CT]))

    [row] = site.ledger
    detail = assert_failure(row, "pdu-over-limit", "ct->pacs", "link", permanent=True)
    assert detail == {"direction": "upstream", "fault": "middle-box", "fault_type": "middlebox_limit",
                      "max_pdu_length": 8192, "action": "reset", "length": 65536}
    [over] = site.of_kind("link.pdu_over_middlebox_limit")
    assert (over["pdu"], over["length"], over["limit"]) == ("p_data_tf", 65536, 8192)
    [accepted] = site.of_kind("association.accepted", node="ct")
    assert accepted["max_pdu_acceptor"] == 65536
    assert site.of_kind("instance.stored") == []


class OversizeDIMSE(DIMSEServiceProvider):
    """Fragments DIMSE messages into 16384-byte PDUs whatever the peer advertised."""

    @property
    def maximum_pdu_size(self) -> int:
        return OVERSIZE_PDU_BYTES


def send_ignoring_maximum(port: int, called_ae: str, path: Path) -> int | None:
    """Send one C-STORE with PDUs longer than the acceptor advertised; return the status, if any."""
    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(EnhancedCTImageStorage, ExplicitVRLittleEndian)
    handlers: list[Any] = [
        (evt.EVT_CONN_OPEN, lambda event: set_tcp_nodelay(association_socket(event.assoc))),
    ]
    assoc = ae.associate("127.0.0.1", port, ae_title=called_ae, evt_handlers=handlers)
    try:
        assert assoc.is_established
        assert assoc.acceptor.maximum_length == RECEIVER_MAX_PDU
        # A scripted peer: pynetdicom sizes P-DATA-TF PDUs from this property.
        assoc.dimse.__class__ = OversizeDIMSE
        response = assoc.send_c_store(path)
        status = getattr(response, "Status", None)
        if assoc.is_established:
            assoc.release()
        return None if status is None else int(status)
    finally:
        assoc.abort()
        ae.shutdown()


@pytest.mark.dcmtk
def test_pdu_over_limit_of_sender(tmp_path: Path, corpus_root: Path,
                                  dcmtk_storescp: Callable[..., DcmtkStoreSCP]) -> None:
    """A sender that ignores the receiver's 4096 is blamed; storescp aborts it, pynetdicom stores anyway."""
    archive = dcmtk_storescp(ae_title="ARCHIVE", extra_args=["-pdu", str(RECEIVER_MAX_PDU)])
    ports = {"scanner->pacs": free_port(), "scanner->archive": free_port()}
    topology = {
        "site": "oversize-sender",
        "nodes": {
            # The scanner is outside the simulator; its port is never dialled.
            "scanner": external("SCANNER", 11112, CT_CLASSES),
            "pacs": pacs("PACS", CT_CLASSES, max_pdu=RECEIVER_MAX_PDU),
            "archive": external("ARCHIVE", archive.port, CT_CLASSES),
        },
        "links": [{"from": "scanner", "to": "pacs", "listen_port": ports["scanner->pacs"]},
                  {"from": "scanner", "to": "archive", "listen_port": ports["scanner->archive"]}],
    }
    scenario = {"name": "oversize-sender", "corpus": "bundled", "timeout_s": 120,
                "timeline": [{"action": "hold", "after": {"association_on": "scanner->archive"}}]}
    background = rehearse_in_background(tmp_path, topology, scenario)
    background.wait_for("link.started", count=2)
    to_pacs = send_ignoring_maximum(ports["scanner->pacs"], "PACS", corpus_root / ENHANCED_CT)
    to_archive = send_ignoring_maximum(ports["scanner->archive"], "ARCHIVE", corpus_root / ENHANCED_CT)
    site = background.join()

    for link in ports:
        [noted] = site.of_kind("link.failure_noted", link=link)
        assert (noted["failure_kind"], noted["hop"], noted["side"], noted["permanent"]) == \
            ("pdu-over-limit", link, "requestor", True)
        assert noted["detail"] == {"length": OVERSIZE_PDU_BYTES, "limit": RECEIVER_MAX_PDU,
                                   "direction": "upstream"}
        oversize = site.of_kind("link.pdu_oversize", link=link)
        assert max(e["length"] for e in oversize) == OVERSIZE_PDU_BYTES
        for event in oversize:
            assert RECEIVER_MAX_PDU < event["length"] <= OVERSIZE_PDU_BYTES
            assert (event["limit"], event["limit_advertised_by"]) == (RECEIVER_MAX_PDU, "acceptor")

    # pynetdicom does not check the length of what it receives.
    assert to_pacs == 0x0000
    assert site.of_kind("instance.stored", node="pacs")
    # DCMTK checks it and drops the association, with an A-ABORT that may be lost in the reset.
    assert to_archive is None
    assert "Illegal PDU Length 16384.  Max expected 4096" in archive.log_text()
    assert site.of_kind("link.pdu", link="scanner->archive", command="C-STORE-RSP") == []
    assert archive.received_files() == []
    # The sender is outside the simulator, so the ledger has no row to classify.
    assert site.ledger == []


# Statuses, storage and routing.


def test_false_success(tmp_path: Path) -> None:
    """A box that returns 0x0000 for a C-STORE and passes nothing on gives a success without a stored object."""
    ack = fault("ack-only", "answer_status", status=0x0000)
    topology = direct(modality("CT1", CT_CLASSES), pacs("PACS", CT_CLASSES), faults=[ack])
    site = rehearse(tmp_path, topology, sending([CT_SMALL]))

    [row] = site.ledger
    detail = assert_failure(row, "false-success", "ct->pacs", "acceptor", permanent=True)
    assert detail == {}
    assert row["status"] == "0x0000"
    assert row["delivered_path"] is None
    [response] = site.of_kind("dimse.response", node="ct")
    assert (response["status"], response["status_category"]) == ("0x0000", "success")
    [answered] = site.of_kind("link.fault_triggered", fault="ack-only")
    assert (answered["action"], answered["status"], answered["response_sent"]) == ("answered", 0, True)
    assert site.of_kind("dimse.received", node="pacs") == []
    assert list((site.run_dir / "nodes" / "pacs" / "store").iterdir()) == []


def test_integrity_violation_of_changed_store(tmp_path: Path) -> None:
    """An object that the PACS changes after storing it, as an ingest coercion does, is not intact."""
    tester_port = free_port()
    topology = direct(modality("CT1", CT_CLASSES), pacs("PACS", CT_CLASSES))
    # The test opens a connection on this link once it has changed the stored file.
    topology["nodes"]["tester"] = external("TESTER", 11112, CT_CLASSES)
    topology["links"].append({"from": "tester", "to": "pacs", "listen_port": tester_port})
    scenario = sending([CT_SMALL])
    scenario["timeline"] = [{"action": "start_sending", "at_s": 0},
                            {"action": "hold", "after": {"association_on": "tester->pacs"}}]
    background = rehearse_in_background(tmp_path, topology, scenario)
    [stored] = background.wait_for("instance.stored")
    background.wait_for("dimse.response")
    dataset = dcmread(stored["path"])
    dataset.InstitutionName = "Changed On Ingest"
    dataset.save_as(stored["path"])
    with socket.create_connection(("127.0.0.1", tester_port), timeout=WAIT_LIMIT_S):
        pass
    site = background.join()

    [row] = site.ledger
    # A success status and the object in storage: delivered, but not as it was sent.
    assert row["state"] == "delivered"
    assert row["status"] == "0x0000"
    assert row["intact"] is False
    failure = row["failure"]
    assert (failure["failure_kind"], failure["hop"], failure["side"], failure["permanent"]) == \
        ("integrity-violation", "ct->pacs", "router", True)
    assert failure["detail"]["changed"] == ["(0008,0080) InstitutionName"]
    assert failure["detail"]["unexplained"] == ["(0008,0080) InstitutionName"]
    assert failure["detail"]["pixel_data"] == "identical"
    assert row["integrity"] == failure["detail"]


def test_coercion_of_upstream_router_explained(tmp_path: Path) -> None:
    """A coercion declared by the first of two routers in a row is explained at the PACS."""
    stamp = {"name": "stamp", "forward": ["core"],
             "coerce": {"set": {"InstitutionName": "Example Hospital"}}}
    topology = {
        "site": "router-chain",
        "nodes": {
            "ct": modality("CT1", CT_CLASSES),
            "edge": {"kind": "router", "ae_title": "EDGE", "sop_classes": CT_CLASSES, "rules": [stamp]},
            "core": {"kind": "router", "ae_title": "CORE", "sop_classes": CT_CLASSES,
                     "rules": [{"name": "all", "forward": ["pacs"]}]},
            "pacs": pacs("PACS", CT_CLASSES),
        },
        "links": [{"from": "ct", "to": "edge"}, {"from": "edge", "to": "core"},
                  {"from": "core", "to": "pacs"}],
    }
    site = rehearse(tmp_path, topology, sending([CT_SMALL]))

    [row] = site.ledger
    assert row["hops"] == ["ct->edge", "edge->core", "core->pacs"]
    assert row["state"] == "delivered"
    assert site.of_kind("router.coerced", node="edge")
    assert row["integrity"]["changed"] == ["(0008,0080) InstitutionName"]
    assert row["intact"] is True
    assert row["failure"] is None


def test_no_matching_rule(tmp_path: Path) -> None:
    """A CT that no rule of the router matches fails permanently at the router, with no hop."""
    classes = ["CTImageStorage", "MRImageStorage"]
    topology = {
        "site": "no-matching-rule",
        "nodes": {
            "ct": modality("CT1", classes),
            "router": {"kind": "router", "ae_title": "ROUTER", "sop_classes": classes,
                       "rules": [{"name": "mr-only", "match": {"Modality": "MR"}, "forward": ["pacs"]}]},
            "pacs": pacs("PACS", classes),
        },
        "links": [{"from": "ct", "to": "router"}, {"from": "router", "to": "pacs"}],
    }
    site = rehearse(tmp_path, topology, sending([CT_SMALL, "MR/MR_small.dcm"]))

    [row] = site.rows(source_file=CT_SMALL)
    assert row["destination"] == "router"
    detail = assert_failure(row, "no-matching-rule", None, "router", permanent=True)
    assert detail == {}
    assert row["failure"]["reason"] == "no rule of rule set rules matched"
    # NOTE: the ledger records no hop for an unmatched instance, not even ct->router.
    assert row["hops"] == []
    [unmatched] = site.of_kind("routing.unmatched")
    assert unmatched["sop_instance_uid"] == row["sop_instance_uid"]
    assert unmatched["calling_ae"] == "CT1"
    assert site.of_kind("dimse.request", node="router", sop_instance_uid=row["sop_instance_uid"]) == []
    [mr] = site.rows(source_file="MR/MR_small.dcm")
    assert mr["state"] == "delivered"
    assert mr["destination"] == "pacs"


def test_never_attempted(tmp_path: Path) -> None:
    """A run that ends before a retry is due, or before a sender starts, leaves never-attempted rows."""
    topology = {
        "site": "never-attempted",
        "nodes": {
            "ct": modality("CT1", CT_CLASSES),
            "router": {"kind": "router", "ae_title": "ROUTER", "sop_classes": CT_CLASSES,
                       "retry": {"max_attempts": 3, "initial_backoff_s": 600, "max_backoff_s": 600},
                       "rules": [{"name": "all", "forward": ["pacs"]}]},
            "pacs": pacs("PACS", CT_CLASSES),
        },
        "links": [{"from": "ct", "to": "router"},
                  {"from": "router", "to": "pacs", "faults": [fault("pacs-down", "down")]}],
    }
    scenario = {"name": "never-attempted", "corpus": "bundled", "timeout_s": 2, "senders": [
        {"name": "first", "modality": "ct", "select": {"glob": [CT_SMALL]}},
        {"name": "later", "modality": "ct", "copy": 1, "select": {"glob": [CT_SMALL]}},
    ], "timeline": [{"action": "start_sending", "at_s": 0, "senders": ["first"]},
                    {"action": "start_sending", "at_s": 600, "senders": ["later"]}]}
    site = rehearse(tmp_path, topology, scenario)

    [timed_out] = site.of_kind("run.timeout")
    assert timed_out["timeout_s"] == 2.0
    [finished] = site.of_kind("run.finished")
    assert finished["outcome"] == "timed-out"

    # The router's first attempt was refused, and its retry was not due before the end.
    [retry] = site.of_kind("forward.retry")
    assert (retry["failure_kind"], retry["backoff_s"]) == ("connection-refused", 600)
    [waiting] = site.rows(sop_instance_uid=retry["sop_instance_uid"])
    detail = assert_failure(waiting, "never-attempted", None, "run", permanent=False)
    assert detail == {}
    assert waiting["hops"] == ["ct->router", "router->pacs"]
    assert waiting["attempts"] == 2

    # The later sender never started: no attempt, so nothing to classify.
    [unsent] = [r for r in site.ledger if r is not waiting]
    assert unsent["state"] == "never-attempted"
    assert unsent["attempts"] == 0
    assert unsent["hops"] == []
    assert unsent["failure"] is None


def test_dimse_warning(tmp_path: Path, corpus_root: Path) -> None:
    """A PACS that only warns about an unknown character set term returns 0xB007 and stores the object."""
    corpus = tmp_path / "corpus"
    (corpus / "charset").mkdir(parents=True)
    source = corpus / "charset" / "chrFren.dcm"
    source.write_bytes((corpus_root / "charset" / "chrFren.dcm").read_bytes())
    # A space where the defined term ISO_IR 100 has an underscore.
    write_character_set_term(source, "ISO IR 100")
    classes = ["SecondaryCaptureImageStorage"]
    topology = direct(modality("CR1", classes), pacs("PACS", classes, character_set_check="warning"))
    with pytest.warns(UserWarning, match="Incorrect value for Specific Character Set"):
        site = rehearse(tmp_path, topology, sending(["charset/**"], corpus=str(corpus)))

    [row] = site.ledger
    assert row["state"] == "delivered"
    assert row["status"] == "0xB007"
    failure = row["failure"]
    assert (failure["failure_kind"], failure["hop"], failure["side"], failure["permanent"]) == \
        ("dimse-warning", "ct->pacs", "acceptor", False)
    assert failure["detail"] == {"status": "0xB007",
                                 "error_comment": "Unknown Specific Character Set 'ISO IR 100'",
                                 "offending_element": ["(0008,0005)"]}
    [on_wire] = site.of_kind("link.pdu", command="C-STORE-RSP")
    assert (on_wire["status"], on_wire["status_category"]) == (0xB007, "warning")
    assert on_wire["offending_elements"] == ["(0008,0005)"]
    assert row["intact"] is True
    assert row["integrity"]["character_set"] == {"source": ["ISO IR 100"], "stored": ["ISO IR 100"]}
