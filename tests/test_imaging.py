"""Tests of node.imaging: DICOM series to pipeline volumes."""

from __future__ import annotations

import copy
import random

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import JPEG2000Lossless, RLELossless, generate_uid

from node.errors import JobError
from node.imaging import load_volume


def _testdata(name: str) -> pydicom.Dataset:
    path = get_testdata_file(name)
    assert path is not None, f"pydicom test file {name} missing: run make install (pydicom-data)"
    return pydicom.dcmread(path)


def make_series(name: str = "CT_small.dcm", count: int = 4) -> list[pydicom.Dataset]:
    """A synthetic series: copies of one real slice at new positions with new UIDs.

    Each slice's pixels are shifted by its index so slices differ, and the
    positions step along the slice normal of the source's orientation.
    """
    path = get_testdata_file(name)
    assert isinstance(path, str)
    source = pydicom.dcmread(path)
    iop = np.array([float(v) for v in source.ImageOrientationPatient])
    normal = np.cross(iop[:3], iop[3:])
    origin = np.array([float(v) for v in source.ImagePositionPatient])
    series_uid = generate_uid(entropy_srcs=["test-series", name])
    pixels = source.pixel_array
    series: list[pydicom.Dataset] = []
    for k in range(count):
        ds = copy.deepcopy(source)
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid(entropy_srcs=["test-instance", name, str(k)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [f"{v:.4f}" for v in origin + 2.5 * k * normal]
        ds.PixelData = np.ascontiguousarray(pixels + k).astype(pixels.dtype).tobytes()
        series.append(ds)
    return series


def test_load_volume_orders_shuffled_input_along_the_normal() -> None:
    series = make_series(count=5)
    shuffled = series[:]
    random.Random(1234).shuffle(shuffled)
    assert [ds.InstanceNumber for ds in shuffled] != [1, 2, 3, 4, 5]

    volume, ordered = load_volume(shuffled)

    assert [ds.InstanceNumber for ds in ordered] == [1, 2, 3, 4, 5]
    assert volume.voxels.shape == (5, 128, 128)
    assert volume.voxels.dtype == np.float32
    assert volume.positions is not None
    assert np.all(np.diff(volume.positions[:, 2]) > 0)
    # Slice k holds the source pixels + k (stored units), so + k HU.
    for k in range(5):
        assert float(np.mean(volume.voxels[k] - volume.voxels[0])) == pytest.approx(k)


def test_load_volume_sorts_reversed_normal_feet_first() -> None:
    # With the row/column cosines swapped the normal points the other way, so
    # the order along it is reversed relative to z.
    series = make_series(count=3)
    for ds in series:
        ds.ImageOrientationPatient = [0, 1, 0, 1, 0, 0]
    _, ordered = load_volume(series)
    assert [ds.InstanceNumber for ds in ordered] == [3, 2, 1]


def test_load_volume_falls_back_to_instance_number() -> None:
    series = make_series(count=4)
    for ds in series:
        del ds.ImagePositionPatient
        del ds.ImageOrientationPatient
    shuffled = [series[2], series[0], series[3], series[1]]
    volume, ordered = load_volume(shuffled)
    assert [ds.InstanceNumber for ds in ordered] == [1, 2, 3, 4]
    assert volume.positions is None
    assert volume.orientation is None


def test_ct_is_converted_to_hounsfield_units() -> None:
    ds = _testdata("CT_small.dcm")
    ds.RescaleSlope = 2
    ds.RescaleIntercept = -1000
    volume, _ = load_volume([ds])
    expected = ds.pixel_array.astype(np.float64) * 2 - 1000
    np.testing.assert_array_equal(volume.voxels[0], expected.astype(np.float32))
    assert volume.unit == "HU"
    assert volume.modality == "CT"
    assert volume.pixel_spacing == pytest.approx((0.661468, 0.661468))
    assert volume.meta["rescale_slope"] == 2.0
    assert volume.meta["rescale_intercept"] == -1000.0
    assert volume.meta["bits_stored"] == 16
    assert volume.meta["pixel_representation"] == 1


def test_mr_meta_has_phase_encoding_and_no_identifiers() -> None:
    ds = _testdata("MR_small.dcm")
    ds.InPlanePhaseEncodingDirection = "COL"
    volume, _ = load_volume([ds])
    assert volume.unit == "arbitrary"
    assert volume.meta["phase_encode"] == "COL"
    np.testing.assert_array_equal(volume.voxels[0], ds.pixel_array.astype(np.float32))
    identifiers = {str(ds.PatientName), str(ds.PatientID), str(ds.StudyInstanceUID)}
    assert not identifiers & {str(v) for v in volume.meta.values()}


def test_rle_compressed_input_is_decoded() -> None:
    plain = make_series(count=3)
    compressed = copy.deepcopy(plain)
    for ds in compressed:
        ds.compress(RLELossless)
    assert compressed[0].file_meta.TransferSyntaxUID == RLELossless
    expected, _ = load_volume(plain)
    volume, _ = load_volume(compressed)
    np.testing.assert_array_equal(volume.voxels, expected.voxels)


def test_jpeg2000_compressed_input_is_decoded() -> None:
    plain = make_series("MR_small.dcm", count=2)
    compressed = copy.deepcopy(plain)
    for ds in compressed:
        ds.compress(JPEG2000Lossless)
    expected, _ = load_volume(plain)
    volume, _ = load_volume(compressed)
    np.testing.assert_array_equal(volume.voxels, expected.voxels)


@pytest.mark.parametrize(
    ("compressed", "reference"),
    [
        ("MR_small_RLE.dcm", "MR_small.dcm"),
        ("MR_small_jp2klossless.dcm", "MR_small.dcm"),
        ("MR_small_jpeg_ls_lossless.dcm", "MR_small.dcm"),
        ("693_J2KR.dcm", "693_UNCR.dcm"),
        ("MR2_J2KR.dcm", "MR2_UNCR.dcm"),
    ],
)
def test_real_compressed_files_decode_like_their_uncompressed_twin(
    compressed: str, reference: str
) -> None:
    volume, _ = load_volume([_testdata(compressed)])
    expected, _ = load_volume([_testdata(reference)])
    np.testing.assert_array_equal(volume.voxels, expected.voxels)


def test_jpeg_lossless_input_is_decoded() -> None:
    ds = _testdata("JPGLosslessP14SV1_1s_1f_8b.dcm")
    volume, _ = load_volume([ds])
    assert volume.voxels.shape == (1, ds.Rows, ds.Columns)
    assert float(volume.voxels.max()) > 0


def test_empty_series_is_refused() -> None:
    with pytest.raises(JobError, match="empty series"):
        load_volume([])


def test_mixed_rows_are_refused() -> None:
    series = make_series(count=2)
    mr = _testdata("MR_small.dcm")
    mr.Modality = "CT"
    with pytest.raises(JobError, match="mixed Rows: 128, 64"):
        load_volume([series[0], mr])


def test_multi_frame_is_refused() -> None:
    ds = _testdata("CT_small.dcm")
    ds.NumberOfFrames = 2
    with pytest.raises(JobError, match="multi-frame images are not supported yet"):
        load_volume([ds])


def test_colour_is_refused() -> None:
    ds = _testdata("CT_small.dcm")
    ds.PhotometricInterpretation = "RGB"
    with pytest.raises(JobError, match="Photometric Interpretation 'RGB'"):
        load_volume([ds])


def test_undecodable_pixel_data_names_the_transfer_syntax() -> None:
    ds = _testdata("CT_small.dcm")
    ds.compress(RLELossless)
    # Corrupt the RLE header so the decoder cannot make sense of the frame.
    ds.PixelData = ds.PixelData[:40] + b"\x00" * 16
    with pytest.raises(
        JobError, match=r"transfer syntax RLE Lossless \(1\.2\.840\.10008\.1\.2\.5\)"
    ):
        load_volume([ds])
