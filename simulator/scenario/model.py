"""The scenario: what is sent, by whom, when, and what must hold afterwards."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from simulator.conformance.names import UnknownNameError, resolve_sop_class
from simulator.recording.failures import FailureKind


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


def _resolve_sop_class(value: str) -> str:
    try:
        return resolve_sop_class(value)
    except UnknownNameError as exc:
        raise ValueError(str(exc)) from exc


# Validated one by one, so an error names the index of the bad item.
SopClassName = Annotated[str, AfterValidator(_resolve_sop_class)]
# A single string is shorthand for a list of one.
_ONE_OR_MORE = str | list[str] | None


class Selection(_Strict):
    """Which corpus files a sender takes; every filter given must match."""

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

    @model_validator(mode="after")
    def _one(self) -> After:
        given = [v for v in (self.sent, self.delivered, self.idle) if v is not None]
        if len(given) != 1 or self.idle is False:
            raise ValueError("give exactly one of sent, delivered or idle: true")
        return self


class Step(_Strict):
    """A timeline step, at a time after the start or after an event."""

    action: Literal["start_sending", "cutover", "hold"] = Field(
        ..., description="start_sending starts senders; cutover switches a router's rule set; "
        "hold keeps the site running until the step is due, for real SCUs sending from outside."
    )
    at_s: float | None = Field(None, ge=0, description="Seconds after the run starts.")
    after: After | None = None
    senders: tuple[str, ...] | None = Field(
        None, description="start_sending: names of the senders to start; all when omitted."
    )
    router: str | None = Field(None, description="cutover: the router whose rule set changes.")
    rule_set: str | None = Field(None, description="cutover: the rule set to switch to.")

    @model_validator(mode="after")
    def _check(self) -> Step:
        if self.at_s is not None and self.after is not None:
            raise ValueError("give at_s or after, not both")
        if self.action == "cutover" and (self.router is None or self.rule_set is None):
            raise ValueError("a cutover step needs router and rule_set")
        if self.action == "hold" and self.at_s is None and self.after is None:
            raise ValueError("a hold step needs at_s or after: it keeps the site running until then")
        if self.action == "cutover" and self.senders is not None:
            raise ValueError("senders applies only to start_sending steps; remove it")
        names_cutover = self.router is not None or self.rule_set is not None
        if self.action == "start_sending" and names_cutover:
            raise ValueError("router and rule_set apply only to cutover steps; remove them")
        return self


class RouteFilter(_Strict):
    """Selects ledger rows; every field given must match."""

    source: str | None = Field(None, description="Sending modality node.")
    to: str | None = Field(None, description="Final destination node.")
    sop_class: tuple[SopClassName, ...] | None = None

    _lists = field_validator("sop_class", mode="before", json_schema_input_type=_ONE_OR_MORE)(
        _as_list
    )


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
                fields = ", ".join(f"{k}={v}" for k, v in value.model_dump(exclude_none=True).items())
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
    senders: tuple[Sender, ...] = Field(
        (), description="Modalities the simulator drives; real SCUs outside need a hold step."
    )
    timeline: tuple[Step, ...] = ()
    expectations: tuple[Expectation, ...] = ()

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
