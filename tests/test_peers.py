"""Smoke tests proving that each real peer works over loopback."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import aiomqtt
import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.events import EventHandlerType
from pynetdicom.pdu import A_ASSOCIATE_RJ
from pynetdicom.presentation import StoragePresentationContexts
from pynetdicom.sop_class import CTImageStorage, Verification

from peers import (
    LOOPBACK_HOST,
    DcmtkStoreSCP,
    Mosquitto,
    Orthanc,
    dcmtk_echoscu,
    dcmtk_storescu,
    free_port,
)

CT_SMALL_PATH = Path(pydicom.__file__).parent / "data/test_files/CT_small.dcm"
STATUS_SUCCESS = 0x0000
# A-ASSOCIATE-RJ field values from DICOM PS3.8 Table 9-21.
REJECT_RESULT_PERMANENT = 1
REJECT_SOURCE_SERVICE_USER = 1
REJECT_REASON_CALLED_AE_NOT_RECOGNIZED = 7


def set_tcp_nodelay(event: evt.Event) -> None:
    """Disable Nagle's algorithm, which stock pynetdicom leaves on."""
    association_socket = event.assoc.dul.socket
    assert association_socket is not None
    assert association_socket.socket is not None
    association_socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


NODELAY_HANDLERS: list[EventHandlerType] = [(evt.EVT_CONN_OPEN, set_tcp_nodelay)]


def make_scu_ae() -> AE:
    ae = AE(ae_title="TESTSCU")
    ae.acse_timeout = 10
    ae.dimse_timeout = 10
    ae.network_timeout = 10
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage)

    return ae


@pytest.fixture
def ct_small() -> Dataset:
    """CT_small.dcm from pydicom's bundled test files."""
    return pydicom.dcmread(CT_SMALL_PATH)


class Requestor:
    """pynetdicom association requestor that records each A-ASSOCIATE-RJ PDU it receives.

    pynetdicom 3.0.4 can report a peer's A-ASSOCIATE-RJ as an abort: when the
    peer closes the connection right after the reject, the DUL thread may
    close the socket before the ACSE code checks that it is connected. The
    recorded PDU shows the reject whichever flag pynetdicom sets.
    """

    def __init__(self) -> None:
        self.ae = make_scu_ae()
        self.associations: list[Association] = []
        self._reject_pdus: dict[Association, A_ASSOCIATE_RJ] = {}

    def _record_reject(self, event: evt.Event) -> None:
        if isinstance(event.pdu, A_ASSOCIATE_RJ):
            self._reject_pdus[event.assoc] = event.pdu

    def associate(self, port: int, called_ae: str) -> Association:
        """Request an association with the peer at 127.0.0.1:`port`."""
        handlers: list[EventHandlerType] = [
            *NODELAY_HANDLERS,
            (evt.EVT_PDU_RECV, self._record_reject),
        ]
        assoc = self.ae.associate(LOOPBACK_HOST, port, ae_title=called_ae, evt_handlers=handlers)
        self.associations.append(assoc)

        return assoc

    def reject_pdu(self, assoc: Association) -> A_ASSOCIATE_RJ | None:
        """Return the A-ASSOCIATE-RJ PDU received for `assoc`, or None."""
        return self._reject_pdus.get(assoc)

    def close(self) -> None:
        for assoc in self.associations:
            if assoc.is_established:
                assoc.release()
        self.ae.shutdown()


@pytest.fixture
def requestor() -> Iterator[Requestor]:
    """pynetdicom requestor whose open associations are released after the test."""
    scu = Requestor()
    yield scu
    scu.close()


@pytest.mark.dcmtk
def test_storescp_answers_echo(
    dcmtk_storescp: Callable[..., DcmtkStoreSCP],
    requestor: Requestor,
) -> None:
    """storescp accepts an association and responds to C-ECHO with status Success."""
    scp = dcmtk_storescp()

    assoc = requestor.associate(scp.port, scp.ae_title)
    assert assoc.is_established
    status = assoc.send_c_echo()

    assert status.Status == STATUS_SUCCESS


@pytest.mark.dcmtk
def test_storescp_writes_stored_instance(
    dcmtk_storescp: Callable[..., DcmtkStoreSCP],
    requestor: Requestor,
    ct_small: Dataset,
) -> None:
    """A C-STORE to storescp lands as one file in its output folder."""
    scp = dcmtk_storescp()

    assoc = requestor.associate(scp.port, scp.ae_title)
    assert assoc.is_established
    status = assoc.send_c_store(ct_small)
    assoc.release()

    assert status.Status == STATUS_SUCCESS
    received = scp.received_files()
    assert len(received) == 1
    assert pydicom.dcmread(received[0]).SOPInstanceUID == ct_small.SOPInstanceUID


@pytest.mark.dcmtk
def test_storescp_refuse_switch_rejects(
    dcmtk_storescp: Callable[..., DcmtkStoreSCP],
    requestor: Requestor,
) -> None:
    """storescp started with --refuse rejects every association."""
    scp = dcmtk_storescp(extra_args=["--refuse"])

    assoc = requestor.associate(scp.port, scp.ae_title)

    assert not assoc.is_established
    reject = requestor.reject_pdu(assoc)
    assert reject is not None
    assert reject.result == REJECT_RESULT_PERMANENT
    assert reject.source == REJECT_SOURCE_SERVICE_USER


@pytest.mark.dcmtk
def test_storescp_abort_after_switch_aborts(
    dcmtk_storescp: Callable[..., DcmtkStoreSCP],
    requestor: Requestor,
    ct_small: Dataset,
) -> None:
    """storescp with --abort-after aborts the association instead of sending a C-STORE response."""
    scp = dcmtk_storescp(extra_args=["--abort-after"])

    assoc = requestor.associate(scp.port, scp.ae_title)
    assert assoc.is_established
    status = assoc.send_c_store(ct_small)
    # The association thread records the A-ABORT after send_c_store returns.
    assoc.join(timeout=10)

    assert "Status" not in status
    assert assoc.is_aborted


@pytest.mark.dcmtk
def test_echoscu_reaches_storescp(dcmtk_storescp: Callable[..., DcmtkStoreSCP]) -> None:
    """DCMTK's echoscu gets a successful C-ECHO response from storescp."""
    scp = dcmtk_storescp(ae_title="ECHOTARGET")

    result = dcmtk_echoscu(LOOPBACK_HOST, scp.port, called_ae=scp.ae_title)

    assert result.returncode == 0, result.stderr


@pytest.mark.dcmtk
@pytest.mark.usefixtures("dcmtk_scu_available")
def test_storescu_sends_to_pynetdicom_scp(tmp_path: Path, ct_small: Dataset) -> None:
    """DCMTK's storescu delivers CT_small.dcm to a pynetdicom SCP."""
    received: list[Dataset] = []
    received_lock = threading.Lock()

    def handle_store(event: evt.Event) -> int:
        with received_lock:
            received.append(event.dataset)
        return STATUS_SUCCESS

    ae = AE(ae_title="PYNETSCP")
    ae.supported_contexts = StoragePresentationContexts
    port = free_port()
    server = ae.start_server(
        (LOOPBACK_HOST, port),
        block=False,
        evt_handlers=[*NODELAY_HANDLERS, (evt.EVT_C_STORE, handle_store)],
    )
    assert server is not None
    try:
        result = dcmtk_storescu(
            LOOPBACK_HOST, port, called_ae="PYNETSCP", calling_ae="DCMTKSCU", files=[CT_SMALL_PATH]
        )
    finally:
        server.shutdown()

    assert result.returncode == 0, result.stderr
    assert len(received) == 1
    assert received[0].SOPInstanceUID == ct_small.SOPInstanceUID


@pytest.mark.orthanc
def test_orthanc_stores_instance(
    orthanc: Callable[..., Orthanc],
    requestor: Requestor,
    ct_small: Dataset,
) -> None:
    """A C-STORE to Orthanc shows up in its REST API."""
    server = orthanc()

    assoc = requestor.associate(server.dicom_port, server.ae_title)
    assert assoc.is_established
    status = assoc.send_c_store(ct_small)
    assoc.release()

    assert status.Status == STATUS_SUCCESS
    instance_ids = server.instances()
    assert len(instance_ids) == 1
    tags = server.instance_tags(instance_ids[0])
    assert tags["SOPInstanceUID"] == ct_small.SOPInstanceUID


@pytest.mark.orthanc
def test_orthanc_checks_called_ae(
    orthanc: Callable[..., Orthanc],
    requestor: Requestor,
) -> None:
    """Orthanc with DicomCheckCalledAet rejects a wrong called AE and accepts its own."""
    server = orthanc(ae_title="PACS", config_overrides={"DicomCheckCalledAet": True})

    wrong_assoc = requestor.associate(server.dicom_port, "WRONGAE")
    right_assoc = requestor.associate(server.dicom_port, "PACS")

    assert not wrong_assoc.is_established
    reject = requestor.reject_pdu(wrong_assoc)
    assert reject is not None
    assert reject.source == REJECT_SOURCE_SERVICE_USER
    assert reject.reason_diagnostic == REJECT_REASON_CALLED_AE_NOT_RECOGNIZED
    assert right_assoc.is_established


async def test_mosquitto_delivers_message(mosquitto: Callable[..., Mosquitto]) -> None:
    """A message published to Mosquitto reaches a subscriber."""
    broker = mosquitto()
    topic = "rehearsal/smoke"

    async with aiomqtt.Client(LOOPBACK_HOST, port=broker.port) as client:
        await client.subscribe(topic, qos=1)
        await client.publish(topic, b"hello", qos=1)
        async with asyncio.timeout(10):
            message = await anext(aiter(client.messages))

    assert message.topic.matches(topic)
    assert message.payload == b"hello"


async def test_mosquitto_restart_keeps_port(mosquitto: Callable[..., Mosquitto]) -> None:
    """A restarted Mosquitto accepts clients again on the same port."""
    broker = mosquitto()
    port_before = broker.port
    pid_before = broker.pid

    broker.restart()

    assert broker.port == port_before
    assert broker.pid != pid_before
    async with aiomqtt.Client(LOOPBACK_HOST, port=broker.port) as client:
        await client.publish("rehearsal/restart", b"after restart", qos=1)
