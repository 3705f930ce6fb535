"""Names and numbers of the DICOM Upper Layer protocol (PS3.8) and of DIMSE commands (PS3.7).

Tables map the codes of result, source and reason fields to the names PS3.8
sections 9.3.3 to 9.3.8 use, so that events carry both.
"""

from __future__ import annotations

from enum import IntEnum

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


FIXED_LENGTH_TYPES = {  # PDUs whose PDU-length is always 4
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

COMMAND_KEYWORDS = {
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
