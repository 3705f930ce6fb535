"""The HTML report in headless Chromium: it loads without script errors and shows the matrix.

The module runs the bundled cutover scenario with the original and the
revised topology, writes ``rehearse report`` pages of them, and reads the
DOM that Chromium dumps after running the page's scripts. Chromium comes
from the Debian package ``chromium``: a test skips without it on a
developer machine and fails without it when CI is set.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import pytest

from simulator.compare import compare_runs, load_run
from simulator.corpus import bundled_corpus
from simulator.report import render_diff_report, render_run_report
from simulator.runner import RunOptions, run_rehearsal
from simulator.scenario import load_scenario
from simulator.topology import load_topology

REPO = Path(__file__).resolve().parent.parent
TOPOLOGY = REPO / "topologies" / "hospital-cutover.yaml"
REVISED_TOPOLOGY = REPO / "topologies" / "hospital-cutover-revised.yaml"
SCENARIO = REPO / "scenarios" / "cutover.yaml"
CHROMIUM = Path("/usr/bin/chromium")
CLI_LIMIT_S = 120.0
"""Guard against a hung command; no test checks how long a command takes."""


@dataclass(frozen=True)
class Pages:
    original: Path
    revised: Path
    run_page: Path
    diff_page: Path


def _rehearse(topology_path: Path, out_dir: Path) -> Path:
    topology = load_topology(topology_path)
    options = RunOptions(topology_path, SCENARIO, out_dir)
    run_rehearsal(topology, load_scenario(SCENARIO, topology), options)

    return out_dir


def rehearse_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run the ``rehearse`` command in a child process from the repository root."""
    return subprocess.run(
        [sys.executable, "-m", "simulator", *(str(a) for a in args)],
        cwd=REPO, capture_output=True, text=True, timeout=CLI_LIMIT_S, check=False,
    )


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pages]:
    """Run the bundled pair once and write a run report and a diff report with the CLI."""
    root = tmp_path_factory.mktemp("report")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("REHEARSE_CACHE_DIR", str(root / "corpus-cache"))
        bundled_corpus()
        original = _rehearse(TOPOLOGY, root / "original")
        revised = _rehearse(REVISED_TOPOLOGY, root / "revised")
    run_page, diff_page = root / "run.html", root / "diff.html"
    for args in (("report", original, "--out", run_page),
                 ("report", "--diff", original, revised, "--out", diff_page)):
        result = rehearse_cli(*args)
        assert result.returncode == 0, result.stderr

    yield Pages(original, revised, run_page, diff_page)


def require_chromium() -> None:
    """Skip without Chromium on a developer machine; fail in CI, where it must be installed."""
    if CHROMIUM.exists():
        return
    msg = (f"{CHROMIUM} not found; install the Debian package chromium "
           "(scripts/bootstrap --peers does this)")
    if os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)


def chromium(url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    """Run headless Chromium on a page, with no network features and a fresh profile."""
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        return subprocess.run(
            [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
             *extra, url],
            capture_output=True, text=True, timeout=CLI_LIMIT_S, check=False,
        )


def dump_dom(page: Path, fragment: str = "") -> str:
    """Return the DOM after the page's scripts ran; fail on any script error."""
    result = chromium(page.as_uri() + fragment, "--dump-dom")

    assert result.returncode == 0, result.stderr[-2000:]
    assert "Uncaught" not in result.stderr, result.stderr[-2000:]

    return result.stdout


class _Elements(HTMLParser):
    """Collect the attributes of matrix cells, ledger rows and the root element."""

    def __init__(self) -> None:
        super().__init__()
        self.root: dict[str, str | None] = {}
        self.cells: list[dict[str, str | None]] = []
        self.ledger_rows: list[dict[str, str | None]] = []
        self._in_ledger = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "html":
            self.root = attributes
        elif tag == "table":
            self._in_ledger = attributes.get("id") == "ledger"
        elif tag == "td" and "cell" in (attributes.get("class") or "").split():
            self.cells.append(attributes)
        elif tag == "tr" and self._in_ledger and "data-state" in attributes:
            self.ledger_rows.append(attributes)


def parse(dom: str) -> _Elements:
    elements = _Elements()
    elements.feed(dom)

    return elements


def cell(elements: _Elements, route: str, sop_class: str,
         transfer_syntax: str) -> dict[str, str | None]:
    for attributes in elements.cells:
        if (attributes.get("data-route"), attributes.get("data-sop-class"),
                attributes.get("data-transfer-syntax")) == (route, sop_class, transfer_syntax):
            return attributes
    raise AssertionError(f"no matrix cell for {route}, {sop_class}, {transfer_syntax}")


def classes(attributes: dict[str, str | None]) -> set[str]:
    return set((attributes.get("class") or "").split())


def test_report_is_self_contained(pages: Pages) -> None:
    """The page loads nothing from elsewhere: no external script, style, image or font."""
    for page in (pages.run_page, pages.diff_page):
        text = page.read_text(encoding="utf-8")

        assert "<script src" not in text
        assert "<link" not in text
        assert "@import" not in text
        assert "url(" not in text
        assert 'src="http' not in text
        assert 'href="http' not in text


def test_run_report_loads_without_errors(pages: Pages) -> None:
    """Chromium runs the page's scripts to the end without an error."""
    require_chromium()
    elements = parse(dump_dom(pages.run_page))

    assert elements.root.get("data-report-ready") == "1"
    assert "data-js-error" not in elements.root


def test_run_report_matrix_cells(pages: Pages) -> None:
    """The matrix shows delivered and failed cells with counts and reasons."""
    require_chromium()
    elements = parse(dump_dom(pages.run_page))
    delivered = cell(elements, "ct -> new-pacs", "CTImageStorage", "JPEG2000Lossless")
    failed = cell(elements, "ct -> viewer", "CTImageStorage", "JPEG2000Lossless")
    enhanced_mr = cell(elements, "mr -> new-pacs", "EnhancedMRImageStorage",
                       "ExplicitVRLittleEndian")
    absent = cell(elements, "us -> old-pacs", "CTImageStorage", "JPEG2000Lossless")

    assert "delivered" in classes(delivered)
    assert "failed" in classes(failed)
    assert "viewer did not accept CTImageStorage with JPEG2000Lossless" in (failed["title"] or "")
    assert "failed" in classes(enhanced_mr)
    assert "empty" in classes(absent)
    rows = load_run(pages.original).rows
    routes = {(r.source, r.destination) for r in rows}
    columns = {(r.sop_class_uid, r.transfer_syntax_uid) for r in rows}
    assert len(elements.cells) == len(routes) * len(columns)


def test_run_report_ledger_filter_from_link(pages: Pages) -> None:
    """A ``#state=failed`` link hides every ledger row that did not fail."""
    require_chromium()
    elements = parse(dump_dom(pages.run_page, "#state=failed"))
    visible_rows = [row for row in elements.ledger_rows if "hidden" not in row]

    assert len(elements.ledger_rows) == 50
    assert len(visible_rows) == 16
    assert {row["data-state"] for row in visible_rows} == {"failed"}


def test_diff_report_marks_regressions(pages: Pages) -> None:
    """The diff page loads cleanly and colours the JPEG 2000 and Enhanced MR cells."""
    require_chromium()
    elements = parse(dump_dom(pages.diff_page))
    regression = cell(elements, "ct -> new-pacs", "CTImageStorage", "JPEG2000")
    fix = cell(elements, "mr -> new-pacs", "EnhancedMRImageStorage", "RLELossless")
    unchanged = cell(elements, "ct -> old-pacs", "CTImageStorage", "JPEG2000")

    assert elements.root.get("data-report-ready") == "1"
    assert "data-js-error" not in elements.root
    assert "change-regression" in classes(regression)
    assert "A: delivered 1/1" in (regression["title"] or "")
    assert "change-fix" in classes(fix)
    assert "change-unchanged" in classes(unchanged)


def test_report_screenshot(pages: Pages, tmp_path: Path) -> None:
    """Chromium renders the run report to a PNG."""
    require_chromium()
    screenshot = tmp_path / "report.png"
    result = chromium(pages.run_page.as_uri(), f"--screenshot={screenshot}",
                      "--window-size=1400,1800")

    assert result.returncode == 0, result.stderr[-2000:]
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_escapes_run_text(pages: Pages, tmp_path: Path) -> None:
    """Text from run files is escaped: a file name cannot inject markup."""
    run = tmp_path / "hostile"
    run.mkdir()
    for name in ("summary.json", "events.jsonl", "topology.yaml", "scenario.yaml"):
        shutil.copy(pages.original / name, run / name)
    rows = (pages.original / "ledger.jsonl").read_text(encoding="utf-8").splitlines()
    first = json.loads(rows[0])
    first["source_file"] = "<script>alert(1)</script>.dcm"
    (run / "ledger.jsonl").write_text("\n".join([json.dumps(first), *rows[1:]]) + "\n",
                                      encoding="utf-8")
    page = render_run_report(load_run(run))

    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;.dcm" in page


def test_report_cli_default_path(pages: Pages, tmp_path: Path) -> None:
    """Without ``--out`` the report goes to report.html in the run directory."""
    run = tmp_path / "run"
    shutil.copytree(pages.original, run, ignore=shutil.ignore_patterns("nodes", "corpus-copies"))
    result = rehearse_cli("report", run)

    assert result.returncode == 0, result.stderr
    assert (run / "report.html").is_file()
    assert str(run / "report.html") in result.stdout


def test_report_cli_invalid_input(pages: Pages, tmp_path: Path) -> None:
    """A wrong number of runs, or a path that is not a run, exits 2."""
    one_for_diff = rehearse_cli("report", "--diff", pages.original)
    not_a_run = rehearse_cli("report", tmp_path)

    assert one_for_diff.returncode == 2
    assert "expected 2" in one_for_diff.stderr
    assert not_a_run.returncode == 2
    assert str(tmp_path) in not_a_run.stderr


def test_diff_report_renders_without_events(pages: Pages, tmp_path: Path) -> None:
    """Runs without events.jsonl still compare and report, timing only from the ledger."""
    runs = []
    for source in (pages.original, pages.revised):
        run = tmp_path / source.name
        run.mkdir()
        for name in ("summary.json", "ledger.jsonl", "topology.yaml", "scenario.yaml"):
            shutil.copy(source / name, run / name)
        runs.append(load_run(run))
    diff = compare_runs(runs[0], runs[1])
    page = render_diff_report(diff)

    assert {t.measure for t in diff.timing} == {"delivery"}
    assert any("events.jsonl is missing" in note for note in diff.notes)
    assert "events.jsonl is missing" in page
    assert "Regressions: cells whose outcome got worse: 4" in page
