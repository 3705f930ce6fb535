"""Changes a router makes to an instance before forwarding it, described for the check's report.

The router applies the coercions of the matching rules and then its
private tag policy (``keep``, ``drop``, or a list of private creators to
keep), as :class:`simulator.nodes.router.Router` does. The descriptions
name attributes and private creators, never values, except for Specific
Character Set, whose value is not patient data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydicom.charset import python_encoding
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataset import Dataset

from simulator.routing import (
    UTF8_TERM,
    apply_coercion,
    parse_tag,
    private_creators,
    remove_private_block,
)
from simulator.topology.model import Coercion, RouterNode

_TEXT_VRS = {"PN", "LO", "SH", "ST", "LT", "UT", "UC"}
_CHARSET_KEYWORD = "SpecificCharacterSet"


@dataclass
class RouterChanges:
    """The changes one router makes before one hop."""

    descriptions: list[str] = field(default_factory=list)
    damaged_tags: list[str] = field(default_factory=list)
    """Text elements, as (gggg,eeee), whose decoded value changes because the router
    relabels the character set under bytes it leaves as they are."""


def router_changes(router: RouterNode, dataset: Dataset | None,
                   coercions: Sequence[Coercion], item: Any) -> RouterChanges:
    """Apply the router's changes to ``dataset`` (when given) and describe each one."""
    changes = RouterChanges()
    if not any(c.set or c.remove or c.reencode_utf8 for c in coercions) \
            and router.private_tags == "keep":
        return changes
    before_charset = _charset(dataset, item)
    # Read before any coercion: pydicom decodes text with the character set in force.
    non_ascii = [] if dataset is None else _non_ascii_text_tags(dataset)
    has_non_ascii = bool(non_ascii)
    if any(_sets_new_charset(c, before_charset) for c in coercions):
        changes.damaged_tags = non_ascii
    described = changes.descriptions
    for coercion in coercions:
        described += _describe_set(router, coercion, before_charset, has_non_ascii)
        if coercion.reencode_utf8 is not None:
            described.append(_describe_reencode(router, coercion.reencode_utf8, before_charset))
        if dataset is not None:
            present = set(private_creators(dataset))
            # A later router and the receiver's checks see the changed values, so they are applied.
            apply_coercion(dataset, coercion)
            described += _describe_removed(router, coercion, present)
        else:
            described += [f"{router.name} removes {entry} (if present)" for entry in coercion.remove]
    described += _private_policy(router, dataset)
    if dataset is not None:
        _write_terms(dataset, coercions)

    return changes


def _sets_new_charset(coercion: Coercion, charset: tuple[str, ...]) -> bool:
    for key, value in coercion.set.items():
        if _name(key) != _CHARSET_KEYWORD:
            continue
        new = tuple(value) if isinstance(value, list | tuple) else (str(value),)
        if new != charset:
            return True

    return False


def _write_terms(dataset: Dataset, coercions: Sequence[Coercion]) -> None:
    # The router patches the term into the saved file after re-encoding to UTF-8.
    for coercion in coercions:
        term = coercion.reencode_utf8
        if term is not None and term != UTF8_TERM:
            dataset.SpecificCharacterSet = term


def _describe_reencode(router: RouterNode, term: str, charset: tuple[str, ...]) -> str:
    old_text = "\\".join(charset) or "the default repertoire"
    text = (f"{router.name} re-encodes text from {old_text} to UTF-8 and writes "
            f"SpecificCharacterSet {term!r}")
    if term not in python_encoding:
        text += ", which is not a defined term (PS3.3 C.12.1.1.2): strict receivers reject it"

    return text


def _describe_set(router: RouterNode, coercion: Coercion, charset: tuple[str, ...],
                  has_non_ascii: bool) -> list[str]:
    described = []
    for key, value in coercion.set.items():
        tag = parse_tag(key)
        name = _name(key)
        if name == _CHARSET_KEYWORD:
            described.append(_describe_charset(router, value, charset, has_non_ascii))
            continue
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            vr = ""
        text = f"{router.name} sets {name}"
        if vr == "PN":
            text += " (a person name)"
        if vr in _TEXT_VRS and _is_non_ascii(value) and not _allows_non_ascii(charset):
            text += (" to a value with non-ASCII characters, but the instance's Specific "
                     "Character Set is the default repertoire")
        described.append(text)

    return described


def _describe_charset(router: RouterNode, value: Any, charset: tuple[str, ...],
                      has_non_ascii: bool) -> str:
    new = tuple(value) if isinstance(value, list | tuple) else (str(value),)
    old_text = "\\".join(charset) or "the default repertoire"
    text = f"{router.name} sets SpecificCharacterSet to {chr(92).join(new)!r} (was {old_text})"
    if new != charset and has_non_ascii:
        text += ("; the instance has non-ASCII text encoded in the old character set, "
                 "which receivers will decode with the new one")

    return text


def _describe_removed(router: RouterNode, coercion: Coercion, creators: set[str]) -> list[str]:
    described = []
    for entry in coercion.remove:
        if entry.startswith("private:"):
            creator = entry.removeprefix("private:")
            if creator in creators:
                described.append(f"{router.name} removes the private block of {creator!r}")
            continue
        described.append(f"{router.name} removes {_name(entry)} (if present)")

    return described


def _private_policy(router: RouterNode, dataset: Dataset | None) -> list[str]:
    policy = router.private_tags
    if policy == "keep":
        return []
    if dataset is None:
        if policy == "drop":
            return [f"{router.name} drops every private tag"]
        return [f"{router.name} keeps only the private blocks of {', '.join(policy)}"]
    creators = private_creators(dataset)
    if policy == "drop":
        dataset.remove_private_tags()
        return [f"{router.name} drops the private block of {creator!r}" for creator in creators]
    dropped = [creator for creator in creators if creator not in policy]
    for creator in dropped:
        remove_private_block(dataset, creator)

    return [f"{router.name} drops the private block of {creator!r} (not in its "
            "private_tags list)" for creator in dropped]


def _charset(dataset: Dataset | None, item: Any) -> tuple[str, ...]:
    if dataset is None or _CHARSET_KEYWORD not in dataset:
        return tuple(getattr(item, "specific_character_set", ()))
    value = dataset.SpecificCharacterSet
    if isinstance(value, str):
        return (value,) if value else ()

    return tuple(str(v) for v in value)


def _non_ascii_text_tags(dataset: Dataset) -> list[str]:
    tags = []
    for element in dataset:
        if element.VR not in _TEXT_VRS or element.value is None:
            continue
        values = element.value if isinstance(element.value, list | tuple) else [element.value]
        if any(_is_non_ascii(v) for v in values):
            tags.append(f"({element.tag.group:04X},{element.tag.element:04X})")

    return tags


def _is_non_ascii(value: Any) -> bool:
    return any(ord(c) > 0x7F for c in str(value))


def _allows_non_ascii(charset: tuple[str, ...]) -> bool:
    return any(term.strip() not in ("", "ISO_IR 6", "ISO 2022 IR 6") for term in charset)


def _name(key: str) -> str:
    tag = parse_tag(key)
    keyword = keyword_for_tag(tag)

    return keyword or f"({tag.group:04X},{tag.element:04X})"
