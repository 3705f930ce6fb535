"""Routing rules: which destinations an instance goes to, and what changes on the way.

Pure functions over a header-only dataset, so the runner can derive the
expected deliveries for the ledger with the same code the router runs.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_dict, tag_for_keyword
from pydicom.dataset import Dataset
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


_TAG_HALF = re.compile(r"^(\(\s*[0-9A-Fa-f]{4}|[0-9A-Fa-f]{4}\s*\))$")


def _key_problem(text: str, also: str = "") -> str | None:
    """Return why ``text`` is not a keyword or tag, with a likely fix if there is one."""
    try:
        parse_tag(text)
    except ValueError as exc:
        if _TAG_HALF.match(text):
            # In [a, b] and {a: b}, YAML splits an unquoted (gggg,eeee) at its comma.
            hint = ("; it looks like half a tag: quote tags inside [...] or {...}, "
                    "as in '(0010,0020)'")
        else:
            close = difflib.get_close_matches(text, list(keyword_dict), n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
        return f"{exc}{also}{hint}"
    return None


def _set_key_problem(text: str) -> str | None:
    problem = _key_problem(text)
    if problem is not None:
        return problem
    try:
        # apply_coercion adds a missing element with its dictionary VR.
        dictionary_VR(parse_tag(text))
    except KeyError:
        return (f"{text!r} is not in the DICOM dictionary, so the router cannot tell the VR "
                "to add it with; use a keyword or a standard tag")
    return None


def _sop_class_value_problems(
    expected: str | list[str],
) -> list[tuple[tuple[str | int, ...], str]]:
    # A name without wildcards that is no SOP class would never match, so it is reported.
    from simulator.conformance.names import UnknownNameError, resolve_sop_class

    located = [((), expected)] if isinstance(expected, str) else [
        ((index,), value) for index, value in enumerate(expected)
    ]
    problems: list[tuple[tuple[str | int, ...], str]] = []
    for where, value in located:
        if any(c in value for c in "*?["):
            continue
        try:
            resolve_sop_class(value)
        except UnknownNameError as exc:
            problems.append((("match", "sop_class", *where), str(exc)))
    return problems


def _remove_entry_problem(entry: str) -> str | None:
    if not entry.startswith("private:"):
        return _key_problem(entry, ", nor private:CREATOR")
    if not entry.removeprefix("private:").strip():
        return "'private:' needs the private creator, as in private:ACME 1.0"
    return None


def rule_key_problems(rule: Rule) -> list[tuple[tuple[str | int, ...], str]]:
    """Return (location in the rule, message) for each invalid match, set or remove key.

    A ``sop_class`` match value without wildcards must also name a SOP class.
    """
    problems: list[tuple[tuple[str | int, ...], str | None]] = []
    routing_keys = f", nor one of {', '.join(sorted(_ROUTING_KEYS))}"
    for key, expected in rule.match.items():
        if key == "sop_class":
            problems += _sop_class_value_problems(expected)
        elif key not in _ROUTING_KEYS:
            problems.append((("match", key), _key_problem(key, routing_keys)))
    for key in rule.coerce.set:
        problems.append((("coerce", "set", key), _set_key_problem(key)))
    for index, entry in enumerate(rule.coerce.remove):
        problems.append((("coerce", "remove", index), _remove_entry_problem(entry)))

    return [(location, message) for location, message in problems if message is not None]


def check_rule_keys(rule: Rule) -> list[str]:
    """Return a message for every match key, set key or remove entry that is not valid."""
    messages = []
    for location, message in rule_key_problems(rule):
        section = "match" if location[0] == "match" else f"coerce.{location[1]}"
        messages.append(f"{section}: {message}")

    return messages


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
    if coercion.reencode_utf8 is not None:
        changes.append(reencode_utf8(dataset))
    for entry in coercion.remove:
        if entry.startswith("private:"):
            changes += remove_private_block(dataset, entry.removeprefix("private:"))
            continue
        tag = parse_tag(entry)
        if tag in dataset:
            del dataset[tag]
            changes.append({"action": "remove", "tag": _tag_text(tag)})

    return changes


UTF8_TERM = "ISO_IR 192"


def reencode_utf8(dataset: Dataset) -> dict[str, Any]:
    """Decode every text value with the dataset's character set and mark it UTF-8.

    The file is written with the defined term ``ISO_IR 192``; a router that
    writes another term patches the file afterwards (:func:`write_character_set_term`).
    """
    before = dataset.get("SpecificCharacterSet")
    dataset.decode()
    dataset.SpecificCharacterSet = UTF8_TERM

    return {"action": "reencode-utf8", "tag": "(0008,0005)",
            "from": list(before) if isinstance(before, list | tuple) else before,
            "to": UTF8_TERM}


_SPECIFIC_CHARACTER_SET_EXPLICIT = b"\x08\x00\x05\x00CS"
_SPECIFIC_CHARACTER_SET_IMPLICIT = b"\x08\x00\x05\x00"


def write_character_set_term(path: Path, term: str) -> str:
    """Replace the value of (0008,0005) in a little endian file written by pydicom.

    pydicom refuses to encode with a term it does not know, so a term such as
    ``ISO IR 192`` is written over the encoded bytes. Returns the old value.
    Raises ValueError when the element is not found.
    """
    data = bytearray(path.read_bytes())
    value = term.encode("ascii")
    if len(value) % 2:
        value += b" "
    explicit = data.find(_SPECIFIC_CHARACTER_SET_EXPLICIT)
    if explicit >= 0:
        length_at, length_size = explicit + 6, 2
    else:
        implicit = data.find(_SPECIFIC_CHARACTER_SET_IMPLICIT, 132)
        if implicit < 0:
            raise ValueError(f"{path}: no Specific Character Set (0008,0005) to overwrite")
        length_at, length_size = implicit + 4, 4
    old_length = int.from_bytes(data[length_at:length_at + length_size], "little")
    start = length_at + length_size
    old = data[start:start + old_length].decode("ascii", errors="replace").strip()
    data[length_at:start + old_length] = len(value).to_bytes(length_size, "little") + value
    path.write_bytes(bytes(data))

    return old


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
