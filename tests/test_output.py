"""Tests of node.output: building, writing and reading back radnode's outputs."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import Dataset
from pydicom.data import get_testdata_file
from pydicom.pixels.processing import apply_modality_lut
from pydicom.uid import RLELossless, generate_uid

from node import MANUFACTURER, PRIVATE_CREATOR, __version__
from node import provenance as prov
from node.errors import JobError
from node.imaging import load_volume
from node.output import (
    JobContext,
    OutputOptions,
    build_outputs,
    is_radnode_output,
    uid_variant,
    write_outputs,
)
from node.uids import output_uids
from node.verify import check_provenance
from pipelines.base import (
    SMOOTHING,
    MethodKind,
    ModelInfo,
    Result,
    SliceQA,
)

SC = "1.2.840.10008.5.1.4.1.1.7"
SOP_CLASS = {"CT": "1.2.840.10008.5.1.4.1.1.2", "MR": "1.2.840.10008.5.1.4.1.1.4"}
SOURCE_FILE = {"CT": "CT_small.dcm", "MR": "MR_small.dcm"}
CTX = JobContext(job_id=42, rule="low-dose-ct", pipeline="ct-denoise")
WEIGHTS = "ab" * 32

#: dicom3tools' snapshot of 2022-06 predates Synthetic Data (0008,001C) in
#: PS3.6 and reports the standard attribute as unknown; every other error counts.
_DCIODVFY_OUTDATED = "(0x0008,0x001c)"


def make_series(name: str, count: int) -> list[Dataset]:
    """Copies of one real slice one after another along its normal, with new UIDs."""
    path = get_testdata_file(name)
    assert isinstance(path, str)
    source = pydicom.dcmread(path)
    iop = np.array([float(v) for v in source.ImageOrientationPatient])
    origin = np.array([float(v) for v in source.ImagePositionPatient])
    step = 2.5 * np.cross(iop[:3], iop[3:])
    series_uid = generate_uid(entropy_srcs=["test-series", name])
    series: list[Dataset] = []
    for k in range(count):
        ds = copy.deepcopy(source)
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid(entropy_srcs=["test-instance", name, str(k)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [f"{v:.4f}" for v in origin + k * step]
        series.append(ds)
    return series


def make_result(
    sources: Sequence[Dataset],
    *,
    kind: MethodKind = MethodKind.GENERATIVE,
    change: float = 3.4,
    flagged: Sequence[int] = (),
) -> Result:
    """A result as a pipeline would return it: input voxels + a small change."""
    volume, _ = load_volume(sources)
    qa = tuple(
        SliceQA(
            passed=i not in flagged,
            metrics={"residual_std": 1.5 + i, "nan_metric": float("nan")},
            reasons=("hallucination score 0.9 > 0.5",) if i in flagged else (),
        )
        for i in range(len(sources))
    )
    return Result(
        volume=volume.with_voxels(volume.voxels + np.float32(change)),
        qa=qa,
        model=ModelInfo(
            name="residual BasicUNet" if kind is MethodKind.GENERATIVE else "bilateral filter",
            version="1.2.0",
            kind=kind,
            weights_sha256=WEIGHTS if kind is MethodKind.GENERATIVE else None,
        ),
        derivation=SMOOTHING,
        description="Low-dose CT denoising.",
        parameters={"strength": 0.5, "tile": 64},
    )


def dciodvfy_errors(path: Path) -> set[str]:
    """The Error lines dciodvfy reports for a file."""
    # make install puts dicom3tools on the machine: its absence is a failure.
    assert shutil.which("dciodvfy"), "dciodvfy (dicom3tools) is not installed: run make install"
    run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
    lines = (run.stdout + run.stderr).splitlines()
    return {
        line.strip()
        for line in lines
        if line.startswith("Error") and _DCIODVFY_OUTDATED not in line
    }


@pytest.fixture
def sources(request: pytest.FixtureRequest, tmp_path: Path) -> list[Dataset]:
    """A three-slice series of the modality in ``request.param``, read from files."""
    modality = str(request.param)
    series = make_series(SOURCE_FILE[modality], count=3)
    for ds in series:
        ds.SeriesDescription = "Thorax 1.0 B30f low dose"
        ds.save_as(tmp_path / f"source-{ds.InstanceNumber}.dcm", enforce_file_format=True)
    return [pydicom.dcmread(tmp_path / f"source-{ds.InstanceNumber}.dcm") for ds in series]


def _code(seq: Sequence[Dataset]) -> tuple[str, str, str]:
    item = seq[0]
    return (str(item.CodeValue), str(item.CodingSchemeDesignator), str(item.CodeMeaning))


@pytest.mark.parametrize("sources", ["CT", "MR"], indirect=True)
@pytest.mark.parametrize("kind", ["secondary-capture", "derived"])
@pytest.mark.parametrize("label", [False, True])
def test_write_and_read_back(
    sources: list[Dataset], kind: str, label: bool, tmp_path: Path
) -> None:
    result = make_result(sources, flagged=(1,))
    options = OutputOptions(kind=kind, label=label)  # type: ignore[arg-type]
    outputs = build_outputs(sources, result, CTX, options)
    paths = write_outputs(outputs, tmp_path / "out")

    assert [p.name for p in paths] == [f"{ds.SOPInstanceUID}.dcm" for ds in outputs]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in paths)
    series_uid, sop_uids = output_uids(
        sources[0].SeriesInstanceUID,
        [s.SOPInstanceUID for s in sources],
        CTX.pipeline,
        "1.2.0",
        variant=uid_variant(CTX, options),
    )
    modality = str(sources[0].Modality)
    for i, (path, src) in enumerate(zip(paths, sources, strict=True)):
        out = pydicom.dcmread(path)
        assert out.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert out.SOPClassUID == (SC if kind == "secondary-capture" else SOP_CLASS[modality])
        assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
        assert out.StudyInstanceUID == src.StudyInstanceUID
        assert out.SeriesInstanceUID == series_uid != src.SeriesInstanceUID
        assert out.SOPInstanceUID == sop_uids[i]
        for keyword in ("PatientName", "PatientID", "PatientSex", "StudyID", "StudyDate"):
            assert out[keyword].value == src[keyword].value
        assert out.Modality == modality
        assert out.SeriesNumber == src.SeriesNumber + 1000
        assert out.InstanceNumber == src.InstanceNumber
        assert out.SeriesDescription == "AI ENHANCED: Thorax 1.0 B30f low dose"
        assert list(out.ImageType)[:2] == ["DERIVED", "SECONDARY"]
        assert "ct-denoise" in out.DerivationDescription
        assert "residual BasicUNet version 1.2.0" in out.DerivationDescription
        assert "generative" in out.DerivationDescription
        assert ("failed the QA gate" in out.DerivationDescription) == (i == 1)
        assert _code(out.DerivationCodeSequence) == ("113087", "DCM", "Smoothing")

        (source_ref,) = out.SourceImageSequence
        assert source_ref.ReferencedSOPClassUID == src.SOPClassUID
        assert source_ref.ReferencedSOPInstanceUID == src.SOPInstanceUID
        assert _code(source_ref.PurposeOfReferenceCodeSequence) == (
            "121322",
            "DCM",
            "Source image for image processing operation",
        )
        (related,) = out.RelatedSeriesSequence
        assert related.SeriesInstanceUID == src.SeriesInstanceUID
        assert related.StudyInstanceUID == src.StudyInstanceUID
        assert _code(related.PurposeOfReferenceCodeSequence) == (
            "121323",
            "DCM",
            "Source series for image processing operation",
        )
        (referenced,) = out.ReferencedSeriesSequence
        assert referenced.SeriesInstanceUID == src.SeriesInstanceUID
        assert referenced.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == (
            src.SOPInstanceUID
        )

        equipment = list(out.ContributingEquipmentSequence)
        acquisition = equipment[0]
        assert acquisition.Manufacturer == src.Manufacturer
        assert acquisition.ManufacturerModelName == src.ManufacturerModelName
        assert acquisition.StationName == src.StationName
        assert _code(acquisition.PurposeOfReferenceCodeSequence) == (
            "109101",
            "DCM",
            "Acquisition Equipment",
        )
        (ours,) = [e for e in equipment if e.Manufacturer == MANUFACTURER]
        assert _code(ours.PurposeOfReferenceCodeSequence) == (
            "109100",
            "DCM",
            "Synthesizing Equipment",
        )
        assert ours.ManufacturerModelName == "ct-denoise"
        assert list(ours.SoftwareVersions) == [f"radnode {__version__}", "model 1.2.0"]
        assert WEIGHTS in ours.ContributionDescription

        assert out.SyntheticData == "YES"
        assert out.ContentQualification == "RESEARCH"
        assert out.BurnedInAnnotation == ("YES" if label else "NO")
        for keyword in ("WindowCenter", "WindowWidth"):
            assert (keyword in out) == (keyword in src)
            if keyword in src:
                assert out[keyword].value == src[keyword].value

        # Private block: found by its creator, with explicit VRs.
        assert prov.has_private_block(out)
        assert prov.read_private(out, prov.PRIVATE_PIPELINE) == "ct-denoise"
        assert prov.read_private(out, prov.PRIVATE_WEIGHTS_SHA256) == WEIGHTS
        assert json.loads(prov.read_private(out, prov.PRIVATE_PARAMETERS)) == {
            "strength": 0.5,
            "tile": 64,
        }
        slice_qa = json.loads(prov.read_private(out, prov.PRIVATE_SLICE_QA))
        assert slice_qa["passed"] == (i != 1)
        assert slice_qa["metrics"] == {"nan_metric": None, "residual_std": 1.5 + i}
        series_qa = json.loads(prov.read_private(out, prov.PRIVATE_SERIES_QA))
        assert series_qa == {"slices": 3, "flagged": 1, "flagged_slices": [1]}
        assert prov.read_private(out, prov.PRIVATE_FLAGGED_COUNT) == 1
        assert prov.read_private(out, prov.PRIVATE_QA_VERDICT) == (
            "FLAGGED" if i == 1 else "PASSED"
        )
        assert prov.read_private(out, prov.PRIVATE_JOB_ID) == 42
        assert prov.read_private(out, prov.PRIVATE_RULE) == "low-dose-ct"
        block = out.private_block(prov.PRIVATE_GROUP, PRIVATE_CREATOR)
        assert block[prov.PRIVATE_PARAMETERS].VR == "UT"
        assert block[prov.PRIVATE_JOB_ID].VR == "IS"

        # Pixels: the source's Image Pixel description and rescale, values
        # within rounding of the result's physical values.
        for keyword in ("BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation"):
            assert out[keyword].value == src[keyword].value
        assert list(out.PixelSpacing) == pytest.approx([float(v) for v in src.PixelSpacing])
        physical = apply_modality_lut(out.pixel_array, out).astype(np.float64)
        expected = result.volume.voxels[i].astype(np.float64)
        if label:
            # The banner changes one corner only.
            changed = np.abs(physical - expected) > 0.5
            assert 0 < changed.mean() < 0.35
            physical, expected = physical[~changed], expected[~changed]
        assert np.max(np.abs(physical - expected)) <= 0.5
        if modality == "CT":
            assert out.RescaleIntercept == src.RescaleIntercept
            assert out.RescaleSlope == src.RescaleSlope
            # Type 1 in SC's Modality LUT module, Type 3 (absent: HU) in CT Image.
            assert out.get("RescaleType", "HU") == "HU"

        if kind == "derived":
            assert out.ImagePositionPatient == src.ImagePositionPatient
            assert out.ImageOrientationPatient == src.ImageOrientationPatient
            assert out.FrameOfReferenceUID == src.FrameOfReferenceUID
            assert out.SliceThickness == src.SliceThickness
            assert "DigitalSignaturesSequence" not in out
            creators = {str(e.value) for e in out if e.tag.is_private_creator}
            assert creators == {PRIVATE_CREATOR}
        else:
            assert out.ConversionType == "WSD"
            assert "FrameOfReferenceUID" not in out
            assert out.PatientOrientation == ["L", "P"]

        assert is_radnode_output(out)
        assert check_provenance(out) == []
        assert dciodvfy_errors(path) <= dciodvfy_errors(Path(src.filename))


@pytest.mark.parametrize("sources", ["CT"], indirect=True)
def test_label_is_drawn_in_the_window_in_a_dark_corner(
    sources: list[Dataset], tmp_path: Path
) -> None:
    for ds in sources:
        ds.WindowCenter, ds.WindowWidth = 40, 400
    result = make_result(sources)
    (out, *_) = build_outputs(sources, result, CTX, OutputOptions(label=True))
    physical = apply_modality_lut(out.pixel_array, out)
    # Text at the top of the window (white), its box at the bottom (black).
    changed = np.abs(physical - result.volume.voxels[0]) > 0.5
    assert set(np.unique(physical[changed])) <= {-160.0, 240.0}
    assert np.count_nonzero(physical == 240.0) > 50
    assert out.BurnedInAnnotation == "YES"


@pytest.mark.parametrize("sources", ["CT"], indirect=True)
def test_classical_method_is_processing_equipment(sources: list[Dataset], tmp_path: Path) -> None:
    result = make_result(sources, kind=MethodKind.CLASSICAL)
    options = OutputOptions(content_qualification="PRODUCT", series_number_offset=50)
    paths = write_outputs(build_outputs(sources, result, CTX, options), tmp_path)
    out = pydicom.dcmread(paths[0])
    assert out.SyntheticData == "NO"
    assert out.ContentQualification == "PRODUCT"
    assert out.SeriesNumber == sources[0].SeriesNumber + 50
    (ours,) = [e for e in out.ContributingEquipmentSequence if e.Manufacturer == MANUFACTURER]
    assert _code(ours.PurposeOfReferenceCodeSequence) == (
        "109102",
        "DCM",
        "Processing Equipment",
    )
    assert "classical method" in ours.ContributionDescription
    assert "classical image processing" in out.DerivationDescription
    assert prov.read_private(out, prov.PRIVATE_WEIGHTS_SHA256) is None


def test_output_uids_are_deterministic() -> None:
    sops = ["1.2.3.4.1", "1.2.3.4.2"]
    first = output_uids("1.2.3.4", sops, "ct-denoise", "1.0")
    assert output_uids("1.2.3.4", sops, "ct-denoise", "1.0") == first
    series_uid, sop_uids = first
    assert len({series_uid, *sop_uids}) == 3
    assert all(len(u) <= 64 for u in [series_uid, *sop_uids])
    assert output_uids("1.2.3.4", sops, "mr-accel", "1.0")[0] != series_uid
    assert output_uids("1.2.3.4", sops, "ct-denoise", "1.1")[0] != series_uid
    assert output_uids("1.2.3.5", sops, "ct-denoise", "1.0")[0] != series_uid
    other = output_uids("1.2.3.4", sops, "ct-denoise", "1.0", variant="derived")
    assert not {other[0], *other[1]} & {series_uid, *sop_uids}


@pytest.mark.parametrize("sources", ["CT"], indirect=True)
def test_build_outputs_twice_gives_the_same_uids(sources: list[Dataset]) -> None:
    result = make_result(sources)
    first = build_outputs(sources, result, CTX, OutputOptions())
    again = build_outputs(sources, result, CTX, OutputOptions())
    assert [d.SOPInstanceUID for d in first] == [d.SOPInstanceUID for d in again]
    assert len({d.SeriesInstanceUID for d in first}) == 1


@pytest.mark.parametrize("sources", ["CT", "MR"], indirect=True)
def test_is_radnode_output_false_on_sources(sources: list[Dataset]) -> None:
    assert not any(is_radnode_output(ds) for ds in sources)


@pytest.mark.parametrize("sources", ["CT"], indirect=True)
def test_is_radnode_output_survives_a_pacs_that_strips_private_tags(
    sources: list[Dataset],
) -> None:
    (out, *_) = build_outputs(sources, make_result(sources), CTX, OutputOptions())
    out.remove_private_tags()
    assert is_radnode_output(out)
    del out.ContributingEquipmentSequence
    assert not is_radnode_output(out)


@pytest.mark.parametrize("sources", ["CT"], indirect=True)
def test_signer_runs_before_the_file_is_written(sources: list[Dataset], tmp_path: Path) -> None:
    signed: list[str] = []

    def signer(ds: Dataset) -> None:
        assert not (tmp_path / f"{ds.SOPInstanceUID}.dcm").exists()
        ds.ImageComments = "signed"
        signed.append(ds.SOPInstanceUID)

    outputs = build_outputs(sources, make_result(sources), CTX, OutputOptions())
    paths = write_outputs(outputs, tmp_path, signer=signer)
    assert signed == [ds.SOPInstanceUID for ds in outputs]
    assert all(pydicom.dcmread(p).ImageComments == "signed" for p in paths)
    assert not list(tmp_path.glob(".*"))


@pytest.mark.parametrize("sources", ["CT"], indirect=True)
def test_a_failing_signer_leaves_no_file(sources: list[Dataset], tmp_path: Path) -> None:
    def signer(ds: Dataset) -> None:
        raise RuntimeError("no key")

    outputs = build_outputs(sources, make_result(sources), CTX, OutputOptions())
    with pytest.raises(RuntimeError, match="no key"):
        write_outputs(outputs, tmp_path / "out", signer=signer)
    assert not list((tmp_path / "out").iterdir())


@pytest.mark.parametrize("sources", ["CT"], indirect=True)
def test_ct_values_are_clipped_to_the_stored_range(sources: list[Dataset]) -> None:
    result = make_result(sources, change=40000.0)
    (out, *_) = build_outputs(sources, result, CTX, OutputOptions())
    assert int(out.pixel_array.max()) == 2**15 - 1
    assert apply_modality_lut(out.pixel_array, out).max() == 32767 - 1024


@pytest.mark.parametrize("sources", ["CT"], indirect=True)
def test_slice_count_mismatch_is_refused(sources: list[Dataset]) -> None:
    result = make_result(sources)
    with pytest.raises(JobError, match="3 slices but 2 source instances"):
        build_outputs(sources[:2], result, CTX, OutputOptions())


@pytest.mark.parametrize("sources", ["CT"], indirect=True)
def test_long_series_description_is_truncated(sources: list[Dataset]) -> None:
    for ds in sources:
        ds.SeriesDescription = "x" * 64
    (out, *_) = build_outputs(sources, make_result(sources), CTX, OutputOptions())
    assert out.SeriesDescription == ("AI ENHANCED: " + "x" * 64)[:64]


@pytest.mark.parametrize("sources", ["CT"], indirect=True)
@pytest.mark.parametrize("kind", ["secondary-capture", "derived"])
def test_compressed_source_gives_native_output(
    sources: list[Dataset], kind: str, tmp_path: Path
) -> None:
    for ds in sources:
        ds.compress(RLELossless)
    result = make_result(sources)
    options = OutputOptions(kind=kind)  # type: ignore[arg-type]
    paths = write_outputs(build_outputs(sources, result, CTX, options), tmp_path)
    for i, path in enumerate(paths):
        out = pydicom.dcmread(path)
        assert out.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert not out["PixelData"].is_undefined_length
        physical = apply_modality_lut(out.pixel_array, out)
        assert np.max(np.abs(physical - result.volume.voxels[i])) <= 0.5
        assert not dciodvfy_errors(path)


@pytest.mark.parametrize(
    "name", ["693_UNCR.dcm", "MR2_UNCR.dcm", "MR-SIEMENS-DICOM-WithOverlays.dcm"]
)
@pytest.mark.parametrize("kind", ["secondary-capture", "derived"])
@pytest.mark.parametrize("label", [False, True])
def test_real_scanner_files_round_trip(name: str, kind: str, label: bool, tmp_path: Path) -> None:
    """Vendor files (pydicom-data): 14-bit signed CT, 12-bit MR, MR with overlays."""
    path = get_testdata_file(name)
    assert path is not None, f"pydicom test file {name} missing: run make install (pydicom-data)"
    source = pydicom.dcmread(path)
    result = make_result([source])
    options = OutputOptions(kind=kind, label=label)  # type: ignore[arg-type]
    (written,) = write_outputs(build_outputs([source], result, CTX, options), tmp_path)
    out = pydicom.dcmread(written)
    assert out.BitsStored == source.BitsStored
    assert out.PixelRepresentation == source.PixelRepresentation
    physical = apply_modality_lut(out.pixel_array, out).astype(np.float64)
    expected = result.volume.voxels[0].astype(np.float64)
    if "PixelPaddingValue" in source:
        # Padding (outside the CT field of view) stays the source's padding.
        padding = source.pixel_array == source.PixelPaddingValue
        assert padding.any()
        if not label:
            np.testing.assert_array_equal(out.pixel_array[padding], source.pixel_array[padding])
        expected[padding] = physical[padding]
    unchanged = np.abs(physical - expected) <= 0.5
    assert unchanged.all() if not label else unchanged.mean() > 0.9
    assert not any(0x6000 <= e.tag.group <= 0x601E for e in out)
    # Errors the vendor file already has (e.g. de-identification attributes)
    # are inherited; radnode adds none.
    assert dciodvfy_errors(written) <= dciodvfy_errors(Path(path))


@pytest.mark.parametrize("sources", ["CT"], indirect=True)
def test_an_invalid_uid_is_not_used_as_a_file_name(sources: list[Dataset], tmp_path: Path) -> None:
    (out, *_) = build_outputs(sources, make_result(sources), CTX, OutputOptions())
    with pytest.warns(UserWarning, match="Invalid value for VR UI"):
        out.SOPInstanceUID = "../../etc/passwd"
    with pytest.raises(JobError, match="not a valid UID"):
        write_outputs([out], tmp_path / "out")
    assert not list((tmp_path / "out").iterdir())


@pytest.mark.parametrize("sources", ["CT"], indirect=True)
def test_a_job_id_beyond_is_range_is_refused(sources: list[Dataset]) -> None:
    ctx = JobContext(job_id=2**31, rule="r", pipeline="ct-denoise")
    with pytest.raises(JobError, match="Job id must fit an IS value"):
        build_outputs(sources, make_result(sources), ctx, OutputOptions())


@pytest.mark.parametrize("sources", ["MR"], indirect=True)
@pytest.mark.parametrize("kind", ["secondary-capture", "derived"])
def test_no_pixel_spacing_is_invented(sources: list[Dataset], kind: str) -> None:
    for ds in sources:
        del ds.PixelSpacing
    options = OutputOptions(kind=kind)  # type: ignore[arg-type]
    outputs = build_outputs(sources, make_result(sources), CTX, options)
    assert not any("PixelSpacing" in out for out in outputs)


def test_output_uids_use_the_site_root_or_2_25() -> None:
    default, _ = output_uids("1.2.3", ["1.2.3.4"], "ct-denoise", "v1")
    site, sops = output_uids("1.2.3", ["1.2.3.4"], "ct-denoise", "v1", root="1.2.840.99999.")
    assert default.startswith("2.25.")
    assert site.startswith("1.2.840.99999.") and sops[0].startswith("1.2.840.99999.")
    assert len(site) <= 64 and site != sops[0]
