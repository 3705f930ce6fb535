"""Compare rehearsals: ``rehearse diff`` on real runs of the bundled pair, and its inputs.

The module runs the bundled cutover scenario three times on loopback: with
``hospital-cutover.yaml``, with ``hospital-cutover-revised.yaml`` (the new
PACS gains Enhanced MR but loses JPEG 2000), and with the original topology
and another seed (so the copy wave gets other UIDs). Tests that need odd
inputs copy a run and edit the copy.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from simulator.compare import (
    CellChange,
    InvalidRunError,
    compare_runs,
    diff_markdown,
    load_run,
)
from simulator.compare.config import diff_documents
from simulator.compare.timing import percentile
from simulator.corpus import bundled_corpus
from simulator.runner import RunOptions, run_rehearsal
from simulator.scenario import load_scenario
from simulator.topology import load_topology

REPO = Path(__file__).resolve().parent.parent
TOPOLOGY = REPO / "topologies" / "hospital-cutover.yaml"
REVISED_TOPOLOGY = REPO / "topologies" / "hospital-cutover-revised.yaml"
SCENARIO = REPO / "scenarios" / "cutover.yaml"
V0_RUN = Path(__file__).resolve().parent / "data" / "runs" / "v0-cutover"
CLI_LIMIT_S = 120.0
"""Guard against a hung command; no test checks how long a command takes."""

CT = "CTImageStorage"
US = "UltrasoundImageStorage"
ENHANCED_MR = "EnhancedMRImageStorage"
J2K_CELLS = {
    ("ct", "new-pacs", CT, "JPEG2000Lossless"), ("ct", "new-pacs", CT, "JPEG2000"),
    ("us", "new-pacs", US, "JPEG2000Lossless"), ("us", "new-pacs", US, "JPEG2000"),
}
ENHANCED_MR_FIXED = {
    ("mr", "new-pacs", ENHANCED_MR, "ExplicitVRLittleEndian"),
    ("mr", "new-pacs", ENHANCED_MR, "RLELossless"),
}


@dataclass(frozen=True)
class BundledRuns:
    original: Path
    revised: Path
    reseeded: Path


def _rehearse(topology_path: Path, out_dir: Path, seed: int | None = None) -> Path:
    topology = load_topology(topology_path)
    options = RunOptions(topology_path, SCENARIO, out_dir, seed=seed)
    run_rehearsal(topology, load_scenario(SCENARIO, topology), options)

    return out_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BundledRuns]:
    """Run the bundled pair once for this module, with a corpus cache of its own."""
    root = tmp_path_factory.mktemp("bundled-pair")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("REHEARSE_CACHE_DIR", str(root / "corpus-cache"))
        bundled_corpus()
        yield BundledRuns(
            original=_rehearse(TOPOLOGY, root / "original"),
            revised=_rehearse(REVISED_TOPOLOGY, root / "revised"),
            reseeded=_rehearse(TOPOLOGY, root / "reseeded", seed=4242),
        )


def rehearse_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run the ``rehearse`` command in a child process from the repository root."""
    return subprocess.run(
        [sys.executable, "-m", "simulator", *(str(a) for a in args)],
        cwd=REPO, capture_output=True, text=True, timeout=CLI_LIMIT_S, check=False,
        env={**os.environ, "COLUMNS": "200"},
    )


def cells_by_change(a: Path, b: Path) -> dict[CellChange, set[tuple[str, str, str, str]]]:
    diff = compare_runs(load_run(a), load_run(b))
    found: dict[CellChange, set[tuple[str, str, str, str]]] = {c: set() for c in CellChange}
    for cell in diff.cells:
        found[cell.change].add((cell.source, cell.destination, cell.sop_class,
                                cell.transfer_syntax))

    return found


def copy_run(run: Path, target: Path) -> Path:
    """Copy the files ``rehearse diff`` reads, not the stored DICOM objects."""
    target.mkdir(parents=True)
    for name in ("summary.json", "ledger.jsonl", "events.jsonl", "topology.yaml",
                 "scenario.yaml"):
        shutil.copy(run / name, target / name)

    return target


def rewrite_ledger(run: Path, change: Any) -> None:
    """Apply ``change(row)`` to every ledger row of a copied run."""
    path = run / "ledger.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    path.write_text("".join(json.dumps(change(row)) + "\n" for row in rows), encoding="utf-8")


# Outcome matrix --------------------------------------------------------------


def test_matrix_regressions_are_jpeg2000_cells(runs: BundledRuns) -> None:
    """The revised PACS loses JPEG 2000: exactly those cells regress."""
    found = cells_by_change(runs.original, runs.revised)

    assert found[CellChange.REGRESSION] == J2K_CELLS


def test_matrix_fixes_are_enhanced_mr_cells(runs: BundledRuns) -> None:
    """The revised PACS gains Enhanced MR: the syntaxes it still accepts are fixes."""
    found = cells_by_change(runs.original, runs.revised)

    assert found[CellChange.FIX] == ENHANCED_MR_FIXED


def test_matrix_changed_cause_without_fix(runs: BundledRuns) -> None:
    """Enhanced MR in big endian still fails, but now for its transfer syntax."""
    diff = compare_runs(load_run(runs.original), load_run(runs.revised))
    cell = next(c for c in diff.cells
                if (c.source, c.sop_class, c.transfer_syntax)
                == ("mr", ENHANCED_MR, "ExplicitVRBigEndian") and c.destination == "new-pacs")

    assert cell.change == CellChange.CHANGED
    assert cell.a is not None and cell.b is not None
    assert any("abstract-syntax-not-supported" in c for cs in cell.a.causes.values() for c in cs)
    assert any("transfer-syntaxes-not-supported" in c for cs in cell.b.causes.values()
               for c in cs)


def test_matrix_reversed_swaps_fixes(runs: BundledRuns) -> None:
    """Comparing the other way round turns the fixes into regressions and back."""
    found = cells_by_change(runs.revised, runs.original)

    assert found[CellChange.REGRESSION] == ENHANCED_MR_FIXED
    assert found[CellChange.FIX] == J2K_CELLS


def test_same_run_has_no_change(runs: BundledRuns) -> None:
    """A run compared with itself has only unchanged cells and no regression."""
    diff = compare_runs(load_run(runs.original), load_run(runs.original))

    assert {c.change for c in diff.cells} == {CellChange.UNCHANGED}
    assert not diff.has_regression
    assert diff.config_changes == []
    assert not diff.flagged_timing


# Ledger, configuration, timing ---------------------------------------------


def test_ledger_lost_and_gained_deliveries(runs: BundledRuns) -> None:
    """Instances delivered in one run only are listed with their files."""
    diff = compare_runs(load_run(runs.original), load_run(runs.revised))
    lost = {(p.any_row.source_file, p.any_row.destination) for p in diff.lost}
    gained = {(p.any_row.source_file, p.any_row.destination) for p in diff.gained}

    assert lost == {("CT/693_J2KR.dcm", "new-pacs"), ("CT/693_J2KI.dcm", "new-pacs"),
                    ("US/US1_J2KR.dcm", "new-pacs"), ("US/US1_J2KI.dcm", "new-pacs")}
    assert gained == {("MR-enhanced/emri_small.dcm", "new-pacs"),
                      ("MR-enhanced/emri_small_RLE.dcm", "new-pacs")}
    assert diff.matching.method == "sop-instance-uid"


def test_config_changes_linked_to_cells(runs: BundledRuns) -> None:
    """Each config change names the changed cells it may explain, and the reverse."""
    diff = compare_runs(load_run(runs.original), load_run(runs.revised))
    changes = {c.path: c for c in diff.config_changes}

    assert set(changes) == {"nodes.new-pacs.transfer_syntaxes", "nodes.new-pacs.sop_classes"}
    syntaxes = changes["nodes.new-pacs.transfer_syntaxes"]
    assert syntaxes.items_removed == ["JPEG2000Lossless", "JPEG2000"]
    assert syntaxes.items_added == []
    assert syntaxes.nodes == {"new-pacs"}
    assert changes["nodes.new-pacs.sop_classes"].items_added == [ENHANCED_MR]
    for cell in diff.regression_cells:
        assert cell.config_changes == ["topology: nodes.new-pacs.transfer_syntaxes"]
    for cell in diff.cells_with(CellChange.FIX):
        assert cell.config_changes == ["topology: nodes.new-pacs.sop_classes"]
    assert len(syntaxes.related_cells) == 5


def test_timing_measures_every_link(runs: BundledRuns) -> None:
    """DIMSE and association times exist for each link that carried traffic."""
    diff = compare_runs(load_run(runs.original), load_run(runs.revised))
    measures = {(t.measure, t.scope) for t in diff.timing}

    for link in ("ct->router", "mr->router", "us->router", "router->old-pacs",
                 "router->new-pacs"):
        assert ("dimse", link) in measures
        assert ("association", link) in measures
    assert ("delivery", "ct -> old-pacs") in measures


def test_timing_threshold_controls_flags(runs: BundledRuns) -> None:
    """An enormous threshold flags nothing; a tiny one flags every moved measure."""
    a, b = load_run(runs.original), load_run(runs.revised)
    relaxed = compare_runs(a, b, threshold_pct=1e9)
    strict = compare_runs(a, b, threshold_pct=1e-9)
    moved = [t for t in strict.timing if t.median_change_pct or t.p95_change_pct]

    assert relaxed.flagged_timing == []
    assert len(strict.flagged_timing) == len(moved)
    assert moved


def test_percentile_interpolates() -> None:
    """Percentiles interpolate linearly between the closest ranks."""
    values = [10.0, 20.0, 30.0, 40.0]

    assert percentile(values, 0.5) == 25.0
    assert percentile(values, 0.95) == pytest.approx(38.5)
    assert percentile([7.0], 0.95) == 7.0


# Matching -------------------------------------------------------------------


def test_matching_mixed_for_other_seed(runs: BundledRuns) -> None:
    """Another seed keeps the corpus UIDs but not the copy wave's: that wave pairs by file."""
    diff = compare_runs(load_run(runs.original), load_run(runs.reseeded))
    rows = len(load_run(runs.original).rows)

    assert diff.matching.method == "mixed"
    assert diff.matching.by_uid > 0
    assert diff.matching.by_fallback > 0
    assert diff.matching.by_uid + diff.matching.by_fallback == rows
    assert diff.matching.only_a == 0
    assert diff.matching.only_b == 0
    assert diff.regression_cells == []


def test_matching_fallback_pairs_waves(runs: BundledRuns, tmp_path: Path) -> None:
    """With every UID different, rows pair by file, destination and wave order."""
    renamed = copy_run(runs.original, tmp_path / "renamed")
    rewrite_ledger(renamed, lambda row: {**row,
                                         "sop_instance_uid": row["sop_instance_uid"] + ".9"})
    diff = compare_runs(load_run(runs.original), load_run(renamed))

    assert diff.matching.method == "fallback"
    assert diff.matching.by_fallback == len(diff.matching.pairs)
    for pair in diff.matching.pairs:
        assert pair.a is not None and pair.b is not None
        assert pair.b.sop_instance_uid == pair.a.sop_instance_uid + ".9"
    assert not diff.has_regression


def test_matching_output_names_method(runs: BundledRuns) -> None:
    """The terminal output names the matching it used."""
    result = rehearse_cli("diff", runs.original, runs.reseeded)

    assert "by SOP Instance UID where the UIDs agree, else by the fallback key" in result.stdout


# Integrity --------------------------------------------------------------------


def test_integrity_finding_appears(runs: BundledRuns, tmp_path: Path) -> None:
    """A delivery stored changed in B is a new integrity finding and a regression."""
    changed = copy_run(runs.original, tmp_path / "changed")
    target = "CT/CT_small.dcm"

    def spoil(row: dict[str, Any]) -> dict[str, Any]:
        if row["source_file"] == target and row["destination"] == "old-pacs":
            row.update(intact=False, integrity={"unexplained": ["(0008,0080) InstitutionName"]})
        return row

    rewrite_ledger(changed, spoil)
    forward = compare_runs(load_run(runs.original), load_run(changed))
    backward = compare_runs(load_run(changed), load_run(runs.original))

    assert [p.any_row.source_file for p in forward.integrity_appeared] == [target]
    assert forward.has_regression
    assert [p.any_row.source_file for p in backward.integrity_disappeared] == [target]
    assert backward.integrity_appeared == []


# Command line -----------------------------------------------------------------


def test_cli_exit_one_on_regression(runs: BundledRuns) -> None:
    """B with a regression exits 1 and names fixes and regressions."""
    result = rehearse_cli("diff", runs.original, runs.revised)

    assert result.returncode == 1, result.stderr
    assert "Regressions: 4" in result.stdout
    assert "Fixes: 2" in result.stdout
    assert "nodes.new-pacs.transfer_syntaxes" in result.stdout
    assert "B has regressions against A" in result.stdout


def test_cli_exit_zero_without_regression(runs: BundledRuns) -> None:
    """B without a regression exits 0."""
    result = rehearse_cli("diff", runs.original, runs.reseeded)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "B has no regression against A." in result.stdout


def test_cli_json_shape(runs: BundledRuns) -> None:
    """``--json`` prints one document with every section."""
    result = rehearse_cli("diff", runs.original, runs.revised, "--json")
    document = json.loads(result.stdout)

    assert result.returncode == 1
    assert document["diff_format_version"] == 1
    assert document["regression"] is True
    assert set(document) >= {"run_a", "run_b", "counts", "matching", "matrix", "instances",
                             "integrity", "timing", "config", "notes"}
    assert document["counts"]["regression"] == 4
    assert document["counts"]["fix"] == 2
    assert document["matching"]["method"] == "sop-instance-uid"
    cell = next(c for c in document["matrix"] if c["change"] == "regression")
    assert set(cell) >= {"source", "destination", "sop_class", "sop_class_uid",
                         "transfer_syntax", "transfer_syntax_uid", "a", "b", "config_changes"}
    assert cell["a"]["status"] == "delivered"
    assert cell["b"]["failures"][0]["failure_kind"] == "no-accepted-context"
    assert cell["b"]["failures"][0]["hop"] == "router->new-pacs"
    assert len(document["instances"]["delivered_only_in_a"]) == 4
    assert document["timing"]["threshold_pct"] == 20.0
    assert {m["measure"] for m in document["timing"]["measures"]} == {
        "dimse", "association", "delivery"}
    assert document["config"][0]["document"] == "topology"


def test_cli_timing_threshold_option(runs: BundledRuns) -> None:
    """``--timing-threshold`` sets the percentage in the JSON output."""
    result = rehearse_cli("diff", runs.original, runs.revised, "--json",
                          "--timing-threshold", "1000000")
    document = json.loads(result.stdout)

    assert document["timing"]["threshold_pct"] == 1000000.0
    assert document["counts"]["timing_flagged"] == 0


def test_cli_markdown(runs: BundledRuns) -> None:
    """``--markdown`` prints a change-ticket document with tables."""
    result = rehearse_cli("diff", runs.original, runs.revised, "--markdown")

    assert result.returncode == 1
    assert result.stdout.startswith("# Rehearsal comparison: ")
    assert "**B has regressions against A" in result.stdout
    assert "## Regressions: 4" in result.stdout
    assert "## Fixes: 2" in result.stdout
    assert "| route | SOP class, transfer syntax | A | B | config changes on route |" \
        in result.stdout
    assert "| ct -> new-pacs | CTImageStorage, JPEG2000Lossless | delivered 1/1 |" \
        in result.stdout
    assert "nodes.new-pacs.sop_classes: added EnhancedMRImageStorage" in result.stdout


def test_markdown_without_changes(runs: BundledRuns) -> None:
    """The Markdown of a run against itself reports no regression."""
    text = diff_markdown(compare_runs(load_run(runs.original), load_run(runs.original)))

    assert "**B has no regression against A.**" in text
    assert "## Regressions" not in text
    assert "The topology and scenario copies are the same." in text


# Older run format ---------------------------------------------------------------


def test_v0_fixture_reads_as_v1() -> None:
    """The version-0 fixture reads into version-1 rows."""
    run = load_run(V0_RUN)
    failed = [r for r in run.rows if r.state == "failed"]

    assert run.format_version == 0
    assert len(run.rows) == 50
    assert run.summary["states"] == {"delivered": 34, "failed": 16}
    assert len(failed) == 16
    assert all(r.failure_kind == "no-accepted-context" for r in failed)
    assert all(r.failure_reason for r in failed)
    assert all(r.hops for r in run.rows)
    assert all(r.intact is True for r in run.rows if r.state == "delivered")
    assert {e["kind"] for e in run.iter_events(["run.started", "run.finished"])} == {
        "run.started", "run.finished"}


def test_v0_run_compares_with_v1(runs: BundledRuns) -> None:
    """An old-format run compares with a new one: same UIDs, the revised PACS regresses."""
    diff = compare_runs(load_run(V0_RUN), load_run(runs.revised))
    found = {(c.source, c.destination, c.sop_class, c.transfer_syntax)
             for c in diff.regression_cells}

    assert diff.matching.method == "sop-instance-uid"
    assert diff.matching.by_uid == 50
    assert found == J2K_CELLS
    assert any(t.measure == "dimse" and t.a is not None for t in diff.timing)


def test_v0_run_against_original(runs: BundledRuns) -> None:
    """The fixture, made from a run of the original topology, pairs every row with a new run."""
    diff = compare_runs(load_run(V0_RUN), load_run(runs.original))

    assert diff.matching.by_uid == 50
    assert [c for c in diff.cells if c.change in (CellChange.ADDED, CellChange.REMOVED)] == []


def test_v0_mismatches_become_integrity(tmp_path: Path) -> None:
    """A version-0 row with ``verified: false`` keeps its mismatches as integrity findings."""
    run = copy_run(V0_RUN, tmp_path / "v0")
    rewrite_ledger(run, lambda row: {**row, "verified": False, "mismatches": ["(0010,0020)"]}
                   if row["result"] == "delivered" else row)
    loaded = load_run(run)
    spoiled = [r for r in loaded.rows if r.intact is False]

    assert len(spoiled) == 34
    assert spoiled[0].integrity == {"unexplained": ["(0010,0020)"]}
    assert not spoiled[0].delivered


# Invalid input ------------------------------------------------------------------


@pytest.mark.parametrize(("make", "expected"), [
    (lambda root: root / "missing", "not found"),
    (lambda root: _file(root / "a-file.txt"), "not a folder"),
    (lambda root: _folder(root / "empty"), "not a run directory"),
    (lambda root: _killed_run(root / "killed"), "the run did not finish"),
])
def test_cli_invalid_run_path(runs: BundledRuns, tmp_path: Path, make: Any,
                              expected: str) -> None:
    """A path that is not a readable run exits 2 and names the path."""
    path = make(tmp_path)
    result = rehearse_cli("diff", path, runs.original)

    assert result.returncode == 2
    assert str(path) in result.stderr
    assert expected in result.stderr


def _file(path: Path) -> Path:
    path.write_text("not a run\n", encoding="utf-8")
    return path


def _folder(path: Path) -> Path:
    path.mkdir()
    return path


def _killed_run(path: Path) -> Path:
    path.mkdir()
    (path / "events.jsonl").write_text('{"kind": "run.started"}\n', encoding="utf-8")
    return path


def test_unknown_format_version(runs: BundledRuns, tmp_path: Path) -> None:
    """A summary with a future format_version is rejected, naming the file and value."""
    future = copy_run(runs.original, tmp_path / "future")
    summary = json.loads((future / "summary.json").read_text(encoding="utf-8"))
    (future / "summary.json").write_text(json.dumps({**summary, "format_version": 7}),
                                         encoding="utf-8")
    result = rehearse_cli("diff", runs.original, future)

    assert result.returncode == 2
    assert str(future / "summary.json") in result.stderr
    assert "unknown format_version 7" in result.stderr


def test_damaged_ledger_line(runs: BundledRuns, tmp_path: Path) -> None:
    """A ledger line that is not JSON is rejected with its line number."""
    damaged = copy_run(runs.original, tmp_path / "damaged")
    with (damaged / "ledger.jsonl").open("a", encoding="utf-8") as stream:
        stream.write("{not json\n")

    with pytest.raises(InvalidRunError, match=r"line 51: invalid JSON"):
        load_run(damaged)


def test_cli_rejects_conflicting_options(runs: BundledRuns) -> None:
    """``--json`` with ``--markdown``, or a threshold of 0, exits 2."""
    both = rehearse_cli("diff", runs.original, runs.revised, "--json", "--markdown")
    zero = rehearse_cli("diff", runs.original, runs.revised, "--timing-threshold", "0")

    assert both.returncode == 2
    assert "--json and --markdown" in both.stderr
    assert zero.returncode == 2
    assert "--timing-threshold 0" in zero.stderr


# Structural YAML diff -------------------------------------------------------------


def test_config_diff_paths() -> None:
    """Keys, named list items, scalar lists and index fallbacks get readable paths."""
    a = {"site": "x", "nodes": {"pacs": {"max_associations": 10, "transfer_syntaxes": ["A", "B"]}},
         "links": [{"from": "ct", "to": "pacs"}],
         "steps": [{"action": "hold"}, {"action": "cutover"}]}
    b = {"site": "x", "nodes": {"pacs": {"max_associations": 1, "transfer_syntaxes": ["B", "C"]},
                                "viewer": {"kind": "viewer"}},
         "links": [{"from": "ct", "to": "pacs", "called_ae": "PACS2"}],
         "steps": [{"action": "hold"}]}
    changes = {c.path: c for c in diff_documents("topology", a, b)}

    assert set(changes) == {"nodes.pacs.max_associations", "nodes.pacs.transfer_syntaxes",
                            "nodes.viewer", "links[ct->pacs].called_ae", "steps[1]"}
    assert changes["nodes.pacs.max_associations"].describe() == \
        "nodes.pacs.max_associations: 10 -> 1"
    assert changes["nodes.pacs.transfer_syntaxes"].items_added == ["C"]
    assert changes["nodes.pacs.transfer_syntaxes"].items_removed == ["A"]
    assert str(changes["nodes.viewer"].kind) == "added"
    assert str(changes["steps[1]"].kind) == "removed"
