"""The bundled corpus, built from pydicom's test files and the pydicom-data package.

:func:`bundled_corpus` copies the files listed in :data:`BUNDLED_FILES`
into ``<cache dir>/bundled-v1/<folder>/<name>`` and writes ``MANIFEST.json``
beside them. Each copy gets a new SOP Instance UID, because several source
files share one. Study, Series and Frame of Reference UIDs are mapped so
that copies of one original study share one new study. Every new UID is
derived from the corpus version and the source, so a rebuild gives the same
UIDs. The transfer syntax and the encoding of untouched elements stay as
they were: nothing is decompressed or re-encoded.

The source folders are found next to ``pydicom.data.__file__`` and
``data_store.__file__``. pydicom's ``get_testdata_files`` is never called,
because it downloads missing files.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pydicom.data
from pydicom import dcmread
from pydicom.uid import UID

from simulator.corpus._rewrite import derive_uid, ensure_file_meta, rewrite_uids, write_atomically
from simulator.corpus.index import CorpusInstance, read_instance, transfer_syntax_of
from simulator.errors import CorpusError

BUNDLED_VERSION = 1
"""Bump when the file list or the UID derivation changes, so old caches are not reused."""

BUNDLED_FOLDER = f"bundled-v{BUNDLED_VERSION}"
MANIFEST_NAME = "MANIFEST.json"

PYDICOM_TEST = "pydicom-test"
PYDICOM_CHARSET = "pydicom-charset"
PYDICOM_DATA = "pydicom-data"


@dataclass(frozen=True)
class BundledFile:
    """One source file of the bundled corpus.

    ``store`` names the source folder (see :func:`source_folders`), and
    ``purpose`` names what the file adds beyond the kind its folder names.
    """

    folder: str
    store: str
    name: str
    purpose: str


_F = BundledFile
BUNDLED_FILES: tuple[BundledFile, ...] = (
    _F("CT", PYDICOM_TEST, "CT_small.dcm", "explicit VR little endian, 9 GE private creators"),
    _F("CT", PYDICOM_TEST, "693_J2KI.dcm", "JPEG 2000 (lossy allowed)"),
    _F("CT", PYDICOM_DATA, "693_J2KR.dcm", "JPEG 2000 lossless, same series as 693_J2KI"),
    _F("CT-enhanced", PYDICOM_DATA, "eCT_Supplemental.dcm", "Enhanced CT, 2 frames, 1 MB"),
    _F("MR", PYDICOM_TEST, "MR_small.dcm", "explicit VR little endian"),
    _F("MR", PYDICOM_TEST, "MR_small_implicit.dcm", "implicit VR little endian"),
    _F("MR", PYDICOM_TEST, "MR_small_bigendian.dcm", "explicit VR big endian"),
    _F("MR", PYDICOM_TEST, "MR_small_RLE.dcm", "RLE lossless"),
    _F("MR", PYDICOM_TEST, "MR_small_jp2klossless.dcm", "JPEG 2000 lossless"),
    _F("MR", PYDICOM_TEST, "MR_small_jpeg_ls_lossless.dcm", "JPEG-LS lossless"),
    _F("MR-enhanced", PYDICOM_DATA, "emri_small.dcm", "10 frames, explicit VR little endian"),
    _F("MR-enhanced", PYDICOM_DATA, "emri_small_big_endian.dcm", "explicit VR big endian"),
    _F("MR-enhanced", PYDICOM_DATA, "emri_small_RLE.dcm", "RLE lossless"),
    _F("MR-enhanced", PYDICOM_DATA, "emri_small_jpeg_2k_lossless.dcm", "JPEG 2000 lossless"),
    _F("MR-enhanced", PYDICOM_DATA, "emri_small_jpeg_ls_lossless.dcm", "JPEG-LS lossless"),
    _F("US", PYDICOM_DATA, "US1_J2KR.dcm", "RGB, JPEG 2000 lossless"),
    _F("US", PYDICOM_DATA, "US1_J2KI.dcm", "RGB, JPEG 2000 (lossy allowed)"),
    _F("US", PYDICOM_TEST, "ExplVR_BigEnd.dcm", "explicit VR big endian"),
    _F("US", PYDICOM_TEST, "examples_ybr_color.dcm", "Multi-frame, 30 frames, JPEG baseline"),
    _F("US", PYDICOM_DATA, "JPGLosslessP14SV1_1s_1f_8b.dcm", "JPEG lossless SV1, 9 creators"),
    _F("US", PYDICOM_DATA, "OBXXXX1A_rle_2frame.dcm", "Multi-frame, 2 frames, RLE lossless"),
    _F("SC", PYDICOM_DATA, "SC_rgb.dcm", "RGB, explicit VR little endian, ISO_IR 192"),
    _F("SC", PYDICOM_DATA, "SC_rgb_expb.dcm", "RGB, explicit VR big endian"),
    _F("SC", PYDICOM_TEST, "SC_rgb_rle_2frame.dcm", "2 frames, RLE lossless"),
    _F("SC", PYDICOM_TEST, "SC_rgb_jpeg_dcmtk.dcm", "JPEG baseline"),
    _F("SC", PYDICOM_TEST, "SC_rgb_jpeg_gdcm.dcm", "JPEG lossless SV1"),
    _F("SC", PYDICOM_TEST, "SC_rgb_gdcm_KY.dcm", "JPEG 2000 (lossy allowed)"),
    _F("SC", PYDICOM_TEST, "SC_rgb_small_odd.dcm", "odd rows and columns"),
    _F("SC", PYDICOM_TEST, "image_dfl.dcm", "deflated explicit VR little endian"),
    _F("SC", PYDICOM_TEST, "JPGExtended.dcm", "modality NM, JPEG extended 12-bit"),
    _F("SC", PYDICOM_TEST, "JPEG2000.dcm", "modality NM, JPEG 2000, 3 private creators"),
    _F("RT", PYDICOM_TEST, "rtdose.dcm", "RT Dose, 15 frames, implicit VR little endian"),
    _F("RT", PYDICOM_TEST, "rtplan.dcm", "RT Plan, implicit VR little endian, no pixel data"),
    _F("RT", PYDICOM_TEST, "rtstruct.dcm", "RT Structure Set; the source has no file meta"),
    _F("SEG", PYDICOM_DATA, "liver.dcm", "Segmentation, 3 frames, 1-bit pixels"),
    _F("SEG", PYDICOM_DATA, "liver_expb.dcm", "Segmentation, explicit VR big endian"),
    _F("SR", PYDICOM_TEST, "reportsi.dcm", "Basic Text SR"),
    _F("SR", PYDICOM_TEST, "test-SR.dcm", "Comprehensive SR"),
    _F("ECG", PYDICOM_TEST, "waveform_ecg.dcm", "12-lead ECG waveform, no pixel data"),
    _F("charset", PYDICOM_CHARSET, "chrArab.dcm", "Arabic, ISO_IR 127"),
    _F("charset", PYDICOM_CHARSET, "chrFren.dcm", "French, ISO_IR 100"),
    _F("charset", PYDICOM_CHARSET, "chrFrenMulti.dcm", "French, multi-valued names, ISO_IR 100"),
    _F("charset", PYDICOM_CHARSET, "chrGerm.dcm", "German, ISO_IR 100"),
    _F("charset", PYDICOM_CHARSET, "chrGreek.dcm", "Greek, ISO_IR 126"),
    _F("charset", PYDICOM_CHARSET, "chrH31.dcm", "Japanese, ISO 2022 IR 87 code extensions"),
    _F("charset", PYDICOM_CHARSET, "chrH32.dcm", "Japanese, ISO 2022 IR 13 and IR 87"),
    _F("charset", PYDICOM_CHARSET, "chrHbrw.dcm", "Hebrew, ISO_IR 138"),
    _F("charset", PYDICOM_CHARSET, "chrI2.dcm", "Korean, ISO 2022 IR 149"),
    _F("charset", PYDICOM_CHARSET, "chrJapMulti.dcm", "Japanese CR, multi-valued charset"),
    _F("charset", PYDICOM_CHARSET, "chrJapMultiExplicitIR6.dcm", "Japanese CR, explicit IR 6"),
    _F("charset", PYDICOM_CHARSET, "chrKoreanMulti.dcm", "Korean CR, multi-valued charset"),
    _F("charset", PYDICOM_CHARSET, "chrRuss.dcm", "Cyrillic, ISO_IR 144"),
    _F("charset", PYDICOM_CHARSET, "chrX1.dcm", "UTF-8, ISO_IR 192"),
    _F("charset", PYDICOM_CHARSET, "chrX2.dcm", "Chinese, GB18030"),
    _F("private", PYDICOM_DATA, "MR-SIEMENS-DICOM-WithOverlays.dcm", "Siemens CSA, overlays"),
    _F("private", PYDICOM_DATA, "explicit_VR-UN.dcm", "private elements with VR UN, CT"),
    _F("private", PYDICOM_DATA, "OBXXXX1A_rle.dcm", "Philips private sequences, US, RLE"),
)
"""Every file of the bundled corpus, in build order."""

EXCLUDED_FILES: dict[str, str] = {
    "priv_SQ.dcm": "fragment without SOP Class or SOP Instance UID",
    "nested_priv_SQ.dcm": "fragment without SOP Class or SOP Instance UID",
    "JPEGLSNearLossless_08.dcm": "no Patient, Study or Series module; same for all JPEG-LS lossy",
    "RG1_UNCI.dcm": "4 to 7 MB each, like the other RG1 and RG3 radiographs",
    "MR_truncated.dcm": "deliberately truncated, like rtplan_truncated.dcm",
}
"""Files a reader might expect and the reason each is left out."""


def default_cache_dir() -> Path:
    """Return the cache folder for built corpora.

    The folder is $REHEARSE_CACHE_DIR if set, else
    $XDG_CACHE_HOME/dicom-rehearsal, else ~/.cache/dicom-rehearsal.
    """
    configured = os.environ.get("REHEARSE_CACHE_DIR")
    if configured:
        return Path(configured)

    # The XDG Base Directory specification requires ignoring relative values.
    xdg_cache_home = os.environ.get("XDG_CACHE_HOME", "")
    if os.path.isabs(xdg_cache_home):
        return Path(xdg_cache_home) / "dicom-rehearsal"

    return Path.home() / ".cache" / "dicom-rehearsal"


def bundled_corpus(cache_dir: Path | None = None) -> Path:
    """Return the folder of the bundled corpus, building it first if it is not there.

    The corpus is built in a temporary folder beside the final one and then
    renamed, so a killed build never leaves a partial corpus under the final
    name. When two processes build at once, the first rename wins and the
    other build is discarded.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = cache_dir / BUNDLED_FOLDER
    if (target / MANIFEST_NAME).is_file():
        return target
    if target.exists():
        msg = (
            f"{target} exists but has no {MANIFEST_NAME}, so it is not a finished "
            "bundled corpus. Delete that folder and run again."
        )
        raise CorpusError(msg)

    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        # NOTE: a build killed before the rename leaves this hidden folder behind.
        staging = Path(tempfile.mkdtemp(prefix=f".{BUNDLED_FOLDER}-", dir=cache_dir))
    except OSError as exc:
        msg = (
            f"failed to create the corpus cache folder {cache_dir}: {exc.strerror}. "
            "Set REHEARSE_CACHE_DIR to a writable folder."
        )
        raise CorpusError(msg) from exc

    try:
        _build(staging)
        staging.chmod(0o755)  # mkdtemp makes it private to the user
        _publish(staging, target)
    except OSError as exc:
        msg = (
            f"failed to write the bundled corpus in {staging}: {exc}. "
            "Set REHEARSE_CACHE_DIR to a writable folder with free space."
        )
        raise CorpusError(msg) from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    return target


def source_folders() -> dict[str, Path]:
    """Return the installed folder of each source store."""
    pydicom_data_dir = Path(pydicom.data.__file__).parent
    try:
        import data_store
    except ImportError as exc:
        msg = (
            "the pydicom-data package is not installed, so the bundled corpus "
            "cannot be built. Install it with: pip install pydicom-data"
        )
        raise CorpusError(msg) from exc

    return {
        PYDICOM_TEST: pydicom_data_dir / "test_files",
        PYDICOM_CHARSET: pydicom_data_dir / "charset_files",
        PYDICOM_DATA: Path(data_store.__file__).parent / "data",
    }


def _build(staging: Path) -> None:
    folders = source_folders()
    files: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    for entry in BUNDLED_FILES:
        source = folders[entry.store] / entry.name
        result = _copy_with_new_uids(entry, source, staging)
        if isinstance(result, str):
            skipped.append({"source": _source_label(entry), "reason": result})
        else:
            files.append(result)

    if not files:
        msg = f"no bundled corpus file could be read from {', '.join(map(str, folders.values()))}"
        raise CorpusError(msg)

    manifest = {
        "corpus": BUNDLED_FOLDER,
        "pydicom_version": pydicom.__version__,
        "pydicom_data_version": importlib.metadata.version("pydicom-data"),
        "files": sorted(files, key=lambda item: str(item["path"])),
        "skipped": skipped,
    }
    manifest_text = json.dumps(manifest, indent=2, ensure_ascii=False) + "\n"
    (staging / MANIFEST_NAME).write_text(manifest_text, encoding="utf-8")


def _copy_with_new_uids(entry: BundledFile, source: Path, staging: Path) -> dict[str, Any] | str:
    """Copy one source file with new UIDs; return its manifest entry or why it was skipped."""
    if not source.is_file():
        return f"source file not found: {source}"
    try:
        # force=True because rtstruct.dcm has no preamble and no file meta.
        ds = dcmread(source, force=True)
    except Exception as exc:  # noqa: BLE001 - any parse failure skips the file
        return f"pydicom cannot read {source}: {type(exc).__name__}: {exc}"

    missing = [
        keyword
        for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
        if not ds.get(keyword)
    ]
    transfer_syntax_uid = transfer_syntax_of(ds)
    if missing or transfer_syntax_uid is None:
        return f"missing {', '.join(missing) or 'transfer syntax'} in {source}"

    original_study_uid = str(ds.StudyInstanceUID)
    original_series_uid = str(ds.SeriesInstanceUID)
    ensure_file_meta(ds, transfer_syntax_uid)
    sop_instance_uid = derive_uid(BUNDLED_FOLDER, "sop", entry.store, entry.name)
    rewrite_uids(ds, sop_instance_uid, _map_bundled_uid)

    relpath = f"{entry.folder}/{entry.name}"
    write_atomically(ds, staging / relpath)
    instance = read_instance(staging / relpath, relpath)
    if not isinstance(instance, CorpusInstance):
        return f"the copy of {source} cannot be indexed: {instance}"

    return _manifest_entry(entry, instance, original_study_uid, original_series_uid)


def _map_bundled_uid(role: str, original: str) -> str:
    return derive_uid(BUNDLED_FOLDER, role, original)


def _manifest_entry(
    entry: BundledFile,
    instance: CorpusInstance,
    original_study_uid: str,
    original_series_uid: str,
) -> dict[str, Any]:
    return {
        "path": instance.relpath,
        "source": _source_label(entry),
        "purpose": entry.purpose,
        "sop_class_uid": instance.sop_class_uid,
        "sop_class_name": UID(instance.sop_class_uid).name,
        "transfer_syntax_uid": instance.transfer_syntax_uid,
        "transfer_syntax_name": UID(instance.transfer_syntax_uid).name,
        "modality": instance.modality,
        "number_of_frames": instance.number_of_frames,
        "size_bytes": instance.size_bytes,
        "sop_instance_uid": instance.sop_instance_uid,
        "study_instance_uid": instance.study_instance_uid,
        "series_instance_uid": instance.series_instance_uid,
        "original_study_instance_uid": original_study_uid,
        "original_series_instance_uid": original_series_uid,
    }


def _source_label(entry: BundledFile) -> str:
    return f"{entry.store}:{entry.name}"


def _publish(staging: Path, target: Path) -> None:
    try:
        os.rename(staging, target)
    except OSError as exc:
        if (target / MANIFEST_NAME).is_file():
            return  # another process finished the same build first
        msg = f"failed to move the built corpus from {staging} to {target}: {exc.strerror}"
        raise CorpusError(msg) from exc
