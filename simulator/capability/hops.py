"""Predict one hop: proposal, connection, association, acceptance, PDU, time and status.

The checks run in the order the simulator meets the same conditions, and
the first certain failure ends the hop, as it ends the association there:

1. proposal: the sender proposes one presentation context per (SOP class,
   transfer syntax) it declares as SCU (``simulator.nodes.scu.propose_contexts``);
2. connection: a ``down`` fault, a firewall rule that denies, TLS on one side only;
3. association: an ``associate_reject`` fault, the called and calling AE
   title checks (pynetdicom 3.0.4 sends A-ASSOCIATE-RJ 1/1/7 for the called
   AE title when both fail), the receiver's association limit;
4. acceptance: the receiver accepts the pairs it declares with the SCP
   role; a router with ``transcode`` re-encodes Explicit VR Little Endian,
   Implicit VR Little Endian or Deflated into an uncompressed syntax the
   receiver accepted (``simulator.nodes.router.Router._transcode``);
5. PDU lengths and time budgets (:mod:`simulator.capability.budget`);
6. status: an ``answer_status`` fault, or what a PACS validates (required attributes,
   the Specific Character Set term).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

from pydicom.charset import python_encoding
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from simulator.capability import verdicts as v
from simulator.capability.budget import budget_note, pdu_verdicts, timing_verdicts
from simulator.capability.conditions import LinkConditions
from simulator.capability.model import HopPrediction, Outcome, PredictedFailure
from simulator.capability.routes import HopPlan
from simulator.capability.senders import SentItem
from simulator.conformance.names import DEFLATED_TRANSFER_SYNTAX, describe_uid
from simulator.links.firewall import FirewallSpec
from simulator.recording.failures import FailureKind, status_category
from simulator.topology.model import ExternalNode, NodeBase, Role, RouterNode, StorageNode

TRANSCODABLE = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, DEFLATED_TRANSFER_SYNTAX)
"""Transfer syntaxes a router re-encodes from, as simulator.nodes.router does."""
TRANSCODE_TARGETS = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
"""Transfer syntaxes a router re-encodes to, in its order of preference."""

CapacityCheck = Callable[[HopPlan, SentItem], "v.Verdict | None"]


@dataclass
class _Hop:
    """The verdicts gathered for one hop so far."""

    plan: HopPlan
    transfer_syntax_uid: str
    failure: PredictedFailure | None = None
    risks: list[PredictedFailure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    budget: str | None = None
    dataset_bytes: int | None = None

    def add(self, verdicts: list[v.Verdict]) -> bool:
        """Record verdicts; return True once a certain failure ends the hop."""
        for verdict in verdicts:
            if verdict.certain:
                self.failure = verdict.failure
                return True
            self.risks.append(verdict.failure)
        return False

    def prediction(self) -> HopPrediction:
        outcome = Outcome.DELIVERED
        if self.failure is not None:
            outcome = Outcome.FAILED
        elif self.risks:
            outcome = Outcome.AT_RISK

        return HopPrediction(
            link=self.plan.link.link_name, sender=self.plan.sender.name,
            receiver=self.plan.receiver.name, outcome=outcome,
            transfer_syntax_uid=self.transfer_syntax_uid, failure=self.failure,
            risks=tuple(self.risks), notes=tuple(dict.fromkeys(self.notes)),
            budget=self.budget, dataset_bytes=self.dataset_bytes,
        )


def check_hop(plan: HopPlan, item: SentItem, transfer_syntax_uid: str, position: int,
              pause_between_s: float, conditions: LinkConditions, capacity: CapacityCheck,
              proposed: set[tuple[str, str]] | None = None) -> HopPrediction:
    """Predict one hop of ``item``, sent as item ``position`` of its association.

    ``proposed`` is the sender's proposal for the association, when known;
    it can lack a declared pair that the 128-context limit cut off.
    """
    hop = _Hop(plan, transfer_syntax_uid, notes=list(plan.changes))
    hop.notes += [f"not predicted: fault {text} on {plan.link.link_name}"
                  for text in conditions.not_predicted]
    steps: list[Callable[[], list[v.Verdict]]] = [
        lambda: _proposal(plan, item, transfer_syntax_uid, proposed),
        lambda: _connection(plan, conditions),
        lambda: _association(plan, item, conditions, capacity),
        lambda: _risky_faults(plan, conditions),
        lambda: _acceptance(hop, item),
        lambda: pdu_verdicts(plan, conditions, item.dataset_bytes),
        lambda: timing_verdicts(plan, conditions, item.dataset_bytes, position, pause_between_s),
        lambda: _status(hop, item, conditions),
    ]
    for step in steps:
        if hop.add(step()):
            break
    hop.budget = budget_note(plan, conditions, item.dataset_bytes)
    hop.dataset_bytes = item.dataset_bytes

    return hop.prediction()


def _proposal(plan: HopPlan, item: SentItem, transfer_syntax_uid: str,
              proposed: set[tuple[str, str]] | None) -> list[v.Verdict]:
    sender = plan.sender
    link = plan.link.link_name
    declared = sender.supports(item.sop_class_uid, Role.SCU)
    if not declared or transfer_syntax_uid not in sender.transfer_syntaxes_for(item.sop_class_uid):
        return [v.Verdict(v.not_proposed(link, sender.name, item.sop_class_uid,
                                         transfer_syntax_uid, declared))]
    if proposed is not None and (item.sop_class_uid, transfer_syntax_uid) not in proposed:
        failure = v.not_proposed(link, sender.name, item.sop_class_uid, transfer_syntax_uid, True)
        reason = (f"{sender.name} declares {describe_uid(transfer_syntax_uid)} for "
                  f"{describe_uid(item.sop_class_uid)}, but its association proposes 128 "
                  "presentation contexts, the PS3.8 maximum, before reaching it")
        return [v.Verdict(dataclasses.replace(failure, reason=reason))]

    return []


def _connection(plan: HopPlan, conditions: LinkConditions) -> list[v.Verdict]:
    link = plan.link.link_name
    found: list[v.Verdict] = []
    if conditions.down is not None:
        found.append(v.Verdict(v.link_down(link, conditions.down.name), conditions.down.certain))
    denial = _firewall_denial(plan, conditions.firewall)
    if denial is not None:
        found.append(v.Verdict(v.firewall_denied(link, denial)))
    if plan.sender.tls != plan.receiver.tls:
        found.append(v.Verdict(v.tls_mismatch(
            link, plan.sender.tls, f"{plan.receiver.name} declares TLS "
            f"{'on' if plan.receiver.tls else 'off'} and {plan.sender.name} "
            f"{'on' if plan.sender.tls else 'off'}")))

    return found


def _firewall_denial(plan: HopPlan, firewall: FirewallSpec | None) -> str | None:
    """Return the rule that denies the association, as the link's firewall evaluates it."""
    if firewall is None:
        return None
    if firewall.max_connections == 0:
        return "max_connections 0"
    for index, rule in enumerate(firewall.rules):
        if rule.source is not None and rule.source != plan.link.from_node:
            continue
        if rule.calling_ae is not None and rule.calling_ae.strip() != plan.calling_ae:
            continue
        if rule.called_ae is not None and rule.called_ae.strip() != plan.called_ae:
            continue
        return None if rule.action == "allow" else (rule.name or f"rule {index + 1}")

    return "default deny" if firewall.default == "deny" else None


def _association(plan: HopPlan, item: SentItem, conditions: LinkConditions,
                 capacity: CapacityCheck) -> list[v.Verdict]:
    link = plan.link.link_name
    found: list[v.Verdict] = []
    reject = conditions.associate_reject
    if reject is not None:
        attributes = reject.attributes
        found.append(v.Verdict(v.injected_rejection(
            link, reject.name, int(attributes.get("result", 1)), int(attributes.get("source", 1)),
            int(attributes.get("reason", 1))), reject.certain))
    found += _ae_title_verdicts(plan)
    limit = capacity(plan, item)
    if limit is not None:
        found.append(limit)

    return found


def _risky_faults(plan: HopPlan, conditions: LinkConditions) -> list[v.Verdict]:
    link = plan.link.link_name
    found = []
    for label, kind in conditions.risky:
        reason = f"fault {label} on {link} may break the association"
        if kind == FailureKind.DIMSE_TIMEOUT:
            failure = v.dimse_timeout(link, plan.sender.timeouts.dimse_s or 0.0, reason)
        else:
            failure = v.link_failure(kind, link, reason)
        found.append(v.Verdict(failure, certain=False))

    return found


def _ae_title_verdicts(plan: HopPlan) -> list[v.Verdict]:
    receiver = plan.receiver
    link = plan.link.link_name
    if receiver.check_called_ae and plan.called_ae.strip() != receiver.ae_title.strip():
        return [v.Verdict(v.rejected(
            link, 1, 1, 7, f"{plan.sender.name} calls {plan.called_ae!r} but {receiver.name} "
            f"checks the called AE title and is {receiver.ae_title!r}"))]
    accepted = receiver.accept_calling_ae
    if accepted is not None and plan.calling_ae.strip() not in [a.strip() for a in accepted]:
        return [v.Verdict(v.rejected(
            link, 1, 1, 3, f"{receiver.name} accepts calling AE titles "
            f"{', '.join(accepted)}, not {plan.calling_ae!r}"))]

    return []


def _acceptance(hop: _Hop, item: SentItem) -> list[v.Verdict]:
    plan = hop.plan
    receiver = plan.receiver
    sop_class = item.sop_class_uid
    syntax = hop.transfer_syntax_uid
    link = plan.link.link_name
    if not receiver.supports(sop_class, Role.SCP):
        reason = _unsupported_why(receiver, sop_class)
        return [v.Verdict(v.not_accepted(link, receiver.name, sop_class, syntax,
                                         v.CONTEXT_NOT_SUPPORTED, reason))]
    accepted = receiver.transfer_syntaxes_for(sop_class)
    if syntax in accepted:
        return []
    target = _transcode_target(plan.sender, sop_class, syntax, accepted)
    if target is not None:
        hop.notes.append(f"{plan.sender.name} transcodes {describe_uid(syntax)} to "
                         f"{describe_uid(target)} for {receiver.name}")
        hop.transfer_syntax_uid = target
        return []
    reason = f"{receiver.name} declares {', '.join(describe_uid(t) for t in accepted)}"
    if isinstance(plan.sender, RouterNode) and plan.sender.transcode:
        reason += f", and {plan.sender.name} transcodes only from Explicit or Implicit VR Little Endian or Deflated"

    return [v.Verdict(v.not_accepted(link, receiver.name, sop_class, syntax,
                                     v.TRANSFER_SYNTAX_NOT_SUPPORTED, reason))]


def _unsupported_why(receiver: NodeBase, sop_class: str) -> str:
    if any(e.sop_class == sop_class for e in receiver.sop_classes):
        return f"{receiver.name} declares {describe_uid(sop_class)} without the SCP role"

    return f"{receiver.name} does not declare {describe_uid(sop_class)}"


def _transcode_target(sender: NodeBase, sop_class: str, syntax: str,
                      accepted: tuple[str, ...]) -> str | None:
    if not isinstance(sender, RouterNode) or not sender.transcode or syntax not in TRANSCODABLE:
        return None
    # The router converts only into a context the receiver accepted, so it must have proposed it.
    proposed = sender.transfer_syntaxes_for(sop_class)

    return next((t for t in TRANSCODE_TARGETS if t in accepted and t in proposed), None)


def _status(hop: _Hop, item: SentItem, conditions: LinkConditions) -> list[v.Verdict]:
    plan = hop.plan
    link = plan.link.link_name
    for answer in conditions.answer_status:
        only_sop_class = answer.attributes.get("sop_class")
        if only_sop_class is not None and only_sop_class != item.sop_class_uid:
            continue
        status = int(answer.attributes["status"])
        category = status_category(status)
        reason = f"fault {answer.name} on {link} answers 0x{status:04X} in place of {plan.receiver.name}"
        if category in ("success", "warning"):
            if isinstance(plan.receiver, ExternalNode):
                hop.notes.append(reason)
                return []
            return [v.Verdict(v.false_success(link, reason + "; the object never reaches it"),
                              answer.certain)]
        return [v.Verdict(v.dimse_failure(link, status, reason), answer.certain)]

    return _validation(hop)


def _validation(hop: _Hop) -> list[v.Verdict]:
    """Predict the status of a PACS or viewer that validates, as simulator.nodes.scp does."""
    plan = hop.plan
    receiver = plan.receiver
    if not isinstance(receiver, StorageNode):
        return []
    required = receiver.require_attributes
    charset_check = receiver.character_set_check
    if not required and charset_check == "off":
        return []
    link = plan.link.link_name
    if plan.header is None:
        reason = f"{receiver.name} answers 0xA900 for an object that fails its validation"
        return [v.Verdict(v.dimse_failure(link, 0xA900, reason), certain=False)]
    unknown = _unknown_terms(plan.header) if charset_check != "off" else []
    if unknown and charset_check == "reject":
        reason = (f"{receiver.name} rejects the Specific Character Set term {unknown[0]!r}, "
               "which is not a defined term (0xA900)")
        return [v.Verdict(v.dimse_failure(link, 0xA900, reason))]
    missing = [keyword for keyword in required if _is_missing(plan.header, keyword)]
    if missing:
        reason = (f"{receiver.name} requires {', '.join(required)}, and the object lacks "
               f"{', '.join(missing)} (0xA900, data set does not match SOP class)")
        return [v.Verdict(v.dimse_failure(link, 0xA900, reason))]
    if unknown:
        hop.notes.append(f"{receiver.name} stores the object but answers 0xB007 (warning) for "
                         f"the Specific Character Set term {unknown[0]!r}")

    return []


def _is_missing(header: Dataset, keyword: str) -> bool:
    element = header.data_element(keyword) if keyword in header else None

    return element is None or element.is_empty


def _unknown_terms(header: Dataset) -> list[str]:
    value = header.get("SpecificCharacterSet")
    if value is None:
        return []
    terms = [value] if isinstance(value, str) else list(value)

    return [str(term) for term in terms if str(term) not in python_encoding]
