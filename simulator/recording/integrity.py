"""Compare what a destination stored with what the source sent.

The comparison is attribute by attribute, outside the File Meta group:
values that changed, attributes added or removed, private creators, and a
hash of the pixel data. Changes that a router on the route declares
(coercions, its private tag policy, transcoding) are *explained*; any other
change makes the delivery not intact, even when every status was success.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag
from pydicom.uid import DeflatedExplicitVRLittleEndian

PIXEL_DATA = BaseTag(0x7FE00010)
UNDEFINED_LENGTH = 0xFFFFFFFF
HASH_CHUNK_BYTES = 1024 * 1024
MAX_DECODE_BYTES = 256 * 1024 * 1024
"""Pixel data is hashed as encoded by streaming it from disk, so any size is
compared in bounded memory. Only when the transfer syntax changed are the
frames decoded, and only up to this size; the report says so above it."""


@dataclass(frozen=True)
class Explained:
    """Changes the route declares, so they are not integrity violations."""

    tags: frozenset[str] = frozenset()
    private_dropped: bool = False
    private_creators_kept: frozenset[str] | None = None
    transcode: bool = False


@dataclass
class Comparison:
    changed: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    private_creators_lost: list[str] = field(default_factory=list)
    pixel_data: str = "not-present"
    transfer_syntax_changed: bool = False
    character_set: dict[str, Any] = field(default_factory=dict)
    person_names_changed: list[str] = field(default_factory=list)
    private_vr_changed: list[str] = field(default_factory=list)
    unexplained: list[str] = field(default_factory=list)

    def as_record(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v not in ([], {}, False)}


def _tag_text(tag: BaseTag) -> str:
    return f"({tag.group:04X},{tag.element:04X})"


def _label(element: Any) -> str:
    keyword = element.keyword or "private" if element.tag.is_private else element.keyword
    return f"{_tag_text(element.tag)} {keyword}".strip()


def _pixel_hash(path: Path) -> str | None:
    """Hash the encoded Pixel Data value by streaming it from the file; None when absent."""
    dataset = dcmread(path, defer_size=1024)
    raw = dataset._dict.get(PIXEL_DATA)  # the raw element keeps the value's file offset
    if raw is None:
        return None
    offset = getattr(raw, "value_tell", None)
    length = getattr(raw, "length", None)
    deflated = dataset.file_meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian
    # In a deflated file the offset counts in the inflated stream, not the file.
    if offset is None or length is None or deflated:
        value = dataset[PIXEL_DATA].value
        return hashlib.sha256(value if isinstance(value, bytes) else bytes(value)).hexdigest()
    digest = hashlib.sha256()
    # Encapsulated pixel data has an undefined length and runs to its
    # Sequence Delimitation Item, normally the end of the file.
    remaining = None if length == UNDEFINED_LENGTH else length
    with path.open("rb") as stream:
        stream.seek(offset)
        while remaining is None or remaining > 0:
            chunk = stream.read(HASH_CHUNK_BYTES if remaining is None
                                else min(HASH_CHUNK_BYTES, remaining))
            if not chunk:
                break
            digest.update(chunk)
            if remaining is not None:
                remaining -= len(chunk)

    return digest.hexdigest()


def _decoded_hash(path: Path) -> str | None:
    if path.stat().st_size > MAX_DECODE_BYTES:
        return "too-large"
    try:
        return hashlib.sha256(dcmread(path).pixel_array.tobytes()).hexdigest()
    except Exception:  # noqa: BLE001 - no codec for this transfer syntax here
        return None


def compare(source: Path, stored: Path, explained: Explained) -> Comparison:
    """Compare two files of one instance; fill ``unexplained`` with what the route does not declare."""
    # Headers only: pixel data is compared by streaming, whatever its size.
    a = dcmread(source, stop_before_pixels=True)
    b = dcmread(stored, stop_before_pixels=True)
    result = Comparison()
    ts_a = str(a.file_meta.get("TransferSyntaxUID", ""))
    ts_b = str(b.file_meta.get("TransferSyntaxUID", ""))
    result.transfer_syntax_changed = ts_a != ts_b
    tags_a = {e.tag for e in a if e.tag != PIXEL_DATA}
    tags_b = {e.tag for e in b if e.tag != PIXEL_DATA}
    for tag in sorted(tags_a & tags_b):
        # Person names are compared decoded, below: their bytes change with the character set.
        if a[tag].VR != "PN" and a[tag].value != b[tag].value:
            result.changed.append(_label(a[tag]))
    result.removed = [_label(a[t]) for t in sorted(tags_a - tags_b)]
    result.added = [_label(b[t]) for t in sorted(tags_b - tags_a)]
    creators_a = {str(e.value).strip() for e in a if e.tag.is_private_creator}
    creators_b = {str(e.value).strip() for e in b if e.tag.is_private_creator}
    result.private_creators_lost = sorted(creators_a - creators_b)
    result.pixel_data = _compare_pixels(source, stored, result.transfer_syntax_changed)
    if "SpecificCharacterSet" in a or "SpecificCharacterSet" in b:
        result.character_set = {
            "source": _terms(a.get("SpecificCharacterSet")),
            "stored": _terms(b.get("SpecificCharacterSet")),
        }
    # Names are compared decoded, each with its own file's character set; only
    # the tags of names that differ are kept, never the names.
    result.person_names_changed = [
        _tag_text(tag) for tag in sorted(tags_a & tags_b)
        if a[tag].VR == "PN" and _decoded(a, tag) != _decoded(b, tag)
    ]
    result.private_vr_changed = [
        f"{_tag_text(tag)} {a[tag].VR}->{b[tag].VR}" for tag in sorted(tags_a & tags_b)
        if tag.is_private and a[tag].VR != b[tag].VR
    ]
    result.unexplained = _unexplained(result, explained)

    return result


def _terms(value: Any) -> list[str] | None:
    if value is None:
        return None
    return [str(value)] if isinstance(value, str) else [str(v) for v in value]


def _decoded(dataset: Dataset, tag: BaseTag) -> str:
    try:
        return str(dataset[tag].value)
    except (LookupError, ValueError, UnicodeError):  # an unknown term can fail to decode
        return "<undecodable>"


def _compare_pixels(source: Path, stored: Path, ts_changed: bool) -> str:
    hash_a, hash_b = _pixel_hash(source), _pixel_hash(stored)
    if hash_a is None and hash_b is None:
        return "not-present"
    if hash_a is None or hash_b is None:
        return "missing" if hash_b is None else "added"
    if hash_a == hash_b:
        return "identical"
    if not ts_changed:
        return "different"
    decoded_a, decoded_b = _decoded_hash(source), _decoded_hash(stored)
    if "too-large" in (decoded_a, decoded_b):
        return "not-compared (too large to decode)"
    if decoded_a is None or decoded_b is None:
        return "not-compared (no codec)"

    return "identical-decoded" if decoded_a == decoded_b else "different"


def _unexplained(result: Comparison, explained: Explained) -> list[str]:
    problems = []
    for label in result.changed + result.added + result.removed:
        tag = label.split(" ")[0]
        is_private = int(tag[1:5], 16) % 2 == 1
        if tag in explained.tags:
            continue
        if is_private and (explained.private_dropped or explained.private_creators_kept is not None):
            continue
        problems.append(label)
    lost = result.private_creators_lost
    if explained.private_creators_kept is not None:
        lost = [c for c in lost if c in explained.private_creators_kept]
    elif explained.private_dropped:
        lost = []
    problems += [f"private creator {c} lost" for c in lost]
    if result.pixel_data in ("different", "missing"):
        problems.append(f"pixel data {result.pixel_data}")
    if result.transfer_syntax_changed and not explained.transcode:
        problems.append("transfer syntax changed")
    problems += [f"decoded person name {tag} differs" for tag in result.person_names_changed
                 if tag not in explained.tags]
    if not explained.transcode:
        problems += [f"private VR changed {change}" for change in result.private_vr_changed]

    return problems
