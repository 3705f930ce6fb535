"""A router: a Storage SCP that spools what it receives and forwards it by rules.

Each destination has its own forwarder thread and queue, so a slow or
failing destination never holds up the others. A transient failure is
retried with exponential back-off; a permanent one (A-ASSOCIATE-RJ with
result 1, no accepted presentation context, a failure status other than
0xA7xx) is never retried. A spooled file is deleted only when every
destination has confirmed it; whatever is left when the run ends is reported.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from simulator.nodes.runtime import NodeServices, instance_info
from simulator.nodes.scp import Received, StorageSCP
from simulator.nodes.scu import Destination, Outgoing, StoreClient
from simulator.recording.failures import Failure, FailureKind, Side
from simulator.routing import (
    UTF8_TERM,
    RouteContext,
    apply_coercion,
    private_creators,
    remove_private_block,
    route,
    write_character_set_term,
)
from simulator.topology.model import Coercion, RouterNode

_TRANSCODABLE = {ExplicitVRLittleEndian, ImplicitVRLittleEndian,
                 "1.2.840.10008.1.2.1.99"}  # deflated explicit VR little endian


@dataclass
class ForwardJob:
    received: Received
    destination: str
    coercions: list[Coercion]
    attempts: int = 0
    not_before_mono: float = 0.0


@dataclass
class _SpoolEntry:
    path: Path
    waiting_for: set[str] = field(default_factory=set)


class Router:
    """A running router node."""

    def __init__(self, declaration: RouterNode, services: NodeServices,
                 destinations: dict[str, Destination], final_nodes: set[str]) -> None:
        self.declaration = declaration
        self.services = services
        self.destinations = destinations
        self.final_nodes = final_nodes
        self.recorder = services.recorder.bind(node=declaration.name)
        self.active_rule_set = declaration.active_rule_set
        self.node_by_ae: dict[str, str] = {}
        """Node names by AE title, so a real SCU's instances name their node as source."""
        self.spool_dir = services.work_dir / "spool"
        self.out_dir = services.work_dir / "outgoing"
        self.scp = StorageSCP(declaration, services, self.spool_dir, on_stored=self._on_received)
        self.client = StoreClient(declaration, self.recorder, services.registry,
                                  lambda: services.next_assoc_id(declaration.name),
                                  converter=self._transcode, tls=services.tls)
        self._queues: dict[str, list[ForwardJob]] = {d: [] for d in destinations}
        self._in_flight: dict[str, int] = {d: 0 for d in destinations}
        self._spool: dict[str, _SpoolEntry] = {}
        self._cond = threading.Condition()
        self._stopping = False
        self._threads: list[threading.Thread] = []

    def start(self, port: int) -> int:
        bound = self.scp.start(port)
        self.start_forwarders()

        return bound

    def start_forwarders(self) -> None:
        """Start one forwarder thread per destination; call once ``destinations`` is final."""
        self._queues = {d: [] for d in self.destinations}
        self._in_flight = {d: 0 for d in self.destinations}
        for name in self.destinations:
            thread = threading.Thread(target=self._forward_loop, args=(name,),
                                      name=f"forward-{self.declaration.name}-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def cutover(self, rule_set: str) -> None:
        previous = self.active_rule_set
        self.active_rule_set = rule_set
        self.recorder.emit("router.cutover", from_rule_set=previous, to_rule_set=rule_set)

    def rules(self) -> tuple[Any, ...]:
        return self.declaration.rule_set(self.active_rule_set)

    def busy(self) -> bool:
        with self._cond:
            return any(self._queues.values()) or any(self._in_flight.values())

    def stop(self) -> list[dict[str, Any]]:
        """Stop receiving and forwarding; return what is left in the spool."""
        self.scp.stop()
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout=60)
        left = [{"sop_instance_uid": uid, "path": str(entry.path),
                 "waiting_for": sorted(entry.waiting_for)}
                for uid, entry in self._spool.items()]
        self.recorder.emit("spool.left", count=len(left))

        return left

    # Ingress: decide where each received instance goes.

    def _on_received(self, received: Received) -> None:
        header = dcmread(received.path, stop_before_pixels=True)
        context = RouteContext(received.calling_ae, received.called_ae, received.sop_class_uid)
        decision = route(self.rules(), header, context)
        info = instance_info(self.services, received.sop_instance_uid, received.path,
                             source=self.node_by_ae.get(received.calling_ae, received.calling_ae))
        if not decision.destinations:
            self.recorder.emit("routing.unmatched", sop_instance_uid=received.sop_instance_uid,
                               rule_set=self.active_rule_set, calling_ae=received.calling_ae)
            self.services.ledger.expect(info, self.declaration.name)
            self.services.ledger.failed(received.sop_instance_uid, self.declaration.name, Failure(
                FailureKind.NO_MATCHING_RULE, None, Side.ROUTER, True,
                f"no rule of rule set {self.active_rule_set or 'rules'} matched",
            ))
            self._spool[received.sop_instance_uid] = _SpoolEntry(received.path, set())
            return
        self.recorder.emit("routing.matched", sop_instance_uid=received.sop_instance_uid,
                           rule_set=self.active_rule_set,
                           rules=[r.name for r in decision.rules],
                           destinations=list(decision.destinations))
        for destination in decision.destinations:
            for final in self._finals(destination, received):
                self.services.ledger.expect(info, final)
                if received.link is not None:
                    self.services.ledger.attempt(received.sop_instance_uid, final, received.link)
        with self._cond:
            self._spool[received.sop_instance_uid] = _SpoolEntry(
                received.path, set(decision.destinations)
            )
            for destination in decision.destinations:
                self._queues[destination].append(
                    ForwardJob(received, destination, decision.coercions_for(destination))
                )
            self._cond.notify_all()

    def _finals(self, destination: str, received: Received) -> list[str]:
        if destination in self.final_nodes:
            return [destination]
        return self.services.expand_destinations(
            destination, received.path, self.declaration.ae_title,
            self.destinations[destination].called_ae,
        )

    # Egress: one forwarder per destination.

    def _take_batch(self, name: str) -> list[ForwardJob]:
        limit = self.declaration.max_instances_per_association
        with self._cond:
            while not self._stopping:
                now = time.monotonic()
                ready = [j for j in self._queues[name] if j.not_before_mono <= now][:limit]
                if ready:
                    for job in ready:
                        self._queues[name].remove(job)
                    self._in_flight[name] += len(ready)
                    return ready
                waits = [j.not_before_mono - now for j in self._queues[name]]
                self._cond.wait(timeout=min(waits) if waits else 0.5)
        return []

    def _forward_loop(self, name: str) -> None:
        destination = self.destinations[name]
        while True:
            batch = self._take_batch(name)
            if not batch:
                return
            try:
                self._forward_batch(batch, destination)
            except Exception as exc:  # noqa: BLE001 - a broken batch must not stall the run
                self._fail_batch(batch, destination, exc)
            finally:
                with self._cond:
                    self._in_flight[name] -= len(batch)
                    self._cond.notify_all()

    def _forward_batch(self, batch: list[ForwardJob], destination: Destination) -> None:
        items = {}
        for job in batch:
            items[job.received.sop_instance_uid] = self._prepare(job)
        for job in batch:
            for final in self._finals(destination.node, job.received):
                self.services.ledger.attempt(job.received.sop_instance_uid, final,
                                             destination.link)
        outcomes = self.client.store_batch(destination, list(items.values()))
        jobs = {j.received.sop_instance_uid: j for j in batch}
        for outcome in outcomes:
            self._settle(jobs[outcome.item.sop_instance_uid], outcome, destination)

    def _fail_batch(self, batch: list[ForwardJob], destination: Destination,
                    exc: Exception) -> None:
        """Record every instance of a batch the router could not process, and carry on."""
        failure = Failure(
            FailureKind.SIMULATOR_ERROR, destination.link, Side.RUN, True,
            f"the simulator could not forward: {type(exc).__name__}: {exc}",
            {"error_type": type(exc).__name__},
        )
        self.recorder.emit("forward.error", destination=destination.node,
                           instances=len(batch), **failure.as_record())
        for job in batch:
            for final in self._finals(destination.node, job.received):
                self.services.ledger.failed(job.received.sop_instance_uid, final, failure)

    def _settle(self, job: ForwardJob, outcome: Any, destination: Destination) -> None:
        uid = job.received.sop_instance_uid
        finals = self._finals(destination.node, job.received)
        if outcome.succeeded:
            if destination.node in self.final_nodes:
                self.services.ledger.delivered(uid, destination.node, destination.link,
                                               outcome.status, warning=outcome.failure)
            self._confirm(uid, destination.node)
            return
        failure: Failure = outcome.failure
        job.attempts += 1
        policy = self.declaration.retry
        if not failure.permanent and job.attempts < policy.max_attempts:
            backoff_s = min(policy.max_backoff_s,
                            policy.initial_backoff_s * policy.multiplier ** (job.attempts - 1))
            self.recorder.emit("forward.retry", sop_instance_uid=uid, destination=destination.node,
                               attempt=job.attempts, backoff_s=backoff_s, **failure.as_record())
            job.not_before_mono = time.monotonic() + backoff_s
            with self._cond:
                self._queues[destination.node].append(job)
            return
        self.recorder.emit("forward.failed", sop_instance_uid=uid, destination=destination.node,
                           attempts=job.attempts, **failure.as_record())
        for final in finals:
            self.services.ledger.failed(uid, final, failure, outcome.status)

    def _confirm(self, uid: str, destination: str) -> None:
        with self._cond:
            entry = self._spool.get(uid)
            if entry is None:
                return
            entry.waiting_for.discard(destination)
            if entry.waiting_for:
                return
            del self._spool[uid]
        entry.path.unlink(missing_ok=True)
        self.recorder.emit("spool.removed", sop_instance_uid=uid)

    # What the router changes before it forwards.

    def _prepare(self, job: ForwardJob) -> Outgoing:
        """Apply coercions and the private tag policy; return the file to send."""
        received = job.received
        policy = self.declaration.private_tags
        needs_change = any(c.set or c.remove or c.reencode_utf8 for c in job.coercions)
        if not needs_change and policy == "keep":
            return Outgoing(received.path, received.sop_class_uid, received.sop_instance_uid,
                            received.transfer_syntax_uid)
        dataset = dcmread(received.path)
        changes: list[dict[str, Any]] = []
        for coercion in job.coercions:
            changes += apply_coercion(dataset, coercion)
        changes += self._apply_private_policy(dataset)
        transfer_syntax = received.transfer_syntax_uid
        out_dir = self.out_dir / job.destination
        out_dir.mkdir(parents=True, exist_ok=True)
        out_path = out_dir / f"{received.sop_instance_uid}.dcm"
        dataset.save_as(out_path, enforce_file_format=True)
        for coercion in job.coercions:
            term = coercion.reencode_utf8
            if term is not None and term != UTF8_TERM:
                write_character_set_term(out_path, term)
                changes.append({"action": "write-term", "tag": "(0008,0005)", "to": term})
        self.recorder.emit("router.coerced", sop_instance_uid=received.sop_instance_uid,
                           destination=job.destination, changes=changes)

        return Outgoing(out_path, received.sop_class_uid, received.sop_instance_uid,
                        transfer_syntax)

    def _apply_private_policy(self, dataset: Any) -> list[dict[str, Any]]:
        policy = self.declaration.private_tags
        if policy == "keep":
            return []
        if policy == "drop":
            creators = private_creators(dataset)
            dataset.remove_private_tags()
            return [{"action": "drop-private", "creators": creators}]
        changes: list[dict[str, Any]] = []
        for creator in private_creators(dataset):
            if creator not in policy:
                changes += remove_private_block(dataset, creator)

        return changes

    def _transcode(self, item: Outgoing, accepted: set[str]) -> Outgoing | None:
        """Re-encode an uncompressed object into a transfer syntax the destination accepted."""
        if not self.declaration.transcode or item.transfer_syntax_uid not in _TRANSCODABLE:
            return None
        target = next((ts for ts in (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
                       if ts in accepted), None)
        if target is None:
            return None
        dataset = dcmread(item.path)
        dataset.file_meta.TransferSyntaxUID = target
        out_path = item.path.with_name(f"{item.sop_instance_uid}.{target}.dcm")
        dataset.save_as(out_path, enforce_file_format=True)
        self.recorder.emit("router.transcoded", sop_instance_uid=item.sop_instance_uid,
                           from_transfer_syntax=item.transfer_syntax_uid,
                           to_transfer_syntax=target)

        return Outgoing(out_path, item.sop_class_uid, item.sop_instance_uid, target)
