"""Resolve SOP class and transfer syntax names to UIDs and back.

Declarations accept what a conformance statement prints: a keyword from
PS3.6 Table A-1 as pydicom spells it (``CTImageStorage``,
``JPEG2000Lossless``) or the UID itself. pydicom's UID dictionary is the
single source of both.
"""

from __future__ import annotations

import difflib
import re

from pydicom._uid_dict import UID_dictionary
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

_UID_PATTERN = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")

_SOP_CLASS_TYPES = ("SOP Class", "Meta SOP Class")
_TRANSFER_SYNTAX_TYPE = "Transfer Syntax"

_KEYWORD_TO_UID: dict[tuple[str, str], str] = {}
for _uid, (_name, _type, _info, _retired, _keyword) in UID_dictionary.items():
    kind = "sop_class" if _type in _SOP_CLASS_TYPES else None
    if _type == _TRANSFER_SYNTAX_TYPE:
        kind = "transfer_syntax"
    if kind and _keyword:
        _KEYWORD_TO_UID[(kind, _keyword)] = _uid

STORAGE_SOP_CLASS_UIDS: frozenset[str] = frozenset(
    uid
    for uid, entry in UID_dictionary.items()
    if entry[1] == "SOP Class"
    and entry[4].endswith("Storage")
    and uid.startswith("1.2.840.10008.5.1.4.1.1.")
)
"""Every Storage SOP class pydicom knows, retired ones included."""

UNCOMPRESSED_TRANSFER_SYNTAXES: tuple[str, ...] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    ExplicitVRBigEndian,
)
"""Native encodings a router can convert between without a codec."""

DEFLATED_TRANSFER_SYNTAX = DeflatedExplicitVRLittleEndian


class UnknownNameError(ValueError):
    """A SOP class or transfer syntax name that is neither a known keyword nor a UID."""


def is_valid_uid(text: str) -> bool:
    """Check the PS3.5 section 9.1 rules: digits and dots, no leading zero, 64 chars."""
    return len(text) <= 64 and bool(_UID_PATTERN.match(text))


def _resolve(text: str, kind: str, label: str) -> str:
    text = text.strip()
    if (kind, text) in _KEYWORD_TO_UID:
        return _KEYWORD_TO_UID[(kind, text)]
    if text and text[0].isdigit():
        if not is_valid_uid(text):
            raise UnknownNameError(
                f"invalid UID {text!r}: a UID is digits separated by dots, with no "
                "leading zeros in a component and at most 64 characters"
            )
        entry = UID_dictionary.get(text)
        expected = _SOP_CLASS_TYPES if kind == "sop_class" else (_TRANSFER_SYNTAX_TYPE,)
        if entry is not None and entry[1] not in expected:
            raise UnknownNameError(f"UID {text} is a {entry[1]} ({entry[0]}), not a {label}")
        if kind == "transfer_syntax" and entry is None:
            raise UnknownNameError(
                f"unknown transfer syntax UID {text}: only the transfer syntaxes of "
                "PS3.6 Table A-1 can be declared"
            )
        # A private SOP class UID is allowed: vendors define their own.
        return text
    keywords = [k for (kd, k) in _KEYWORD_TO_UID if kd == kind]
    close = difflib.get_close_matches(text, keywords, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise UnknownNameError(
        f"unknown {label} {text!r}: use a pydicom keyword such as "
        f"{'CTImageStorage' if kind == 'sop_class' else 'ExplicitVRLittleEndian'} "
        f"or a UID{hint}"
    )


def resolve_sop_class(text: str) -> str:
    """Return the UID for a SOP class keyword or UID; raise UnknownNameError."""
    return _resolve(text, "sop_class", "SOP class")


def resolve_transfer_syntax(text: str) -> str:
    """Return the UID for a transfer syntax keyword or UID; raise UnknownNameError."""
    return _resolve(text, "transfer_syntax", "transfer syntax")


def describe_uid(uid: str | None) -> str:
    """Return the keyword of a UID for reports, or the UID itself when unknown."""
    if uid is None:
        return "(none)"
    entry = UID_dictionary.get(uid)
    if entry is None:
        return uid

    return entry[4] or entry[0]


def is_compressed(transfer_syntax_uid: str) -> bool:
    return transfer_syntax_uid not in UNCOMPRESSED_TRANSFER_SYNTAXES and (
        transfer_syntax_uid != DEFLATED_TRANSFER_SYNTAX
    )
