"""A structural diff of two parsed YAML documents (the topology or scenario copies).

Paths name mapping keys with dots and list items in brackets:
``nodes.new-pacs.transfer_syntaxes``, ``links[ct->router]``,
``nodes.router.rule_sets.go-live[everything-to-new-pacs].forward``. A list
item is named by its ``name``, its ``sop_class``, its ``from->to`` or the
scalar itself when every item of both lists has such a name, and by its
index otherwise. A list of scalars changes as one entry with the items
added and removed. Comments and anchors are not compared: the documents are
compared after parsing.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pydicom._uid_dict import UID_dictionary

_MISSING = object()
_UID_BY_KEYWORD = {entry[4]: uid for uid, entry in UID_dictionary.items() if entry[4]}


class ConfigChangeKind(StrEnum):
    ADDED = "added"
    REMOVED = "removed"
    CHANGED = "changed"


@dataclass
class ConfigChange:
    """One difference, and the nodes it concerns (empty: the whole site or run)."""

    document: str
    path: str
    kind: ConfigChangeKind
    before: Any = None
    after: Any = None
    items_added: list[Any] = field(default_factory=list)
    items_removed: list[Any] = field(default_factory=list)
    nodes: set[str] = field(default_factory=set)
    uids: set[str] = field(default_factory=set)
    related_cells: list[str] = field(default_factory=list)

    def describe(self) -> str:
        """Return a one-line description such as ``removed JPEG2000 from nodes.x.y``."""
        if self.items_added or self.items_removed:
            parts = []
            if self.items_added:
                parts.append("added " + ", ".join(_short(v) for v in self.items_added))
            if self.items_removed:
                parts.append("removed " + ", ".join(_short(v) for v in self.items_removed))
            return f"{self.path}: {'; '.join(parts)}"
        if self.kind == ConfigChangeKind.ADDED:
            return f"{self.path}: added {_short(self.after)}"
        if self.kind == ConfigChangeKind.REMOVED:
            return f"{self.path}: removed (was {_short(self.before)})"

        return f"{self.path}: {_short(self.before)} -> {_short(self.after)}"

    def as_record(self) -> dict[str, Any]:
        record: dict[str, Any] = {"document": self.document, "path": self.path,
                                  "change": str(self.kind), "description": self.describe()}
        if self.items_added or self.items_removed:
            record.update(items_added=self.items_added, items_removed=self.items_removed)
        else:
            record.update(before=self.before, after=self.after)
        record.update(nodes=sorted(self.nodes), uids=sorted(self.uids),
                      related_cells=self.related_cells)

        return record


def diff_documents(document: str, a: Any, b: Any) -> list[ConfigChange]:
    """Return every difference between two parsed YAML documents."""
    return list(_diff(document, "", a, b))


def _diff(document: str, path: str, a: Any, b: Any) -> Iterator[ConfigChange]:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in list(a) + [k for k in b if k not in a]:
            child = f"{path}.{key}" if path else str(key)
            yield from _diff(document, child, a.get(key, _MISSING), b.get(key, _MISSING))
        return
    if isinstance(a, list) and isinstance(b, list):
        yield from _diff_lists(document, path, a, b)
        return
    if a is _MISSING:
        yield ConfigChange(document, path, ConfigChangeKind.ADDED, after=b)
    elif b is _MISSING:
        yield ConfigChange(document, path, ConfigChangeKind.REMOVED, before=a)
    elif a != b or type(a) is not type(b):
        yield ConfigChange(document, path, ConfigChangeKind.CHANGED, before=a, after=b)


def _diff_lists(document: str, path: str, a: list[Any], b: list[Any]) -> Iterator[ConfigChange]:
    if a == b:
        return
    if all(_is_scalar(v) for v in a + b):
        added = [v for v in b if v not in a]
        removed = [v for v in a if v not in b]
        # Same items in another order matter too: a transfer syntax list is a preference.
        yield ConfigChange(document, path, ConfigChangeKind.CHANGED, before=a, after=b,
                           items_added=added, items_removed=removed)
        return
    ids_a, ids_b = _item_ids(a), _item_ids(b)
    if ids_a is None or ids_b is None:
        for index in range(max(len(a), len(b))):
            yield from _diff(document, f"{path}[{index}]", _at(a, index), _at(b, index))
        return
    items_a, items_b = dict(zip(ids_a, a, strict=True)), dict(zip(ids_b, b, strict=True))
    for item_id in ids_a + [i for i in ids_b if i not in items_a]:
        yield from _diff(document, f"{path}[{item_id}]", items_a.get(item_id, _MISSING),
                         items_b.get(item_id, _MISSING))


def _item_ids(items: list[Any]) -> list[str] | None:
    ids = []
    for item in items:
        item_id = _item_id(item)
        if item_id is None:
            return None
        ids.append(item_id)

    return ids if len(set(ids)) == len(ids) else None


def _item_id(item: Any) -> str | None:
    if _is_scalar(item):
        return str(item)
    if not isinstance(item, dict):
        return None
    for key in ("name", "sop_class"):
        if isinstance(item.get(key), str):
            return str(item[key])
    if "from" in item and "to" in item:
        return f"{item['from']}->{item['to']}"

    return None


def _at(items: list[Any], index: int) -> Any:
    return items[index] if index < len(items) else _MISSING


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value) if isinstance(value, str) and not value else str(value)

    return text if len(text) <= limit else text[: limit - 3] + "..."


def attribute_nodes(change: ConfigChange, nodes: set[str],
                    link_endpoints: dict[str, tuple[str, str]],
                    sender_nodes: dict[str, str]) -> set[str]:
    """Return the nodes a change concerns, from its path and the names in its values.

    A topology path under ``nodes.X`` concerns X. A node name in the path
    or the values concerns that node, a link name concerns the link's two
    ends, and a sender name concerns the sender's modality. A change that
    names none of them (``seed``, ``corpus``) concerns the whole run, and
    the set is empty.
    """
    found: set[str] = set()
    for word in _words(change):
        if word in nodes:
            found.add(word)
        if word in link_endpoints:
            found.update(link_endpoints[word])
        if word in sender_nodes:
            found.add(sender_nodes[word])

    return found


def mentioned_uids(change: ConfigChange) -> set[str]:
    """Return the SOP classes and transfer syntaxes a change names, as UIDs.

    For a list that changed, only the items added or removed count, so that
    removing JPEG 2000 from a list does not name every syntax left in it.
    """
    if change.items_added or change.items_removed:
        values: list[Any] = change.items_added + change.items_removed
    else:
        values = [change.before, change.after]
    uids = set()
    for value in values:
        for word in _scalars(value):
            uid = word if word in UID_dictionary else _UID_BY_KEYWORD.get(word)
            if uid is not None:
                uids.add(uid)

    return uids


def _words(change: ConfigChange) -> Iterator[str]:
    yield from change.path.replace("[", ".").replace("]", "").split(".")
    for value in (change.before, change.after):
        yield from _scalars(value)


def _scalars(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield str(key)
            yield from _scalars(item)
    elif isinstance(value, list):
        for item in value:
            yield from _scalars(item)
    elif isinstance(value, str):
        yield value
