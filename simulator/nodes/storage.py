"""PACS and viewer nodes: Storage SCPs that keep what they receive on disk."""

from __future__ import annotations

from pathlib import Path

from simulator.nodes.runtime import NodeServices
from simulator.nodes.scp import StorageSCP
from simulator.topology.model import StorageNode


class StorageNodeRuntime:
    """A running PACS or viewer."""

    def __init__(self, declaration: StorageNode, services: NodeServices) -> None:
        self.declaration = declaration
        self.store_dir = services.work_dir / "store"
        self.scp = StorageSCP(declaration, services, self.store_dir,
                              required_keywords=declaration.require_attributes)

    def start(self, port: int) -> int:
        return self.scp.start(port)

    def stop(self) -> None:
        self.scp.stop()

    def stored_path(self, sop_instance_uid: str) -> Path:
        return self.store_dir / f"{sop_instance_uid}.dcm"
