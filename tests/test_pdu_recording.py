"""Tests of the PDU-level recording of the link proxy, with real peers on loopback sockets."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import CTImageStorage

from simulator.links import AssociationRegistry, LinkProxy
from simulator.links.faults import FaultSpec, LinkFaults
from simulator.links.recording import TRACE_LENGTH, size_bucket
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
    server: Any = None
    stored: list[tuple[str, str]] = field(default_factory=list)
    requestor_max_lengths: list[int] = field(default_factory=list)


def start_scp(max_pdu: int = 16382) -> StorageSCP:
    """Start a Storage SCP for CT Image Storage that advertises ``max_pdu`` (0: unlimited)."""
    scp = StorageSCP(port=0)

    def on_store(event: evt.Event) -> int:
        dataset = event.dataset
        digest = hashlib.sha256(dataset.PixelData).hexdigest()
        scp.stored.append((str(dataset.SOPInstanceUID), digest))
        scp.requestor_max_lengths.append(event.assoc.requestor.maximum_length)
        return 0x0000

    ae = AE(ae_title="STORESCP")
    ae.maximum_pdu_size = max_pdu
    ae.add_supported_context(CTImageStorage, TRANSFER_SYNTAXES)
    handlers = [(evt.EVT_CONN_OPEN, set_nodelay), (evt.EVT_C_STORE, on_store)]
    scp.server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=handlers)
    scp.port = scp.server.server_address[1]

    return scp


@dataclass
class SendResult:
    """What a pynetdicom SCU saw of one association."""

    established: bool = False
    aborted: bool = False
    statuses: list[int] = field(default_factory=list)
    acceptor_max_length: int | None = None
    received_pdus: list[Any] = field(default_factory=list)
    release_s: float | None = None
    store_s: list[float] = field(default_factory=list)


def send_files(
    port: int,
    paths: Sequence[Path],
    max_pdu: int = 16382,
    acse_timeout_s: float = 30,
    dimse_timeout_s: float = 30,
) -> SendResult:
    """Send ``paths`` with a pynetdicom SCU that advertises ``max_pdu`` (0: unlimited).

    NOTE: pynetdicom 3.0.4 waits for ``dimse_timeout_s`` in send_c_store even
    after an A-ABORT arrived, so tests that abort pass a short one.
    """
    import time

    result = SendResult()

    def on_pdu_recv(event: evt.Event) -> None:
        result.received_pdus.append(event.pdu)

    ae = AE(ae_title="MODALITY")
    ae.acse_timeout = acse_timeout_s
    ae.dimse_timeout = dimse_timeout_s
    ae.add_requested_context(CTImageStorage, TRANSFER_SYNTAXES)
    handlers = [(evt.EVT_CONN_OPEN, set_nodelay), (evt.EVT_PDU_RECV, on_pdu_recv)]
    assoc: Association = ae.associate(
        "127.0.0.1", port, ae_title="STORESCP", max_pdu=max_pdu, evt_handlers=handlers
    )
    result.established = assoc.is_established
    if assoc.is_established:
        result.acceptor_max_length = assoc.acceptor.maximum_length
        for path in paths:
            started = time.monotonic()
            status = assoc.send_c_store(path)
            result.store_s.append(time.monotonic() - started)
            if not assoc.is_established or "Status" not in status:
                break
            result.statuses.append(int(status.Status))
        if assoc.is_established:
            started = time.monotonic()
            assoc.release()
            result.release_s = time.monotonic() - started
    result.aborted = assoc.is_aborted

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


def associate_rq_bytes(max_length: int = 16382) -> bytes:
    """Encode an A-ASSOCIATE-RQ from MODALITY to STORESCP for CT Image Storage."""
    maximum = MaximumLengthNotification()
    maximum.maximum_length_received = max_length
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


def p_data_tf(value_length: int, control: int = 0x00, context_id: int = 1) -> bytes:
    """Encode a P-DATA-TF with one PDV item of ``value_length`` zero bytes."""
    item = struct.pack(">IBB", value_length + 2, context_id, control) + bytes(value_length)

    return struct.pack(">BBI", 0x04, 0, len(item)) + item


A_ABORT = bytes([0x07, 0, 0, 0, 0, 4, 0, 0, 0, 0])


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


async def read_pdu(reader: asyncio.StreamReader) -> bytes:
    """Read one whole PDU from a raw peer's stream."""
    header = await reader.readexactly(6)
    return header + await reader.readexactly(int.from_bytes(header[2:6], "big"))


@pytest.fixture
def recorder(tmp_path: Path) -> Iterator[Recorder]:
    recorder = Recorder(tmp_path / "events.jsonl", "test-run")
    yield recorder
    recorder.close()


@pytest.fixture
async def start_link(recorder: Recorder) -> AsyncIterator[Callable[..., Any]]:
    """Factory that starts a Storage SCP and a LinkProxy in front of it; both stop at the end."""
    scps: list[StorageSCP] = []
    links: list[LinkProxy] = []

    async def start(
        scp_max_pdu: int = 16382,
        faults: Sequence[dict[str, Any]] = (),
        **proxy_options: Any,
    ) -> tuple[LinkProxy, StorageSCP]:
        scp = start_scp(scp_max_pdu)
        scps.append(scp)
        link_faults = LinkFaults("ct-to-pacs", 1, BoundRecorder(recorder, {}))
        for spec in faults:
            link_faults.add(FaultSpec.model_validate(spec))
        link = LinkProxy(
            "ct-to-pacs",
            "127.0.0.1",
            scp.port,
            BoundRecorder(recorder, {}),
            AssociationRegistry(),
            faults=link_faults,
            **proxy_options,
        )
        links.append(link)
        await link.start()

        return link, scp

    yield start
    for link in links:
        await link.stop()
    for scp in scps:
        scp.server.shutdown()


async def finish(link: LinkProxy) -> None:
    """Wait until the link has no open connection, then stop it."""
    await wait_until(lambda: link.stats.connections_open == 0)
    await link.stop()


class TestSizeBucket:
    def test_powers_of_two(self) -> None:
        """A length falls in the bucket of the largest power of two not above it."""
        assert [size_bucket(n) for n in (0, 1, 4, 5, 16382, 16384, 65536)] == [
            0,
            1,
            4,
            4,
            8192,
            16384,
            65536,
        ]


class TestCountsAndSizes:
    async def test_store_counts_and_histogram(
        self, start_link: Callable[..., Any], recorder: Recorder
    ) -> None:
        """A C-STORE leaves per-type counts and a size histogram in connection_closed."""
        link, _scp = await start_link()
        sent = await asyncio.to_thread(send_files, link.port, [CT_SMALL])
        await finish(link)
        events = read_events(recorder.path)
        [closed] = of_kind(events, "link.connection_closed")
        sizes = closed["pdu_sizes"]

        assert sent.statuses == [0x0000]
        assert closed["pdus"]["upstream"]["p_data_tf"] >= 2
        assert sum(sizes["upstream"].values()) == sum(closed["pdus"]["upstream"].values())
        assert sum(sizes["downstream"].values()) == sum(closed["pdus"]["downstream"].values())
        # A-RELEASE-RQ/RP have length 4; a full P-DATA-TF of 16382 falls in bucket 8192.
        assert sizes["upstream"]["4"] == 1
        assert sizes["downstream"]["4"] == 1
        assert sizes["upstream"]["8192"] >= 1
        assert all(int(bucket) & (int(bucket) - 1) == 0 for bucket in sizes["upstream"])
        assert closed["oversize_pdus"] == {"upstream": 0, "downstream": 0}
        assert of_kind(events, "link.pdu_trace") == []

    async def test_negotiated_maxima(
        self, start_link: Callable[..., Any], recorder: Recorder
    ) -> None:
        """Each direction is limited by the maximum its receiver advertised."""
        link, _scp = await start_link(scp_max_pdu=65536)
        sent = await asyncio.to_thread(send_files, link.port, [CT_SMALL], 16384)
        await finish(link)
        [closed] = of_kind(read_events(recorder.path), "link.connection_closed")

        assert sent.statuses == [0x0000]
        assert closed["max_pdu_length"] == {"upstream": 65536, "downstream": 16384}

    async def test_unlimited_never_flagged(
        self, start_link: Callable[..., Any], recorder: Recorder, tmp_path: Path
    ) -> None:
        """Peers that advertise 0 record unlimited, and their large PDUs are never flagged."""
        path = tmp_path / "large.dcm"
        make_large_file(path, 2 * 1024 * 1024)
        link, _scp = await start_link(scp_max_pdu=0)
        sent = await asyncio.to_thread(send_files, link.port, [path], 0)
        await finish(link)
        events = read_events(recorder.path)
        [closed] = of_kind(events, "link.connection_closed")
        largest = max(int(bucket) for bucket in closed["pdu_sizes"]["upstream"])

        assert sent.statuses == [0x0000]
        assert closed["max_pdu_length"] == {"upstream": "unlimited", "downstream": "unlimited"}
        assert largest >= 1024 * 1024
        assert of_kind(events, "link.pdu_oversize") == []
        assert closed["oversize_pdus"] == {"upstream": 0, "downstream": 0}


class TestAbnormalEnds:
    async def test_oversize_pdu_flagged(
        self, start_link: Callable[..., Any], recorder: Recorder
    ) -> None:
        """A P-DATA-TF longer than the acceptor's maximum is flagged with the limit."""
        link, _scp = await start_link(scp_max_pdu=16384)
        reader, writer = await asyncio.open_connection("127.0.0.1", link.port)
        writer.write(associate_rq_bytes())
        ac = await read_pdu(reader)
        oversize = p_data_tf(20_000)
        writer.write(oversize)
        await writer.drain()
        await wait_until(lambda: bool(of_kind(read_events(recorder.path), "link.pdu_oversize")))
        writer.close()
        await finish(link)
        events = read_events(recorder.path)
        [flagged] = of_kind(events, "link.pdu_oversize")
        [closed] = of_kind(events, "link.connection_closed")
        [trace] = of_kind(events, "link.pdu_trace")

        assert ac[0] == 0x02
        assert flagged["direction"] == "upstream"
        assert flagged["pdu"] == "p_data_tf"
        assert flagged["length"] == len(oversize) - 6
        assert flagged["limit"] == 16384
        assert flagged["limit_advertised_by"] == "acceptor"
        assert flagged["stream_offset"] == len(associate_rq_bytes())
        assert closed["oversize_pdus"]["upstream"] == 1
        assert "oversize" in trace["reasons"]

    async def test_tls_client_hello(
        self, start_link: Callable[..., Any], recorder: Recorder
    ) -> None:
        """A TLS ClientHello records tls_mismatch with the bogus length a DICOM peer reads."""
        link, _scp = await start_link()
        hello = tls_client_hello()
        reader, writer = await asyncio.open_connection("127.0.0.1", link.port)
        writer.write(hello)
        await writer.drain()
        await wait_until(lambda: bool(of_kind(read_events(recorder.path), "link.tls_mismatch")))
        writer.close()
        with contextlib.suppress(ConnectionError):
            await reader.read()
        await finish(link)
        events = read_events(recorder.path)
        [mismatch] = of_kind(events, "link.tls_mismatch")
        [trace] = of_kind(events, "link.pdu_trace")

        assert hello[:3] == b"\x16\x03\x01"
        assert mismatch["direction"] == "upstream"
        assert mismatch["tls_record"] == "handshake"
        assert mismatch["claimed_length"] == int.from_bytes(hello[2:6], "big")
        assert mismatch["claimed_length"] > 16 * 1024 * 1024
        assert mismatch["first_bytes"].startswith("16 03 01")
        assert of_kind(events, "link.pdu_oversize") == []
        assert "tls-mismatch" in trace["reasons"]

    async def test_trace_on_abort(self, start_link: Callable[..., Any], recorder: Recorder) -> None:
        """An A-ABORT dumps the recent PDU headers of both directions."""
        link, _scp = await start_link()
        reader, writer = await asyncio.open_connection("127.0.0.1", link.port)
        rq = associate_rq_bytes()
        writer.write(rq)
        await read_pdu(reader)
        writer.write(p_data_tf(100, control=0x01) + A_ABORT)
        await writer.drain()
        with contextlib.suppress(ConnectionError):
            await reader.read()
        writer.close()
        await finish(link)
        [trace] = of_kind(read_events(recorder.path), "link.pdu_trace")
        upstream = trace["headers"]["upstream"]

        assert "abort" in trace["reasons"]
        assert [h["pdu"] for h in upstream] == ["associate_rq", "p_data_tf", "abort"]
        assert [h["stream_offset"] for h in upstream] == [0, len(rq), len(rq) + 112]
        assert [h["length"] for h in upstream] == [len(rq) - 6, 106, 4]
        assert trace["headers"]["downstream"][0]["pdu"] == "associate_ac"
        assert upstream[0]["t_mono"] <= upstream[2]["t_mono"]
        assert trace["pdus"]["upstream"] == {"associate_rq": 1, "p_data_tf": 1, "abort": 1}

    async def test_trace_keeps_last_headers(
        self, start_link: Callable[..., Any], recorder: Recorder
    ) -> None:
        """The trace keeps only the last TRACE_LENGTH headers and counts the others."""
        link, _scp = await start_link()
        reader, writer = await asyncio.open_connection("127.0.0.1", link.port)
        writer.write(associate_rq_bytes())
        await read_pdu(reader)
        writer.write(p_data_tf(10, control=0x01) * 40)
        await writer.drain()
        sent_bytes = len(associate_rq_bytes()) + 40 * 22
        await wait_until(lambda: link.stats.bytes_upstream == sent_bytes)
        writer.transport.abort()
        await finish(link)
        [trace] = of_kind(read_events(recorder.path), "link.pdu_trace")

        assert len(trace["headers"]["upstream"]) == TRACE_LENGTH
        assert trace["headers_not_kept"]["upstream"] == 41 - TRACE_LENGTH
        assert trace["headers"]["upstream"][-1]["pdu"] == "p_data_tf"
        assert "association-not-released" in trace["reasons"]
