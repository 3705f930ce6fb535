"""The description of one fault on a link, and its validation.

A :class:`FaultSpec` has the fields of a Toxiproxy toxic: ``name``,
``type``, ``direction`` (Toxiproxy's JSON calls it ``stream``; both are
accepted), ``toxicity`` and ``attributes``. ``upstream`` is the
client-to-server direction and ``downstream`` the server-to-client one.
"""

from __future__ import annotations

from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

from simulator.errors import SimulatorError
from simulator.links.faults.base import FAULT_TYPES, FaultAttributes
from simulator.links.stages import Direction


class FaultError(SimulatorError, ValueError):
    """A fault cannot be added, updated or removed; the message names the link and the fault."""


class FaultSpec(BaseModel):
    """One fault on a link, as a topology, a scenario step or Toxiproxy's API describes it."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    name: str = Field(min_length=1, description="Unique name of the fault on its link.")
    type: str = Field(description="Fault type, such as latency or bandwidth.")
    direction: Direction = Field(
        default="downstream",
        validation_alias=AliasChoices("direction", "stream"),
        description="upstream: client to server; downstream: server to client.",
    )
    toxicity: float = Field(
        default=1.0, ge=0, le=1, description="Probability that a new connection gets the fault."
    )
    attributes: dict[str, Any] = Field(
        default_factory=dict, description="Attributes of the fault type, in its units."
    )


def fault_problems(spec: FaultSpec) -> list[str]:
    """Return one message per problem with the type or the attributes of ``spec``."""
    fault_type = FAULT_TYPES.get(spec.type)
    if fault_type is None:
        known = ", ".join(sorted(FAULT_TYPES))
        return [f"fault {spec.name!r}: type {spec.type!r} is not known; known types: {known}"]

    try:
        fault_type.attributes.model_validate(spec.attributes)
    except ValidationError as exc:
        model = fault_type.attributes
        return [_attribute_problem(spec, model, error) for error in exc.errors(include_url=False)]

    return []


def _attribute_problem(spec: FaultSpec, model: type[FaultAttributes], error: ErrorDetails) -> str:
    prefix = f"fault {spec.name!r} ({spec.type})"
    if not error["loc"]:
        # A check across attributes, such as slicer's size_variation < average_size.
        return f"{prefix}: {error['msg'].removeprefix('Value error, ')}"

    name = str(error["loc"][0])
    field = model.model_fields.get(name)
    if error["type"] == "extra_forbidden" or field is None:
        known = ", ".join(model.model_fields) or "no attributes"
        return f"{prefix}: attribute {name!r} is not known; {spec.type} takes {known}"

    if error["type"] == "missing":
        return f"{prefix}: attribute {name!r} is missing; give {_allowed(field)}"

    return f"{prefix}: attribute {name!r} = {error['input']!r} is invalid; give {_allowed(field)}"


def _allowed(field: FieldInfo) -> str:
    """Describe the allowed values of an attribute: 'an integer from 0 to 600000 ms'."""
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    unit = extra.get("unit", "")
    low = next((item.ge for item in field.metadata if hasattr(item, "ge")), None)
    high = next((item.le for item in field.metadata if hasattr(item, "le")), None)

    return f"an integer from {low} to {high} {unit}".rstrip()
