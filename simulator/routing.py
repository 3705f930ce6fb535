"""Routing rules: which destinations an instance goes to, and what changes on the way.

Pure functions over a header-only dataset, so the runner can derive the
expected deliveries for the ledger with the same code the router runs.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.tag import BaseTag, Tag

from simulator.topology.model import Coercion, Rule

_TAG_TEXT = re.compile(r"^\(?\s*([0-9A-Fa-f]{4})\s*,\s*([0-9A-Fa-f]{4})\s*\)?$")
_ROUTING_KEYS = {"calling_ae", "called_ae", "sop_class"}


def parse_tag(text: str) -> BaseTag:
    """Return the tag for a keyword or ``(gggg,eeee)``; raise ValueError naming the text."""
    match = _TAG_TEXT.match(text)
    if match:
        return Tag(int(match.group(1), 16), int(match.group(2), 16))
    tag = tag_for_keyword(text)
    if tag is None:
        raise ValueError(f"{text!r} is neither a DICOM keyword nor a tag written as (gggg,eeee)")

    return Tag(tag)


def check_rule_keys(rule: Rule) -> list[str]:
    """Return a message for every match key, set key or remove entry that is not valid."""
    problems = []
    for key in rule.match:
        if key not in _ROUTING_KEYS:
            try:
                parse_tag(key)
            except ValueError as exc:
                problems.append(f"match: {exc}")
    for key in rule.coerce.set:
        try:
            parse_tag(key)
        except ValueError as exc:
            problems.append(f"coerce.set: {exc}")
    for entry in rule.coerce.remove:
        if entry.startswith("private:"):
            continue
        try:
            parse_tag(entry)
        except ValueError as exc:
            problems.append(f"coerce.remove: {exc}")

    return problems


@dataclass(frozen=True)
class RouteContext:
    """What a rule can match on besides the dataset: the association it arrived on."""

    calling_ae: str
    called_ae: str
    sop_class_uid: str


def _value_text(dataset: Dataset, key: str) -> list[str]:
    tag = parse_tag(key)
    if tag not in dataset:
        return []
    value = dataset[tag].value
    if isinstance(value, list | tuple):
        return [str(v) for v in value]
    if isinstance(value, bytes):
        return [value.decode("latin-1", errors="replace").rstrip("\x00 ")]

    return [str(value)]


def rule_matches(rule: Rule, dataset: Dataset, context: RouteContext) -> bool:
    for key, expected in rule.match.items():
        patterns = [expected] if isinstance(expected, str) else list(expected)
        if key == "calling_ae":
            actual = [context.calling_ae]
        elif key == "called_ae":
            actual = [context.called_ae]
        elif key == "sop_class":
            actual = [context.sop_class_uid]
            patterns = [_sop_class_pattern(p) for p in patterns]
        else:
            actual = _value_text(dataset, key)
        if not any(fnmatch.fnmatchcase(a, p) for a in actual for p in patterns):
            return False

    return True


def _sop_class_pattern(pattern: str) -> str:
    from simulator.conformance.names import UnknownNameError, resolve_sop_class

    if any(c in pattern for c in "*?["):
        return pattern
    try:
        return resolve_sop_class(pattern)
    except UnknownNameError:
        return pattern


@dataclass(frozen=True)
class RouteDecision:
    """The rules that matched and the destinations they forward to, in order."""

    rules: tuple[Rule, ...]
    destinations: tuple[str, ...]

    def coercions_for(self, destination: str) -> list[Coercion]:
        return [r.coerce for r in self.rules if destination in r.forward]


def route(rules: Sequence[Rule], dataset: Dataset, context: RouteContext) -> RouteDecision:
    """Apply every matching rule in order until one with ``stop`` matches."""
    matched: list[Rule] = []
    for rule in rules:
        if rule_matches(rule, dataset, context):
            matched.append(rule)
            if rule.stop:
                break
    destinations = tuple(dict.fromkeys(d for r in matched for d in r.forward))

    return RouteDecision(tuple(matched), destinations)


def apply_coercion(dataset: Dataset, coercion: Coercion) -> list[dict[str, Any]]:
    """Change ``dataset`` in place; return what changed, for the run log."""
    changes: list[dict[str, Any]] = []
    for key, value in coercion.set.items():
        tag = parse_tag(key)
        old = str(dataset[tag].value) if tag in dataset else None
        if tag in dataset:
            dataset[tag].value = value
        else:
            dataset.add_new(tag, dictionary_VR(tag), value)
        changes.append({"action": "set", "tag": _tag_text(tag), "had_value": old is not None})
    for entry in coercion.remove:
        if entry.startswith("private:"):
            changes += remove_private_block(dataset, entry.removeprefix("private:"))
            continue
        tag = parse_tag(entry)
        if tag in dataset:
            del dataset[tag]
            changes.append({"action": "remove", "tag": _tag_text(tag)})

    return changes


def remove_private_block(dataset: Dataset, creator: str) -> list[dict[str, Any]]:
    """Remove every element of the private block owned by ``creator``, the creator included."""
    changes = []
    for element in list(dataset):
        tag = element.tag
        if not tag.is_private or not tag.is_private_creator:
            continue
        if str(element.value).strip() != creator:
            continue
        block = tag.element
        for inner in list(dataset.group_dataset(tag.group)):
            if inner.tag.element >> 8 == block:
                del dataset[inner.tag]
        del dataset[tag]
        changes.append({"action": "remove-private-block", "creator": creator,
                        "group": f"{tag.group:04X}"})

    return changes


def private_creators(dataset: Dataset) -> list[str]:
    return [str(e.value).strip() for e in dataset if e.tag.is_private and e.tag.is_private_creator]


def _tag_text(tag: BaseTag) -> str:
    return f"({tag.group:04X},{tag.element:04X})"
