"""Tests of the incremental PDU reader against PDUs that pynetdicom encodes."""

from __future__ import annotations

import json
import random
import ssl
import struct
import tracemalloc
from io import BytesIO
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pynetdicom.dimse_messages import C_ECHO_RQ, C_MOVE_RQ, C_MOVE_RSP, C_STORE_RQ, C_STORE_RSP
from pynetdicom.dimse_primitives import C_ECHO, C_MOVE, C_STORE
from pynetdicom.pdu import (
    A_ABORT_RQ,
    A_ASSOCIATE_AC,
    A_ASSOCIATE_RJ,
    A_ASSOCIATE_RQ,
    A_RELEASE_RP,
    A_RELEASE_RQ,
    P_DATA_TF,
)
from pynetdicom.pdu_primitives import (
    A_ABORT,
    A_ASSOCIATE,
    A_P_ABORT,
    AsynchronousOperationsWindowNegotiation,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
    UserIdentityNegotiation,
)
from pynetdicom.presentation import PresentationContext

from simulator.links.pdu import (
    PDU,
    Abort,
    AssociateAC,
    AssociateRJ,
    AssociateRQ,
    DimseCommand,
    PDataTF,
    PDUError,
    PDUReader,
    PDUType,
    ReleaseRP,
    ReleaseRQ,
)

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
IMPLEMENTATION_UID = "1.2.826.0.1.3680043.9.3811.3.0.4"


def user_information(max_length: int = 16382) -> list[Any]:
    maximum = MaximumLengthNotification()
    maximum.maximum_length_received = max_length
    class_uid = ImplementationClassUIDNotification()
    class_uid.implementation_class_uid = IMPLEMENTATION_UID
    version = ImplementationVersionNameNotification()
    version.implementation_version_name = "REHEARSAL_1"

    return [maximum, class_uid, version]


def associate_rq(max_length: int = 16382, extra: list[Any] | None = None) -> bytes:
    primitive = A_ASSOCIATE()
    primitive.application_context_name = APPLICATION_CONTEXT
    primitive.calling_ae_title = "MODALITY1"
    primitive.called_ae_title = "PACS"
    primitive.user_information = user_information(max_length) + (extra or [])
    for context_id, abstract, syntaxes in (
        (1, CT_IMAGE_STORAGE, [EXPLICIT_LE, IMPLICIT_LE]),
        (3, VERIFICATION, [IMPLICIT_LE]),
    ):
        context = PresentationContext()
        context.context_id = context_id
        context.abstract_syntax = abstract
        context.transfer_syntax = syntaxes
        primitive.presentation_context_definition_list.append(context)
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)

    return pdu.encode()


def associate_ac(results: list[int], extra: list[Any] | None = None) -> bytes:
    primitive = A_ASSOCIATE()
    primitive.application_context_name = APPLICATION_CONTEXT
    primitive.calling_ae_title = "MODALITY1"
    primitive.called_ae_title = "PACS"
    primitive.result = 0
    primitive.user_information = user_information(32768) + (extra or [])
    for index, result in enumerate(results):
        context = PresentationContext()
        context.context_id = 2 * index + 1
        context.transfer_syntax = [EXPLICIT_LE]
        context.result = result
        primitive.presentation_context_definition_results_list.append(context)
    pdu = A_ASSOCIATE_AC()
    pdu.from_primitive(primitive)

    return pdu.encode()


def associate_rj(result: int, source: int, reason: int) -> bytes:
    primitive = A_ASSOCIATE()
    primitive.result = result
    primitive.result_source = source
    primitive.diagnostic = reason
    pdu = A_ASSOCIATE_RJ()
    pdu.from_primitive(primitive)

    return pdu.encode()


def encode_dataset(dataset: Dataset) -> bytes:
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = True
    write_dataset(buffer, dataset)

    return buffer.getvalue()


def p_data_pdus(message: Any, primitive: Any, context_id: int, max_pdu: int = 16382) -> bytes:
    """Encode a DIMSE message as pynetdicom sends it: one P-DATA-TF per fragment."""
    message.primitive_to_message(primitive)
    encoded = b""
    for p_data in message.encode_msg(context_id, max_pdu):
        pdu = P_DATA_TF()
        pdu.from_primitive(p_data)
        encoded += pdu.encode()

    return encoded


def c_store_rq(data_set: bytes = b"", max_pdu: int = 16382) -> bytes:
    primitive = C_STORE()
    primitive.MessageID = 7
    primitive.AffectedSOPClassUID = CT_IMAGE_STORAGE
    primitive.AffectedSOPInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    primitive.Priority = 0
    primitive.DataSet = BytesIO(data_set)

    return p_data_pdus(C_STORE_RQ(), primitive, 1, max_pdu)


def c_store_rsp(status: int, comment: str | None = None) -> bytes:
    primitive = C_STORE()
    primitive.MessageIDBeingRespondedTo = 7
    primitive.AffectedSOPClassUID = CT_IMAGE_STORAGE
    primitive.AffectedSOPInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    primitive.Status = status
    if comment is not None:
        primitive.ErrorComment = comment
        primitive.OffendingElement = [0x00100020, 0x00080018]

    return p_data_pdus(C_STORE_RSP(), primitive, 1)


def release_rq() -> bytes:
    return A_RELEASE_RQ().encode()


def release_rp() -> bytes:
    return A_RELEASE_RP().encode()


def feed_all(data: bytes) -> list[Any]:
    return PDUReader().feed(data)


def feed_bytewise(data: bytes) -> list[Any]:
    reader = PDUReader()
    results: list[Any] = []
    for index in range(len(data)):
        results.extend(reader.feed(data[index : index + 1]))

    return results


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


class TestAssociate:
    def test_rq_fields(self) -> None:
        """A-ASSOCIATE-RQ yields AE titles, contexts and user information."""
        data = associate_rq()
        [pdu] = feed_all(data)

        assert isinstance(pdu, AssociateRQ)
        assert pdu.pdu_type is PDUType.A_ASSOCIATE_RQ
        assert pdu.length == len(data) - 6
        assert pdu.stream_offset == 0
        assert pdu.protocol_version == 1
        assert pdu.called_ae == "PACS"
        assert pdu.calling_ae == "MODALITY1"
        assert pdu.application_context == APPLICATION_CONTEXT
        assert [c.context_id for c in pdu.presentation_contexts] == [1, 3]
        assert pdu.presentation_contexts[0].abstract_syntax == CT_IMAGE_STORAGE
        assert pdu.presentation_contexts[0].transfer_syntaxes == (EXPLICIT_LE, IMPLICIT_LE)
        assert pdu.presentation_contexts[1].abstract_syntax == VERIFICATION
        assert pdu.presentation_contexts[1].transfer_syntaxes == (IMPLICIT_LE,)
        info = pdu.user_information
        assert info.max_length == 16382
        assert info.implementation_class_uid == IMPLEMENTATION_UID
        assert info.implementation_version_name == "REHEARSAL_1"
        assert info.user_identity is None
        assert pdu.unknown_item_types == ()

    def test_rq_max_length_offset(self) -> None:
        """The Maximum Length offset points at the 4-byte value inside the PDU."""
        data = associate_rq(max_length=65536)
        [pdu] = feed_all(data)
        offset = pdu.user_information.max_length_offset

        assert data[offset : offset + 4] == struct.pack(">I", 65536)
        assert data[offset - 4] == 0x51

    def test_rq_max_length_zero(self) -> None:
        """Maximum Length 0, which means unlimited, is kept as 0."""
        [pdu] = feed_all(associate_rq(max_length=0))

        assert pdu.user_information.max_length == 0

    def test_rq_optional_user_items(self) -> None:
        """Asynchronous window, role selection and user identity are parsed."""
        window = AsynchronousOperationsWindowNegotiation()
        window.maximum_number_operations_invoked = 5
        window.maximum_number_operations_performed = 3
        role = SCP_SCU_RoleSelectionNegotiation()
        role.sop_class_uid = MR_IMAGE_STORAGE
        role.scu_role = False
        role.scp_role = True
        identity = UserIdentityNegotiation()
        identity.user_identity_type = 2
        identity.positive_response_requested = True
        identity.primary_field = b"operator"
        identity.secondary_field = b"hunter2-secret"
        [pdu] = feed_all(associate_rq(extra=[window, role, identity]))
        info = pdu.user_information

        assert info.max_operations_invoked == 5
        assert info.max_operations_performed == 3
        assert len(info.role_selections) == 1
        assert info.role_selections[0].sop_class_uid == MR_IMAGE_STORAGE
        assert info.role_selections[0].scu_role == 0
        assert info.role_selections[0].scp_role == 1
        assert info.user_identity is not None
        assert info.user_identity.identity_type == 2
        assert info.user_identity.identity_type_name == "username-and-passcode"
        assert info.user_identity.positive_response_requested is True
        assert info.user_identity.primary_field_length == len(b"operator")
        assert info.user_identity.secondary_field_length == len(b"hunter2-secret")

    def test_user_identity_values_not_kept(self) -> None:
        """Neither the user name nor the passcode appears in the event fields."""
        identity = UserIdentityNegotiation()
        identity.user_identity_type = 2
        identity.primary_field = b"operator"
        identity.secondary_field = b"hunter2-secret"
        [pdu] = feed_all(associate_rq(extra=[identity]))
        rendered = json.dumps(pdu.to_fields(), default=str)

        assert "operator" not in rendered
        assert "hunter2" not in rendered
        assert "username-and-passcode" in rendered

    def test_ac_results(self) -> None:
        """A-ASSOCIATE-AC yields every presentation context result with its PS3.8 name."""
        [pdu] = feed_all(associate_ac([0, 1, 2, 3, 4]))

        assert isinstance(pdu, AssociateAC)
        assert pdu.called_ae == "PACS"
        assert pdu.calling_ae == "MODALITY1"
        assert pdu.user_information.max_length == 32768
        assert [(c.context_id, c.result) for c in pdu.presentation_contexts] == [
            (1, 0),
            (3, 1),
            (5, 2),
            (7, 3),
            (9, 4),
        ]
        assert [c.result_name for c in pdu.presentation_contexts] == [
            "acceptance",
            "user-rejection",
            "no-reason",
            "abstract-syntax-not-supported",
            "transfer-syntaxes-not-supported",
        ]
        assert pdu.presentation_contexts[0].transfer_syntax == EXPLICIT_LE

    def test_ac_user_identity_response(self) -> None:
        """The server response of an A-ASSOCIATE-AC is kept as a length only."""
        identity = UserIdentityNegotiation()
        identity.server_response = b"ticket-granted"
        [pdu] = feed_all(associate_ac([0], extra=[identity]))

        assert pdu.user_information.user_identity_response_length == len(b"ticket-granted")
        assert "ticket" not in json.dumps(pdu.to_fields(), default=str)

    @pytest.mark.parametrize(
        ("result", "source", "reason", "names"),
        [
            (1, 1, 1, ("rejected-permanent", "service-user", "no-reason-given")),
            (
                1,
                1,
                2,
                ("rejected-permanent", "service-user", "application-context-name-not-supported"),
            ),
            (1, 1, 3, ("rejected-permanent", "service-user", "calling-AE-title-not-recognized")),
            (1, 1, 7, ("rejected-permanent", "service-user", "called-AE-title-not-recognized")),
            (2, 2, 1, ("rejected-transient", "service-provider-acse", "no-reason-given")),
            (
                1,
                2,
                2,
                ("rejected-permanent", "service-provider-acse", "protocol-version-not-supported"),
            ),
            (
                2,
                3,
                1,
                ("rejected-transient", "service-provider-presentation", "temporary-congestion"),
            ),
            (
                2,
                3,
                2,
                ("rejected-transient", "service-provider-presentation", "local-limit-exceeded"),
            ),
        ],
    )
    def test_rj_names(self, result: int, source: int, reason: int, names: tuple[str, ...]) -> None:
        """A-ASSOCIATE-RJ codes get their PS3.8 names."""
        [pdu] = feed_all(associate_rj(result, source, reason))

        assert isinstance(pdu, AssociateRJ)
        assert (pdu.result, pdu.source, pdu.reason) == (result, source, reason)
        assert (pdu.result_name, pdu.source_name, pdu.reason_name) == names

    def test_rj_reserved_reason(self) -> None:
        """A reason that PS3.8 reserves is named reserved."""
        data = bytes([0x03, 0, 0, 0, 0, 4, 0, 1, 1, 5])
        [pdu] = feed_all(data)

        assert pdu.reason_name == "reserved"


class TestReleaseAbort:
    def test_release(self) -> None:
        """A-RELEASE-RQ and A-RELEASE-RP are framed with length 4."""
        results = feed_all(release_rq() + release_rp())

        assert [type(pdu) for pdu in results] == [ReleaseRQ, ReleaseRP]
        assert [pdu.length for pdu in results] == [4, 4]
        assert [pdu.stream_offset for pdu in results] == [0, 10]
        assert [pdu.name for pdu in results] == ["release_rq", "release_rp"]

    @pytest.mark.parametrize(
        ("reason", "name"),
        [
            (0, "reason-not-specified"),
            (1, "unrecognized-PDU"),
            (2, "unexpected-PDU"),
            (4, "unrecognized-PDU-parameter"),
            (5, "unexpected-PDU-parameter"),
            (6, "invalid-PDU-parameter-value"),
        ],
    )
    def test_provider_abort(self, reason: int, name: str) -> None:
        """A service-provider A-ABORT gets the PS3.8 reason name."""
        primitive = A_P_ABORT()
        primitive.provider_reason = reason
        pdu = A_ABORT_RQ()
        pdu.from_primitive(primitive)
        [abort] = feed_all(pdu.encode())

        assert isinstance(abort, Abort)
        assert abort.source == 2
        assert abort.source_name == "service-provider"
        assert abort.reason == reason
        assert abort.reason_name == name

    def test_user_abort(self) -> None:
        """A service-user A-ABORT has a reason that is not significant."""
        primitive = A_ABORT()
        primitive.abort_source = 0
        pdu = A_ABORT_RQ()
        pdu.from_primitive(primitive)
        [abort] = feed_all(pdu.encode())

        assert abort.source_name == "service-user"
        assert abort.reason_name == "not-significant"
        assert abort.name == "abort"


class TestPData:
    def test_c_store_rq(self) -> None:
        """C-STORE-RQ command fields are decoded and the data set PDVs only counted."""
        dataset = Dataset()
        dataset.SOPClassUID = CT_IMAGE_STORAGE
        dataset.Rows = 512
        data_set = encode_dataset(dataset)
        results = feed_all(c_store_rq(data_set))
        commands = [r for r in results if isinstance(r, DimseCommand)]
        pdus = [r for r in results if isinstance(r, PDataTF)]

        assert len(commands) == 1
        command = commands[0]
        assert command.command == "C-STORE-RQ"
        assert command.command_field == 0x0001
        assert command.context_id == 1
        assert command.message_id == 7
        assert command.affected_sop_class_uid == CT_IMAGE_STORAGE
        assert command.affected_sop_instance_uid == "1.2.826.0.1.3680043.8.498.1"
        assert command.priority == 0
        assert command.has_data_set is True
        assert command.status is None
        assert len(pdus) == 2
        assert pdus[0].pdvs[0].is_command is True
        assert pdus[0].pdvs[0].is_last is True
        assert pdus[1].pdvs[0].is_command is False
        assert pdus[1].pdvs[0].is_last is True
        assert pdus[1].pdvs[0].value_length == len(data_set)

    def test_fragmented_command(self) -> None:
        """A command split over many P-DATA-TF PDUs is decoded once, at its last fragment."""
        results = feed_all(c_store_rq(b"\x00" * 100, max_pdu=32))
        commands = [r for r in results if isinstance(r, DimseCommand)]
        pdus = [r for r in results if isinstance(r, PDataTF)]
        command_pdvs = [pdv for pdu in pdus for pdv in pdu.pdvs if pdv.is_command]

        assert len(command_pdvs) > 3
        assert [pdv.is_last for pdv in command_pdvs].count(True) == 1
        assert len(commands) == 1
        assert commands[0].affected_sop_instance_uid == "1.2.826.0.1.3680043.8.498.1"

    def test_c_store_rsp_success(self) -> None:
        """C-STORE-RSP status 0x0000 is a success without a data set."""
        [command, pdu] = feed_all(c_store_rsp(0x0000))

        assert isinstance(pdu, PDataTF)
        assert command.command == "C-STORE-RSP"
        assert command.command_field == 0x8001
        assert command.message_id_being_responded_to == 7
        assert command.status == 0x0000
        assert command.status_category == "success"
        assert command.has_data_set is False

    def test_c_store_rsp_failure(self) -> None:
        """A failed C-STORE-RSP carries its error comment and offending elements."""
        [command, _] = feed_all(c_store_rsp(0xA700, comment="Out of resources"))

        assert command.status == 0xA700
        assert command.status_category == "failure"
        assert command.error_comment == "Out of resources"
        assert command.offending_elements == ("(0010,0020)", "(0008,0018)")

    def test_c_move(self) -> None:
        """C-MOVE-RQ has its move destination, C-MOVE-RSP its sub-operation counts."""
        request = C_MOVE()
        request.MessageID = 9
        request.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.2.2.2"
        request.Priority = 0
        request.MoveDestination = "ARCHIVE"
        request.Identifier = BytesIO(encode_dataset(Dataset()))
        response = C_MOVE()
        response.MessageIDBeingRespondedTo = 9
        response.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.2.2.2"
        response.Status = 0xFF00
        response.NumberOfRemainingSuboperations = 4
        response.NumberOfCompletedSuboperations = 3
        response.NumberOfFailedSuboperations = 2
        response.NumberOfWarningSuboperations = 1
        data = p_data_pdus(C_MOVE_RQ(), request, 5) + p_data_pdus(C_MOVE_RSP(), response, 5)
        move_rq, move_rsp = [r for r in feed_all(data) if isinstance(r, DimseCommand)]

        assert move_rq.command == "C-MOVE-RQ"
        assert move_rq.move_destination == "ARCHIVE"
        assert move_rq.context_id == 5
        assert move_rsp.command == "C-MOVE-RSP"
        assert move_rsp.status_category == "pending"
        assert move_rsp.remaining_suboperations == 4
        assert move_rsp.completed_suboperations == 3
        assert move_rsp.failed_suboperations == 2
        assert move_rsp.warning_suboperations == 1

    def test_c_echo(self) -> None:
        """C-ECHO-RQ is named and has no data set."""
        primitive = C_ECHO()
        primitive.MessageID = 1
        primitive.AffectedSOPClassUID = VERIFICATION
        [command, _] = feed_all(p_data_pdus(C_ECHO_RQ(), primitive, 3))

        assert command.command == "C-ECHO-RQ"
        assert command.affected_sop_class_uid == VERIFICATION
        assert command.has_data_set is False

    def test_large_body_not_buffered(self) -> None:
        """A 64 MiB P-DATA-TF passes through with little memory held by the reader."""
        body_length = 64 * 1024 * 1024
        header = bytes([0x04, 0]) + struct.pack(">I", body_length + 6)
        pdv_header = struct.pack(">IBB", body_length + 2, 1, 0x02)
        chunk = bytes(256 * 1024)
        reader = PDUReader()
        tracemalloc.start()
        try:
            results = reader.feed(header + pdv_header)
            for _ in range(body_length // len(chunk)):
                results.extend(reader.feed(chunk))
            _, peak_bytes = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()

        assert len(results) == 1
        assert isinstance(results[0], PDataTF)
        assert results[0].pdvs[0].value_length == body_length
        assert peak_bytes < 1024 * 1024

    def test_undecodable_command_is_not_fatal(self) -> None:
        """A command set pydicom cannot decode gives malformed-command and parsing goes on."""
        garbage = b"\x00\x00\x00\x01\xff\xff\xff\x7f"
        pdv = struct.pack(">IBB", len(garbage) + 2, 1, 0x03) + garbage
        data = bytes([0x04, 0]) + struct.pack(">I", len(pdv)) + pdv + release_rq()
        results = feed_all(data)

        assert isinstance(results[0], PDUError)
        assert results[0].kind == "malformed-command"
        assert results[0].fatal is False
        assert isinstance(results[1], PDataTF)
        assert isinstance(results[2], ReleaseRQ)


class TestStream:
    def full_association(self) -> bytes:
        return (
            associate_rq()
            + associate_ac([0, 0])
            + c_store_rq(b"\x01\x02" * 3000, max_pdu=1024)
            + c_store_rsp(0x0000)
            + release_rq()
            + release_rp()
        )

    def test_bytewise_equals_whole(self) -> None:
        """Feeding one byte at a time gives the same results as one feed."""
        data = self.full_association()

        assert feed_bytewise(data) == feed_all(data)

    def test_stream_offsets(self) -> None:
        """Each PDU's stream offset is where its header starts in the stream."""
        data = self.full_association()
        pdus = [r for r in feed_all(data) if not isinstance(r, DimseCommand)]
        offsets = [pdu.stream_offset for pdu in pdus]

        assert offsets[0] == 0
        assert all(data[offset] == pdu.pdu_type for offset, pdu in zip(offsets, pdus))
        assert offsets[-1] + 10 == len(data)
        assert sum(pdu.length + 6 for pdu in pdus) == len(data)

    def test_names_in_events(self) -> None:
        """Event fields name each PDU type."""
        names = [r.to_fields()["pdu"] for r in feed_all(self.full_association())]

        assert names[:2] == ["associate_rq", "associate_ac"]
        assert names[-2:] == ["release_rq", "release_rp"]
        assert set(names[2:-2]) == {"p_data_tf"}


class TestInvalidInput:
    def test_tls_client_hello(self) -> None:
        """A TLS ClientHello is reported as tls-handshake and parsing stops."""
        hello = tls_client_hello()
        reader = PDUReader()
        [error] = reader.feed(hello)

        assert isinstance(error, PDUError)
        assert error.kind == "tls-handshake"
        assert error.fatal is True
        assert error.stream_offset == 0
        assert error.claimed_length == int.from_bytes(hello[2:6], "big")
        assert error.first_bytes.startswith("16 03")
        assert reader.stopped is True
        assert reader.feed(release_rq()) == []

    def test_tls_client_hello_bytewise(self) -> None:
        """A ClientHello fed byte by byte gives one tls-handshake error."""
        results = feed_bytewise(tls_client_hello())

        assert [r.kind for r in results] == ["tls-handshake"]

    def test_unknown_pdu_type(self) -> None:
        """A PDU type outside 0x01..0x07 is unknown-pdu-type."""
        [release, error] = feed_all(release_rq() + bytes([0x09, 0, 0, 0, 0, 4, 0, 0, 0, 0]))

        assert isinstance(release, ReleaseRQ)
        assert error.kind == "unknown-pdu-type"
        assert error.stream_offset == 10
        assert error.pdu_type == 0x09

    @pytest.mark.parametrize(
        ("pdu_type", "length"),
        [
            (PDUType.A_RELEASE_RQ, 5),
            (PDUType.A_ABORT, 0),
            (PDUType.A_ASSOCIATE_RJ, 6),
            (PDUType.A_ASSOCIATE_RQ, 10),
            (PDUType.A_ASSOCIATE_AC, 2**31),
            (PDUType.P_DATA_TF, 2),
        ],
    )
    def test_invalid_length(self, pdu_type: PDUType, length: int) -> None:
        """A length that the PDU type cannot have is invalid-length."""
        [error] = feed_all(bytes([pdu_type, 0]) + struct.pack(">I", length) + bytes(4))

        assert error.kind == "invalid-length"
        assert error.claimed_length == length

    def test_pdv_longer_than_pdu(self) -> None:
        """A PDV item that claims more bytes than its P-DATA-TF has is malformed-item."""
        pdv = struct.pack(">IBB", 500, 1, 0x03) + bytes(10)
        [error] = feed_all(bytes([0x04, 0]) + struct.pack(">I", len(pdv)) + pdv)

        assert error.kind == "malformed-item"
        assert error.pdu_type == PDUType.P_DATA_TF

    def test_associate_item_overrun(self) -> None:
        """An A-ASSOCIATE-RQ item longer than the PDU is malformed-item."""
        data = bytearray(associate_rq())
        # The application context item follows the 68 fixed bytes; make it claim 0xFFFF bytes.
        data[6 + 68 + 2 : 6 + 68 + 4] = b"\xff\xff"
        [error] = feed_all(bytes(data))

        assert error.kind == "malformed-item"
        assert "0x10" in error.detail

    def test_error_fields_renamed(self) -> None:
        """Error event fields use error, not the recorder's reserved kind."""
        [error] = feed_all(tls_client_hello())
        fields = error.to_fields()

        assert fields["error"] == "tls-handshake"
        assert "kind" not in fields

    def test_mutated_streams_never_raise(
        self, recwarn: pytest.WarningsRecorder, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Randomly corrupted PDU streams give results or errors, never an exception or warning."""
        rng = random.Random(20240613)
        identity = UserIdentityNegotiation()
        identity.user_identity_type = 2
        identity.primary_field = b"operator"
        identity.secondary_field = b"secret"
        originals = [
            associate_rq(extra=[identity]),
            associate_ac([0, 3]),
            associate_rj(1, 1, 7),
            c_store_rq(b"\x00" * 300, max_pdu=64),
            c_store_rsp(0xA700, comment="Out of resources"),
            release_rq(),
        ]
        for _ in range(3000):
            data = bytearray(rng.choice(originals))
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            reader = PDUReader()
            cut = rng.randrange(len(data))

            results = reader.feed(bytes(data[:cut])) + reader.feed(bytes(data[cut:]))

            assert all(isinstance(r, (PDU, DimseCommand, PDUError)) for r in results)
        assert [str(w.message) for w in recwarn] == []
        assert caplog.records == []
