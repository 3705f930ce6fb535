"""Every route an instance can take, found with the rules the routers run.

With a header, a router's decision comes from :func:`simulator.routing.route`,
the function the router itself calls. Its context has the calling AE title
of the previous hop and, as the called AE title, the router's own, because
pynetdicom 3.0.4 reports that one to the router's C-STORE handler. Without a header
(no corpus), a rule whose match needs an attribute value may or may not
match; the route then carries that condition.

Before a router forwards, it applies the coercions of the rules that sent
the instance to that destination and then its private tag policy; the
next hop sees the changed header.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from pydicom.dataset import Dataset

from simulator.capability.changes import RouterChanges, router_changes
from simulator.capability.model import Route
from simulator.capability.senders import SentItem, SiteState
from simulator.routing import RouteContext, route, rule_matches
from simulator.topology.model import Coercion, Link, NodeBase, RouterNode, Rule, Topology

MAX_ROUTER_CHAIN = 8
"""As in the runner: routers forwarding to routers deeper than this are taken for a loop."""

_CONTEXT_KEYS = ("calling_ae", "called_ae", "sop_class")


@dataclass(frozen=True, eq=False)
class HopPlan:
    """One hop of a route: who sends to whom over which link, and the data set as sent."""

    link: Link
    sender: NodeBase
    receiver: NodeBase
    calling_ae: str
    called_ae: str
    header: Dataset | None
    changes: tuple[str, ...] = ()
    """Changes the sender, a router, made before this hop."""
    damaged_tags: tuple[str, ...] = ()
    """Text elements whose decoded value the sender, a router, changed by relabelling them."""


@dataclass(frozen=True, eq=False)
class PlannedRoute:
    route: Route
    hops: tuple[HopPlan, ...]
    unmatched_at: str | None = None
    """The router where no rule matched; the ledger row's destination is that router."""
    unmatched_rule_set: str | None = None


@dataclass(frozen=True)
class _Decision:
    destination: str | None
    rules: tuple[Rule, ...]
    condition: str | None


@dataclass(frozen=True)
class _Walk:
    """The hops, rule sets, rules and conditions of a route so far, passed down the recursion."""

    hops: tuple[HopPlan, ...] = ()
    rule_sets: tuple[tuple[str, str | None], ...] = ()
    rules: tuple[tuple[str, tuple[str, ...]], ...] = ()
    conditions: tuple[str, ...] = ()


def plan_routes(topology: Topology, state: SiteState, item: SentItem) -> list[PlannedRoute]:
    """Return every route ``item`` takes from its modality in the given site state."""
    modality = topology.nodes[item.modality]
    first = topology.destination_of(modality)  # type: ignore[arg-type]

    return list(_walk(topology, state, item, modality, first, item.header, RouterChanges(),
                      _Walk(), 0))


def _walk(topology: Topology, state: SiteState, item: SentItem, sender: NodeBase,
          receiver_name: str, header: Dataset | None, changes: RouterChanges,
          walked: _Walk, depth: int) -> Iterator[PlannedRoute]:
    link = topology.link_between(sender.name, receiver_name)
    receiver = topology.nodes[receiver_name]
    hop = HopPlan(link, sender, receiver, sender.ae_title, link.called_ae or receiver.ae_title,
                  header, tuple(changes.descriptions), tuple(changes.damaged_tags))
    walked = _Walk(walked.hops + (hop,), walked.rule_sets, walked.rules, walked.conditions)
    if not isinstance(receiver, RouterNode) or depth >= MAX_ROUTER_CHAIN:
        yield _finish(item, walked, receiver_name)
        return

    context = RouteContext(sender.ae_title, receiver.ae_title, item.sop_class_uid)
    for rule_set in state.rule_sets.get(receiver_name, (receiver.active_rule_set,)):
        for decision in _decide(receiver.rule_set(rule_set), header, context):
            extended = _Walk(
                walked.hops, walked.rule_sets + ((receiver_name, rule_set),),
                walked.rules + ((receiver_name, tuple(r.name for r in decision.rules)),),
                walked.conditions + ((decision.condition,) if decision.condition else ()),
            )
            if decision.destination is None:
                yield PlannedRoute(_route(item, extended, receiver_name), extended.hops,
                                   unmatched_at=receiver_name, unmatched_rule_set=rule_set)
                continue
            coercions = [r.coerce for r in decision.rules]
            forwarded, router_made = _prepare(receiver, header, coercions, item)
            yield from _walk(topology, state, item, receiver, decision.destination, forwarded,
                             router_made, extended, depth + 1)


def _finish(item: SentItem, walked: _Walk, destination: str) -> PlannedRoute:
    return PlannedRoute(_route(item, walked, destination), walked.hops)


def _route(item: SentItem, walked: _Walk, destination: str) -> Route:
    return Route(
        source=item.modality, destination=destination,
        links=tuple(hop.link.link_name for hop in walked.hops),
        nodes=(item.modality, *[hop.receiver.name for hop in walked.hops]),
        rule_sets=walked.rule_sets, rules=walked.rules,
        condition=" and ".join(walked.conditions) or None,
    )


def _prepare(router: RouterNode, header: Dataset | None, coercions: Sequence[Coercion],
             item: SentItem) -> tuple[Dataset | None, RouterChanges]:
    changed = None if header is None else copy.deepcopy(header)

    return changed, router_changes(router, changed, coercions, item)


def _decide(rules: Sequence[Rule], header: Dataset | None,
            context: RouteContext) -> list[_Decision]:
    """Return one decision per destination, and one with destination None if nothing may match."""
    if header is not None:
        decision = route(rules, header, context)
        if not decision.destinations:
            return [_Decision(None, (), None)]
        return [_Decision(d, tuple(r for r in decision.rules if d in r.forward), None)
                for d in decision.destinations]

    return _decide_unknown(rules, context)


def _decide_unknown(rules: Sequence[Rule], context: RouteContext) -> list[_Decision]:
    """Decide with attribute values unknown: a rule that needs one may or may not match."""
    reached: dict[str, list[tuple[Rule, str | None]]] = {}
    certain = False
    for rule in rules:
        verdict, condition = _match_without_header(rule, context)
        if verdict is False:
            continue
        for destination in rule.forward:
            reached.setdefault(destination, []).append((rule, condition))
        if verdict is True:
            certain = True
            if rule.stop:
                break
    decisions = []
    for destination, matched in reached.items():
        unconditional = any(condition is None for _, condition in matched)
        conditions = " or ".join(dict.fromkeys(c for _, c in matched if c))
        decisions.append(_Decision(destination, tuple(r for r, _ in matched),
                                   None if unconditional else conditions))
    if not certain:
        decisions.append(_Decision(None, (), "no rule matches" if reached else None))

    return decisions


def _match_without_header(rule: Rule, context: RouteContext) -> tuple[bool | None, str | None]:
    """Return (True, None), (False, None), or (None, condition) when attribute values decide."""
    unknown = []
    for key, expected in rule.match.items():
        patterns = [expected] if isinstance(expected, str) else list(expected)
        if key not in _CONTEXT_KEYS:
            unknown.append(f"{key} matches {'|'.join(patterns)}")
            continue
        single = Rule.model_validate(
            {"name": rule.name, "match": {key: expected}, "forward": rule.forward})
        if not rule_matches(single, Dataset(), context):
            return False, None
    if unknown:
        return None, " and ".join(unknown)

    return True, None
