"""Predict, before a run, what happens to every instance on every route.

:func:`check_topology` builds what is sent (:mod:`.senders`), finds every
route with the routers' own rules (:mod:`.routes`), counts the
associations each receiver has open at once (:mod:`.capacity`), and
predicts each hop (:mod:`.hops`). The result has one
:class:`~simulator.capability.model.InstancePrediction` per ledger row the
simulator would write: per (instance, final destination).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from simulator.capability.capacity import CapacityModel
from simulator.capability.conditions import link_conditions
from simulator.capability.errors import CheckError
from simulator.capability.hops import check_hop
from simulator.capability.model import (
    CheckResult,
    HopPrediction,
    InstancePrediction,
    Outcome,
    PredictedFailure,
)
from simulator.capability.retrieve import predict_retrieves
from simulator.capability.routes import PlannedRoute, plan_routes
from simulator.capability.senders import (
    SenderPlan,
    SendPlan,
    SentItem,
    SiteState,
    plan_from_corpus,
    plan_from_declarations,
    plan_from_scenario,
)
from simulator.capability.verdicts import never_attempted, no_matching_rule
from simulator.corpus import Corpus, CorpusInstance, bundled_corpus
from simulator.errors import CorpusError
from simulator.nodes.scu import Outgoing, propose_contexts
from simulator.recording.failures import FailureKind, Side
from simulator.routing import parse_tag
from simulator.scenario.model import Scenario
from simulator.topology.model import ModalityNode, RouterNode, StorageNode, Topology


def check_topology(topology: Topology, corpus_instances: Sequence[CorpusInstance] | None = None,
                   scenario: Scenario | None = None) -> CheckResult:
    """Predict the outcome of every (instance, route, hop) of a topology.

    With a scenario, its senders, selections and timeline decide what is
    sent, from ``corpus_instances`` (the scenario's corpus, which the caller
    loads, see :func:`load_corpus_instances`). With only a corpus, every
    modality sends the instances of the SOP classes it declares. With
    neither, every modality sends one instance per declared (SOP class,
    transfer syntax). Raise CheckError for a scenario without corpus instances.
    """
    if scenario is not None:
        if corpus_instances is None:
            raise CheckError("a scenario needs its corpus: pass the corpus instances it selects from")
        plan = plan_from_scenario(topology, scenario, corpus_instances)
    elif corpus_instances is not None:
        plan = plan_from_corpus(topology, corpus_instances)
    else:
        plan = plan_from_declarations(topology)

    result = CheckResult(topology.site, plan.mode, notes=list(plan.notes))
    routed = _route_everything(topology, plan)
    capacity = _count_associations(topology, plan, routed)
    for sender, item, position, proposed, routes in routed:
        for planned in routes:
            prediction = _predict(sender, item, position, proposed, planned, capacity,
                                  sender.state)
            for later in sender.later_states:
                alternative = _predict(sender, item, position, proposed, planned, capacity, later)
                prediction = _merge(prediction, alternative)
            result.predictions.append(_with_integrity(topology, planned, prediction))
    if scenario is not None and corpus_instances is not None:
        result.retrieves = predict_retrieves(topology, scenario, corpus_instances)
        result.notes += [str(r) for r in result.retrieves]

    return result


def explained_tags(topology: Topology, destination: str) -> set[str]:
    """Return the tags that rules forwarding to ``destination`` set or remove, as the runner
    explains changes found by its integrity check: every rule of every rule set counts."""
    tags: set[str] = set()
    for node in topology.nodes.values():
        if not isinstance(node, RouterNode):
            continue
        for _, rule in node.located_rules():
            if destination not in rule.forward:
                continue
            for key in [*rule.coerce.set, *rule.coerce.remove]:
                if not key.startswith("private:"):
                    tag = parse_tag(key)
                    tags.add(f"({tag.group:04X},{tag.element:04X})")

    return tags


def _with_integrity(topology: Topology, planned: PlannedRoute,
                    prediction: InstancePrediction) -> InstancePrediction:
    """Predict an integrity violation when a router relabels the character set under text."""
    if prediction.outcome != Outcome.DELIVERED or planned.unmatched_at is not None:
        return prediction
    if not isinstance(topology.nodes[planned.route.destination], StorageNode):
        return prediction  # the runner checks integrity only for objects it stores itself
    damaged = {tag for hop in planned.hops for tag in hop.damaged_tags}
    unexplained = sorted(damaged - explained_tags(topology, planned.route.destination))
    if not unexplained:
        return prediction
    failure = PredictedFailure(
        FailureKind.INTEGRITY, planned.route.links[-1], Side.ROUTER, True,
        f"a router changes SpecificCharacterSet but keeps the encoded bytes of "
        f"{', '.join(unexplained)}, so their decoded values change",
    )

    return dataclasses.replace(prediction, outcome=Outcome.FAILED, failure=failure)


_Routed = tuple[SenderPlan, SentItem, int, set[tuple[str, str]], list[PlannedRoute]]


def _route_everything(topology: Topology, plan: SendPlan) -> list[_Routed]:
    routed: list[_Routed] = []
    for sender in plan.senders:
        modality = topology.nodes[sender.modality]
        for group in sender.groups:
            proposed = _proposal(modality, group)  # type: ignore[arg-type]
            position = 0
            for item in group:
                routes = plan_routes(topology, sender.state, item)
                routed.append((sender, item, position, proposed, routes))
                if (item.sop_class_uid, item.transfer_syntax_uid) in proposed:
                    position += 1

    return routed


def _proposal(modality: ModalityNode, group: list[SentItem]) -> set[tuple[str, str]]:
    """Return the (SOP class, transfer syntax) pairs the modality proposes for one group."""
    outgoing = [Outgoing(Path(item.source_file or "."), item.sop_class_uid, "",
                         item.transfer_syntax_uid) for item in group]

    return {(str(cx.abstract_syntax), str(cx.transfer_syntax[0]))
            for cx in propose_contexts(modality, outgoing)}


def _count_associations(topology: Topology, plan: SendPlan,
                        routed: list[_Routed]) -> CapacityModel:
    capacity = CapacityModel()
    for sender in plan.senders:
        if sender.started and sender.groups:
            modality = topology.nodes[sender.modality]
            receiver = topology.nodes[topology.destination_of(modality)]  # type: ignore[arg-type]
            capacity.add_sender(sender, receiver)
    for sender, _item, _position, _proposed, routes in routed:
        if not sender.started:
            continue
        for planned in routes:
            for hop in planned.hops[1:]:
                capacity.add_router(sender.wave, hop.sender.name, hop.receiver.name)

    return capacity


def _merge(first: InstancePrediction, later: InstancePrediction) -> InstancePrediction:
    """Combine the predictions of one delivery in two site states; a difference is a risk."""
    same_failure = (first.failure is None) == (later.failure is None) and (
        first.failure is None or later.failure is None
        or first.failure.failure_kind == later.failure.failure_kind)
    if first.outcome == later.outcome and same_failure:
        return first
    failures = [f for f in (first.failure, later.failure) if f is not None]
    risks: list[PredictedFailure] = []
    for failure in [*failures, *first.risks, *later.risks]:
        if failure not in risks:
            risks.append(failure)

    return dataclasses.replace(first, outcome=Outcome.AT_RISK, failure=None, risks=tuple(risks))


def _predict(sender: SenderPlan, item: SentItem, position: int, proposed: set[tuple[str, str]],
             planned: PlannedRoute, capacity: CapacityModel,
             state: SiteState) -> InstancePrediction:
    if not sender.started:
        return _prediction(item, planned, Outcome.NEVER_ATTEMPTED, None, [], (),
                           risks=[never_attempted(sender.name)])
    hops: list[HopPrediction] = []
    syntax = item.transfer_syntax_uid
    failure: PredictedFailure | None = None
    for index, hop in enumerate(planned.hops):
        if failure is not None:
            hops.append(HopPrediction(hop.link.link_name, hop.sender.name, hop.receiver.name,
                                      Outcome.NOT_REACHED, syntax))
            continue
        first = index == 0
        prediction = check_hop(
            hop, item, syntax, position if first else 0,
            sender.pause_between_s if first else 0.0,
            link_conditions(hop.link.link_name, state),
            lambda plan, it: capacity.verdict(sender.wave, plan, it),
            proposed if first else None,
        )
        hops.append(prediction)
        failure = prediction.failure
        syntax = prediction.transfer_syntax_uid
    if failure is None and planned.unmatched_at is not None:
        failure = no_matching_rule(planned.unmatched_at, planned.unmatched_rule_set)
    risks = [risk for hop in hops for risk in hop.risks]
    outcome = Outcome.DELIVERED
    if failure is not None:
        outcome = Outcome.FAILED
    elif risks:
        outcome = Outcome.AT_RISK
    reached = [plan for plan, hop in zip(planned.hops, hops) if hop.outcome != Outcome.NOT_REACHED]
    changes = tuple(change for plan in reached[1:] for change in plan.changes)

    return _prediction(item, planned, outcome, failure, hops, changes, risks)


def _prediction(item: SentItem, planned: PlannedRoute, outcome: Outcome,
                failure: PredictedFailure | None, hops: list[HopPrediction],
                changes: tuple[str, ...], risks: list[PredictedFailure]) -> InstancePrediction:
    return InstancePrediction(
        sender=item.sender, source_file=item.source_file, sop_class_uid=item.sop_class_uid,
        transfer_syntax_uid=item.transfer_syntax_uid, size_bytes=item.size_bytes,
        route=planned.route, outcome=outcome, failure=failure, risks=tuple(risks),
        hops=tuple(hops), changes=changes,
    )


def load_corpus_instances(scenario: Scenario | None, scenario_path: Path | None,
                          corpus: Path | None) -> list[CorpusInstance] | None:
    """Return the corpus the check reads: ``corpus`` if given, else the scenario's, else None.

    Raise CorpusError when the folder is missing or contains no instance.
    """
    root = corpus
    if root is None and scenario is not None:
        if scenario.corpus == "bundled":
            root = bundled_corpus()
        else:
            base = scenario_path.parent if scenario_path is not None else Path(".")
            root = (base / scenario.corpus).resolve()
    if root is None:
        return None
    if not root.is_dir():
        raise CorpusError(f"corpus folder not found: {root}; give a folder of DICOM files")

    return Corpus.load(root).instances
