"""The bundled network scenarios: a flaky WAN, an idle-dropping firewall, a PACS down in a cutover."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from simulator.runner import RunOptions, RunResult, run_rehearsal
from simulator.scenario import load_scenario
from simulator.topology import load_topology

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _corpus_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REHEARSE_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "corpus-cache"))


def rehearse(topology: str, scenario_path: Path, tmp_path: Path) -> RunResult:
    topology_path = ROOT / "topologies" / topology
    loaded = load_topology(topology_path)
    scenario = load_scenario(scenario_path, loaded)

    return run_rehearsal(loaded, scenario, RunOptions(topology_path, scenario_path, tmp_path / "run"))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def events(result: RunResult, kind: str) -> list[dict[str, Any]]:
    return [e for e in read_jsonl(result.run_dir / "events.jsonl") if e["kind"] == kind]


def test_flaky_wan_retries_through_resets(tmp_path: Path) -> None:
    """Resets on the WAN are blamed on the link and retried until every object arrives."""
    result = rehearse("offsite-archive.yaml", ROOT / "scenarios" / "flaky-wan.yaml", tmp_path)

    assert result.expectations_held
    added = {e["fault"]: e for e in events(result, "link.fault_added")}
    assert set(added) == {"wan-latency", "wan-bandwidth", "wan-resets"}
    assert added["wan-resets"]["toxicity"] == 0.3
    retries = events(result, "forward.retry")
    assert retries, "the seed gives at least one reset; a change of seed may need a new one"
    for retry in retries:
        assert retry["failure_kind"] == "connection-reset"
        assert retry["side"] == "link"
        assert retry["hop"] == "wan"
        assert retry["permanent"] is False


def test_flaky_wan_replays_with_same_seed(tmp_path: Path) -> None:
    """The same seed draws the same connections for each fault, so a failing run replays."""
    first = rehearse("offsite-archive.yaml", ROOT / "scenarios" / "flaky-wan.yaml", tmp_path / "a")
    second = rehearse("offsite-archive.yaml", ROOT / "scenarios" / "flaky-wan.yaml", tmp_path / "b")

    def draws(result: RunResult) -> list[tuple[str, int, str]]:
        applied = [(e["fault"], e["conn_id"], "applied") for e in events(result, "link.fault_applied")]
        skipped = [(e["fault"], e["conn_id"], "skipped") for e in events(result, "link.fault_skipped")]
        return sorted(applied + skipped)

    assert draws(first) == draws(second)


def test_idle_firewall_blackholes(tmp_path: Path) -> None:
    """A firewall that forgets idle connections leaves the sender waiting, blamed on the link."""
    result = rehearse("offsite-archive.yaml", ROOT / "scenarios" / "idle-firewall.yaml", tmp_path)

    assert result.expectations_held
    blackholed = events(result, "link.firewall_blackholed")
    assert blackholed
    assert all(e["link"] == "ct->router" for e in blackholed)
    rows = read_jsonl(result.run_dir / "ledger.jsonl")
    failed = [r for r in rows if r["state"] == "failed"]
    assert failed
    for row in failed:
        assert row["failure"]["failure_kind"] == "connection-blackholed"
        assert row["failure"]["side"] == "link"
    delivered = [r for r in rows if r["state"] == "delivered"]
    assert delivered, "the first image of each association arrives before the pause"


def test_pacs_down_during_cutover(tmp_path: Path) -> None:
    """The new PACS down across the go-live wave: refusals blamed on the down link, retries exhausted."""
    source = (ROOT / "scenarios" / "pacs-down-during-cutover.yaml").read_text(encoding="utf-8")
    # The bundled scenario keeps the PACS down for 30 s; 3 s shows the same.
    scaled = source.replace("at_s: 30,", "at_s: 3,").replace("{action: hold, at_s: 31}",
                                                             "{action: hold, at_s: 4}")
    assert scaled != source
    scenario_path = tmp_path / "pacs-down.yaml"
    scenario_path.write_text(scaled, encoding="utf-8")

    result = rehearse("hospital-cutover.yaml", scenario_path, tmp_path)

    assert result.expectations_held
    refused = [r for r in read_jsonl(result.run_dir / "ledger.jsonl")
               if r["destination"] == "new-pacs" and r["state"] == "failed"]
    assert refused
    for row in refused:
        assert row["failure"]["failure_kind"] == "connection-refused"
        assert row["failure"]["side"] == "link"
        assert row["failure"]["detail"]["fault"] == "new-pacs-down"
    removed = events(result, "link.fault_removed")
    assert [e["fault"] for e in removed] == ["new-pacs-down"]
    assert len(events(result, "forward.retry")) >= len(refused)
