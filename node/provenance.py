"""Provenance of radnode's outputs: references, equipment, codes, private block.

Every output instance says what it was made from (General Reference module,
PS3.3 C.12.4; General Series Related Series Sequence, C.7.3.1; Common Instance
Reference module, C.12.2), what made it (Contributing Equipment Sequence of
the SOP Common module, C.12.1) and whether its pixels are synthetic, so that a
viewer, a PACS and a radiologist can tell an enhanced image from an acquired
one. The same marks let the node recognise its own outputs when a PACS sends
them back (loop prevention).
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from highdicom import ContributingEquipment
from pydicom import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.coding import Code as SRCode

from node import MANUFACTURER, PRIVATE_CREATOR, __version__
from node.errors import JobError
from pipelines.base import Code, MethodKind, Result, SliceQA

# Coded concepts of DICOM's own scheme (PS3.16 Annex D, CID 7202/7203/7005).
SOURCE_IMAGE = Code("121322", "DCM", "Source image for image processing operation")
SOURCE_SERIES = Code("121323", "DCM", "Source series for image processing operation")
ACQUISITION_EQUIPMENT = Code("109101", "DCM", "Acquisition Equipment")
PROCESSING_EQUIPMENT = Code("109102", "DCM", "Processing Equipment")
SYNTHESIZING_EQUIPMENT = Code("109100", "DCM", "Synthesizing Equipment")

#: Odd (private) group of radnode's block. Readers find the block by its
#: creator "RADNODE 1", not by number (PS3.5 7.8.1); pydicom's private_block
#: reserves the first free block (gggg,0010-00FF) of this group.
PRIVATE_GROUP = 0x0077

# Element offsets inside the block: (gggg,xx00 + offset). Kept stable, since
# scripts read them; add new ones, never renumber.
PRIVATE_PIPELINE = 0x01  # LO: registered pipeline name
PRIVATE_MODEL_NAME = 0x02  # LO: model / method name
PRIVATE_MODEL_VERSION = 0x03  # LO: model version
PRIVATE_METHOD_KIND = 0x04  # LO: "classical" or "generative"
PRIVATE_WEIGHTS_SHA256 = 0x05  # LO: 64 hex digits, exactly the LO maximum
PRIVATE_SOFTWARE_VERSION = 0x06  # LO: radnode version
PRIVATE_PARAMETERS = 0x10  # UT: pipeline parameters, JSON object
PRIVATE_SLICE_QA = 0x11  # UT: QA verdict and metrics of this slice, JSON object
PRIVATE_SERIES_QA = 0x12  # UT: series QA summary, JSON object
PRIVATE_FLAGGED_COUNT = 0x13  # IS: slices of the series the QA gate flagged
PRIVATE_QA_VERDICT = 0x14  # LO: "PASSED" or "FLAGGED"
PRIVATE_JOB_ID = 0x20  # IS: job id in the node's database
PRIVATE_RULE = 0x21  # LO: routing rule name

#: Largest value an IS (Integer String) may hold (PS3.5 6.2).
_IS_MAX = 2**31 - 1


def code_item(code: Code) -> Dataset:
    """A Code Sequence item (PS3.3 Table 8.8-1, basic coded entry attributes)."""
    item = Dataset()
    item.CodeValue = code.value
    item.CodingSchemeDesignator = code.scheme
    item.CodeMeaning = code.meaning
    return item


def source_image_item(source: Dataset) -> Dataset:
    """A Source Image Sequence item (PS3.3 C.12.4) for one source instance.

    The purpose (121322, DCM) says the output's pixels were computed from
    this image, as opposed to e.g. a localizer reference.
    """
    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    item.PurposeOfReferenceCodeSequence = DicomSequence([code_item(SOURCE_IMAGE)])
    return item


def related_series_item(source: Dataset) -> Dataset:
    """A Related Series Sequence item (PS3.3 C.7.3.1) naming the source series."""
    item = Dataset()
    item.StudyInstanceUID = source.StudyInstanceUID
    item.SeriesInstanceUID = source.SeriesInstanceUID
    item.PurposeOfReferenceCodeSequence = DicomSequence([code_item(SOURCE_SERIES)])
    return item


def referenced_series_item(source: Dataset) -> Dataset:
    """A Referenced Series Sequence item (PS3.3 C.12.2, Common Instance Reference).

    That module is required (1C) when an instance references other instances
    of its own study, which Source Image Sequence does.
    """
    instance = Dataset()
    instance.ReferencedSOPClassUID = source.SOPClassUID
    instance.ReferencedSOPInstanceUID = source.SOPInstanceUID
    item = Dataset()
    item.SeriesInstanceUID = source.SeriesInstanceUID
    item.ReferencedInstanceSequence = DicomSequence([instance])
    return item


def derivation_description(
    result: Result, pipeline: str, qa: SliceQA | None, max_length: int = 1024
) -> str:
    """Derivation Description (ST, PS3.3 C.12.4) in words, for the radiologist."""
    model = result.model
    if model.kind is MethodKind.GENERATIVE:
        method = "generative (trained) model; pixel values are synthesized"
    else:
        method = "classical image processing, no trained model"
    text = (
        f"radnode {__version__} pipeline {pipeline}: "
        f"{model.name} version {model.version}, {method}."
    )
    # The pipeline's own description, unless it only repeats the model's name.
    if result.description and model.name not in result.description:
        text += f" {result.description.strip()}"
    if qa is not None and not qa.passed:
        reasons = "; ".join(qa.reasons) or "no reason given"
        text += f" This slice failed the QA gate ({reasons}); its input is passed through."
    return text[:max_length]


def equipment_item(code: Code, **attributes: Any) -> Any:
    """A Contributing Equipment Sequence item (PS3.3 C.12.1.1.5) via highdicom."""
    return ContributingEquipment(
        purpose_of_reference=SRCode(code.value, code.scheme, code.meaning),
        **attributes,
    )


def acquisition_equipment(source: Dataset) -> Any | None:
    """The scanner that acquired ``source``, or ``None`` if it names no Manufacturer.

    Manufacturer is Type 1 in the item, so a source without one (it is only
    Type 2 in General Equipment) cannot be described.
    """
    manufacturer = str(source.get("Manufacturer", "") or "").strip()
    if not manufacturer:
        return None
    attributes: dict[str, Any] = {}
    for keyword, argument in (
        ("ManufacturerModelName", "manufacturer_model_name"),
        ("StationName", "station_name"),
        ("DeviceSerialNumber", "device_serial_number"),
        ("InstitutionName", "institution_name"),
        ("InstitutionalDepartmentName", "institutional_department_name"),
    ):
        value = source.get(keyword)
        if value not in (None, ""):
            attributes[argument] = str(value)
    versions = source.get("SoftwareVersions")
    if versions not in (None, ""):
        attributes["software_versions"] = (
            str(versions) if isinstance(versions, str) else [str(v) for v in versions]
        )
    return equipment_item(
        ACQUISITION_EQUIPMENT,
        manufacturer=manufacturer,
        contribution_description="Acquisition equipment of the source images",
        **attributes,
    )


def radnode_equipment(result: Result, pipeline: str) -> Any:
    """radnode's own Contributing Equipment item.

    Purpose (109100, DCM, "Synthesizing Equipment") for a generative model,
    whose output pixels are not measurements, and (109102, DCM, "Processing
    Equipment") for a classical filter.
    """
    model = result.model
    generative = model.kind is MethodKind.GENERATIVE
    if model.weights_sha256:
        description = f"{model.name}; weights SHA-256 {model.weights_sha256}"
    else:
        description = f"{model.name}; classical method, no trained weights"
    return equipment_item(
        SYNTHESIZING_EQUIPMENT if generative else PROCESSING_EQUIPMENT,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=pipeline[:64],
        software_versions=[f"radnode {__version__}"[:64], f"model {model.version}"[:64]],
        contribution_description=description[:1024],
    )


def add_provenance(
    out: Dataset,
    src: Dataset,
    result: Result,
    qa: SliceQA | None,
    *,
    pipeline: str,
    equipment: Sequence[Dataset] = (),
) -> None:
    """References to the source, contributing equipment and Synthetic Data.

    Parameters
    ----------
    out
        The output instance, changed in place.
    src
        The source instance of this slice.
    result
        The pipeline result (model, derivation code, description).
    qa
        The QA verdict of this slice, if the pipeline gave one.
    pipeline
        Registered pipeline name.
    equipment
        Contributing Equipment items already made for ``out`` (highdicom's,
        for SC); when empty, the acquisition and radnode items are made here.
    """
    # General Reference module (C.12.4).
    out.DerivationDescription = derivation_description(result, pipeline, qa)
    out.DerivationCodeSequence = DicomSequence([code_item(result.derivation)])
    out.SourceImageSequence = DicomSequence([source_image_item(src)])
    # General Series (C.7.3.1) and Common Instance Reference (C.12.2).
    out.RelatedSeriesSequence = DicomSequence([related_series_item(src)])
    out.ReferencedSeriesSequence = DicomSequence([referenced_series_item(src)])

    # SOP Common (C.12.1): the source's own history first, then its
    # acquisition, then radnode (and highdicom when it encoded the instance).
    history = [copy.deepcopy(item) for item in src.get("ContributingEquipmentSequence", [])]
    if not equipment:
        made = [acquisition_equipment(src), radnode_equipment(result, pipeline)]
        equipment = [item for item in made if item is not None]
    out.ContributingEquipmentSequence = DicomSequence([*history, *equipment])

    # Synthetic Data (0008,001C): YES when the pixels were synthesised by a
    # generative model rather than measured; every slice of such a series,
    # QA pass-throughs included, so the flag is the same across the series.
    out.SyntheticData = "YES" if result.model.kind is MethodKind.GENERATIVE else "NO"


def _json_safe(value: float) -> float | None:
    """JSON has no NaN or infinity; such metrics are written as null."""
    return value if math.isfinite(value) else None


def slice_qa_json(qa: SliceQA | None) -> str:
    """The QA verdict and metrics of one slice as a JSON object."""
    if qa is None:
        return json.dumps({"passed": None, "metrics": {}, "reasons": []})
    metrics = {k: _json_safe(float(v)) for k, v in sorted(qa.metrics.items())}
    return json.dumps(
        {"passed": qa.passed, "metrics": metrics, "reasons": list(qa.reasons)},
        allow_nan=False,
    )


def series_qa_json(result: Result) -> str:
    """The series-level QA summary: slice count and the flagged slice indices."""
    flagged = result.flagged_slices
    return json.dumps(
        {"slices": len(result.qa), "flagged": len(flagged), "flagged_slices": flagged},
        allow_nan=False,
    )


def write_private_block(
    ds: Dataset,
    result: Result,
    qa: SliceQA | None,
    *,
    pipeline: str,
    job_id: int,
    rule: str,
) -> None:
    """Add radnode's private block (creator ``RADNODE 1``) to ``ds``.

    The Private Creator element reserves a block of 256 elements (PS3.5
    7.8.1); every value has an explicit VR so it survives reading without a
    private dictionary (as long as the transfer syntax is explicit VR).
    """
    block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR, create=True)
    model = result.model
    block.add_new(PRIVATE_PIPELINE, "LO", pipeline[:64])
    block.add_new(PRIVATE_MODEL_NAME, "LO", model.name[:64])
    block.add_new(PRIVATE_MODEL_VERSION, "LO", model.version[:64])
    block.add_new(PRIVATE_METHOD_KIND, "LO", model.kind.value)
    if model.weights_sha256:
        block.add_new(PRIVATE_WEIGHTS_SHA256, "LO", model.weights_sha256[:64])
    block.add_new(PRIVATE_SOFTWARE_VERSION, "LO", __version__[:64])
    block.add_new(PRIVATE_PARAMETERS, "UT", parameters_json(result.parameters))
    block.add_new(PRIVATE_SLICE_QA, "UT", slice_qa_json(qa))
    block.add_new(PRIVATE_SERIES_QA, "UT", series_qa_json(result))
    block.add_new(PRIVATE_FLAGGED_COUNT, "IS", len(result.flagged_slices))
    if qa is not None:
        block.add_new(PRIVATE_QA_VERDICT, "LO", "PASSED" if qa.passed else "FLAGGED")
    if not 0 <= job_id <= _IS_MAX:
        raise JobError(f"Job id must fit an IS value (0 to {_IS_MAX}). Found {job_id}.")
    block.add_new(PRIVATE_JOB_ID, "IS", job_id)
    block.add_new(PRIVATE_RULE, "LO", rule[:64])


def parameters_json(parameters: Mapping[str, object]) -> str:
    """Pipeline parameters as a JSON object with sorted keys."""
    return json.dumps(dict(parameters), sort_keys=True, default=str)


def read_private(ds: Dataset, offset: int) -> Any:
    """The value of radnode's private element ``offset``, or ``None``.

    Looks the block up by its creator, so it finds it whichever block number
    it was given.
    """
    for group in _private_groups(ds):
        try:
            block = ds.private_block(group, PRIVATE_CREATOR)
        except KeyError:
            continue
        if offset in block:
            return block[offset].value
    return None


def _private_groups(ds: Dataset) -> list[int]:
    return sorted({elem.tag.group for elem in ds if elem.tag.is_private_creator})


def has_private_block(ds: Dataset) -> bool:
    """Whether ``ds`` holds a private block reserved by ``RADNODE 1``.

    Runs on every received instance (loop prevention), so it looks only at
    the private creator tags (gggg,0010-00FF of odd groups) instead of
    converting every element.
    """
    for tag in list(ds.keys()):
        creator_slot = tag.group % 2 == 1 and 0x10 <= tag.element <= 0xFF
        if creator_slot and str(ds[tag].value).strip() == PRIVATE_CREATOR:
            return True
    return False


def names_radnode_equipment(ds: Dataset) -> bool:
    """Whether a Contributing Equipment item names radnode as Manufacturer."""
    items: Sequence[Dataset] = ds.get("ContributingEquipmentSequence") or []
    return any(str(item.get("Manufacturer", "")).strip().lower() == MANUFACTURER for item in items)
