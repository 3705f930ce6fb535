"""Parsed DICOM Upper Layer PDUs and the parsers of their variable items.

The dataclasses here are what :class:`~simulator.links.pdu.PDUReader`
returns. :func:`parse_acse` parses the body of a complete ACSE PDU and
:func:`decode_command_set` decodes a DIMSE command set; both raise for
bytes that do not follow PS3.8 and PS3.7, and the reader turns that into a
:class:`~simulator.links.pdu.PDUError`.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from typing import Any

from pydicom.datadict import dictionary_VR
from pydicom.filereader import read_dataset
from pynetdicom.status import code_to_category

from simulator.links.pdu_names import (
    ABORT_REASONS,
    ABORT_SOURCES,
    ASSOCIATE_FIXED_LENGTH,
    ASSOCIATE_RJ_REASONS,
    ASSOCIATE_RJ_RESULTS,
    ASSOCIATE_RJ_SOURCES,
    COMMAND_FIELDS,
    COMMAND_KEYWORDS,
    HEADER_LENGTH,
    NO_DATA_SET,
    PRESENTATION_CONTEXT_RESULTS,
    USER_IDENTITY_TYPES,
    PDUType,
)


def as_fields(value: Any) -> dict[str, Any]:
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
        fields = as_fields(self)
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
        fields = as_fields(self)
        fields["pdu"] = PDUType.P_DATA_TF.event_name

        return fields


class MalformedItemError(Exception):
    """Variable item that does not fit its PDU; the reader turns it into a PDUError."""


def parse_acse(pdu_type: PDUType, length: int, offset: int, body: bytes) -> PDU:
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


def decode_command_set(data: bytes, context_id: int, offset: int) -> DimseCommand:
    """Decode a command set; raise ValueError or whatever pydicom raises for bad bytes.

    pydicom splits the elements. Their values are decoded here from the raw
    bytes, because pydicom's own conversion warns and logs for every invalid
    UID, and a faulty peer would flood the output.
    """
    dataset = read_dataset(BytesIO(data), is_implicit_VR=True, is_little_endian=True)
    if "CommandField" not in dataset:
        raise ValueError("the command set has no CommandField (0000,0100)")

    values: dict[str, Any] = {}
    for keyword, name in COMMAND_KEYWORDS.items():
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
