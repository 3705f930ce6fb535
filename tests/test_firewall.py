"""Tests of the firewall-like constraints of a link, with real peers on loopback sockets."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage

from simulator.links import AssociationRegistry, LinkProxy
from simulator.links.firewall import Firewall, FirewallSpec
from simulator.recording.recorder import BoundRecorder, Recorder

CT_SMALL = Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm"
TRANSFER_SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
WAIT_LIMIT_S = 30.0
TOLERANCE_S = 0.03


def read_events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def of_kind(events: list[dict[str, Any]], kind: str, **fields: Any) -> list[dict[str, Any]]:
    return [
        e for e in events if e["kind"] == kind and all(e.get(k) == v for k, v in fields.items())
    ]


async def wait_until(predicate: Callable[[], bool]) -> None:
    """Poll ``predicate`` until it holds; fail after WAIT_LIMIT_S, which is no timing check."""
    async with asyncio.timeout(WAIT_LIMIT_S):
        while not predicate():
            await asyncio.sleep(0.01)


@dataclass
class EchoPeer:
    """A TCP server on a free loopback port that echoes and records what it reads."""

    port: int = 0
    connections: int = 0
    received: bytearray = field(default_factory=bytearray)
    eofs: int = 0
    resets: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while data := await reader.read(65536):
                self.received += data
                writer.write(data)
                await writer.drain()
            self.eofs += 1
        except ConnectionError:
            self.resets += 1
        finally:
            writer.close()


@pytest.fixture
def recorder(tmp_path: Path) -> Iterator[Recorder]:
    recorder = Recorder(tmp_path / "events.jsonl", "test-run")
    yield recorder
    recorder.close()


@pytest.fixture
async def echo_peer() -> AsyncIterator[EchoPeer]:
    peer = EchoPeer()
    server = await asyncio.start_server(peer.handle, "127.0.0.1", 0)
    peer.port = server.sockets[0].getsockname()[1]
    yield peer
    server.close()


@pytest.fixture
async def link(recorder: Recorder) -> AsyncIterator[Callable[..., Awaitable[LinkProxy]]]:
    """Factory that starts a LinkProxy from node 'ct' with a firewall; all stop at the end."""
    proxies: list[LinkProxy] = []

    async def start(upstream_port: int, firewall: dict[str, Any]) -> LinkProxy:
        bound = BoundRecorder(recorder, {})
        spec = FirewallSpec.model_validate(firewall)
        proxy = LinkProxy(
            "ct-to-pacs",
            "127.0.0.1",
            upstream_port,
            bound,
            AssociationRegistry(),
            firewall=Firewall("ct-to-pacs", spec, bound),
            source_node="ct",
        )
        await proxy.start()
        proxies.append(proxy)
        return proxy

    yield start
    for proxy in proxies:
        await proxy.stop()


async def round_trip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"ping")
    await writer.drain()
    assert await asyncio.wait_for(reader.readexactly(4), WAIT_LIMIT_S) == b"ping"


async def read_until_closed(reader: asyncio.StreamReader) -> bytes:
    """Read until EOF or reset and return everything read."""
    data = bytearray()
    with contextlib.suppress(ConnectionResetError):
        async with asyncio.timeout(WAIT_LIMIT_S):
            while chunk := await reader.read(65536):
                data += chunk

    return bytes(data)


@dataclass
class StorageSCP:
    port: int = 0
    connections: int = 0
    store_times_s: list[float] = field(default_factory=list)


@pytest.fixture
def storage_scp() -> Iterator[StorageSCP]:
    """A pynetdicom Storage SCP on a free loopback port that counts connections and stores."""
    scp = StorageSCP()

    def on_conn_open(event: evt.Event) -> None:
        scp.connections += 1
        event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def on_store(event: evt.Event) -> int:
        scp.store_times_s.append(time.monotonic())
        return 0x0000

    ae = AE(ae_title="STORESCP")
    ae.add_supported_context(CTImageStorage, TRANSFER_SYNTAXES)
    handlers = [(evt.EVT_CONN_OPEN, on_conn_open), (evt.EVT_C_STORE, on_store)]
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=handlers)
    scp.port = server.server_address[1]
    yield scp
    server.shutdown()


def store(port: int, calling_ae: str, copies: int = 1) -> list[int] | None:
    """Send CT_small ``copies`` times in one association; None if the association failed."""

    def on_conn_open(event: evt.Event) -> None:
        event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(CTImageStorage, TRANSFER_SYNTAXES)
    assoc = ae.associate(
        "127.0.0.1", port, ae_title="STORESCP", evt_handlers=[(evt.EVT_CONN_OPEN, on_conn_open)]
    )
    if not assoc.is_established:
        return None
    statuses = [int(assoc.send_c_store(CT_SMALL).Status) for _ in range(copies)]
    assoc.release()

    return statuses


class TestRules:
    async def test_deny_calling_ae(
        self, link: Any, storage_scp: StorageSCP, recorder: Recorder
    ) -> None:
        """A rule on the calling AE denies the association before anything reaches the SCP."""
        firewall = {"rules": [{"action": "deny", "calling_ae": "MODALITY", "name": "no-modality"}]}
        proxy = await link(storage_scp.port, firewall)
        statuses = await asyncio.to_thread(store, proxy.port, "MODALITY")
        await wait_until(lambda: proxy.stats.connections_open == 0)
        events = read_events(recorder.path)
        [denied] = of_kind(events, "link.firewall_denied")

        assert statuses is None
        assert storage_scp.connections == 0
        assert denied["rule"] == "no-modality"
        assert denied["calling_ae"] == "MODALITY"
        assert denied["called_ae"] == "STORESCP"
        assert denied["source"] == "ct"
        assert denied["at"] == "associate_rq"
        assert of_kind(events, "link.connection_opened") == []

    async def test_allow_list_default_deny(
        self, link: Any, storage_scp: StorageSCP, recorder: Recorder
    ) -> None:
        """With default deny only the listed calling AE gets through."""
        firewall = {"rules": [{"action": "allow", "calling_ae": "MODALITY"}], "default": "deny"}
        proxy = await link(storage_scp.port, firewall)
        allowed = await asyncio.to_thread(store, proxy.port, "MODALITY")
        denied = await asyncio.to_thread(store, proxy.port, "INTRUDER")
        await wait_until(lambda: proxy.stats.connections_open == 0)
        events = read_events(recorder.path)
        [allow_event] = of_kind(events, "link.firewall_allowed")
        [deny_event] = of_kind(events, "link.firewall_denied")

        assert allowed == [0x0000]
        assert denied is None
        assert storage_scp.connections == 1
        assert allow_event["rule"] == "rule 1"
        assert deny_event["rule"] == "default"
        assert deny_event["calling_ae"] == "INTRUDER"

    async def test_deny_source_at_accept(
        self, link: Any, echo_peer: EchoPeer, recorder: Recorder
    ) -> None:
        """A rule on the source node closes the connection at accept, without reading it."""
        proxy = await link(echo_peer.port, {"rules": [{"action": "deny", "source": "ct"}]})
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        back = await read_until_closed(reader)
        writer.close()
        [denied] = of_kind(read_events(recorder.path), "link.firewall_denied")

        assert back == b""
        assert echo_peer.connections == 0
        assert denied["at"] == "accept"
        assert denied["rule"] == "rule 1"


class TestLimits:
    async def test_idle_blackhole(self, link: Any, echo_peer: EchoPeer, recorder: Recorder) -> None:
        """After the idle timeout nothing passes and neither side gets a FIN or an RST."""
        proxy = await link(echo_peer.port, {"idle_timeout_s": 0.3})
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        await round_trip(reader, writer)
        await wait_until(
            lambda: bool(of_kind(read_events(recorder.path), "link.firewall_blackholed"))
        )
        writer.write(b"lost")
        await writer.drain()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.read(100), 0.5)
        writer.write_eof()
        await asyncio.sleep(0.3)
        [blackholed] = of_kind(read_events(recorder.path), "link.firewall_blackholed")
        writer.close()

        assert bytes(echo_peer.received) == b"ping"
        assert echo_peer.eofs == 0
        assert echo_peer.resets == 0
        assert blackholed["trigger"] == "idle"
        assert blackholed["idle_s"] >= 0.3 - TOLERANCE_S

    async def test_max_connections(
        self, link: Any, echo_peer: EchoPeer, recorder: Recorder
    ) -> None:
        """A connection beyond max_connections is closed at once; a freed place is reused."""
        proxy = await link(echo_peer.port, {"max_connections": 1})
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        await round_trip(reader, writer)
        extra_reader, extra_writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        extra_back = await read_until_closed(extra_reader)
        extra_writer.close()
        writer.close()
        await wait_until(lambda: proxy.stats.connections_open == 0)
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        await round_trip(reader, writer)
        writer.close()
        [denied] = of_kind(read_events(recorder.path), "link.firewall_denied")

        assert extra_back == b""
        assert echo_peer.connections == 2
        assert denied["rule"] == "max_connections"
        assert denied["max_connections"] == 1
        assert denied["open_connections"] == 1

    async def test_blackhole_after_bytes(
        self, link: Any, echo_peer: EchoPeer, recorder: Recorder
    ) -> None:
        """After N bytes upstream the proxy stops reading, so the client's sends block."""
        proxy = await link(echo_peer.port, {"blackhole_after_bytes": 1000})
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"y" * (64 * 1024 * 1024))
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(writer.drain(), 1.0)
        echoed = await asyncio.wait_for(reader.readexactly(1000), WAIT_LIMIT_S)
        writer.transport.abort()
        [stalled] = of_kind(read_events(recorder.path), "link.firewall_blackholed")

        assert echoed == b"y" * 1000
        assert bytes(echo_peer.received) == b"y" * 1000
        assert stalled["trigger"] == "bytes"
        assert stalled["bytes"] == 1000

    async def test_max_objects_per_s(
        self, link: Any, storage_scp: StorageSCP, recorder: Recorder
    ) -> None:
        """C-STORE-RQ commands over the rate wait, so stores are at least 1/rate apart."""
        proxy = await link(storage_scp.port, {"max_objects_per_s": 5})
        statuses = await asyncio.to_thread(store, proxy.port, "MODALITY", 4)
        gaps_s = [b - a for a, b in zip(storage_scp.store_times_s, storage_scp.store_times_s[1:])]
        throttled = of_kind(read_events(recorder.path), "link.firewall_throttled")

        assert statuses == [0x0000] * 4
        assert min(gaps_s) >= 0.2 - TOLERANCE_S
        assert len(throttled) >= 1
        assert throttled[0]["max_objects_per_s"] == 5


class TestSpec:
    def test_unknown_key_rejected(self) -> None:
        """An unknown firewall key is rejected with its name."""
        with pytest.raises(ValueError, match="idle_timeout"):
            FirewallSpec.model_validate({"idle_timeout": 5})

    def test_rule_needs_valid_action(self) -> None:
        """A rule's action is allow or deny."""
        with pytest.raises(ValueError, match="action"):
            FirewallSpec.model_validate({"rules": [{"action": "drop"}]})

    def test_replace_applies_to_new(self, recorder: Recorder) -> None:
        """replace() records the new spec; None removes the firewall."""
        firewall = Firewall("l", None, BoundRecorder(recorder, {}))
        firewall.replace(FirewallSpec(max_connections=0))
        refused = firewall.open_connection(1, None, BoundRecorder(recorder, {}))
        firewall.replace(None)
        admitted = firewall.open_connection(2, None, BoundRecorder(recorder, {}))
        events = of_kind(read_events(recorder.path), "link.firewall_set")

        assert refused is None
        assert admitted is not None
        assert [e["firewall"] is None for e in events] == [False, True]
