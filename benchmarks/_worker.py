"""One side of a measured transfer, run as its own process by the benchmark scripts.

Usage: ``python _worker.py ROLE [options]`` with ROLE one of

- ``scp``: a pynetdicom Storage SCP that moves every received file into
  ``--out-dir``. It prints ``ready`` with its port and serves until a line
  ``stop`` (or EOF) arrives on stdin, then prints ``result``.
- ``scu``: a pynetdicom Storage SCU that sends every file of ``--plan`` on
  one association and prints ``result`` with the time from associate()
  to the end of release(). With
  ``--in-process-proxy`` it first starts a LinkProxy on a thread of its own
  process and connects through it, as the simulator's nodes share one
  process with their links.
- ``proxy``: a :class:`simulator.links.proxy.LinkProxy` on an asyncio loop
  in a second thread. It prints ``ready`` with its port, forwards until
  ``stop``, then prints ``result`` with the proxy's stats.

Both pynetdicom sides set TCP_NODELAY from an EVT_CONN_OPEN handler and
send and receive datasets in chunks, as the simulator does. Messages are
JSON objects, one per line on stdout, each with a ``kind``. Every
``result`` carries the process's peak RSS (VmHWM) and the CPU seconds it
used for the transfer: from ``ready`` to ``stop`` for the SCP and the
proxy, and the time span above for the SCU.
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import json
import resource
import shutil
import signal
import socket
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from _plan import load_plan
from pynetdicom import AE, _config, build_context, evt
from pynetdicom.dimse_primitives import C_STORE

# The simulator sets the same two flags in simulator.nodes.runtime.
_config.STORE_SEND_CHUNKED_DATASET = True
_config.STORE_RECV_CHUNKED_DATASET = True

SCU_AE_TITLE = "BENCH_SCU"
SCP_AE_TITLE = "BENCH_SCP"


def emit(kind: str, **fields: Any) -> None:
    print(json.dumps({"kind": kind, **fields}), flush=True)


def status_kb(field: str) -> int:
    """Return a memory field of /proc/self/status in KiB: VmRSS now, or VmHWM, the peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])

    return 0


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def set_nodelay(event: evt.Event) -> None:
    """Disable Nagle's algorithm, which pynetdicom leaves on (about 40 ms per exchange)."""
    transport = event.assoc.dul.socket
    if transport is not None and transport.socket is not None:
        transport.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def wait_for_stop() -> None:
    for line in sys.stdin:
        if line.strip() == "stop":
            return


def configure(ae: AE, max_pdu: int, timeout_s: float) -> None:
    ae.maximum_pdu_size = max_pdu
    ae.acse_timeout = timeout_s
    ae.dimse_timeout = timeout_s
    ae.network_timeout = timeout_s


class Receiver:
    """EVT_C_STORE handler that moves each received file into a folder."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.count = 0
        self.size_bytes = 0
        self._lock = threading.Lock()

    def on_c_store(self, event: evt.Event) -> int:
        temp_path = Path(event.dataset_path)
        request = event.request
        assert isinstance(request, C_STORE)
        uid = str(request.AffectedSOPInstanceUID)
        final = self.out_dir / f"{uid}.dcm"
        size = temp_path.stat().st_size
        shutil.move(str(temp_path), final)
        with self._lock:
            self.count += 1
            self.size_bytes += size

        return 0x0000


def run_scp(args: argparse.Namespace) -> None:
    plan = load_plan(args.plan)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    ae = AE(ae_title=SCP_AE_TITLE)
    configure(ae, args.max_pdu, args.timeout_s)
    for sop_class, syntaxes in plan.transfer_syntaxes_by_sop_class().items():
        ae.add_supported_context(sop_class, syntaxes)
    receiver = Receiver(args.out_dir)
    handlers: list[Any] = [(evt.EVT_CONN_OPEN, set_nodelay),
                           (evt.EVT_C_STORE, receiver.on_c_store)]
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=handlers)
    assert server is not None, "start_server(block=False) returns the server"
    emit("ready", port=server.server_address[1], rss_kb=status_kb("VmRSS"))
    ready_cpu_s = cpu_s()
    wait_for_stop()
    server.shutdown()
    emit("result", received=receiver.count, size_bytes=receiver.size_bytes,
         peak_rss_kb=status_kb("VmHWM"), cpu_s=cpu_s() - ready_cpu_s)


class ProxyThread:
    """A LinkProxy on an asyncio loop in a thread of this process."""

    def __init__(self, upstream_port: int, events_path: Path) -> None:
        # Imported here so that the SCP and the plain SCU carry none of the simulator.
        from simulator.links.proxy import LinkProxy
        from simulator.links.registry import AssociationRegistry
        from simulator.recording.recorder import BoundRecorder, Recorder

        self.recorder = Recorder(events_path, "benchmark")
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="link-proxy", daemon=True)
        self.proxy = LinkProxy("bench-link", "127.0.0.1", upstream_port,
                               BoundRecorder(self.recorder, {}), AssociationRegistry())

    def start(self) -> int:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.proxy.start(), self.loop).result(timeout=30)

        return self.proxy.port

    def stop(self) -> dict[str, Any]:
        asyncio.run_coroutine_threadsafe(self.proxy.stop(), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)
        self.recorder.close()

        return dict(vars(self.proxy.stats))


def run_proxy(args: argparse.Namespace) -> None:
    proxy = ProxyThread(args.upstream_port, args.events)
    port = proxy.start()
    emit("ready", port=port, rss_kb=status_kb("VmRSS"))
    ready_cpu_s = cpu_s()
    wait_for_stop()
    stats = proxy.stop()
    emit("result", stats=stats, peak_rss_kb=status_kb("VmHWM"), cpu_s=cpu_s() - ready_cpu_s)


def send_all(assoc: Any, files: tuple[Path, ...], timeout_s: float) -> list[str]:
    """Send each file with C-STORE; return a description of every failed store."""
    failures: list[str] = []
    for path in files:
        response = assoc.send_c_store(path)
        status = getattr(response, "Status", None)
        if status is None:
            # No C-STORE-RSP within the DIMSE timeout, so pynetdicom has aborted.
            failures.append(f"{path.name}: no response within {timeout_s} s")
            faulthandler.dump_traceback(all_threads=True)
            break
        if status != 0x0000:
            failures.append(f"{path.name}: status 0x{status:04X}")

    return failures


def run_scu(args: argparse.Namespace) -> None:
    plan = load_plan(args.plan)
    port = args.port
    proxy = None
    if args.in_process_proxy:
        proxy = ProxyThread(args.port, args.events)
        port = proxy.start()
    ae = AE(ae_title=SCU_AE_TITLE)
    configure(ae, args.max_pdu, args.timeout_s)
    contexts = [build_context(sop_class, [ts]) for sop_class, ts in plan.pairs]
    baseline_kb = status_kb("VmRSS")
    started_cpu_s = cpu_s()
    started = time.monotonic()
    assoc = ae.associate("127.0.0.1", port, contexts=contexts, ae_title=SCP_AE_TITLE,
                         evt_handlers=[(evt.EVT_CONN_OPEN, set_nodelay)])
    if not assoc.is_established:
        emit("error", message=f"association to 127.0.0.1:{port} was not established")
        return

    failures = send_all(assoc, plan.files, args.timeout_s)
    if assoc.is_established:
        assoc.release()
    elapsed_s = time.monotonic() - started
    transfer_cpu_s = cpu_s() - started_cpu_s
    ae.shutdown()
    stats = proxy.stop() if proxy is not None else None
    emit("result", sent=len(plan.files), failures=failures, elapsed_s=elapsed_s,
         started_mono=started, rss_before_send_kb=baseline_kb, proxy_stats=stats,
         peak_rss_kb=status_kb("VmHWM"), cpu_s=transfer_cpu_s)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    roles = parser.add_subparsers(dest="role", required=True)
    scp = roles.add_parser("scp", help="Storage SCP that writes each file to --out-dir.")
    scp.add_argument("--plan", type=Path, required=True, help="Plan JSON from _plan.Plan.write.")
    scp.add_argument("--out-dir", type=Path, required=True)
    scu = roles.add_parser("scu", help="Storage SCU sending the plan's files on one association.")
    scu.add_argument("--plan", type=Path, required=True)
    scu.add_argument("--port", type=int, required=True,
                     help="Port of the SCP or proxy on 127.0.0.1.")
    scu.add_argument("--in-process-proxy", action="store_true",
                     help="Start a LinkProxy to --port in this process and send through it.")
    scu.add_argument("--events", type=Path, default=Path("/dev/null"),
                     help="events.jsonl of the in-process proxy.")
    proxy = roles.add_parser("proxy", help="LinkProxy on an asyncio loop in a second thread.")
    proxy.add_argument("--upstream-port", type=int, required=True)
    proxy.add_argument("--events", type=Path, required=True, help="events.jsonl the proxy writes.")
    for sub in (scp, scu, proxy):
        sub.add_argument("--max-pdu", type=int, default=16382,
                         help="Maximum PDU received, in bytes.")
        sub.add_argument("--timeout-s", type=float, default=120.0,
                         help="ACSE, DIMSE and network timeout, in seconds.")

    return parser.parse_args(argv)


def main() -> None:
    # The parent sends SIGUSR1 when a transfer stalls; the stacks go to the log.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    args = parse_args(sys.argv[1:])
    runners = {"scp": run_scp, "scu": run_scu, "proxy": run_proxy}
    try:
        runners[args.role](args)
    except Exception as exc:  # noqa: BLE001 - report any failure to the parent, then exit non-zero
        traceback.print_exc()
        emit("error", message=f"{type(exc).__name__}: {exc}")
        sys.exit(1)


if __name__ == "__main__":
    main()
