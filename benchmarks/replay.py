"""Replay benchmark: one corpus sent by five scenarios, timed, with peak memory per side.

Usage: .venv/bin/python benchmarks/replay.py [--quick] [--json PATH]

Corpora: the bundled corpus, built in a temporary REHEARSE_CACHE_DIR, and
a synthetic series of CT instances (512x512, 16-bit, explicit VR little
endian, about 0.5 MB each) written with pydicom into a temporary folder.

Scenarios, each a Storage SCU sending every file of the corpus on one
association to a Storage SCP that writes each file to disk:

- direct: pynetdicom SCU process to pynetdicom SCP process.
- proxied: the same through a LinkProxy in a third process, on an asyncio
  loop in a second thread of that process.
- proxied-in-process: the same, with the LinkProxy on a thread of the SCU
  process, which shares the GIL with the sender as the simulator's links
  share it with its nodes. Sender RSS includes the proxy here.
- simulator: ``rehearse run`` of modality -> router -> PACS, every link
  through a proxy, all in one process. Its time is run.started to
  run.finished, so it includes start-up, routing, the integrity check of
  every delivered file and the summary.
- dcmtk: DCMTK storescu to storescp, with TCP_NODELAY=1.

For the Python senders the time spans associate() to the end of release();
for storescu it spans its "Requesting Association" to "Releasing
Association" log lines. Every run ends with a check that every instance
arrived; a run that lost one raises instead of reporting a number.

The scenarios take turns in each repetition, so a slow drift of the
machine spreads over all of them. Received files are deleted after each
run, and dirty pages are written back (sync) before each run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from _corpora import plan_for, write_ct_series, write_dcmtk_config
from _dcmtk import run_storescu, start_storescp
from _plan import Plan
from _procs import BenchmarkError, Child, worker
from _report import MB, Measurement, machine_info, machine_lines, median_rate, table
from _sim import run_simulator, write_site

SCENARIOS = ("direct", "proxied", "proxied-in-process", "simulator", "dcmtk")
LINK_COST_TARGET = 0.10
"""The proxied link may cost at most this fraction of the direct throughput."""

START_TIMEOUT_S = 60.0
TRANSFER_TIMEOUT_S = 900.0


@dataclass(frozen=True)
class Settings:
    synthetic_count: int
    bundled_repeat: int
    synthetic_repeat: int
    max_pdu: int


QUICK = Settings(synthetic_count=100, bundled_repeat=2, synthetic_repeat=1, max_pdu=16382)
FULL = Settings(synthetic_count=1000, bundled_repeat=5, synthetic_repeat=3, max_pdu=16382)


@dataclass(frozen=True)
class Corpus:
    name: str
    plan: Plan
    plan_path: Path
    dcmtk_config: Path


def _check_received(corpus: Corpus, scenario: str, received: int) -> None:
    expected = len(corpus.plan.files)
    if received != expected:
        raise BenchmarkError(
            f"{scenario} on the {corpus.name} corpus stored {received} of {expected} instances"
        )


def _common_args(settings: Settings) -> list[str]:
    return ["--max-pdu", str(settings.max_pdu), "--timeout-s", str(TRANSFER_TIMEOUT_S)]


def measure_pynetdicom(corpus: Corpus, scenario: str, repetition: int, work: Path,
                       settings: Settings) -> Measurement:
    """Run direct, proxied or proxied-in-process once."""
    children: list[Child] = []
    try:
        scp = worker("scp", "scp", ["--plan", str(corpus.plan_path), "--out-dir", str(work / "out"),
                                    *_common_args(settings)], work)
        children.append(scp)
        port = scp.message("ready", START_TIMEOUT_S)["port"]
        proxy = None
        scu_extra: list[str] = []
        if scenario == "proxied":
            proxy = worker("proxy", "proxy", ["--upstream-port", str(port), "--events",
                                              str(work / "proxy-events.jsonl"),
                                              *_common_args(settings)], work)
            children.append(proxy)
            port = proxy.message("ready", START_TIMEOUT_S)["port"]
        elif scenario == "proxied-in-process":
            scu_extra = ["--in-process-proxy", "--events", str(work / "proxy-events.jsonl")]
        scu = worker("scu", "scu", ["--plan", str(corpus.plan_path), "--port", str(port),
                                    *scu_extra, *_common_args(settings)], work)
        children.append(scu)
        sent = scu.message("result", TRANSFER_TIMEOUT_S)
        scu.wait(START_TIMEOUT_S)
        proxy_peak = None
        if proxy is not None:
            proxy.send_line("stop")
            proxy_peak = proxy.message("result", START_TIMEOUT_S)["peak_rss_kb"]
            proxy.wait(START_TIMEOUT_S)
        scp.send_line("stop")
        received = scp.message("result", START_TIMEOUT_S)
        scp.wait(START_TIMEOUT_S)
    finally:
        for child in children:
            child.kill_quietly()
    if sent["failures"]:
        raise BenchmarkError(f"{scenario}: {len(sent['failures'])} stores failed: {sent['failures'][:3]}")
    _check_received(corpus, scenario, received["received"])

    return Measurement(corpus.name, scenario, repetition, received["received"],
                       corpus.plan.total_bytes, sent["elapsed_s"], sent["peak_rss_kb"],
                       received["peak_rss_kb"], proxy_peak)


def measure_simulator(corpus: Corpus, scenario: str, repetition: int, work: Path,
                      settings: Settings) -> Measurement:
    topology, scenario_path = write_site(work, corpus.plan, settings.max_pdu, None,
                                         TRANSFER_TIMEOUT_S)
    run = run_simulator(work, topology, scenario_path, TRANSFER_TIMEOUT_S + 60)
    if not run.expectations_held or run.delivered != run.expected:
        raise BenchmarkError(
            f"simulator on the {corpus.name} corpus delivered {run.delivered} of {run.expected}; "
            f"see {work / 'run' / 'report.md'}"
        )
    _check_received(corpus, scenario, run.delivered)
    peak = run.process.peak_rss_kb
    extra = {
        "transfer_s": run.transfer_s,
        "verify_s": run.verify_s,
        "associations": run.associations,
        "rss_before_send_kb": run.rss_before_send_kb,
        "peak_rss_transfer_kb": run.peak_rss_transfer_kb,
        "peak_rss_after_transfer_kb": run.peak_rss_after_transfer_kb,
        "process_wall_s": run.process.wall_s,
    }

    return Measurement(corpus.name, scenario, repetition, run.delivered, corpus.plan.total_bytes,
                       run.run_s, peak, peak, None, extra)


def measure_dcmtk(corpus: Corpus, scenario: str, repetition: int, work: Path,
                  settings: Settings) -> Measurement:
    scp, port = start_storescp(corpus.dcmtk_config, work / "out", settings.max_pdu, work)
    try:
        sent = run_storescu(corpus.dcmtk_config, corpus.plan, port, settings.max_pdu, work,
                            TRANSFER_TIMEOUT_S)
    finally:
        received = scp.stop()
    stored = sum(1 for _ in (work / "out").iterdir())
    _check_received(corpus, scenario, min(stored, sent.succeeded))

    return Measurement(corpus.name, scenario, repetition, stored, corpus.plan.total_bytes,
                       sent.association_s, sent.process.peak_rss_kb, received.peak_rss_kb, None,
                       {"process_wall_s": sent.process.wall_s})


MEASURES: dict[str, Callable[[Corpus, str, int, Path, Settings], Measurement]] = {
    "direct": measure_pynetdicom,
    "proxied": measure_pynetdicom,
    "proxied-in-process": measure_pynetdicom,
    "simulator": measure_simulator,
    "dcmtk": measure_dcmtk,
}


def run_corpus(corpus: Corpus, repeat: int, work: Path, settings: Settings) -> list[Measurement]:
    measurements: list[Measurement] = []
    for repetition in range(1, repeat + 1):
        for scenario in SCENARIOS:
            run_dir = work / f"{corpus.name}-{scenario}-{repetition}"
            run_dir.mkdir(parents=True)
            # Write back the previous run's files now, not during this run.
            os.sync()
            measurement = MEASURES[scenario](corpus, scenario, repetition, run_dir, settings)
            measurements.append(measurement)
            print(f"  {corpus.name} {scenario} #{repetition}: {measurement.elapsed_s:.2f} s, "
                  f"{measurement.mb_per_s:.1f} MB/s", flush=True)
            _remove_received(run_dir)

    return measurements


def _remove_received(run_dir: Path) -> None:
    for name in ("out", "run"):
        shutil.rmtree(run_dir / name, ignore_errors=True)


def prepare_corpus(name: str, root: Path, work: Path) -> Corpus:
    plan = plan_for(root)
    plan_path = plan.write(work / f"{name}-plan.json")
    config = write_dcmtk_config(work / f"{name}-dcmtk.cfg", plan.pairs)

    return Corpus(name, plan, plan_path, config)


def link_verdict(measurements: list[Measurement], corpus: str) -> list[str]:
    runs = [m for m in measurements if m.corpus == corpus]
    direct = median_rate(runs, "direct")
    lines = []
    for scenario in ("proxied", "proxied-in-process"):
        rate = median_rate(runs, scenario)
        if direct is None or rate is None:
            continue
        cost = 1 - rate / direct
        verdict = "meets" if cost <= LINK_COST_TARGET else "misses"
        lines.append(f"- {scenario}: {cost:+.1%} throughput cost against direct (median MB/s); "
                     f"{verdict} the {LINK_COST_TARGET:.0%} target")

    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK.synthetic_count} synthetic instances and fewer repetitions.")
    parser.add_argument("--json", type=Path, help="Also write every measurement to this JSON file.")
    parser.add_argument("--keep", action="store_true", help="Keep the temporary folder and logs.")
    args = parser.parse_args()
    settings = QUICK if args.quick else FULL
    info = machine_info()
    work = Path(tempfile.mkdtemp(prefix="rehearse-bench-"))
    os.environ["REHEARSE_CACHE_DIR"] = str(work / "cache")
    started = time.monotonic()
    measurements: list[Measurement] = []
    keep = args.keep
    try:
        from simulator.corpus import bundled_corpus

        bundled = prepare_corpus("bundled", bundled_corpus(), work)
        print(f"bundled corpus: {len(bundled.plan.files)} instances, "
              f"{bundled.plan.total_bytes / MB:.1f} MB", flush=True)
        measurements += run_corpus(bundled, settings.bundled_repeat, work, settings)
        synthetic_root = write_ct_series(work / "synthetic", settings.synthetic_count)
        synthetic = prepare_corpus("synthetic", synthetic_root, work)
        print(f"synthetic corpus: {len(synthetic.plan.files)} instances, "
              f"{synthetic.plan.total_bytes / MB:.1f} MB", flush=True)
        measurements += run_corpus(synthetic, settings.synthetic_repeat, work, settings)
    except BaseException:
        keep = True
        raise
    finally:
        if keep:
            print(f"kept {work} with the logs of every run", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    print_report(info, measurements, settings, time.monotonic() - started)
    if args.json is not None:
        document = {"machine": info, "settings": asdict(settings),
                    "measurements": [m.as_record() for m in measurements]}
        args.json.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")


def print_report(info: dict[str, object], measurements: list[Measurement], settings: Settings,
                 total_s: float) -> None:
    print()
    print("\n".join(machine_lines(info)))
    print(f"- Max PDU {settings.max_pdu} bytes on every side; total benchmark time {total_s:.0f} s")
    for corpus in ("bundled", "synthetic"):
        runs = [m for m in measurements if m.corpus == corpus]
        print(f"\n### {corpus}\n")
        print("\n".join(table(runs, SCENARIOS)))
        print()
        print("\n".join(link_verdict(measurements, corpus)))
        for m in runs:
            if m.scenario == "simulator":
                extra = m.extra
                print(f"- simulator #{m.repetition}: transfer {extra['transfer_s']:.2f} s, "
                      f"after transfer {extra['verify_s']:.2f} s, associations "
                      f"{extra['associations']}, RSS before sending "
                      f"{(extra['rss_before_send_kb'] or 0) / 1024:.0f} MiB, peak during transfer "
                      f"{(extra['peak_rss_transfer_kb'] or 0) / 1024:.0f} MiB, peak after "
                      f"{(extra['peak_rss_after_transfer_kb'] or 0) / 1024:.0f} MiB")


if __name__ == "__main__":
    try:
        main()
    except BenchmarkError as exc:
        sys.exit(f"error: {exc}")
