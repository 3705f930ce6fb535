"""Copies of corpus instances with new UIDs, one set per scenario repeat.

A scenario that sends its corpus several times needs new UIDs for every
repeat after the first, or the receivers would treat the later sends as
duplicates. Each new UID is derived from the seed, the repeat index, the
role (SOP instance, study, series, frame of reference) and the original
UID. So instances of one original study share one new study, and a rerun
with the same seed writes the same UIDs. Two source files with the same
SOP Instance UID keep sharing one in their copies.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from pydicom import dcmread

from simulator.corpus._rewrite import derive_uid, ensure_file_meta, rewrite_uids, write_atomically
from simulator.corpus.index import CorpusInstance
from simulator.errors import CorpusError


def materialize_repeat(
    instances: Sequence[CorpusInstance], repeat_index: int, seed: int, out_dir: Path
) -> list[CorpusInstance]:
    """Return the instances to send in repeat ``repeat_index``, writing copies when it is above 0.

    Repeat 0 returns ``instances`` unchanged and writes nothing. Later
    repeats write each copy to ``out_dir / relpath`` and return instances
    that describe the copies. Pixel data is copied in its encoded form,
    never decompressed. Use one ``out_dir`` per repeat, because copies of
    different repeats have the same relpath.
    """
    if isinstance(repeat_index, bool) or repeat_index < 0:
        msg = f"invalid repeat index {repeat_index!r}: use 0 for the corpus itself or a positive number"
        raise CorpusError(msg)
    if repeat_index == 0:
        return list(instances)

    out_dir = Path(out_dir)
    return [_copy_instance(instance, repeat_index, seed, out_dir) for instance in instances]


def _copy_instance(
    instance: CorpusInstance, repeat_index: int, seed: int, out_dir: Path
) -> CorpusInstance:
    target = out_dir / instance.relpath
    if target.resolve() == instance.path.resolve():
        msg = (
            f"repeat {repeat_index} would overwrite the corpus file {instance.path}. "
            "Write repeats to a folder outside the corpus."
        )
        raise CorpusError(msg)

    def map_uid(role: str, original: str) -> str:
        return derive_uid("repeat", str(seed), str(repeat_index), role, original)

    try:
        # force=True reads files that have no file meta, which Corpus.load accepts.
        ds = dcmread(instance.path, force=True)
    except Exception as exc:  # a file changed or removed since indexing fails here
        msg = f"failed to read corpus file {instance.path} for repeat {repeat_index}: {exc}"
        raise CorpusError(msg) from exc

    ensure_file_meta(ds, instance.transfer_syntax_uid)
    rewrite_uids(ds, map_uid("sop", instance.sop_instance_uid), map_uid)
    try:
        write_atomically(ds, target)
    except OSError as exc:
        msg = f"failed to write repeat {repeat_index} copy {target}: {exc.strerror}"
        raise CorpusError(msg) from exc

    return dataclasses.replace(
        instance,
        path=target,
        sop_instance_uid=str(ds.SOPInstanceUID),
        study_instance_uid=str(ds.get("StudyInstanceUID") or ""),
        series_instance_uid=str(ds.get("SeriesInstanceUID") or ""),
        size_bytes=target.stat().st_size,
    )
