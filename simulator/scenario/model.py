"""The scenario: what is sent, by whom, when, and what must hold afterwards."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from simulator.conformance.names import describe_uid
from simulator.recording.failures import FailureKind
from simulator.topology.model import SopClassName, TransferSyntaxName


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


# SopClassName and TransferSyntaxName validate list items one by one, so an
# error names the index of the bad item; they come from the topology model.
# A single string is shorthand for a list of one.
_ONE_OR_MORE = str | list[str] | None


class Selection(_Strict):
    """The corpus files a sender takes: every filter that is set must match."""

    glob: tuple[str, ...] | None = Field(
        None, description="Shell-style patterns on the path relative to the corpus root."
    )
    sop_class: tuple[SopClassName, ...] | None = None
    modality: tuple[str, ...] | None = Field(None, description="Values of (0008,0060) Modality.")

    _lists = field_validator(
        "glob", "sop_class", "modality", mode="before", json_schema_input_type=_ONE_OR_MORE
    )(_as_list)


class Sender(_Strict):
    """One modality's share of the corpus and how it groups it into associations."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    modality: str = Field(..., description="Name of a modality node in the topology.")
    name: str | None = Field(
        None, description="Name for timeline steps; defaults to the modality's name."
    )
    copy_number: int = Field(
        0, ge=0, alias="copy",
        description="0 sends the corpus files as they are; N sends copy N, with new UIDs, "
        "so one modality can send the same files again in a later wave.",
    )
    select: Selection = Field(default_factory=Selection)
    group_by: Literal["study", "series", "instance"] | int = Field(
        "study", description="One association per study, per series, per instance, or per N instances."
    )
    concurrency: int = Field(1, ge=1, description="Associations this modality opens at once.")
    pause_between_s: float = Field(
        0, ge=0, description="Idle time between two C-STOREs of one association, in seconds."
    )
    release: bool = Field(
        True,
        description="false keeps each association open after its last C-STORE, with no "
        "A-RELEASE and no FIN, as a sender that goes silent does.",
    )

    @property
    def sender_name(self) -> str:
        return self.name or self.modality

    @field_validator("group_by")
    @classmethod
    def _positive(cls, value: str | int) -> str | int:
        if isinstance(value, int) and value < 1:
            raise ValueError("group_by as a number of instances must be at least 1")
        return value


class After(_Strict):
    """An event that triggers a step: counts reached so far in the run."""

    sent: int | None = Field(None, ge=0, description="Instances sent by modalities (any outcome).")
    delivered: int | None = Field(None, ge=0, description="Instances delivered to final destinations.")
    idle: bool | None = Field(
        None, description="Every started sender has finished and no router has work left."
    )
    association_on: str | None = Field(
        None, description="A new connection opened on this link (name such as 'ct->router')."
    )

    @model_validator(mode="after")
    def _one(self) -> After:
        given = [v for v in (self.sent, self.delivered, self.idle, self.association_on)
                 if v is not None]
        if len(given) != 1 or self.idle is False:
            raise ValueError("give exactly one of sent, delivered, idle: true or association_on")
        return self


StepAction = Literal[
    "start_sending", "cutover", "hold", "add_fault", "update_fault", "remove_fault", "set_firewall",
    "retrieve",
]

_STEP_FIELDS: dict[str, tuple[set[str], set[str]]] = {
    # action: (required fields, optional fields) besides action, at_s and after
    "start_sending": (set(), {"senders"}),
    "cutover": ({"router", "rule_set"}, set()),
    "hold": (set(), set()),
    "add_fault": ({"link", "fault"}, set()),
    "update_fault": ({"link", "name"}, {"attributes", "toxicity"}),
    "remove_fault": ({"link", "name"}, set()),
    "set_firewall": ({"link"}, {"firewall"}),
    "retrieve": ({"viewer", "from_node", "service"}, {"model", "level", "keys", "move_destination"}),
}

_FIELD_LABELS = {"from_node": "from"}
"""Step fields whose YAML key differs from the Python name."""


class Step(_Strict):
    """A timeline step, at a time after the start or after an event."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    action: StepAction = Field(
        ..., description="start_sending starts senders; cutover switches a router's rule set; "
        "hold keeps the site running until the step is due, for real SCUs sending from outside; "
        "add_fault, update_fault and remove_fault change a link's faults; set_firewall "
        "replaces a link's firewall (none removes it); retrieve makes a viewer or PACS query "
        "another node (C-FIND) and retrieve what matches (C-MOVE or C-GET)."
    )
    at_s: float | None = Field(None, ge=0, description="Seconds after the run starts.")
    after: After | None = None
    senders: tuple[str, ...] | None = Field(
        None, description="start_sending: names of the senders to start; all when omitted."
    )
    router: str | None = Field(None, description="cutover: the router whose rule set changes.")
    rule_set: str | None = Field(None, description="cutover: the rule set to switch to.")
    link: str | None = Field(None, description="Fault and firewall steps: the link's name.")
    fault: dict[str, Any] | None = Field(
        None, description="add_fault: name, type, direction, toxicity, attributes, as in a topology link."
    )
    name: str | None = Field(None, description="update_fault, remove_fault: the fault's name.")
    attributes: dict[str, Any] | None = Field(None, description="update_fault: new attributes.")
    toxicity: float | None = Field(None, ge=0, le=1, description="update_fault: new toxicity.")
    firewall: dict[str, Any] | None = Field(
        None, description="set_firewall: the firewall as in a topology link; omitted removes it."
    )
    viewer: str | None = Field(
        None, description="retrieve: the node that queries and retrieves (a viewer or PACS)."
    )
    from_node: str | None = Field(
        None, alias="from", description="retrieve: the node queried, the Query/Retrieve SCP."
    )
    service: Literal["find", "move", "get"] | None = Field(
        None, description="retrieve: find only queries; move and get also retrieve the matches."
    )
    model: Literal["study", "patient"] | None = Field(
        None, description="retrieve: Study Root (default) or Patient Root information model."
    )
    level: Literal["PATIENT", "STUDY", "SERIES", "IMAGE"] | None = Field(
        None, description="retrieve: the query/retrieve level; STUDY when omitted."
    )
    keys: dict[str, str | list[str]] | None = Field(
        None, description="retrieve: matching keys by attribute keyword, at the level or above "
        "(wildcards * and ?, date ranges such as 20240101-20241231, a list for several UIDs); "
        "every entity of the level when omitted."
    )
    move_destination: str | None = Field(
        None, description="retrieve with service move: the Move Destination AE title; "
        "the viewer's own AE title when omitted."
    )

    @field_validator("keys", mode="before")
    @classmethod
    def _key_values_as_text(cls, value: Any) -> Any:
        # YAML reads an unquoted date such as 20240305 as a number; DICOM values are text.
        if not isinstance(value, dict):
            return value
        return {key: [str(v) for v in item] if isinstance(item, list)
                else str(item) if isinstance(item, int | float) else item
                for key, item in value.items()}

    @model_validator(mode="after")
    def _check(self) -> Step:
        if self.at_s is not None and self.after is not None:
            raise ValueError("give at_s or after, not both")
        if self.action == "hold" and self.at_s is None and self.after is None:
            raise ValueError("a hold step needs at_s or after: it keeps the site running until then")
        required, optional = _STEP_FIELDS[self.action]
        given = {f for f in _STEP_FIELDS_ALL if getattr(self, f) is not None}
        missing = sorted(_FIELD_LABELS.get(f, f) for f in required - given)
        if missing:
            raise ValueError(f"a {self.action} step needs {' and '.join(missing)}")
        extra = sorted(_FIELD_LABELS.get(f, f) for f in given - required - optional)
        if extra:
            raise ValueError(
                f"{', '.join(extra)} {'does' if len(extra) == 1 else 'do'} not apply to "
                f"{self.action} steps; remove {'it' if len(extra) == 1 else 'them'}"
            )
        if self.action == "retrieve":
            _check_retrieve_fields(self)
        return self


_STEP_FIELDS_ALL = {"senders", "router", "rule_set", "link", "fault", "name", "attributes",
                    "toxicity", "firewall", "viewer", "from_node", "service", "model", "level",
                    "keys", "move_destination"}


def _check_retrieve_fields(step: Step) -> None:
    """Check a retrieve step on its own: the level exists in the model, the keys belong to it."""
    from simulator.nodes.qr_index import MODELS, key_problem

    if step.move_destination is not None and step.service != "move":
        raise ValueError("move_destination applies only to service: move; remove it")
    model = MODELS[step.model or "study"]
    level = step.level or "STUDY"
    if level not in model.levels:
        raise ValueError(f"level {level} is not a level of the {model.label} model "
                         f"({', '.join(model.levels)}); set model: patient or another level")
    for keyword in step.keys or {}:
        problem = key_problem(model, level, keyword)
        if problem is not None:
            raise ValueError(f"keys: {problem}")


class RouteFilter(_Strict):
    """Selects ledger rows; every field given must match."""

    source: str | None = Field(None, description="Sending modality node.")
    to: str | None = Field(None, description="Final destination node.")
    sop_class: tuple[SopClassName, ...] | None = None
    transfer_syntax: tuple[TransferSyntaxName, ...] | None = Field(
        None, description="Transfer syntax of the instance as the source sent it."
    )

    _lists = field_validator(
        "sop_class", "transfer_syntax", mode="before", json_schema_input_type=_ONE_OR_MORE
    )(_as_list)


class NoFailures(_Strict):
    link: str | None = Field(None, description="Link name such as 'ct->router'; any link when omitted.")
    node: str | None = None


class ExpectedFailure(_Strict):
    kind: FailureKind = Field(..., description="Failure kind, see docs/failures.md.")
    hop: str | None = Field(None, description="Link blamed for it.")
    min_count: int = Field(1, ge=1)


class Expectation(_Strict):
    """One thing that must hold at the end of the run; give exactly one check."""

    name: str | None = None
    delivered: RouteFilter | None = Field(
        None, description="Every matching (instance, destination) row is delivered."
    )
    not_delivered: RouteFilter | None = Field(
        None, description="No matching row is delivered."
    )
    no_failures: NoFailures | None = None
    failure: ExpectedFailure | None = None

    @model_validator(mode="after")
    def _one(self) -> Expectation:
        given = [n for n in ("delivered", "not_delivered", "no_failures", "failure")
                 if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError(
                "an expectation needs exactly one of delivered, not_delivered, no_failures, failure"
            )
        return self

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        for key in ("delivered", "not_delivered", "no_failures", "failure"):
            value = getattr(self, key)
            if value is not None:
                fields = ", ".join(f"{k}={_label_value(v)}"
                                   for k, v in value.model_dump(exclude_none=True).items())
                return f"{key}({fields})"
        return "expectation"


class Scenario(_Strict):
    name: str
    description: str = ""
    corpus: str = Field(
        "bundled", description="'bundled', or a directory (relative to this file) of DICOM files."
    )
    seed: int = 0
    repeat: int = Field(1, ge=1, description="Times the selection is replayed, each with new UIDs.")
    timeout_s: float = Field(600, gt=0, description="Limit for the whole run.")
    timeline: tuple[Step, ...] = ()
    senders: tuple[Sender, ...] = Field(
        (), validate_default=True,
        description="Modalities the simulator drives; real SCUs outside need a hold step.",
    )
    expectations: tuple[Expectation, ...] = ()

    @field_validator("senders")
    @classmethod
    def _something_sends(cls, value: tuple[Sender, ...], info: ValidationInfo) -> tuple[Sender, ...]:
        # timeline is declared before senders, so it is validated first.
        timeline = info.data.get("timeline", ())
        if not value and not any(step.action == "hold" for step in timeline):
            raise ValueError(
                "at least 1 item is needed, or a hold step that keeps the site running "
                "for SCUs outside the simulator"
            )
        return value

    def cross_check(self, topology: Any) -> list[tuple[tuple[str | int, ...], str]]:
        """Return problems between this scenario and a topology as (location, message)."""
        return (self._check_senders(topology) + self._check_timeline(topology)
                + self._check_expectations(topology))

    def _check_senders(self, topology: Any) -> list[tuple[tuple[str | int, ...], str]]:
        from simulator.topology.model import NodeKind

        problems: list[tuple[tuple[str | int, ...], str]] = []
        names = [s.sender_name for s in self.senders]
        modalities = sorted(
            name for name, node in topology.nodes.items() if node.kind == NodeKind.MODALITY
        )
        for i, sender in enumerate(self.senders):
            first = names.index(sender.sender_name)
            if first < i:
                problems.append((("senders", i),
                                 f"senders[{first}] is already named {sender.sender_name!r}; "
                                 "give each sender a distinct name"))
            if sender.modality not in modalities:
                problems.append((("senders", i, "modality"),
                                 f"{sender.modality!r} is not a modality node of the topology "
                                 f"(modalities: {', '.join(modalities) or 'none'})"))
        return problems

    def _check_timeline(self, topology: Any) -> list[tuple[tuple[str | int, ...], str]]:
        problems: list[tuple[tuple[str | int, ...], str]] = []
        names = [s.sender_name for s in self.senders]
        for i, step in enumerate(self.timeline):
            if step.action == "cutover":
                problems += _check_cutover(i, step, topology)
            if step.action == "retrieve":
                problems += _check_retrieve(i, step, topology)
            problems += _check_link_step(i, step, topology)
            for index, name in enumerate(step.senders or ()):
                if name not in names:
                    problems.append((("timeline", i, "senders", index),
                                     f"{name!r} is not one of the scenario's senders "
                                     f"({', '.join(names)})"))
        return problems

    def _check_expectations(self, topology: Any) -> list[tuple[tuple[str | int, ...], str]]:
        problems: list[tuple[tuple[str | int, ...], str]] = []
        node_list = ", ".join(sorted(topology.nodes))
        link_names = {lk.link_name for lk in topology.links}
        for i, expectation in enumerate(self.expectations):
            for key, field in (("delivered", "source"), ("delivered", "to"),
                               ("not_delivered", "source"), ("not_delivered", "to"),
                               ("no_failures", "node")):
                name = getattr(getattr(expectation, key), field, None)
                if name is not None and name not in topology.nodes:
                    problems.append((("expectations", i, key, field),
                                     f"node {name!r} does not exist in the topology "
                                     f"(nodes: {node_list})"))
            for key, field in (("no_failures", "link"), ("failure", "hop")):
                link = getattr(getattr(expectation, key), field, None)
                if link is not None and link not in link_names:
                    problems.append((("expectations", i, key, field),
                                     f"link {link!r} does not exist "
                                     f"(links: {', '.join(sorted(link_names))})"))
        return problems


def _check_link_step(index: int, step: Step, topology: Any) -> list[tuple[tuple[str | int, ...], str]]:
    """Check a fault or firewall step: the link exists, and the fault or firewall is valid."""
    problems: list[tuple[tuple[str | int, ...], str]] = []
    links = sorted(lk.link_name for lk in topology.links)
    if step.after is not None and step.after.association_on is not None \
            and step.after.association_on not in links:
        problems.append((("timeline", index, "after", "association_on"),
                         f"link {step.after.association_on!r} does not exist (links: {', '.join(links)})"))
    if step.link is None:
        return problems
    if step.link not in links:
        problems.append((("timeline", index, "link"),
                         f"link {step.link!r} does not exist (links: {', '.join(links)})"))
    from simulator.links.faults import FaultSpec, fault_problems
    from simulator.links.firewall import FirewallSpec

    if step.fault is not None:
        try:
            spec = FaultSpec.model_validate(step.fault)
        except ValueError as exc:
            problems.append((("timeline", index, "fault"), f"invalid fault: {_first_error(exc)}"))
        else:
            problems += [(("timeline", index, "fault"), p) for p in fault_problems(spec)]
    if step.firewall is not None:
        try:
            FirewallSpec.model_validate(step.firewall)
        except ValueError as exc:
            problems.append((("timeline", index, "firewall"),
                             f"invalid firewall: {_first_error(exc)}"))

    return problems


def _first_error(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    if errors is None:
        return str(exc)
    first = errors(include_url=False)[0]
    where = ".".join(str(p) for p in first["loc"])

    return f"{where}: {first['msg']}" if where else str(first["msg"])


def _check_retrieve(index: int, step: Step, topology: Any) -> list[tuple[tuple[str | int, ...], str]]:
    """Check a retrieve step against the topology: both nodes, the link, the viewer's SOP classes."""
    from simulator.nodes.qr_index import MODELS
    from simulator.topology.model import NodeKind, Role

    where: tuple[str | int, ...] = ("timeline", index)
    nodes = topology.nodes
    viewer = nodes.get(step.viewer or "")
    if viewer is None or viewer.kind not in (NodeKind.VIEWER, NodeKind.PACS):
        storage = sorted(n for n, d in nodes.items() if d.kind in (NodeKind.VIEWER, NodeKind.PACS))
        message = (f"{step.viewer!r} is not a viewer or PACS node of the topology "
                   f"(those nodes: {', '.join(storage) or 'none'})")
        return [((*where, "viewer"), message)]
    if step.from_node not in nodes:
        message = (f"node {step.from_node!r} does not exist in the topology "
                   f"(nodes: {', '.join(sorted(nodes))})")
        return [((*where, "from"), message)]
    problems: list[tuple[tuple[str | int, ...], str]] = []
    if step.from_node not in topology.link_targets(viewer.name):
        message = (f"no link goes from {viewer.name} to {step.from_node}; add a link "
                   f"{viewer.name} -> {step.from_node} for the query/retrieve association")
        problems.append(((*where, "from"), message))
    model = MODELS[step.model or "study"]
    needed = [model.find] + ([getattr(model, str(step.service))] if step.service != "find" else [])
    for sop_class in needed:
        if not viewer.supports(sop_class, Role.SCU):
            message = (f"{viewer.name} does not declare {describe_uid(sop_class)} with the "
                       "SCU role; add it to its sop_classes")
            problems.append(((*where, "viewer"), message))

    return problems


def _check_cutover(
    index: int, step: Step, topology: Any
) -> list[tuple[tuple[str | int, ...], str]]:
    from simulator.topology.model import RouterNode

    routers = {n: node for n, node in topology.nodes.items() if isinstance(node, RouterNode)}
    router = routers.get(step.router or "")
    if router is None:
        return [(("timeline", index, "router"),
                 f"{step.router!r} is not a router node of the topology "
                 f"(routers: {', '.join(sorted(routers)) or 'none'})")]
    if step.rule_set not in router.rule_sets:
        return [(("timeline", index, "rule_set"),
                 f"router {step.router} has no rule set {step.rule_set!r} "
                 f"(it has: {', '.join(sorted(router.rule_sets)) or 'none'})")]
    return []


def _label_value(value: Any) -> str:
    """Show a filter value as a person wrote it: keywords for UIDs, lists without quotes."""
    if isinstance(value, list | tuple):
        return "|".join(_label_value(v) for v in value)
    if isinstance(value, str) and value[:1].isdigit():
        return describe_uid(value)
    return str(value)
