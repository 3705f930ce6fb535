"""End-to-end rehearsals on loopback: the command line, the run log and the run directory.

Each test reads what a real run wrote: ``events.jsonl``, ``ledger.jsonl``,
``summary.json``, ``report.md`` and the files the simulated PACS stored.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread

from simulator.corpus import bundled_corpus
from simulator.runner import RunOptions, run_rehearsal
from simulator.scenario import load_scenario
from simulator.topology import load_topology

REPO = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
CUTOVER_TOPOLOGY = REPO / "topologies" / "hospital-cutover.yaml"
CUTOVER_SCENARIO = REPO / "scenarios" / "cutover.yaml"
CLI_LIMIT_S = 120.0
"""Guard against a hung command; no test checks how long a run takes."""

WAIT_LIMIT_S = 60.0


@pytest.fixture(scope="module", autouse=True)
def corpus_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Build the bundled corpus once for this module, in a cache folder of its own."""
    cache = tmp_path_factory.mktemp("corpus-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("REHEARSE_CACHE_DIR", str(cache))
        yield bundled_corpus()


def rehearse_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run the ``rehearse`` command in a child process from the repository root."""
    return subprocess.run(
        [sys.executable, "-m", "simulator", *(str(a) for a in args)],
        cwd=REPO, capture_output=True, text=True, timeout=CLI_LIMIT_S, check=False,
        env={**os.environ, "COLUMNS": "200"},
    )


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@dataclass
class RunFiles:
    """What one finished run wrote."""

    run_dir: Path
    events: list[dict[str, Any]]
    ledger: list[dict[str, Any]]
    summary: dict[str, Any]

    @classmethod
    def read(cls, run_dir: Path) -> RunFiles:
        return cls(
            run_dir,
            read_jsonl(run_dir / "events.jsonl"),
            read_jsonl(run_dir / "ledger.jsonl"),
            json.loads((run_dir / "summary.json").read_text(encoding="utf-8")),
        )

    def of_kind(self, kind: str, **fields: Any) -> list[dict[str, Any]]:
        return [e for e in self.events
                if e["kind"] == kind and all(e.get(k) == v for k, v in fields.items())]


@dataclass
class CliRun:
    process: subprocess.CompletedProcess[str]
    files: RunFiles


@pytest.fixture(scope="module")
def cutover(tmp_path_factory: pytest.TempPathFactory) -> CliRun:
    """The bundled cutover rehearsal, run once through the command line."""
    run_dir = tmp_path_factory.mktemp("cutover") / "run"
    process = rehearse_cli("run", CUTOVER_TOPOLOGY, CUTOVER_SCENARIO, "--out", run_dir,
                           "--no-progress")

    return CliRun(process, RunFiles.read(run_dir))


@pytest.fixture(scope="module")
def unmet(tmp_path_factory: pytest.TempPathFactory) -> CliRun:
    """A run whose only expectation cannot hold, through the command line."""
    run_dir = tmp_path_factory.mktemp("unmet") / "run"
    process = rehearse_cli("run", DATA / "direct.topology.yaml", DATA / "unmet.scenario.yaml",
                           "--out", run_dir, "--no-progress")

    return CliRun(process, RunFiles.read(run_dir))


# Every attribute the charset run touches on the way: a router rule matches
# on PatientID, a coercion sets an attribute, private tags are dropped, and
# the PACS rejects objects that lack a birth date with an Error Comment.
CHARSET_SOP_CLASSES = [
    "SecondaryCaptureImageStorage", "ComputedRadiographyImageStorage", "MRImageStorage",
    "UltrasoundImageStorage", "CTImageStorage", "RTDoseStorage", "RTPlanStorage",
    "RTStructureSetStorage", "BasicTextSRStorage", "ComprehensiveSRStorage",
]
CHARSET_TRANSFER_SYNTAXES = [
    "ExplicitVRLittleEndian", "ImplicitVRLittleEndian", "RLELossless", "JPEG2000Lossless",
]
CHARSET_TOPOLOGY = {
    "site": "test-charsets",
    "nodes": {
        "workstation": {"kind": "modality", "ae_title": "WORKSTATION",
                        "transfer_syntaxes": CHARSET_TRANSFER_SYNTAXES,
                        "sop_classes": CHARSET_SOP_CLASSES},
        "router": {"kind": "router", "ae_title": "ROUTER", "private_tags": "drop",
                   "transfer_syntaxes": CHARSET_TRANSFER_SYNTAXES,
                   "sop_classes": CHARSET_SOP_CLASSES,
                   "rules": [
                       {"name": "charset-ids", "match": {"PatientID": "SCS*"},
                        "forward": ["archive"],
                        "coerce": {"set": {"InstitutionName": "REHEARSAL"}}},
                       {"name": "everything", "forward": ["validating-pacs"]},
                   ]},
        "archive": {"kind": "pacs", "ae_title": "ARCHIVE",
                    "transfer_syntaxes": CHARSET_TRANSFER_SYNTAXES,
                    "sop_classes": CHARSET_SOP_CLASSES},
        "validating-pacs": {"kind": "pacs", "ae_title": "VALIDATING",
                            "transfer_syntaxes": CHARSET_TRANSFER_SYNTAXES,
                            "require_attributes": ["PatientBirthDate"],
                            "sop_classes": CHARSET_SOP_CLASSES[:-1]},
    },
    "links": [
        {"from": "workstation", "to": "router"},
        {"from": "router", "to": "archive"},
        {"from": "router", "to": "validating-pacs"},
    ],
}
CHARSET_SCENARIO = {
    "name": "charsets",
    "corpus": "bundled",
    "timeout_s": 120,
    "senders": [{"modality": "workstation", "group_by": 8,
                 "select": {"glob": ["charset/**", "private/**", "RT/**", "SR/**"]}}],
}


def run_in_process(folder: Path, topology: dict[str, Any], scenario: dict[str, Any]) -> RunFiles:
    """Write the inputs as YAML (JSON is valid YAML), run them, and read the run directory."""
    folder.mkdir(parents=True, exist_ok=True)
    topology_path = folder / "topology-input.yaml"
    scenario_path = folder / "scenario-input.yaml"
    topology_path.write_text(json.dumps(topology, indent=2), encoding="utf-8")
    scenario_path.write_text(json.dumps(scenario, indent=2), encoding="utf-8")
    loaded = load_topology(topology_path)
    options = RunOptions(topology_path, scenario_path, folder / "run")
    run_rehearsal(loaded, load_scenario(scenario_path, loaded), options)

    return RunFiles.read(folder / "run")


@pytest.fixture(scope="module")
def charsets(tmp_path_factory: pytest.TempPathFactory) -> RunFiles:
    """A run of the corpus files with names in many character sets, through a router."""
    return run_in_process(tmp_path_factory.mktemp("charsets"), CHARSET_TOPOLOGY, CHARSET_SCENARIO)


# Exit codes.


def test_cutover_passes_expectations(cutover: CliRun) -> None:
    """The bundled cutover rehearsal exits 0 with every expectation held."""
    assert cutover.process.returncode == 0, cutover.process.stderr
    verdicts = cutover.files.summary["expectations"]
    assert len(verdicts) == 4
    for verdict in verdicts:
        assert verdict["passed"], verdict
        assert f"PASS {verdict['name']}" in cutover.process.stdout
    assert cutover.files.summary["outcome"] == "finished"
    assert cutover.files.of_kind("run.finished")[0]["expectations_held"] is True


def test_cutover_switches_rule_set(cutover: CliRun) -> None:
    """The cutover step switches the router once, between the two waves."""
    steps = cutover.files.of_kind("scenario.step")
    assert [s["action"] for s in steps] == ["start_sending", "cutover", "start_sending"]
    switches = cutover.files.of_kind("router.cutover", node="router")
    assert len(switches) == 1
    assert switches[0]["from_rule_set"] == "legacy"
    assert switches[0]["to_rule_set"] == "go-live"
    destinations = {(r["source"], r["destination"]) for r in cutover.files.ledger}
    assert ("ct", "old-pacs") in destinations
    assert ("ct", "new-pacs") in destinations


def test_unmet_expectation_exits_one(unmet: CliRun) -> None:
    """A scenario whose expectation cannot hold makes the command exit 1."""
    assert unmet.process.returncode == 1, unmet.process.stderr
    [verdict] = unmet.files.summary["expectations"]
    assert verdict["passed"] is False
    assert verdict["matched_rows"] == 2
    assert verdict["delivered_rows"] == 1
    assert "FAIL every instance reaches the PACS" in unmet.process.stdout
    states = sorted(r["state"] for r in unmet.files.ledger)
    assert states == ["delivered", "failed"]


def test_invalid_input_exits_two(tmp_path: Path) -> None:
    """An unknown field makes the command exit 2, naming the file, line and field."""
    run_dir = tmp_path / "run"
    topology = DATA / "invalid.topology.yaml"
    process = rehearse_cli("run", topology, DATA / "unmet.scenario.yaml", "--out", run_dir,
                           "--no-progress")

    assert process.returncode == 2
    assert str(topology) in process.stderr
    assert "line 15" in process.stderr
    assert "max_asociations" in process.stderr
    assert "max_associations" in process.stderr
    assert not run_dir.exists()


# The run log.


def test_events_carry_run_fields(cutover: CliRun) -> None:
    """Every event has run_id, seq, t_mono and t_wall; seq and t_mono never go back."""
    events = cutover.files.events
    run_id = cutover.files.summary["run_id"]
    assert events[0]["kind"] == "run.started"
    assert events[-1]["kind"] == "run.finished"
    for number, event in enumerate(events, start=1):
        assert event["run_id"] == run_id
        assert event["seq"] == number
        assert isinstance(event["t_mono"], float)
        assert dt.datetime.fromisoformat(event["t_wall"]).tzinfo is not None
    monotonic = [e["t_mono"] for e in events]
    assert monotonic == sorted(monotonic)


def test_association_events_name_node_link_assoc(cutover: CliRun) -> None:
    """Association and DIMSE events carry node, link and assoc_id."""
    kinds = ("association.", "dimse.", "timeout")
    events = [e for e in cutover.files.events if e["kind"].startswith(kinds)]
    assert len(events) > 100
    link_names = {f"{lk['from']}->{lk['to']}" for lk in _cutover_links()}
    for event in events:
        assert event.get("node"), event
        assert event.get("link") in link_names, event
        assert event.get("assoc_id"), event


def test_acceptor_uses_requestor_assoc_id(cutover: CliRun) -> None:
    """The acceptor and the link record an association under the requestor's id."""
    files = cutover.files
    requested = {(e["assoc_id"], e["link"]) for e in files.of_kind("association.requested",
                                                                   role="requestor")}
    accepted = files.of_kind("association.accepted", role="acceptor")
    assert accepted
    for event in accepted:
        assert (event["assoc_id"], event["link"]) in requested, event
    on_the_wire = {e["assoc_id"] for e in files.of_kind("link.pdu", pdu="associate_rq")}
    assert on_the_wire == {assoc_id for assoc_id, _ in requested}


def _cutover_links() -> list[dict[str, str]]:
    return [{"from": lk.from_node, "to": lk.to_node}
            for lk in load_topology(CUTOVER_TOPOLOGY).links]


def test_ledger_delivered_only_when_stored(cutover: CliRun) -> None:
    """A row is delivered exactly when its file is in the destination's store folder."""
    run_dir = cutover.files.run_dir
    storage_nodes = {"old-pacs", "new-pacs", "viewer"}
    rows = [r for r in cutover.files.ledger if r["destination"] in storage_nodes]
    assert {r["state"] for r in rows} == {"delivered", "failed"}
    for row in rows:
        stored = run_dir / "nodes" / row["destination"] / "store" / f"{row['sop_instance_uid']}.dcm"
        assert (row["state"] == "delivered") == stored.is_file(), row
        if row["state"] == "delivered":
            assert row["delivered_path"] == str(stored)
            assert row["intact"] is True
            header = dcmread(stored, stop_before_pixels=True)
            assert header.SOPInstanceUID == row["sop_instance_uid"]
    delivered = {(r["destination"], r["sop_instance_uid"])
                 for r in rows if r["state"] == "delivered"}
    stored_files = {(path.parent.parent.name, path.stem)
                    for path in (run_dir / "nodes").glob("*/store/*.dcm")}
    assert stored_files == delivered


def test_failed_rows_name_kind_hop_side(cutover: CliRun) -> None:
    """Every failed row has a failure with kind, hop, side, permanent, reason and detail."""
    failed = [r for r in cutover.files.ledger if r["state"] == "failed"]
    assert failed
    for row in failed:
        failure = row["failure"]
        assert set(failure) == {"failure_kind", "hop", "side", "permanent", "reason", "detail"}
        assert failure["failure_kind"] == "no-accepted-context"
        assert failure["hop"] in row["hops"]
        assert failure["permanent"] is True
        assert failure["detail"]["cause"] in ("proposal", "acceptance")
        assert row["status"] is None


# Patient data.

NAME_KEYWORDS = ("PatientName",)
ID_KEYWORDS = ("PatientID", "PatientBirthDate")
MIN_ID_LENGTH = 5
"""Shorter IDs ('1', '204', '0010') also occur as numbers and tags in any log."""


def patient_strings(corpus: Path) -> set[str]:
    """Return the names, IDs and birth dates found in the corpus, in the forms a log could show."""
    found: set[str] = set()
    for path in corpus.rglob("*.dcm"):
        dataset = dcmread(path, stop_before_pixels=True)
        for keyword in NAME_KEYWORDS:
            found |= _name_forms(str(dataset.get(keyword, "")))
        for keyword in ID_KEYWORDS:
            value = str(dataset.get(keyword, "")).strip()
            if len(value) >= MIN_ID_LENGTH:
                found.add(value)
    return found


def _name_forms(name: str) -> set[str]:
    forms: set[str] = set()
    for group in [name, *name.split("=")]:
        forms.add(group)
        forms.add(" ".join(p for p in group.split("^") if p))
        # Parts in other scripts are distinctive even when short.
        forms |= {p for p in group.split("^") if not p.isascii()}
    return {f.strip() for f in forms if len(f.strip().strip("^")) >= 3}


def run_texts(run_dir: Path) -> dict[str, str]:
    """Return each log file of a run as decoded text, JSON strings unescaped."""
    texts = {"report.md": (run_dir / "report.md").read_text(encoding="utf-8")}
    for name in ("events.jsonl", "ledger.jsonl"):
        raw = (run_dir / name).read_text(encoding="utf-8")
        decoded = [s for line in raw.splitlines() for s in _strings(json.loads(line))]
        texts[name] = raw + "\n" + "\n".join(decoded)
    raw = (run_dir / "summary.json").read_text(encoding="utf-8")
    texts["summary.json"] = raw + "\n" + "\n".join(_strings(json.loads(raw)))
    return texts


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def leaks(texts: dict[str, str], secrets: set[str]) -> list[tuple[str, str]]:
    found = []
    for secret in sorted(secrets):
        # Whole words only: a birth date inside a longer number is no leak.
        pattern = re.compile(r"(?<![\w.])" + re.escape(secret) + r"(?![\w.])")
        found += [(name, secret) for name, text in texts.items() if pattern.search(text)]
    return found


def test_corpus_has_names_in_many_scripts(corpus_root: Path) -> None:
    """The names searched for include Japanese, Korean, Greek and Cyrillic ones."""
    secrets = patient_strings(corpus_root)
    for name in ("山田^太郎", "やまだ^たろう", "김희중", "홍^길동", "Διονυσιος", "Люкceмбypг"):
        assert name in secrets
    assert "SCSGREEK" in secrets
    assert "18000101" in secrets


def test_leak_check_finds_escaped_names(tmp_path: Path) -> None:
    """The leak check finds a name that JSON escaped, and ignores digits inside a UID."""
    for name in ("events.jsonl", "ledger.jsonl"):
        (tmp_path / name).write_text(json.dumps({"uid": "2.25.1800010112"}) + "\n")
    (tmp_path / "summary.json").write_text(json.dumps({"note": "山田^太郎"}))
    (tmp_path / "report.md").write_text("no names here\n")

    found = leaks(run_texts(tmp_path), {"山田^太郎", "18000101"})

    assert "\\u5c71" in (tmp_path / "summary.json").read_text()
    assert found == [("summary.json", "山田^太郎")]


def test_no_patient_data_in_cutover_run(cutover: CliRun, corpus_root: Path) -> None:
    """No corpus patient name, ID or birth date appears in the cutover run's files."""
    assert leaks(run_texts(cutover.files.run_dir), patient_strings(corpus_root)) == []


def test_no_patient_data_in_charset_run(charsets: RunFiles, corpus_root: Path) -> None:
    """No patient data leaks from a run that routes, coerces and rejects on patient attributes."""
    assert charsets.of_kind("routing.matched")
    assert charsets.of_kind("router.coerced")
    assert charsets.of_kind("dimse.response", error_comment="Missing PatientBirthDate")
    delivered = [r for r in charsets.ledger if r["state"] == "delivered"]
    assert any(r["source_file"].startswith("charset/chrJap") for r in delivered)
    assert leaks(run_texts(charsets.run_dir), patient_strings(corpus_root)) == []


# The run directory.


def test_run_dir_keeps_input_copies(cutover: CliRun) -> None:
    """The run directory contains byte-for-byte copies of the topology and scenario."""
    run_dir = cutover.files.run_dir
    assert (run_dir / "topology.yaml").read_bytes() == CUTOVER_TOPOLOGY.read_bytes()
    assert (run_dir / "scenario.yaml").read_bytes() == CUTOVER_SCENARIO.read_bytes()
    assert (run_dir / "report.md").read_text(encoding="utf-8").startswith(
        f"# Rehearsal {cutover.files.summary['run_id']}")


def test_run_dir_refuses_reuse(unmet: CliRun) -> None:
    """A second run into a used directory exits 2 and leaves the first run's files alone."""
    run_dir = unmet.files.run_dir
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
              for p in run_dir.iterdir() if p.is_file()}
    process = rehearse_cli("run", DATA / "direct.topology.yaml", DATA / "unmet.scenario.yaml",
                           "--out", run_dir, "--no-progress")

    assert process.returncode == 2
    assert "exists and is not empty" in process.stderr
    assert str(run_dir) in process.stderr
    after = {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
             for p in run_dir.iterdir() if p.is_file()}
    assert after == before


def test_killed_run_leaves_valid_jsonl(tmp_path: Path) -> None:
    """A run killed with SIGKILL mid-run leaves an events.jsonl whose every line parses."""
    run_dir = tmp_path / "run"
    events_path = run_dir / "events.jsonl"
    process = subprocess.Popen(
        [sys.executable, "-m", "simulator", "run", str(DATA / "direct.topology.yaml"),
         str(DATA / "held.scenario.yaml"), "--out", str(run_dir), "--no-progress"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + WAIT_LIMIT_S
        while _count_kind(events_path, "instance.sent") < 2:
            assert process.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "the run sent nothing within the wait limit"
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=WAIT_LIMIT_S) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    lines = events_path.read_text(encoding="utf-8").splitlines()
    events = [json.loads(line) for line in lines]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert "run.finished" not in {e["kind"] for e in events}
    assert not (run_dir / "summary.json").exists()


def _count_kind(path: Path, kind: str) -> int:
    if not path.exists():
        return 0
    # The last line may still be being written; only complete lines count.
    complete = path.read_text(encoding="utf-8").split("\n")[:-1]
    return sum(1 for line in complete if json.loads(line)["kind"] == kind)
