"""UID rewriting and file writing shared by the bundled corpus and repeats.

Only the top-level SOP Instance, Study Instance, Series Instance and Frame
of Reference UIDs change, plus Media Storage SOP Instance UID in the file
meta. Every other element stays as pydicom read it, so values that were
never touched (private data, text in a specific character set, encapsulated
pixel data) are written back with their original bytes.

NOTE: UID references inside sequences (Referenced SOP Instance UID,
Referenced Frame of Reference UID, ...) keep their original values, so an
RT Dose still points at the original RT Plan UID.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID

# Namespace of the name-based (RFC 4122 version 5) UUIDs behind every derived
# UID. pydicom's generate_uid ignores entropy_srcs when prefix is None, and
# with the prefix "2.25." it appends more digits than a UUID has, so it cannot
# make a deterministic 2.25 UID.
_UID_NAMESPACE = uuid.UUID("e7ff2604-b1af-4663-bfc1-eab8b5f5d013")

UID_ROLES: dict[str, str] = {
    "StudyInstanceUID": "study",
    "SeriesInstanceUID": "series",
    "FrameOfReferenceUID": "frame-of-reference",
}
"""Keyword of each rewritten top-level UID and the role used to derive it."""

UidMapper = Callable[[str, str], str]
"""Function of (role, original UID) that returns the new UID."""


def derive_uid(*parts: str) -> UID:
    """Return a ``2.25.`` UID that depends only on ``parts``.

    The same parts always give the same UID, so rebuilding a corpus or a
    repeat gives identical files.
    """
    name = "\x1f".join(parts)

    return UID(f"2.25.{uuid.uuid5(_UID_NAMESPACE, name).int}")


def ensure_file_meta(ds: Dataset, transfer_syntax_uid: str) -> None:
    """Fill in the File Meta Information elements that writing a DICOM file requires.

    Files read with ``force=True`` (no preamble, no 'DICM' prefix) have no
    file meta and get the transfer syntax pydicom guessed for them.
    """
    if not hasattr(ds, "file_meta"):
        ds.file_meta = FileMetaDataset()
    meta = ds.file_meta
    if "TransferSyntaxUID" not in meta:
        meta.TransferSyntaxUID = UID(transfer_syntax_uid)
    if "MediaStorageSOPClassUID" not in meta:
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
    if getattr(ds, "preamble", None) is None:
        ds.preamble = b"\x00" * 128


def rewrite_uids(ds: Dataset, sop_instance_uid: str, map_uid: UidMapper) -> None:
    """Set a new SOP Instance UID and map Study, Series and Frame of Reference UIDs.

    Absent or empty UIDs stay absent or empty.
    """
    ds.SOPInstanceUID = UID(sop_instance_uid)
    for keyword, role in UID_ROLES.items():
        original = ds.get(keyword)
        if original:
            setattr(ds, keyword, UID(map_uid(role, str(original))))

    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)


def write_atomically(ds: Dataset, path: Path) -> None:
    """Write ``ds`` as a DICOM file, so a killed write never leaves a partial file at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial_path = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        ds.save_as(partial_path, enforce_file_format=True)
        os.replace(partial_path, path)
    finally:
        partial_path.unlink(missing_ok=True)
