"""The node's signing identity: RSA key and X.509 certificate (PS3.15 C.1).

The Base RSA Digital Signature Profile signs with an RSA private key and puts
the matching X.509 certificate into every signature as Certificate of Signer
(0400,0115). radnode keeps its own pair under ``data_dir/keys``
(``signing-key.pem``, ``signing-cert.pem``), made on first start with a
self-signed certificate, or uses a site's own PKI key and certificate.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from node import MANUFACTURER
from node.errors import SigningError, StorageError
from node.spool import write_atomic

logger = logging.getLogger(__name__)

#: File names of the node's own identity inside ``data_dir/keys``.
KEY_FILE_NAME = "signing-key.pem"
CERT_FILE_NAME = "signing-cert.pem"


def managed_keys_dir(data_dir: Path) -> Path:
    """Where the node keeps its own signing identity: ``data_dir/keys``."""
    return data_dir / "keys"


#: Smallest RSA modulus accepted; PS3.15 C.1 leaves the size to policy and
#: 2048 bits is today's floor for signatures meant to last years.
MIN_RSA_BITS = 2048
#: Validity of the self-signed certificate made on first start.
SELF_SIGNED_VALIDITY = dt.timedelta(days=3650)


@dataclass(frozen=True)
class SigningIdentity:
    """The node's signing key and its X.509 certificate.

    Attributes
    ----------
    private_key : cryptography.hazmat.primitives.asymmetric.rsa.RSAPrivateKey
        RSA key of at least :data:`MIN_RSA_BITS` bits.
    certificate : cryptography.x509.Certificate
        Certificate whose public key matches ``private_key``; embedded as
        Certificate of Signer (0400,0115) in every signature.
    key_path, cert_path : pathlib.Path
        Where both were loaded from (or written to).
    """

    private_key: rsa.RSAPrivateKey
    certificate: x509.Certificate
    key_path: Path
    cert_path: Path


def utc_now() -> dt.datetime:
    """The current time, timezone-aware in UTC."""
    return dt.datetime.now(dt.UTC)


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write a key or certificate durably, created with ``mode`` from the start."""
    try:
        write_atomic(path, [data], mode=mode)
    except StorageError as exc:
        raise SigningError(f"cannot write {path}: {exc}") from exc


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise SigningError(f"cannot open lock file {path}: {exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _self_signed_certificate(key: rsa.RSAPrivateKey, common_name: str) -> x509.Certificate:
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, MANUFACTURER),
        ]
    )
    now = utc_now()
    public = key.public_key()
    # A self-signed certificate is its own trust anchor: it must be a CA
    # allowed to sign certificates for OpenSSL (and so dcmsign +cf) to accept
    # it, and it is also used for the document signatures themselves.
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + SELF_SIGNED_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=True,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )


def _load_key(path: Path) -> rsa.RSAPrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise SigningError(f"cannot read signing key {path}: {exc}") from exc
    except (ValueError, TypeError) as exc:
        raise SigningError(
            f"signing key {path} is not an unencrypted PEM private key: {exc}"
        ) from exc
    if not isinstance(key, rsa.RSAPrivateKey):
        raise SigningError(
            f"signing key {path} is a {type(key).__name__}; the Base RSA Digital Signature "
            "Profile (PS3.15 C.1) needs an RSA key"
        )
    if key.key_size < MIN_RSA_BITS:
        raise SigningError(
            f"signing key {path} has {key.key_size} bits; at least {MIN_RSA_BITS} are required"
        )
    return key


def load_certificate(path: Path) -> x509.Certificate:
    """Read an X.509 certificate from a PEM (or DER) file.

    Parameters
    ----------
    path : pathlib.Path
        The certificate file.

    Returns
    -------
    cryptography.x509.Certificate
        The certificate.

    Raises
    ------
    SigningError
        The file cannot be read or holds no certificate; the message names it.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SigningError(f"cannot read certificate {path}: {exc}") from exc
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise SigningError(f"{path} holds no readable X.509 certificate: {exc}") from exc


def check_identity(key: rsa.RSAPrivateKey, cert: x509.Certificate, cert_path: Path) -> None:
    """Check that ``cert`` belongs to ``key`` and is inside its validity period now.

    Parameters
    ----------
    key : cryptography.hazmat.primitives.asymmetric.rsa.RSAPrivateKey
        The signing key.
    cert : cryptography.x509.Certificate
        Its certificate.
    cert_path : pathlib.Path
        Where the certificate came from, for the error message.

    Raises
    ------
    SigningError
        The certificate's public key is another key, or the certificate is
        not yet or no longer valid: a signature made with it would not verify.
    """
    if cert.public_key() != key.public_key():
        raise SigningError(f"certificate {cert_path} does not belong to the signing key")
    now = utc_now()
    if now < cert.not_valid_before_utc:
        raise SigningError(
            f"certificate {cert_path} is not valid before {cert.not_valid_before_utc.isoformat()}"
        )
    if now > cert.not_valid_after_utc:
        raise SigningError(
            f"certificate {cert_path} expired on {cert.not_valid_after_utc.isoformat()}; "
            "renew it (or delete both files under the keys directory to make a new "
            "self-signed identity)"
        )


def check_identity_files(
    keys_dir: Path, key_path: Path | None = None, cert_path: Path | None = None
) -> None:
    """What :func:`load_or_create_identity` would refuse, found without writing anything.

    A site's configured pair is loaded and checked; the managed pair in
    ``keys_dir`` is checked where it exists (a missing one is made at the
    first start).

    Raises
    ------
    SigningError
        As :func:`load_or_create_identity` would.
    """
    if key_path is not None or cert_path is not None:
        load_or_create_identity(keys_dir, key_path, cert_path)  # only reads configured files
        return
    managed_key = keys_dir / KEY_FILE_NAME
    managed_cert = keys_dir / CERT_FILE_NAME
    _refuse_half_pair(managed_key, managed_cert)
    if managed_key.exists() and managed_cert.exists():
        check_identity(_load_key(managed_key), load_certificate(managed_cert), managed_cert)


def _refuse_half_pair(managed_key: Path, managed_cert: Path) -> None:
    """A managed certificate without its key: never replaced behind the operator's back."""
    if managed_cert.exists() and not managed_key.exists():
        raise SigningError(
            f"{managed_cert} exists but its key {managed_key} is missing; restore the key "
            "or remove the certificate to make a new identity"
        )


def load_or_create_identity(
    keys_dir: Path,
    key_path: Path | None = None,
    cert_path: Path | None = None,
    common_name: str = "RADNODE",
) -> SigningIdentity:
    """Load the node's signing identity, creating a self-signed one on first start.

    Parameters
    ----------
    keys_dir : pathlib.Path
        ``data_dir/keys``: home of ``signing-key.pem`` and ``signing-cert.pem``
        when no site PKI is configured.
    key_path, cert_path : pathlib.Path, optional
        A site's own PEM key and certificate. Both or neither must be given;
        configured files are only read, never created.
    common_name : str
        Subject CN of a newly made self-signed certificate.

    Returns
    -------
    SigningIdentity
        The key, the certificate and their paths.

    Raises
    ------
    SigningError
        A configured file is missing or unreadable, the key is not RSA of at
        least 2048 bits, the certificate does not match the key or is outside
        its validity period, or the managed key pair is half present.

    Notes
    -----
    A new key is a 2048-bit RSA key with public exponent 65537, written
    atomically with mode 0600 before its certificate; if the node dies between
    the two writes, the next start issues a certificate for the existing key.
    """
    if (key_path is None) != (cert_path is None):
        raise SigningError(
            "a site signing identity needs both a key path and a certificate path; "
            f"got key={key_path} cert={cert_path}"
        )
    if key_path is not None and cert_path is not None:
        key = _load_key(key_path)
        cert = load_certificate(cert_path)
        check_identity(key, cert, cert_path)
        return SigningIdentity(key, cert, key_path, cert_path)

    managed_key = keys_dir / KEY_FILE_NAME
    managed_cert = keys_dir / CERT_FILE_NAME
    try:
        keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise SigningError(f"cannot create the keys directory {keys_dir}: {exc}") from exc
    # Several node processes may share one data_dir (DESIGN.md, "Scale"):
    # the lock makes exactly one of them create the identity, and the others
    # load that one instead of each racing to write its own key.
    with _locked(keys_dir / ".lock"):
        _refuse_half_pair(managed_key, managed_cert)
        if managed_key.exists():
            key = _load_key(managed_key)
            if managed_key.stat().st_mode & 0o077:
                logger.warning("signing key %s is readable by group or others", managed_key)
        else:
            key = rsa.generate_private_key(public_exponent=65537, key_size=MIN_RSA_BITS)
            pem = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            _write_atomic(managed_key, pem, 0o600)
            logger.info("created signing key %s", managed_key)
        if managed_cert.exists():
            cert = load_certificate(managed_cert)
        else:
            cert = _self_signed_certificate(key, common_name)
            _write_atomic(managed_cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)
            logger.info("created self-signed signing certificate %s", managed_cert)
    check_identity(key, cert, managed_cert)
    return SigningIdentity(key, cert, managed_key, managed_cert)
