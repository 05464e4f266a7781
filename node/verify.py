"""The ``radnode verify`` command: signature and provenance checks of outputs.

``radnode verify FILE... [--cert PEM] [--format text|json] [--marker TEXT]``
reads each file, verifies its DICOM Digital Signatures (PS3.15 Annex C, see
:func:`node.signing.verify_signatures`) and checks that it carries the
provenance every radnode output must carry (DESIGN.md, "Output objects"):
synthetic-data flag, derived image type, series marker, derivation, source
references, contributing equipment, content qualification and the private
block. It prints one verdict per file and exits non-zero when any file fails.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import pydicom
from cryptography import x509
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from node import MANUFACTURER, PRIVATE_CREATOR
from node.errors import SigningError
from node.signing import load_certificate, verify_signatures
from node.signing_encoding import EXPLICIT_VR_LITTLE_ENDIAN

__all__ = ["FileVerdict", "check_provenance", "main", "verify_file", "verify_signatures"]

#: Default Series Description marker of an enhanced series (settings: rule
#: ``description_marker``), e.g. ``AI ENHANCED: <source description>``.
DEFAULT_MARKER = "AI ENHANCED"

# Coded concepts (PS3.16 Annex D, DCM scheme) the provenance must use.
SOURCE_IMAGE_PURPOSE = "121322"  # Source image for image processing operation
SOURCE_SERIES_PURPOSE = "121323"  # Source series for image processing operation
SYNTHESIZING_EQUIPMENT = "109100"
PROCESSING_EQUIPMENT = "109102"

#: Content Qualification (0018,9004) enumerated values (PS3.3 C.8.13.2).
CONTENT_QUALIFICATIONS = frozenset({"PRODUCT", "RESEARCH", "SERVICE"})

_SHA256 = re.compile(r"\b[0-9a-fA-F]{64}\b")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


@dataclass
class FileVerdict:
    """Outcome of ``radnode verify`` for one file.

    Attributes
    ----------
    file : str
        The path as given on the command line.
    signature : list of str
        Signature problems; empty when every signature is valid.
    provenance : list of str
        Provenance problems; empty when the provenance is complete.
    """

    file: str
    signature: list[str] = field(default_factory=list)
    provenance: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """``True`` when neither the signature nor the provenance has a problem."""
        return not self.signature and not self.provenance

    def as_json(self) -> str:
        """One JSON object: ``file``, ``ok``, ``signature``, ``provenance``."""
        return json.dumps(
            {
                "file": self.file,
                "ok": self.ok,
                "signature": self.signature,
                "provenance": self.provenance,
            }
        )


def _codes(items: Iterable[Dataset] | None) -> set[tuple[str, str]]:
    return {
        (
            str(code.get("CodeValue", "")).strip(),
            str(code.get("CodingSchemeDesignator", "")).strip(),
        )
        for code in items or []
    }


def _has_purpose(item: Dataset, value: str) -> bool:
    return (value, "DCM") in _codes(item.get("PurposeOfReferenceCodeSequence"))


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, str):
        return value.strip()
    return "\\".join(str(v) for v in value).strip()


def _check_flags(ds: Dataset, marker: str, equipment_purposes: set[str]) -> list[str]:
    problems: list[str] = []
    synthetic = _text(ds, "SyntheticData").upper()
    # SyntheticData (0008,001C) says the pixel values were not measured
    # (PS3.3 C.7.6.1). Generated pixels (Synthesizing Equipment, 109100) must
    # say YES; a classical filter (Processing Equipment, 109102) may say NO.
    if synthetic == "":
        problems.append("SyntheticData (0008,001C) missing")
    elif synthetic not in ("YES", "NO"):
        problems.append(f"SyntheticData (0008,001C) is {synthetic!r}, not YES or NO")
    elif synthetic != "YES" and (
        SYNTHESIZING_EQUIPMENT in equipment_purposes or not equipment_purposes
    ):
        problems.append(
            f"SyntheticData (0008,001C) is {synthetic}, expected YES for generated pixels"
        )

    image_type = _text(ds, "ImageType").upper()
    # Pixel Data Characteristics DERIVED and Patient Examination
    # Characteristics SECONDARY: created after the examination (PS3.3 C.7.6.1.1.2).
    if image_type.split("\\")[:2] != ["DERIVED", "SECONDARY"]:
        problems.append(
            f"ImageType (0008,0008) is {image_type or 'missing'!r}, "
            "expected DERIVED\\SECONDARY\\..."
        )

    description = _text(ds, "SeriesDescription")
    if not description:
        problems.append("SeriesDescription (0008,103E) missing")
    elif marker.upper() not in description.upper():
        problems.append(
            f"SeriesDescription (0008,103E) {description!r} lacks the marker {marker!r}"
        )
    elif len(description) > 64:
        problems.append("SeriesDescription (0008,103E) is longer than 64 characters (LO)")

    qualification = _text(ds, "ContentQualification").upper()
    if qualification not in CONTENT_QUALIFICATIONS:
        problems.append(
            f"ContentQualification (0018,9004) is {qualification or 'missing'}, "
            f"expected one of {', '.join(sorted(CONTENT_QUALIFICATIONS))}"
        )
    return problems


def _check_derivation(ds: Dataset) -> list[str]:
    problems: list[str] = []
    if not _text(ds, "DerivationDescription"):
        problems.append("DerivationDescription (0008,2111) missing or empty")
    derivation = ds.get("DerivationCodeSequence")
    if not derivation:
        problems.append("DerivationCodeSequence (0008,9215) missing or empty")
    else:
        for number, code in enumerate(derivation, start=1):
            incomplete = [
                kw
                for kw in ("CodeValue", "CodingSchemeDesignator", "CodeMeaning")
                if not _text(code, kw)
            ]
            if incomplete:
                problems.append(
                    f"DerivationCodeSequence (0008,9215) item {number} "
                    f"lacks {', '.join(incomplete)}"
                )
    return problems


def _check_references(ds: Dataset) -> list[str]:
    problems: list[str] = []
    own_instance = _text(ds, "SOPInstanceUID")
    own_series = _text(ds, "SeriesInstanceUID")
    sources = ds.get("SourceImageSequence")
    if not sources:
        problems.append("SourceImageSequence (0008,2112) missing or empty")
    else:
        if not any(_has_purpose(item, SOURCE_IMAGE_PURPOSE) for item in sources):
            problems.append(
                "SourceImageSequence (0008,2112) has no item with Purpose of Reference "
                f"({SOURCE_IMAGE_PURPOSE}, DCM, 'Source image for image processing operation')"
            )
        for number, item in enumerate(sources, start=1):
            if not _text(item, "ReferencedSOPInstanceUID") or not _text(
                item, "ReferencedSOPClassUID"
            ):
                problems.append(
                    f"SourceImageSequence (0008,2112) item {number} lacks the referenced SOP "
                    "Class/Instance UID"
                )
            elif _text(item, "ReferencedSOPInstanceUID") == own_instance:
                problems.append(f"SourceImageSequence (0008,2112) item {number} references itself")

    series_items = [
        *(ds.get("RelatedSeriesSequence") or []),
        *(ds.get("ReferencedSeriesSequence") or []),
    ]
    if not series_items:
        problems.append(
            "neither RelatedSeriesSequence (0008,1250) nor "
            "ReferencedSeriesSequence (0008,1115) present"
        )
    elif not any(_has_purpose(item, SOURCE_SERIES_PURPOSE) for item in series_items):
        problems.append(
            "no RelatedSeriesSequence (0008,1250) / ReferencedSeriesSequence (0008,1115) item "
            f"with Purpose of Reference ({SOURCE_SERIES_PURPOSE}, DCM, "
            "'Source series for image processing operation')"
        )
    for item in series_items:
        if own_series and _text(item, "SeriesInstanceUID") == own_series:
            problems.append("a source series reference names the output's own SeriesInstanceUID")
    return problems


def _radnode_equipment(ds: Dataset) -> list[Dataset]:
    return [
        item
        for item in ds.get("ContributingEquipmentSequence") or []
        if _text(item, "Manufacturer").lower() == MANUFACTURER
    ]


def _check_equipment(ds: Dataset, items: list[Dataset]) -> list[str]:
    if "ContributingEquipmentSequence" not in ds or not ds.ContributingEquipmentSequence:
        return ["ContributingEquipmentSequence (0018,A001) missing or empty"]
    if not items:
        return [
            "ContributingEquipmentSequence (0018,A001) has no item with "
            f"Manufacturer {MANUFACTURER!r}"
        ]
    problems: list[str] = []
    for item in items:
        purposes = {
            value
            for value, scheme in _codes(item.get("PurposeOfReferenceCodeSequence"))
            if scheme == "DCM"
        }
        if not purposes & {SYNTHESIZING_EQUIPMENT, PROCESSING_EQUIPMENT}:
            problems.append(
                "radnode ContributingEquipmentSequence item has no purpose "
                f"({SYNTHESIZING_EQUIPMENT}, DCM, 'Synthesizing Equipment') or "
                f"({PROCESSING_EQUIPMENT}, DCM, 'Processing Equipment')"
            )
        if not _text(item, "SoftwareVersions"):
            problems.append(
                "radnode ContributingEquipmentSequence item lacks SoftwareVersions (0018,1020)"
            )
        if not _text(item, "ManufacturerModelName"):
            problems.append(
                "radnode ContributingEquipmentSequence item lacks ManufacturerModelName (0008,1090)"
            )
        description = _text(item, "ContributionDescription")
        has_hash = bool(_SHA256.search(description))
        if not has_hash and "classical" not in description.lower():
            problems.append(
                "radnode ContributionDescription (0018,A003) names neither the weights' SHA-256 "
                "nor a classical method"
            )
        elif SYNTHESIZING_EQUIPMENT in purposes and not has_hash:
            problems.append(
                "radnode is Synthesizing Equipment (109100) but ContributionDescription "
                "(0018,A003) gives no weights SHA-256"
            )
    return problems


def _check_private_block(ds: Dataset) -> list[str]:
    # A private block is reserved by a Private Creator element (gggg,00xx)
    # in an odd group and owns (gggg,xx00-xxFF) (PS3.5 7.8.1).
    # (Iterating a Dataset yields elements; its keys are the tags.)
    for tag in sorted(ds.keys()):
        if tag.is_private_creator and _text_value(ds, tag) == PRIVATE_CREATOR:
            block = tag.element
            owned = [
                t
                for t in sorted(ds.keys())
                if t.group == tag.group and t.element >> 8 == block and not t.is_private_creator
            ]
            if not owned:
                return [f"private block {PRIVATE_CREATOR!r} in group {tag.group:04X} is empty"]
            return []
    return [f"no private block with creator {PRIVATE_CREATOR!r}"]


def _text_value(ds: Dataset, tag: int) -> str:
    value = ds[tag].value
    if isinstance(value, bytes):
        return value.decode("ascii", "replace").strip(" \x00")
    return str(value).strip()


def check_provenance(ds: Dataset, marker: str = DEFAULT_MARKER) -> list[str]:
    """Check that an output carries radnode's complete provenance.

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        An output instance.
    marker : str
        The Series Description marker of enhanced series.

    Returns
    -------
    list of str
        Problems, each naming the attribute and what is wrong; empty when the
        provenance is complete.

    Notes
    -----
    Checked: SyntheticData (PS3.3 C.7.6.1), ImageType DERIVED\\SECONDARY
    (C.7.6.1.1.2), the Series Description marker, DerivationDescription and
    DerivationCodeSequence (General Image / General Reference, C.12.4),
    SourceImageSequence with purpose (121322, DCM), Related/Referenced Series
    Sequence with purpose (121323, DCM), a radnode ContributingEquipmentSequence
    item (C.12.1.1.5) with purpose (109100 or 109102, DCM), SoftwareVersions,
    model name and the weights' SHA-256 (or "classical"), ContentQualification
    (C.8.13.2) and the private block of creator ``RADNODE 1``.
    """
    radnode_items = _radnode_equipment(ds)
    purposes = {
        value
        for item in radnode_items
        for value, scheme in _codes(item.get("PurposeOfReferenceCodeSequence"))
        if scheme == "DCM"
    }
    return [
        *_check_flags(ds, marker, purposes),
        *_check_derivation(ds),
        *_check_references(ds),
        *_check_equipment(ds, radnode_items),
        *_check_private_block(ds),
    ]


def verify_file(
    path: Path, trusted_cert: x509.Certificate | None = None, marker: str = DEFAULT_MARKER
) -> FileVerdict:
    """Verify one file's signatures and provenance.

    Parameters
    ----------
    path : pathlib.Path
        A DICOM file (Part 10).
    trusted_cert : cryptography.x509.Certificate, optional
        Certificate the signer's certificate must equal or be issued by.
    marker : str
        The Series Description marker of enhanced series.

    Returns
    -------
    FileVerdict
        The problems found; an unreadable file yields a problem, not an error.
    """
    verdict = FileVerdict(file=str(path))
    try:
        ds = pydicom.dcmread(path)
    except (OSError, InvalidDicomError, ValueError, EOFError) as exc:
        message = f"cannot read {path} as DICOM: {exc}"
        verdict.signature.append(message)
        verdict.provenance.append(message)
        return verdict
    try:
        verdict.signature = verify_signatures(ds, trusted_cert)
    except SigningError as exc:
        verdict.signature = [str(exc)]
    syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", ""))
    if verdict.signature and syntax and syntax != EXPLICIT_VR_LITTLE_ENDIAN:
        # Re-encoding from another transfer syntax can change VRs (implicit
        # VR, private tags) and with them the MAC input.
        verdict.signature.append(
            f"file is stored in transfer syntax {syntax}; radnode writes signed outputs "
            f"in Explicit VR Little Endian ({EXPLICIT_VR_LITTLE_ENDIAN})"
        )
    verdict.provenance = check_provenance(ds, marker)
    return verdict


def _print_text(verdicts: Sequence[FileVerdict], out: TextIO) -> None:
    width = max([len("FILE"), *(len(v.file) for v in verdicts)])

    def summary(problems: list[str]) -> str:
        if not problems:
            return "ok"
        return f"{len(problems)} problem" + ("s" if len(problems) > 1 else "")

    out.write(f"{'FILE':<{width}}  {'SIGNATURE':<11}  {'PROVENANCE':<11}  RESULT\n")
    for verdict in verdicts:
        out.write(
            f"{verdict.file:<{width}}  {summary(verdict.signature):<11}  "
            f"{summary(verdict.provenance):<11}  {'OK' if verdict.ok else 'FAIL'}\n"
        )
        for problem in verdict.signature:
            out.write(f"    signature: {problem}\n")
        for problem in verdict.provenance:
            out.write(f"    provenance: {problem}\n")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="radnode verify",
        description="Check the digital signatures and the provenance of radnode outputs.",
    )
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE", help="DICOM files to check")
    parser.add_argument(
        "--cert",
        type=Path,
        metavar="PEM",
        help="trusted certificate: each signer's certificate must equal it or be issued by it",
    )
    parser.add_argument("--format", choices=("text", "json"), default="text", help="output format")
    parser.add_argument(
        "--marker",
        default=DEFAULT_MARKER,
        help=f"Series Description marker of enhanced series (default {DEFAULT_MARKER!r})",
    )
    return parser


def main(argv: Sequence[str], out: TextIO | None = None) -> int:
    """Run ``radnode verify``.

    Parameters
    ----------
    argv : sequence of str
        The arguments after ``verify``: ``FILE... [--cert PEM] [--format text|json]
        [--marker TEXT]``.
    out : TextIO, optional
        Where verdicts go; standard output by default.

    Returns
    -------
    int
        0 when every file passes, 1 when any file fails, 2 for a usage error
        or an unreadable ``--cert``.
    """
    out = out if out is not None else sys.stdout
    try:
        args = _parser().parse_args(list(argv))
    except SystemExit as exc:  # argparse has printed the usage message
        return EXIT_USAGE if exc.code else EXIT_OK
    trusted: x509.Certificate | None = None
    if args.cert is not None:
        try:
            trusted = load_certificate(args.cert)
        except SigningError as exc:
            sys.stderr.write(f"radnode verify: --cert: {exc}\n")
            return EXIT_USAGE
    verdicts = [verify_file(path, trusted, args.marker) for path in args.files]
    if args.format == "json":
        for verdict in verdicts:
            out.write(verdict.as_json() + "\n")
    else:
        _print_text(verdicts, out)
    return EXIT_OK if all(v.ok for v in verdicts) else EXIT_FAILED
