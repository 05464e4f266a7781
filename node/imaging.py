"""The boundary between DICOM image series and pipeline volumes, both ways.

In: pixel data is decoded (uncompressed, or any transfer syntax pydicom's
pixel handlers and the pylibjpeg plugins decode), put into physical units by
the Modality LUT (PS3.3 C.11.1, Rescale Slope/Intercept) and stacked along
the slice normal given by the Image Plane module (PS3.3 C.7.6.2) into a
:class:`~pipelines.base.Volume`. Nothing that identifies the patient crosses
into the volume.

Out: physical values go back into the source's stored values (inverse
rescale, rounded, clipped to Bits Stored), optionally with a burned-in label;
:mod:`node.output` wraps them in DICOM instances.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pydicom
from PIL import Image, ImageDraw, ImageFont
from pydicom.uid import UID

from node.errors import JobError
from pipelines.base import ParamValue, Volume

logger = logging.getLogger(__name__)

#: Photometric Interpretations of single-sample grey images (PS3.3 C.7.6.3.1.2).
#: MONOCHROME1 differs from MONOCHROME2 only in display (minimum is white),
#: so the stored values keep their physical meaning either way.
GREYSCALE = ("MONOCHROME1", "MONOCHROME2")

#: Direction cosines of two slices closer than this are "the same orientation".
_ORIENTATION_TOLERANCE = 1e-4

#: What pydicom and its decoding plugins raise for pixel data they cannot decode.
#: (AttributeError: no Transfer Syntax UID to decode by.)
_DECODE_ERRORS = (
    NotImplementedError,
    RuntimeError,
    ValueError,
    TypeError,
    KeyError,
    AttributeError,
)


def load_volume(
    datasets: Sequence[pydicom.Dataset],
) -> tuple[Volume, list[pydicom.Dataset]]:
    """Decode one series' instances into a volume in physical units.

    Parameters
    ----------
    datasets
        The single-frame image instances of one series, in any order, with
        their pixel data (uncompressed or encapsulated: JPEG baseline and
        lossless, JPEG-LS, JPEG 2000, RLE).

    Returns
    -------
    volume
        Voxels ``(slices, rows, columns)`` as ``float32``: CT in Hounsfield
        units (Rescale Slope/Intercept applied, PS3.3 C.8.2.1.1.3), other
        modalities in stored units after any rescale. Slices are sorted along
        the slice normal (the cross product of the two Image Orientation
        (Patient) direction cosines, PS3.3 C.7.6.2.1.1) by Image Position
        (Patient), falling back to Instance Number when the Image Plane
        module is absent.
    datasets
        The input datasets in the order of the volume's slices.

    Raises
    ------
    JobError
        For an empty series, multi-frame instances, mixed Rows/Columns or
        orientations, colour or palette images, a Modality LUT Sequence, or
        pixel data that cannot be decoded (the message names the transfer
        syntax).
    """
    if not datasets:
        raise JobError("Cannot load a volume from an empty series (no instances).")
    for ds in datasets:
        _check_instance(ds)
    _check_same(datasets, "Rows")
    _check_same(datasets, "Columns")
    _check_same(datasets, "Modality")

    ordered = _sort_slices(datasets)
    first = ordered[0]
    # Filled slice by slice: one float32 volume, no stack of float64 slices
    # (for 300 CT slices of 512 x 512 that would be 630 MB to allocate).
    voxels = np.empty((len(ordered), int(first.Rows), int(first.Columns)), dtype=np.float32)
    for i, ds in enumerate(ordered):
        voxels[i] = _physical_slice(ds, voxels.shape[1:])

    modality = str(first.get("Modality", "OT"))
    positions: npt.NDArray[np.float64] | None = None
    if all("ImagePositionPatient" in ds for ds in ordered):
        positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in ordered])
    orientation = _orientation(first)

    volume = Volume(
        voxels=voxels,
        modality=modality,
        unit="HU" if modality == "CT" else "arbitrary",
        pixel_spacing=_pixel_spacing(ordered),
        positions=positions,
        orientation=orientation,
        meta=_meta(ordered),
    )
    logger.debug(
        "loaded volume",
        extra={"series_uid": str(first.get("SeriesInstanceUID", "")), "shape": voxels.shape},
    )
    return volume, ordered


def _check_instance(ds: pydicom.Dataset) -> None:
    """Refuse instances the volume model cannot represent."""
    uid = str(ds.get("SOPInstanceUID", "(no SOP Instance UID)"))
    if "PixelData" not in ds:
        raise JobError(f"Instance {uid} has no Pixel Data (7FE0,0010).")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise JobError(
            f"Instance {uid} is multi-frame (Number of Frames {frames}); "
            "multi-frame images are not supported yet."
        )
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if photometric not in GREYSCALE:
        raise JobError(
            f"Instance {uid} has Photometric Interpretation {photometric!r}; "
            f"only {' and '.join(GREYSCALE)} grey images are supported."
        )
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise JobError(f"Instance {uid} has Samples per Pixel {ds.SamplesPerPixel}; expected 1.")
    if "ModalityLUTSequence" in ds:
        # A non-linear Modality LUT cannot be inverted when writing the output
        # back in the source's stored units, so it is refused up front.
        raise JobError(
            f"Instance {uid} uses a Modality LUT Sequence (0028,3000); only a linear "
            "Rescale Slope/Intercept is supported."
        )


def _check_same(datasets: Sequence[pydicom.Dataset], keyword: str) -> None:
    """All instances of a volume share ``keyword``; name the values when not."""
    values = sorted({str(ds.get(keyword, "")) for ds in datasets})
    if len(values) > 1:
        raise JobError(
            f"Instances of one series have mixed {keyword}: {', '.join(values)}; "
            "cannot stack them into one volume."
        )


def _orientation(ds: pydicom.Dataset) -> tuple[float, ...] | None:
    """Image Orientation (Patient) as six floats, or ``None`` when absent."""
    iop = ds.get("ImageOrientationPatient")
    if iop is None or len(iop) != 6:
        return None
    return tuple(float(v) for v in iop)


def _sort_slices(datasets: Sequence[pydicom.Dataset]) -> list[pydicom.Dataset]:
    """Order instances along the slice normal, else by Instance Number."""
    orientations = [_orientation(ds) for ds in datasets]
    have_plane = all(o is not None for o in orientations) and all(
        "ImagePositionPatient" in ds for ds in datasets
    )
    if not have_plane:
        logger.info("no Image Plane module on every instance; sorting by Instance Number")
        return sorted(datasets, key=_instance_number)

    first = np.asarray(orientations[0], dtype=np.float64)
    for o in orientations[1:]:
        if not np.allclose(np.asarray(o, dtype=np.float64), first, atol=_ORIENTATION_TOLERANCE):
            raise JobError(
                "Instances of one series have different Image Orientation (Patient); "
                "cannot stack them into one volume."
            )
    # PS3.3 C.7.6.2.1.1: the slice normal is row cosine x column cosine; the
    # distance of each slice along it is the dot product with its position.
    normal = np.cross(first[:3], first[3:])

    def key(ds: pydicom.Dataset) -> tuple[float, int]:
        position = np.array([float(v) for v in ds.ImagePositionPatient])
        return (float(position @ normal), _instance_number(ds))

    ordered = sorted(datasets, key=key)
    distances = [key(ds)[0] for ds in ordered]
    if len(set(np.round(distances, 4))) != len(distances):
        logger.warning("series has several instances at the same slice position")
    return ordered


def _instance_number(ds: pydicom.Dataset) -> int:
    value = ds.get("InstanceNumber")
    return int(value) if value not in (None, "") else 0


def _physical_slice(ds: pydicom.Dataset, shape: tuple[int, ...]) -> npt.NDArray[np.float64]:
    """Decode one instance of ``shape`` (Rows, Columns) and apply its Rescale Slope/Intercept."""
    try:
        stored = ds.pixel_array
    except _DECODE_ERRORS as exc:
        syntax = _transfer_syntax(ds)
        raise JobError(
            f"Cannot decode the pixel data of instance {ds.get('SOPInstanceUID', '?')} "
            f"(transfer syntax {syntax}): {exc}"
        ) from exc
    if stored.shape != shape:
        raise JobError(
            f"The pixel data of instance {ds.get('SOPInstanceUID', '?')} decodes to "
            f"{'x'.join(map(str, stored.shape))} pixels; Rows x Columns is "
            f"{'x'.join(map(str, shape))}."
        )
    # Modality LUT (PS3.3 C.11.1.1.2): output units = m * stored + b. Absent
    # attributes mean the identity (MR images usually have none).
    slope, intercept = rescale(ds)
    return np.asarray(stored, dtype=np.float64) * slope + intercept


def _transfer_syntax(ds: pydicom.Dataset) -> str:
    """The transfer syntax name and UID, for error messages."""
    meta = getattr(ds, "file_meta", None)
    uid = meta.get("TransferSyntaxUID") if meta is not None else None
    if uid is None:
        return "unknown"
    uid = UID(str(uid))
    return f"{uid.name} ({uid})" if uid.name != str(uid) else str(uid)


def _pixel_spacing(datasets: Sequence[pydicom.Dataset]) -> tuple[float, float]:
    """Pixel Spacing (row, column) in mm, shared by every slice (default 1 mm)."""
    spacing = datasets[0].get("PixelSpacing")
    if spacing is None or len(spacing) != 2:
        return (1.0, 1.0)
    result = (float(spacing[0]), float(spacing[1]))
    for ds in datasets[1:]:
        other = ds.get("PixelSpacing")
        if other is None or not np.allclose([float(v) for v in other], result, rtol=1e-4):
            raise JobError("Instances of one series have different Pixel Spacing.")
    return result


def _meta(datasets: Sequence[pydicom.Dataset]) -> dict[str, ParamValue]:
    """Acquisition facts a pipeline may need; never identifiers."""
    first = datasets[0]
    meta: dict[str, ParamValue] = {
        "bits_allocated": int(first.get("BitsAllocated", 16)),
        "bits_stored": int(first.get("BitsStored", first.get("BitsAllocated", 16))),
        "pixel_representation": int(first.get("PixelRepresentation", 0)),
        "photometric_interpretation": str(first.PhotometricInterpretation),
    }
    # The rescale is normally the same for the whole series; when it is not,
    # the writer still uses each slice's own values.
    slopes = {float(ds.get("RescaleSlope", 1.0) or 1.0) for ds in datasets}
    intercepts = {float(ds.get("RescaleIntercept", 0.0) or 0.0) for ds in datasets}
    meta["rescale_uniform"] = len(slopes) == 1 and len(intercepts) == 1
    meta["rescale_slope"] = float(first.get("RescaleSlope", 1.0) or 1.0)
    meta["rescale_intercept"] = float(first.get("RescaleIntercept", 0.0) or 0.0)
    if "RescaleType" in first:
        meta["rescale_type"] = str(first.RescaleType)
    # MR Image module (PS3.3 C.8.3.1): the in-plane phase encoding axis is
    # where undersampling artefacts (aliasing, ringing) lie.
    phase = str(first.get("InPlanePhaseEncodingDirection", "")).strip().upper()
    if phase in ("ROW", "COL"):
        meta["phase_encode"] = phase
    for keyword, name in (
        ("SliceThickness", "slice_thickness"),
        ("SpacingBetweenSlices", "spacing_between_slices"),
        ("MagneticFieldStrength", "field_strength"),
        ("KVP", "kvp"),
    ):
        value = first.get(keyword)
        if value not in (None, ""):
            meta[name] = float(value)
    kernel = first.get("ConvolutionKernel")
    if kernel not in (None, ""):
        values = [kernel] if isinstance(kernel, str) else list(kernel)
        meta["convolution_kernel"] = "\\".join(str(k) for k in values)
    padding = first.get("PixelPaddingValue")
    if padding is not None:
        meta["pixel_padding_value"] = int(padding)
    return meta


# --- back from physical units to stored values ----------------------------


def stored_dtype(src: pydicom.Dataset) -> np.dtype[Any]:
    """The numpy type of the source's stored values (Image Pixel module, C.7.6.3)."""
    allocated = int(src.get("BitsAllocated", 16))
    signed = int(src.get("PixelRepresentation", 0)) == 1
    if allocated not in (8, 16):
        raise JobError(
            f"Cannot write outputs with Bits Allocated {allocated}; only 8 and 16 are supported."
        )
    return np.dtype(f"{'i' if signed else 'u'}{allocated // 8}")


def stored_range(src: pydicom.Dataset) -> tuple[int, int]:
    """Smallest and largest value Bits Stored and Pixel Representation allow."""
    bits = int(src.get("BitsStored", src.get("BitsAllocated", 16)))
    if int(src.get("PixelRepresentation", 0)) == 1:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def rescale(src: pydicom.Dataset) -> tuple[float, float]:
    """(slope, intercept) of the source's Modality LUT; identity when absent."""
    slope = float(src.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(src.get("RescaleIntercept", 0.0) or 0.0)
    return slope, intercept


def stored_value(value: float, src: pydicom.Dataset) -> int:
    """One physical value (e.g. HU) as a stored value of ``src``, clipped."""
    slope, intercept = rescale(src)
    lo, hi = stored_range(src)
    return int(np.clip(np.rint((value - intercept) / slope), lo, hi))


def to_stored(physical: npt.NDArray[np.float32], src: pydicom.Dataset) -> npt.NDArray[Any]:
    """Physical values back into the source's stored values.

    The inverse of the Modality LUT (PS3.3 C.11.1.1.2), rounded to the nearest
    integer and clipped to the stored type's range, so CT stays in HU with the
    source's Rescale Slope/Intercept and MR keeps the source's bit depth.
    Pixels that were padding in the source (Pixel Padding Value, C.7.5.1.1.2,
    e.g. outside the CT field of view) stay padding.
    """
    slope, intercept = rescale(src)
    lo, hi = stored_range(src)
    values = np.nan_to_num(physical.astype(np.float64), nan=0.0)
    stored = np.clip(np.rint((values - intercept) / slope), lo, hi).astype(stored_dtype(src))
    padding = src.get("PixelPaddingValue")
    if padding is not None and "PixelData" in src:
        limit = src.get("PixelPaddingRangeLimit", padding)
        low, high = sorted((int(padding), int(limit)))
        source_stored = np.asarray(src.pixel_array)
        if source_stored.shape == stored.shape:
            mask = (source_stored >= low) & (source_stored <= high)
            stored[mask] = source_stored[mask]
    return stored


def first_window(src: pydicom.Dataset) -> tuple[float, float] | None:
    """First Window Center/Width of the source (VOI LUT module, C.11.2), if any."""
    center, width = src.get("WindowCenter"), src.get("WindowWidth")
    if center in (None, "") or width in (None, ""):
        return None
    first_center = center[0] if not isinstance(center, int | float) else center
    first_width = width[0] if not isinstance(width, int | float) else width
    return float(first_center), float(first_width)


def _banner_mask(rows: int, columns: int, text: str) -> tuple[npt.NDArray[np.bool_], int, int]:
    """The text of the banner as a boolean mask, with the box's height and width.

    The largest font that fits the image's width (one line, else two) is used,
    up to about a thirtieth of the image height.
    """
    lines_options = [[text]]
    if " - " in text:
        lines_options.append(text.split(" - ", 1))
    max_size = max(8, rows // 30)
    for size in range(max_size, 5, -1):
        font = ImageFont.load_default(size=size)
        for lines in lines_options:
            boxes = [font.getbbox(line) for line in lines]
            width = max(int(b[2]) for b in boxes) + 4
            line_height = max(int(b[3]) for b in boxes) + 1
            height = line_height * len(lines) + 3
            if width <= columns - 2 and height <= rows // 3:
                image = Image.new("L", (width, height), 0)
                draw = ImageDraw.Draw(image)
                for n, line in enumerate(lines):
                    draw.text((2, 1 + n * line_height), line, fill=255, font=font)
                # Thresholding the anti-aliased glyphs keeps two pixel values
                # only: the text and the box behind it.
                mask = np.asarray(image) >= 128
                return mask, height, width
    raise JobError(
        f"Image of {rows}x{columns} pixels is too small for the label {text!r}; "
        "turn the label option off for this rule."
    )


def burn_banner(
    stored: list[npt.NDArray[Any]],
    sources: Sequence[pydicom.Dataset],
    voxels: npt.NDArray[np.float32],
    text: str,
) -> None:
    """Draw the banner into every slice, in the darkest corner of the series.

    The corner with the lowest mean value over the series is taken to be
    outside anatomy (air in CT, background in MR), and is the same on every
    slice so the banner does not jump while scrolling. The box is drawn at the
    bottom of the source's window and the text at its top, so it shows as
    white on black in the window the radiologist uses (reversed for
    MONOCHROME1, whose minimum is white).
    """
    rows, columns = voxels.shape[1:]
    mask, height, width = _banner_mask(rows, columns, text)
    corners = {
        "top-left": (slice(0, height), slice(0, width)),
        "top-right": (slice(0, height), slice(columns - width, columns)),
        "bottom-left": (slice(rows - height, rows), slice(0, width)),
        "bottom-right": (slice(rows - height, rows), slice(columns - width, columns)),
    }
    order = list(corners)
    best = min(
        order,
        key=lambda name: (float(np.mean(voxels[(slice(None), *corners[name])])), order.index(name)),
    )
    region = corners[best]
    low_all, high_all = float(voxels.min()), float(voxels.max())
    for pixels, src in zip(stored, sources, strict=True):
        window = first_window(src)
        if window is None:
            low, high = low_all, high_all
        else:
            low, high = window[0] - window[1] / 2, window[0] + window[1] / 2
        if str(src.get("PhotometricInterpretation")) == "MONOCHROME1":
            low, high = high, low
        box = pixels[region]
        box[...] = stored_value(low, src)
        box[mask] = stored_value(high, src)


def patient_orientation(orientation: Sequence[float] | None) -> list[str]:
    """Patient Orientation (C.7.6.1.1.1) from Image Orientation (Patient).

    Each axis is named by the letters of its main components, largest first
    (L/R for x, P/A for y, H/F for z in the patient coordinate system,
    C.7.6.2.1.1); components under 0.25 are left out, so a slightly oblique
    axial image reads "L" and "P".
    """
    if orientation is None or len(orientation) != 6:
        return []
    letters = (("R", "L"), ("A", "P"), ("F", "H"))
    names = []
    for axis in (orientation[:3], orientation[3:]):
        parts = sorted(
            ((abs(c), letters[i][1] if c > 0 else letters[i][0]) for i, c in enumerate(axis)),
            reverse=True,
        )
        names.append("".join(letter for size, letter in parts if size >= 0.25) or "")
    return names
