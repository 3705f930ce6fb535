"""Integrity comparison of a stored object with the one sent."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from pydicom import dcmread

from simulator.corpus import bundled_corpus
from simulator.recording.integrity import Explained, compare


@pytest.fixture
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return bundled_corpus(tmp_path_factory.mktemp("corpus-cache"))


@pytest.mark.parametrize("relpath", [
    "CT/CT_small.dcm",            # native pixel data with a defined length
    "CT/693_J2KR.dcm",            # encapsulated, undefined length
    "SC/image_dfl.dcm",           # deflated: offsets count in the inflated stream
    "MR/MR_small_bigendian.dcm",
])
def test_copy_is_intact(corpus: Path, tmp_path: Path, relpath: str) -> None:
    """A byte copy compares intact, with identical pixel data, in every encoding."""
    stored = tmp_path / "stored.dcm"
    shutil.copyfile(corpus / relpath, stored)

    result = compare(corpus / relpath, stored, Explained())

    assert result.pixel_data == "identical"
    assert result.unexplained == []


def test_changed_pixel_is_found(corpus: Path, tmp_path: Path) -> None:
    """One changed pixel value is an unexplained difference."""
    dataset = dcmread(corpus / "CT/CT_small.dcm")
    pixels = bytearray(dataset.PixelData)
    pixels[100] ^= 0xFF
    dataset.PixelData = bytes(pixels)
    stored = tmp_path / "stored.dcm"
    dataset.save_as(stored, enforce_file_format=True)

    result = compare(corpus / "CT/CT_small.dcm", stored, Explained())

    assert result.pixel_data == "different"
    assert "pixel data different" in result.unexplained


def test_dropped_private_block_explained_only_when_declared(corpus: Path, tmp_path: Path) -> None:
    """Losing private creators is a violation unless the route declares dropping them."""
    source = corpus / "private/MR-SIEMENS-DICOM-WithOverlays.dcm"
    dataset = dcmread(source)
    dataset.remove_private_tags()
    stored = tmp_path / "stored.dcm"
    dataset.save_as(stored, enforce_file_format=True)

    undeclared = compare(source, stored, Explained())
    declared = compare(source, stored, Explained(private_dropped=True))

    assert undeclared.private_creators_lost
    assert any(p.startswith("private creator") for p in undeclared.unexplained)
    assert declared.unexplained == []


def test_changed_attribute_explained_by_coercion(corpus: Path, tmp_path: Path) -> None:
    """A changed attribute is expected when a route's coercion sets it, and a violation otherwise."""
    source = corpus / "CT/CT_small.dcm"
    dataset = dcmread(source)
    dataset.InstitutionName = "Changed on the way"
    stored = tmp_path / "stored.dcm"
    dataset.save_as(stored, enforce_file_format=True)

    undeclared = compare(source, stored, Explained())
    declared = compare(source, stored, Explained(tags=frozenset({"(0008,0080)"})))

    assert undeclared.unexplained == ["(0008,0080) InstitutionName"]
    assert declared.unexplained == []
