"""Child processes of the benchmarks: start one, talk to it, and measure its memory.

Every side of a measured transfer runs in its own process, so that its
peak resident set size (RSS) belongs to that side alone. A sampler thread
reads ``VmRSS`` and ``VmHWM`` (the peak RSS) from ``/proc/PID/status``
every RSS_SAMPLE_INTERVAL_S. The peak reported is the last ``VmHWM`` read,
so a new peak in the last interval before the child exits is missed. The
Python workers therefore also report their own ``VmHWM`` just before they
exit. ``ru_maxrss`` from ``wait4()`` is not used, because on Linux it also
counts the memory the child shared with this process between fork and
exec, which hides a small child's peak behind the parent's size.

``time.monotonic()`` is CLOCK_MONOTONIC, the same clock in every process,
so the samples line up with the ``t_mono`` of simulator events.

Python workers (``_worker.py``) print one JSON object per line on stdout;
other lines on stdout are kept as log text.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

LOOPBACK_HOST = "127.0.0.1"
BENCHMARKS_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCHMARKS_DIR.parent
WORKER_PATH = BENCHMARKS_DIR / "_worker.py"
STORESCP_PATH = Path("/usr/bin/storescp")
STORESCU_PATH = Path("/usr/bin/storescu")
REHEARSE_PATH = Path(sys.executable).parent / "rehearse"

RSS_SAMPLE_INTERVAL_S = 0.02
CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
STOP_GRACE_S = 10.0


class BenchmarkError(Exception):
    """Root of the errors the benchmark scripts raise."""


def free_port() -> int:
    """Return a TCP port free on 127.0.0.1 now; another process may take it before use."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK_HOST, 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, deadline_s: float, child: Child) -> None:
    """Wait until ``port`` on 127.0.0.1 accepts a TCP connection, or raise."""
    while time.monotonic() < deadline_s:
        child.raise_if_exited("while starting")
        try:
            with socket.create_connection((LOOPBACK_HOST, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    msg = f"{child.name} did not listen on port {port} in time; see {child.log_path}"
    raise BenchmarkError(msg)


def dcmtk_environment() -> dict[str, str]:
    # DCMTK 3.6.7 disables Nagle's algorithm only when this variable is set.
    return {**os.environ, "TCP_NODELAY": "1"}


@dataclass
class Finished:
    """Exit status and resource use of a finished child process."""

    returncode: int
    peak_rss_kb: int
    """The last VmHWM sampled, in KiB."""
    wall_s: float
    cpu_s: float
    """User plus system CPU time from the last /proc/PID/stat read, in seconds."""
    samples: list[tuple[float, int]] = field(default_factory=list)
    """(time.monotonic(), VmRSS in KiB) pairs, taken every RSS_SAMPLE_INTERVAL_S."""
    cpu_samples: list[tuple[float, float]] = field(default_factory=list)
    """(time.monotonic(), CPU seconds so far) pairs, taken with ``samples``."""

    def peak_rss_kb_between(self, start_mono: float, end_mono: float) -> int | None:
        """Return the highest sampled VmRSS in [start_mono, end_mono], or None without samples."""
        window = [kb for t, kb in self.samples if start_mono <= t <= end_mono]
        return max(window) if window else None

    def cpu_s_between(self, start_mono: float, end_mono: float) -> float | None:
        """Return the CPU seconds used between the samples nearest inside the window."""
        window = [cpu for t, cpu in self.cpu_samples if start_mono <= t <= end_mono]
        return window[-1] - window[0] if len(window) > 1 else None

    def rss_kb_before(self, mono: float) -> int | None:
        """Return the last VmRSS sampled before ``mono``, or None."""
        earlier = [kb for t, kb in self.samples if t < mono]
        return earlier[-1] if earlier else None


class Child:
    """One child process with a line reader on stdout and an RSS sampler."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str | Path],
        log_path: Path,
        env: Mapping[str, str] | None = None,
        merge_stderr: bool = False,
    ) -> None:
        self.name = name
        self.argv = [str(a) for a in argv]
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self.merge_stderr = merge_stderr
        self.lines: list[tuple[float, str]] = []
        """Every stdout line with the time.monotonic() at which it was read."""
        self.started_mono = 0.0
        self._messages: queue.Queue[dict[str, Any]] = queue.Queue()
        self._samples: list[tuple[float, int]] = []
        self._cpu_samples: list[tuple[float, float]] = []
        self._peak_rss_kb = 0
        self._cpu_s = 0.0
        self._popen: subprocess.Popen[str] | None = None
        self._log: IO[str] | None = None
        self._threads: list[threading.Thread] = []
        self._exited = threading.Event()
        self.finished: Finished | None = None

    @property
    def pid(self) -> int:
        assert self._popen is not None, "the child has not started"
        return self._popen.pid

    def start(self) -> Child:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("w", encoding="utf-8")
        self.started_mono = time.monotonic()
        self._popen = subprocess.Popen(
            self.argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT if self.merge_stderr else self._log,
            env=self.env,
            text=True,
            bufsize=1,
        )
        for target, label in ((self._read_stdout, "stdout"), (self._sample_rss, "rss")):
            thread = threading.Thread(target=target, name=f"{self.name}-{label}", daemon=True)
            thread.start()
            self._threads.append(thread)

        return self

    def _read_stdout(self) -> None:
        assert self._popen is not None and self._popen.stdout is not None
        assert self._log is not None
        for line in self._popen.stdout:
            now = time.monotonic()
            self.lines.append((now, line.rstrip("\n")))
            self._log.write(line)
            if line.startswith("{"):
                try:
                    self._messages.put(json.loads(line))
                except json.JSONDecodeError:
                    pass
        self._log.flush()

    def _sample_rss(self) -> None:
        while not self._exited.is_set() and self._read_status():
            self._exited.wait(RSS_SAMPLE_INTERVAL_S)

    def _read_status(self) -> bool:
        """Record VmRSS, VmHWM and CPU time once; return False when the process is gone."""
        try:
            text = Path(f"/proc/{self.pid}/status").read_text()
            stat = Path(f"/proc/{self.pid}/stat").read_text()
        except OSError:
            return False
        now = time.monotonic()
        # Fields 14 and 15 of stat, counted after the parenthesised command name.
        ticks = stat.rsplit(")", 1)[1].split()
        if len(ticks) > 12:
            self._cpu_s = max(self._cpu_s, (int(ticks[11]) + int(ticks[12])) / CLOCK_TICKS_PER_S)
            self._cpu_samples.append((now, self._cpu_s))
        # A zombie has no memory lines, so the last values read stay.
        for line in text.splitlines():
            if line.startswith("VmRSS:"):
                self._samples.append((now, int(line.split()[1])))
            elif line.startswith("VmHWM:"):
                self._peak_rss_kb = max(self._peak_rss_kb, int(line.split()[1]))

        return True

    def message(self, kind: str, timeout_s: float) -> dict[str, Any]:
        """Return the next JSON message of ``kind``; raise if the child exits or times out."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                message = self._messages.get(timeout=0.05)
            except queue.Empty:
                if self._has_exited():
                    self._drain_reader()
                    if self._messages.empty():
                        self.raise_if_exited(f"before it sent {kind!r}")
                continue
            if message.get("kind") == "error":
                msg = f"{self.name} failed: {message.get('message')}; see {self.log_path}"
                raise BenchmarkError(msg)
            if message.get("kind") == kind:
                return message
        msg = f"{self.name} sent no {kind!r} message within {timeout_s} s; see {self.log_path}"
        raise BenchmarkError(msg)

    def _drain_reader(self) -> None:
        self._threads[0].join(timeout=5)

    def _has_exited(self) -> bool:
        return self._popen is not None and self._popen.poll() is not None

    def raise_if_exited(self, when: str) -> None:
        if self._has_exited():
            raise BenchmarkError(f"{self.name} exited {when}; see {self.log_path}")

    def dump_stacks(self) -> None:
        """Ask a Python worker still running to write every thread's stack to its log."""
        if self._popen is not None and not self._has_exited():
            self._popen.send_signal(signal.SIGUSR1)
            time.sleep(0.5)

    def send_line(self, line: str) -> None:
        assert self._popen is not None and self._popen.stdin is not None
        self._popen.stdin.write(line + "\n")
        self._popen.stdin.flush()

    def wait(self, timeout_s: float) -> Finished:
        """Reap the child and return how it ended; kill it after ``timeout_s``."""
        assert self._popen is not None
        if self.finished is not None:
            return self.finished
        timed_out = False
        try:
            self._popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            self._popen.kill()
            self._popen.wait()
        wall_s = time.monotonic() - self.started_mono
        self._exited.set()
        for thread in self._threads:
            thread.join(timeout=5)
        if self._popen.stdin is not None:
            self._popen.stdin.close()
        assert self._log is not None
        self._log.close()
        self.finished = Finished(self._popen.returncode, self._peak_rss_kb, wall_s, self._cpu_s,
                                 list(self._samples), list(self._cpu_samples))
        if timed_out:
            msg = f"{self.name} ran longer than {timeout_s} s and was killed; see {self.log_path}"
            raise BenchmarkError(msg)

        return self.finished

    def stop(self, timeout_s: float = STOP_GRACE_S) -> Finished:
        """End the child with SIGTERM, then SIGKILL after ``timeout_s``."""
        if self.finished is not None:
            return self.finished
        assert self._popen is not None, "the child has not started"
        if not self._has_exited():
            self._read_status()
            self._popen.terminate()

        return self.wait(timeout_s)

    def kill_quietly(self) -> None:
        """Kill the child if it still runs, ignoring errors; for clean-up after a failure."""
        if self._popen is None or self.finished is not None:
            return
        try:
            self._popen.kill()
            self.wait(STOP_GRACE_S)
        except (OSError, BenchmarkError):
            pass


def worker(name: str, role: str, args: Sequence[str], log_dir: Path) -> Child:
    """Start ``_worker.py ROLE ARGS`` with this interpreter."""
    argv = [sys.executable, str(WORKER_PATH), role, *args]

    return Child(name, argv, log_dir / f"{name}.log").start()
