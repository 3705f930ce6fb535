"""DCMTK's storescu sending to DCMTK's storescp, as the reference for the Python paths.

Both binaries are called by absolute path, because pynetdicom installs its
own ``storescp`` and ``storescu`` apps into the venv. Both get
TCP_NODELAY=1 in their environment. storescp listens on all interfaces, and
storescu sends to it over 127.0.0.1 only.

storescp runs with ``+B`` (bit-preserving): it writes the received data set
to the file as it arrives instead of building it in memory, which is what
the pynetdicom SCP does with chunked receiving.

The association time of storescu is read from its verbose log: the time the
line "Requesting Association" was read to the time "Releasing Association"
was read. Reading file headers before the association is outside it, as it
is for the pynetdicom sender.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from _plan import Plan
from _procs import (
    LOOPBACK_HOST,
    STORESCP_PATH,
    STORESCU_PATH,
    BenchmarkError,
    Child,
    Finished,
    dcmtk_environment,
    free_port,
    wait_for_port,
)

START_TIMEOUT_S = 30.0
GNU_TIME_PATH = Path("/usr/bin/time")


def start_storescp(config: Path, out_dir: Path, max_pdu: int, log_dir: Path) -> tuple[Child, int]:
    """Start storescp with the BenchSCP profile of ``config``; return it and its port."""
    out_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    argv: list[str | Path] = [
        STORESCP_PATH, "--config-file", config, "BenchSCP", "--output-directory", out_dir,
        "--bit-preserving", "--max-pdu", str(max_pdu), "--aetitle", "BENCH_SCP", str(port),
    ]
    child = Child("storescp", argv, log_dir / "storescp.log", env=dcmtk_environment(),
                  merge_stderr=True).start()
    wait_for_port(port, time.monotonic() + START_TIMEOUT_S, child)

    return child, port


@dataclass
class StorescuRun:
    association_s: float
    succeeded: int
    process: Finished


def run_storescu(config: Path, plan: Plan, port: int, max_pdu: int, log_dir: Path,
                 timeout_s: float) -> StorescuRun:
    """Send every file of ``plan`` on one association and time it from the verbose log."""
    peak_path = log_dir / "storescu.time"
    # GNU time's %M is the ru_maxrss of storescu alone, because time is small when it forks.
    argv: list[str | Path] = [
        GNU_TIME_PATH, "--format", "%M %U %S", "--output", peak_path,
        STORESCU_PATH, "--verbose", "--config-file", config, "BenchSCU", "--no-halt",
        "--aetitle", "BENCH_SCU", "--call", "BENCH_SCP", "--max-pdu", str(max_pdu),
        LOOPBACK_HOST, str(port), *plan.files,
    ]
    child = Child("storescu", argv, log_dir / "storescu.log", env=dcmtk_environment(),
                  merge_stderr=True).start()
    try:
        process = child.wait(timeout_s)
    finally:
        child.kill_quietly()
    requested = [t for t, line in child.lines if "Requesting Association" in line]
    released = [t for t, line in child.lines if "Releasing Association" in line]
    succeeded = sum(1 for _, line in child.lines if "Received Store Response (Success)" in line)
    if process.returncode != 0 or not requested or not released:
        raise BenchmarkError(
            f"storescu exited with {process.returncode} without a full association; "
            f"see {child.log_path}"
        )

    peak_kb, user_s, system_s = peak_path.read_text().split()[-3:]
    process.peak_rss_kb = int(peak_kb)
    process.cpu_s = float(user_s) + float(system_s)

    return StorescuRun(released[-1] - requested[0], succeeded, process)
