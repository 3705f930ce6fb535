"""The traffic the check assumes: which sender sends what, in which associations and site state.

Three modes, from the most to the least informed:

- ``scenario``: the scenario's senders, with their selections, copies,
  repeats, grouping and concurrency, as the runner builds them. The
  timeline is walked in file order, as the runner fires its steps: each
  sender gets the rule sets, link faults and firewalls in force when its
  ``start_sending`` step fires. A fault or firewall step that may fire
  while it still sends gives it a later state too, and whatever differs
  between the states is a risk.
- ``corpus``: every modality sends the corpus instances of the SOP classes
  it declares as SCU, one association per study, one at a time. Every rule
  set of every router is explored.
- ``declarations``: every modality sends one instance per (SOP class,
  transfer syntax) it declares as SCU, all in one association, with no
  attribute values known.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset

from simulator.conformance.names import describe_uid
from simulator.corpus import Corpus, CorpusInstance, group_instances
from simulator.links.faults import FaultSpec
from simulator.links.firewall import FirewallSpec
from simulator.scenario.model import Scenario, Sender, Step
from simulator.topology.model import ModalityNode, Role, RouterNode, Topology

_PREAMBLE_BYTES = 132
"""128-byte preamble and the 'DICM' prefix, which are not sent over the network."""
_META_GROUP_LENGTH_ELEMENT_BYTES = 12
_STATE_ACTIONS = {"cutover", "add_fault", "update_fault", "remove_fault", "set_firewall"}
"""Timeline actions that change what a sender meets on its routes."""


@dataclass(frozen=True, eq=False)
class SentItem:
    """One instance a sender sends; ``header`` is None when no corpus was given."""

    sender: str
    modality: str
    sop_class_uid: str
    transfer_syntax_uid: str
    source_file: str | None
    size_bytes: int | None
    dataset_bytes: int | None
    """Bytes of the data set on the wire: the file without preamble and file meta."""
    header: Dataset | None
    group: int
    specific_character_set: tuple[str, ...] = ()
    private_creators: tuple[str, ...] = ()


@dataclass
class SiteState:
    """Rule sets, faults and firewalls in force, per router and per link name."""

    rule_sets: dict[str, tuple[str | None, ...]]
    faults: dict[str, tuple[FaultSpec, ...]]
    firewalls: dict[str, FirewallSpec | None]

    def copy(self) -> SiteState:
        return SiteState(dict(self.rule_sets), dict(self.faults), dict(self.firewalls))


@dataclass
class SenderPlan:
    """One sender: its associations, settings and the site state it sends into."""

    name: str
    modality: str
    groups: list[list[SentItem]]
    state: SiteState
    concurrency: int = 1
    release: bool = True
    pause_between_s: float = 0.0
    wave: int = 0
    started: bool = True
    later_states: list[SiteState] = field(default_factory=list)
    """States after fault and firewall steps that may fire while this sender still sends."""

    @property
    def items(self) -> list[SentItem]:
        return [item for group in self.groups for item in group]


@dataclass
class SendPlan:
    """Every sender of one check, with notes on what the plan had to assume."""

    mode: str
    senders: list[SenderPlan] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def initial_state(topology: Topology, every_rule_set: bool) -> SiteState:
    """Return the state at the start: active rule sets (or all of them), and the links' own faults."""
    rule_sets: dict[str, tuple[str | None, ...]] = {}
    for name, node in topology.nodes.items():
        if not isinstance(node, RouterNode):
            continue
        if every_rule_set:
            names: list[str | None] = list(node.rule_sets)
            if node.rules or not node.rule_sets:
                names.insert(0, None)
            rule_sets[name] = tuple(names)
        else:
            rule_sets[name] = (node.active_rule_set,)
    faults = {link.link_name: tuple(link.faults) for link in topology.links}
    firewalls = {link.link_name: link.firewall for link in topology.links}

    return SiteState(rule_sets, faults, firewalls)


def plan_from_declarations(topology: Topology) -> SendPlan:
    plan = SendPlan("declarations")
    state = initial_state(topology, every_rule_set=True)
    for name, node in topology.nodes.items():
        if not isinstance(node, ModalityNode):
            continue
        items = [
            SentItem(name, name, entry.sop_class, ts, None, None, None, None, 0)
            for entry in node.sop_classes if Role.SCU in entry.roles
            for ts in node.transfer_syntaxes_for(entry.sop_class)
        ]
        plan.senders.append(SenderPlan(name, name, [items] if items else [], state))

    return plan


def plan_from_corpus(topology: Topology, instances: Sequence[CorpusInstance]) -> SendPlan:
    plan = SendPlan("corpus")
    state = initial_state(topology, every_rule_set=True)
    headers = _HeaderCache()
    declared: set[str] = set()
    for name, node in topology.nodes.items():
        if not isinstance(node, ModalityNode):
            continue
        classes = {e.sop_class for e in node.sop_classes if Role.SCU in e.roles}
        declared |= classes
        chosen = [i for i in instances if i.sop_class_uid in classes]
        groups = [[headers.item(i, name, name, index) for i in group]
                  for index, group in enumerate(group_instances(chosen, "study"))]
        plan.senders.append(SenderPlan(name, name, groups, state))
    unsent = sorted({i.sop_class_uid for i in instances} - declared)
    if unsent:
        plan.notes.append(
            "no modality declares these SOP classes of the corpus as SCU, so the check "
            f"sends none of their instances: {', '.join(describe_uid(u) for u in unsent)}"
        )

    return plan


def plan_from_scenario(topology: Topology, scenario: Scenario,
                       instances: Sequence[CorpusInstance]) -> SendPlan:
    """Build the senders as the runner does, and give each the site state when it starts."""
    plan = SendPlan("scenario")
    corpus = Corpus(root=Path("."), instances=list(instances))
    headers = _HeaderCache()
    seen: set[tuple[int, str]] = set()
    state = initial_state(topology, every_rule_set=False)
    for sender in scenario.senders:
        groups = _scenario_groups(corpus, scenario, sender, seen, headers)
        plan.senders.append(SenderPlan(
            sender.sender_name, sender.modality, groups, state,
            concurrency=sender.concurrency, release=sender.release,
            pause_between_s=sender.pause_between_s, started=False,
        ))
    _walk_timeline(scenario, plan, state)

    return plan


def _scenario_groups(corpus: Corpus, scenario: Scenario, sender: Sender,
                     seen: set[tuple[int, str]], headers: _HeaderCache) -> list[list[SentItem]]:
    selection = sender.select
    selected = corpus.select(
        list(selection.glob) if selection.glob else None,
        list(selection.sop_class) if selection.sop_class else None,
        list(selection.modality) if selection.modality else None,
    )
    groups: list[list[SentItem]] = []
    for repeat_index in range(scenario.repeat):
        copy_index = sender.copy_number * scenario.repeat + repeat_index
        # The runner skips an instance whose SOP Instance UID another sender
        # already sends; copies keep sharing a UID when their originals do.
        unique = []
        for instance in selected:
            key = (copy_index, instance.sop_instance_uid)
            if key not in seen:
                seen.add(key)
                unique.append(instance)
        for group in group_instances(unique, sender.group_by):
            index = len(groups)
            groups.append([headers.item(i, sender.sender_name, sender.modality, index)
                           for i in group])

    return groups


def _walk_timeline(scenario: Scenario, plan: SendPlan, state: SiteState) -> None:
    steps = list(scenario.timeline)
    if not any(step.action == "start_sending" for step in steps):
        steps.insert(0, Step.model_validate({"action": "start_sending", "at_s": 0}))
    by_name = {s.name: s for s in plan.senders}
    wave = 0
    started: list[str] = []
    for index, step in enumerate(steps):
        waits_for_idle = step.after is not None and step.after.idle is True
        if waits_for_idle:
            started = []  # every sender started so far has finished
        if step.action == "start_sending":
            wave += 1 if waits_for_idle else 0
            for name in step.senders or list(by_name):
                sender = by_name[name]
                if sender.started:
                    continue
                sender.state = state.copy()
                sender.wave = wave
                sender.started = True
                started.append(name)
            continue
        _apply_step(step, state)
        if not started or waits_for_idle or step.action not in _STATE_ACTIONS:
            continue
        if step.action == "cutover":
            plan.notes.append(
                f"timeline step {index} (cutover) may fire while {', '.join(started)} still "
                "send; the check routes their instances with the rule set they start with"
            )
            continue
        for name in started:
            by_name[name].later_states.append(state.copy())
    for sender in plan.senders:
        if not sender.started:
            plan.notes.append(f"sender {sender.name} is never started, so its instances are "
                              "never attempted")


def _apply_step(step: Step, state: SiteState) -> None:
    if step.action == "cutover" and step.router is not None:
        state.rule_sets[step.router] = (step.rule_set,)
    elif step.action == "add_fault" and step.link is not None:
        spec = FaultSpec.model_validate(step.fault)
        state.faults[step.link] = (*state.faults.get(step.link, ()), spec)
    elif step.action == "update_fault" and step.link is not None:
        state.faults[step.link] = tuple(
            _updated(spec, step) if spec.name == step.name else spec
            for spec in state.faults.get(step.link, ())
        )
    elif step.action == "remove_fault" and step.link is not None:
        state.faults[step.link] = tuple(
            spec for spec in state.faults.get(step.link, ()) if spec.name != step.name
        )
    elif step.action == "set_firewall" and step.link is not None:
        state.firewalls[step.link] = (
            None if step.firewall is None else FirewallSpec.model_validate(step.firewall)
        )


def _updated(spec: FaultSpec, step: Step) -> FaultSpec:
    changes: dict[str, Any] = {}
    if step.attributes is not None:
        changes["attributes"] = {**spec.attributes, **step.attributes}
    if step.toxicity is not None:
        changes["toxicity"] = step.toxicity

    return spec.model_copy(update=changes)


class _HeaderCache:
    """Headers read once per file, shared by every copy and sender that sends the file."""

    def __init__(self) -> None:
        self._headers: dict[Path, tuple[Dataset | None, int | None]] = {}

    def item(self, instance: CorpusInstance, sender: str, modality: str, group: int) -> SentItem:
        header, dataset_bytes = self._read(instance)

        return SentItem(
            sender=sender, modality=modality, sop_class_uid=instance.sop_class_uid,
            transfer_syntax_uid=instance.transfer_syntax_uid, source_file=instance.relpath,
            size_bytes=instance.size_bytes, dataset_bytes=dataset_bytes, header=header,
            group=group, specific_character_set=instance.specific_character_set,
            private_creators=instance.private_creators,
        )

    def _read(self, instance: CorpusInstance) -> tuple[Dataset | None, int | None]:
        cached = self._headers.get(instance.path)
        if cached is None:
            cached = _read_header(instance)
            self._headers[instance.path] = cached

        return cached


def _read_header(instance: CorpusInstance) -> tuple[Dataset | None, int | None]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            header = dcmread(instance.path, stop_before_pixels=True, defer_size="8 KB",
                             force=True)
    except Exception:  # noqa: BLE001 - Corpus.load read it once; a changed file routes as unknown
        return None, instance.size_bytes
    meta_length = header.file_meta.get("FileMetaInformationGroupLength")
    if meta_length is None:
        return header, instance.size_bytes
    overhead = _PREAMBLE_BYTES + _META_GROUP_LENGTH_ELEMENT_BYTES + int(meta_length)

    return header, max(0, instance.size_bytes - overhead)
