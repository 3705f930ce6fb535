"""rehearse probe against real peers with restricted configurations, and its drift comparison."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from peers import DcmtkStoreSCP, Orthanc
from pydicom import uid

from simulator.capability import ProbeError
from simulator.capability.drift import MISSING, UNDECLARED, compare_declaration
from simulator.capability.probe import (
    MAX_CONTEXTS,
    PROBE_TRANSFER_SYNTAXES,
    ProbeOptions,
    plan_batches,
    probe_system,
)
from simulator.capability.probe_yaml import load_probe_file
from simulator.conformance.names import STORAGE_SOP_CLASS_UIDS, resolve_sop_class
from simulator.topology import load_topology

ROOT = Path(__file__).resolve().parent.parent
CT = resolve_sop_class("CTImageStorage")
MR = resolve_sop_class("MRImageStorage")
US = resolve_sop_class("UltrasoundImageStorage")
VERIFICATION = "1.2.840.10008.1.1"
PRIVATE_CLASS = "1.2.826.0.1.3680043.9.9999.1"

STORESCP_PROFILE = """\
[[TransferSyntaxes]]
[LittleEndian]
TransferSyntax1 = LocalEndianExplicit
TransferSyntax2 = LittleEndianImplicit
[J2KOrImplicit]
TransferSyntax1 = JPEG2000LosslessOnly
TransferSyntax2 = LittleEndianImplicit

[[PresentationContexts]]
[Restricted]
PresentationContext1 = VerificationSOPClass\\LittleEndian
PresentationContext2 = CTImageStorage\\LittleEndian
PresentationContext3 = MRImageStorage\\J2KOrImplicit

[[Profiles]]
[Restricted]
PresentationContexts = Restricted
"""


def restricted_storescp(start: Callable[..., DcmtkStoreSCP], tmp_path: Path) -> DcmtkStoreSCP:
    """Start storescp with a profile that accepts CT uncompressed and MR as J2K lossless or implicit."""
    config = tmp_path / "storescp-restricted.cfg"
    config.write_text(STORESCP_PROFILE, encoding="ascii")

    return start(ae_title="RESTRICTED", extra_args=["-xf", str(config), "Restricted",
                                                    "-pdu", "32768"])


def rehearse_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "simulator", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=120, check=False)


@pytest.mark.dcmtk
def test_storescp_profile_found_exactly(dcmtk_storescp: Callable[..., DcmtkStoreSCP],
                                        tmp_path: Path) -> None:
    """The probe finds exactly the pairs a storescp association profile allows, and its PDU size."""
    scp = restricted_storescp(dcmtk_storescp, tmp_path)
    options = ProbeOptions("127.0.0.1", scp.port, "RESTRICTED", pause_s=0,
                           sop_classes=(VERIFICATION, CT, MR, US))

    result = probe_system(options)

    assert {k: set(v) for k, v in result.accepted.items()} == {
        VERIFICATION: {uid.ExplicitVRLittleEndian, uid.ImplicitVRLittleEndian},
        CT: {uid.ExplicitVRLittleEndian, uid.ImplicitVRLittleEndian},
        MR: {uid.JPEG2000Lossless, uid.ImplicitVRLittleEndian},
    }
    assert result.scu_role == {}
    assert result.max_pdu == 32768
    assert result.checks_called_ae is False
    assert result.checks_calling_ae is False
    assert str(result.implementation_class_uid).startswith("1.2.276.0.7230010.3")
    assert result.associations == 4


@pytest.mark.dcmtk
def test_probe_file_and_drift(dcmtk_storescp: Callable[..., DcmtkStoreSCP],
                              tmp_path: Path) -> None:
    """The probe's YAML loads as an external node, and check --against lists the drift."""
    scp = restricted_storescp(dcmtk_storescp, tmp_path)
    probe_path = tmp_path / "probed.yaml"
    probed = rehearse_cli("probe", "127.0.0.1", str(scp.port), "--called-ae", "RESTRICTED",
                          "--pause-s", "0", "--out", str(probe_path),
                          "--sop-classes", "CTImageStorage,MRImageStorage,UltrasoundImageStorage")
    assert probed.returncode == 0, probed.stderr
    probe_file = load_probe_file(probe_path)
    assert probe_file.node.kind == "external"
    assert probe_file.node.port == scp.port
    assert probe_file.node.max_pdu == 32768
    assert probe_file.node.transfer_syntaxes_for(MR) == (uid.ImplicitVRLittleEndian,
                                                         uid.JPEG2000Lossless)
    assert probe_file.probed_sop_classes == {CT, MR, US}
    topology_path = tmp_path / "topology.yaml"
    topology_path.write_text(json.dumps({"site": "drift", "nodes": {
        "ct": {"kind": "modality", "ae_title": "CT1", "sop_classes": ["CTImageStorage"]},
        "pacs": {"kind": "external", "ae_title": "RESTRICTED", "port": scp.port,
                 "max_pdu": 32768, "check_called_ae": False,
                 "sop_classes": [{"sop_class": "CTImageStorage", "transfer_syntaxes": [
                     "ExplicitVRLittleEndian", "JPEG2000Lossless"]}, "UltrasoundImageStorage",
                     "SecondaryCaptureImageStorage"]}},
        "links": [{"from": "ct", "to": "pacs"}]}), encoding="utf-8")

    drifts = compare_declaration(load_topology(topology_path).nodes["pacs"], probe_file)
    checked = rehearse_cli("check", str(topology_path), "--against", str(probe_path),
                           "--node", "pacs")

    messages = {(d.kind, d.message) for d in drifts}
    assert (MISSING, ("CTImageStorage with JPEG2000Lossless is declared, but the system "
                      "rejects it")) in messages
    assert (MISSING, ("UltrasoundImageStorage is declared with the SCP role, but the system "
                      "rejects every transfer syntax for it")) in messages
    assert (UNDECLARED, ("the system accepts CTImageStorage with ImplicitVRLittleEndian, "
                         "which is not declared")) in messages
    assert (UNDECLARED, ("the system accepts MRImageStorage, which is not declared with the "
                         "SCP role")) in messages
    not_probed = [d.message for d in drifts if d.kind == "not-probed"]
    assert len(not_probed) == 1
    assert "SecondaryCaptureImageStorage" in not_probed[0]
    assert not any(d.aspect in ("max_pdu", "check_called_ae") for d in drifts)
    assert checked.returncode == 1, checked.stderr
    assert "JPEG2000Lossless is declared, but the system rejects it" in checked.stdout


@pytest.mark.orthanc
def test_strict_orthanc_found_exactly(orthanc: Callable[..., Orthanc]) -> None:
    """A strict Orthanc: only its accepted syntaxes, 16384-byte PDUs, both AE title checks."""
    peer = orthanc(ae_title="STRICT_PACS", config_overrides={
        "DicomCheckCalledAet": True,
        "AcceptedTransferSyntaxes": [uid.ImplicitVRLittleEndian, uid.ExplicitVRLittleEndian],
        "MaximumPduLength": 16384,
        "UnknownSopClassAccepted": False,
        "DicomAlwaysAllowEcho": False,
        "DicomAlwaysAllowStore": False,
        "DicomModalities": {"probe": ["REHEARSE_PROBE", "127.0.0.1", 104]},
    })
    options = ProbeOptions("127.0.0.1", peer.dicom_port, "STRICT_PACS", pause_s=0,
                           sop_classes=(CT, MR, PRIVATE_CLASS))

    result = probe_system(options)

    assert {k: set(v) for k, v in result.accepted.items()} == {
        CT: {uid.ImplicitVRLittleEndian, uid.ExplicitVRLittleEndian},
        MR: {uid.ImplicitVRLittleEndian, uid.ExplicitVRLittleEndian},
    }
    assert result.max_pdu == 16384
    assert result.checks_called_ae is True
    assert result.called_ae_check is not None and result.called_ae_check.rejection is not None
    assert result.called_ae_check.rejection["reason"] == 7
    assert result.checks_calling_ae is True
    assert result.calling_ae_check is not None and result.calling_ae_check.rejection is not None
    assert result.calling_ae_check.rejection["reason"] == 3


def test_default_plan_fits_the_default_limit() -> None:
    """Every storage class and every transfer syntax fit in 60 associations of 128 contexts."""
    batches = plan_batches(ProbeOptions("127.0.0.1", 104, "ANY"))

    assert len(batches) <= 60
    assert all(len(b.contexts) <= MAX_CONTEXTS for b in batches)
    assert all(len(cx.transfer_syntax) == 1 for b in batches for cx in b.contexts)
    proposed = {(cx.abstract_syntax, cx.transfer_syntax[0]) for b in batches for cx in b.contexts
                if b.purpose == "acceptance"}
    with_roles = {cx.abstract_syntax for b in batches for cx in b.contexts
                  if b.purpose == "role-selection"}
    assert {c for c, _ in proposed} >= STORAGE_SOP_CLASS_UIDS | {VERIFICATION}
    assert {t for _, t in proposed} == set(PROBE_TRANSFER_SYNTAXES)
    assert with_roles == STORAGE_SOP_CLASS_UIDS
    assert [b.purpose for b in batches[-2:]] == ["called-ae-check", "calling-ae-check"]


def test_probe_rejects_before_connecting() -> None:
    """No host, or a plan over --max-associations, is rejected without any connection."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(0.2)
        port = listener.getsockname()[1]

        with pytest.raises(ProbeError, match="no host"):
            probe_system(ProbeOptions("", port, "ANY"))
        with pytest.raises(ProbeError, match="needs 36 associations"):
            probe_system(ProbeOptions("127.0.0.1", port, "ANY", max_associations=10))
        with pytest.raises(TimeoutError):
            listener.accept()


def test_probe_cli_invalid_input_exits_two() -> None:
    """An empty host or an unknown SOP class name is invalid input, exit 2."""
    no_host = rehearse_cli("probe", "", "104", "--called-ae", "ANY")
    unknown = rehearse_cli("probe", "127.0.0.1", "104", "--called-ae", "ANY",
                           "--sop-classes", "CTImageStorag")

    assert no_host.returncode == 2
    assert "no host given" in no_host.stderr
    assert unknown.returncode == 2
    assert "did you mean CTImageStorage" in unknown.stderr
