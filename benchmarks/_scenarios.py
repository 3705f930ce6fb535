"""The measured scenarios, each one whole corpus sent once on one association.

- direct: pynetdicom SCU process to pynetdicom SCP process.
- proxied: the same through a LinkProxy in a third process, on an asyncio
  loop in a second thread of that process.
- proxied-in-process: the same, with the LinkProxy on a thread of the SCU
  process. It shares the GIL with the sender, as the simulator's links
  share it with its nodes. The sender's RSS and CPU include the proxy.
- simulator: ``rehearse run`` of modality -> router -> PACS, every link
  through a proxy, all in one process. Its time is run.started to
  run.finished, so it includes start-up, routing, the integrity check of
  every delivered file and the summary.
- dcmtk: DCMTK storescu to storescp, with TCP_NODELAY=1.

For the Python senders the time spans associate() to the end of release();
for storescu it spans its "Requesting Association" to "Releasing
Association" log lines. A run that did not store every instance raises
BenchmarkError instead of returning a number. Each measurement records the
CPU load of processes the benchmark did not start (see ``_load.py``).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from _corpora import plan_for, write_dcmtk_config
from _dcmtk import run_storescu, start_storescp
from _load import QUIET_LOAD_CPUS, LoadMeter, wait_until_quiet
from _plan import Plan
from _procs import BenchmarkError, Child, worker
from _report import Measurement
from _revision import remove_revision_source
from _sim import run_simulator, write_site

SCENARIOS = ("direct", "proxied", "proxied-in-process", "simulator", "dcmtk")
START_TIMEOUT_S = 60.0
TRANSFER_TIMEOUT_S = 600.0
"""Limit for one whole transfer, and the simulator scenario's timeout_s."""
WORKER_TIMEOUT_S = 120.0
"""ACSE, DIMSE and network timeout of the pynetdicom workers; a stalled store fails after it."""
MAX_ATTEMPTS = 2
"""Runs of one measurement at most, when the first fails or other processes load the CPUs."""


@dataclass(frozen=True)
class BenchCorpus:
    """A corpus ready to send: its plan, written for the workers, and a DCMTK configuration."""

    name: str
    plan: Plan
    plan_path: Path
    dcmtk_config: Path


@dataclass(frozen=True)
class RunSettings:
    max_pdu: int
    """Maximum PDU every side receives, in bytes."""
    simulator_timeouts: dict[str, float] | None = None
    """Node timeouts for the generated topology; None keeps the simulator's defaults."""


@contextmanager
def work_folder(prefix: str, keep: bool) -> Iterator[Path]:
    """Yield a new temporary folder; delete it at the end unless ``keep`` or an error."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield work
    except BaseException:
        keep = True
        raise
    finally:
        if keep:
            print(f"kept {work} with the logs of every run", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
        remove_revision_source()


def prepare_corpus(name: str, root: Path, work: Path) -> BenchCorpus:
    plan = plan_for(root)
    plan_path = plan.write(work / f"{name}-plan.json")
    config = write_dcmtk_config(work / f"{name}-dcmtk.cfg", plan.pairs)

    return BenchCorpus(name, plan, plan_path, config)


def _check_received(corpus: BenchCorpus, scenario: str, received: int) -> None:
    expected = len(corpus.plan.files)
    if received != expected:
        raise BenchmarkError(
            f"{scenario} on the {corpus.name} corpus stored {received} of {expected} instances"
        )


def _worker_args(settings: RunSettings) -> list[str]:
    return ["--max-pdu", str(settings.max_pdu), "--timeout-s", str(WORKER_TIMEOUT_S)]


def measure_pynetdicom(corpus: BenchCorpus, scenario: str, repetition: int, work: Path,
                       settings: RunSettings) -> Measurement:
    """Run direct, proxied or proxied-in-process once."""
    children: list[Child] = []
    try:
        scp = worker("scp", "scp", ["--plan", str(corpus.plan_path), "--out-dir", str(work / "out"),
                                    *_worker_args(settings)], work)
        children.append(scp)
        scp_ready = scp.message("ready", START_TIMEOUT_S)
        port = scp_ready["port"]
        proxy = None
        proxy_ready = None
        scu_extra: list[str] = []
        if scenario == "proxied":
            proxy = worker("proxy", "proxy", ["--upstream-port", str(port), "--events",
                                              str(work / "proxy-events.jsonl"),
                                              *_worker_args(settings)], work)
            children.append(proxy)
            proxy_ready = proxy.message("ready", START_TIMEOUT_S)
            port = proxy_ready["port"]
        elif scenario == "proxied-in-process":
            scu_extra = ["--in-process-proxy", "--events", str(work / "proxy-events.jsonl")]
        scu = worker("scu", "scu", ["--plan", str(corpus.plan_path), "--port", str(port),
                                    *scu_extra, *_worker_args(settings)], work)
        children.append(scu)
        sent = scu.message("result", TRANSFER_TIMEOUT_S)
        scu.wait(START_TIMEOUT_S)
        proxy_result = None
        if proxy is not None:
            proxy.send_line("stop")
            proxy_result = proxy.message("result", START_TIMEOUT_S)
            proxy.wait(START_TIMEOUT_S)
        scp.send_line("stop")
        received = scp.message("result", START_TIMEOUT_S)
        scp.wait(START_TIMEOUT_S)
    except BenchmarkError:
        for child in children:
            child.dump_stacks()
        raise
    finally:
        for child in children:
            child.kill_quietly()
    if sent["failures"]:
        failures = sent["failures"]
        raise BenchmarkError(f"{scenario}: {len(failures)} stores failed, first: {failures[:3]}")
    _check_received(corpus, scenario, received["received"])
    cpu = {"sender": sent["cpu_s"], "receiver": received["cpu_s"]}
    extra = {"sender_rss_before_kb": sent["rss_before_send_kb"],
             "receiver_rss_ready_kb": scp_ready["rss_kb"]}
    if proxy_result is not None and proxy_ready is not None:
        cpu["proxy"] = proxy_result["cpu_s"]
        extra["proxy_rss_ready_kb"] = proxy_ready["rss_kb"]

    return Measurement(corpus.name, scenario, repetition, received["received"],
                       corpus.plan.total_bytes, sent["elapsed_s"], sent["peak_rss_kb"],
                       received["peak_rss_kb"],
                       None if proxy_result is None else proxy_result["peak_rss_kb"], cpu, extra)


def measure_simulator(corpus: BenchCorpus, scenario: str, repetition: int, work: Path,
                      settings: RunSettings) -> Measurement:
    topology, scenario_path = write_site(work, corpus.plan, settings.max_pdu,
                                         settings.simulator_timeouts, TRANSFER_TIMEOUT_S)
    run = run_simulator(work, topology, scenario_path, TRANSFER_TIMEOUT_S + 60)
    if not run.expectations_held or run.delivered != run.expected:
        raise BenchmarkError(
            f"simulator on the {corpus.name} corpus delivered {run.delivered} of {run.expected} "
            f"({'; '.join(run.problems) or 'no failed expectation'}); "
            f"see {work / 'run' / 'report.md'}"
        )
    _check_received(corpus, scenario, run.delivered)
    peak = run.process.peak_rss_kb
    extra = {
        "transfer_s": run.transfer_s,
        "transfer_cpu_s": run.transfer_cpu_s,
        "after_transfer_s": run.after_transfer_s,
        "hops_s": run.hops_s,
        "peak_rss_by_hop_kb": run.peak_rss_by_hop_kb,
        "associations": run.associations,
        "rss_before_send_kb": run.rss_before_send_kb,
        "peak_rss_transfer_kb": run.peak_rss_transfer_kb,
        "peak_rss_after_transfer_kb": run.peak_rss_after_transfer_kb,
        "process_wall_s": run.process.wall_s,
    }

    return Measurement(corpus.name, scenario, repetition, run.delivered, corpus.plan.total_bytes,
                       run.run_s, peak, peak, None, {"simulator": run.process.cpu_s}, extra)


def measure_dcmtk(corpus: BenchCorpus, scenario: str, repetition: int, work: Path,
                  settings: RunSettings) -> Measurement:
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
                       {"sender": sent.process.cpu_s, "receiver": received.cpu_s},
                       {"process_wall_s": sent.process.wall_s})


def measure_once(corpus: BenchCorpus, scenario: str, repetition: int, work: Path,
                 settings: RunSettings) -> Measurement:
    """Run one scenario, again if it failed or other processes loaded the CPUs.

    Each attempt waits for a quiet machine, runs in its own folder, and
    deletes what it stored afterwards. Of the attempts that succeeded, the
    least loaded is returned, with the errors of the others.
    """
    attempts: list[Measurement] = []
    errors: list[str] = []
    for attempt in range(1, MAX_ATTEMPTS + 1):
        run_dir = work / f"{corpus.name}-{scenario}-{repetition}-{attempt}"
        run_dir.mkdir(parents=True)
        # Write back the previous run's files now, not during this run.
        os.sync()
        load_before = wait_until_quiet()
        meter = LoadMeter().start()
        try:
            measurement = MEASURES[scenario](corpus, scenario, repetition, run_dir, settings)
        except BenchmarkError as exc:
            # Kept in run_dir with its logs; the report lists it.
            errors.append(f"attempt {attempt}: {exc}")
            print(f"  {corpus.name} {scenario} #{repetition} attempt {attempt} failed: {exc}",
                  flush=True)
            continue
        measurement.extra["foreign_cpus_before"] = load_before
        measurement.extra["foreign_cpus"] = meter.foreign_cpus()
        measurement.extra["attempt"] = attempt
        attempts.append(measurement)
        for name in ("out", "run"):
            shutil.rmtree(run_dir / name, ignore_errors=True)
        if measurement.extra["foreign_cpus"] <= QUIET_LOAD_CPUS:
            break
    if not attempts:
        raise BenchmarkError(f"{scenario} on the {corpus.name} corpus failed every attempt: "
                             + "; ".join(errors))
    best = min(attempts, key=lambda m: m.extra["foreign_cpus"])
    best.extra["failed_attempts"] = errors

    return best


Measure = Callable[[BenchCorpus, str, int, Path, RunSettings], Measurement]
MEASURES: dict[str, Measure] = {
    "direct": measure_pynetdicom,
    "proxied": measure_pynetdicom,
    "proxied-in-process": measure_pynetdicom,
    "simulator": measure_simulator,
    "dcmtk": measure_dcmtk,
}
