"""The scenario: what is sent, by whom, when, and what must hold afterwards."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from simulator.conformance.names import UnknownNameError, resolve_sop_class


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


def _resolve_sop_classes(value: tuple[str, ...] | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    resolved = []
    for item in value:
        try:
            resolved.append(resolve_sop_class(item))
        except UnknownNameError as exc:
            raise ValueError(str(exc)) from exc
    return tuple(resolved)


class Selection(_Strict):
    """Which corpus files a sender takes; every filter given must match."""

    glob: tuple[str, ...] | None = Field(
        None, description="Shell-style patterns on the path relative to the corpus root."
    )
    sop_class: tuple[str, ...] | None = None
    modality: tuple[str, ...] | None = Field(None, description="Values of (0008,0060) Modality.")

    _lists = field_validator("glob", "sop_class", "modality", mode="before")(_as_list)

    @field_validator("sop_class")
    @classmethod
    def _resolve(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        return _resolve_sop_classes(value)


class Sender(_Strict):
    """One modality's share of the corpus and how it groups it into associations."""

    modality: str = Field(..., description="Name of a modality node in the topology.")
    name: str | None = Field(
        None, description="Name for timeline steps; defaults to the modality's name."
    )
    copy: int = Field(
        0, ge=0,
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

    action: Literal["start_sending", "cutover"]
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
        return self


class RouteFilter(_Strict):
    """Selects ledger rows; every field given must match."""

    source: str | None = Field(None, description="Sending modality node.")
    to: str | None = Field(None, description="Final destination node.")
    sop_class: tuple[str, ...] | None = None

    _lists = field_validator("sop_class", mode="before")(_as_list)

    @field_validator("sop_class")
    @classmethod
    def _resolve(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        return _resolve_sop_classes(value)


class NoFailures(_Strict):
    link: str | None = Field(None, description="Link name such as 'ct->router'; any link when omitted.")
    node: str | None = None


class ExpectedFailure(_Strict):
    kind: str = Field(..., description="Failure kind, see docs/failures.md.")
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
    senders: tuple[Sender, ...] = Field(..., min_length=1)
    timeline: tuple[Step, ...] = ()
    expectations: tuple[Expectation, ...] = ()

    def cross_check(self, topology: Any) -> list[tuple[tuple[str | int, ...], str]]:
        """Return problems between this scenario and a topology as (location, message)."""
        from simulator.topology.model import NodeKind, RouterNode

        problems: list[tuple[tuple[str | int, ...], str]] = []
        nodes = topology.nodes
        link_names = {lk.link_name for lk in topology.links}
        names = [s.sender_name for s in self.senders]
        for i, sender in enumerate(self.senders):
            if names.count(sender.sender_name) > 1:
                problems.append((("senders", i),
                                 f"two senders are named {sender.sender_name!r}; give each a "
                                 "distinct name"))
            node = nodes.get(sender.modality)
            if node is None or node.kind != NodeKind.MODALITY:
                problems.append((("senders", i, "modality"),
                                 f"{sender.modality!r} is not a modality node of the topology"))
        for i, step in enumerate(self.timeline):
            if step.action == "cutover":
                router = nodes.get(step.router)
                if not isinstance(router, RouterNode):
                    problems.append((("timeline", i, "router"),
                                     f"{step.router!r} is not a router node of the topology"))
                elif step.rule_set not in router.rule_sets:
                    problems.append((("timeline", i, "rule_set"),
                                     f"router {step.router} has no rule set {step.rule_set!r} "
                                     f"(it has: {', '.join(sorted(router.rule_sets)) or 'none'})"))
            for name in step.senders or ():
                if name not in names:
                    problems.append((("timeline", i, "senders"),
                                     f"{name!r} is not one of the scenario's senders "
                                     f"({', '.join(names)})"))
        for i, expectation in enumerate(self.expectations):
            for key in ("delivered", "not_delivered"):
                flt = getattr(expectation, key)
                if flt is None:
                    continue
                for field in ("source", "to"):
                    name = getattr(flt, field)
                    if name is not None and name not in nodes:
                        problems.append((("expectations", i, key, field),
                                         f"node {name!r} does not exist in the topology"))
            for key in ("no_failures", "failure"):
                value = getattr(expectation, key)
                link = getattr(value, "link", None) or getattr(value, "hop", None)
                if value is not None and link is not None and link not in link_names:
                    problems.append((("expectations", i, key),
                                     f"link {link!r} does not exist (links: {', '.join(sorted(link_names))})"))
        return problems
