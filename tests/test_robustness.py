"""Inputs a new user gets wrong, and interruptions: clear errors, nothing lost, no hang."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest

from simulator.corpus import bundled_corpus

ROOT = Path(__file__).resolve().parent.parent
REHEARSE = [sys.executable, "-m", "simulator"]

SITE = """
site: robustness
nodes:
  ct: {{kind: modality, ae_title: CT1, sop_classes: [CTImageStorage, RTIonPlanStorage]}}
  pacs:
    kind: pacs
    ae_title: PACS
    port: {port}
    sop_classes: [CTImageStorage, RTIonPlanStorage]
    require_attributes: [{required}]
links:
  - {{from: ct, to: pacs}}
"""
SCENARIO = """
name: robustness
senders:
  - {{modality: ct, select: {{glob: ["{glob}"]}}}}
timeline:
  - {{action: start_sending, at_s: 0}}
  - {{action: hold, at_s: {hold_s}}}
"""


@pytest.fixture(autouse=True)
def _corpus_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REHEARSE_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "corpus-cache"))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def write_site(tmp_path: Path, port: int | str = "null", required: str = "SOPInstanceUID",
               glob: str = "CT/CT_small.dcm", hold_s: float = 0) -> tuple[Path, Path]:
    topology = tmp_path / "site.yaml"
    topology.write_text(SITE.format(port=port, required=required), encoding="utf-8")
    scenario = tmp_path / "scenario.yaml"
    scenario.write_text(SCENARIO.format(glob=glob, hold_s=hold_s), encoding="utf-8")
    return topology, scenario


def rehearse(*args: str | Path, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*REHEARSE, *map(str, args)], capture_output=True, text=True,
                          timeout=120, cwd=ROOT, check=False, **kwargs)  # type: ignore[call-overload]


def test_absent_required_attribute_is_a900(tmp_path: Path) -> None:
    """A required attribute missing from the object gets 0xA900 with its tag, not an error status."""
    topology, scenario = write_site(tmp_path, required="RequestedProcedureID")

    result = rehearse("run", topology, scenario, "--out", tmp_path / "run", "--no-progress")

    assert result.returncode == 0, result.stderr
    [row] = [json.loads(line) for line in (tmp_path / "run" / "ledger.jsonl").read_text().splitlines()]
    assert row["status"] == "0xA900"
    assert row["failure"]["detail"]["offending_element"] == ["(0040,1001)"]


def test_file_without_meta_is_sent(tmp_path: Path) -> None:
    """A corpus file with no File Meta Information gets one in a copy and is delivered."""
    corpus = tmp_path / "corpus" / "CT"
    corpus.mkdir(parents=True)
    shutil.copyfile(bundled_corpus() / "CT" / "CT_small.dcm", corpus / "ct.dcm")
    no_meta = Path(pydicom.__file__).parent / "data" / "test_files" / "ExplVR_LitEndNoMeta.dcm"
    shutil.copyfile(no_meta, corpus / "plan.dcm")
    topology, scenario = write_site(tmp_path, glob="**")

    result = rehearse("run", topology, scenario, "--corpus", corpus.parent, "--out",
                      tmp_path / "run", "--no-progress")

    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["states"] == {"delivered": 2}


def test_port_in_use_is_invalid_input(tmp_path: Path) -> None:
    """A node port that another process holds is a clear error with exit 2, not a traceback."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        topology, scenario = write_site(tmp_path, port=holder.getsockname()[1])

        result = rehearse("run", topology, scenario, "--out", tmp_path / "run", "--no-progress")

    assert result.returncode == 2
    assert "node pacs cannot listen on 127.0.0.1" in result.stderr
    assert "Traceback" not in result.stderr


def test_out_is_a_file(tmp_path: Path) -> None:
    """--out naming a file is invalid input."""
    topology, scenario = write_site(tmp_path)
    (tmp_path / "afile").write_text("x")

    result = rehearse("run", topology, scenario, "--out", tmp_path / "afile", "--no-progress")

    assert result.returncode == 2
    assert "is a file" in result.stderr


@pytest.mark.parametrize(("change", "message"), [
    ("max_pdu: 3", "max_pdu 3 is too small"),
    ("max_pdu: 99999999999", "less than or equal to 4294967295"),
])
def test_unusable_max_pdu_rejected(tmp_path: Path, change: str, message: str) -> None:
    """A maximum PDU no DICOM peer can work with is rejected when the file is loaded."""
    topology, _ = write_site(tmp_path)
    text = topology.read_text().replace("ae_title: PACS", f"ae_title: PACS\n    {change}")
    topology.write_text(text)

    result = rehearse("validate", topology)

    assert result.returncode == 2
    assert message in result.stderr


def test_router_circle_rejected(tmp_path: Path) -> None:
    """Routers forwarding in a circle are rejected at load, not left to hang the run."""
    topology = tmp_path / "loop.yaml"
    topology.write_text("""
site: loop
nodes:
  m: {kind: modality, ae_title: M, sop_classes: [CTImageStorage]}
  r1: {kind: router, ae_title: R1, sop_classes: [CTImageStorage], rules: [{name: a, forward: [r2]}]}
  r2: {kind: router, ae_title: R2, sop_classes: [CTImageStorage], rules: [{name: b, forward: [r1]}]}
links:
  - {from: m, to: r1}
  - {from: r1, to: r2}
  - {from: r2, to: r1}
""")

    result = rehearse("validate", topology)

    assert result.returncode == 2
    assert "routers forward in a circle: r1 -> r2 -> r1" in result.stderr


def test_sigterm_keeps_ledger_and_summary(tmp_path: Path) -> None:
    """SIGTERM ends a run as Ctrl-C does: ledger, summary and report are still written."""
    topology, scenario = write_site(tmp_path, hold_s=60)
    out = tmp_path / "run"
    process = subprocess.Popen([*REHEARSE, "run", str(topology), str(scenario), "--out", str(out),
                                "--no-progress"], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    try:
        deadline = time.monotonic() + 60
        events = out / "events.jsonl"
        while time.monotonic() < deadline:
            if events.exists() and '"instance.sent"' in events.read_text():
                break
            time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()

    assert process.returncode == 130
    assert "interrupted" in stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["outcome"] == "interrupted"
    assert (out / "ledger.jsonl").read_text().strip()
    assert (out / "report.md").exists()
