"""Large-object benchmark: peak memory while one ~500 MB object is sent and stored.

Usage: .venv/bin/python benchmarks/large_object.py [--size-mb N] [--repeat N] [--max-pdu BYTES]
       [--revision REV] [--json PATH] [--keep]

The object is a multi-frame 512x512 16-bit secondary capture image in
explicit VR little endian. pydicom writes its header and the pixel data
is appended in pieces, so the object is never in memory whole. It is sent
``--repeat`` times by each scenario of ``_scenarios.py`` but
proxied-in-process, the scenarios taking turns.

The target: with a bounded maximum PDU, a receiver streams the object
from the wire to disk and stays within about TARGET_RECEIVER_GROWTH_MB
of its RSS before the transfer. Senders are expected to grow more,
because pynetdicom puts every P-DATA-TF of a message on its send queue
before the first one leaves. The simulator runs every node in one
process, so its figure is reported per phase: each hop, and the time
after the last instance was stored (integrity checks and summary).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

from _corpora import write_large_object
from _procs import BenchmarkError
from _report import KIB_PER_MIB, MB, Measurement, failure_lines, machine_info, machine_lines
from _revision import reexec_from_revision
from _scenarios import RunSettings, measure_once, prepare_corpus, work_folder

SCENARIOS = ("direct", "proxied", "simulator", "dcmtk")
TARGET_RECEIVER_GROWTH_MB = 40
DEFAULT_SIZE_MB = 500
DEFAULT_REPEAT = 2
DEFAULT_MAX_PDU = 16382


def _mib(kb: int | None) -> str:
    return "n/a" if kb is None else f"{kb / KIB_PER_MIB:.0f}"


def _growth(peak_kb: int | None, before_kb: int | None) -> str:
    if peak_kb is None or before_kb is None:
        return "n/a"

    return f"+{(peak_kb - before_kb) / KIB_PER_MIB:.0f}"


def table(measurements: list[Measurement]) -> list[str]:
    header = ("| scenario | time (s) | MB/s | sender RSS before / peak (MiB) | sender growth "
              "| receiver RSS before / peak (MiB) | receiver growth | proxy peak (MiB) "
              "| other load (CPUs) |")
    lines = [header, "|---|---|---|---|---|---|---|---|---|"]
    for m in measurements:
        if m.scenario == "simulator":
            before = m.extra["rss_before_send_kb"]
            lines.append(
                f"| simulator #{m.repetition} (one process) | {m.elapsed_s:.1f} | {m.mb_per_s:.1f} "
                f"| {_mib(before)} / {_mib(m.sender_peak_rss_kb)} "
                f"| {_growth(m.sender_peak_rss_kb, before)} | same process | | n/a "
                f"| {m.extra['foreign_cpus']:.2f} |"
            )
            continue
        sender_before = m.extra.get("sender_rss_before_kb")
        receiver_before = m.extra.get("receiver_rss_ready_kb")
        lines.append(
            f"| {m.scenario} #{m.repetition} | {m.elapsed_s:.1f} | {m.mb_per_s:.1f} "
            f"| {_mib(sender_before)} / {_mib(m.sender_peak_rss_kb)} "
            f"| {_growth(m.sender_peak_rss_kb, sender_before)} "
            f"| {_mib(receiver_before)} / {_mib(m.receiver_peak_rss_kb)} "
            f"| {_growth(m.receiver_peak_rss_kb, receiver_before)} "
            f"| {_mib(m.proxy_peak_rss_kb)} | {m.extra['foreign_cpus']:.2f} |"
        )

    return lines


def simulator_lines(measurements: list[Measurement]) -> list[str]:
    lines = []
    for m in measurements:
        if m.scenario != "simulator":
            continue
        extra = m.extra
        for link, seconds in extra["hops_s"].items():
            peak = extra["peak_rss_by_hop_kb"].get(link)
            lines.append(f"- simulator #{m.repetition} hop {link}: {seconds:.1f} s, "
                         f"peak RSS {_mib(peak)} MiB")
        lines.append(
            f"- simulator #{m.repetition} after the transfer: "
            f"{extra['after_transfer_s']:.1f} s to run.finished, "
            f"peak RSS {_mib(extra['peak_rss_after_transfer_kb'])} MiB; whole run "
            f"{m.elapsed_s:.1f} s, process peak {_mib(m.sender_peak_rss_kb)} MiB; "
            f"associations {extra['associations']}"
        )

    return lines


def receiver_verdict(measurements: list[Measurement]) -> list[str]:
    lines = []
    for m in measurements:
        before = m.extra.get("receiver_rss_ready_kb")
        peak = m.receiver_peak_rss_kb
        if m.scenario not in ("direct", "proxied") or before is None or peak is None:
            continue
        growth_mb = (peak - before) * 1024 / MB
        verdict = "within" if growth_mb <= TARGET_RECEIVER_GROWTH_MB else "above"
        lines.append(f"- {m.scenario} #{m.repetition}: the pynetdicom SCP grew {growth_mb:.0f} MB, "
                     f"{verdict} the {TARGET_RECEIVER_GROWTH_MB} MB target")

    return lines


def run_all(size_mb: int, repeat: int, max_pdu: int, work: Path) -> list[Measurement]:
    path = write_large_object(work / "large" / "large.dcm", size_mb * MB)
    corpus = prepare_corpus("large", path.parent, work)
    print(f"large object: {corpus.plan.total_bytes / MB:.1f} MB", flush=True)
    settings = RunSettings(max_pdu)
    measurements = []
    for repetition, scenario in itertools.product(range(1, repeat + 1), SCENARIOS):
        measurement = measure_once(corpus, scenario, repetition, work, settings)
        measurements.append(measurement)
        print(f"  {scenario} #{repetition}: {measurement.elapsed_s:.1f} s, peak RSS sender "
              f"{_mib(measurement.sender_peak_rss_kb)} MiB, receiver "
              f"{_mib(measurement.receiver_peak_rss_kb)} MiB, other processes "
              f"{measurement.extra['foreign_cpus']:.2f} CPUs", flush=True)

    return measurements


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=DEFAULT_SIZE_MB,
                        help="Size of the object in MB of 10^6 bytes.")
    parser.add_argument("--repeat", type=int, default=DEFAULT_REPEAT,
                        help="Times each scenario sends the object.")
    parser.add_argument("--max-pdu", type=int, default=DEFAULT_MAX_PDU,
                        help="Maximum PDU every side receives, in bytes.")
    parser.add_argument("--json", type=Path, help="Also write every measurement to this JSON file.")
    parser.add_argument("--keep", action="store_true",
                        help="Keep the temporary folder with the object and logs.")
    parser.add_argument("--revision", help="Measure simulator/ as of this git revision "
                                           "instead of the working tree.")

    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.revision:
        reexec_from_revision(args.revision)
    info = machine_info()
    started = time.monotonic()
    with work_folder("rehearse-bench-large-", args.keep) as work:
        measurements = run_all(args.size_mb, args.repeat, args.max_pdu, work)

    print()
    print("\n".join(machine_lines(info)))
    print(f"- Max PDU {args.max_pdu} bytes on every side; whole benchmark "
          f"{time.monotonic() - started:.0f} s\n")
    print("\n".join(table(measurements)))
    print()
    notes = (receiver_verdict(measurements) + simulator_lines(measurements)
             + failure_lines(measurements))
    print("\n".join(notes))
    if args.json is not None:
        document = {"machine": info, "measurements": [m.as_record() for m in measurements]}
        args.json.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    try:
        main()
    except BenchmarkError as exc:
        sys.exit(f"error: {exc}")
