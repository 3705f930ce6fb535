"""The corpora the benchmarks send: plans of existing folders and synthetic objects.

:func:`plan_for` indexes a folder with the simulator's own corpus reader.
pynetdicom workers propose one presentation context per (SOP class,
transfer syntax) pair of the plan, as the simulator's nodes do. The DCMTK
peers get the same pairs through :func:`write_dcmtk_config`, because
storescu proposes only uncompressed transfer syntaxes by default.

The synthetic objects are written with pydicom. Their pixel data is one
block of seeded random bytes, repeated, so that no file is sparse.
"""

from __future__ import annotations

import random
import struct
from collections import defaultdict
from pathlib import Path

from _plan import Plan
from _procs import BenchmarkError
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian, generate_uid

from simulator.corpus import Corpus

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MULTIFRAME_WORD_SC_STORAGE = "1.2.840.10008.5.1.4.1.1.7.3"
CT_ROWS = CT_COLUMNS = 512
CT_PIXEL_BYTES = CT_ROWS * CT_COLUMNS * 2
PIXEL_SEED = 20261204
WRITE_CHUNK_BYTES = 4 * 1024 * 1024
MAX_PROPOSED_CONTEXTS = 128
"""PS3.8 allows at most 128 presentation contexts in one A-ASSOCIATE-RQ."""


def plan_for(root: Path) -> Plan:
    """Index ``root`` with the simulator's corpus reader and build its plan."""
    corpus = Corpus.load(root)
    instances = list(corpus.instances)
    pairs = tuple(dict.fromkeys((i.sop_class_uid, i.transfer_syntax_uid) for i in instances))
    if len(pairs) > MAX_PROPOSED_CONTEXTS:
        raise BenchmarkError(
            f"corpus {root} uses {len(pairs)} (SOP class, transfer syntax) pairs; one "
            f"association can propose at most {MAX_PROPOSED_CONTEXTS}"
        )

    return Plan(root, tuple(i.path for i in instances), pairs, sum(i.size_bytes for i in instances))


def _ct_template(study_uid: UID, series_uid: UID, frame_of_reference_uid: UID) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.Modality = "CT"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.PatientName = "Benchmark^Synthetic"
    ds.PatientID = "BENCH-0001"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = frame_of_reference_uid
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.Manufacturer = "dicom-rehearsal benchmark"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = CT_ROWS
    ds.Columns = CT_COLUMNS
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    ds.PixelSpacing = [0.7, 0.7]
    ds.SliceThickness = 1.0
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]

    return ds


def _file_meta(sop_class_uid: str, sop_instance_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID

    return meta


def write_ct_series(folder: Path, count: int) -> Path:
    """Write ``count`` CT instances of one study and series, 512x512 16-bit, into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    pixels = random.Random(PIXEL_SEED).randbytes(CT_PIXEL_BYTES)
    template = _ct_template(generate_uid(), generate_uid(), generate_uid())
    for number in range(1, count + 1):
        ds = template.copy()
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta = _file_meta(CT_IMAGE_STORAGE, ds.SOPInstanceUID)
        ds.InstanceNumber = number
        ds.ImagePositionPatient = [0, 0, -float(number)]
        ds.PixelData = pixels
        ds.save_as(folder / f"CT{number:05d}.dcm", enforce_file_format=True)

    return folder


def write_large_object(path: Path, target_bytes: int) -> Path:
    """Write one multi-frame 512x512 16-bit object of about ``target_bytes`` to ``path``.

    pydicom writes the header; the Pixel Data element is appended in
    WRITE_CHUNK_BYTES pieces, so the object never sits in memory whole.
    """
    frames = max(1, target_bytes // CT_PIXEL_BYTES)
    pixel_bytes = frames * CT_PIXEL_BYTES
    ds = _ct_template(generate_uid(), generate_uid(), generate_uid())
    del ds.RescaleIntercept, ds.RescaleSlope, ds.SliceThickness, ds.ImageOrientationPatient
    ds.SOPClassUID = MULTIFRAME_WORD_SC_STORAGE
    ds.Modality = "OT"
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.ConversionType = "SYN"
    ds.SOPInstanceUID = generate_uid()
    ds.InstanceNumber = 1
    ds.NumberOfFrames = frames
    ds.FrameIncrementPointer = 0x00181063  # Frame Time
    ds.FrameTime = 40.0
    ds.file_meta = _file_meta(MULTIFRAME_WORD_SC_STORAGE, ds.SOPInstanceUID)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    block = random.Random(PIXEL_SEED).randbytes(WRITE_CHUNK_BYTES)
    with path.open("ab") as stream:
        # Explicit VR little endian: tag, VR "OW", two reserved bytes, 32-bit length.
        stream.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, pixel_bytes))
        left = pixel_bytes
        while left > 0:
            piece = block[: min(left, len(block))]
            stream.write(piece)
            left -= len(piece)

    return path


def write_dcmtk_config(path: Path, pairs: tuple[tuple[str, str], ...]) -> Path:
    """Write a DCMTK association configuration with profiles BenchSCU and BenchSCP.

    BenchSCU proposes one presentation context per pair, as the pynetdicom
    sender does. BenchSCP accepts each SOP class with every transfer syntax
    the corpus uses for it; an acceptor profile may name a SOP class only once.
    """
    syntaxes = list(dict.fromkeys(ts for _, ts in pairs))
    by_sop_class: dict[str, list[str]] = defaultdict(list)
    for sop_class, ts in pairs:
        by_sop_class[sop_class].append(ts)
    lines = ["[[TransferSyntaxes]]"]
    for index, ts in enumerate(syntaxes, start=1):
        lines += [f"[TS{index}]", f"TransferSyntax1 = {ts}"]
    for index, group in enumerate(by_sop_class.values(), start=1):
        lines.append(f"[ACCEPT{index}]")
        lines += [f"TransferSyntax{n} = {ts}" for n, ts in enumerate(group, start=1)]
    lines += ["[[PresentationContexts]]", "[PROPOSE]"]
    for index, (sop_class, ts) in enumerate(pairs, start=1):
        lines.append(f"PresentationContext{index} = {sop_class}\\TS{syntaxes.index(ts) + 1}")
    lines.append("[ACCEPT]")
    for index, sop_class in enumerate(by_sop_class, start=1):
        lines.append(f"PresentationContext{index} = {sop_class}\\ACCEPT{index}")
    lines += ["[[Profiles]]", "[BenchSCU]", "PresentationContexts = PROPOSE",
              "[BenchSCP]", "PresentationContexts = ACCEPT"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    return path
