"""Tests of node.signing: DICOM Digital Signatures checked by dcmtk's dcmsign.

Every signature made here is verified by the real ``dcmsign --verify``
(dcmtk), which must accept it and must reject it once a signed attribute or
the pixel data changed; ``dciodvfy`` (dicom3tools) must find no new errors
in a signed file.
"""

from __future__ import annotations

import datetime as dt
import shutil
import stat
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pydicom
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, generate_uid

from node import PRIVATE_CREATOR
from node.errors import SigningError
from node.signing import (
    CERT_FILE_NAME,
    KEY_FILE_NAME,
    SigningIdentity,
    load_certificate,
    load_or_create_identity,
    sign_dataset,
    verify_signatures,
)
from node.signing_encoding import encode_dataset, signable_tags, signature_item_tags

# make install puts dcmtk and dicom3tools on the machine: their absence is a
# failure of the set-up, never a reason to skip.
DCMSIGN = shutil.which("dcmsign") or "dcmsign"
DCIODVFY = shutil.which("dciodvfy") or "dciodvfy"

SC_STORAGE = "1.2.840.10008.5.1.4.1.1.7"
CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


# --------------------------------------------------------------------------- helpers


def code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def make_secondary_capture() -> Dataset:
    """A Secondary Capture output with 16-bit pixels, nested sequences and a private block."""
    rng = np.random.default_rng(20260101)
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
    ds.SOPClassUID = SC_STORAGE
    ds.SOPInstanceUID = generate_uid()
    ds.StudyDate = "20260101"
    ds.StudyTime = "120000"
    ds.ContentDate = "20260101"
    ds.ContentTime = "120500"
    ds.AccessionNumber = "A1"
    ds.Modality = "CT"
    ds.ConversionType = "WSD"
    ds.Manufacturer = "radnode"
    ds.ReferringPhysicianName = ""
    ds.SeriesDescription = "AI ENHANCED: Thorax 1mm"
    ds.DerivationDescription = "radnode pipeline ct-denoise: classical method"
    source = Dataset()
    source.ReferencedSOPClassUID = CT_STORAGE
    source.ReferencedSOPInstanceUID = generate_uid()
    source.PurposeOfReferenceCodeSequence = Sequence(
        [code("121322", "DCM", "Source image for image processing operation")]
    )
    ds.SourceImageSequence = Sequence([source])
    ds.DerivationCodeSequence = Sequence([code("113087", "DCM", "Smoothing")])
    ds.PatientName = "Müller^Jürgen"
    ds.PatientID = "P-001"
    ds.PatientBirthDate = "19600101"
    ds.PatientSex = "M"
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.StudyID = "1"
    ds.SeriesNumber = 1001
    ds.InstanceNumber = 1
    ds.PatientOrientation = ["L", "P"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = 16
    ds.Columns = 12
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    # An element whose VR depends on Pixel Representation (US or SS).
    ds.SmallestImagePixelValue = 0
    ds.ContentQualification = "RESEARCH"
    equipment = Dataset()
    equipment.Manufacturer = "radnode"
    equipment.ManufacturerModelName = "ct-denoise"
    equipment.SoftwareVersions = ["radnode 0.1.0", "model 1"]
    equipment.ContributionDescription = "bilateral; classical method, no trained weights"
    equipment.PurposeOfReferenceCodeSequence = Sequence(
        [code("109102", "DCM", "Processing Equipment")]
    )
    ds.ContributingEquipmentSequence = Sequence([equipment])
    ds.SyntheticData = "YES"
    block = ds.private_block(0x0077, PRIVATE_CREATOR, create=True)
    block.add_new(0x01, "LO", "ct-denoise")
    block.add_new(0x10, "UT", '{"strength": 0.5}')
    block.add_new(0x20, "IS", 42)
    ds.PixelData = rng.integers(0, 4096, size=(16, 12), dtype=np.uint16).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def make_ct() -> Dataset:
    """pydicom's CT_small with new UIDs, as radnode would write a derived CT."""
    path = get_testdata_file("CT_small.dcm")
    assert path is not None
    ds = pydicom.dcmread(path)
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.FrameOfReferenceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def save(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def dcmsign_verify(path: Path, cert: Path) -> subprocess.CompletedProcess[str]:
    """``dcmsign --verify``: require a Creator RSA signature, trust ``cert``."""
    assert DCMSIGN is not None
    return subprocess.run(
        [DCMSIGN, "--verify", "+rc", "+cf", str(cert), str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def assert_dcmsign_accepts(path: Path, cert: Path) -> None:
    result = dcmsign_verify(path, cert)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Signature Verification : OK" in output, output
    assert "failed" not in output, output


def assert_dcmsign_rejects(path: Path, cert: Path) -> None:
    result = dcmsign_verify(path, cert)
    assert result.returncode != 0, result.stdout + result.stderr


def dciodvfy_errors(path: Path) -> set[str]:
    assert DCIODVFY is not None
    result = subprocess.run(
        [DCIODVFY, str(path)], capture_output=True, text=True, timeout=120, check=False
    )
    return {
        line.strip() for line in (result.stdout + result.stderr).splitlines() if "Error" in line
    }


def make_ca(tmp: Path) -> tuple[rsa.RSAPrivateKey, x509.Certificate, Path]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Hospital Test CA")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    path = tmp / "ca.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert, path


def write_leaf(
    tmp: Path,
    ca_key: rsa.RSAPrivateKey,
    ca_cert: x509.Certificate,
    *,
    bits: int = 2048,
    not_after: dt.timedelta = dt.timedelta(days=30),
) -> tuple[Path, Path]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "radnode-site")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=2))
        .not_valid_after(now + not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key_path = tmp / "site-key.pem"
    cert_path = tmp / "site-cert.pem"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


@pytest.fixture(scope="module")
def identity(tmp_path_factory: pytest.TempPathFactory) -> SigningIdentity:
    """The node's own identity, made once per module (RSA key generation is slow)."""
    return load_or_create_identity(tmp_path_factory.mktemp("data") / "keys")


@pytest.fixture
def signed_sc(tmp_path: Path, identity: SigningIdentity) -> Path:
    ds = make_secondary_capture()
    sign_dataset(ds, identity)
    return save(ds, tmp_path / "signed.dcm")


# --------------------------------------------------------------------------- identity


def test_identity_is_created_once_with_private_key_mode_0600(tmp_path: Path) -> None:
    keys = tmp_path / "var" / "keys"
    first = load_or_create_identity(keys, common_name="RADNODE-TEST")

    assert first.key_path == keys / KEY_FILE_NAME
    assert first.cert_path == keys / CERT_FILE_NAME
    assert stat.S_IMODE(first.key_path.stat().st_mode) == 0o600
    assert first.private_key.key_size >= 2048
    assert first.certificate.public_key() == first.private_key.public_key()
    assert first.certificate.subject == first.certificate.issuer  # self-signed
    cn = first.certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == "RADNODE-TEST"
    assert not [p for p in keys.iterdir() if p.name.endswith(".tmp")]  # atomic writes

    second = load_or_create_identity(keys)
    assert second.certificate == first.certificate
    assert second.private_key.private_numbers() == first.private_key.private_numbers()


def test_concurrent_first_starts_share_one_identity(tmp_path: Path) -> None:
    with ThreadPoolExecutor(max_workers=2) as pool:
        first, second = pool.map(lambda _: load_or_create_identity(tmp_path / "keys"), range(2))

    assert first.private_key.private_numbers() == second.private_key.private_numbers()
    assert first.certificate == second.certificate
    assert load_or_create_identity(tmp_path / "keys").certificate == first.certificate


def test_identity_reissues_a_certificate_for_a_key_left_alone(tmp_path: Path) -> None:
    first = load_or_create_identity(tmp_path)
    first.cert_path.unlink()  # as if the node died between the two writes

    second = load_or_create_identity(tmp_path)

    assert second.private_key.private_numbers() == first.private_key.private_numbers()
    assert second.certificate.public_key() == first.private_key.public_key()


def test_identity_refuses_a_certificate_without_its_key(tmp_path: Path) -> None:
    first = load_or_create_identity(tmp_path)
    first.key_path.unlink()

    with pytest.raises(SigningError, match=r"signing-key\.pem is missing"):
        load_or_create_identity(tmp_path)


def test_identity_from_site_pki(tmp_path: Path) -> None:
    ca_key, ca_cert, _ = make_ca(tmp_path)
    key_path, cert_path = write_leaf(tmp_path, ca_key, ca_cert)

    site = load_or_create_identity(tmp_path / "keys", key_path=key_path, cert_path=cert_path)

    assert site.key_path == key_path
    assert site.cert_path == cert_path
    assert site.certificate.issuer == ca_cert.subject
    assert not (tmp_path / "keys" / KEY_FILE_NAME).exists()  # nothing generated


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("only-key", "both a key path and a certificate path"),
        ("mismatch", "does not belong to the signing key"),
        ("expired", "expired"),
        ("small-key", "1024 bits"),
        ("missing", "cannot read signing key"),
        ("not-a-cert", "no readable X.509 certificate"),
    ],
)
def test_identity_rejects_unusable_site_files(tmp_path: Path, case: str, message: str) -> None:
    ca_key, ca_cert, ca_path = make_ca(tmp_path)
    bits = 1024 if case == "small-key" else 2048
    not_after = dt.timedelta(days=-1) if case == "expired" else dt.timedelta(days=30)
    key_path, cert_path = write_leaf(tmp_path, ca_key, ca_cert, bits=bits, not_after=not_after)
    kwargs: dict[str, Path | None] = {"key_path": key_path, "cert_path": cert_path}
    if case == "only-key":
        kwargs["cert_path"] = None
    elif case == "mismatch":
        kwargs["cert_path"] = ca_path
    elif case == "missing":
        kwargs["key_path"] = tmp_path / "absent.pem"
    elif case == "not-a-cert":
        kwargs["cert_path"] = key_path

    with pytest.raises(SigningError, match=message):
        load_or_create_identity(
            tmp_path / "keys", key_path=kwargs["key_path"], cert_path=kwargs["cert_path"]
        )


# --------------------------------------------------------------------------- MAC encoding


def test_sequences_enter_the_mac_without_lengths_or_item_delimiters() -> None:
    ds = Dataset()
    ds.add_new(0x00081111, "SQ", Sequence())  # empty sequence
    ds.DerivationCodeSequence = Sequence([code("1", "X", "A")])

    stream = encode_dataset(ds, signable_tags(ds))

    sequence_delimiter = b"\xfe\xff\xdd\xe0"
    empty = b"\x08\x00\x11\x11SQ\x00\x00" + sequence_delimiter
    item = (
        b"\xfe\xff\x00\xe0"
        + b"\x08\x00\x00\x01SH\x02\x001 "
        + b"\x08\x00\x02\x01SH\x02\x00X "
        + b"\x08\x00\x04\x01LO\x02\x00A "
    )
    derivation = b"\x08\x00\x15\x92SQ\x00\x00" + item + sequence_delimiter
    assert stream == empty + derivation
    assert b"\xfe\xff\x0d\xe0" not in stream  # Item Delimitation Items are not signed


def test_signature_sequences_group_lengths_and_un_are_never_signed() -> None:
    ds = make_secondary_capture()
    ds.add_new(0x00080000, "UL", 0)  # group length
    ds.add_new(0x00291010, "UN", b"\x01\x02")  # unknown VR cannot be encoded canonically
    ds.add_new(0x4FFE0001, "SQ", Sequence())
    ds.add_new(0xFFFAFFFA, "SQ", Sequence())

    tags = signable_tags(ds)

    for excluded in (0x00080000, 0x00291010, 0x4FFE0001, 0xFFFAFFFA):
        assert Tag(excluded) not in tags
    assert Tag("PixelData") in tags
    assert Tag(0x00770010) in tags  # private creator
    assert Tag(0x00771001) in tags  # private element


def test_mac_byte_stream_equals_what_dcmsign_hashes(
    tmp_path: Path, identity: SigningIdentity
) -> None:
    unsigned = save(make_secondary_capture(), tmp_path / "unsigned.dcm")
    signed = tmp_path / "dcmsign-signed.dcm"
    dump = tmp_path / "mac-input.bin"
    assert DCMSIGN is not None
    subprocess.run(
        [
            DCMSIGN, "--sign", str(identity.key_path), str(identity.cert_path),
            "--null-passwd", "--mac-sha256", "--profile-creator", "--sig-purpose", "1",
            "--dump", str(dump), str(unsigned), str(signed),
        ],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip

    ds = pydicom.dcmread(signed)
    sig_item = ds.DigitalSignaturesSequence[0]
    listed = [Tag(t) for t in ds.MACParametersSequence[0].DataElementsSigned]
    ours = encode_dataset(ds, listed) + encode_dataset(sig_item, signature_item_tags(sig_item))

    assert ours == dump.read_bytes()
    assert listed == signable_tags(pydicom.dcmread(unsigned))
    assert verify_signatures(ds) == []  # and radnode accepts dcmsign's signature


# --------------------------------------------------------------------------- signing


def test_sign_dataset_adds_creator_rsa_signature(identity: SigningIdentity) -> None:
    ds = make_secondary_capture()
    expected_signed = signable_tags(ds)

    sign_dataset(ds, identity)

    assert len(ds.MACParametersSequence) == 1
    mac = ds.MACParametersSequence[0]
    assert mac.MACIDNumber == 0
    assert mac.MACCalculationTransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert mac.MACAlgorithm == "SHA256"
    assert [Tag(t) for t in mac.DataElementsSigned] == expected_signed
    sig = ds.DigitalSignaturesSequence[0]
    assert sig.MACIDNumber == 0
    assert sig.CertificateType == "X509_1993_SIG"
    assert sig.CertificateOfSigner == identity.certificate.public_bytes(serialization.Encoding.DER)
    assert len(sig.Signature) == identity.private_key.key_size // 8
    assert sig.DigitalSignatureDateTime.endswith("+0000")
    purpose = sig.DigitalSignaturePurposeCodeSequence[0]
    assert (purpose.CodeValue, purpose.CodingSchemeDesignator, purpose.CodeMeaning) == (
        "1",
        "ASTM-sigpurpose",
        "Author's Signature",
    )
    assert verify_signatures(ds) == []


def test_dcmsign_accepts_signed_secondary_capture(
    signed_sc: Path, identity: SigningIdentity
) -> None:
    assert_dcmsign_accepts(signed_sc, identity.cert_path)
    assert verify_signatures(pydicom.dcmread(signed_sc), identity.certificate) == []


def _change_patient_name(ds: Dataset) -> None:
    ds.PatientName = "Someone^Else"


def _change_pixel(ds: Dataset) -> None:
    pixels = bytearray(ds.PixelData)
    pixels[100] ^= 0x01
    ds.PixelData = bytes(pixels)


def _change_nested_code(ds: Dataset) -> None:
    ds.SourceImageSequence[0].PurposeOfReferenceCodeSequence[0].CodeMeaning = "Other"


def _change_private_value(ds: Dataset) -> None:
    ds.private_block(0x0077, PRIVATE_CREATOR)[0x01].value = "mr-accel"


def _remove_series_description(ds: Dataset) -> None:
    del ds.SeriesDescription


def _add_sequence_item(ds: Dataset) -> None:
    ds.DerivationCodeSequence.append(code("113085", "DCM", "Spatial resampling"))


@pytest.mark.parametrize(
    "tamper",
    [
        _change_patient_name,
        _change_pixel,
        _change_nested_code,
        _change_private_value,
        _remove_series_description,
        _add_sequence_item,
    ],
)
def test_any_change_after_signing_is_rejected(
    tmp_path: Path,
    signed_sc: Path,
    identity: SigningIdentity,
    tamper: Callable[[Dataset], None],
) -> None:
    ds = pydicom.dcmread(signed_sc)
    tamper(ds)
    changed = save(ds, tmp_path / "changed.dcm")

    assert_dcmsign_rejects(changed, identity.cert_path)
    problems = verify_signatures(pydicom.dcmread(changed))
    assert problems
    assert "signature #1" in problems[0]


def test_real_ct_is_signed_and_verified(tmp_path: Path, identity: SigningIdentity) -> None:
    ds = make_ct()
    sign_dataset(ds, identity)
    signed = save(ds, tmp_path / "ct.dcm")

    assert_dcmsign_accepts(signed, identity.cert_path)
    read = pydicom.dcmread(signed)
    assert verify_signatures(read) == []
    signed_tags = {Tag(t) for t in read.MACParametersSequence[0].DataElementsSigned}
    assert Tag("PixelData") in signed_tags
    assert any(tag.is_private for tag in signed_tags)  # CT_small's private groups

    read.pixel_array  # noqa: B018 - the pixels still decode
    _change_pixel(read)
    changed = save(read, tmp_path / "ct-changed.dcm")
    assert_dcmsign_rejects(changed, identity.cert_path)
    assert verify_signatures(pydicom.dcmread(changed))


def test_second_signature_keeps_the_first(tmp_path: Path, identity: SigningIdentity) -> None:
    ca_key, ca_cert, ca_path = make_ca(tmp_path)
    key_path, cert_path = write_leaf(tmp_path, ca_key, ca_cert)
    site = load_or_create_identity(tmp_path / "keys", key_path=key_path, cert_path=cert_path)
    ds = make_secondary_capture()

    sign_dataset(ds, identity)
    sign_dataset(ds, site)
    signed = save(ds, tmp_path / "twice.dcm")

    read = pydicom.dcmread(signed)
    assert [item.MACIDNumber for item in read.MACParametersSequence] == [0, 1]
    assert verify_signatures(read) == []
    # The site signature chains to the site CA; the node's self-signed one does not.
    problems = verify_signatures(read, load_certificate(ca_path))
    assert len(problems) == 1
    assert problems[0].startswith("signature #1") and "neither the trusted" in problems[0]


def test_dcmsign_accepts_a_site_pki_signature_via_the_ca(tmp_path: Path) -> None:
    ca_key, ca_cert, ca_path = make_ca(tmp_path)
    key_path, cert_path = write_leaf(tmp_path, ca_key, ca_cert)
    site = load_or_create_identity(tmp_path / "keys", key_path=key_path, cert_path=cert_path)
    ds = make_secondary_capture()

    sign_dataset(ds, site)
    signed = save(ds, tmp_path / "site.dcm")

    assert_dcmsign_accepts(signed, ca_path)
    assert verify_signatures(pydicom.dcmread(signed), ca_cert) == []


def test_dcmsign_rejects_an_untrusted_signer(tmp_path: Path, signed_sc: Path) -> None:
    _, _, other_ca = make_ca(tmp_path)

    assert_dcmsign_rejects(signed_sc, other_ca)


def test_unsigned_dataset_is_reported() -> None:
    assert verify_signatures(make_secondary_capture()) == [
        "no Digital Signatures Sequence (FFFA,FFFA): the instance is not signed"
    ]


def test_expired_certificate_is_reported(
    monkeypatch: pytest.MonkeyPatch, identity: SigningIdentity
) -> None:
    ds = make_secondary_capture()
    sign_dataset(ds, identity)
    later = identity.certificate.not_valid_after_utc + dt.timedelta(days=1)
    monkeypatch.setattr("node.signing.utc_now", lambda: later)

    problems = verify_signatures(ds)

    assert len(problems) == 1
    assert "outside its validity period" in problems[0]


def test_sign_refuses_compressed_pixel_data(identity: SigningIdentity) -> None:
    ds = make_secondary_capture()
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit

    with pytest.raises(SigningError, match="compressed"):
        sign_dataset(ds, identity)


def test_sign_requires_the_creator_profile_uids(identity: SigningIdentity) -> None:
    ds = make_secondary_capture()
    del ds.SeriesInstanceUID

    with pytest.raises(SigningError, match="SeriesInstanceUID"):
        sign_dataset(ds, identity)


# --------------------------------------------------------------------------- dciodvfy


@pytest.mark.parametrize("build", [make_secondary_capture, make_ct])
def test_signing_adds_no_dciodvfy_errors(
    tmp_path: Path, identity: SigningIdentity, build: Callable[[], Dataset]
) -> None:
    ds = build()
    unsigned = save(ds, tmp_path / "unsigned.dcm")
    sign_dataset(ds, identity)
    signed = save(ds, tmp_path / "signed.dcm")

    new_errors = dciodvfy_errors(signed) - dciodvfy_errors(unsigned)

    assert new_errors == set()
    assert "DigitalSignaturesSequence" in pydicom.dcmread(signed)
