"""Index of the DICOM files under a corpus folder, built from their headers.

:meth:`Corpus.load` walks the folder and reads each file with pydicom up
to the pixel data. Values larger than a few kilobytes (waveforms,
overlays, large private blobs) stay unread on disk, so indexing a 500 MB
object reads only its header.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.tag import BaseTag
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from simulator.corpus._glob import glob_matches
from simulator.errors import CorpusError

_DEFER_SIZE = "8 KB"
"""Values longer than this are not read while indexing; pydicom seeks past them."""

_MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"

_TRANSFER_SYNTAX_BY_ENCODING: dict[tuple[bool | None, bool | None], str] = {
    (True, True): ImplicitVRLittleEndian,
    (False, True): ExplicitVRLittleEndian,
    (False, False): ExplicitVRBigEndian,
}
"""Transfer syntax for pydicom's (is_implicit_VR, is_little_endian) guess on files without meta."""

_SKIPPED_IN_MESSAGE = 3


@dataclass(frozen=True)
class CorpusInstance:
    """One DICOM file of a corpus, described by its header.

    ``relpath`` is the POSIX path relative to the corpus root that scenario
    globs match. ``study_instance_uid`` and ``series_instance_uid`` are
    empty strings when the file has none. ``number_of_frames`` is 1 when
    Number of Frames is absent or not a positive integer.
    """

    path: Path
    relpath: str
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    modality: str | None
    size_bytes: int
    specific_character_set: tuple[str, ...]
    private_creators: tuple[str, ...]
    number_of_frames: int


@dataclass
class Corpus:
    """The usable instances under ``root`` and the files that were skipped.

    ``skipped`` contains (relpath, reason) for every file that is not DICOM or
    lacks SOP Class UID, SOP Instance UID or a transfer syntax.
    """

    root: Path
    instances: list[CorpusInstance] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def load(cls, root: Path) -> Corpus:
        """Index every file under ``root``, recursively, sorted by relpath.

        Raises :class:`CorpusError` when ``root`` is not an existing folder
        or when no file under it is a usable instance.
        """
        root = Path(root)
        if not root.exists():
            msg = (
                f"corpus folder not found: {root}. "
                "Point the scenario's corpus at an existing folder of DICOM files."
            )
            raise CorpusError(msg)
        if not root.is_dir():
            msg = (
                f"corpus path is not a folder: {root}. "
                "Point the scenario's corpus at the folder that contains the DICOM files."
            )
            raise CorpusError(msg)

        corpus = cls(root=root)
        for path in _walk_sorted(root):
            relpath = path.relative_to(root).as_posix()
            result = read_instance(path, relpath)
            if isinstance(result, CorpusInstance):
                corpus.instances.append(result)
            else:
                corpus.skipped.append((relpath, result))

        if not corpus.instances:
            raise CorpusError(_no_instance_message(root, corpus.skipped))

        return corpus

    def select(
        self,
        globs: list[str] | None = None,
        sop_classes: list[str] | None = None,
        modalities: list[str] | None = None,
    ) -> list[CorpusInstance]:
        """Return the instances that match every filter given, in corpus order.

        An instance matches ``globs`` when its relpath matches any of the
        patterns (see :mod:`simulator.corpus._glob`), ``sop_classes`` when
        its SOP Class UID is one of the UIDs, and ``modalities`` when its
        Modality is one of them, compared case-insensitively. A filter that
        is None or an empty list does not filter.
        """
        selected: list[CorpusInstance] = []
        wanted_modalities = {modality.upper() for modality in modalities or []}
        for instance in self.instances:
            if globs and not any(glob_matches(pattern, instance.relpath) for pattern in globs):
                continue
            if sop_classes and instance.sop_class_uid not in sop_classes:
                continue
            if wanted_modalities and (instance.modality or "").upper() not in wanted_modalities:
                continue
            selected.append(instance)

        return selected


def read_instance(path: Path, relpath: str) -> CorpusInstance | str:
    """Read the header of one file and return its instance, or the reason it is skipped."""
    try:
        ds, forced = _read_header(path)
    except Exception as exc:  # noqa: BLE001 - any parse failure of an arbitrary file is a skip
        return f"not readable as DICOM: {type(exc).__name__}: {exc}"

    reason = _skip_reason(ds, forced)
    if reason is not None:
        return reason

    transfer_syntax_uid = transfer_syntax_of(ds)
    if transfer_syntax_uid is None:
        return "no Transfer Syntax UID in the file meta and pydicom could not guess the encoding"

    return CorpusInstance(
        path=path,
        relpath=relpath,
        sop_class_uid=str(ds.SOPClassUID),
        sop_instance_uid=str(ds.SOPInstanceUID),
        study_instance_uid=str(ds.get("StudyInstanceUID") or ""),
        series_instance_uid=str(ds.get("SeriesInstanceUID") or ""),
        transfer_syntax_uid=transfer_syntax_uid,
        modality=str(ds.Modality) if ds.get("Modality") else None,
        size_bytes=path.stat().st_size,
        specific_character_set=_character_sets(ds),
        private_creators=_private_creators(ds),
        number_of_frames=_number_of_frames(ds),
    )


def _walk_sorted(root: Path) -> list[Path]:
    """Return every file under ``root``, sorted by its POSIX path relative to ``root``."""
    paths: list[Path] = []
    for dirpath, _dirnames, filenames in os.walk(root):
        paths.extend(Path(dirpath, name) for name in filenames)

    return sorted(paths, key=lambda path: path.relative_to(root).as_posix())


def _read_header(path: Path) -> tuple[Dataset, bool]:
    """Read ``path`` up to the pixel data; the flag is True when ``force`` was needed."""
    try:
        ds = dcmread(path, stop_before_pixels=True, defer_size=_DEFER_SIZE)
        return ds, False
    except InvalidDicomError:
        # No preamble and 'DICM' prefix. Some senders still write bare
        # datasets, which pydicom parses when forced. Other files yield no
        # SOP Class UID and are skipped, and the skip reason replaces
        # pydicom's warnings about the guessed VR.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            ds = dcmread(path, stop_before_pixels=True, defer_size=_DEFER_SIZE, force=True)
        return ds, True


def _skip_reason(ds: Dataset, forced: bool) -> str | None:
    meta = getattr(ds, "file_meta", Dataset())
    if str(meta.get("MediaStorageSOPClassUID", "")) == _MEDIA_STORAGE_DIRECTORY:
        return "DICOMDIR: a media directory, not an instance to send"
    if not ds.get("SOPClassUID"):
        if forced:
            return "not DICOM: no 'DICM' prefix and no SOP Class UID (0008,0016)"
        return "missing SOP Class UID (0008,0016)"
    if not ds.get("SOPInstanceUID"):
        return "missing SOP Instance UID (0008,0018)"

    return None


def transfer_syntax_of(ds: Dataset) -> str | None:
    """Return the Transfer Syntax UID from the file meta, or the one pydicom guessed, or None."""
    meta = getattr(ds, "file_meta", Dataset())
    transfer_syntax_uid = meta.get("TransferSyntaxUID")
    if transfer_syntax_uid:
        return str(transfer_syntax_uid)

    # Without file meta pydicom reports the encoding it guessed from the
    # first elements; a big endian implicit VR guess has no transfer syntax.
    return _TRANSFER_SYNTAX_BY_ENCODING.get(ds.original_encoding)


def _character_sets(ds: Dataset) -> tuple[str, ...]:
    value = ds.get("SpecificCharacterSet")
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)

    return tuple(str(item) for item in value)


def _private_creators(ds: Dataset) -> tuple[str, ...]:
    """Return the top-level Private Creator values in tag order."""
    creators: list[str] = []
    for tag in ds.keys():  # noqa: SIM118 - iterating a Dataset yields converted elements
        if not BaseTag(tag).is_private_creator:
            continue
        value = ds[tag].value
        if isinstance(value, bytes):
            value = value.decode("latin-1")
        creators.append(str(value).strip())

    return tuple(creators)


def _number_of_frames(ds: Dataset) -> int:
    try:
        frames = int(ds.get("NumberOfFrames") or 1)
    except (TypeError, ValueError):
        return 1

    return frames if frames > 0 else 1


def _no_instance_message(root: Path, skipped: Sequence[tuple[str, str]]) -> str:
    if not skipped:
        return (
            f"corpus folder {root} contains no files. "
            "Copy DICOM files into it or point the scenario's corpus at another folder."
        )

    examples = "; ".join(
        f"{relpath}: {reason}" for relpath, reason in skipped[:_SKIPPED_IN_MESSAGE]
    )
    return (
        f"corpus folder {root} contains no usable DICOM instance "
        f"({len(skipped)} files skipped, e.g. {examples}). "
        "Each file needs SOP Class UID, SOP Instance UID and a transfer syntax."
    )
