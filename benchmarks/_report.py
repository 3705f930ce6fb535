"""The machine a benchmark ran on, and the tables it prints.

Sizes are in MB of 10^6 bytes and memory in MiB of 2^20 bytes, because
throughput is conventionally decimal and /proc reports memory in KiB.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from _procs import REPO_DIR, STORESCU_PATH
from _revision import REVISION_ENV

MB = 1_000_000
KIB_PER_MIB = 1024


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()

    return platform.processor() or "unknown"


def _memory_total_mib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // KIB_PER_MIB

    return 0


def _dcmtk_version() -> str:
    try:
        output = subprocess.run([STORESCU_PATH, "--version"], capture_output=True, text=True,
                                timeout=10, check=False).stdout
    except OSError as exc:
        return f"not found ({exc.strerror})"
    first = next((line for line in output.splitlines() if line.startswith("$dcmtk")), "")

    return first.strip("$ ").removeprefix("dcmtk: ") or "unknown"


def _git_revision() -> str:
    extracted = os.environ.get(REVISION_ENV)
    if extracted:
        return f"{extracted[:12]} (simulator/ extracted with git archive)"

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(REPO_DIR), *args], capture_output=True,
                              text=True, timeout=10, check=False).stdout.strip()

    revision = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "simulator")

    return f"{revision} plus uncommitted changes in simulator/" if dirty else revision


def machine_info() -> dict[str, Any]:
    return {
        "cpu": _cpu_model(),
        "cpus": os.cpu_count(),
        "memory_mib": _memory_total_mib(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "pydicom": metadata.version("pydicom"),
        "pynetdicom": metadata.version("pynetdicom"),
        "dcmtk": _dcmtk_version(),
        "revision": _git_revision(),
        "command": " ".join([os.path.relpath(sys.executable, REPO_DIR), *sys.argv]),
    }


def machine_lines(info: dict[str, Any]) -> list[str]:
    machine = (f"- CPU: {info['cpu']}, {info['cpus']} logical CPUs; "
               f"memory {info['memory_mib']} MiB; Linux {info['kernel']}")
    versions = (f"- Python {info['python']}, pydicom {info['pydicom']}, "
                f"pynetdicom {info['pynetdicom']}, DCMTK {info['dcmtk']}")

    return [machine, versions, f"- Revision {info['revision']}", f"- Command: `{info['command']}`"]


@dataclass
class Measurement:
    """One transfer of a whole corpus by one scenario."""

    corpus: str
    scenario: str
    repetition: int
    instances: int
    size_bytes: int
    elapsed_s: float
    """The time throughput is computed from; each scenario documents what it spans."""
    sender_peak_rss_kb: int | None
    receiver_peak_rss_kb: int | None
    proxy_peak_rss_kb: int | None = None
    cpu_s: dict[str, float] = field(default_factory=dict)
    """User plus system CPU seconds per process: sender, receiver, proxy or simulator."""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def instances_per_s(self) -> float:
        return self.instances / self.elapsed_s

    @property
    def mb_per_s(self) -> float:
        return self.size_bytes / MB / self.elapsed_s

    def as_record(self) -> dict[str, Any]:
        return {**asdict(self), "instances_per_s": self.instances_per_s, "mb_per_s": self.mb_per_s}


def _mib(kb: int | None) -> str:
    return "n/a" if kb is None else f"{kb / KIB_PER_MIB:.0f}"


def _spread(values: Sequence[float], digits: int) -> str:
    median = statistics.median(values)
    if len(values) == 1:
        return f"{median:.{digits}f}"

    return f"{median:.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def _max_or_none(values: Sequence[int | None]) -> int | None:
    present = [v for v in values if v is not None]
    return max(present) if present else None


def table(measurements: Sequence[Measurement], scenarios: Sequence[str]) -> list[str]:
    """Return a Markdown table: median (min-max) per scenario, peak RSS as the maximum seen.

    The last column is the highest CPU load of other processes during a run.
    """
    header = ("| scenario | runs | instances | MB | time (s) | instances/s | MB/s "
              "| sender peak RSS (MiB) | receiver peak RSS (MiB) | proxy peak RSS (MiB) "
              "| other load (CPUs, max) |")
    lines = [header, "|---|---|---|---|---|---|---|---|---|---|---|"]
    for scenario in scenarios:
        runs = [m for m in measurements if m.scenario == scenario]
        if not runs:
            continue
        lines.append(
            f"| {scenario} | {len(runs)} | {runs[0].instances} | {runs[0].size_bytes / MB:.1f} "
            f"| {_spread([m.elapsed_s for m in runs], 2)} "
            f"| {_spread([m.instances_per_s for m in runs], 1)} "
            f"| {_spread([m.mb_per_s for m in runs], 1)} "
            f"| {_mib(_max_or_none([m.sender_peak_rss_kb for m in runs]))} "
            f"| {_mib(_max_or_none([m.receiver_peak_rss_kb for m in runs]))} "
            f"| {_mib(_max_or_none([m.proxy_peak_rss_kb for m in runs]))} "
            f"| {max(m.extra.get('foreign_cpus', 0.0) for m in runs):.2f} |"
        )

    return lines


def cpu_table(measurements: Sequence[Measurement], scenarios: Sequence[str]) -> list[str]:
    """Return a Markdown table of the median CPU seconds of each process, and per MB sent."""
    lines = ["| scenario | process | CPU s | CPU ms per MB |", "|---|---|---|---|"]
    for scenario in scenarios:
        runs = [m for m in measurements if m.scenario == scenario]
        if not runs:
            continue
        for process in runs[0].cpu_s:
            seconds = statistics.median(m.cpu_s[process] for m in runs)
            per_mb_ms = 1000 * seconds / (runs[0].size_bytes / MB)
            lines.append(f"| {scenario} | {process} | {seconds:.2f} | {per_mb_ms:.1f} |")

    return lines


def failure_lines(measurements: Sequence[Measurement]) -> list[str]:
    """Return one line per failed attempt that a later attempt replaced."""
    return [f"- {m.corpus} {m.scenario} #{m.repetition}, {error}"
            for m in measurements for error in m.extra.get("failed_attempts", [])]


def median_rate(measurements: Sequence[Measurement], scenario: str) -> float | None:
    rates = [m.mb_per_s for m in measurements if m.scenario == scenario]
    return statistics.median(rates) if rates else None
