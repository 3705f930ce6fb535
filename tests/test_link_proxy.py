"""Tests of the link proxy between real pynetdicom peers on loopback sockets."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import CTImageStorage

from simulator.links import AssociationRegistry, LinkProxy, Stage, StageContext
from simulator.links.proxy import Forward
from simulator.recording.failures import Failure, FailureKind, Side
from simulator.recording.recorder import BoundRecorder, Recorder

CT_SMALL = Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm"
TRANSFER_SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
WAIT_LIMIT_S = 60.0


def set_nodelay(event: evt.Event) -> None:
    """Set TCP_NODELAY on a pynetdicom socket, which pynetdicom never does itself."""
    event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


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
class StorageSCP:
    """A pynetdicom Storage SCP on a free loopback port, recording what it stored."""

    port: int
    stored: list[tuple[str, str]] = field(default_factory=list)
    peer_assoc_ids: list[str | None] = field(default_factory=list)
    peer_links: list[str | None] = field(default_factory=list)
    nodelay: list[int] = field(default_factory=list)


@pytest.fixture
def recorder(tmp_path: Path) -> Iterator[Recorder]:
    recorder = Recorder(tmp_path / "events.jsonl", "test-run")
    yield recorder
    recorder.close()


@pytest.fixture
def registry() -> AssociationRegistry:
    return AssociationRegistry()


def start_scp(
    registry: AssociationRegistry, require_called_aet: bool = False
) -> tuple[Any, StorageSCP]:
    scp = StorageSCP(port=0)

    def on_conn_open(event: evt.Event) -> None:
        set_nodelay(event)
        sock = event.assoc.dul.socket.socket
        scp.nodelay.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    def on_requested(event: evt.Event) -> None:
        assoc_id = registry.lookup(event.assoc.requestor.port)
        scp.peer_assoc_ids.append(assoc_id)
        scp.peer_links.append(None if assoc_id is None else registry.link_of(assoc_id))

    def on_store(event: evt.Event) -> int:
        dataset = event.dataset
        digest = hashlib.sha256(dataset.PixelData).hexdigest()
        scp.stored.append((str(dataset.SOPInstanceUID), digest))
        return 0x0000

    ae = AE(ae_title="STORESCP")
    ae.require_called_aet = require_called_aet
    ae.add_supported_context(CTImageStorage, TRANSFER_SYNTAXES)
    handlers = [
        (evt.EVT_CONN_OPEN, on_conn_open),
        (evt.EVT_REQUESTED, on_requested),
        (evt.EVT_C_STORE, on_store),
    ]
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=handlers)
    scp.port = server.server_address[1]

    return server, scp


@pytest.fixture
def storage_scp(registry: AssociationRegistry) -> Iterator[StorageSCP]:
    server, scp = start_scp(registry)
    yield scp
    server.shutdown()


@pytest.fixture
async def proxy(
    recorder: Recorder, registry: AssociationRegistry, storage_scp: StorageSCP
) -> AsyncIterator[LinkProxy]:
    link = LinkProxy(
        "ct-to-pacs", "127.0.0.1", storage_scp.port, BoundRecorder(recorder, {}), registry
    )
    await link.start()
    yield link
    await link.stop()


@dataclass
class SendResult:
    established: bool
    statuses: list[int]
    registered_port: int | None = None
    nodelay: int | None = None


def send_files(
    port: int,
    paths: list[Path],
    registry: AssociationRegistry | None = None,
    assoc_id: str = "modality#1",
    called_ae: str = "STORESCP",
) -> SendResult:
    """Send ``paths`` with a pynetdicom SCU; register its port first when given a registry."""
    result = SendResult(established=False, statuses=[])

    def on_conn_open(event: evt.Event) -> None:
        set_nodelay(event)
        sock = event.assoc.dul.socket.socket
        result.nodelay = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        if registry is not None:
            result.registered_port = sock.getsockname()[1]
            registry.register(result.registered_port, assoc_id)

    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(CTImageStorage, TRANSFER_SYNTAXES)
    assoc = ae.associate(
        "127.0.0.1", port, ae_title=called_ae, evt_handlers=[(evt.EVT_CONN_OPEN, on_conn_open)]
    )
    result.established = assoc.is_established
    if assoc.is_established:
        for path in paths:
            status = assoc.send_c_store(path)
            result.statuses.append(int(status.Status) if "Status" in status else -1)
        assoc.release()

    return result


def make_large_file(path: Path, pixel_bytes: int) -> tuple[str, str]:
    """Write a CT object with ``pixel_bytes`` of pixel data; return its UID and pixel digest."""
    dataset = pydicom.dcmread(CT_SMALL)
    side = int((pixel_bytes // 2) ** 0.5)
    dataset.Rows = side
    dataset.Columns = side
    pattern = bytes(range(256))
    pixel_data = (pattern * (side * side * 2 // len(pattern) + 1))[: side * side * 2]
    dataset.PixelData = pixel_data
    dataset.SOPInstanceUID = generate_uid()
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    dataset.save_as(path, enforce_file_format=True)

    return str(dataset.SOPInstanceUID), hashlib.sha256(pixel_data).hexdigest()


class TestStore:
    async def test_store_events(
        self,
        proxy: LinkProxy,
        storage_scp: StorageSCP,
        registry: AssociationRegistry,
        recorder: Recorder,
    ) -> None:
        """A C-STORE through the proxy records association, command, release and close."""
        sent = await asyncio.to_thread(send_files, proxy.port, [CT_SMALL], registry)
        await wait_until(lambda: proxy.stats.connections_open == 0)
        events = read_events(recorder.path)
        sop_instance_uid = str(pydicom.dcmread(CT_SMALL).SOPInstanceUID)

        assert sent.established is True
        assert sent.statuses == [0x0000]
        assert sent.nodelay == 1
        assert storage_scp.nodelay == [1]
        assert storage_scp.peer_assoc_ids == ["modality#1"]
        assert storage_scp.peer_links == ["ct-to-pacs"]
        assert len(of_kind(events, "link.connection_opened")) == 1
        opened = of_kind(events, "link.connection_opened")[0]
        assert opened["client_port"] == sent.registered_port

        [rq] = of_kind(events, "link.pdu", pdu="associate_rq")
        assert rq["direction"] == "upstream"
        assert rq["assoc_id"] == "modality#1"
        assert rq["link"] == "ct-to-pacs"
        assert rq["conn_id"] == opened["conn_id"]
        assert rq["called_ae"] == "STORESCP"
        assert rq["calling_ae"] == "MODALITY"
        assert rq["user_information"]["max_length"] == 16382

        [ac] = of_kind(events, "link.pdu", pdu="associate_ac")
        assert ac["direction"] == "downstream"
        assert ac["assoc_id"] == "modality#1"
        results = [context["result_name"] for context in ac["presentation_contexts"]]
        assert results == ["acceptance"]

        [store_rq] = of_kind(events, "link.pdu", command="C-STORE-RQ")
        assert store_rq["direction"] == "upstream"
        assert store_rq["affected_sop_instance_uid"] == sop_instance_uid
        assert store_rq["affected_sop_class_uid"] == CTImageStorage

        [store_rsp] = of_kind(events, "link.pdu", command="C-STORE-RSP")
        assert store_rsp["direction"] == "downstream"
        assert store_rsp["status"] == 0x0000
        assert store_rsp["message_id_being_responded_to"] == store_rq["message_id"]

        assert len(of_kind(events, "link.pdu", pdu="release_rq", direction="upstream")) == 1
        assert len(of_kind(events, "link.pdu", pdu="release_rp", direction="downstream")) == 1
        assert of_kind(events, "link.pdu_error") == []

        [closed] = of_kind(events, "link.connection_closed")
        assert closed["assoc_id"] == "modality#1"
        # After A-RELEASE-RP both pynetdicom peers close at once, so either may be first.
        assert closed["closed_by"] in ("client", "server")
        assert closed["close_kind"] == "fin"
        assert closed["bytes_read"] == closed["bytes_written"]
        assert closed["bytes_read"]["upstream"] > CT_SMALL.stat().st_size
        assert closed["bytes_read"]["upstream"] == proxy.stats.bytes_upstream
        assert closed["bytes_read"]["downstream"] == proxy.stats.bytes_downstream
        assert closed["pdus"]["upstream"]["associate_rq"] == 1
        assert closed["pdus"]["downstream"]["associate_ac"] == 1
        assert closed["commands"]["upstream"] == {"C-STORE-RQ": 1}
        assert closed["commands"]["downstream"] == {"C-STORE-RSP": 1}
        assert len(registry) == 0

    async def test_unregistered_client_gets_new_id(
        self, proxy: LinkProxy, storage_scp: StorageSCP, recorder: Recorder
    ) -> None:
        """A client that registered no port gets an id made from the link name."""
        sent = await asyncio.to_thread(send_files, proxy.port, [CT_SMALL])
        await wait_until(lambda: proxy.stats.connections_open == 0)
        events = read_events(recorder.path)
        [rq] = of_kind(events, "link.pdu", pdu="associate_rq")

        assert sent.statuses == [0x0000]
        assert rq["assoc_id"] == "ct-to-pacs#1"
        assert storage_scp.peer_assoc_ids == ["ct-to-pacs#1"]

    async def test_large_object(
        self, proxy: LinkProxy, storage_scp: StorageSCP, recorder: Recorder, tmp_path: Path
    ) -> None:
        """A 20 MB object arrives intact and the proxy writes every byte it reads."""
        path = tmp_path / "large.dcm"
        sop_instance_uid, digest = make_large_file(path, 20 * 1024 * 1024)
        sent = await asyncio.to_thread(send_files, proxy.port, [path])
        await wait_until(lambda: proxy.stats.connections_open == 0)
        [closed] = of_kind(read_events(recorder.path), "link.connection_closed")

        assert sent.statuses == [0x0000]
        assert storage_scp.stored == [(sop_instance_uid, digest)]
        assert closed["bytes_read"] == closed["bytes_written"]
        assert closed["bytes_read"]["upstream"] > 20 * 1024 * 1024
        assert closed["pdus"]["upstream"]["p_data_tf"] > 1000


class TestRejectAndFailure:
    async def test_associate_rj_names(
        self, recorder: Recorder, registry: AssociationRegistry
    ) -> None:
        """An SCP that requires its called AE title rejects with the PS3.8 names."""
        server, scp = start_scp(registry, require_called_aet=True)
        link = LinkProxy("ct-to-pacs", "127.0.0.1", scp.port, BoundRecorder(recorder, {}), registry)
        await link.start()
        try:
            sent = await asyncio.to_thread(send_files, link.port, [CT_SMALL], called_ae="WRONG")
            await wait_until(lambda: link.stats.connections_open == 0)
        finally:
            await link.stop()
            server.shutdown()
        [rj] = of_kind(read_events(recorder.path), "link.pdu", pdu="associate_rj")

        assert sent.established is False
        assert rj["direction"] == "downstream"
        assert rj["result_name"] == "rejected-permanent"
        assert rj["source_name"] == "service-user"
        assert rj["reason_name"] == "called-AE-title-not-recognized"

    async def test_upstream_refused(
        self, recorder: Recorder, registry: AssociationRegistry
    ) -> None:
        """With the server down the client connection is closed and the refusal recorded."""
        # A bound socket that does not listen refuses connections and keeps its port reserved.
        with socket.socket() as reserved:
            reserved.bind(("127.0.0.1", 0))
            port = reserved.getsockname()[1]
            link = LinkProxy("ct-to-pacs", "127.0.0.1", port, BoundRecorder(recorder, {}), registry)
            await link.start()
            try:
                sent = await asyncio.to_thread(send_files, link.port, [CT_SMALL], registry)
            finally:
                await link.stop()
        events = read_events(recorder.path)
        [failed] = of_kind(events, "link.upstream_connect_failed")
        assert sent.registered_port is not None
        note = registry.link_failure(sent.registered_port)

        assert sent.established is False
        assert failed["error"] == "connection-refused"
        assert note is not None
        assert note.failure_kind is FailureKind.CONNECTION_REFUSED
        assert note.hop == "ct-to-pacs"
        assert note.side is Side.ACCEPTOR
        assert failed["upstream"] == f"127.0.0.1:{port}"
        assert link.stats.upstream_connect_failures == 1
        assert of_kind(events, "link.connection_opened") == []


def tls_client_hello() -> bytes:
    """Return the first flight of a TLS client, made in memory without a network."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="pacs.test")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()

    return outgoing.read()


def associate_rq_bytes() -> bytes:
    """Encode an A-ASSOCIATE-RQ from MODALITY to STORESCP for CT Image Storage."""
    maximum = MaximumLengthNotification()
    maximum.maximum_length_received = 16382
    class_uid = ImplementationClassUIDNotification()
    class_uid.implementation_class_uid = "1.2.826.0.1.3680043.9.3811.3.0.4"
    context = PresentationContext()
    context.context_id = 1
    context.abstract_syntax = CTImageStorage
    context.transfer_syntax = TRANSFER_SYNTAXES
    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title = "MODALITY"
    primitive.called_ae_title = "STORESCP"
    primitive.user_information = [maximum, class_uid]
    primitive.presentation_context_definition_list.append(context)
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)

    return pdu.encode()


class TestCloseHandling:
    async def test_client_reset(
        self, proxy: LinkProxy, storage_scp: StorageSCP, recorder: Recorder
    ) -> None:
        """A client RST after the A-ASSOCIATE-AC is recorded as a client reset."""
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(associate_rq_bytes())
        header = await reader.readexactly(6)
        await reader.readexactly(int.from_bytes(header[2:6], "big"))
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()
        await wait_until(lambda: proxy.stats.connections_open == 0)
        [closed] = of_kind(read_events(recorder.path), "link.connection_closed")

        assert header[0] == 0x02
        assert closed["closed_by"] == "client"
        assert closed["close_kind"] == "reset"

    async def test_tls_client_keeps_flowing(
        self, proxy: LinkProxy, storage_scp: StorageSCP, recorder: Recorder
    ) -> None:
        """A TLS ClientHello is recorded as tls-handshake and still forwarded byte for byte."""
        hello = tls_client_hello()
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(hello)
        await writer.drain()
        # pynetdicom waits for the rest of the 17 MB "PDU" the header claims, so close first.
        await wait_until(lambda: len(of_kind(read_events(recorder.path), "link.pdu_error")) > 0)
        writer.close()
        with contextlib.suppress(ConnectionError):
            await reader.read()
        await wait_until(lambda: proxy.stats.connections_open == 0)
        events = read_events(recorder.path)
        [error] = of_kind(events, "link.pdu_error")
        [closed] = of_kind(events, "link.connection_closed")

        assert error["error"] == "tls-handshake"
        assert error["direction"] == "upstream"
        assert error["claimed_length"] == int.from_bytes(hello[2:6], "big")
        assert error["first_bytes"].startswith("16 03")
        assert closed["bytes_read"]["upstream"] == len(hello)
        assert closed["bytes_written"]["upstream"] == len(hello)

    async def test_stop_closes_connections(
        self, proxy: LinkProxy, storage_scp: StorageSCP, recorder: Recorder
    ) -> None:
        """stop() closes open connections and leaves no task of the link running."""
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(associate_rq_bytes())
        header = await reader.readexactly(6)
        await proxy.stop()
        remaining = await reader.read()
        writer.close()
        [closed] = of_kind(read_events(recorder.path), "link.connection_closed")
        link_tasks = [t for t in asyncio.all_tasks() if t.get_name().startswith("link ")]

        assert header[0] == 0x02
        assert isinstance(remaining, bytes)
        assert closed["closed_by"] == "proxy"
        assert closed["close_reason"] == "link stopped"
        assert link_tasks == []


class SplitStage(Stage):
    """Test stage that forwards each chunk in two pieces."""

    name = "split"

    def __init__(self) -> None:
        self.chunks = 0

    async def process(self, chunk: bytes, ctx: StageContext, forward: Forward) -> None:
        self.chunks += 1
        middle = len(chunk) // 2
        await forward(chunk[:middle])
        await forward(chunk[middle:])


class ResetOnReleaseStage(Stage):
    """Test stage that resets the connection instead of passing on an A-RELEASE-RQ."""

    name = "reset-on-release"

    async def process(self, chunk: bytes, ctx: StageContext, forward: Forward) -> None:
        if chunk[:1] == b"\x05":
            ctx.close("release dropped", reset=True)
            return
        await forward(chunk)


class TestStages:
    async def test_split_stage(
        self, proxy: LinkProxy, storage_scp: StorageSCP, recorder: Recorder
    ) -> None:
        """Chunks pass through every stage of a direction and still arrive whole."""
        upstream, downstream = SplitStage(), SplitStage()
        proxy.set_stages("upstream", [upstream, SplitStage()])
        proxy.set_stages("downstream", [downstream])
        sent = await asyncio.to_thread(send_files, proxy.port, [CT_SMALL])
        await wait_until(lambda: proxy.stats.connections_open == 0)
        [closed] = of_kind(read_events(recorder.path), "link.connection_closed")

        assert sent.statuses == [0x0000]
        assert upstream.chunks > 0
        assert downstream.chunks > 0
        assert closed["bytes_read"] == closed["bytes_written"]
        assert closed["close_kind"] == "fin"

    async def test_stage_closes_connection(
        self, proxy: LinkProxy, storage_scp: StorageSCP, recorder: Recorder
    ) -> None:
        """A stage that calls close() ends the connection as the proxy, with a reset."""
        proxy.set_stages("upstream", [ResetOnReleaseStage()])
        sent = await asyncio.to_thread(send_files, proxy.port, [CT_SMALL])
        await wait_until(lambda: proxy.stats.connections_open == 0)
        [closed] = of_kind(read_events(recorder.path), "link.connection_closed")

        assert sent.statuses == [0x0000]
        assert closed["closed_by"] == "proxy"
        assert closed["close_kind"] == "reset"
        assert closed["close_reason"] == "release dropped"
        assert closed["bytes_written"]["upstream"] == closed["bytes_read"]["upstream"] - 10

    async def test_unknown_direction(self, proxy: LinkProxy) -> None:
        """set_stages rejects a direction name that Toxiproxy does not use."""
        with pytest.raises(ValueError, match="sideways"):
            proxy.set_stages("sideways", [])  # type: ignore[arg-type]


@pytest.mark.dcmtk
@pytest.mark.skipif(shutil.which("/usr/bin/storescu") is None, reason="DCMTK storescu missing")
class TestDcmtk:
    async def test_dcmtk_storescu(
        self, proxy: LinkProxy, storage_scp: StorageSCP, recorder: Recorder
    ) -> None:
        """DCMTK storescu stores through the proxy under an id made by the proxy."""
        process = await asyncio.create_subprocess_exec(
            "/usr/bin/storescu",
            "-aec",
            "STORESCP",
            "127.0.0.1",
            str(proxy.port),
            str(CT_SMALL),
            env={**os.environ, "TCP_NODELAY": "1"},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await process.communicate()
        await wait_until(lambda: proxy.stats.connections_open == 0)
        events = read_events(recorder.path)
        [store_rsp] = of_kind(events, "link.pdu", command="C-STORE-RSP")
        [closed] = of_kind(events, "link.connection_closed")

        assert process.returncode == 0, output.decode(errors="replace")
        assert store_rsp["status"] == 0x0000
        assert store_rsp["assoc_id"] == "ct-to-pacs#1"
        assert closed["bytes_read"] == closed["bytes_written"]


class TestRegistry:
    def test_register_lookup_forget(self) -> None:
        """A registered port maps to its id until forgotten."""
        registry = AssociationRegistry()
        registry.register(40000, "modality#1", link="ct-to-pacs")

        assert registry.lookup(40000) == "modality#1"
        assert registry.link_of("modality#1") == "ct-to-pacs"
        registry.forget(40000, "modality#1")
        assert registry.lookup(40000) is None
        assert registry.link_of("modality#1") is None
        assert len(registry) == 0

    def test_forget_keeps_newer_registration(self) -> None:
        """Forgetting with an old id leaves a newer id on the same port alone."""
        registry = AssociationRegistry()
        registry.register(40000, "modality#1")
        registry.register(40000, "modality#2")
        registry.forget(40000, "modality#1")

        assert registry.lookup(40000) == "modality#2"

    def test_new_id_counts_per_prefix(self) -> None:
        """New ids count from 1 for each prefix."""
        registry = AssociationRegistry()

        assert [registry.new_id("a"), registry.new_id("a"), registry.new_id("b")] == [
            "a#1",
            "a#2",
            "b#1",
        ]

    def test_invalid_port(self) -> None:
        """A port outside 1..65535 is rejected with the value in the message."""
        registry = AssociationRegistry()

        with pytest.raises(ValueError, match="70000"):
            registry.register(70000, "modality#1")

    def test_failure_notes(self) -> None:
        """Failure notes are kept per port and per id until the port's note is dropped."""
        registry = AssociationRegistry()
        failure = Failure(
            FailureKind.CONNECTION_REFUSED, "ct-to-pacs", Side.ACCEPTOR, False, "refused"
        )
        registry.note_link_failure(40000, failure)
        registry.note_peer_failure("modality#1", failure)
        registry.register(40000, "modality#1")

        assert registry.link_failure(40000) is failure
        assert registry.peer_failure("modality#1") is failure
        assert registry.peer_failure("modality#2") is None
        registry.drop_link_failure(40000)
        assert registry.link_failure(40000) is None
