"""Tests of node.verify: the ``radnode verify`` command and its provenance checks."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from node import PRIVATE_CREATOR
from node.signing import SigningIdentity, load_or_create_identity, sign_dataset
from node.verify import FileVerdict, check_provenance, main, verify_file

WEIGHTS_SHA256 = "3f" * 32


def code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def make_output(*, generative: bool = True) -> Dataset:
    """An enhanced Secondary Capture slice with all the provenance DESIGN.md requires."""
    source_study = generate_uid()
    source_series = generate_uid()
    ds = Dataset()
    ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "CT"
    ds.SeriesDescription = "AI ENHANCED: Thorax low dose"
    ds.DerivationDescription = "radnode 0.1.0 pipeline ct-denoise: unet version 1"
    ds.DerivationCodeSequence = Sequence([code("113087", "DCM", "Smoothing")])
    source = Dataset()
    source.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    source.ReferencedSOPInstanceUID = generate_uid()
    source.PurposeOfReferenceCodeSequence = Sequence(
        [code("121322", "DCM", "Source image for image processing operation")]
    )
    ds.SourceImageSequence = Sequence([source])
    related = Dataset()
    related.StudyInstanceUID = source_study
    related.SeriesInstanceUID = source_series
    related.PurposeOfReferenceCodeSequence = Sequence(
        [code("121323", "DCM", "Source series for image processing operation")]
    )
    ds.RelatedSeriesSequence = Sequence([related])
    ds.PatientName = "Test^Patient"
    ds.PatientID = "P-002"
    ds.StudyInstanceUID = source_study
    ds.SeriesInstanceUID = generate_uid()
    ds.ContentQualification = "RESEARCH"
    scanner = Dataset()
    scanner.Manufacturer = "ACME"
    scanner.PurposeOfReferenceCodeSequence = Sequence(
        [code("109101", "DCM", "Acquisition Equipment")]
    )
    node = Dataset()
    node.Manufacturer = "radnode"
    node.ManufacturerModelName = "ct-denoise"
    node.SoftwareVersions = ["radnode 0.1.0", "model 1"]
    if generative:
        node.ContributionDescription = f"unet; weights SHA-256 {WEIGHTS_SHA256}"
        purpose = code("109100", "DCM", "Synthesizing Equipment")
    else:
        node.ContributionDescription = "bilateral; classical method, no trained weights"
        purpose = code("109102", "DCM", "Processing Equipment")
    node.PurposeOfReferenceCodeSequence = Sequence([purpose])
    ds.ContributingEquipmentSequence = Sequence([scanner, node])
    ds.SyntheticData = "YES"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = 8
    ds.Columns = 8
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    block = ds.private_block(0x0077, PRIVATE_CREATOR, create=True)
    block.add_new(0x01, "LO", "ct-denoise")
    block.add_new(0x20, "IS", 7)
    ds.PixelData = np.arange(-32, 32, dtype=np.int16).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


@pytest.fixture(scope="module")
def identity(tmp_path_factory: pytest.TempPathFactory) -> SigningIdentity:
    return load_or_create_identity(tmp_path_factory.mktemp("data") / "keys")


@pytest.fixture
def good_file(tmp_path: Path, identity: SigningIdentity) -> Path:
    ds = make_output()
    sign_dataset(ds, identity)
    path = tmp_path / "good.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def run(argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    code = main(argv, out=out)
    return code, out.getvalue()


# --------------------------------------------------------------------------- provenance


@pytest.mark.parametrize("generative", [True, False])
def test_complete_provenance_has_no_problems(generative: bool) -> None:
    ds = make_output(generative=generative)
    if not generative:
        ds.SyntheticData = "NO"  # a classical filter's pixels may count as measured

    assert check_provenance(ds) == []


def _set(keyword: str, value: object) -> Callable[[Dataset], None]:
    def change(ds: Dataset) -> None:
        setattr(ds, keyword, value)

    return change


def _delete(keyword: str) -> Callable[[Dataset], None]:
    def change(ds: Dataset) -> None:
        delattr(ds, keyword)

    return change


def _radnode_item(ds: Dataset) -> Dataset:
    item: Dataset = ds.ContributingEquipmentSequence[1]
    return item


def _equipment_purpose(value: str) -> Callable[[Dataset], None]:
    def change(ds: Dataset) -> None:
        _radnode_item(ds).PurposeOfReferenceCodeSequence[0].CodeValue = value

    return change


def _equipment_description(text: str) -> Callable[[Dataset], None]:
    def change(ds: Dataset) -> None:
        _radnode_item(ds).ContributionDescription = text

    return change


def _drop_software_versions(ds: Dataset) -> None:
    del _radnode_item(ds).SoftwareVersions


def _drop_radnode_item(ds: Dataset) -> None:
    del ds.ContributingEquipmentSequence[1]


def _source_purpose(ds: Dataset) -> None:
    ds.SourceImageSequence[0].PurposeOfReferenceCodeSequence[0].CodeValue = "121320"


def _series_purpose(ds: Dataset) -> None:
    ds.RelatedSeriesSequence[0].PurposeOfReferenceCodeSequence[0].CodeValue = "121320"


def _self_series(ds: Dataset) -> None:
    ds.RelatedSeriesSequence[0].SeriesInstanceUID = ds.SeriesInstanceUID


def _drop_private_block(ds: Dataset) -> None:
    for tag in [t for t in ds.keys() if t.group == 0x0077]:  # noqa: SIM118 - tags, not elements
        del ds[tag]


def _incomplete_derivation_code(ds: Dataset) -> None:
    del ds.DerivationCodeSequence[0].CodeMeaning


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (_delete("SyntheticData"), "SyntheticData (0008,001C) missing"),
        (_set("SyntheticData", "NO"), "expected YES for generated pixels"),
        (_set("ImageType", ["ORIGINAL", "PRIMARY", "AXIAL"]), "ImageType (0008,0008)"),
        (_set("SeriesDescription", "Thorax low dose"), "lacks the marker 'AI ENHANCED'"),
        (_delete("DerivationDescription"), "DerivationDescription (0008,2111) missing"),
        (_delete("DerivationCodeSequence"), "DerivationCodeSequence (0008,9215) missing"),
        (_incomplete_derivation_code, "item 1 lacks CodeMeaning"),
        (_delete("SourceImageSequence"), "SourceImageSequence (0008,2112) missing"),
        (_source_purpose, "121322"),
        (_delete("RelatedSeriesSequence"), "neither RelatedSeriesSequence"),
        (_series_purpose, "121323"),
        (_self_series, "own SeriesInstanceUID"),
        (_delete("ContributingEquipmentSequence"), "ContributingEquipmentSequence (0018,A001)"),
        (_drop_radnode_item, "no item with Manufacturer 'radnode'"),
        (_equipment_purpose("109101"), "109100"),
        (_drop_software_versions, "SoftwareVersions (0018,1020)"),
        (_equipment_description("unet"), "neither the weights' SHA-256"),
        (_equipment_description("unet; classical method"), "gives no weights SHA-256"),
        (_delete("ContentQualification"), "ContentQualification (0018,9004)"),
        (_drop_private_block, "no private block with creator 'RADNODE 1'"),
    ],
)
def test_each_provenance_gap_is_named(change: Callable[[Dataset], None], expected: str) -> None:
    ds = make_output()
    change(ds)

    problems = check_provenance(ds)

    assert len(problems) == 1, problems
    assert expected in problems[0]


def test_referenced_series_sequence_also_counts_as_source_series() -> None:
    ds = make_output()
    ds.ReferencedSeriesSequence = ds.RelatedSeriesSequence
    del ds.RelatedSeriesSequence

    assert check_provenance(ds) == []


def test_custom_series_marker() -> None:
    ds = make_output()
    ds.SeriesDescription = "DENOISED: Thorax"

    assert check_provenance(ds, marker="DENOISED") == []


# --------------------------------------------------------------------------- files and CLI


def test_verify_file_passes_a_signed_complete_output(good_file: Path) -> None:
    verdict = verify_file(good_file)

    assert verdict == FileVerdict(file=str(good_file))
    assert verdict.ok


def test_cli_text_output_and_exit_code(good_file: Path) -> None:
    code, text = run([str(good_file)])

    assert code == 0
    lines = text.splitlines()
    assert lines[0].split() == ["FILE", "SIGNATURE", "PROVENANCE", "RESULT"]
    assert lines[1].split() == [str(good_file), "ok", "ok", "OK"]


def test_cli_json_reports_each_file(tmp_path: Path, good_file: Path) -> None:
    ds = pydicom.dcmread(good_file)
    pixels = bytearray(ds.PixelData)
    pixels[0] ^= 0xFF
    ds.PixelData = bytes(pixels)
    ds.SeriesDescription = "Thorax low dose"  # and a provenance gap
    bad = tmp_path / "bad.dcm"
    ds.save_as(bad, enforce_file_format=True)

    code, text = run([str(good_file), str(bad), "--format", "json"])

    assert code == 1
    good, broken = (json.loads(line) for line in text.splitlines())
    assert good == {"file": str(good_file), "ok": True, "signature": [], "provenance": []}
    assert broken["file"] == str(bad)
    assert broken["ok"] is False
    assert any("signature does not match" in p for p in broken["signature"])
    (provenance,) = broken["provenance"]
    assert "lacks the marker 'AI ENHANCED'" in provenance


def test_removed_signed_element_is_named(tmp_path: Path, good_file: Path) -> None:
    ds = pydicom.dcmread(good_file)
    del ds.SyntheticData
    changed = tmp_path / "changed.dcm"
    ds.save_as(changed, enforce_file_format=True)

    verdict = verify_file(changed)

    assert verdict.signature[0].endswith("signed element(s) (0008,001C) were removed after signing")
    assert verdict.provenance == ["SyntheticData (0008,001C) missing"]


def test_cli_text_lists_problems_under_a_failing_file(tmp_path: Path) -> None:
    unsigned = tmp_path / "unsigned.dcm"
    make_output().save_as(unsigned, enforce_file_format=True)

    code, text = run([str(unsigned)])

    assert code == 1
    assert "FAIL" in text.splitlines()[1]
    assert "    signature: no Digital Signatures Sequence (FFFA,FFFA)" in text


def test_cli_cert_must_match_the_signer(
    tmp_path: Path, good_file: Path, identity: SigningIdentity
) -> None:
    other = load_or_create_identity(tmp_path / "other-keys")

    assert run([str(good_file), "--cert", str(identity.cert_path)])[0] == 0
    code, text = run([str(good_file), "--cert", str(other.cert_path), "--format", "json"])

    assert code == 1
    (problem,) = json.loads(text)["signature"]
    assert "neither the trusted certificate nor issued by it" in problem


def test_cli_unreadable_cert_is_a_usage_error(
    tmp_path: Path, good_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing.pem"

    assert run([str(good_file), "--cert", str(missing)])[0] == 2
    assert f"cannot read certificate {missing}" in capsys.readouterr().err


def test_cli_non_dicom_file_fails_with_its_name(tmp_path: Path) -> None:
    junk = tmp_path / "notes.txt"
    junk.write_text("not DICOM")

    code, text = run([str(junk), "--format", "json"])

    assert code == 1
    verdict = json.loads(text)
    assert verdict["signature"][0].startswith(f"cannot read {junk} as DICOM")


def test_cli_needs_a_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "FILE" in capsys.readouterr().err
