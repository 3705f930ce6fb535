"""Load a YAML file into a pydantic model, with errors that name file, line and field.

ruamel.yaml keeps the line of every key and list item; a pydantic error's
location is a path of keys and indexes, so each problem maps back to the line
a person edits.
"""

from __future__ import annotations

import difflib
import re
from enum import Enum
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.constructor import DuplicateKeyError
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from simulator.errors import ConfigError

ModelT = TypeVar("ModelT", bound=BaseModel)
Location = tuple[str | int, ...]


def read_yaml(path: Path) -> Any:
    """Parse a YAML file, keeping line numbers; raise ConfigError on syntax errors."""
    if not path.is_file():
        raise ConfigError(str(path), ["file not found; give the path of a YAML file"])
    yaml = YAML(typ="rt")
    yaml.allow_duplicate_keys = False
    try:
        with path.open(encoding="utf-8") as stream:
            return yaml.load(stream)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = f"line {mark.line + 1}" if mark is not None else "unknown line"
        raise ConfigError(str(path), [f"{line}: invalid YAML: {_yaml_problem(exc)}"]) from exc
    except YAMLError as exc:
        raise ConfigError(str(path), [f"not a YAML text file: {exc}"]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), [f"not UTF-8 text ({exc})"]) from exc


def _yaml_problem(exc: MarkedYAMLError) -> str:
    # ruamel prints both values of a duplicate key, which can be whole nodes.
    found = re.match(r'found duplicate key "(.*)" with value', exc.problem or "", re.DOTALL)
    if isinstance(exc, DuplicateKeyError) and found:
        start = exc.context_mark.line + 1 if exc.context_mark is not None else None
        where = f" in the mapping that starts at line {start}" if start else ""
        return f"duplicate key {found.group(1)!r}{where}; a key can appear only once in a mapping"
    column = f" (column {exc.problem_mark.column + 1})" if exc.problem_mark is not None else ""

    return f"{exc.problem}{column}"


def _key_in(node: CommentedMap, part: str | int) -> Any:
    # _plain turned every key into a string; find the original key again.
    if part in node:
        return part
    return next((key for key in node if str(key) == str(part)), None)


def line_of(document: Any, location: Location) -> int | None:
    """Return the 1-based line of the deepest part of ``location`` found in the document."""
    node = document
    line: int | None = None
    for part in location:
        key = _key_in(node, part) if isinstance(node, CommentedMap) else None
        if key is not None:
            line = node.lc.key(key)[0] + 1
            node = node[key]
        elif isinstance(node, CommentedSeq) and isinstance(part, int) and part < len(node):
            line = node.lc.item(part)[0] + 1
            node = node[part]
        else:
            break
    if line is None and isinstance(document, CommentedMap):
        line = document.lc.line + 1

    return line


def format_location(location: Location) -> str:
    text = ""
    for part in location:
        if isinstance(part, int):
            text += f"[{part}]"
        elif text:
            text += f".{part}"
        else:
            text = str(part)

    return text or "(top level)"


def _plain(node: Any) -> Any:
    if isinstance(node, dict):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return node


def _union_members(annotation: Any) -> list[Any] | None:
    if get_origin(annotation) not in (Union, UnionType):
        return None
    return [m for m in get_args(annotation) if m is not type(None)]


def _unwrap(annotation: Any) -> Any:
    """Strip Annotated and Optional, which add no part to a pydantic location."""
    while True:
        members = _union_members(annotation)
        if get_origin(annotation) is Annotated:
            annotation = get_args(annotation)[0]
        elif members is not None and len(members) == 1:
            annotation = members[0]
        else:
            return annotation


def _literal_values(annotation: Any) -> list[str]:
    annotation = _unwrap(annotation)
    if get_origin(annotation) is not Literal:
        return []
    return [str(v.value if isinstance(v, Enum) else v) for v in get_args(annotation)]


def _discriminator_tags(members: list[Any], field: str) -> list[str]:
    tags: list[str] = []
    for member in members:
        is_model = isinstance(member, type) and issubclass(member, BaseModel)
        if is_model and field in member.model_fields:
            tags += _literal_values(member.model_fields[field].annotation)
    return tags


def _union_member(members: list[Any], tag: Any) -> Any:
    # pydantic 2 names a discriminated-union member by its tag value and any
    # other member by its type: 'str', 'list[str]', "literal['keep','drop']".
    for member in members:
        if isinstance(member, type) and issubclass(member, BaseModel):
            if tag == member.__name__ or any(
                tag in _literal_values(f.annotation) for f in member.model_fields.values()
            ):
                return member
            continue
        origin = get_origin(member) or member
        name = "literal" if origin is Literal else getattr(origin, "__name__", "").lower()
        if isinstance(tag, str) and (tag == name or tag.startswith(f"{name}[")):
            return member
    return None


def _child_type(annotation: Any, part: str | int) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        for name, field in annotation.model_fields.items():
            if part in (name, field.alias):
                return field.annotation
        return None
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is dict and len(args) == 2:
        return args[1]
    if origin in (list, tuple, set, frozenset) and args:
        if origin is tuple and args[-1] is not Ellipsis:
            return args[part] if isinstance(part, int) and part < len(args) else None
        return args[0]
    return None


def _resolve_location(model: type[BaseModel], raw: tuple[Any, ...]) -> tuple[Location, Any]:
    """Drop the union member tags pydantic adds to a location; return it and the type there.

    The type is None where the walk cannot follow the model (an unknown field).
    """
    cleaned: list[str | int] = []
    annotation: Any = model
    parts = list(raw)
    while parts:
        annotation = _unwrap(annotation)
        members = _union_members(annotation)
        if members is not None:
            annotation = _union_member(members, parts.pop(0))
        else:
            part = parts.pop(0)
            cleaned.append(part)
            annotation = _child_type(annotation, part) if annotation is not None else None

    return tuple(cleaned), _unwrap(annotation)


def _allowed_fields(annotation: Any) -> list[str]:
    if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
        return []
    return [field.alias or name for name, field in annotation.model_fields.items()]


def _did_you_mean(text: str, choices: list[str]) -> str:
    lowered = {c.lower(): c for c in choices}
    close = difflib.get_close_matches(text.lower(), list(lowered), n=1)
    return f"; did you mean {lowered[close[0]]!r}?" if close else ""


def _message(model: type[BaseModel], error: Any, location: Location, annotation: Any) -> str:
    """Rewrite the pydantic messages that do not say what is allowed."""
    kind = error["type"]
    if kind == "extra_forbidden":
        name = str(location[-1])
        _, parent = _resolve_location(model, tuple(error["loc"][:-1]))
        allowed = _allowed_fields(parent)
        if not allowed:
            return f"unknown field {name!r}"
        hint = _did_you_mean(name, allowed)
        return f"unknown field {name!r}; allowed fields: {', '.join(allowed)}{hint}"
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        field = error["ctx"]["discriminator"].strip("'\"")
        tags = _discriminator_tags(_union_members(annotation) or [], field)
        choices = ", ".join(tags) or "see the JSON Schema"
        if kind == "union_tag_not_found":
            return f"missing {field}; give one of: {choices}"
        tag = str(error["ctx"]["tag"])
        return f"unknown {field} {tag!r}; use one of: {choices}{_did_you_mean(tag, tags)}"
    if kind in ("tuple_type", "list_type"):
        return "Input should be a list"
    if kind == "too_short" and error["ctx"].get("field_type") in ("Tuple", "List"):
        count = error["ctx"]["min_length"]
        return f"List should have at least {count} item{'' if count == 1 else 's'}"
    if kind in ("model_attributes_type", "model_type", "dict_type"):
        return "Input should be a mapping of keys to values"

    return str(error["msg"]).removeprefix("Value error, ")


def _located_errors(
    model: type[BaseModel], exc: ValidationError
) -> list[tuple[Location, Any, Any]]:
    located = []
    for error in exc.errors(include_url=False):
        location, annotation = _resolve_location(model, tuple(error["loc"]))
        if error["type"] in ("union_tag_invalid", "union_tag_not_found"):
            location = (*location, error["ctx"]["discriminator"].strip("'\""))
        located.append((location, annotation, error))
    # pydantic 2 checks a tuple's min_length on the items that validated, so a
    # tuple with one bad item is also reported too short. That echo is dropped.
    return [
        (location, annotation, error)
        for location, annotation, error in located
        if not (error["type"] == "too_short" and any(
            other[: len(location)] == location and len(other) > len(location)
            for other, _, _ in located
        ))
    ]


def _problems(model: type[BaseModel], exc: ValidationError, document: Any) -> list[str]:
    # A union value that no member accepts gives one error per member at the
    # same location, so those errors are joined into one problem.
    merged: dict[Location, tuple[list[str], Any]] = {}
    for location, annotation, error in _located_errors(model, exc):
        message = _message(model, error, location, annotation)
        if location in merged:
            merged[location][0].append(message.removeprefix("Input should be "))
        else:
            merged[location] = ([message], error.get("input"))
    problems = []
    for location, (messages, value) in merged.items():
        line = line_of(document, location)
        where = f"line {line}" if line is not None else "unknown line"
        shown = "" if isinstance(value, dict | list) or value is None else f" (got {value!r})"
        problems.append(f"{where}: {format_location(location)}: {' or '.join(messages)}{shown}")

    return problems


def load_model(path: Path, model: type[ModelT], label: str) -> tuple[ModelT, Any]:
    """Validate a YAML file against ``model``; return the model and the raw document."""
    document = read_yaml(path)
    if not isinstance(document, CommentedMap):
        raise ConfigError(str(path), [f"line 1: a {label} file must be a YAML mapping"])
    try:
        return model.model_validate(_plain(document)), document
    except ValidationError as exc:
        raise ConfigError(str(path), _problems(model, exc, document)) from exc


def raise_cross_check(path: Path, document: Any, problems: list[tuple[Location, str]]) -> None:
    if not problems:
        return
    lines = []
    for location, message in problems:
        line = line_of(document, location)
        where = f"line {line}" if line is not None else "unknown line"
        lines.append(f"{where}: {format_location(location)}: {message}")
    raise ConfigError(str(path), lines)
