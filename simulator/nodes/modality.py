"""A modality: a Storage SCU that sends its share of the corpus, one association per group."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from simulator.corpus import CorpusInstance
from simulator.nodes.runtime import NodeServices
from simulator.nodes.scu import Destination, Outgoing, StoreClient, StoreOutcome
from simulator.recording.ledger import InstanceInfo
from simulator.topology.model import ModalityNode


class Modality:
    """A running modality node."""

    def __init__(self, declaration: ModalityNode, services: NodeServices,
                 destination: Destination, final_nodes: set[str]) -> None:
        self.declaration = declaration
        self.services = services
        self.destination = destination
        self.final_nodes = final_nodes
        self.recorder = services.recorder.bind(node=declaration.name)
        self.client = StoreClient(declaration, self.recorder, services.registry,
                                  lambda: services.next_assoc_id(declaration.name),
                                  tls=services.tls)
        self.sent = 0
        self._lock = threading.Lock()
        self.unsent: set[str] = set()

    def register(self, groups: Sequence[Sequence[CorpusInstance]]) -> None:
        """Make the run aware of every instance this modality will send."""
        for group in groups:
            for instance in group:
                self.services.instances[instance.sop_instance_uid] = InstanceInfo(
                    sop_instance_uid=instance.sop_instance_uid,
                    sop_class_uid=instance.sop_class_uid,
                    transfer_syntax_uid=instance.transfer_syntax_uid,
                    study_instance_uid=instance.study_instance_uid,
                    series_instance_uid=instance.series_instance_uid,
                    source=self.declaration.name,
                    source_file=instance.relpath,
                )
                self.unsent.add(instance.sop_instance_uid)

    def send(self, groups: Sequence[Sequence[CorpusInstance]], concurrency: int,
             release: bool = True, pause_between_s: float = 0) -> None:
        """Send every group on its own association, ``concurrency`` associations at once."""
        self.recorder.emit("sender.started", groups=len(groups),
                           instances=sum(len(g) for g in groups), concurrency=concurrency)
        with ThreadPoolExecutor(max_workers=concurrency,
                                thread_name_prefix=f"send-{self.declaration.name}") as pool:
            for _ in pool.map(lambda g: self._send_group(g, release, pause_between_s), groups):
                pass
        self.recorder.emit("sender.finished", sent=self.sent)

    def _send_group(self, group: Sequence[CorpusInstance], release: bool,
                    pause_between_s: float) -> None:
        items = [Outgoing(i.path, i.sop_class_uid, i.sop_instance_uid, i.transfer_syntax_uid)
                 for i in group]
        # A router decides the final destinations when the instance arrives,
        # with the rule set active then; only a direct destination is known now.
        direct = self.destination.node in self.final_nodes
        if direct:
            for instance in group:
                self._expect(instance.sop_instance_uid, [self.destination.node])
        outcomes = self.client.store_batch(self.destination, items, release=release,
                                           pause_between_s=pause_between_s)
        paths = {i.sop_instance_uid: i.path for i in group}
        for outcome in outcomes:
            self._settle(outcome, paths[outcome.item.sop_instance_uid])

    def _expect(self, uid: str, finals: list[str]) -> None:
        for final in finals:
            self.services.ledger.expect(self.services.instances[uid], final)
            self.services.ledger.attempt(uid, final, self.destination.link)

    def _settle(self, outcome: StoreOutcome, path: Path) -> None:
        uid = outcome.item.sop_instance_uid
        with self._lock:
            self.sent += 1
            self.unsent.discard(uid)
        self.recorder.emit("instance.sent", sop_instance_uid=uid, link=self.destination.link,
                           succeeded=outcome.succeeded,
                           status=None if outcome.status is None else f"0x{outcome.status:04X}")
        direct = self.destination.node in self.final_nodes
        if outcome.succeeded and outcome.status is not None:
            if direct:
                self.services.ledger.delivered(uid, self.destination.node, self.destination.link,
                                               outcome.status, warning=outcome.failure)
            return
        if outcome.failure is None:
            return
        finals = [self.destination.node] if direct else self.services.expand_destinations(
            self.destination.node, path, self.declaration.ae_title, self.destination.called_ae)
        if not direct:
            self._expect(uid, finals)
        for final in finals:
            self.services.ledger.failed(uid, final, outcome.failure, outcome.status)
