"""Run one rehearsal: start every node and link, replay the corpus, stop, and record.

The runner owns the asyncio loop, on which the link proxies and the
timeline run. Nodes are pynetdicom AEs with their own threads; senders run
in worker threads. Everything a node needs from the run crosses over
through :class:`~simulator.nodes.runtime.NodeServices`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import secrets
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom import dcmread

from simulator.capability import check_topology, compare_with_ledger
from simulator.corpus import (
    MANIFEST_NAME,
    Corpus,
    CorpusInstance,
    bundled_corpus,
    group_instances,
    materialize_repeat,
)
from simulator.corpus._rewrite import ensure_file_meta
from simulator.errors import RunError
from simulator.links.faults import FaultSpec, LinkFaults
from simulator.links.firewall import Firewall, FirewallSpec
from simulator.links.proxy import LinkProxy
from simulator.links.registry import AssociationRegistry
from simulator.live.publisher import MqttPublisher
from simulator.live.settings import MqttSettings, resolve_mqtt_settings
from simulator.nodes.modality import Modality
from simulator.nodes.qr_scu import RetrieveRequest
from simulator.nodes.router import Router
from simulator.nodes.runtime import NodeServices
from simulator.nodes.scu import Destination
from simulator.nodes.storage import StorageNodeRuntime
from simulator.nodes.tls import RunTls
from simulator.recording.integrity import Explained, compare
from simulator.recording.ledger import InstanceInfo, Ledger, LedgerRow
from simulator.recording.recorder import RUN_FORMAT_VERSION, BoundRecorder, Recorder
from simulator.recording.summary import write_outputs, write_summary_json
from simulator.routing import RouteContext, parse_tag, route
from simulator.scenario.model import Scenario, Step
from simulator.topology.model import (
    ExternalNode,
    ModalityNode,
    NodeKind,
    RouterNode,
    StorageNode,
    Topology,
)
from simulator.toxiproxy.api import ToxiproxyApiServer
from simulator.toxiproxy.backend import ToxiproxyBackend

MAX_LISTED_DISAGREEMENTS = 50
"""Disagreements listed in summary.json; events.jsonl has every one."""

MAX_ROUTER_CHAIN = 8
"""Routers forwarding to routers deeper than this are taken for a routing loop."""


@dataclass
class RunOptions:
    topology_path: Path
    scenario_path: Path
    out_dir: Path
    corpus: Path | None = None
    seed: int | None = None
    include_phi: bool = False
    mqtt: MqttSettings | None = None
    """Broker of the live event stream; None uses the topology's events.mqtt, if any."""
    toxiproxy_api_port: int | None = None
    """Serve the Toxiproxy-compatible API on 127.0.0.1 at this port; 0 picks a free one."""


@dataclass
class RunResult:
    run_dir: Path
    run_id: str
    summary: dict[str, Any]

    @property
    def expectations_held(self) -> bool:
        return all(e["passed"] for e in self.summary["expectations"])


@dataclass
class Progress:
    """Counts the progress bar shows; read from the ledger and the senders."""

    total: int = 0
    sent: int = 0
    delivered: int = 0
    failed: int = 0


ProgressCallback = Callable[[Progress], None]


@dataclass
class _Site:
    modalities: dict[str, Modality] = field(default_factory=dict)
    routers: dict[str, Router] = field(default_factory=dict)
    storage: dict[str, StorageNodeRuntime] = field(default_factory=dict)
    proxies: dict[str, LinkProxy] = field(default_factory=dict)
    ports: dict[str, tuple[str, int]] = field(default_factory=dict)


class Rehearsal:
    """One run of a scenario through a topology."""

    def __init__(self, topology: Topology, scenario: Scenario, options: RunOptions) -> None:
        self.topology = topology
        self.scenario = scenario
        self.options = options
        self.seed = options.seed if options.seed is not None else scenario.seed
        self.run_id = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)
        self.run_dir = options.out_dir
        self.registry = AssociationRegistry()
        self.tls = RunTls()
        self.site = _Site()
        self.source_paths: dict[str, Path] = {}
        self.groups: dict[str, list[list[CorpusInstance]]] = {}
        self.progress = Progress()
        self._sender_tasks: list[asyncio.Task[None]] = []
        self._connections_opened: Counter[str] = Counter()
        self._connections_at_last_step: Counter[str] = Counter()
        self._max_lengths: dict[tuple[str, str], dict[str, Any]] = {}
        self._recorder: Recorder | None = None
        self._ledger: Ledger | None = None
        self._instances: dict[str, InstanceInfo] = {}
        self._corpus_instances: list[CorpusInstance] = []
        self.predictions: dict[str, Any] = {}
        self._started_mono = 0.0
        self._publisher: MqttPublisher | None = None
        self._fault_backend: ToxiproxyBackend | None = None
        self.toxiproxy_api: ToxiproxyApiServer | None = None

    @property
    def recorder(self) -> Recorder:
        assert self._recorder is not None, "the run has not started"
        return self._recorder

    @property
    def ledger(self) -> Ledger:
        assert self._ledger is not None, "the run has not started"
        return self._ledger

    async def run(self, on_progress: ProgressCallback | None = None) -> RunResult:
        """Run the whole rehearsal and write the run directory."""
        self._prepare_run_dir()
        self._recorder = Recorder(self.run_dir / "events.jsonl", self.run_id)
        self._ledger = Ledger(self.recorder)
        self.recorder.add_listener(self._on_event)
        self._start_publisher()
        self._started_mono = time.monotonic()
        self.recorder.emit(
            "run.started", format_version=RUN_FORMAT_VERSION, site=self.topology.site,
            scenario=self.scenario.name, seed=self.seed, run_dir=str(self.run_dir),
        )
        outcome = "finished"
        try:
            self._load_corpus()
            await self._start_fault_backend()
            await self._start_site()
            await self._start_toxiproxy_api()
            outcome = await self._drive(on_progress)
        except (KeyboardInterrupt, asyncio.CancelledError):
            outcome = "interrupted"
            self.recorder.emit("run.interrupted")
            raise
        except BaseException as exc:
            outcome = f"error: {type(exc).__name__}"
            self.recorder.emit("run.error", error=str(exc), error_type=type(exc).__name__)
            raise
        finally:
            await self._stop_toxiproxy_api()
            left = await self._stop_site()
            await self._stop_fault_backend()
            summary = self._finish(outcome, left)
            summary = await self._stop_publisher(summary)
        return RunResult(self.run_dir, self.run_id, summary)

    # The live event stream and Toxiproxy; see docs/live-events.md and docs/toxiproxy.md.

    def _start_publisher(self) -> None:
        events = self.topology.events
        settings = self.options.mqtt or resolve_mqtt_settings(
            None, events.mqtt, topology_buffer_events=events.mqtt_buffer
        )
        if settings is None:
            return
        self._publisher = MqttPublisher(settings, self.run_id, self._live_status)
        self._publisher.attach(self.recorder)
        self._publisher.start()

    def _live_status(self) -> dict[str, Any]:
        return {"site": self.topology.site, "scenario": self.scenario.name,
                **dataclasses.asdict(self.progress),
                "elapsed_s": round(time.monotonic() - self._started_mono, 3)}

    async def _stop_publisher(self, summary: dict[str, Any]) -> dict[str, Any]:
        """Publish the final status and record in summary.json what reached the broker."""
        if self._publisher is None:
            return summary
        held = all(e["passed"] for e in summary["expectations"]) if summary else None
        final = {**self._live_status(), "outcome": summary.get("outcome"),
                 "expectations_held": held, "states": summary.get("states", {})}
        counts = await self._publisher.stop(final)
        if summary:
            summary["mqtt"] = counts.as_record()
            write_summary_json(self.run_dir, summary)
        return summary

    async def _start_fault_backend(self) -> None:
        settings = self.topology.faults
        if settings.backend != "toxiproxy" or settings.url is None:
            return
        backend = ToxiproxyBackend(settings.url, self.topology.site, self.recorder)
        await backend.start()
        self._fault_backend = backend

    async def _stop_fault_backend(self) -> None:
        if self._fault_backend is not None:
            await self._fault_backend.stop()

    async def _faults_for_link(self, link: str, host: str, port: int,
                               recorder: BoundRecorder) -> tuple[LinkFaults, str, int]:
        """Return a link's faults and where its proxy forwards: the node or a Toxiproxy proxy."""
        if self._fault_backend is None:
            return LinkFaults(link, self.seed, recorder), host, port
        return await self._fault_backend.add_link(link, host, port, self.seed, recorder)

    async def _start_toxiproxy_api(self) -> None:
        if self.options.toxiproxy_api_port is None:
            return
        api = ToxiproxyApiServer(self.options.toxiproxy_api_port, self.site.proxies,
                                 self.recorder, self.registry, self.seed)
        await api.start()
        self.toxiproxy_api = api

    async def _stop_toxiproxy_api(self) -> None:
        if self.toxiproxy_api is not None:
            await self.toxiproxy_api.stop()

    # Set-up.

    def _prepare_run_dir(self) -> None:
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise RunError(f"--out {self.run_dir} is a file; give the path of a new folder")
        if self.run_dir.exists() and any(self.run_dir.iterdir()):
            raise RunError(
                f"run directory {self.run_dir} exists and is not empty; "
                "choose another --out or remove it"
            )
        self.run_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.options.topology_path, self.run_dir / "topology.yaml")
        shutil.copyfile(self.options.scenario_path, self.run_dir / "scenario.yaml")

    def _corpus_root(self) -> Path:
        if self.options.corpus is not None:
            return self.options.corpus
        if self.scenario.corpus == "bundled":
            return bundled_corpus()
        return (self.options.scenario_path.parent / self.scenario.corpus).resolve()

    def _load_corpus(self) -> None:
        root = self._corpus_root()
        corpus = Corpus.load(root)
        self._corpus_instances = corpus.instances
        skipped = [{"file": f, "reason": r} for f, r in corpus.skipped if f != MANIFEST_NAME]
        self.recorder.emit("corpus.loaded", root=str(root), instances=len(corpus.instances),
                           skipped=skipped)
        seen: set[str] = set()
        for sender in self.scenario.senders:
            selected = corpus.select(
                list(sender.select.glob) if sender.select.glob else None,
                list(sender.select.sop_class) if sender.select.sop_class else None,
                list(sender.select.modality) if sender.select.modality else None,
            )
            groups: list[list[CorpusInstance]] = []
            name = sender.sender_name
            for repeat_index in range(self.scenario.repeat):
                copy_index = sender.copy_number * self.scenario.repeat + repeat_index
                copies = materialize_repeat(
                    selected, copy_index, self.seed,
                    self.run_dir / "corpus-copies" / f"{name}-{copy_index}",
                )
                copies = [c for c in copies if self._first_sighting(c, seen, name)]
                copies = [self._with_file_meta(c) for c in copies]
                groups += group_instances(copies, sender.group_by)
            self.groups[name] = groups
            for group in groups:
                for instance in group:
                    self.source_paths[instance.sop_instance_uid] = instance.path
            self.recorder.emit("sender.selected", node=sender.modality, sender=name,
                               instances=sum(len(g) for g in groups), associations=len(groups))
        self.progress.total = sum(len(g) for gs in self.groups.values() for g in gs)

    def _with_file_meta(self, instance: CorpusInstance) -> CorpusInstance:
        """Return the instance, or a copy with File Meta Information when the file has none.

        Files are sent as they are on disk, and sending needs the transfer
        syntax from the file meta; pydicom's guess from the encoding fills it in.
        """
        with instance.path.open("rb") as stream:
            if stream.read(132)[128:132] == b"DICM":
                return instance
        target = self.run_dir / "corpus-copies" / "file-meta" / instance.relpath
        if not target.exists():
            dataset = dcmread(instance.path, force=True)
            ensure_file_meta(dataset, instance.transfer_syntax_uid)
            target.parent.mkdir(parents=True, exist_ok=True)
            dataset.save_as(target, enforce_file_format=True)
            self.recorder.emit("corpus.file_meta_added", file=instance.relpath,
                               transfer_syntax=instance.transfer_syntax_uid)

        return dataclasses.replace(instance, path=target)

    def _first_sighting(self, instance: CorpusInstance, seen: set[str], sender: str) -> bool:
        # Two senders selecting the same file would send one SOP Instance UID twice.
        if instance.sop_instance_uid in seen:
            self.recorder.emit("sender.duplicate_skipped", node=sender,
                               sop_instance_uid=instance.sop_instance_uid, file=instance.relpath)
            return False
        seen.add(instance.sop_instance_uid)
        return True

    def _services(self, node: str) -> NodeServices:
        work_dir = self.run_dir / "nodes" / node
        work_dir.mkdir(parents=True, exist_ok=True)
        return NodeServices(
            recorder=_bind(self.recorder, node=node), registry=self.registry,
            work_dir=work_dir, ledger=self.ledger, instances=self._instances,
            expand_destinations=self.expand_destinations, tls=self.tls,
        )

    @property
    def _final_nodes(self) -> set[str]:
        return {n for n, d in self.topology.nodes.items() if d.kind != NodeKind.ROUTER}

    async def _start_site(self) -> None:
        nodes = self.topology.nodes
        for name, decl in nodes.items():
            if isinstance(decl, ExternalNode) and decl.port is not None:
                self.site.ports[name] = (decl.host, decl.port)
        # Receivers first, so that links have somewhere to connect.
        for name, decl in nodes.items():
            if isinstance(decl, StorageNode):
                runtime = StorageNodeRuntime(decl, self._services(name))
                self.site.storage[name] = runtime
                self.site.ports[name] = (decl.host, await asyncio.to_thread(runtime.start, decl.port or 0))
        destinations = await self._start_links_for_routers()
        for name, runtime in self.site.storage.items():
            runtime.connect(self.topology, destinations[name], self._link_faults)
        for name, decl in nodes.items():
            if isinstance(decl, ModalityNode):
                target = self.topology.destination_of(decl)
                modality = Modality(decl, self._services(name), destinations[name][target],
                                    self._final_nodes)
                for sender in self.scenario.senders:
                    if sender.modality == name:
                        modality.register(self.groups.get(sender.sender_name, []))
                self.site.modalities[name] = modality
        for name, decl in nodes.items():
            self.recorder.emit("node.started", node=name, node_kind=str(decl.kind),
                               ae_title=decl.ae_title,
                               address=list(self.site.ports[name]) if name in self.site.ports else None)

    async def _start_links_for_routers(self) -> dict[str, dict[str, Destination]]:
        """Start routers and every link proxy; return each node's destinations."""
        nodes = self.topology.nodes
        # A router's port must be known before links to it start, and its
        # destinations before it starts: bind its SCP first, then links, then forwarders.
        routers = {n: d for n, d in nodes.items() if isinstance(d, RouterNode)}
        destinations: dict[str, dict[str, Destination]] = {n: {} for n in nodes}
        for link in self.topology.links:
            destinations[link.from_node][link.to_node] = Destination(
                node=link.to_node, link=link.link_name, host="127.0.0.1", port=0,
                called_ae=link.called_ae or nodes[link.to_node].ae_title,
                tls=nodes[link.to_node].tls,
            )
        for name, decl in routers.items():
            router = Router(decl, self._services(name), destinations[name], self._final_nodes)
            router.node_by_ae = {n.ae_title: n.name for n in nodes.values()}
            self.site.routers[name] = router
            port = await asyncio.to_thread(router.scp.start, decl.port or 0)
            self.site.ports[name] = (decl.host, port)
        for link in self.topology.links:
            host, port = self.site.ports[link.to_node]
            link_recorder = _bind(self.recorder, link=link.link_name)
            faults, forward_host, forward_port = await self._faults_for_link(
                link.link_name, "127.0.0.1" if host in ("localhost", "0.0.0.0") else host, port,
                link_recorder,
            )
            for spec in link.faults:
                faults.add(spec)
            proxy = LinkProxy(
                link.link_name, forward_host, forward_port,
                link_recorder, self.registry,
                faults=faults,
                firewall=Firewall(link.link_name, link.firewall, link_recorder),
                source_node=link.from_node,
                encrypted=nodes[link.from_node].tls and nodes[link.to_node].tls,
                listen_port=link.listen_port or 0,
                # The sender reaches the proxy at once; the proxy's upstream
                # connect is where the sender's connection timeout applies.
                connect_timeout_s=nodes[link.from_node].timeouts.connection_s or 3600.0,
            )
            await proxy.start()
            self.site.proxies[link.link_name] = proxy
            self.recorder.emit("link.started", link=link.link_name, listen_port=proxy.port,
                               upstream=[host, port])
            old = destinations[link.from_node][link.to_node]
            destinations[link.from_node][link.to_node] = Destination(
                old.node, old.link, "127.0.0.1", proxy.port, old.called_ae, old.tls
            )
        for name, router in self.site.routers.items():
            router.destinations = destinations[name]
            router.start_forwarders()

        return destinations

    # Routing expectations, used by the ledger.

    def expand_destinations(self, node: str, path: Path, calling_ae: str, called_ae: str,
                            depth: int = 0) -> list[str]:
        """Return the final destinations an instance sent to ``node`` would reach now."""
        router = self.site.routers.get(node)
        if router is None:
            return [node]
        if depth >= MAX_ROUTER_CHAIN:
            return [node]
        header = dcmread(path, stop_before_pixels=True, force=True)
        sop_class = str(header.get("SOPClassUID", ""))
        decision = route(router.rules(), header, RouteContext(calling_ae, called_ae, sop_class))
        if not decision.destinations:
            return [node]
        finals: list[str] = []
        for destination in decision.destinations:
            next_called = router.destinations[destination].called_ae
            finals += self.expand_destinations(destination, path, router.declaration.ae_title,
                                               next_called, depth + 1)
        return list(dict.fromkeys(finals))

    # The timeline.

    async def _drive(self, on_progress: ProgressCallback | None) -> str:
        steps = list(self.scenario.timeline)
        if not any(s.action == "start_sending" for s in steps):
            steps.insert(0, Step(action="start_sending", at_s=0))
        pending = list(enumerate(steps))
        self._sender_tasks = []
        deadline = self._started_mono + self.scenario.timeout_s
        async with asyncio.TaskGroup() as group:
            while True:
                self._update_progress(on_progress)
                # Steps fire in file order; a step waits for the ones before it.
                while pending and self._step_due(pending[0][1]):
                    index, step = pending.pop(0)
                    self._run_step(index, step, group)
                waiting = any(s.action in ("start_sending", "hold", "retrieve") for _, s in pending)
                if self._idle() and not waiting:
                    break
                if time.monotonic() >= deadline:
                    self.recorder.emit(
                        "run.timeout", timeout_s=self.scenario.timeout_s,
                        steps_waiting=[{"step": i, "action": s.action,
                                        "after": s.after.model_dump(exclude_none=True)
                                        if s.after else None, "at_s": s.at_s}
                                       for i, s in pending],
                    )
                    for task in self._sender_tasks:
                        task.cancel()
                    return "timed-out"
                await asyncio.sleep(0.05)
        for index, step in pending:
            self.recorder.emit("scenario.step_skipped", step=index, action=step.action,
                               reason="every sender had finished before the step was due")
        self._update_progress(on_progress)

        return "finished"

    def _idle(self) -> bool:
        return all(t.done() for t in self._sender_tasks) and not self._busy()

    def _step_due(self, step: Step) -> bool:
        if step.at_s is not None:
            return time.monotonic() - self._started_mono >= step.at_s
        if step.after is None:
            return True
        if step.after.sent is not None:
            return self.progress.sent >= step.after.sent
        if step.after.delivered is not None:
            return self.progress.delivered >= step.after.delivered
        if step.after.association_on is not None:
            link = step.after.association_on
            return self._connections_opened[link] > self._connections_at_last_step[link]
        return self._idle()

    def _run_step(self, index: int, step: Step, group: asyncio.TaskGroup) -> None:
        self._connections_at_last_step = Counter(self._connections_opened)
        self.recorder.emit("scenario.step", step=index, action=step.action,
                           at_s=round(time.monotonic() - self._started_mono, 3),
                           router=step.router, rule_set=step.rule_set,
                           senders=list(step.senders) if step.senders else None)
        if step.action == "cutover":
            assert step.router is not None and step.rule_set is not None
            self.site.routers[step.router].cutover(step.rule_set)
            return
        if step.action == "hold":
            return
        if step.action == "retrieve":
            self._start_retrieve(index, step, group)
            return
        if step.link is not None:
            self._change_link(step)
            return
        for sender in self.scenario.senders:
            if step.senders and sender.sender_name not in step.senders:
                continue
            modality = self.site.modalities[sender.modality]
            groups = self.groups.get(sender.sender_name, [])
            self._sender_tasks.append(group.create_task(
                asyncio.to_thread(modality.send, groups, sender.concurrency, sender.release,
                                  sender.pause_between_s),
                name=f"sender-{sender.sender_name}",
            ))

    def _start_retrieve(self, index: int, step: Step, group: asyncio.TaskGroup) -> None:
        """Run a retrieve step in a worker thread; the run waits for it as for a sender."""
        assert step.viewer is not None
        assert step.from_node is not None
        assert step.service is not None
        request = RetrieveRequest(
            step=index, source=step.from_node, service=step.service, model=step.model or "study",
            level=step.level or "STUDY", keys=dict(step.keys or {}),
            move_destination=step.move_destination,
        )
        self._sender_tasks.append(group.create_task(
            asyncio.to_thread(self.site.storage[step.viewer].retrieve, request),
            name=f"retrieve-{index}",
        ))

    def _link_faults(self, link: str) -> list[Any]:
        proxy = self.site.proxies.get(link)
        if proxy is None:
            return []
        return list(proxy.faults.specs())

    def _change_link(self, step: Step) -> None:
        proxy = self.site.proxies[step.link or ""]
        if step.action == "add_fault":
            proxy.faults.add(FaultSpec.model_validate(step.fault))
        elif step.action == "update_fault":
            proxy.faults.update(step.name or "", attributes=step.attributes, toxicity=step.toxicity)
        elif step.action == "remove_fault":
            proxy.faults.remove(step.name or "")
        elif step.action == "set_firewall":
            proxy.firewall.replace(
                None if step.firewall is None else FirewallSpec.model_validate(step.firewall)
            )

    def _on_event(self, event: dict[str, Any]) -> None:
        kind = event.get("kind")
        if kind == "link.connection_opened":
            self._connections_opened[str(event.get("link"))] += 1
        elif kind in ("association.requested", "association.accepted"):
            self._check_max_length(event)

    def _check_max_length(self, event: dict[str, Any]) -> None:
        """Record a Maximum Length that changed between what one side declared and the other saw.

        The requestor's value is compared on the A-ASSOCIATE-RQ, the acceptor's on the AC.
        """
        field = "max_pdu_requestor" if event["kind"] == "association.requested" else "max_pdu_acceptor"
        key = (str(event.get("assoc_id")), field)
        seen = self._max_lengths.setdefault(key, {})
        seen[str(event.get("role"))] = event.get(field)
        if len(seen) == 2 and seen["requestor"] != seen["acceptor"]:
            declaring = "requestor" if field == "max_pdu_requestor" else "acceptor"
            other = "acceptor" if declaring == "requestor" else "requestor"
            self.recorder.emit(
                "association.max_length_substituted", assoc_id=key[0], link=event.get("link"),
                declared_by=declaring, declared=seen[declaring], received=seen[other],
            )

    def _busy(self) -> bool:
        return (any(r.busy() for r in self.site.routers.values())
                or any(s.busy() for s in self.site.storage.values()))

    def _update_progress(self, on_progress: ProgressCallback | None) -> None:
        self.progress.sent = sum(m.sent for m in self.site.modalities.values())
        self.progress.delivered = self.ledger.delivered_count
        self.progress.failed = self.ledger.failed_count
        if on_progress is not None:
            on_progress(self.progress)

    # Tear-down and results.

    async def _stop_site(self) -> list[dict[str, Any]]:
        left: list[dict[str, Any]] = []
        for modality in self.site.modalities.values():
            await asyncio.to_thread(modality.client.abort_held)
        for name, router in self.site.routers.items():
            for entry in await asyncio.to_thread(router.stop):
                left.append({"node": name, **entry})
        for runtime in self.site.storage.values():
            await asyncio.to_thread(runtime.stop)
        for name, proxy in self.site.proxies.items():
            await proxy.stop()
            self.recorder.emit("link.stopped", link=name, **_proxy_stats(proxy))
        return left

    def _finish(self, outcome: str, spool_left: list[dict[str, Any]]) -> dict[str, Any]:
        if self._ledger is None:
            return {}
        self._record_unsent()
        self.ledger.finalize(self._verify)
        if self.options.include_phi:
            self._add_patient_data()
        self.ledger.write(self.run_dir / "ledger.jsonl")
        self.predictions = self._compare_with_check()
        summary = write_outputs(self, outcome, spool_left)
        self.recorder.emit("run.finished", outcome=outcome,
                           expectations_held=all(e["passed"] for e in summary["expectations"]),
                           duration_s=round(time.monotonic() - self._started_mono, 3))
        self.recorder.close()

        return summary

    def _add_patient_data(self) -> None:
        """Copy patient name, ID and birth date into ledger rows; only with --include-phi."""
        headers: dict[str, dict[str, str]] = {}
        for row in self.ledger:
            source = self.source_paths.get(row.sop_instance_uid)
            if source is None or not source.exists():
                continue
            if row.sop_instance_uid not in headers:
                header = dcmread(source, stop_before_pixels=True)
                headers[row.sop_instance_uid] = {
                    "name": str(header.get("PatientName", "")),
                    "id": str(header.get("PatientID", "")),
                    "birth_date": str(header.get("PatientBirthDate", "")),
                }
            row.patient = headers[row.sop_instance_uid]

    def _compare_with_check(self) -> dict[str, Any]:
        """Compare what ``rehearse check`` predicts from the declarations with what happened.

        A disagreement is a finding of its own: either a node's declaration
        does not describe what it does, or the node misbehaves.
        """
        try:
            result = check_topology(self.topology, self._corpus_instances, self.scenario)
            mismatches = compare_with_ledger(result, [row.as_record() for row in self.ledger])
        except Exception as exc:  # noqa: BLE001 - a failing check must never lose a run's results
            self.recorder.emit("check.error", error=type(exc).__name__, detail=str(exc))
            return {"error": f"{type(exc).__name__}: {exc}"}
        for mismatch in mismatches:
            self.recorder.emit("check.disagreement", source=mismatch.key[0],
                               destination=mismatch.key[1], source_file=mismatch.key[2],
                               predicted=mismatch.predicted, observed=mismatch.observed,
                               finding=str(mismatch))
        return {
            "predicted_rows": len(result.predictions),
            "disagreements": len(mismatches),
            "findings": [str(m) for m in mismatches[:MAX_LISTED_DISAGREEMENTS]],
        }

    def _record_unsent(self) -> None:
        for name, modality in self.site.modalities.items():
            target = self.topology.destination_of(modality.declaration)
            for uid in sorted(modality.unsent):
                path = self.source_paths[uid]
                finals = self.expand_destinations(
                    target, path, modality.declaration.ae_title, modality.destination.called_ae)
                for final in finals:
                    self.ledger.expect(self._instances[uid], final)

    def _verify(self, row: LedgerRow) -> tuple[bool, bool | None, dict[str, Any] | None]:
        storage = self.site.storage.get(row.destination)
        if storage is None:
            # An external system: its success status is all the evidence there is.
            return row.acknowledged, None, None
        stored = storage.stored_path(row.sop_instance_uid)
        if not stored.exists():
            return False, None, None
        row.delivered_path = str(stored)
        source = self.source_paths.get(row.sop_instance_uid)
        explained = self._explained(row.destination)
        if row.service != "store" and row.source in self.site.storage:
            # A retrieved copy is compared with the retrieve SCP's copy; pynetdicom may
            # convert between uncompressed transfer syntaxes on the way.
            source = self.site.storage[row.source].stored_path(row.sop_instance_uid)
            explained = Explained(transcode=True)
        if source is None or not source.exists():
            return True, None, None
        comparison = compare(source, stored, explained)

        return True, not comparison.unexplained, comparison.as_record()

    def _nodes_reaching(self, destination: str) -> set[str]:
        """Return the destination and every router whose rules can forward to it, directly or not."""
        reaching = {destination}
        changed = True
        while changed:
            changed = False
            for name, router in self.site.routers.items():
                if name in reaching:
                    continue
                targets = {t for _, rule in router.declaration.located_rules() for t in rule.forward}
                if targets & reaching:
                    reaching.add(name)
                    changed = True

        return reaching

    def _explained(self, destination: str) -> Explained:
        tags: set[str] = set()
        dropped = False
        kept: set[str] | None = None
        transcode = False
        for router in self.site.routers.values():
            decl = router.declaration
            leads_there = self._nodes_reaching(destination)
            relevant = [r for _, r in decl.located_rules()
                        if any(target in leads_there for target in r.forward)]
            if not relevant:
                continue
            for rule in relevant:
                for key in list(rule.coerce.set) + [k for k in rule.coerce.remove
                                                    if not k.startswith("private:")]:
                    tag = parse_tag(key)
                    tags.add(f"({tag.group:04X},{tag.element:04X})")
                if any(k.startswith("private:") for k in rule.coerce.remove):
                    kept = kept or set()
                if rule.coerce.reencode_utf8 is not None:
                    tags.add("(0008,0005)")
            if decl.private_tags == "drop":
                dropped = True
            elif decl.private_tags != "keep":
                kept = (kept or set()) | set(decl.private_tags)
            transcode = transcode or decl.transcode
        return Explained(frozenset(tags), dropped, None if kept is None else frozenset(kept),
                         transcode)


def _bind(recorder: Recorder, **fields: Any) -> BoundRecorder:
    return BoundRecorder(recorder, fields)


def _proxy_stats(proxy: LinkProxy) -> dict[str, Any]:
    stats = getattr(proxy, "stats", None)
    if stats is None:
        return {}
    if isinstance(stats, dict):
        return stats
    return {k: v for k, v in vars(stats).items() if not k.startswith("_")}


def run_rehearsal(topology: Topology, scenario: Scenario, options: RunOptions,
                  on_progress: ProgressCallback | None = None) -> RunResult:
    """Run a rehearsal to the end on a new event loop."""
    rehearsal = Rehearsal(topology, scenario, options)

    return asyncio.run(rehearsal.run(on_progress))
