"""Failure kinds as the field names them, with the hop and side to blame.

A failure is decided where the evidence is: the requestor sees the
A-ASSOCIATE-RJ, the rejected presentation contexts and the DIMSE status; the
link proxy sees a refused upstream connection; the acceptor sees its own
idle timeout. :class:`Failure` carries the kind, the hop (link name), the
side responsible and whether a retry can help.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any


class FailureKind(StrEnum):
    ASSOCIATION_REJECTED = "association-rejected"
    NO_ACCEPTED_CONTEXT = "no-accepted-context"
    ASSOCIATION_ABORTED = "association-aborted"
    ACSE_TIMEOUT = "acse-timeout"
    DIMSE_TIMEOUT = "dimse-timeout"
    NETWORK_TIMEOUT = "network-timeout"
    CONNECTION_TIMEOUT = "connection-timeout"
    CONNECTION_REFUSED = "connection-refused"
    CONNECTION_CLOSED = "connection-closed"
    CONNECTION_RESET = "connection-reset"
    CONNECTION_BLACKHOLED = "connection-blackholed"
    TLS_MISMATCH = "tls-mismatch"
    PDU_OVER_LIMIT = "pdu-over-limit"
    DIMSE_FAILURE = "dimse-failure"
    DIMSE_WARNING = "dimse-warning"
    FALSE_SUCCESS = "false-success"
    NO_MATCHING_RULE = "no-matching-rule"
    NEVER_ATTEMPTED = "never-attempted"
    INTEGRITY = "integrity-violation"
    SIMULATOR_ERROR = "simulator-error"
    SUB_OPERATION_FAILED = "sub-operation-failed"
    MOVE_DESTINATION_UNKNOWN = "move-destination-unknown"


class Side(StrEnum):
    REQUESTOR = "requestor"
    ACCEPTOR = "acceptor"
    LINK = "link"
    ROUTER = "router"
    RUN = "run"


# PS3.8 section 9.3.4 (A-ASSOCIATE-RJ) and 9.3.8 (A-ABORT) names.
RJ_RESULT = {1: "rejected-permanent", 2: "rejected-transient"}
RJ_SOURCE = {
    1: "service-user",
    2: "service-provider (ACSE related function)",
    3: "service-provider (presentation related function)",
}
RJ_REASON = {
    1: {1: "no-reason-given", 2: "application-context-name-not-supported",
        3: "calling-AE-title-not-recognized", 7: "called-AE-title-not-recognized"},
    2: {1: "no-reason-given", 2: "protocol-version-not-supported"},
    3: {1: "temporary-congestion", 2: "local-limit-exceeded"},
}
ABORT_SOURCE = {0: "service-user", 1: "reserved", 2: "service-provider"}
ABORT_REASON = {
    0: "reason-not-specified",
    1: "unrecognized-PDU",
    2: "unexpected-PDU",
    4: "unrecognized-PDU-parameter",
    5: "unexpected-PDU-parameter",
    6: "invalid-PDU-parameter-value",
}
CONTEXT_RESULT = {
    0: "acceptance",
    1: "user-rejection",
    2: "no-reason (provider rejection)",
    3: "abstract-syntax-not-supported (provider rejection)",
    4: "transfer-syntaxes-not-supported (provider rejection)",
}


def rejection_names(result: int, source: int, reason: int) -> dict[str, Any]:
    return {
        "result": result,
        "result_name": RJ_RESULT.get(result, f"unknown ({result})"),
        "source": source,
        "source_name": RJ_SOURCE.get(source, f"unknown ({source})"),
        "reason": reason,
        "reason_name": RJ_REASON.get(source, {}).get(reason, f"unknown ({reason})"),
    }


def abort_names(source: int | None, reason: int | None) -> dict[str, Any]:
    """Return an A-ABORT's source and reason with their PS3.8 section 9.3.8 names."""
    source = source or 0
    reason = reason or 0
    # The reason is significant only when the service-provider (2) aborted.
    reason_name = "not-significant"
    if source == 2:
        reason_name = ABORT_REASON.get(reason, f"unknown ({reason})")

    return {
        "source": source,
        "source_name": ABORT_SOURCE.get(source, f"unknown ({source})"),
        "reason": reason,
        "reason_name": reason_name,
    }


def status_category(status: int) -> str:
    """Return the PS3.7 Annex C category of a DIMSE status."""
    if status == 0x0000:
        return "success"
    if status in (0x0001, 0x0107, 0x0116) or 0xB000 <= status <= 0xBFFF:
        return "warning"
    if status in (0xFF00, 0xFF01):
        return "pending"
    if status == 0xFE00:
        return "cancel"

    return "failure"


def status_is_transient(status: int) -> bool:
    # 0xA7xx is "Refused: Out of Resources": the archive may recover, so a
    # router retries it. Every other failure status repeats the same way.
    return 0xA700 <= status <= 0xA7FF


@dataclass(frozen=True)
class Failure:
    """One classified failure: what happened, on which hop, and who is to blame."""

    failure_kind: FailureKind
    hop: str | None
    side: Side
    permanent: bool
    reason: str
    detail: dict[str, Any] = field(default_factory=dict)

    def as_record(self) -> dict[str, Any]:
        record = asdict(self)
        record["failure_kind"] = str(self.failure_kind)
        record["side"] = str(self.side)

        return record
