"""Link benchmark: what one LinkProxy costs, and how exact its latency and bandwidth faults are.

Usage: .venv/bin/python benchmarks/link_faults.py [--quick] [--parts LIST] [--scenarios LIST]
       [--max-pdu BYTES] [--revision REV] [--json PATH] [--keep]

Four parts, each selectable with ``--parts``:

- ``throughput``: the synthetic CT series (``_corpora.write_ct_series``)
  sent by the scenarios of ``_scenarios.py`` that ``--scenarios`` selects,
  direct, proxied and proxied-in-process by default, taking turns.
- ``round-trips``: C-ECHO (pynetdicom SCU to pynetdicom SCP, TCP_NODELAY on
  both) and a raw TCP ping-pong of PING_BYTES-byte messages, each direct,
  through a LinkProxy in its own process, and through a LinkProxy on a
  thread of the client's process. Reports the median, p95 and mean round trip.
- ``latency``: the same two round trips through the proxy process with one
  ``latency`` fault (jitter 0) on the downstream or the upstream direction,
  for each of LATENCY_FAULTS_MS. The added time is the median round trip
  with the fault minus the median through the same proxy without it.
- ``bandwidth``: a bulk TCP transfer through the proxy process with one
  ``bandwidth`` fault on the direction the data flows, for each of
  BANDWIDTH_RATES_KB_S. Each transfer is sized to last ``bandwidth_s`` at
  the set rate. The same transfer also runs without a fault, direct and
  through both proxies. The rate is in KB/s of 1000 bytes, as
  ``simulator.links.faults.bandwidth`` defines it.

The client of the round trips and the bulk transfers runs in this process.
The servers and the proxy run as children of this script (``--role``).
Each measurement waits, for a bounded time, until other processes leave
the CPUs idle, records their load while it runs, and is repeated once when
that load was above ``_load.QUIET_LOAD_CPUS``; the less loaded run is
kept. The report is printed as Markdown; ``--json`` also writes every
measurement.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from _corpora import write_ct_series
from _load import CLOCK_TICKS_PER_S, QUIET_LOAD_CPUS, QUIET_PROBE_S
from _load import _busy_s as machine_busy_s
from _load import _own_s as own_and_reaped_s
from _procs import LOOPBACK_HOST, BenchmarkError, Child
from _report import MB, Measurement, cpu_table, failure_lines, machine_info, machine_lines, table
from _revision import reexec_from_revision
from _scenarios import SCENARIOS, RunSettings, measure_once, prepare_corpus, work_folder
from _worker import (
    SCP_AE_TITLE,
    SCU_AE_TITLE,
    ProxyThread,
    configure,
    cpu_s,
    emit,
    set_nodelay,
    status_kb,
)
from pynetdicom import AE, build_context, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from replay import link_verdict

THROUGHPUT_SCENARIOS = ("direct", "proxied", "proxied-in-process")
ROUND_TRIP_PATHS = ("direct", "proxied", "proxied-in-process")
LATENCY_FAULTS_MS = (0, 10, 50, 200)
"""Latencies set on the fault; 0 shows what moving chunks through the fault's stage costs."""
BANDWIDTH_RATES_KB_S = (100, 1000, 10_000)
FAULT_TARGET = 0.05
"""A latency or bandwidth fault should come within this fraction of its set value."""
PING_BYTES = 64
WARMUP_ROUND_TRIPS = 10
ROUNDS = 3
"""The no-fault round trips are split into this many rounds, the paths taking turns in each."""
BULK_BUFFER_BYTES = 1024 * 1024
START_TIMEOUT_S = 60.0
IO_TIMEOUT_S = 120.0
"""Socket and DIMSE timeout of the clients, after which a stalled measurement fails."""
MAX_ATTEMPTS = 2
QUIET_WAIT_S = 10.0
"""Maximum wait for a quiet machine before one round-trip or bulk measurement.

Shorter than ``_load.QUIET_WAIT_MAX_S``, because these measurements are
many and short, and each records the load it ran under.
"""
PARTS = ("throughput", "round-trips", "latency", "bandwidth")


@dataclass(frozen=True)
class Settings:
    synthetic_count: int
    throughput_repeat: int
    round_trips: int
    """Round trips per path without a fault, over all rounds."""
    fault_window_s: float
    """Time that the round trips under one latency fault should take, which sets their count."""
    bandwidth_s: float
    """Duration of each transfer at its set rate."""
    bulk_bytes: int
    """Size of the transfer without a bandwidth fault."""
    max_pdu: int


QUICK = Settings(synthetic_count=100, throughput_repeat=1, round_trips=300, fault_window_s=1.0,
                 bandwidth_s=2.0, bulk_bytes=50 * MB, max_pdu=16382)
FULL = Settings(synthetic_count=1000, throughput_repeat=3, round_trips=2000, fault_window_s=3.0,
                bandwidth_s=5.0, bulk_bytes=500 * MB, max_pdu=16382)


@dataclass
class Sample:
    """One measured path or fault setting: round-trip times or one transfer, and the load."""

    part: str
    protocol: str
    path: str
    direction: str | None = None
    set_value: float | None = None
    """The fault's latency in ms or rate in KB/s, or None without a fault."""
    round_trips_s: list[float] = field(default_factory=list)
    size_bytes: int = 0
    elapsed_s: float = 0.0
    foreign_cpus: list[float] = field(default_factory=list)
    """Load of other processes, in CPUs, during each run that went into this sample."""
    attempts: int = 1

    def median_ms(self) -> float:
        return 1000 * statistics.median(self.round_trips_s)

    def mean_ms(self) -> float:
        return 1000 * statistics.fmean(self.round_trips_s)

    def p95_ms(self) -> float:
        return 1000 * statistics.quantiles(self.round_trips_s, n=20)[-1]

    def rate_kb_s(self) -> float:
        return self.size_bytes / self.elapsed_s / 1000


# --- Server roles, run as children of this script --------------------------------------------


def _read_header(sock: socket.socket) -> str:
    """Read one ASCII line byte by byte, so no byte after it is consumed."""
    header = bytearray()
    while not header.endswith(b"\n"):
        byte = sock.recv(1)
        if not byte:
            break
        header += byte

    return header.decode("ascii").strip()


def _serve_connection(sock: socket.socket) -> None:
    """Serve one client: ``echo``, ``sink N`` (then send one byte) or ``source N``."""
    with sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        command, _, argument = _read_header(sock).partition(" ")
        if command == "echo":
            sock.sendall(b"+")
            while data := sock.recv(65536):
                sock.sendall(data)
        elif command == "sink":
            _receive_exactly(sock, int(argument))
            sock.sendall(b"k")
        elif command == "source":
            _send_zeros(sock, int(argument))


def run_tcp_server(_args: argparse.Namespace) -> None:
    listener = socket.create_server((LOOPBACK_HOST, 0))
    emit("ready", port=listener.getsockname()[1])

    def accept_forever() -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return  # the listener was closed on stop
            threading.Thread(target=_serve_connection, args=(connection,), daemon=True).start()

    threading.Thread(target=accept_forever, daemon=True).start()
    _wait_for_line("stop")
    listener.close()
    emit("result", peak_rss_kb=status_kb("VmHWM"), cpu_s=cpu_s())


def run_echo_scp(args: argparse.Namespace) -> None:
    ae = AE(ae_title=SCP_AE_TITLE)
    configure(ae, args.max_pdu, IO_TIMEOUT_S)
    ae.add_supported_context(Verification)
    server = ae.start_server((LOOPBACK_HOST, 0), block=False,
                             evt_handlers=[(evt.EVT_CONN_OPEN, set_nodelay)])
    assert server is not None, "start_server(block=False) returns the server"
    emit("ready", port=server.server_address[1])
    _wait_for_line("stop")
    server.shutdown()
    emit("result", peak_rss_kb=status_kb("VmHWM"), cpu_s=cpu_s())


async def _replace_faults(proxy: Any, specs: list[Any]) -> None:
    """Replace the faults of the proxy's link by ``specs``, on the proxy's event loop."""
    for spec in proxy.faults.specs():
        proxy.faults.remove(spec.name)
    for spec in specs:
        proxy.faults.add(spec)


def run_proxy(args: argparse.Namespace) -> None:
    """Serve a LinkProxy until a ``stop`` line; a ``faults JSON-LIST`` line replaces its faults."""
    from simulator.links.faults import FaultSpec

    proxy = ProxyThread(args.upstream_port, args.events)
    emit("ready", port=proxy.start())
    for line in sys.stdin:
        command, _, payload = line.strip().partition(" ")
        if command == "stop":
            break
        if command == "faults":
            specs = [FaultSpec.model_validate(item) for item in json.loads(payload)]
            future = asyncio.run_coroutine_threadsafe(_replace_faults(proxy.proxy, specs),
                                                      proxy.loop)
            future.result(timeout=START_TIMEOUT_S)
            emit("faults", names=[spec.name for spec in specs])
    stats = proxy.stop()
    emit("result", stats=stats, peak_rss_kb=status_kb("VmHWM"), cpu_s=cpu_s())


def _wait_for_line(expected: str) -> None:
    for line in sys.stdin:
        if line.strip() == expected:
            return


ROLES = {"tcp-server": run_tcp_server, "echo-scp": run_echo_scp, "proxy": run_proxy}


# --- Clients, run in this process ------------------------------------------------------------


def _receive_exactly(sock: socket.socket, size_bytes: int) -> None:
    """Receive and discard ``size_bytes``, or raise BenchmarkError if the peer closes first."""
    buffer = bytearray(min(BULK_BUFFER_BYTES, max(size_bytes, 1)))
    view = memoryview(buffer)
    remaining = size_bytes
    while remaining:
        received = sock.recv_into(view[: min(remaining, len(buffer))])
        if not received:
            raise BenchmarkError(f"the connection closed after {size_bytes - remaining} of "
                                  f"{size_bytes} bytes; see the server and proxy logs (--keep)")
        remaining -= received


def _send_zeros(sock: socket.socket, size_bytes: int) -> None:
    block = memoryview(bytes(BULK_BUFFER_BYTES))
    remaining = size_bytes
    while remaining:
        piece = block[: min(remaining, len(block))]
        sock.sendall(piece)
        remaining -= len(piece)


@contextmanager
def _client_socket(port: int) -> Iterator[socket.socket]:
    with socket.create_connection((LOOPBACK_HOST, port), timeout=IO_TIMEOUT_S) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        yield sock


def tcp_round_trips(port: int, count: int) -> list[float]:
    """Return the time of each of ``count`` PING_BYTES-byte round trips, after a warm-up."""
    times: list[float] = []
    message = bytes(PING_BYTES)
    with _client_socket(port) as sock:
        sock.sendall(b"echo\n")
        _receive_exactly(sock, 1)
        for index in range(WARMUP_ROUND_TRIPS + count):
            started = time.perf_counter()
            sock.sendall(message)
            _receive_exactly(sock, PING_BYTES)
            if index >= WARMUP_ROUND_TRIPS:
                times.append(time.perf_counter() - started)

    return times


def echo_round_trips(port: int, count: int, max_pdu: int) -> list[float]:
    """Return the time of each of ``count`` C-ECHO round trips on one association."""
    ae = AE(ae_title=SCU_AE_TITLE)
    configure(ae, max_pdu, IO_TIMEOUT_S)
    assoc = ae.associate(LOOPBACK_HOST, port, contexts=[build_context(Verification)],
                         ae_title=SCP_AE_TITLE, evt_handlers=[(evt.EVT_CONN_OPEN, set_nodelay)])
    if not assoc.is_established:
        raise BenchmarkError(f"C-ECHO association to {LOOPBACK_HOST}:{port} was not established; "
                             "see the echo-scp and proxy logs (--keep)")
    times: list[float] = []
    try:
        for index in range(WARMUP_ROUND_TRIPS + count):
            started = time.perf_counter()
            status = assoc.send_c_echo()
            elapsed_s = time.perf_counter() - started
            if getattr(status, "Status", None) != 0x0000:
                raise BenchmarkError(f"C-ECHO {index} to port {port} failed with {status}; "
                                     "see the echo-scp and proxy logs (--keep)")
            if index >= WARMUP_ROUND_TRIPS:
                times.append(elapsed_s)
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()

    return times


def bulk_transfer_s(port: int, direction: str, size_bytes: int) -> float:
    """Send ``size_bytes`` to the server (upstream) or from it (downstream); return the time.

    Upstream, the time ends when the server's one-byte acknowledgement
    arrives, so it spans every byte reaching the server.
    """
    with _client_socket(port) as sock:
        started = time.perf_counter()
        if direction == "upstream":
            sock.sendall(f"sink {size_bytes}\n".encode("ascii"))
            _send_zeros(sock, size_bytes)
            _receive_exactly(sock, 1)
        else:
            sock.sendall(f"source {size_bytes}\n".encode("ascii"))
            _receive_exactly(sock, size_bytes)

        return time.perf_counter() - started


# --- Load of other processes while children run ----------------------------------------------


def _running_cpu_s(children: Sequence[Child]) -> float:
    """Return the CPU seconds so far of children that still run, which getrusage() leaves out."""
    total_s = 0.0
    for child in children:
        try:
            stat = Path(f"/proc/{child.pid}/stat").read_text()
        except OSError:
            continue
        ticks = stat.rsplit(")", 1)[1].split()
        total_s += (int(ticks[11]) + int(ticks[12])) / CLOCK_TICKS_PER_S

    return total_s


class ChildLoadMeter:
    """Like ``_load.LoadMeter``, but also subtracts the CPU of children that are still running."""

    def __init__(self, children: Sequence[Child]) -> None:
        self.children = children
        self.started_mono = time.monotonic()
        self.busy_s = machine_busy_s()
        self.own_s = own_and_reaped_s() + _running_cpu_s(children)

    def foreign_cpus(self) -> float:
        elapsed_s = time.monotonic() - self.started_mono
        own_s = own_and_reaped_s() + _running_cpu_s(self.children) - self.own_s
        foreign_s = machine_busy_s() - self.busy_s - own_s

        return max(0.0, foreign_s / elapsed_s) if elapsed_s > 0 else 0.0


def wait_until_quiet(children: Sequence[Child]) -> float:
    """Wait up to QUIET_WAIT_S for other load below QUIET_LOAD_CPUS; return the last load."""
    deadline = time.monotonic() + QUIET_WAIT_S
    while True:
        meter = ChildLoadMeter(children)
        time.sleep(QUIET_PROBE_S)
        load = meter.foreign_cpus()
        if load <= QUIET_LOAD_CPUS or time.monotonic() >= deadline:
            return load


def measure_quietly(children: Sequence[Child], run: Callable[[], Sample]) -> Sample:
    """Run once on a quiet machine, again if other processes loaded it; keep the less loaded."""
    attempts: list[Sample] = []
    for attempt in range(1, MAX_ATTEMPTS + 1):
        wait_until_quiet(children)
        meter = ChildLoadMeter(children)
        sample = run()
        sample.foreign_cpus = [meter.foreign_cpus()]
        sample.attempts = attempt
        attempts.append(sample)
        if sample.foreign_cpus[0] <= QUIET_LOAD_CPUS:
            break

    return min(attempts, key=lambda s: s.foreign_cpus[0])


# --- The servers and proxies of the round-trip, latency and bandwidth parts ------------------


@dataclass
class Servers:
    """Running children and the ports a client connects to, by protocol and path."""

    children: list[Child]
    ports: dict[tuple[str, str], int]
    proxies: dict[str, Child]
    """The proxy process in front of each protocol's server, which takes fault commands."""
    in_process: list[ProxyThread]

    def set_faults(self, protocol: str, specs: list[dict[str, Any]]) -> None:
        proxy = self.proxies[protocol]
        proxy.send_line("faults " + json.dumps(specs))
        proxy.message("faults", START_TIMEOUT_S)


def _role_child(name: str, role: str, args: Sequence[str], work: Path) -> Child:
    argv = [sys.executable, str(Path(__file__).resolve()), "--role", role, *args]

    return Child(name, argv, work / f"{name}.log").start()


@contextmanager
def running_servers(work: Path, max_pdu: int) -> Iterator[Servers]:
    """Start the TCP server, the echo SCP, a proxy process and an in-process proxy for each."""
    servers = Servers([], {}, {}, [])
    try:
        for protocol, role in (("tcp", "tcp-server"), ("c-echo", "echo-scp")):
            server = _role_child(f"{protocol}-server", role, ["--max-pdu", str(max_pdu)], work)
            servers.children.append(server)
            port = server.message("ready", START_TIMEOUT_S)["port"]
            proxy = _role_child(f"{protocol}-proxy", "proxy",
                                ["--upstream-port", str(port),
                                 "--events", str(work / f"{protocol}-proxy-events.jsonl")], work)
            servers.children.append(proxy)
            servers.proxies[protocol] = proxy
            in_process = ProxyThread(port, work / f"{protocol}-in-process-events.jsonl")
            servers.ports[(protocol, "proxied-in-process")] = in_process.start()
            servers.in_process.append(in_process)
            servers.ports[(protocol, "direct")] = port
            servers.ports[(protocol, "proxied")] = proxy.message("ready", START_TIMEOUT_S)["port"]
        yield servers
    finally:
        for thread in servers.in_process:
            thread.stop()
        for child in servers.children:
            with suppress(OSError):
                child.send_line("stop")
        for child in servers.children:
            try:
                child.wait(START_TIMEOUT_S)
            except BenchmarkError:
                child.kill_quietly()


def _round_trips(protocol: str, port: int, count: int, max_pdu: int) -> list[float]:
    if protocol == "tcp":
        return tcp_round_trips(port, count)

    return echo_round_trips(port, count, max_pdu)


@dataclass(frozen=True)
class RoundTripRun:
    """The round trips of one protocol on one path, with the fault set on the proxy, if any."""

    part: str
    protocol: str
    path: str
    port: int
    count: int
    max_pdu: int
    direction: str | None = None
    latency_ms: int | None = None

    def __call__(self) -> Sample:
        times = _round_trips(self.protocol, self.port, self.count, self.max_pdu)
        return Sample(self.part, self.protocol, self.path, self.direction, self.latency_ms, times)


@dataclass(frozen=True)
class TransferRun:
    """One bulk transfer on one path, with the bandwidth fault set on the proxy, if any."""

    path: str
    port: int
    direction: str
    size_bytes: int
    rate_kb_s: int | None = None

    def __call__(self) -> Sample:
        elapsed_s = bulk_transfer_s(self.port, self.direction, self.size_bytes)
        return Sample("bandwidth", "tcp", self.path, self.direction, self.rate_kb_s,
                      size_bytes=self.size_bytes, elapsed_s=elapsed_s)


def measure_round_trips(servers: Servers, settings: Settings) -> list[Sample]:
    """Measure each protocol on each path, the paths taking turns over ROUNDS rounds."""
    samples = {(protocol, path): Sample("round-trips", protocol, path)
               for protocol in ("c-echo", "tcp") for path in ROUND_TRIP_PATHS}
    per_round = max(1, settings.round_trips // ROUNDS)
    for round_index in range(1, ROUNDS + 1):
        for (protocol, path), sample in samples.items():
            port = servers.ports[(protocol, path)]
            run = measure_quietly(servers.children, RoundTripRun(
                "round-trips", protocol, path, port, per_round, settings.max_pdu))
            sample.round_trips_s += run.round_trips_s
            sample.foreign_cpus += run.foreign_cpus
            sample.attempts = max(sample.attempts, run.attempts)
            print(f"  round trips {protocol} {path} round {round_index}: median "
                  f"{run.median_ms():.3f} ms, other processes {run.foreign_cpus[0]:.2f} CPUs",
                  flush=True)

    return list(samples.values())


def _fault_spec(fault_type: str, direction: str, attributes: dict[str, int]) -> dict[str, Any]:
    return {"name": f"bench-{fault_type}", "type": fault_type, "direction": direction,
            "attributes": attributes}


def _latency_settings() -> list[tuple[str | None, int | None]]:
    """Return (direction, latency in ms) pairs, first (None, None) for the proxy without a fault."""
    pairs: list[tuple[str | None, int | None]] = [(None, None)]
    pairs += [(d, ms) for d in ("downstream", "upstream") for ms in LATENCY_FAULTS_MS]

    return pairs


def measure_latency_faults(servers: Servers, settings: Settings) -> list[Sample]:
    """Measure round trips through the proxy process with no fault, then with each latency."""
    samples: list[Sample] = []
    for protocol in ("c-echo", "tcp"):
        port = servers.ports[(protocol, "proxied")]
        for direction, latency_ms in _latency_settings():
            faults = [] if direction is None else [
                _fault_spec("latency", direction, {"latency": latency_ms or 0, "jitter": 0})]
            servers.set_faults(protocol, faults)
            # The count fills fault_window_s, assuming about 5 ms per round trip without delay.
            expected_s = (latency_ms or 0) / 1000 + 0.005
            count = max(20, min(settings.round_trips, int(settings.fault_window_s / expected_s)))
            sample = measure_quietly(servers.children, RoundTripRun(
                "latency", protocol, "proxied", port, count, settings.max_pdu, direction,
                latency_ms))
            samples.append(sample)
            print(f"  latency {protocol} {direction or 'no fault'} {latency_ms or 0} ms: median "
                  f"{sample.median_ms():.3f} ms over {count}, other processes "
                  f"{sample.foreign_cpus[0]:.2f} CPUs", flush=True)
        servers.set_faults(protocol, [])

    return samples


def measure_bandwidth(servers: Servers, settings: Settings) -> list[Sample]:
    """Measure bulk transfers without a fault, then through each bandwidth fault."""
    samples: list[Sample] = []
    for direction in ("upstream", "downstream"):
        for path in ("direct", "proxied", "proxied-in-process"):
            port = servers.ports[("tcp", path)]
            samples.append(measure_quietly(servers.children, TransferRun(
                path, port, direction, settings.bulk_bytes)))
            _print_transfer(samples[-1])
        port = servers.ports[("tcp", "proxied")]
        for rate_kb_s in BANDWIDTH_RATES_KB_S:
            servers.set_faults("tcp", [_fault_spec("bandwidth", direction, {"rate": rate_kb_s})])
            size_bytes = int(rate_kb_s * 1000 * settings.bandwidth_s)
            samples.append(measure_quietly(servers.children, TransferRun(
                "proxied", port, direction, size_bytes, rate_kb_s)))
            _print_transfer(samples[-1])
        servers.set_faults("tcp", [])

    return samples


def _print_transfer(sample: Sample) -> None:
    limit = "no fault" if sample.set_value is None else f"{sample.set_value:.0f} KB/s"
    print(f"  bandwidth {sample.direction} {sample.path} {limit}: {sample.elapsed_s:.2f} s, "
          f"{sample.rate_kb_s():.0f} KB/s, other processes {sample.foreign_cpus[0]:.2f} CPUs",
          flush=True)


# --- Throughput of whole transfers ------------------------------------------------------------


def measure_throughput(settings: Settings, scenarios: Sequence[str],
                       work: Path) -> list[Measurement]:
    root = write_ct_series(work / "synthetic", settings.synthetic_count)
    corpus = prepare_corpus("synthetic", root, work)
    print(f"synthetic corpus: {len(corpus.plan.files)} instances, "
          f"{corpus.plan.total_bytes / MB:.1f} MB", flush=True)
    measurements: list[Measurement] = []
    for repetition in range(1, settings.throughput_repeat + 1):
        for scenario in scenarios:
            measurement = measure_once(corpus, scenario, repetition, work,
                                       RunSettings(settings.max_pdu))
            measurements.append(measurement)
            print(f"  {scenario} #{repetition}: {measurement.elapsed_s:.2f} s, "
                  f"{measurement.mb_per_s:.1f} MB/s, other processes "
                  f"{measurement.extra['foreign_cpus']:.2f} CPUs", flush=True)

    return measurements


# --- Report -----------------------------------------------------------------------------------


def _load_text(sample: Sample) -> str:
    return f"{max(sample.foreign_cpus):.2f}"


def round_trip_lines(samples: list[Sample]) -> list[str]:
    """Return a Markdown table of the round trips, each path also as a difference to direct.

    The mean is there because C-ECHO round trips came out bimodal, about
    1 ms apart, on the machine in docs/benchmarks.md. pynetdicom 3.0.4's DUL
    and reactor loops sleep 1 ms when idle, so a small delay can move the
    median by a whole mode.
    """
    header = ("| protocol | path | round trips | median (ms) | p95 (ms) | mean (ms) "
              "| median, mean, p95 minus direct (ms) | other load (CPUs, max) |")
    lines = [header, "|---|---|---|---|---|---|---|---|"]
    for protocol in ("c-echo", "tcp"):
        rows = [s for s in samples if s.protocol == protocol]
        direct = next(s for s in rows if s.path == "direct")
        for sample in rows:
            differences = "" if sample is direct else (
                f"{sample.median_ms() - direct.median_ms():+.3f}, "
                f"{sample.mean_ms() - direct.mean_ms():+.3f}, "
                f"{sample.p95_ms() - direct.p95_ms():+.3f}")
            lines.append(
                f"| {protocol} | {sample.path} | {len(sample.round_trips_s)} "
                f"| {sample.median_ms():.3f} | {sample.p95_ms():.3f} | {sample.mean_ms():.3f} "
                f"| {differences} | {_load_text(sample)} |")

    return lines


def _verdict(errors: list[float]) -> str:
    worst = max(abs(e) for e in errors)
    verdict = "within" if worst <= FAULT_TARGET else "outside"
    return f"largest error {worst:.1%}, {verdict} the {FAULT_TARGET:.0%} target"


def latency_lines(samples: list[Sample]) -> list[str]:
    header = ("| protocol | direction | set (ms) | round trips | median (ms) | p95 (ms) "
              "| added, median (ms) | error | other load (CPUs, max) |")
    lines = [header, "|---|---|---|---|---|---|---|---|---|"]
    notes = []
    for protocol in ("c-echo", "tcp"):
        rows = [s for s in samples if s.protocol == protocol]
        baseline = next(s for s in rows if s.set_value is None)
        errors = []
        for sample in rows:
            added, error = "", ""
            if sample.set_value is not None:
                added_ms = sample.median_ms() - baseline.median_ms()
                added = f"{added_ms:.3f}"
            if sample.set_value:
                errors.append(added_ms / sample.set_value - 1)
                error = f"{errors[-1]:+.1%}"
            lines.append(
                f"| {protocol} | {sample.direction or 'no fault'} "
                f"| {'' if sample.set_value is None else f'{sample.set_value:.0f}'} "
                f"| {len(sample.round_trips_s)} | {sample.median_ms():.3f} "
                f"| {sample.p95_ms():.3f} | {added} | {error} | {_load_text(sample)} |")
        notes.append(f"- {protocol}: {_verdict(errors)}")

    return [*lines, "", *notes]


def bandwidth_lines(samples: list[Sample]) -> list[str]:
    header = ("| direction | path | set (KB/s) | MB | time (s) | measured (KB/s) | error "
              "| other load (CPUs) |")
    lines = [header, "|---|---|---|---|---|---|---|---|"]
    errors = []
    for sample in samples:
        error = ""
        if sample.set_value is not None:
            errors.append(sample.rate_kb_s() / sample.set_value - 1)
            error = f"{errors[-1]:+.1%}"
        lines.append(
            f"| {sample.direction} | {sample.path} "
            f"| {'' if sample.set_value is None else f'{sample.set_value:.0f}'} "
            f"| {sample.size_bytes / MB:.1f} | {sample.elapsed_s:.2f} | {sample.rate_kb_s():.0f} "
            f"| {error} | {_load_text(sample)} |")
    if errors:
        lines += ["", f"- bandwidth: {_verdict(errors)}"]

    return lines


def print_report(info: dict[str, Any], settings: Settings, measurements: list[Measurement],
                 samples: list[Sample], scenarios: Sequence[str], total_s: float) -> None:
    print()
    print("\n".join(machine_lines(info)))
    print(f"- Max PDU {settings.max_pdu} bytes on every side; whole benchmark {total_s:.0f} s")
    if measurements:
        print("\n### Throughput, synthetic CT series\n")
        print("\n".join([*table(measurements, scenarios), "",
                         *link_verdict(measurements), *failure_lines(measurements), "",
                         *cpu_table(measurements, scenarios)]))
    sections = (("round-trips", "Round trips without a fault", round_trip_lines),
                ("latency", "Latency faults, through the proxy process", latency_lines),
                ("bandwidth", "Bandwidth faults, bulk TCP transfer", bandwidth_lines))
    for part, title, render in sections:
        rows = [s for s in samples if s.part == part]
        if rows:
            print(f"\n### {title}\n")
            print("\n".join(render(rows)))


# --- Command line -----------------------------------------------------------------------------


def _list_option(text: str, allowed: Sequence[str], option: str) -> tuple[str, ...]:
    items = tuple(item.strip() for item in text.split(",") if item.strip())
    unknown = [item for item in items if item not in allowed]
    if unknown or not items:
        problem = f"unknown names {', '.join(unknown)}" if unknown else "no names"
        raise argparse.ArgumentTypeError(
            f"{option} {text!r} is invalid ({problem}); "
            f"give a comma-separated list of {', '.join(allowed)}")

    return items


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"Send {QUICK.synthetic_count} instances once instead of "
                             f"{FULL.synthetic_count} instances {FULL.throughput_repeat} "
                             "times, and shorten the other parts.")
    parser.add_argument("--parts", default=",".join(PARTS),
                        type=lambda text: _list_option(text, PARTS, "--parts"),
                        help=f"Comma-separated parts to run (default all: {','.join(PARTS)}).")
    parser.add_argument("--scenarios", default=",".join(THROUGHPUT_SCENARIOS),
                        type=lambda text: _list_option(text, SCENARIOS, "--scenarios"),
                        help="Comma-separated scenarios of the throughput part (default "
                             f"{','.join(THROUGHPUT_SCENARIOS)}; also: simulator, dcmtk).")
    parser.add_argument("--max-pdu", type=int,
                        help=f"Maximum PDU every side receives, in bytes (default {FULL.max_pdu}).")
    parser.add_argument("--json", type=Path, help="Also write every measurement to this JSON file.")
    parser.add_argument("--keep", action="store_true",
                        help="Keep the temporary folder with the corpus and logs.")
    parser.add_argument("--revision", help="Measure simulator/ as of this git revision "
                                           "instead of the working tree.")
    parser.add_argument("--role", choices=sorted(ROLES), help=argparse.SUPPRESS)
    parser.add_argument("--upstream-port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--events", type=Path, help=argparse.SUPPRESS)

    return parser.parse_args()


def run_parts(args: argparse.Namespace, settings: Settings,
              work: Path) -> tuple[list[Measurement], list[Sample]]:
    measurements: list[Measurement] = []
    if "throughput" in args.parts:
        measurements = measure_throughput(settings, args.scenarios, work)
    samples: list[Sample] = []
    if not {"round-trips", "latency", "bandwidth"} & set(args.parts):
        return measurements, samples

    with running_servers(work, settings.max_pdu) as servers:
        if "round-trips" in args.parts:
            samples += measure_round_trips(servers, settings)
        if "latency" in args.parts:
            samples += measure_latency_faults(servers, settings)
        if "bandwidth" in args.parts:
            samples += measure_bandwidth(servers, settings)

    return measurements, samples


def main() -> None:
    args = parse_args()
    if args.role:
        ROLES[args.role](args)
        return

    if args.revision:
        reexec_from_revision(args.revision)
    settings = QUICK if args.quick else FULL
    if args.max_pdu is not None:
        settings = replace(settings, max_pdu=args.max_pdu)
    info = machine_info()
    started = time.monotonic()
    with work_folder("rehearse-link-bench-", args.keep) as work:
        os.environ["REHEARSE_CACHE_DIR"] = str(work / "cache")
        measurements, samples = run_parts(args, settings, work)

    print_report(info, settings, measurements, samples, args.scenarios,
                 time.monotonic() - started)
    if args.json is not None:
        document = {"machine": info, "settings": asdict(settings),
                    "measurements": [m.as_record() for m in measurements],
                    "samples": [asdict(s) for s in samples]}
        args.json.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    try:
        main()
    except BenchmarkError as exc:
        sys.exit(f"error: {exc}")
