"""Constructors for the failures the check predicts, with the simulator's kinds, sides and details.

Each function builds the :class:`PredictedFailure` that the simulator's
classification (``simulator.nodes.scu``, ``simulator.nodes.scp``,
``simulator.nodes.router``) would record for the same cause, so that
predicted and observed ledger rows compare field by field.
"""

from __future__ import annotations

from dataclasses import dataclass

from simulator.capability.model import PredictedFailure
from simulator.conformance.names import describe_uid
from simulator.recording.failures import (
    CONTEXT_RESULT,
    FailureKind,
    Side,
    rejection_names,
    status_is_transient,
)

CONTEXT_NOT_SUPPORTED = 3
TRANSFER_SYNTAX_NOT_SUPPORTED = 4


@dataclass(frozen=True)
class Verdict:
    """A failure a hop certainly has, or only may have (``certain`` False)."""

    failure: PredictedFailure
    certain: bool = True


def not_proposed(link: str, sender: str, sop_class: str, transfer_syntax: str,
                 sop_declared: bool) -> PredictedFailure:
    reason = (
        f"{sender} does not declare {describe_uid(transfer_syntax)} for "
        f"{describe_uid(sop_class)}, so it never proposes it"
        if sop_declared else f"{sender} does not declare {describe_uid(sop_class)} as SCU"
    )
    return PredictedFailure(
        FailureKind.NO_ACCEPTED_CONTEXT, link, Side.REQUESTOR, True, reason,
        {"sop_class": sop_class, "transfer_syntax": transfer_syntax, "cause": "proposal"},
    )


def not_accepted(link: str, receiver: str, sop_class: str, transfer_syntax: str,
                 context_result: int, reason: str) -> PredictedFailure:
    result_name = CONTEXT_RESULT[context_result]
    return PredictedFailure(
        FailureKind.NO_ACCEPTED_CONTEXT, link, Side.ACCEPTOR, True,
        f"{receiver} does not accept {describe_uid(sop_class)} with "
        f"{describe_uid(transfer_syntax)} ({result_name}): {reason}",
        {"sop_class": sop_class, "transfer_syntax": transfer_syntax, "cause": "acceptance",
         "context_result": context_result},
    )


def rejected(link: str, result: int, source: int, reason: int,
             explanation: str) -> PredictedFailure:
    detail = dict(rejection_names(result, source, reason))
    detail["category"] = "capacity" if source == 3 else "configuration"
    return PredictedFailure(
        FailureKind.ASSOCIATION_REJECTED, link, Side.ACCEPTOR, result == 1,
        f"A-ASSOCIATE-RJ {result}/{source}/{reason} ({detail['reason_name']}): {explanation}",
        detail,
    )


def injected_rejection(link: str, fault: str, result: int, source: int,
                       reason: int) -> PredictedFailure:
    """Build the A-ASSOCIATE-RJ a fault on the link sends: the link is blamed, so a router retries."""
    names = rejection_names(result, source, reason)
    return PredictedFailure(
        FailureKind.ASSOCIATION_REJECTED, link, Side.LINK, False,
        f"fault {fault} on {link} answers A-ASSOCIATE-RJ {result}/{source}/{reason} "
        f"({names['reason_name']})", {"fault": fault, "result": result, "source": source,
                                       "reason": reason},
    )


def link_down(link: str, fault: str) -> PredictedFailure:
    return PredictedFailure(FailureKind.CONNECTION_REFUSED, link, Side.LINK, False,
                            f"link {link} is down (fault {fault})", {"fault": fault})


def firewall_denied(link: str, rule: str) -> PredictedFailure:
    return PredictedFailure(FailureKind.CONNECTION_CLOSED, link, Side.LINK, False,
                            f"the firewall on {link} denies the connection ({rule})",
                            {"cause": "firewall-denied"})


def tls_mismatch(link: str, requestor_tls: bool, reason: str) -> PredictedFailure:
    # A ClientHello going upstream blames the requestor; a plain request to a TLS port, the acceptor.
    side = Side.REQUESTOR if requestor_tls else Side.ACCEPTOR
    return PredictedFailure(FailureKind.TLS_MISMATCH, link, side, True, reason)


def pdu_over_limit(link: str, reason: str) -> PredictedFailure:
    return PredictedFailure(FailureKind.PDU_OVER_LIMIT, link, Side.LINK, True, reason)


def blackholed(link: str, reason: str) -> PredictedFailure:
    return PredictedFailure(FailureKind.CONNECTION_BLACKHOLED, link, Side.LINK, False, reason)


def link_failure(kind: FailureKind, link: str, reason: str) -> PredictedFailure:
    """Build a failure that a fault on the link causes and notes, so the link is blamed."""
    return PredictedFailure(kind, link, Side.LINK, kind == FailureKind.PDU_OVER_LIMIT, reason)


def dimse_timeout(link: str, timeout_s: float, reason: str) -> PredictedFailure:
    return PredictedFailure(FailureKind.DIMSE_TIMEOUT, link, Side.ACCEPTOR, False, reason,
                            {"timeout_s": timeout_s, "timed_out_side": "requestor"})


def acse_timeout(link: str, timeout_s: float, reason: str) -> PredictedFailure:
    return PredictedFailure(FailureKind.ACSE_TIMEOUT, link, Side.ACCEPTOR, False, reason,
                            {"timeout_s": timeout_s, "timed_out_side": "requestor"})


def network_timeout(link: str, node: str, timeout_s: float, reason: str) -> PredictedFailure:
    return PredictedFailure(FailureKind.NETWORK_TIMEOUT, link, Side.REQUESTOR, False, reason,
                            {"timeout_s": timeout_s, "timed_out_side": "acceptor", "node": node})


def dimse_failure(link: str, status: int, reason: str) -> PredictedFailure:
    return PredictedFailure(FailureKind.DIMSE_FAILURE, link, Side.ACCEPTOR,
                            not status_is_transient(status), reason, {"status": f"0x{status:04X}"})


def false_success(link: str, reason: str) -> PredictedFailure:
    return PredictedFailure(FailureKind.FALSE_SUCCESS, link, Side.ACCEPTOR, True, reason)


def no_matching_rule(router: str, rule_set: str | None) -> PredictedFailure:
    return PredictedFailure(FailureKind.NO_MATCHING_RULE, None, Side.ROUTER, True,
                            f"no rule of rule set {rule_set or 'rules'} of {router} matches")


def never_attempted(sender: str) -> PredictedFailure:
    return PredictedFailure(FailureKind.NEVER_ATTEMPTED, None, Side.RUN, False,
                            f"the scenario never starts sender {sender}")
