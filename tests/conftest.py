"""Shared fixtures: factories that start real peers on loopback ports.

Each factory fixture returns a function that starts one more peer in its own
folder under tmp_path. Every peer a test started is stopped when the test ends.
A missing peer binary skips the test on a developer machine, but fails it when
CI is set, because scripts/test installs the peers there.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import pytest

from peers import (
    MOSQUITTO_PATH,
    ORTHANC_PATH,
    STORESCP_PATH,
    STORESCU_PATH,
    DcmtkStoreSCP,
    Mosquitto,
    Orthanc,
)


def require_binary(path: Path, debian_package: str) -> None:
    """Skip the test when `path` is missing, or fail it when running in CI."""
    if path.exists():
        return
    msg = (
        f"{path} not found; install the Debian package {debian_package} "
        "(scripts/bootstrap --peers does this)"
    )
    if os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)


class _Stoppable(Protocol):
    def stop(self) -> None: ...


class _PeerRegistry:
    """Peers started during one test, stopped in reverse start order."""

    def __init__(self, root: Path, prefix: str) -> None:
        self.root = root
        self.prefix = prefix
        self.peers: list[_Stoppable] = []

    def next_workdir(self) -> Path:
        return self.root / f"{self.prefix}-{len(self.peers)}"

    def stop_all(self) -> None:
        for peer in reversed(self.peers):
            peer.stop()


@pytest.fixture
def dcmtk_storescp(tmp_path: Path) -> Iterator[Callable[..., DcmtkStoreSCP]]:
    """Factory that starts DCMTK storescp instances; see `DcmtkStoreSCP` for arguments."""
    require_binary(STORESCP_PATH, "dcmtk")
    registry = _PeerRegistry(tmp_path, "storescp")

    def start(
        ae_title: str = "STORESCP",
        port: int | None = None,
        extra_args: Sequence[str] = (),
    ) -> DcmtkStoreSCP:
        peer = DcmtkStoreSCP(
            registry.next_workdir(), ae_title=ae_title, port=port, extra_args=extra_args
        )
        registry.peers.append(peer)

        return peer.start()

    yield start
    registry.stop_all()


@pytest.fixture
def dcmtk_scu_available() -> None:
    """Skip or fail the test when DCMTK's storescu and echoscu are missing."""
    require_binary(STORESCU_PATH, "dcmtk")


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Callable[..., Orthanc]]:
    """Factory that starts Orthanc instances; see `Orthanc` for arguments."""
    require_binary(ORTHANC_PATH, "orthanc")
    registry = _PeerRegistry(tmp_path, "orthanc")

    def start(
        ae_title: str = "ORTHANC",
        config_overrides: Mapping[str, Any] | None = None,
    ) -> Orthanc:
        peer = Orthanc(
            registry.next_workdir(), ae_title=ae_title, config_overrides=config_overrides
        )
        registry.peers.append(peer)

        return peer.start()

    yield start
    registry.stop_all()


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Callable[..., Mosquitto]]:
    """Factory that starts Mosquitto brokers; see `Mosquitto` for arguments."""
    require_binary(MOSQUITTO_PATH, "mosquitto")
    registry = _PeerRegistry(tmp_path, "mosquitto")

    def start(port: int | None = None) -> Mosquitto:
        peer = Mosquitto(registry.next_workdir(), port=port)
        registry.peers.append(peer)

        return peer.start()

    yield start
    registry.stop_all()
