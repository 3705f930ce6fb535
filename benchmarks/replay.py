"""Replay benchmark: each corpus sent by five scenarios, timed, with peak memory per side.

Usage: .venv/bin/python benchmarks/replay.py [--quick] [--max-pdu BYTES] [--revision REV]
       [--json PATH] [--keep]

Corpora: the bundled corpus, built in a temporary REHEARSE_CACHE_DIR, and
a synthetic series of CT instances (512x512, 16-bit, explicit VR little
endian, about 0.5 MB each) written with pydicom into a temporary folder.
The scenarios are described in ``_scenarios.py``: direct, proxied,
proxied-in-process, simulator and dcmtk.

The scenarios take turns in each repetition, so a slow drift of the
machine spreads over all of them. Received files are deleted after each
run. Before each run, dirty pages are written back (sync), and the script
waits for a bounded time until other processes leave the CPUs idle.
The report is printed as Markdown; ``--json`` also writes every
measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from _corpora import write_ct_series
from _procs import BenchmarkError
from _report import (
    KIB_PER_MIB,
    MB,
    Measurement,
    cpu_table,
    failure_lines,
    machine_info,
    machine_lines,
    median_rate,
    table,
)
from _revision import reexec_from_revision
from _scenarios import (
    SCENARIOS,
    BenchCorpus,
    RunSettings,
    measure_once,
    prepare_corpus,
    work_folder,
)

LINK_COST_TARGET = 0.10
"""The proxied link may cost at most this fraction of the direct throughput."""


@dataclass(frozen=True)
class Settings:
    synthetic_count: int
    bundled_repeat: int
    synthetic_repeat: int
    max_pdu: int


QUICK = Settings(synthetic_count=100, bundled_repeat=2, synthetic_repeat=1, max_pdu=16382)
FULL = Settings(synthetic_count=1000, bundled_repeat=5, synthetic_repeat=3, max_pdu=16382)


def run_corpus(corpus: BenchCorpus, repeat: int, work: Path,
               settings: RunSettings) -> list[Measurement]:
    measurements: list[Measurement] = []
    for repetition in range(1, repeat + 1):
        for scenario in SCENARIOS:
            measurement = measure_once(corpus, scenario, repetition, work, settings)
            measurements.append(measurement)
            print(f"  {corpus.name} {scenario} #{repetition}: {measurement.elapsed_s:.2f} s, "
                  f"{measurement.mb_per_s:.1f} MB/s, other processes "
                  f"{measurement.extra['foreign_cpus']:.2f} CPUs", flush=True)

    return measurements


def link_verdict(measurements: list[Measurement]) -> list[str]:
    direct = median_rate(measurements, "direct")
    lines = []
    for scenario in ("proxied", "proxied-in-process"):
        rate = median_rate(measurements, scenario)
        if direct is None or rate is None:
            continue
        cost = 1 - rate / direct
        verdict = "meets" if cost <= LINK_COST_TARGET else "misses"
        lines.append(f"- {scenario}: costs {cost:.1%} of the direct throughput (median MB/s), "
                     f"so it {verdict} the {LINK_COST_TARGET:.0%} target")

    return lines


def simulator_lines(measurements: list[Measurement]) -> list[str]:
    lines = []
    for m in measurements:
        if m.scenario != "simulator":
            continue
        extra = m.extra
        hops = ", ".join(f"{link} {seconds:.2f} s" for link, seconds in extra["hops_s"].items())
        lines.append(
            f"- simulator #{m.repetition}: transfer {extra['transfer_s']:.2f} s ({hops}) "
            f"using {_cpu(extra['transfer_cpu_s'])} CPU s, "
            f"then {extra['after_transfer_s']:.2f} s to run.finished; associations "
            f"{extra['associations']}; RSS {_mib(extra['rss_before_send_kb'])} MiB before "
            f"sending, peak {_mib(extra['peak_rss_transfer_kb'])} MiB during the transfer and "
            f"{_mib(extra['peak_rss_after_transfer_kb'])} MiB after it"
        )

    return lines


def _cpu(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds:.2f}"


def _mib(kb: int | None) -> str:
    return "n/a" if kb is None else f"{kb / KIB_PER_MIB:.0f}"


def print_report(info: dict[str, object], measurements: list[Measurement], settings: Settings,
                 total_s: float) -> None:
    print()
    print("\n".join(machine_lines(info)))
    print(f"- Max PDU {settings.max_pdu} bytes on every side; whole benchmark {total_s:.0f} s")
    for corpus in ("bundled", "synthetic"):
        runs = [m for m in measurements if m.corpus == corpus]
        print(f"\n### {corpus}\n")
        print("\n".join(table(runs, SCENARIOS)))
        print()
        notes = link_verdict(runs) + simulator_lines(runs) + failure_lines(runs)
        print("\n".join(notes))
        print()
        print("\n".join(cpu_table(runs, SCENARIOS)))


def run_all(settings: Settings, work: Path) -> list[Measurement]:
    from simulator.corpus import bundled_corpus

    run_settings = RunSettings(settings.max_pdu)
    bundled = prepare_corpus("bundled", bundled_corpus(), work)
    print(f"bundled corpus: {len(bundled.plan.files)} instances, "
          f"{bundled.plan.total_bytes / MB:.1f} MB", flush=True)
    measurements = run_corpus(bundled, settings.bundled_repeat, work, run_settings)
    synthetic_root = write_ct_series(work / "synthetic", settings.synthetic_count)
    synthetic = prepare_corpus("synthetic", synthetic_root, work)
    print(f"synthetic corpus: {len(synthetic.plan.files)} instances, "
          f"{synthetic.plan.total_bytes / MB:.1f} MB", flush=True)
    measurements += run_corpus(synthetic, settings.synthetic_repeat, work, run_settings)

    return measurements


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"Send {QUICK.synthetic_count} synthetic instances, not "
                             f"{FULL.synthetic_count}, and repeat each scenario fewer times.")
    parser.add_argument("--max-pdu", type=int,
                        help=f"Maximum PDU every side receives, in bytes (default {FULL.max_pdu}).")
    parser.add_argument("--json", type=Path, help="Also write every measurement to this JSON file.")
    parser.add_argument("--keep", action="store_true",
                        help="Keep the temporary folder with the corpora and logs.")
    parser.add_argument("--revision", help="Measure simulator/ as of this git revision "
                                           "instead of the working tree.")

    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.revision:
        reexec_from_revision(args.revision)
    settings = QUICK if args.quick else FULL
    if args.max_pdu is not None:
        settings = replace(settings, max_pdu=args.max_pdu)
    info = machine_info()
    started = time.monotonic()
    with work_folder("rehearse-bench-", args.keep) as work:
        os.environ["REHEARSE_CACHE_DIR"] = str(work / "cache")
        measurements = run_all(settings, work)

    print_report(info, measurements, settings, time.monotonic() - started)
    if args.json is not None:
        document = {"machine": info, "settings": asdict(settings),
                    "measurements": [m.as_record() for m in measurements]}
        args.json.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    try:
        main()
    except BenchmarkError as exc:
        sys.exit(f"error: {exc}")
