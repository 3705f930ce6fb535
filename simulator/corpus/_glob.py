"""Glob patterns matched against corpus-relative POSIX paths.

A pattern matches the whole relative path. ``*``, ``?`` and ``[...]``
never match ``/``. A segment that is exactly ``**`` matches zero or more
whole segments, so ``CT/**`` selects everything under ``CT/`` and
``**/*.dcm`` selects every ``.dcm`` file at any depth. Matching is
case-sensitive. Python 3.11 has no standard function with these rules
(``fnmatch`` lets ``*`` match ``/``; ``glob.translate`` arrived in 3.13).
"""

from __future__ import annotations

import re
from functools import lru_cache


@lru_cache(maxsize=256)
def compile_glob(pattern: str) -> re.Pattern[str]:
    """Compile ``pattern`` into a regular expression that matches a whole relative path."""
    segments = pattern.split("/")
    last_index = len(segments) - 1
    regex_parts: list[str] = []
    for index, segment in enumerate(segments):
        if segment == "**":
            regex_parts.append(".*" if index == last_index else "(?:[^/]*/)*")
            continue

        regex_parts.append(_translate_segment(segment))
        if index != last_index:
            regex_parts.append("/")

    return re.compile("".join(regex_parts) + r"\Z")


def glob_matches(pattern: str, relpath: str) -> bool:
    """Return whether the corpus-relative ``relpath`` matches ``pattern``."""
    return compile_glob(pattern).match(relpath) is not None


def _translate_segment(segment: str) -> str:
    parts: list[str] = []
    index = 0
    while index < len(segment):
        char = segment[index]
        index += 1
        if char == "*":
            parts.append("[^/]*")
        elif char == "?":
            parts.append("[^/]")
        elif char == "[":
            class_regex, index = _translate_class(segment, index)
            parts.append(class_regex)
        else:
            parts.append(re.escape(char))

    return "".join(parts)


def _translate_class(segment: str, start: int) -> tuple[str, int]:
    """Translate the ``[...]`` class that opens just before ``start``.

    An unclosed ``[`` matches a literal ``[``, as in ``fnmatch``.
    """
    end = start
    if end < len(segment) and segment[end] in "!^":
        end += 1
    if end < len(segment) and segment[end] == "]":
        end += 1
    end = segment.find("]", end)
    if end == -1:
        return re.escape("["), start

    body = segment[start:end]
    negate = body[:1] in ("!", "^")
    if negate:
        body = body[1:]
    body = body.replace("\\", "\\\\").replace("[", "\\[")
    # Negated classes must not match "/" either, because "/" separates segments.
    class_regex = f"[^/{body}]" if negate else f"[{body}]"

    return class_regex, end + 1
