"""Sample series for the demo, the benchmark and the tests.

Built from the real CT and MR slices shipped with pydicom and pydicom-data.
Those images are evaluation and test material only: no model is trained or
tuned on them. Each call makes a new study with fresh UIDs, so samples never
collide in a PACS.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
from pydicom import Dataset, dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

#: A 512x512 abdominal CT slice (pydicom-data) and a 128x128 one (pydicom).
CT_512 = "693_UNCI.dcm"
CT_128 = "CT_small.dcm"
MR_64 = "MR_small.dcm"


def source_path(name: str) -> Path:
    """The path of a shipped test file; a clear error if the package is missing."""
    found = get_testdata_file(name)
    if found is None:
        raise FileNotFoundError(f"{name} not found: install pydicom-data (make install)")
    return Path(str(found))


def make_series(
    name: str = CT_128,
    slices: int = 4,
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    patient_id: str = "RADNODE-TEST",
    series_description: str | None = None,
    noise_hu: float = 0.0,
    seed: int = 0,
) -> list[Dataset]:
    """A series of ``slices`` instances made from one shipped slice.

    Each instance gets its own SOP Instance UID, an Image Position 2.5 mm
    further along the slice normal, and an Instance Number. With
    ``noise_hu`` > 0 each slice gets Gaussian noise of that SD in HU
    (a quick, image-domain stand-in for a lower dose, for tests only).
    """
    template = dcmread(source_path(name))
    if template.file_meta.TransferSyntaxUID.is_compressed:
        template.decompress()
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    frame_of_reference = generate_uid()
    rng = np.random.default_rng(seed)
    origin = [float(v) for v in template.get("ImagePositionPatient", [0.0, 0.0, 0.0])]
    series: list[Dataset] = []
    for i in range(slices):
        ds = copy.deepcopy(template)
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.FrameOfReferenceUID = frame_of_reference
        ds.PatientID = patient_id
        ds.PatientName = "Test^Radnode"
        ds.InstanceNumber = i + 1
        ds.SeriesNumber = 3
        ds.ImagePositionPatient = [origin[0], origin[1], origin[2] + 2.5 * i]
        ds.ImageOrientationPatient = list(
            template.get("ImageOrientationPatient", [1, 0, 0, 0, 1, 0])
        )
        ds.SliceLocation = origin[2] + 2.5 * i
        if series_description is not None:
            ds.SeriesDescription = series_description
        if noise_hu > 0:
            pixels = ds.pixel_array.astype(np.float64)
            slope = float(ds.get("RescaleSlope", 1) or 1)
            pixels += rng.normal(0.0, noise_hu / slope, pixels.shape)
            info = np.iinfo(ds.pixel_array.dtype)
            high = min(info.max, 2 ** int(ds.BitsStored) - 1) if info.min == 0 else info.max
            ds.PixelData = (
                np.clip(np.rint(pixels), info.min, high).astype(ds.pixel_array.dtype).tobytes()
            )
        series.append(ds)
    return series


def write_series(series: list[Dataset], folder: Path) -> list[Path]:
    """Write a series as DICOM files (Explicit VR Little Endian) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in series:
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
