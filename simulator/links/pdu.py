"""Incremental framing of DICOM Upper Layer PDUs (PS3.8 section 9.3).

A :class:`PDUReader` watches one direction of one TCP connection. It is fed
the bytes as the proxy forwards them and returns what it could frame:

* one :class:`PDU` per complete PDU, with the parsed fields of the ACSE
  PDUs (A-ASSOCIATE-RQ/AC/RJ, A-RELEASE-RQ/RP, A-ABORT);
* one :class:`DimseCommand` per DIMSE command set, decoded as soon as its
  last fragment ends;
* one :class:`PDUError` when the stream is not DICOM or not framed as
  PS3.8 specifies.

P-DATA-TF bodies are skipped while counting, so memory use does not grow
with the size of the objects sent. Only command fragments are kept, because
a command set is small and must be decoded whole.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from enum import IntEnum
from io import BytesIO
from typing import Any, Literal

from pydicom.datadict import dictionary_VR
from pydicom.filereader import read_dataset
from pynetdicom.status import code_to_category

HEADER_LENGTH = 6
"""PDU-type (1), reserved (1) and PDU-length (4, big endian); a PDV item header is also 6."""

ASSOCIATE_FIXED_LENGTH = 68
"""A-ASSOCIATE-RQ/AC bytes before the first variable item."""

MAX_ASSOCIATE_LENGTH = 1 << 20
"""Largest A-ASSOCIATE-RQ/AC body, in bytes, that the reader buffers.

PS3.8 sets no limit. Even 128 presentation contexts with a SAML user
identity stay far below 1 MiB, so a larger claim means the stream is not DICOM.
"""

MAX_COMMAND_LENGTH = 64 * 1024
"""Largest command set, in bytes, that the reader accumulates per context."""

PDUErrorKind = Literal[
    "tls-handshake",
    "tls-alert",
    "unknown-pdu-type",
    "invalid-length",
    "malformed-item",
    "malformed-command",
]


class PDUType(IntEnum):
    """PDU types of PS3.8 table 9-1."""

    A_ASSOCIATE_RQ = 0x01
    A_ASSOCIATE_AC = 0x02
    A_ASSOCIATE_RJ = 0x03
    P_DATA_TF = 0x04
    A_RELEASE_RQ = 0x05
    A_RELEASE_RP = 0x06
    A_ABORT = 0x07

    @property
    def event_name(self) -> str:
        """Name used in events: ``associate_rq``, ``p_data_tf``, ``abort``."""
        return self.name.removeprefix("A_").lower()


_FIXED_LENGTH_TYPES = {  # PDUs whose PDU-length is always 4
    PDUType.A_ASSOCIATE_RJ,
    PDUType.A_RELEASE_RQ,
    PDUType.A_RELEASE_RP,
    PDUType.A_ABORT,
}


# Names of result, source and reason codes as PS3.8 sections 9.3.3 to 9.3.8 write them.
# Any value missing from a table is reserved.
PRESENTATION_CONTEXT_RESULTS = {
    0: "acceptance",
    1: "user-rejection",
    2: "no-reason",
    3: "abstract-syntax-not-supported",
    4: "transfer-syntaxes-not-supported",
}
ASSOCIATE_RJ_RESULTS = {1: "rejected-permanent", 2: "rejected-transient"}
ASSOCIATE_RJ_SOURCES = {
    1: "service-user",
    2: "service-provider-acse",
    3: "service-provider-presentation",
}
ASSOCIATE_RJ_REASONS = {
    1: {
        1: "no-reason-given",
        2: "application-context-name-not-supported",
        3: "calling-AE-title-not-recognized",
        7: "called-AE-title-not-recognized",
    },
    2: {1: "no-reason-given", 2: "protocol-version-not-supported"},
    3: {1: "temporary-congestion", 2: "local-limit-exceeded"},
}
ABORT_SOURCES = {0: "service-user", 2: "service-provider"}
ABORT_REASONS = {
    0: "reason-not-specified",
    1: "unrecognized-PDU",
    2: "unexpected-PDU",
    4: "unrecognized-PDU-parameter",
    5: "unexpected-PDU-parameter",
    6: "invalid-PDU-parameter-value",
}
USER_IDENTITY_TYPES = {
    1: "username",
    2: "username-and-passcode",
    3: "kerberos",
    4: "saml",
    5: "jwt",
}

COMMAND_FIELDS = {
    0x0001: "C-STORE-RQ",
    0x0010: "C-GET-RQ",
    0x0020: "C-FIND-RQ",
    0x0021: "C-MOVE-RQ",
    0x0030: "C-ECHO-RQ",
    0x0100: "N-EVENT-REPORT-RQ",
    0x0110: "N-GET-RQ",
    0x0120: "N-SET-RQ",
    0x0130: "N-ACTION-RQ",
    0x0140: "N-CREATE-RQ",
    0x0150: "N-DELETE-RQ",
    0x0FFF: "C-CANCEL-RQ",
}
"""CommandField (0000,0100) names of PS3.7 section 9.3 and 10.3; a response sets bit 15."""
COMMAND_FIELDS.update(
    {code | 0x8000: name.replace("-RQ", "-RSP") for code, name in list(COMMAND_FIELDS.items())}
)
del COMMAND_FIELDS[0x8FFF]

NO_DATA_SET = 0x0101
"""CommandDataSetType (0000,0800) value that means no data set follows."""

_COMMAND_KEYWORDS = {
    "CommandField": "command_field",
    "MessageID": "message_id",
    "MessageIDBeingRespondedTo": "message_id_being_responded_to",
    "AffectedSOPClassUID": "affected_sop_class_uid",
    "AffectedSOPInstanceUID": "affected_sop_instance_uid",
    "RequestedSOPClassUID": "requested_sop_class_uid",
    "RequestedSOPInstanceUID": "requested_sop_instance_uid",
    "Priority": "priority",
    "CommandDataSetType": "command_data_set_type",
    "Status": "status",
    "ErrorComment": "error_comment",
    "ErrorID": "error_id",
    "OffendingElement": "offending_elements",
    "NumberOfRemainingSuboperations": "remaining_suboperations",
    "NumberOfCompletedSuboperations": "completed_suboperations",
    "NumberOfFailedSuboperations": "failed_suboperations",
    "NumberOfWarningSuboperations": "warning_suboperations",
    "MoveDestination": "move_destination",
    "MoveOriginatorApplicationEntityTitle": "move_originator_ae",
    "MoveOriginatorMessageID": "move_originator_message_id",
}
"""Command set keywords that :class:`DimseCommand` keeps, with their field names."""


def _as_fields(value: Any) -> dict[str, Any]:
    """Convert a dataclass to event fields, leaving out fields that are None."""
    return {key: item for key, item in dataclasses.asdict(value).items() if item is not None}


@dataclass(frozen=True, slots=True, kw_only=True)
class PDU:
    """A complete PDU.

    ``length`` is the PDU-length field: the bytes after the 6-byte header.
    ``stream_offset`` is where the PDU's first byte is in the byte stream of
    its direction.
    """

    pdu_type: PDUType
    length: int
    stream_offset: int

    @property
    def name(self) -> str:
        return self.pdu_type.event_name

    def to_fields(self) -> dict[str, Any]:
        """Return the parsed fields as plain values for an event."""
        fields = _as_fields(self)
        fields["pdu"] = self.name
        del fields["pdu_type"]

        return fields


@dataclass(frozen=True, slots=True)
class PresentationContextRQ:
    """Presentation Context item of an A-ASSOCIATE-RQ (item type 0x20)."""

    context_id: int
    abstract_syntax: str | None
    transfer_syntaxes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PresentationContextAC:
    """Presentation Context item of an A-ASSOCIATE-AC (item type 0x21).

    PS3.8 defines the transfer syntax as not significant unless ``result`` is 0.
    """

    context_id: int
    result: int
    result_name: str
    transfer_syntax: str | None


@dataclass(frozen=True, slots=True)
class RoleSelection:
    """SCP/SCU Role Selection sub-item (0x54)."""

    sop_class_uid: str
    scu_role: int
    scp_role: int


@dataclass(frozen=True, slots=True)
class UserIdentity:
    """User Identity sub-item of an A-ASSOCIATE-RQ (0x58) with the lengths of its fields.

    The fields carry user names, passcodes and tokens, so their values are never kept.
    """

    identity_type: int
    identity_type_name: str
    positive_response_requested: bool
    primary_field_length: int
    secondary_field_length: int


@dataclass(frozen=True, slots=True)
class UserInformation:
    """User Information item (0x50).

    ``max_length`` is the Maximum Length Received: 0 means unlimited, None
    means the sub-item is missing. ``max_length_offset`` is where its 4-byte
    value starts, counted from the first byte of the PDU, so that a fault can
    rewrite it. ``user_identity_response_length`` is the length of the server
    response in an A-ASSOCIATE-AC (sub-item 0x59), whose value is not kept.
    """

    max_length: int | None = None
    max_length_offset: int | None = None
    implementation_class_uid: str | None = None
    implementation_version_name: str | None = None
    max_operations_invoked: int | None = None
    max_operations_performed: int | None = None
    role_selections: tuple[RoleSelection, ...] = ()
    user_identity: UserIdentity | None = None
    user_identity_response_length: int | None = None
    extended_negotiation_sop_classes: tuple[str, ...] = ()
    common_extended_negotiation_sop_classes: tuple[str, ...] = ()
    unknown_sub_item_types: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class AssociateRQ(PDU):
    """A-ASSOCIATE-RQ PDU. AE titles have their padding spaces removed."""

    protocol_version: int
    called_ae: str
    calling_ae: str
    application_context: str | None
    presentation_contexts: tuple[PresentationContextRQ, ...]
    user_information: UserInformation
    unknown_item_types: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class AssociateAC(PDU):
    """A-ASSOCIATE-AC PDU. PS3.8 requires that the receiver does not test its AE titles."""

    protocol_version: int
    called_ae: str
    calling_ae: str
    application_context: str | None
    presentation_contexts: tuple[PresentationContextAC, ...]
    user_information: UserInformation
    unknown_item_types: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class AssociateRJ(PDU):
    """A-ASSOCIATE-RJ PDU with the PS3.8 names of its codes."""

    result: int
    result_name: str
    source: int
    source_name: str
    reason: int
    reason_name: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ReleaseRQ(PDU):
    """A-RELEASE-RQ PDU."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ReleaseRP(PDU):
    """A-RELEASE-RP PDU."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Abort(PDU):
    """A-ABORT PDU. ``reason_name`` is ``not-significant`` unless the service-provider aborted."""

    source: int
    source_name: str
    reason: int
    reason_name: str


@dataclass(frozen=True, slots=True)
class PDV:
    """One Presentation Data Value item of a P-DATA-TF, without its value.

    ``value_length`` is the size of the message fragment: the item length
    minus the context ID and message control header bytes.
    """

    context_id: int
    is_command: bool
    is_last: bool
    value_length: int


@dataclass(frozen=True, slots=True, kw_only=True)
class PDataTF(PDU):
    """P-DATA-TF PDU with its PDV items in order."""

    pdvs: tuple[PDV, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class DimseCommand:
    """DIMSE command set (group 0000, Implicit VR Little Endian) decoded from P-DATA-TF.

    ``stream_offset`` is where the PDU with the last command fragment
    starts. Fields that the command set does not contain are None.
    """

    stream_offset: int
    context_id: int
    command_field: int
    command: str
    message_id: int | None = None
    message_id_being_responded_to: int | None = None
    affected_sop_class_uid: str | None = None
    affected_sop_instance_uid: str | None = None
    requested_sop_class_uid: str | None = None
    requested_sop_instance_uid: str | None = None
    priority: int | None = None
    has_data_set: bool | None = None
    status: int | None = None
    status_category: str | None = None
    error_comment: str | None = None
    error_id: int | None = None
    offending_elements: tuple[str, ...] | None = None
    remaining_suboperations: int | None = None
    completed_suboperations: int | None = None
    failed_suboperations: int | None = None
    warning_suboperations: int | None = None
    move_destination: str | None = None
    move_originator_ae: str | None = None
    move_originator_message_id: int | None = None

    def to_fields(self) -> dict[str, Any]:
        """Return the command fields as plain values for an event."""
        fields = _as_fields(self)
        fields["pdu"] = PDUType.P_DATA_TF.event_name

        return fields


@dataclass(frozen=True, slots=True)
class PDUError:
    """Input that the reader cannot frame or decode.

    After a ``fatal`` error the reader has lost the PDU boundaries and
    returns nothing more. ``malformed-command`` is not fatal because the
    framing around the bad command set is intact. ``first_bytes`` is a hex
    dump of up to 16 bytes from the start of the offending PDU, or of the
    command set for ``malformed-command``.
    """

    kind: PDUErrorKind
    detail: str
    stream_offset: int
    first_bytes: str
    claimed_length: int
    pdu_type: int
    fatal: bool = True

    def to_fields(self) -> dict[str, Any]:
        """Return the error fields for an event, with ``kind`` renamed to ``error``.

        The recorder takes the event name as its ``kind`` argument, so no field may use that name.
        """
        fields = _as_fields(self)
        fields["error"] = fields.pop("kind")

        return fields


ReaderResult = PDU | DimseCommand | PDUError


class MalformedItemError(Exception):
    """Variable item that does not fit its PDU; the reader turns it into a PDUError."""


class PDUReader:
    """Incremental PDU framer for one direction of one connection.

    Not thread-safe: feed it from one task only. The reader never raises
    for bad input. It returns a :class:`PDUError` and, when the error is
    fatal, stops parsing while the caller keeps forwarding bytes.
    """

    def __init__(self) -> None:
        self.stopped = False
        self._stream_offset = 0
        self._header = bytearray()
        self._in_pdu = False
        self._pdu_header = b""
        self._pdu_offset = 0
        self._remaining = 0
        self._body = bytearray()
        self._pdvs: list[PDV] = []
        self._pdv: PDV | None = None
        self._pdv_remaining = 0
        # Command fragments per presentation context; None once over MAX_COMMAND_LENGTH.
        self._commands: dict[int, bytearray | None] = {}

    @property
    def _pdu_type(self) -> PDUType:
        return PDUType(self._pdu_header[0])

    @property
    def _pdu_length(self) -> int:
        return int.from_bytes(self._pdu_header[2:6], "big")

    def feed(self, data: bytes) -> list[ReaderResult]:
        """Consume ``data`` and return the PDUs, commands and errors it completed."""
        results: list[ReaderResult] = []
        view = memoryview(data)
        position = 0
        while position < len(view) and not self.stopped:
            if not self._in_pdu:
                position = self._read_header(view, position, results)
            elif self._pdu_header[0] != PDUType.P_DATA_TF:
                position = self._read_body(view, position, results)
            elif self._pdv is None:
                position = self._read_pdv_header(view, position, results)
            else:
                position = self._read_pdv_value(view, position, results)
        self._stream_offset += len(data)

        return results

    def _fill_header(self, view: memoryview, position: int) -> int:
        """Copy bytes into the 6-byte header buffer; PDU and PDV item headers share it."""
        end = position + HEADER_LENGTH - len(self._header)
        self._header += view[position:end]

        return min(end, len(view))

    def _read_header(self, view: memoryview, position: int, results: list[ReaderResult]) -> int:
        position = self._fill_header(view, position)
        if len(self._header) < HEADER_LENGTH:
            return position

        self._pdu_header = bytes(self._header)
        self._header.clear()
        self._pdu_offset = self._stream_offset + position - HEADER_LENGTH
        error = _check_header(self._pdu_header, self._pdu_length)
        if error is not None:
            self._stop(results, *error, following=bytes(view[position : position + 10]))
            return position

        self._in_pdu = True
        self._remaining = self._pdu_length
        self._pdvs = []

        return position

    def _read_body(self, view: memoryview, position: int, results: list[ReaderResult]) -> int:
        take = min(self._remaining, len(view) - position)
        self._body += view[position : position + take]
        self._remaining -= take
        if self._remaining > 0:
            return position + take

        self._in_pdu = False
        body = bytes(self._body)
        self._body.clear()
        try:
            results.append(_parse_acse(self._pdu_type, self._pdu_length, self._pdu_offset, body))
        except MalformedItemError as exc:
            self._stop(results, "malformed-item", str(exc), following=body[:10])

        return position + take

    def _read_pdv_header(self, view: memoryview, position: int, results: list[ReaderResult]) -> int:
        if not self._header and self._remaining < HEADER_LENGTH:
            detail = f"P-DATA-TF ends with {self._remaining} bytes, too few for a PDV item header"
            self._stop(results, "malformed-item", detail)
            return position

        position = self._fill_header(view, position)
        if len(self._header) < HEADER_LENGTH:
            return position

        item = bytes(self._header)
        self._header.clear()
        self._remaining -= HEADER_LENGTH
        item_length = int.from_bytes(item[0:4], "big")
        if item_length < 2 or item_length - 2 > self._remaining:
            detail = (
                f"PDV item length {item_length} does not fit the "
                f"{self._remaining + 2} bytes left in the P-DATA-TF"
            )
            self._stop(results, "malformed-item", detail)
            return position

        # Message control header: bit 0 set for a command, bit 1 set for the last fragment.
        pdv = PDV(item[4], bool(item[5] & 0x01), bool(item[5] & 0x02), item_length - 2)
        self._pdvs.append(pdv)
        self._pdv = pdv
        self._pdv_remaining = pdv.value_length
        if pdv.is_command:
            self._commands.setdefault(pdv.context_id, bytearray())
        if pdv.value_length == 0:
            self._finish_pdv(results)

        return position

    def _read_pdv_value(self, view: memoryview, position: int, results: list[ReaderResult]) -> int:
        assert self._pdv is not None
        take = min(self._pdv_remaining, len(view) - position)
        if self._pdv.is_command:
            fragments = self._commands[self._pdv.context_id]
            if fragments is not None and len(fragments) + take <= MAX_COMMAND_LENGTH:
                fragments += view[position : position + take]
            else:
                self._commands[self._pdv.context_id] = None
        self._pdv_remaining -= take
        self._remaining -= take
        if self._pdv_remaining == 0:
            self._finish_pdv(results)

        return position + take

    def _finish_pdv(self, results: list[ReaderResult]) -> None:
        assert self._pdv is not None
        pdv = self._pdv
        self._pdv = None
        if pdv.is_command and pdv.is_last:
            results.append(self._decode_command(pdv.context_id))
        if self._remaining == 0:
            self._in_pdu = False
            pdu = PDataTF(
                pdu_type=PDUType.P_DATA_TF,
                length=self._pdu_length,
                stream_offset=self._pdu_offset,
                pdvs=tuple(self._pdvs),
            )
            results.append(pdu)

    def _decode_command(self, context_id: int) -> DimseCommand | PDUError:
        fragments = self._commands.pop(context_id)
        if fragments is None:
            detail = f"command set on context {context_id} exceeds {MAX_COMMAND_LENGTH} bytes"
            return self._error("malformed-command", detail, fatal=False)

        try:
            return _decode_command_set(bytes(fragments), context_id, self._pdu_offset)
        except Exception as exc:  # noqa: BLE001 - pydicom raises many types for bad input
            detail = f"command set on context {context_id} cannot be decoded: {exc}"
            return self._error("malformed-command", detail, bytes(fragments[:16]), fatal=False)

    def _error(
        self, kind: PDUErrorKind, detail: str, first_bytes: bytes | None = None, fatal: bool = True
    ) -> PDUError:
        first_bytes = self._pdu_header if first_bytes is None else first_bytes
        return PDUError(
            kind,
            detail,
            self._pdu_offset,
            first_bytes[:16].hex(" "),
            self._pdu_length,
            self._pdu_header[0],
            fatal,
        )

    def _stop(
        self, results: list[ReaderResult], kind: PDUErrorKind, detail: str, following: bytes = b""
    ) -> None:
        self.stopped = True
        self._body.clear()
        self._commands.clear()
        results.append(self._error(kind, detail, self._pdu_header + following))


def _check_header(header: bytes, length: int) -> tuple[PDUErrorKind, str] | None:
    """Return the error kind and detail for an impossible PDU header, else None."""
    # A TLS record header is content type, version 3.x and a 16-bit length.
    if header[1] == 0x03 and header[2] <= 0x04 and header[0] in (0x15, 0x16):
        kind: PDUErrorKind = "tls-handshake" if header[0] == 0x16 else "tls-alert"
        detail = (
            "a TLS record arrived where a DICOM PDU was expected: the peer uses TLS "
            "on a port that carries plain DICOM; configure both ends alike"
        )
        return kind, detail

    if header[0] not in PDUType._value2member_map_:
        return "unknown-pdu-type", f"PDU type 0x{header[0]:02x} is not defined by PS3.8"

    pdu_type = PDUType(header[0])
    if pdu_type in _FIXED_LENGTH_TYPES and length != 4:
        return "invalid-length", f"{pdu_type.name} must have length 4, not {length}"

    if pdu_type in (PDUType.A_ASSOCIATE_RQ, PDUType.A_ASSOCIATE_AC) and not (
        ASSOCIATE_FIXED_LENGTH <= length <= MAX_ASSOCIATE_LENGTH
    ):
        detail = (
            f"{pdu_type.name} length {length} is outside "
            f"{ASSOCIATE_FIXED_LENGTH}..{MAX_ASSOCIATE_LENGTH}"
        )
        return "invalid-length", detail

    if pdu_type is PDUType.P_DATA_TF and length < HEADER_LENGTH:
        return "invalid-length", f"P_DATA_TF length {length} cannot hold a PDV item"

    return None


def _parse_acse(pdu_type: PDUType, length: int, offset: int, body: bytes) -> PDU:
    """Parse the body of a complete ACSE PDU (any type but P-DATA-TF)."""
    common: dict[str, Any] = {"pdu_type": pdu_type, "length": length, "stream_offset": offset}
    if pdu_type in (PDUType.A_ASSOCIATE_RQ, PDUType.A_ASSOCIATE_AC):
        return _parse_associate(pdu_type, body, common)

    if pdu_type is PDUType.A_ASSOCIATE_RJ:
        result, source, reason = body[1], body[2], body[3]
        return AssociateRJ(
            **common,
            result=result,
            result_name=ASSOCIATE_RJ_RESULTS.get(result, "reserved"),
            source=source,
            source_name=ASSOCIATE_RJ_SOURCES.get(source, "reserved"),
            reason=reason,
            reason_name=ASSOCIATE_RJ_REASONS.get(source, {}).get(reason, "reserved"),
        )

    if pdu_type is PDUType.A_ABORT:
        source, reason = body[2], body[3]
        reason_name = "not-significant"
        if source == 2:
            reason_name = ABORT_REASONS.get(reason, "reserved")
        return Abort(
            **common,
            source=source,
            source_name=ABORT_SOURCES.get(source, "reserved"),
            reason=reason,
            reason_name=reason_name,
        )

    if pdu_type is PDUType.A_RELEASE_RQ:
        return ReleaseRQ(**common)

    return ReleaseRP(**common)


def _iter_items(body: bytes, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """Yield (item type, value start, value end) of the items in ``body[start:end]``.

    Items and sub-items share one header: type (1), reserved (1) and a
    big-endian 16-bit length. Offsets in messages count from the PDU start.
    """
    position = start
    while position < end:
        if end - position < 4:
            raise MalformedItemError(
                f"item header at PDU offset {position + HEADER_LENGTH} is truncated"
            )
        item_type = body[position]
        value_start = position + 4
        value_end = value_start + int.from_bytes(body[position + 2 : position + 4], "big")
        if value_end > end:
            raise MalformedItemError(
                f"item 0x{item_type:02x} at PDU offset {position + HEADER_LENGTH} "
                f"is {value_end - end} bytes longer than its container"
            )
        yield item_type, value_start, value_end
        position = value_end


def _text(raw: bytes) -> str:
    """Decode an AE title or UID, dropping the space and NUL padding."""
    return raw.decode("ascii", errors="replace").strip(" \x00")


def _parse_associate(pdu_type: PDUType, body: bytes, common: dict[str, Any]) -> PDU:
    application_context: str | None = None
    contexts: list[Any] = []
    user_information = UserInformation()
    unknown: list[int] = []
    for item_type, start, end in _iter_items(body, ASSOCIATE_FIXED_LENGTH, len(body)):
        if item_type == 0x10:
            application_context = _text(body[start:end])
        elif item_type == 0x20 and pdu_type is PDUType.A_ASSOCIATE_RQ:
            contexts.append(_parse_context_rq(body, start, end))
        elif item_type == 0x21 and pdu_type is PDUType.A_ASSOCIATE_AC:
            contexts.append(_parse_context_ac(body, start, end))
        elif item_type == 0x50:
            user_information = _parse_user_information(body, start, end)
        else:
            unknown.append(item_type)

    pdu_class = AssociateRQ if pdu_type is PDUType.A_ASSOCIATE_RQ else AssociateAC
    return pdu_class(
        **common,
        protocol_version=int.from_bytes(body[0:2], "big"),
        called_ae=_text(body[4:20]),
        calling_ae=_text(body[20:36]),
        application_context=application_context,
        presentation_contexts=tuple(contexts),
        user_information=user_information,
        unknown_item_types=tuple(unknown),
    )


def _check_item_length(body: bytes, start: int, end: int, minimum: int, name: str) -> None:
    if end - start < minimum:
        raise MalformedItemError(
            f"{name} at PDU offset {start - 4 + HEADER_LENGTH} has {end - start} bytes, "
            f"fewer than the {minimum} it needs"
        )


def _parse_context_rq(body: bytes, start: int, end: int) -> PresentationContextRQ:
    _check_item_length(body, start, end, 4, "presentation context item")
    abstract_syntax: str | None = None
    transfer_syntaxes: list[str] = []
    for item_type, value_start, value_end in _iter_items(body, start + 4, end):
        if item_type == 0x30:
            abstract_syntax = _text(body[value_start:value_end])
        elif item_type == 0x40:
            transfer_syntaxes.append(_text(body[value_start:value_end]))

    return PresentationContextRQ(body[start], abstract_syntax, tuple(transfer_syntaxes))


def _parse_context_ac(body: bytes, start: int, end: int) -> PresentationContextAC:
    _check_item_length(body, start, end, 4, "presentation context item")
    transfer_syntax: str | None = None
    for item_type, value_start, value_end in _iter_items(body, start + 4, end):
        if item_type == 0x40:
            transfer_syntax = _text(body[value_start:value_end])
    result = body[start + 2]
    result_name = PRESENTATION_CONTEXT_RESULTS.get(result, "reserved")

    return PresentationContextAC(body[start], result, result_name, transfer_syntax)


def _parse_user_information(body: bytes, start: int, end: int) -> UserInformation:
    values: dict[str, Any] = {}
    roles: list[RoleSelection] = []
    extended: list[str] = []
    common_extended: list[str] = []
    unknown: list[int] = []
    for item_type, value_start, value_end in _iter_items(body, start, end):
        value = body[value_start:value_end]
        if item_type == 0x51:
            _check_item_length(body, value_start, value_end, 4, "maximum length sub-item")
            values["max_length"] = int.from_bytes(value[0:4], "big")
            values["max_length_offset"] = value_start + HEADER_LENGTH
        elif item_type == 0x52:
            values["implementation_class_uid"] = _text(value)
        elif item_type == 0x53:
            _check_item_length(body, value_start, value_end, 4, "asynchronous operations sub-item")
            values["max_operations_invoked"] = int.from_bytes(value[0:2], "big")
            values["max_operations_performed"] = int.from_bytes(value[2:4], "big")
        elif item_type == 0x54:
            roles.append(_parse_role_selection(body, value_start, value_end))
        elif item_type == 0x55:
            values["implementation_version_name"] = _text(value)
        elif item_type == 0x56:
            extended.append(_text(value[2 : 2 + int.from_bytes(value[0:2], "big")]))
        elif item_type == 0x57:
            common_extended.append(_text(value[2 : 2 + int.from_bytes(value[0:2], "big")]))
        elif item_type == 0x58:
            values["user_identity"] = _parse_user_identity(body, value_start, value_end)
        elif item_type == 0x59:
            values["user_identity_response_length"] = int.from_bytes(value[0:2], "big")
        else:
            unknown.append(item_type)

    return UserInformation(
        **values,
        role_selections=tuple(roles),
        extended_negotiation_sop_classes=tuple(extended),
        common_extended_negotiation_sop_classes=tuple(common_extended),
        unknown_sub_item_types=tuple(unknown),
    )


def _parse_role_selection(body: bytes, start: int, end: int) -> RoleSelection:
    _check_item_length(body, start, end, 4, "role selection sub-item")
    uid_length = int.from_bytes(body[start : start + 2], "big")
    _check_item_length(body, start, end, uid_length + 4, "role selection sub-item")
    uid_end = start + 2 + uid_length

    return RoleSelection(_text(body[start + 2 : uid_end]), body[uid_end], body[uid_end + 1])


def _parse_user_identity(body: bytes, start: int, end: int) -> UserIdentity:
    _check_item_length(body, start, end, 6, "user identity sub-item")
    identity_type = body[start]
    primary_length = int.from_bytes(body[start + 2 : start + 4], "big")
    _check_item_length(body, start, end, primary_length + 6, "user identity sub-item")
    secondary_at = start + 4 + primary_length

    return UserIdentity(
        identity_type=identity_type,
        identity_type_name=USER_IDENTITY_TYPES.get(identity_type, "reserved"),
        positive_response_requested=body[start + 1] == 1,
        primary_field_length=primary_length,
        secondary_field_length=int.from_bytes(body[secondary_at : secondary_at + 2], "big"),
    )


def _decode_command_set(data: bytes, context_id: int, offset: int) -> DimseCommand:
    """Decode a command set; raise ValueError or whatever pydicom raises for bad bytes.

    pydicom splits the elements. Their values are decoded here from the raw
    bytes, because pydicom's own conversion warns and logs for every invalid
    UID, and a faulty peer would flood the output.
    """
    dataset = read_dataset(BytesIO(data), is_implicit_VR=True, is_little_endian=True)
    if "CommandField" not in dataset:
        raise ValueError("the command set has no CommandField (0000,0100)")

    values: dict[str, Any] = {}
    for keyword, name in _COMMAND_KEYWORDS.items():
        if keyword in dataset:
            raw = dataset.get_item(keyword).value
            values[name] = _decode_value(keyword, b"" if raw is None else bytes(raw))
    command_field = values.pop("command_field")
    if "status" in values:
        values["status_category"] = code_to_category(values["status"]).lower()
    data_set_type = values.pop("command_data_set_type", None)
    if data_set_type is not None:
        values["has_data_set"] = data_set_type != NO_DATA_SET

    return DimseCommand(
        stream_offset=offset,
        context_id=context_id,
        command_field=command_field,
        command=COMMAND_FIELDS.get(command_field, f"unknown-0x{command_field:04X}"),
        **values,
    )


def _decode_value(keyword: str, raw: bytes) -> int | str | tuple[str, ...]:
    """Decode one command element from Implicit VR Little Endian bytes by its dictionary VR."""
    vr = dictionary_VR(keyword)
    if vr in ("US", "UL"):
        size = 2 if vr == "US" else 4
        if len(raw) != size:
            raise ValueError(f"{keyword} has {len(raw)} bytes, but {vr} needs {size}")
        return int.from_bytes(raw, "little")

    if vr == "AT":
        # OffendingElement lists tags, each a 16-bit group and element.
        if len(raw) % 4:
            raise ValueError(f"{keyword} has {len(raw)} bytes, not a multiple of 4")
        pairs = struct.iter_unpack("<HH", raw)
        return tuple(f"({group:04X},{element:04X})" for group, element in pairs)

    return _text(raw)
