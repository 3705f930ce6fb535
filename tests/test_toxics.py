"""Tests of the Toxiproxy-like faults of a link, over real loopback sockets."""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage

from simulator.links import AssociationRegistry, LinkProxy
from simulator.links.faults import (
    FAULT_TYPES,
    FaultError,
    FaultSpec,
    LinkFaults,
    fault_problems,
)
from simulator.recording.recorder import BoundRecorder, Recorder

CT_SMALL = Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm"
WAIT_LIMIT_S = 30.0
TOLERANCE_S = 0.02
"""Slack for timer resolution in lower bounds; upper bounds are left out or kept generous."""


def read_events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def of_kind(events: list[dict[str, Any]], kind: str, **fields: Any) -> list[dict[str, Any]]:
    return [
        e for e in events if e["kind"] == kind and all(e.get(k) == v for k, v in fields.items())
    ]


def fault(
    name: str, fault_type: str, stream: str = "downstream", **attributes: int
) -> dict[str, Any]:
    """Return a fault spec as a topology file would give it, with Toxiproxy's 'stream' key."""
    return {"name": name, "type": fault_type, "stream": stream, "attributes": attributes}


async def wait_until(predicate: Callable[[], bool]) -> None:
    """Poll ``predicate`` until it holds; fail after WAIT_LIMIT_S, which is no timing check."""
    async with asyncio.timeout(WAIT_LIMIT_S):
        while not predicate():
            await asyncio.sleep(0.01)


@dataclass
class RawPeer:
    """A TCP server on a free loopback port that records what it reads and may echo it."""

    echo: bool
    close_at_once: bool = False
    port: int = 0
    connections: int = 0
    received: bytearray = field(default_factory=bytearray)
    read_sizes: list[int] = field(default_factory=list)
    eofs: int = 0
    resets: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while not self.close_at_once:
                data = await reader.read(65536)
                if not data:
                    self.eofs += 1
                    break
                self.read_sizes.append(len(data))
                self.received += data
                if self.echo:
                    writer.write(data)
                    await writer.drain()
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
async def raw_peer() -> AsyncIterator[Callable[..., Awaitable[RawPeer]]]:
    """Factory that starts RawPeer servers; all are closed when the test ends."""
    servers: list[asyncio.Server] = []

    async def start(echo: bool = True, close_at_once: bool = False) -> RawPeer:
        peer = RawPeer(echo=echo, close_at_once=close_at_once)
        server = await asyncio.start_server(peer.handle, "127.0.0.1", 0)
        servers.append(server)
        peer.port = server.sockets[0].getsockname()[1]
        return peer

    yield start
    for server in servers:
        server.close()


@pytest.fixture
async def link(recorder: Recorder) -> AsyncIterator[Callable[..., Awaitable[LinkProxy]]]:
    """Factory that starts a LinkProxy with the given fault specs; all are stopped at the end."""
    proxies: list[LinkProxy] = []

    async def start(
        upstream_port: int, faults: Sequence[dict[str, Any]] = (), seed: int = 7
    ) -> LinkProxy:
        bound = BoundRecorder(recorder, {})
        link_faults = LinkFaults("ct-to-pacs", seed, bound)
        for spec in faults:
            link_faults.add(FaultSpec.model_validate(spec))
        proxy = LinkProxy(
            "ct-to-pacs",
            "127.0.0.1",
            upstream_port,
            bound,
            AssociationRegistry(),
            faults=link_faults,
        )
        await proxy.start()
        proxies.append(proxy)
        return proxy

    yield start
    for proxy in proxies:
        await proxy.stop()


async def round_trip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> float:
    """Send a short message through an echo link and return the seconds until it is back."""
    started = time.monotonic()
    writer.write(b"ping")
    await writer.drain()
    assert await reader.readexactly(4) == b"ping"

    return time.monotonic() - started


async def read_until_closed(reader: asyncio.StreamReader) -> bytes:
    """Read until EOF and return everything read."""
    data = bytearray()
    async with asyncio.timeout(WAIT_LIMIT_S):
        while chunk := await reader.read(65536):
            data += chunk

    return bytes(data)


class TestLatency:
    async def test_latency_each_round_trip(
        self, raw_peer: Any, link: Any, recorder: Recorder
    ) -> None:
        """Upstream and downstream latency both add to every round trip."""
        peer = await raw_peer()
        proxy = await link(
            peer.port,
            [
                fault("up", "latency", "upstream", latency=60),
                fault("down", "latency", latency=90, jitter=10),
            ],
        )
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        times = [await round_trip(reader, writer) for _ in range(3)]
        writer.close()
        events = read_events(recorder.path)

        assert min(times) >= 0.06 + 0.08 - TOLERANCE_S
        assert len(of_kind(events, "link.fault_applied", fault="up", direction="upstream")) == 1
        assert len(of_kind(events, "link.fault_applied", fault="down", direction="downstream")) == 1
        [added] = of_kind(events, "link.fault_added", fault="down")
        assert added["attributes"] == {"latency": 90, "jitter": 10}
        assert added["seed"] == 7

    async def test_latency_keeps_rate(self, raw_peer: Any, link: Any) -> None:
        """Latency delays bytes without limiting the rate, because the proxy keeps reading."""
        peer = await raw_peer(echo=False)
        proxy = await link(
            peer.port,
            [fault("far", "latency", "upstream", latency=300)],
        )
        payload = bytes(range(256)) * (4 * 1024 * 1024 // 256)
        _, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        started = time.monotonic()
        writer.write(payload)
        await wait_until(lambda: len(peer.received) == len(payload))
        elapsed_s = time.monotonic() - started
        writer.close()

        assert bytes(peer.received) == payload
        assert elapsed_s >= 0.3 - TOLERANCE_S
        # Delaying each 256 KiB read in turn would take 16 x 300 ms = 4.8 s.
        assert elapsed_s < 2.4

    async def test_update_reaches_open_connection(
        self, raw_peer: Any, link: Any, recorder: Recorder
    ) -> None:
        """Adding, updating and removing latency act on a connection that is already open."""
        peer = await raw_peer()
        proxy = await link(peer.port)
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        await round_trip(reader, writer)
        proxy.faults.add(FaultSpec(name="slow", type="latency", attributes={"latency": 100}))
        added = await round_trip(reader, writer)
        proxy.faults.update("slow", attributes={"latency": 250})
        updated = await round_trip(reader, writer)
        proxy.faults.remove("slow")
        await round_trip(reader, writer)
        writer.close()
        events = read_events(recorder.path)

        assert added >= 0.1 - TOLERANCE_S
        assert updated >= 0.25 - TOLERANCE_S
        assert of_kind(events, "link.fault_applied", fault="slow")[0]["open_connection"] is True
        [update] = of_kind(events, "link.fault_updated", fault="slow")
        assert update["attributes"] == {"latency": 250}
        assert update["previous_attributes"] == {"latency": 100}
        assert len(of_kind(events, "link.fault_removed", fault="slow")) == 1
        assert len(peer.received) == 16


class TestBandwidth:
    async def test_throughput_near_rate(self, raw_peer: Any, link: Any) -> None:
        """400 KB through a 400 KB/s link take about one second and arrive intact."""
        peer = await raw_peer(echo=False)
        proxy = await link(
            peer.port,
            [fault("thin", "bandwidth", "upstream", rate=400)],
        )
        payload = bytes(range(256)) * (400_000 // 256)
        _, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        started = time.monotonic()
        writer.write(payload)
        await wait_until(lambda: len(peer.received) == len(payload))
        elapsed_s = time.monotonic() - started
        writer.close()
        rate_kb_per_s = len(payload) / 1000 / elapsed_s

        assert bytes(peer.received) == payload
        # Generous: the pieces cannot beat the rate, but a loaded machine can be slower.
        assert 400 * 0.3 <= rate_kb_per_s <= 400 * 1.15


class TestSlicer:
    async def test_pieces_near_average(self, raw_peer: Any, link: Any) -> None:
        """Sliced data arrives whole, in reads near average_size."""
        peer = await raw_peer(echo=False)
        attributes = {"average_size": 200, "size_variation": 50, "delay": 3000}
        proxy = await link(
            peer.port,
            [{"name": "slice", "type": "slicer", "stream": "upstream", "attributes": attributes}],
        )
        payload = bytes(range(256)) * 40
        _, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(payload)
        await wait_until(lambda: len(peer.received) == len(payload))
        writer.close()

        assert bytes(peer.received) == payload
        # The receiver's TCP stack may merge pieces that arrive together, so check the typical read.
        assert len(peer.read_sizes) >= len(payload) // 250 // 2
        assert 200 / 2 <= statistics.median(peer.read_sizes) <= 250


class TestClosingFaults:
    async def test_limit_data_exact_bytes(
        self, raw_peer: Any, link: Any, recorder: Recorder
    ) -> None:
        """limit_data passes exactly its bytes, then closes both sides with a FIN."""
        peer = await raw_peer(echo=False)
        proxy = await link(
            peer.port,
            [fault("cap", "limit_data", "upstream", bytes=1000)],
        )
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        # The client keeps sending past the limit, so an outright close would send it an RST.
        writer.write(b"x" * (4 * 1024 * 1024))
        back = await read_until_closed(reader)
        await wait_until(lambda: peer.eofs + peer.resets == 1)
        writer.close()
        await wait_until(lambda: proxy.stats.connections_open == 0)
        [closed] = of_kind(read_events(recorder.path), "link.connection_closed")

        assert back == b""
        assert bytes(peer.received) == b"x" * 1000
        assert closed["closed_by"] == "proxy"
        assert "cap" in closed["close_reason"]
        assert closed["bytes_written"]["upstream"] == 1000

    async def test_timeout_zero_holds(self, raw_peer: Any, link: Any) -> None:
        """timeout 0 passes nothing and keeps the connection open until it is removed."""
        peer = await raw_peer()
        proxy = await link(
            peer.port,
            [fault("hang", "timeout", "upstream", timeout=0)],
        )
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"lost")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.read(100), 0.5)
        proxy.faults.remove("hang")
        after_removal = await round_trip(reader, writer)
        writer.close()

        assert after_removal >= 0
        assert bytes(peer.received) == b"ping"
        assert peer.eofs == 0

    async def test_timeout_closes_after_time(self, raw_peer: Any, link: Any) -> None:
        """timeout 300 drops the echo and closes the connection about 300 ms later."""
        peer = await raw_peer()
        proxy = await link(peer.port, [fault("t", "timeout", timeout=300)])
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        started = time.monotonic()
        writer.write(b"hello")
        back = await read_until_closed(reader)
        elapsed_s = time.monotonic() - started
        writer.close()

        assert back == b""
        assert bytes(peer.received) == b"hello"
        assert elapsed_s >= 0.3 - TOLERANCE_S

    async def test_reset_peer_sends_rst(self, raw_peer: Any, link: Any, recorder: Recorder) -> None:
        """reset_peer resets the client's connection after its timeout."""
        peer = await raw_peer()
        proxy = await link(
            peer.port,
            [fault("rst", "reset_peer", "upstream", timeout=100)],
        )
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        started = time.monotonic()
        writer.write(b"hello")
        with pytest.raises(ConnectionResetError):
            await read_until_closed(reader)
        elapsed_s = time.monotonic() - started
        writer.close()
        await wait_until(lambda: proxy.stats.connections_open == 0)
        [closed] = of_kind(read_events(recorder.path), "link.connection_closed")

        assert elapsed_s >= 0.1 - TOLERANCE_S
        assert peer.received == b""
        assert closed["close_kind"] == "reset"
        assert closed["closed_by"] == "proxy"

    async def test_slow_close_delays_fin(self, raw_peer: Any, link: Any) -> None:
        """slow_close holds back the server's FIN for its delay."""
        peer = await raw_peer(close_at_once=True)
        proxy = await link(peer.port, [fault("sc", "slow_close", delay=400)])
        started = time.monotonic()
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        back = await read_until_closed(reader)
        elapsed_s = time.monotonic() - started
        writer.close()

        assert back == b""
        assert peer.connections == 1
        assert elapsed_s >= 0.4 - TOLERANCE_S


class TestDown:
    async def test_down_refuses_and_closes(
        self, raw_peer: Any, link: Any, recorder: Recorder
    ) -> None:
        """down closes open connections, refuses new ones, and removing it restores the link."""
        peer = await raw_peer()
        proxy = await link(peer.port)
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        await round_trip(reader, writer)
        proxy.faults.add(FaultSpec(name="outage", type="down"))
        assert await read_until_closed(reader) == b""
        writer.close()

        second_reader, second_writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        with contextlib.suppress(ConnectionResetError):
            assert await read_until_closed(second_reader) == b""
        second_writer.close()
        connections_while_down = peer.connections

        proxy.faults.remove("outage")
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        await round_trip(reader, writer)
        writer.close()
        events = read_events(recorder.path)

        assert connections_while_down == 1
        assert peer.connections == 2
        assert len(of_kind(events, "link.connection_refused_by_fault", fault="outage")) == 1
        assert proxy.stats.connections_refused == 1


async def draw_pattern(recorder: Recorder, raw_peer: Any, run: str, seed: int) -> list[str]:
    """Open 12 connections through a link with toxicity 0.5; return applied/skipped per conn_id."""
    peer = await raw_peer()
    bound = BoundRecorder(recorder, {"run": run})
    faults = LinkFaults("flaky", seed, bound)
    faults.add(FaultSpec(name="half", type="latency", toxicity=0.5, attributes={"latency": 1}))
    proxy = LinkProxy("flaky", "127.0.0.1", peer.port, bound, AssociationRegistry(), faults=faults)
    await proxy.start()
    try:
        for _ in range(12):
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            await round_trip(reader, writer)
            writer.close()
    finally:
        await proxy.stop()
    events = [e for e in read_events(recorder.path) if e.get("run") == run]
    kinds = ("link.fault_applied", "link.fault_skipped")
    outcomes = {e["conn_id"]: e["kind"] for e in events if e["kind"] in kinds}

    return [outcomes[conn_id].removeprefix("link.fault_") for conn_id in range(1, 13)]


class TestToxicity:
    async def test_seeded_pattern_repeats(self, recorder: Recorder, raw_peer: Any) -> None:
        """Toxicity 0.5 with a fixed seed draws the same pattern in two runs."""
        first = await draw_pattern(recorder, raw_peer, "first", seed=11)
        second = await draw_pattern(recorder, raw_peer, "second", seed=11)

        assert first == second
        assert set(first) == {"applied", "skipped"}

    def test_toxicity_extremes(self, recorder: Recorder) -> None:
        """Toxicity 1 always applies and toxicity 0 never does."""
        faults = LinkFaults("l", 3, BoundRecorder(recorder, {}))
        faults.add(FaultSpec(name="always", type="latency", toxicity=1.0))
        faults.add(FaultSpec(name="never", type="latency", toxicity=0.0, direction="upstream"))
        stages = [faults.stages_for_connection(conn_id) for conn_id in range(1, 21)]

        assert all(len(s["downstream"]) == 1 for s in stages)
        assert all(s["upstream"] == [] for s in stages)


class TestValidation:
    def test_known_types(self) -> None:
        """Every Toxiproxy toxic named in the contract is registered."""
        expected = {"latency", "bandwidth", "slow_close", "timeout", "reset_peer", "slicer"}

        assert expected | {"limit_data", "down"} <= set(FAULT_TYPES)

    def test_unknown_type_lists_known(self) -> None:
        """An unknown type names the known ones."""
        [problem] = fault_problems(FaultSpec(name="x", type="lag"))

        assert "'lag' is not known" in problem
        assert "latency" in problem
        assert "slicer" in problem

    def test_bad_attribute_names_value_unit_range(self) -> None:
        """A bad attribute names the attribute, the value, the unit and the range."""
        [problem] = fault_problems(
            FaultSpec(name="slow", type="latency", attributes={"latency": -5})
        )

        assert "'latency'" in problem
        assert "-5" in problem
        assert "ms" in problem
        assert "from 0 to 600000" in problem

    def test_slicer_delay_in_microseconds(self) -> None:
        """The slicer's delay is checked in microseconds, as Toxiproxy documents it."""
        [problem] = fault_problems(
            FaultSpec(name="s", type="slicer", attributes={"average_size": 10, "delay": -1})
        )

        assert "microseconds" in problem

    def test_missing_and_unknown_attributes(self) -> None:
        """A missing required attribute and an unknown one are both reported."""
        problems = fault_problems(FaultSpec(name="b", type="bandwidth", attributes={"speed": 1}))

        assert any("'rate' is missing" in p and "KB/s" in p for p in problems)
        assert any("'speed' is not known" in p for p in problems)

    def test_cross_attribute_check(self) -> None:
        """size_variation must stay below average_size."""
        [problem] = fault_problems(
            FaultSpec(
                name="s", type="slicer", attributes={"average_size": 10, "size_variation": 10}
            )
        )

        assert "size_variation 10 bytes must be smaller than average_size 10 bytes" in problem

    def test_stream_alias_and_bounds(self) -> None:
        """Toxiproxy's 'stream' key sets the direction; toxicity stays within 0..1."""
        spec = FaultSpec.model_validate({"name": "a", "type": "latency", "stream": "upstream"})

        assert spec.direction == "upstream"
        with pytest.raises(ValueError, match="toxicity"):
            FaultSpec.model_validate({"name": "a", "type": "latency", "toxicity": 1.5})

    def test_add_rejects_bad_and_duplicate(self, recorder: Recorder) -> None:
        """LinkFaults.add raises FaultError for invalid attributes and for a name in use."""
        faults = LinkFaults("l", 0, BoundRecorder(recorder, {}))
        faults.add(FaultSpec(name="a", type="latency"))

        with pytest.raises(FaultError, match="already active"):
            faults.add(FaultSpec(name="a", type="latency"))
        with pytest.raises(FaultError, match="'rate' is missing"):
            faults.add(FaultSpec(name="b", type="bandwidth"))
        with pytest.raises(FaultError, match="no active fault is named 'c'"):
            faults.remove("c")
        assert [spec.name for spec in faults.specs()] == ["a"]


@dataclass
class StoredObjects:
    port: int = 0
    stored: list[str] = field(default_factory=list)


def start_storage_scp() -> tuple[Any, StoredObjects]:
    """Start a pynetdicom Storage SCP on a free loopback port."""
    scp = StoredObjects()

    def on_store(event: evt.Event) -> int:
        scp.stored.append(str(event.dataset.SOPInstanceUID))
        return 0x0000

    ae = AE(ae_title="STORESCP")
    ae.add_supported_context(CTImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    server = ae.start_server(
        ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    scp.port = server.server_address[1]

    return server, scp


def store_ct_small(port: int) -> list[int]:
    """Send CT_small with a pynetdicom SCU and return the C-STORE statuses."""
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", port, ae_title="STORESCP")
    if not assoc.is_established:
        return []
    status = assoc.send_c_store(CT_SMALL)
    assoc.release()

    return [int(status.Status)]


class TestDicom:
    async def test_c_store_through_latency(self, link: Any, recorder: Recorder) -> None:
        """A pynetdicom C-STORE succeeds through a link with latency in both directions."""
        server, scp = start_storage_scp()
        try:
            proxy = await link(
                scp.port,
                [
                    fault("up", "latency", "upstream", latency=50),
                    fault("down", "latency", latency=50),
                ],
            )
            started = time.monotonic()
            statuses = await asyncio.to_thread(store_ct_small, proxy.port)
            elapsed_s = time.monotonic() - started
            await wait_until(lambda: proxy.stats.connections_open == 0)
        finally:
            server.shutdown()
        [closed] = of_kind(read_events(recorder.path), "link.connection_closed")

        assert statuses == [0x0000]
        assert scp.stored == [str(pydicom.dcmread(CT_SMALL).SOPInstanceUID)]
        # Association, store and release are three round trips of at least 100 ms each.
        assert elapsed_s >= 3 * 0.1 - TOLERANCE_S
        assert closed["bytes_read"] == closed["bytes_written"]
