"""DICOM Digital Signatures of radnode's outputs (PS3.15 Annex C, PS3.3 C.12.1.1.3).

Every output instance is signed with the node's X.509 identity using the
Creator RSA Digital Signature Profile (PS3.15 C.2), which builds on the Base
RSA Digital Signature Profile (PS3.15 C.1):

* the MAC is SHA-256 over the Explicit VR Little Endian encoding of the signed
  Data Elements (see :mod:`node.signing_encoding`), followed by the elements of
  the new Digital Signatures Sequence item other than Certificate of Signer,
  Signature and the certified timestamp (PS3.3 C.12.1.1.3.1.2);
* the MAC is encrypted with the signer's RSA private key (PS3.15 C.1) as an
  RSASSA-PKCS1-v1_5 signature whose DigestInfo names the MAC algorithm, the
  form dcmtk's ``dcmsign`` creates and verifies;
* the Creator profile requires that the signature lock the whole instance:
  SOP Class/Instance, Study/Series UIDs, the General Equipment, General Image
  and Image Pixel attributes and the pixel data. radnode signs *every*
  signable element of the top-level Data Set, which covers that list and
  also the provenance sequences and the private block;
* the signature purpose is (1, ASTM-sigpurpose, "Author's Signature"): the
  node is the author of the derived object.

The identity (RSA key + certificate) lives under ``data_dir/keys`` and is
created on first start, or comes from a site's own PKI.
"""

from __future__ import annotations

import datetime as dt
import logging

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils
from pydicom.dataset import Dataset
from pydicom.filewriter import correct_ambiguous_vr
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag, Tag
from pydicom.uid import generate_uid

from node.errors import SigningError
from node.signing_encoding import (
    DIGITAL_SIGNATURES_SEQUENCE,
    EXPLICIT_VR_LITTLE_ENDIAN,
    MAC_PARAMETERS_SEQUENCE,
    encode_dataset,
    signable_tags,
    signature_item_tags,
)
from node.signing_identity import (
    CERT_FILE_NAME,
    KEY_FILE_NAME,
    MIN_RSA_BITS,
    SigningIdentity,
    check_identity,
    load_certificate,
    load_or_create_identity,
    utc_now,
)

__all__ = [
    "CERT_FILE_NAME",
    "KEY_FILE_NAME",
    "MIN_RSA_BITS",
    "SigningIdentity",
    "compute_mac",
    "load_certificate",
    "load_or_create_identity",
    "sign_dataset",
    "verify_signatures",
]

logger = logging.getLogger(__name__)

#: Certificate Type (0400,0110) for an X.509 signing certificate (PS3.3 C.12.1.1.3).
CERTIFICATE_TYPE = "X509_1993_SIG"

#: MAC Algorithm defined terms (PS3.3 Table C.12-6) radnode can compute.
MAC_ALGORITHMS: dict[str, type[hashes.HashAlgorithm]] = {
    "SHA256": hashes.SHA256,
    "SHA384": hashes.SHA384,
    "SHA512": hashes.SHA512,
    "SHA1": hashes.SHA1,
}
#: The MAC algorithm radnode signs with.
SIGNING_MAC_ALGORITHM = "SHA256"

#: Digital Signature Purpose (PS3.16 CID 7007, coding scheme ASTM-sigpurpose,
#: ASTM E1762): "Author's Signature", as ``dcmsign +sp 1`` writes it.
PURPOSE_CODE = ("1", "ASTM-sigpurpose", "Author's Signature")

#: Attributes the Creator RSA profile (PS3.15 C.2) requires to be signed
#: always, and (next tuple) whenever they are present: the part of the
#: profile's list that can occur in radnode's image outputs.
CREATOR_PROFILE_REQUIRED = (
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
)
CREATOR_PROFILE_REQUIRED_IF_PRESENT = (
    # SOP Common
    "InstanceCreationDate",
    "InstanceCreationTime",
    # General Equipment
    "Manufacturer",
    "InstitutionName",
    "InstitutionAddress",
    "StationName",
    "InstitutionalDepartmentName",
    "ManufacturerModelName",
    "DeviceSerialNumber",
    "SoftwareVersions",
    "GantryID",
    "SpatialResolution",
    "DateOfLastCalibration",
    "TimeOfLastCalibration",
    "PixelPaddingValue",
    # General Image
    "InstanceNumber",
    "PatientOrientation",
    "ContentDate",
    "ContentTime",
    "ImageType",
    "AcquisitionNumber",
    "AcquisitionDate",
    "AcquisitionTime",
    "AcquisitionDateTime",
    "ImagesInAcquisition",
    "ImageComments",
    "QualityControlImage",
    "BurnedInAnnotation",
    "RecognizableVisualFeatures",
    "LossyImageCompression",
    "LossyImageCompressionRatio",
    "LossyImageCompressionMethod",
    "IconImageSequence",
    "PresentationLUTShape",
    "IrradiationEventUID",
    "RealWorldValueMappingSequence",
    "ImageLaterality",
    "AnatomicRegionSequence",
    "PrimaryAnatomicStructureSequence",
    # Image Pixel
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "PlanarConfiguration",
    "PixelAspectRatio",
    "SmallestImagePixelValue",
    "LargestImagePixelValue",
    "RedPaletteColorLookupTableDescriptor",
    "GreenPaletteColorLookupTableDescriptor",
    "BluePaletteColorLookupTableDescriptor",
    "RedPaletteColorLookupTableData",
    "GreenPaletteColorLookupTableData",
    "BluePaletteColorLookupTableData",
    "ICCProfile",
    "ColorSpace",
    "PixelData",
    "PixelPaddingRangeLimit",
    "ExtendedOffsetTable",
    "ExtendedOffsetTableLengths",
    # Multi-frame and Enhanced image attributes that radnode may write
    "NumberOfFrames",
    "SharedFunctionalGroupsSequence",
    "PerFrameFunctionalGroupsSequence",
    "ContentQualification",
    "SourceImageEvidenceSequence",
    "ReferencedImageEvidenceSequence",
)


def _next_mac_id(ds: Dataset) -> int:
    # MAC ID Number is unique within the Data Set (PS3.3 Table C.12-6);
    # take the lowest one not used by an existing MAC or signature item.
    used: set[int] = set()
    for keyword in ("MACParametersSequence", "DigitalSignaturesSequence"):
        for item in ds.get(keyword, []):
            if "MACIDNumber" in item:
                used.add(int(item.MACIDNumber))
    for candidate in range(0x10000):
        if candidate not in used:
            return candidate
    raise SigningError("all 65536 MAC ID Numbers of this Data Set are in use")


def _datetime_dt(moment: dt.datetime) -> str:
    # DT with fraction and UTC offset: PS3.3 requires the offset in
    # Digital Signature DateTime (0400,0105).
    return moment.astimezone(dt.UTC).strftime("%Y%m%d%H%M%S.%f+0000")


def _purpose_item() -> Dataset:
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = PURPOSE_CODE
    return code


def compute_mac(
    ds: Dataset, signed: list[BaseTag], signature_item: Dataset, algorithm: str
) -> bytes:
    """Compute the MAC of a Digital Signature (PS3.3 C.12.1.1.3.1.1-2).

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        The signed Data Set.
    signed : list of pydicom.tag.BaseTag
        Data Elements Signed, in Data Set order.
    signature_item : pydicom.dataset.Dataset
        The Digital Signatures Sequence item; its elements other than
        Certificate of Signer, Signature and the certified timestamp are
        appended to the byte stream.
    algorithm : str
        MAC Algorithm defined term, e.g. ``"SHA256"``.

    Returns
    -------
    bytes
        The digest.
    """
    try:
        hash_type = MAC_ALGORITHMS[algorithm]
    except KeyError:
        raise SigningError(
            f"MAC Algorithm {algorithm!r} is not supported; use one of {sorted(MAC_ALGORITHMS)}"
        ) from None
    digest = hashes.Hash(hash_type())
    digest.update(encode_dataset(ds, signed))
    digest.update(encode_dataset(signature_item, signature_item_tags(signature_item)))
    return digest.finalize()


def sign_dataset(ds: Dataset, identity: SigningIdentity) -> None:
    """Add a Creator RSA Digital Signature to ``ds`` in place.

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        A complete output instance. Every signable top-level element is
        signed, so nothing may change afterwards; write the result in Explicit
        VR Little Endian (the MAC transfer syntax) so that any verifier reads
        the same VRs that were signed.
    identity : SigningIdentity
        The node's key and certificate.

    Raises
    ------
    SigningError
        The Data Set cannot be signed: encapsulated pixel data, a required
        attribute missing (SOP Class/Instance, Study/Series Instance UIDs) or
        not encodable, or the certificate is outside its validity period.

    Notes
    -----
    Adds one item to the MAC Parameters Sequence (4FFE,0001) and one to the
    Digital Signatures Sequence (FFFA,FFFA), creating them if absent, so
    existing signatures are kept (PS3.3 C.12.1.1.3). Ambiguous VRs are
    resolved in ``ds`` first (PS3.5 Annex A) so the file written later has
    the VRs that were signed.
    """
    missing = [kw for kw in CREATOR_PROFILE_REQUIRED if kw not in ds]
    if missing:
        raise SigningError(
            "the Creator RSA Digital Signature Profile (PS3.15 C.2) requires "
            f"{', '.join(missing)} in the signed Data Set"
        )
    check_identity(identity.private_key, identity.certificate, identity.cert_path)
    transfer_syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if "PixelData" in ds and transfer_syntax is not None and transfer_syntax.is_compressed:
        raise SigningError(
            f"cannot sign {ds.SOPInstanceUID}: pixel data is compressed ({transfer_syntax.name}); "
            "radnode signs native pixel data in Explicit VR Little Endian only"
        )
    correct_ambiguous_vr(ds, True)

    signed = signable_tags(ds)
    unsigned = [
        kw
        for kw in (*CREATOR_PROFILE_REQUIRED, *CREATOR_PROFILE_REQUIRED_IF_PRESENT)
        if kw in ds and Tag(kw) not in signed
    ]
    if unsigned:
        raise SigningError(
            f"cannot sign {ds.SOPInstanceUID}: {', '.join(unsigned)} cannot be signed "
            "(VR UN?) but the Creator RSA profile (PS3.15 C.2) requires them"
        )

    mac_id = _next_mac_id(ds)
    sig_item = Dataset()
    sig_item.MACIDNumber = mac_id
    sig_item.DigitalSignatureUID = generate_uid()
    sig_item.DigitalSignatureDateTime = _datetime_dt(utc_now())
    sig_item.CertificateType = CERTIFICATE_TYPE
    sig_item.DigitalSignaturePurposeCodeSequence = Sequence([_purpose_item()])

    digest = compute_mac(ds, signed, sig_item, SIGNING_MAC_ALGORITHM)
    hash_type = MAC_ALGORITHMS[SIGNING_MAC_ALGORITHM]
    # RSASSA-PKCS1-v1_5 over the precomputed MAC: the DigestInfo carries the
    # hash OID, as RSA_sign() does in dcmtk (Base RSA profile, PS3.15 C.1).
    signature = identity.private_key.sign(digest, padding.PKCS1v15(), utils.Prehashed(hash_type()))
    sig_item.add_new(
        0x04000115, "OB", identity.certificate.public_bytes(serialization.Encoding.DER)
    )
    sig_item.add_new(0x04000120, "OB", signature)

    mac_item = Dataset()
    mac_item.MACIDNumber = mac_id
    mac_item.MACCalculationTransferSyntaxUID = EXPLICIT_VR_LITTLE_ENDIAN
    mac_item.MACAlgorithm = SIGNING_MAC_ALGORITHM
    mac_item.add_new(0x04000020, "AT", list(signed))

    if MAC_PARAMETERS_SEQUENCE not in ds:
        ds.add_new(MAC_PARAMETERS_SEQUENCE, "SQ", Sequence())
    if DIGITAL_SIGNATURES_SEQUENCE not in ds:
        ds.add_new(DIGITAL_SIGNATURES_SEQUENCE, "SQ", Sequence())
    ds[MAC_PARAMETERS_SEQUENCE].value.append(mac_item)
    ds[DIGITAL_SIGNATURES_SEQUENCE].value.append(sig_item)
    logger.debug(
        "signed instance",
        extra={"sop_instance_uid": str(ds.SOPInstanceUID), "mac_id": mac_id},
    )


def _verify_chain(cert: x509.Certificate, trusted: x509.Certificate) -> str | None:
    if cert == trusted:
        return None
    try:
        cert.verify_directly_issued_by(trusted)
    except (ValueError, TypeError, InvalidSignature):
        return (
            f"certificate of signer ({cert.subject.rfc4514_string()}) is neither the trusted "
            f"certificate nor issued by it ({trusted.subject.rfc4514_string()})"
        )
    return None


def verify_signatures(ds: Dataset, trusted_cert: x509.Certificate | None = None) -> list[str]:
    """Verify every Digital Signature in the top-level Data Set of ``ds``.

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        A signed instance, as read from its file.
    trusted_cert : cryptography.x509.Certificate, optional
        When given, each Certificate of Signer must equal it or be directly
        issued by it.

    Returns
    -------
    list of str
        Problems, each naming the signature and what is wrong; empty when
        every signature is valid.

    Notes
    -----
    For each Digital Signatures Sequence item: find its MAC Parameters item by
    MAC ID Number; check the MAC Calculation Transfer Syntax (Explicit VR
    Little Endian) and MAC Algorithm; check that every element listed in Data
    Elements Signed is still present (PS3.3 C.12.1.1.3.1.1); recompute the MAC
    and verify the RSA signature with the public key of the embedded
    certificate (PS3.15 C.1); check the certificate's validity period now and
    at the signature time; check that the Creator RSA profile's attributes
    (PS3.15 C.2) present in the Data Set are signed.
    """
    problems: list[str] = []
    signatures = ds.get(DIGITAL_SIGNATURES_SEQUENCE)
    if signatures is None or len(signatures.value) == 0:
        return ["no Digital Signatures Sequence (FFFA,FFFA): the instance is not signed"]
    mac_items: dict[int, Dataset] = {}
    mac_sequence = ds[MAC_PARAMETERS_SEQUENCE].value if MAC_PARAMETERS_SEQUENCE in ds else []
    for item in mac_sequence:
        if "MACIDNumber" in item:
            mac_items[int(item.MACIDNumber)] = item
    for number, sig_item in enumerate(signatures.value, start=1):
        uid = sig_item.get("DigitalSignatureUID", "?")
        problems.extend(
            f"signature #{number} ({uid}): {problem}"
            for problem in _verify_one(ds, sig_item, mac_items, trusted_cert)
        )
    return problems


def _verify_one(
    ds: Dataset,
    sig_item: Dataset,
    mac_items: dict[int, Dataset],
    trusted_cert: x509.Certificate | None,
) -> list[str]:
    problems: list[str] = []
    if "MACIDNumber" not in sig_item:
        return ["MAC ID Number (0400,0005) missing"]
    mac_id = int(sig_item.MACIDNumber)
    mac_item = mac_items.get(mac_id)
    if mac_item is None:
        return [f"no MAC Parameters Sequence (4FFE,0001) item with MAC ID Number {mac_id}"]
    syntax = str(mac_item.get("MACCalculationTransferSyntaxUID", ""))
    if syntax != EXPLICIT_VR_LITTLE_ENDIAN:
        return [f"MAC Calculation Transfer Syntax UID {syntax!r} is not Explicit VR Little Endian"]
    algorithm = str(mac_item.get("MACAlgorithm", ""))
    if algorithm not in MAC_ALGORITHMS:
        return [f"MAC Algorithm {algorithm!r} is not supported ({sorted(MAC_ALGORITHMS)})"]
    certificate_type = str(sig_item.get("CertificateType", ""))
    if certificate_type != CERTIFICATE_TYPE:
        return [f"Certificate Type {certificate_type!r} is not {CERTIFICATE_TYPE}"]
    signed_value = mac_item.get("DataElementsSigned")
    if signed_value is None:
        return ["Data Elements Signed (0400,0020) missing"]
    # VM 1 reads back as a single tag, VM > 1 as a MultiValue of tags.
    raw_tags = [signed_value] if isinstance(signed_value, int) else list(signed_value)
    if not raw_tags:
        return ["Data Elements Signed (0400,0020) is empty"]
    signed = [Tag(t) for t in raw_tags]
    removed = [str(t) for t in signed if t not in ds]
    if removed:
        problems.append(f"signed element(s) {', '.join(removed)} were removed after signing")
        return problems
    if signed != sorted(signed):
        problems.append("Data Elements Signed are not in Data Set order")

    try:
        cert = x509.load_der_x509_certificate(_strip_der_padding(bytes(sig_item[0x04000115].value)))
    except (KeyError, ValueError) as exc:
        return [*problems, f"Certificate of Signer (0400,0115) unreadable: {exc}"]
    public_key = cert.public_key()
    if not isinstance(public_key, rsa.RSAPublicKey):
        return [*problems, "certificate key is not RSA (Base RSA profile, PS3.15 C.1)"]
    if 0x04000120 not in sig_item:
        return [*problems, "Signature (0400,0120) missing"]
    try:
        digest = compute_mac(ds, signed, sig_item, algorithm)
    except SigningError as exc:
        return [*problems, str(exc)]
    try:
        public_key.verify(
            bytes(sig_item[0x04000120].value),
            digest,
            padding.PKCS1v15(),
            utils.Prehashed(MAC_ALGORITHMS[algorithm]()),
        )
    except InvalidSignature:
        problems.append(
            "signature does not match: a signed attribute or the pixel data changed after signing"
        )

    now = utc_now()
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        problems.append(
            "certificate of signer is outside its validity period "
            f"({cert.not_valid_before_utc.isoformat()} to {cert.not_valid_after_utc.isoformat()})"
        )
    signed_at = _parse_dt(str(sig_item.get("DigitalSignatureDateTime", "")))
    if signed_at is None:
        problems.append("Digital Signature DateTime (0400,0105) missing or not a DT with offset")
    elif not cert.not_valid_before_utc <= signed_at <= cert.not_valid_after_utc:
        problems.append(f"signed at {signed_at.isoformat()}, outside the certificate's validity")
    if trusted_cert is not None:
        chain_problem = _verify_chain(cert, trusted_cert)
        if chain_problem:
            problems.append(chain_problem)
    uncovered = [
        kw
        for kw in (*CREATOR_PROFILE_REQUIRED, *CREATOR_PROFILE_REQUIRED_IF_PRESENT)
        if kw in ds and Tag(kw) not in signed
    ]
    if uncovered:
        problems.append(
            f"{', '.join(uncovered)} present but not signed (Creator RSA profile, PS3.15 C.2)"
        )
    return problems


def _strip_der_padding(data: bytes) -> bytes:
    """Drop the pad byte that makes an odd-length DER certificate an even-length OB.

    OB values are padded to even length with 0x00 (PS3.5 6.2); the DER
    SEQUENCE header says how long the certificate really is.
    """
    if len(data) < 2 or data[0] != 0x30:
        return data
    if data[1] < 0x80:
        end = 2 + data[1]
    else:
        size = data[1] & 0x7F
        end = 2 + size + int.from_bytes(data[2 : 2 + size], "big")
    return data[:end] if end <= len(data) else data


def _parse_dt(value: str) -> dt.datetime | None:
    # Digital Signature DateTime is DT with a UTC offset, e.g.
    # 20260101120000.123456+0000 (PS3.5 Table 6.2-1).
    for fmt in ("%Y%m%d%H%M%S.%f%z", "%Y%m%d%H%M%S%z"):
        try:
            return dt.datetime.strptime(value.strip(), fmt)
        except ValueError:
            continue
    return None
