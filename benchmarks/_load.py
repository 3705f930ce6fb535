"""CPU load from other processes, which skews every number on a shared machine.

``/proc/stat`` gives the CPU time the whole machine was busy; this
process and its reaped children account for part of it
(``getrusage``). The rest belongs to processes the benchmark did not
start. Before a measurement the scripts wait, for a bounded time, until
that load has dropped, and each measurement records how much of it there
was while it ran.
"""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass

CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
QUIET_LOAD_CPUS = 0.25
"""Other processes may use at most this many CPUs before a measurement starts."""
QUIET_WAIT_MAX_S = 30.0
QUIET_PROBE_S = 1.0


def _busy_s() -> float:
    """Return the CPU seconds the machine has been busy since boot, all CPUs together."""
    with open("/proc/stat", encoding="ascii") as stat:
        fields = [int(v) for v in stat.readline().split()[1:]]
    idle_ticks = fields[3] + fields[4]  # idle and iowait
    # guest and guest_nice (fields 8 and 9) are already counted in user and nice.
    total_ticks = sum(fields[:8])

    return (total_ticks - idle_ticks) / CLOCK_TICKS_PER_S


def _own_s() -> float:
    """Return the CPU seconds of this process and of every child it has reaped."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)

    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@dataclass
class LoadMeter:
    """CPU used by other processes between :meth:`start` and :meth:`stop`."""

    started_mono: float = 0.0
    busy_s: float = 0.0
    own_s: float = 0.0

    def start(self) -> LoadMeter:
        self.started_mono = time.monotonic()
        self.busy_s = _busy_s()
        self.own_s = _own_s()

        return self

    def foreign_cpus(self) -> float:
        """Return the average number of CPUs other processes used since start()."""
        elapsed_s = time.monotonic() - self.started_mono
        foreign_s = (_busy_s() - self.busy_s) - (_own_s() - self.own_s)

        return max(0.0, foreign_s / elapsed_s) if elapsed_s > 0 else 0.0


def wait_until_quiet() -> float:
    """Wait up to QUIET_WAIT_MAX_S for other load below QUIET_LOAD_CPUS; return the last load.

    NOTE: the CPU time of children that are still running is not in
    getrusage() yet, so call this only while no benchmark child runs.
    """
    deadline = time.monotonic() + QUIET_WAIT_MAX_S
    while True:
        meter = LoadMeter().start()
        time.sleep(QUIET_PROBE_S)
        load = meter.foreign_cpus()
        if load <= QUIET_LOAD_CPUS or time.monotonic() >= deadline:
            return load
