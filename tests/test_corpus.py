"""Tests of the corpus package: bundled corpus, index, selection, grouping, repeats."""

from __future__ import annotations

import json
import re
import shutil
import warnings
from collections import defaultdict
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)

from simulator.corpus import (
    BUNDLED_FILES,
    BUNDLED_FOLDER,
    MANIFEST_NAME,
    Corpus,
    CorpusError,
    CorpusInstance,
    bundled_corpus,
    default_cache_dir,
    group_instances,
    materialize_repeat,
)
from simulator.corpus._glob import glob_matches
from simulator.corpus.bundled import PYDICOM_CHARSET, PYDICOM_TEST, source_folders

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2.1"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4.1"
US_IMAGE = "1.2.840.10008.5.1.4.1.1.6.1"
US_MULTIFRAME_IMAGE = "1.2.840.10008.5.1.4.1.1.3.1"
SECONDARY_CAPTURE_IMAGE = "1.2.840.10008.5.1.4.1.1.7"
RT_DOSE = "1.2.840.10008.5.1.4.1.1.481.2"
RT_PLAN = "1.2.840.10008.5.1.4.1.1.481.5"
RT_STRUCTURE_SET = "1.2.840.10008.5.1.4.1.1.481.3"
SEGMENTATION = "1.2.840.10008.5.1.4.1.1.66.4"


@pytest.fixture(scope="module")
def bundled_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return bundled_corpus(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def bundled(bundled_root: Path) -> Corpus:
    return Corpus.load(bundled_root)


@pytest.fixture(scope="module")
def manifest(bundled_root: Path) -> dict[str, object]:
    result: dict[str, object] = json.loads((bundled_root / MANIFEST_NAME).read_text("utf-8"))
    return result


def _manifest_files(manifest: dict[str, object]) -> list[dict[str, object]]:
    files = manifest["files"]
    assert isinstance(files, list)
    return files


def _copy_sources(tmp_path: Path, store: str, names: list[str]) -> Path:
    corpus_root = tmp_path / "corpus"
    corpus_root.mkdir(exist_ok=True)
    for name in names:
        shutil.copyfile(source_folders()[store] / name, corpus_root / name)
    return corpus_root


# Bundled corpus


def test_bundled_builds_every_listed_file(bundled_root: Path, manifest: dict[str, object]) -> None:
    """Every file of the table is copied, listed in the manifest and indexable."""
    files = _manifest_files(manifest)
    assert manifest["skipped"] == []
    assert sorted(str(item["path"]) for item in files) == sorted(
        f"{entry.folder}/{entry.name}" for entry in BUNDLED_FILES
    )
    for item in files:
        assert (bundled_root / str(item["path"])).is_file()


def test_bundled_folder_is_versioned(bundled_root: Path) -> None:
    """The corpus folder carries the version and no staging folder is left."""
    assert bundled_root.name == BUNDLED_FOLDER
    assert [path.name for path in bundled_root.parent.iterdir()] == [BUNDLED_FOLDER]


def test_bundled_sop_instance_uids_unique(bundled: Corpus) -> None:
    """Every bundled instance has its own SOP Instance UID."""
    uids = [instance.sop_instance_uid for instance in bundled.instances]
    assert len(uids) == len(BUNDLED_FILES)
    assert len(set(uids)) == len(uids)


def test_bundled_uids_are_new(bundled: Corpus) -> None:
    """Every rewritten UID is a 2.25 UID of at most 64 characters."""
    for instance in bundled.instances:
        for uid in (
            instance.sop_instance_uid,
            instance.study_instance_uid,
            instance.series_instance_uid,
        ):
            assert uid.startswith("2.25."), instance.relpath
            assert len(uid) <= 64, instance.relpath


def test_bundled_file_meta_matches_dataset(bundled: Corpus) -> None:
    """Media Storage SOP Instance UID equals the dataset's SOP Instance UID."""
    for instance in bundled.instances:
        ds = dcmread(instance.path, stop_before_pixels=True)
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID, instance.relpath
        assert ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID, instance.relpath


def test_bundled_study_consistency(manifest: dict[str, object]) -> None:
    """Files of one original study share one new study, and different studies stay apart."""
    new_by_original: dict[str, set[str]] = defaultdict(set)
    for item in _manifest_files(manifest):
        new_by_original[str(item["original_study_instance_uid"])].add(
            str(item["study_instance_uid"])
        )
    for original, new_uids in new_by_original.items():
        assert len(new_uids) == 1, original
    all_new = [uid for uids in new_by_original.values() for uid in uids]
    assert len(set(all_new)) == len(new_by_original)


def test_bundled_series_consistency(bundled: Corpus) -> None:
    """The six MR_small variants stay one series of one study."""
    mr = bundled.select(globs=["MR/*"])
    assert len(mr) == 6
    assert len({instance.study_instance_uid for instance in mr}) == 1
    assert len({instance.series_instance_uid for instance in mr}) == 1


@pytest.mark.parametrize(
    "transfer_syntax_uid",
    [
        ImplicitVRLittleEndian,
        ExplicitVRLittleEndian,
        ExplicitVRBigEndian,
        DeflatedExplicitVRLittleEndian,
        RLELossless,
        JPEGBaseline8Bit,
        JPEGExtended12Bit,
        JPEGLosslessSV1,
        JPEGLSLossless,
        JPEG2000Lossless,
        JPEG2000,
    ],
)
def test_bundled_transfer_syntax_present(bundled: Corpus, transfer_syntax_uid: str) -> None:
    """The bundled corpus contains at least one file in each listed transfer syntax."""
    found = {instance.transfer_syntax_uid for instance in bundled.instances}
    assert transfer_syntax_uid in found


@pytest.mark.parametrize(
    "sop_class_uid",
    [
        CT_IMAGE,
        ENHANCED_CT_IMAGE,
        MR_IMAGE,
        ENHANCED_MR_IMAGE,
        US_IMAGE,
        US_MULTIFRAME_IMAGE,
        SECONDARY_CAPTURE_IMAGE,
        RT_DOSE,
        RT_PLAN,
        RT_STRUCTURE_SET,
        SEGMENTATION,
    ],
)
def test_bundled_sop_class_present(bundled: Corpus, sop_class_uid: str) -> None:
    """The bundled corpus contains at least one instance of each listed SOP class."""
    assert bundled.select(sop_classes=[sop_class_uid])


def test_bundled_enhanced_mr_variants(bundled: Corpus) -> None:
    """Enhanced MR comes in five transfer syntaxes, each with 10 frames."""
    enhanced = bundled.select(sop_classes=[ENHANCED_MR_IMAGE])
    assert {instance.transfer_syntax_uid for instance in enhanced} == {
        ExplicitVRLittleEndian,
        ExplicitVRBigEndian,
        RLELossless,
        JPEG2000Lossless,
        JPEGLSLossless,
    }
    assert {instance.number_of_frames for instance in enhanced} == {10}


@pytest.mark.parametrize(
    "character_set",
    [
        "ISO_IR 100",
        "ISO_IR 126",
        "ISO_IR 127",
        "ISO_IR 138",
        "ISO_IR 144",
        "ISO_IR 192",
        "GB18030",
        "ISO 2022 IR 87",
        "ISO 2022 IR 13",
        "ISO 2022 IR 149",
    ],
)
def test_bundled_character_set_present(bundled: Corpus, character_set: str) -> None:
    """The charset folder covers each listed Specific Character Set term."""
    found = {
        term
        for instance in bundled.select(globs=["charset/**"])
        for term in instance.specific_character_set
    }
    assert character_set in found


def test_bundled_keeps_non_ascii_names(bundled_root: Path) -> None:
    """A charset file keeps its Cyrillic Patient Name byte for byte."""
    source = dcmread(source_folders()[PYDICOM_CHARSET] / "chrRuss.dcm")
    copy = dcmread(bundled_root / "charset" / "chrRuss.dcm")
    assert copy.PatientName == source.PatientName
    assert copy["PatientName"].value.original_string == source["PatientName"].value.original_string
    assert not str(copy.PatientName).isascii()


def test_bundled_keeps_encoded_pixel_data(bundled_root: Path) -> None:
    """A JPEG 2000 copy keeps the source's encoded pixel data unchanged."""
    source = dcmread(source_folders()[PYDICOM_TEST] / "MR_small_jp2klossless.dcm")
    copy = dcmread(bundled_root / "MR" / "MR_small_jp2klossless.dcm")
    assert copy.file_meta.TransferSyntaxUID == JPEG2000Lossless
    assert copy.PixelData == source.PixelData


def test_bundled_private_folder_has_private_creators(bundled: Corpus) -> None:
    """Every file in private/ has at least one Private Creator."""
    private = bundled.select(globs=["private/**"])
    assert len(private) == 3
    for instance in private:
        assert instance.private_creators, instance.relpath


def test_bundled_rtstruct_gets_file_meta(bundled_root: Path) -> None:
    """The RT Structure Set, whose source has no file meta, is written with one."""
    ds = dcmread(bundled_root / "RT" / "rtstruct.dcm")
    assert ds.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    assert ds.SOPClassUID == RT_STRUCTURE_SET


def test_bundled_rebuild_identical(tmp_path: Path, bundled_root: Path) -> None:
    """A build in another cache folder writes identical files and UIDs."""
    rebuilt = bundled_corpus(tmp_path / "other-cache")
    assert rebuilt != bundled_root
    assert (rebuilt / MANIFEST_NAME).read_bytes() == (bundled_root / MANIFEST_NAME).read_bytes()
    for entry in BUNDLED_FILES:
        relpath = Path(entry.folder, entry.name)
        assert (rebuilt / relpath).read_bytes() == (bundled_root / relpath).read_bytes(), relpath


def test_bundled_second_call_reuses_folder(bundled_root: Path) -> None:
    """A second call returns the existing corpus without rewriting it."""
    manifest_mtime_ns = (bundled_root / MANIFEST_NAME).stat().st_mtime_ns
    assert bundled_corpus(bundled_root.parent) == bundled_root
    assert (bundled_root / MANIFEST_NAME).stat().st_mtime_ns == manifest_mtime_ns


def test_bundled_rejects_unfinished_folder(tmp_path: Path) -> None:
    """A corpus folder without a manifest is reported, not reused."""
    (tmp_path / BUNDLED_FOLDER).mkdir()
    with pytest.raises(CorpusError, match=re.escape(str(tmp_path / BUNDLED_FOLDER))):
        bundled_corpus(tmp_path)


def test_default_cache_dir_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """REHEARSE_CACHE_DIR wins over XDG_CACHE_HOME, which wins over the home folder."""
    monkeypatch.setenv("REHEARSE_CACHE_DIR", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "explicit"

    monkeypatch.delenv("REHEARSE_CACHE_DIR")
    assert default_cache_dir() == tmp_path / "xdg" / "dicom-rehearsal"

    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "dicom-rehearsal"


# Corpus.load


def test_load_missing_root_names_path(tmp_path: Path) -> None:
    """Loading a folder that does not exist names the folder."""
    missing = tmp_path / "no-such-corpus"
    with pytest.raises(CorpusError, match=re.escape(f"not found: {missing}")):
        Corpus.load(missing)


def test_load_file_as_root_names_path(tmp_path: Path) -> None:
    """Loading a file instead of a folder names the file."""
    not_a_folder = tmp_path / "file.dcm"
    not_a_folder.write_bytes(b"")
    with pytest.raises(CorpusError, match=re.escape(f"not a folder: {not_a_folder}")):
        Corpus.load(not_a_folder)


def test_load_empty_folder_names_path(tmp_path: Path) -> None:
    """Loading an empty folder names the folder."""
    with pytest.raises(CorpusError, match=re.escape(f"{tmp_path} contains no files")):
        Corpus.load(tmp_path)


def test_load_without_instances_names_reason(tmp_path: Path) -> None:
    """A folder of non-DICOM files is rejected with the path and a skip reason."""
    (tmp_path / "notes.txt").write_text("not DICOM\n", encoding="utf-8")
    with pytest.raises(CorpusError, match=r"contains no usable DICOM instance.*notes\.txt"):
        Corpus.load(tmp_path)


def test_load_skips_unusable_files(tmp_path: Path) -> None:
    """Non-DICOM files, a DICOMDIR and a file without SOP Instance UID are skipped with reasons."""
    corpus_root = _copy_sources(tmp_path, PYDICOM_TEST, ["CT_small.dcm", "no_meta.dcm"])
    (corpus_root / "notes.txt").write_text("not DICOM\n", encoding="utf-8")
    shutil.copyfile(
        source_folders()[PYDICOM_TEST] / "dicomdirtests" / "DICOMDIR", corpus_root / "DICOMDIR"
    )
    ds = dcmread(corpus_root / "CT_small.dcm")
    del ds.SOPInstanceUID
    ds.save_as(corpus_root / "no_sop_instance.dcm")

    corpus = Corpus.load(corpus_root)
    skipped = dict(corpus.skipped)

    assert [instance.relpath for instance in corpus.instances] == ["CT_small.dcm"]
    assert skipped["notes.txt"].startswith("not DICOM")
    assert skipped["no_meta.dcm"].startswith("not DICOM")
    assert skipped["DICOMDIR"].startswith("DICOMDIR")
    assert skipped["no_sop_instance.dcm"] == "missing SOP Instance UID (0008,0018)"


def test_load_guesses_transfer_syntax_without_meta(tmp_path: Path) -> None:
    """Files without file meta get the transfer syntax of pydicom's encoding guess."""
    names = ["ExplVR_BigEndNoMeta.dcm", "ExplVR_LitEndNoMeta.dcm", "rtstruct.dcm"]
    corpus = Corpus.load(_copy_sources(tmp_path, PYDICOM_TEST, names))
    by_relpath = {instance.relpath: instance for instance in corpus.instances}

    assert by_relpath["ExplVR_BigEndNoMeta.dcm"].transfer_syntax_uid == ExplicitVRBigEndian
    assert by_relpath["ExplVR_LitEndNoMeta.dcm"].transfer_syntax_uid == ExplicitVRLittleEndian
    assert by_relpath["rtstruct.dcm"].transfer_syntax_uid == ImplicitVRLittleEndian


def test_load_walks_sorted_and_recursive(tmp_path: Path) -> None:
    """Files in nested folders are found and listed in sorted relpath order."""
    source = source_folders()[PYDICOM_TEST] / "CT_small.dcm"
    for relpath in ["b/z.dcm", "a/2/y.dcm", "a/1/x.dcm", "c.dcm"]:
        (tmp_path / relpath).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, tmp_path / relpath)

    corpus = Corpus.load(tmp_path)

    assert [instance.relpath for instance in corpus.instances] == [
        "a/1/x.dcm",
        "a/2/y.dcm",
        "b/z.dcm",
        "c.dcm",
    ]


def test_load_reads_no_pixel_data(tmp_path: Path) -> None:
    """A file cut off inside its encapsulated pixel data indexes without a read warning."""
    source = source_folders()[PYDICOM_TEST] / "MR_small_jp2klossless.dcm"
    source_bytes = source.read_bytes()
    (tmp_path / "cut.dcm").write_bytes(source_bytes[: len(source_bytes) - 2000])

    # Reading the pixel data would warn that the file ends before the
    # sequence delimiter; reading the header only never gets there.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        corpus = Corpus.load(tmp_path)

    assert [instance.relpath for instance in corpus.instances] == ["cut.dcm"]
    assert [str(warning.message) for warning in caught] == []


def test_load_header_fields(bundled: Corpus, bundled_root: Path) -> None:
    """An indexed instance carries the header values and the file size."""
    ct = bundled.select(globs=["CT/CT_small.dcm"])[0]
    assert ct == CorpusInstance(
        path=bundled_root / "CT" / "CT_small.dcm",
        relpath="CT/CT_small.dcm",
        sop_class_uid=CT_IMAGE,
        sop_instance_uid=ct.sop_instance_uid,
        study_instance_uid=ct.study_instance_uid,
        series_instance_uid=ct.series_instance_uid,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        modality="CT",
        size_bytes=(bundled_root / "CT" / "CT_small.dcm").stat().st_size,
        specific_character_set=("ISO_IR 100",),
        private_creators=ct.private_creators,
        number_of_frames=1,
    )
    assert len(ct.private_creators) == 9
    assert "GEMS_IDEN_01" in ct.private_creators


def test_load_skips_manifest(bundled: Corpus) -> None:
    """The bundled corpus's MANIFEST.json is the only skipped file."""
    assert [relpath for relpath, _reason in bundled.skipped] == [MANIFEST_NAME]


# Corpus.select


def test_select_without_filters_returns_all(bundled: Corpus) -> None:
    """No filter, or empty filter lists, select every instance in order."""
    assert bundled.select() == bundled.instances
    assert bundled.select(globs=[], sop_classes=[], modalities=[]) == bundled.instances


def test_select_by_glob(bundled: Corpus) -> None:
    """A folder glob selects exactly the files under that folder."""
    selected = bundled.select(globs=["CT/**"])
    assert [instance.relpath for instance in selected] == [
        "CT/693_J2KI.dcm",
        "CT/693_J2KR.dcm",
        "CT/CT_small.dcm",
    ]


def test_select_globs_are_alternatives(bundled: Corpus) -> None:
    """An instance matching any of several globs is selected."""
    selected = bundled.select(globs=["RT/rtplan.dcm", "SR/*"])
    assert [instance.relpath for instance in selected] == [
        "RT/rtplan.dcm",
        "SR/reportsi.dcm",
        "SR/test-SR.dcm",
    ]


def test_select_by_sop_class_and_modality(bundled: Corpus) -> None:
    """SOP class and modality filters must both match."""
    selected = bundled.select(sop_classes=[SECONDARY_CAPTURE_IMAGE], modalities=["nm"])
    assert [instance.relpath for instance in selected] == ["SC/JPEG2000.dcm", "SC/JPGExtended.dcm"]


def test_select_all_filters_must_match(bundled: Corpus) -> None:
    """A glob and a modality that never occur together select nothing."""
    assert bundled.select(globs=["CT/**"], modalities=["MR"]) == []
    assert bundled.select(globs=["private/**"], modalities=["MR"]) == bundled.select(
        globs=["private/MR-*"]
    )


@pytest.mark.parametrize(
    ("pattern", "relpath", "expected"),
    [
        ("CT/**", "CT/a.dcm", True),
        ("CT/**", "CT/sub/a.dcm", True),
        ("CT/**", "CTX/a.dcm", False),
        ("CT/*", "CT/a.dcm", True),
        ("CT/*", "CT/sub/a.dcm", False),
        ("*.dcm", "a.dcm", True),
        ("*.dcm", "CT/a.dcm", False),
        ("**/*.dcm", "a.dcm", True),
        ("**/*.dcm", "CT/sub/a.dcm", True),
        ("CT/**/a.dcm", "CT/a.dcm", True),
        ("CT/**/a.dcm", "CT/x/y/a.dcm", True),
        ("MR/MR_small_?LE.dcm", "MR/MR_small_RLE.dcm", True),
        ("MR/MR_small_[RJ]*", "MR/MR_small_RLE.dcm", True),
        ("MR/MR_small_[!R]*", "MR/MR_small_RLE.dcm", False),
        ("ct/**", "CT/a.dcm", False),
        ("a[b", "a[b", True),
        ("a.dcm", "axdcm", False),
    ],
)
def test_glob_matching(pattern: str, relpath: str, expected: bool) -> None:
    """Glob patterns follow the documented segment rules."""
    assert glob_matches(pattern, relpath) is expected


# group_instances


def test_group_by_study(bundled: Corpus) -> None:
    """Grouping by study keeps first-appearance order and instance order."""
    instances = bundled.select(globs=["CT/**", "MR/**"])
    groups = group_instances(instances, "study")

    assert [instance for group in groups for instance in group] != []
    for group in groups:
        assert len({instance.study_instance_uid for instance in group}) == 1
        assert group == sorted(group, key=instances.index)
    firsts = [instances.index(group[0]) for group in groups]
    assert firsts == sorted(firsts)
    assert sum(len(group) for group in groups) == len(instances)
    assert len(groups) == len({instance.study_instance_uid for instance in instances})


def test_group_by_series(bundled: Corpus) -> None:
    """Grouping by series puts the two 693 CT files together and CT_small alone."""
    groups = group_instances(bundled.select(globs=["CT/**"]), "series")
    assert [[instance.relpath for instance in group] for group in groups] == [
        ["CT/693_J2KI.dcm", "CT/693_J2KR.dcm"],
        ["CT/CT_small.dcm"],
    ]


def test_group_by_instance(bundled: Corpus) -> None:
    """Grouping by instance gives one group per instance."""
    instances = bundled.select(globs=["SR/*"])
    assert group_instances(instances, "instance") == [[instance] for instance in instances]


def test_group_in_chunks(bundled: Corpus) -> None:
    """An integer N gives chunks of N with a shorter last chunk."""
    instances = bundled.instances[:7]
    groups = group_instances(instances, 3)
    assert [len(group) for group in groups] == [3, 3, 1]
    assert [instance for group in groups for instance in group] == instances


@pytest.mark.parametrize("by", [0, -2, True, "patient", "3"])
def test_group_rejects_invalid_key(bundled: Corpus, by: object) -> None:
    """An unknown grouping or a chunk size below 1 raises CorpusError naming the value."""
    with pytest.raises(CorpusError, match="invalid grouping"):
        group_instances(bundled.instances, by)  # type: ignore[arg-type]


# materialize_repeat


def test_repeat_zero_returns_instances(bundled: Corpus, tmp_path: Path) -> None:
    """Repeat 0 returns the instances unchanged and writes nothing."""
    assert materialize_repeat(bundled.instances, 0, seed=7, out_dir=tmp_path) == bundled.instances
    assert list(tmp_path.iterdir()) == []


def test_repeat_gives_distinct_uids(bundled: Corpus, tmp_path: Path) -> None:
    """Repeats 1 and 2 give SOP, study and series UIDs unlike each other and the originals."""
    first = materialize_repeat(bundled.instances, 1, seed=7, out_dir=tmp_path / "r1")
    second = materialize_repeat(bundled.instances, 2, seed=7, out_dir=tmp_path / "r2")

    sop_uids = [i.sop_instance_uid for i in bundled.instances + first + second]
    assert len(set(sop_uids)) == 3 * len(bundled.instances)
    original_studies = {i.study_instance_uid for i in bundled.instances}
    assert original_studies.isdisjoint({i.study_instance_uid for i in first})
    assert {i.study_instance_uid for i in first}.isdisjoint({i.study_instance_uid for i in second})
    original_series = {i.series_instance_uid for i in bundled.instances}
    assert original_series.isdisjoint({i.series_instance_uid for i in first})


def test_repeat_keeps_study_consistency(bundled: Corpus, tmp_path: Path) -> None:
    """Copies of one study share one new study, with as many studies and series as before."""
    copies = materialize_repeat(bundled.instances, 1, seed=7, out_dir=tmp_path)

    new_by_original: dict[str, set[str]] = defaultdict(set)
    for original, copy in zip(bundled.instances, copies, strict=True):
        new_by_original[original.study_instance_uid].add(copy.study_instance_uid)
    assert all(len(new_uids) == 1 for new_uids in new_by_original.values())
    assert len({copy.study_instance_uid for copy in copies}) == len(new_by_original)
    assert len({(c.study_instance_uid, c.series_instance_uid) for c in copies}) == len(
        {(i.study_instance_uid, i.series_instance_uid) for i in bundled.instances}
    )


def test_repeat_copies_load_as_described(bundled: Corpus, tmp_path: Path) -> None:
    """Loading the repeat folder gives exactly the instances materialize_repeat returned."""
    copies = materialize_repeat(bundled.instances, 1, seed=7, out_dir=tmp_path)
    assert Corpus.load(tmp_path).instances == copies


def test_repeat_keeps_encoding(bundled: Corpus, tmp_path: Path) -> None:
    """Copies keep the transfer syntax and the encoded pixel data of their sources."""
    sources = bundled.select(globs=["MR-enhanced/*", "SC/image_dfl.dcm"])
    copies = materialize_repeat(sources, 1, seed=7, out_dir=tmp_path)
    for source, copy in zip(sources, copies, strict=True):
        assert copy.transfer_syntax_uid == source.transfer_syntax_uid
        source_ds = dcmread(source.path)
        copy_ds = dcmread(copy.path)
        assert copy_ds.PixelData == source_ds.PixelData, copy.relpath
        assert copy_ds.file_meta.MediaStorageSOPInstanceUID == copy.sop_instance_uid


def test_repeat_is_deterministic(bundled: Corpus, tmp_path: Path) -> None:
    """The same seed and index give the same UIDs, and another seed gives others."""
    instances = bundled.select(globs=["RT/*"])
    first = materialize_repeat(instances, 1, seed=7, out_dir=tmp_path / "a")
    again = materialize_repeat(instances, 1, seed=7, out_dir=tmp_path / "b")
    other_seed = materialize_repeat(instances, 1, seed=8, out_dir=tmp_path / "c")

    assert [i.sop_instance_uid for i in first] == [i.sop_instance_uid for i in again]
    assert {i.sop_instance_uid for i in first}.isdisjoint(i.sop_instance_uid for i in other_seed)


def test_repeat_adds_file_meta(tmp_path: Path) -> None:
    """A corpus file without file meta is copied with file meta in its guessed syntax."""
    corpus = Corpus.load(_copy_sources(tmp_path, PYDICOM_TEST, ["ExplVR_BigEndNoMeta.dcm"]))
    (copy,) = materialize_repeat(corpus.instances, 1, seed=1, out_dir=tmp_path / "r1")

    ds = dcmread(copy.path)
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRBigEndian
    assert ds.SOPInstanceUID == copy.sop_instance_uid


def test_repeat_refuses_to_overwrite_corpus(tmp_path: Path) -> None:
    """Writing a repeat into the corpus folder itself raises CorpusError naming the file."""
    corpus = Corpus.load(_copy_sources(tmp_path, PYDICOM_TEST, ["CT_small.dcm"]))
    with pytest.raises(CorpusError, match="would overwrite the corpus file"):
        materialize_repeat(corpus.instances, 1, seed=1, out_dir=corpus.root)


def test_repeat_rejects_negative_index(bundled: Corpus, tmp_path: Path) -> None:
    """A negative repeat index raises CorpusError."""
    with pytest.raises(CorpusError, match="invalid repeat index -1"):
        materialize_repeat(bundled.instances, -1, seed=1, out_dir=tmp_path)
