"""The output writer: a pipeline result back into DICOM instances.

Default output is one Secondary Capture Image (PS3.3 A.8.1) per input slice,
built with highdicom; the ``derived`` option keeps the source's own IOD (CT
Image, PS3.3 A.3; MR Image, A.4) with its geometry so viewers can link-scroll
and reformat. Both carry the full provenance of :mod:`node.provenance` and the
attributes of the output contract in DESIGN.md. Files are written atomically.
"""

from __future__ import annotations

import copy
import datetime
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pydicom
from highdicom.sc import SCImage
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian

from node import (
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    MANUFACTURER,
    __version__,
    imaging,
)
from node import provenance as prov
from node.errors import JobError
from node.spool import write_atomic
from node.uids import output_uids
from pipelines.base import Result, SliceQA

logger = logging.getLogger(__name__)

OutputKind = Literal["secondary-capture", "derived"]

#: A UID: numeric components separated by dots, at most 64 characters.
_UID_PATTERN = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")

#: Patient, Clinical Trial Subject, General Study, Patient Study and Clinical
#: Trial Study module attributes (PS3.3 C.7.1, C.7.2) copied verbatim from the
#: source into a Secondary Capture, so the output files into the same patient
#: and study in every PACS; plus the timezone of the study's dates (SOP
#: Common) and the body part (General Series), which hanging protocols use.
_PATIENT_STUDY_KEYWORDS = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "IssuerOfPatientIDQualifiersSequence",
    "TypeOfPatientID",
    "PatientBirthDate",
    "PatientBirthTime",
    "PatientSex",
    "OtherPatientIDsSequence",
    "OtherPatientNames",
    "EthnicGroup",
    "PatientComments",
    "PatientIdentityRemoved",
    "DeidentificationMethod",
    "DeidentificationMethodCodeSequence",
    "ClinicalTrialSponsorName",
    "ClinicalTrialProtocolID",
    "ClinicalTrialProtocolName",
    "ClinicalTrialSiteID",
    "ClinicalTrialSiteName",
    "ClinicalTrialSubjectID",
    "ClinicalTrialSubjectReadingID",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
    "IssuerOfAccessionNumberSequence",
    "StudyDescription",
    "ProcedureCodeSequence",
    "NameOfPhysiciansReadingStudy",
    "ReferencedStudySequence",
    "AdmittingDiagnosesDescription",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
    "Occupation",
    "AdditionalPatientHistory",
    "ClinicalTrialTimePointID",
    "ClinicalTrialTimePointDescription",
    "ClinicalTrialCoordinatingCenterName",
    "TimezoneOffsetFromUTC",
    "BodyPartExamined",
)

#: Attributes of a source that no longer apply to a derived copy of it.
_DERIVED_DROP = (
    # Signatures and MACs cover the source's bytes; the node's signer adds its own.
    "DigitalSignaturesSequence",
    "MACParametersSequence",
    # Encrypted / original attributes record the history of the source instance.
    "EncryptedAttributesSequence",
    "OriginalAttributesSequence",
    # A thumbnail and the pixel extremes describe the source's pixels.
    "IconImageSequence",
    "SmallestImagePixelValue",
    "LargestImagePixelValue",
    "SmallestPixelValueInSeries",
    "LargestPixelValueInSeries",
    # The creator of the source instance, and the step that acquired it.
    "InstanceCreatorUID",
    "ReferencedPerformedProcedureStepSequence",
    # Replaced by radnode's provenance.
    "SourceImageSequence",
    "DerivationDescription",
    "DerivationCodeSequence",
    "ReferencedSeriesSequence",
    "StudiesContainingOtherReferencedInstancesSequence",
    "SourceInstanceSequence",
    "SyntheticData",
    "ContentQualification",
    "BurnedInAnnotation",
    "DataSetTrailingPadding",
)


@dataclass(frozen=True)
class OutputOptions:
    """How a rule wants its outputs written.

    Parameters
    ----------
    kind
        ``"secondary-capture"`` (SC Image, default) or ``"derived"`` (the
        source's own CT/MR Image IOD and geometry).
    label
        Burn a banner ``AI ENHANCED - radnode <version>`` into a corner of
        the pixels outside anatomy; Burned In Annotation is ``YES`` only then.
    content_qualification
        Content Qualification (0018,9004): ``RESEARCH`` unless the site has
        cleared the pipeline for clinical use (``PRODUCT``).
    series_number_offset
        Output Series Number = source Series Number + offset, so the output
        sorts next to its source in the viewer.
    description_marker
        Prefix of Series Description and the banner text.
    uid_root
        The site's UID root (ending in a dot) for output UIDs; ``None``
        gives UUID-derived UIDs under 2.25 (PS3.5 B.2).
    """

    kind: OutputKind = "secondary-capture"
    label: bool = False
    content_qualification: Literal["RESEARCH", "PRODUCT"] = "RESEARCH"
    series_number_offset: int = 1000
    description_marker: str = "AI ENHANCED"
    uid_root: str | None = None


@dataclass(frozen=True)
class JobContext:
    """The job an output belongs to, recorded in the private block."""

    job_id: int
    rule: str
    pipeline: str


def uid_variant(ctx: JobContext, options: OutputOptions) -> str:
    """What besides the input, pipeline and model version makes an output distinct.

    The rule (two rules with one pipeline but other parameters make other
    objects) and the output kind (one UID never names two SOP Classes).
    """
    return f"{ctx.rule}|{options.kind}"


def build_outputs(
    sources: Sequence[Dataset],
    result: Result,
    ctx: JobContext,
    options: OutputOptions,
    *,
    now: datetime.datetime | None = None,
) -> list[Dataset]:
    """One output instance per source slice, with the contract's provenance.

    Parameters
    ----------
    sources
        The source datasets in the order of ``result.volume``'s slices (as
        returned by :func:`node.imaging.load_volume`).
    result
        The pipeline's result; voxels in physical units (HU for CT).
    ctx
        Job id, rule and pipeline name, for the private block.
    options
        Output kind, label, Content Qualification, numbering.
    now
        Creation time written into the instances (default: the current time).

    Returns
    -------
    list of pydicom.Dataset
        Instances ready for :func:`write_outputs`, in slice order.

    Raises
    ------
    JobError
        If the sources and the result disagree in slice count, or a source's
        pixel format cannot be written back.
    """
    voxels = result.volume.voxels
    if len(sources) != voxels.shape[0]:
        raise JobError(
            f"Result has {voxels.shape[0]} slices but {len(sources)} source instances were given."
        )
    if result.qa and len(result.qa) != len(sources):
        raise JobError(f"Result has {len(result.qa)} QA verdicts for {len(sources)} slices.")
    if not sources:
        return []
    if options.kind not in ("secondary-capture", "derived"):
        raise JobError(
            f"Unknown output kind {options.kind!r}; known: 'secondary-capture', 'derived'."
        )

    now = now or datetime.datetime.now().astimezone()
    series_uid, sop_uids = output_uids(
        str(sources[0].SeriesInstanceUID),
        [str(s.SOPInstanceUID) for s in sources],
        ctx.pipeline,
        result.model.version,
        variant=uid_variant(ctx, options),
        root=options.uid_root,
    )
    stored = [imaging.to_stored(voxels[i], src) for i, src in enumerate(sources)]
    if options.label:
        imaging.burn_banner(stored, sources, voxels, banner_text(options))

    outputs = []
    for i, src in enumerate(sources):
        qa = result.qa[i] if result.qa else None
        if options.kind == "derived":
            out = _derived(src, stored[i], result, i)
        else:
            out = _secondary_capture(
                src,
                stored[i],
                result,
                ctx=ctx,
                options=options,
                series_uid=series_uid,
                sop_uid=sop_uids[i],
            )
        _common(
            out,
            src,
            result,
            ctx=ctx,
            options=options,
            qa=qa,
            series_uid=series_uid,
            sop_uid=sop_uids[i],
            now=now,
        )
        outputs.append(out)
    return outputs


def banner_text(options: OutputOptions) -> str:
    """The label burned into the pixels, e.g. ``AI ENHANCED - radnode 0.1.0``.

    An ASCII hyphen stands for the dash: Pillow's built-in font has no em dash.
    """
    return f"{options.description_marker} - radnode {__version__}"


# --- the two IODs ----------------------------------------------------------------


def _secondary_capture(
    src: Dataset,
    pixels: npt.NDArray[Any],
    result: Result,
    *,
    ctx: JobContext,
    options: OutputOptions,
    series_uid: str,
    sop_uid: str,
) -> Dataset:
    """A Secondary Capture Image (PS3.3 A.8.1) of one processed slice."""
    orientation = result.volume.orientation or _tuple(src.get("ImageOrientationPatient"))
    patient_orientation = imaging.patient_orientation(orientation)
    unsigned = pixels.view(np.dtype(f"u{pixels.dtype.itemsize}"))
    # Pixel Spacing only where the source measured it: the volume's 1 mm
    # default for a source without one is not a measurement.
    spacing = None
    if "PixelSpacing" in src:
        spacing = (float(result.volume.pixel_spacing[0]), float(result.volume.pixel_spacing[1]))
    sc = SCImage(
        pixel_array=unsigned,
        photometric_interpretation=str(src.PhotometricInterpretation),
        bits_allocated=8 * pixels.dtype.itemsize,
        coordinate_system="PATIENT",
        study_instance_uid=str(src.StudyInstanceUID),
        series_instance_uid=series_uid,
        series_number=_series_number(src, options),
        sop_instance_uid=sop_uid,
        instance_number=_instance_number(src),
        manufacturer=MANUFACTURER,
        manufacturer_model_name=ctx.pipeline[:64],
        software_versions=f"radnode {__version__}"[:64],
        # highdicom checks single letters only; the full oblique value from
        # Image Orientation (Patient) is written below.
        patient_orientation=("L", "P"),
        pixel_spacing=spacing,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        contributing_equipment=[
            item
            for item in (
                prov.acquisition_equipment(src),
                prov.radnode_equipment(result, ctx.pipeline),
            )
            if item is not None
        ],
        content_qualification=options.content_qualification,
    )
    out: Dataset = sc
    # Patient Orientation is Type 2C (C.7.6.1): present, empty when unknown.
    out.PatientOrientation = patient_orientation or src.get("PatientOrientation", "")
    # The image is the source's pixels reprocessed, so its Image Pixel
    # description is the source's (highdicom writes unsigned, all bits used).
    out.BitsStored = int(src.get("BitsStored", out.BitsAllocated))
    out.HighBit = out.BitsStored - 1
    out.PixelRepresentation = int(src.get("PixelRepresentation", 0))
    # Modality stays the source's (General Series, C.7.3.1.1.1 allows any
    # defined term for SC) so hanging protocols place it next to its source.
    out.Modality = str(src.get("Modality", "OT"))
    # SC Equipment (C.8.6.1): WSD = workstation, a derived image made by
    # software rather than a digitised film or video.
    out.ConversionType = "WSD"
    out.SecondaryCaptureDeviceManufacturer = MANUFACTURER
    out.SecondaryCaptureDeviceManufacturerModelName = ctx.pipeline[:64]
    out.SecondaryCaptureDeviceSoftwareVersions = [
        f"radnode {__version__}"[:64],
        f"model {result.model.version}"[:64],
    ]
    for keyword in _PATIENT_STUDY_KEYWORDS:
        if keyword in src:
            out[keyword] = copy.deepcopy(src[keyword])
    if "SpecificCharacterSet" in src:
        out.SpecificCharacterSet = src.SpecificCharacterSet
    for keyword in ("Laterality", "ImageLaterality"):
        if keyword in src:
            out[keyword] = copy.deepcopy(src[keyword])
    # Modality LUT (C.11.1): CT keeps HU through the source's rescale; Rescale
    # Type is Type 1 here (unlike in the CT Image module), HU for CT.
    if "RescaleIntercept" in src or "RescaleSlope" in src:
        slope, intercept = imaging.rescale(src)
        out.RescaleIntercept = _ds(intercept)
        out.RescaleSlope = _ds(slope)
        default_type = "HU" if out.Modality == "CT" else "US"
        out.RescaleType = str(src.get("RescaleType", "") or default_type)
    return out


def _derived(src: Dataset, pixels: npt.NDArray[Any], result: Result, index: int) -> Dataset:
    """A copy of the source in its own IOD (CT/MR Image) with new pixels.

    Patient, study, equipment, frame of reference and acquisition modules are
    kept, since the image still describes that acquisition in that patient
    space; attributes describing the source instance itself are dropped (see
    ``_DERIVED_DROP``). Private elements of other creators are dropped: their
    meaning is unknown after processing and they may hold checksums of the
    old pixels or identifiers that the standard attributes do not show.
    """
    out = copy.deepcopy(src)
    out.remove_private_tags()
    for keyword in _DERIVED_DROP:
        if keyword in out:
            del out[keyword]
    # Overlays (C.9.2, groups 6000-601E) were drawn on the source and are not
    # re-validated on the enhanced pixels.
    overlays = [e.tag for e in out if 0x6000 <= e.tag.group <= 0x601E and e.tag.group % 2 == 0]
    for tag in overlays:
        del out[tag]
    # Image Plane (C.7.6.2): the source's geometry, unless the pipeline
    # changed it (resampling); the source's own strings are kept otherwise.
    volume = result.volume
    if volume.positions is not None:
        _set_decimals(out, "ImagePositionPatient", volume.positions[index])
    if volume.orientation is not None:
        _set_decimals(out, "ImageOrientationPatient", volume.orientation)
    if "PixelSpacing" in src:
        _set_decimals(out, "PixelSpacing", volume.pixel_spacing)
    out.Rows, out.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    # A new element, not a new value: an encapsulated source's Pixel Data has
    # undefined length and VR OB, native data needs a defined length and OW.
    del out.PixelData
    out.add_new(0x7FE00010, "OW" if pixels.dtype.itemsize > 1 else "OB", pixels.tobytes())
    # Keep the Instance Number even if the source had none (Type 2 there).
    out.InstanceNumber = _instance_number(src)
    return out


def _common(
    out: Dataset,
    src: Dataset,
    result: Result,
    *,
    ctx: JobContext,
    options: OutputOptions,
    qa: SliceQA | None,
    series_uid: str,
    sop_uid: str,
    now: datetime.datetime,
) -> None:
    """Identity, provenance and the contract's attributes, for both kinds."""
    out.SOPInstanceUID = sop_uid
    out.SeriesInstanceUID = series_uid
    out.SeriesNumber = _series_number(src, options)
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S.%f")
    out.InstanceCreationDate = out.SeriesDate = out.ContentDate = date
    out.InstanceCreationTime = out.SeriesTime = out.ContentTime = time
    source_description = str(src.get("SeriesDescription", "") or "").strip() or ctx.pipeline
    out.SeriesDescription = f"{options.description_marker}: {source_description}"[:64]

    # Image Type (C.7.6.1.1.2): DERIVED\SECONDARY, keeping the source's later
    # values (value 3 is AXIAL or LOCALIZER for CT, C.8.2.1.1.1).
    image_type = list(src.get("ImageType", []) or [])
    out.ImageType = ["DERIVED", "SECONDARY", *image_type[2:]]

    # For SC, highdicom has listed the acquisition, radnode and itself.
    encoded_by = [] if options.kind == "derived" else list(out.ContributingEquipmentSequence)
    prov.add_provenance(out, src, result, qa, pipeline=ctx.pipeline, equipment=encoded_by)

    # Laterality (General Series, C.7.3.1) is Type 2C: required for a paired
    # body part unless Image Laterality is given. When the source names
    # neither laterality nor body part, the part may be paired, so the
    # attribute is made present and empty (unknown).
    if not ({"Laterality", "ImageLaterality"} & set(out.dir()) or out.get("BodyPartExamined")):
        out.Laterality = ""

    out.ContentQualification = options.content_qualification
    out.BurnedInAnnotation = "YES" if options.label else "NO"
    # Lossy compression of the source is inherited by anything derived from it
    # (C.7.6.1.1.5): once "01", always "01".
    for keyword in (
        "LossyImageCompression",
        "LossyImageCompressionRatio",
        "LossyImageCompressionMethod",
    ):
        if keyword in src:
            out[keyword] = copy.deepcopy(src[keyword])
    # VOI LUT (C.11.2): the source's window shows the output the same way.
    for keyword in (
        "WindowCenter",
        "WindowWidth",
        "WindowCenterWidthExplanation",
        "VOILUTFunction",
        "VOILUTSequence",
    ):
        if keyword in src:
            out[keyword] = copy.deepcopy(src[keyword])

    prov.write_private_block(
        out, result, qa, pipeline=ctx.pipeline, job_id=ctx.job_id, rule=ctx.rule
    )

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = out.SOPClassUID
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    out.file_meta = meta


def _series_number(src: Dataset, options: OutputOptions) -> int:
    value = src.get("SeriesNumber")
    base = int(value) if value not in (None, "") else 0
    return max(1, base + options.series_number_offset)


def _instance_number(src: Dataset) -> int:
    value = src.get("InstanceNumber")
    return int(value) if value not in (None, "") and int(value) > 0 else 1


def _tuple(value: Any) -> tuple[float, ...] | None:
    return tuple(float(v) for v in value) if value is not None else None


def _set_decimals(ds: Dataset, keyword: str, values: Sequence[float]) -> None:
    """Set a multi-valued DS attribute unless it already holds ``values``."""
    current = ds.get(keyword)
    if (
        current is not None
        and len(current) == len(values)
        and np.allclose([float(v) for v in current], values, rtol=0, atol=1e-4)
    ):
        return
    ds[keyword] = pydicom.DataElement(keyword, "DS", [_ds(float(v)) for v in values])


def _ds(value: float) -> str:
    """A Decimal String of at most 16 characters (PS3.5 6.2)."""
    text = f"{value:.10g}"
    if len(text) > 16:
        text = f"{value:.8g}"
    return text


# --- files -----------------------------------------------------------------


def write_outputs(
    datasets: Sequence[Dataset],
    out_dir: Path,
    signer: Callable[[Dataset], None] | None = None,
) -> list[Path]:
    """Write each output atomically as ``<SOPInstanceUID>.dcm`` in ``out_dir``.

    Each file is written under a temporary name in ``out_dir``, fsync'd and
    renamed, and the directory is fsync'd, so a crash leaves either the whole
    file or none, and a file that exists is on disk. Files use the DICOM file
    format (PS3.10) in Explicit VR Little Endian.

    Parameters
    ----------
    datasets
        Instances from :func:`build_outputs`.
    out_dir
        Directory for the files; created if missing.
    signer
        Called with each dataset right before it is written (adds the
        Digital Signatures Sequence, PS3.15 Annex C).

    Returns
    -------
    list of Path
        The written files, in the order of ``datasets``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in datasets:
        if signer is not None:
            signer(ds)
        uid = str(ds.SOPInstanceUID)
        if len(uid) > 64 or not _UID_PATTERN.fullmatch(uid):
            # The UID becomes a file name: only a valid UID (PS3.5 9.1) is safe.
            raise JobError(f"Output SOP Instance UID {uid!r} is not a valid UID.")
        path = out_dir / f"{uid}.dcm"
        buffer = BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        write_atomic(path, [buffer.getvalue()])
        paths.append(path)
    logger.info("wrote outputs", extra={"count": len(paths)})
    return paths


def is_radnode_output(ds: Dataset) -> bool:
    """Whether radnode produced ``ds`` (used to refuse routing it again).

    True when the dataset holds radnode's private block or names radnode as
    Contributing Equipment; either survives a PACS that strips the other.
    """
    return prov.has_private_block(ds) or prov.names_radnode_equipment(ds)
