"""PACS and viewer nodes: Storage SCPs that keep what they receive on disk.

A node whose declaration gives it the SCP role for a Query/Retrieve
information model also serves C-FIND, C-MOVE and C-GET over what it
stored (:mod:`simulator.nodes.qr_scp`), and every node can query and
retrieve from another when a scenario step requests it
(:mod:`simulator.nodes.qr_scu`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from simulator.nodes.association import AssociationTrace
from simulator.nodes.qr_common import LinkFaults, RetrieveRoutes
from simulator.nodes.qr_index import InstanceIndex
from simulator.nodes.qr_scp import QueryRetrieveSCP, model_of, serves_get, serves_query_retrieve
from simulator.nodes.qr_scu import RetrieveClient, RetrieveRequest
from simulator.nodes.runtime import NodeServices
from simulator.nodes.scp import Received, StorageSCP
from simulator.nodes.scu import Destination
from simulator.topology.model import Role, StorageNode, Topology


class _QueryRetrieveStorageSCP(StorageSCP):
    """A Storage SCP whose server also runs the Query/Retrieve handlers."""

    def __init__(self, *args: Any, qr: QueryRetrieveSCP, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.qr = qr

    def start(self, port: int) -> int:
        bound = super().start(port)
        # Bound right after the server starts, before any link can connect to it.
        for event, handler in self.qr.handlers():
            self._server.bind(event, handler)
        if serves_get(self.qr.declaration):
            _accept_role_selection(self._server.contexts, self.qr.declaration)

        return bound


def _accept_role_selection(contexts: Sequence[Any], declaration: StorageNode) -> None:
    """Let a C-GET requestor take the SCP role for the storage SOP classes this node sends.

    pynetdicom applies a requestor's SCP/SCU Role Selection item only when
    the acceptor's context sets both roles. The requestor may be SCU where
    this node is SCP, and SCP where this node is SCU, as its declaration gives the roles.
    """
    for context in contexts:
        if model_of(context.abstract_syntax) is not None:
            continue
        context.scu_role = declaration.supports(context.abstract_syntax, Role.SCP)
        context.scp_role = declaration.supports(context.abstract_syntax, Role.SCU)


class StorageNodeRuntime:
    """A running PACS or viewer."""

    def __init__(self, declaration: StorageNode, services: NodeServices) -> None:
        self.declaration = declaration
        self.services = services
        self.store_dir = services.work_dir / "store"
        self.index = InstanceIndex()
        self.qr: QueryRetrieveSCP | None = None
        if serves_query_retrieve(declaration):
            self.qr = QueryRetrieveSCP(declaration, services, self.index, self._trace_of)
            self.scp: StorageSCP = _QueryRetrieveStorageSCP(
                declaration, services, self.store_dir, on_stored=self._on_stored,
                required_keywords=declaration.require_attributes, qr=self.qr,
            )
        else:
            self.scp = StorageSCP(declaration, services, self.store_dir,
                                  required_keywords=declaration.require_attributes)
        self.routes = RetrieveRoutes(node=declaration.name)
        self.client = RetrieveClient(declaration, services, self.routes, self._store_sub_operation)

    def start(self, port: int) -> int:
        return self.scp.start(port)

    def connect(self, topology: Topology, destinations: dict[str, Destination],
                link_faults: LinkFaults) -> None:
        """Give the node its outgoing links and the site's AE titles, once the link proxies run."""
        self.routes = RetrieveRoutes.build(self.declaration.name, topology, destinations, link_faults)
        self.client.routes = self.routes
        if self.qr is not None:
            self.qr.routes = self.routes

    def stop(self) -> None:
        self.scp.stop()
        if self.qr is not None:
            self.qr.stop()

    def busy(self) -> bool:
        """Check whether a C-MOVE or C-GET this node serves still has sub-operations to settle."""
        return self.qr is not None and self.qr.busy()

    def retrieve(self, request: RetrieveRequest) -> None:
        """Query and retrieve from another node, as a scenario's retrieve step requests.

        The outcome is in the run log (``qr.retrieve_finished`` or ``qr.retrieve_failed``).
        """
        self.client.run(request)

    def stored_path(self, sop_instance_uid: str) -> Path:
        return self.store_dir / f"{sop_instance_uid}.dcm"

    # Callbacks.

    def _on_stored(self, received: Received) -> None:
        self.index.add(received.path)

    def _trace_of(self, assoc: Any) -> AssociationTrace:
        return self.scp.trace(assoc)

    def _store_sub_operation(self, event: Any, trace: AssociationTrace) -> Any:
        """Store a C-STORE that arrives on this node's own C-GET association, as its SCP would."""
        # StorageSCP records under the trace it keeps for an association: give it ours,
        # so the events carry the C-GET's assoc_id and requestor role.
        with self.scp._lock:
            self.scp._traces.setdefault(event.assoc, trace)

        return self.scp._on_c_store(event)
