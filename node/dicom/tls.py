"""TLS for DICOM associations (PS3.15 B.1, the BCP 195 TLS profiles).

Contexts require TLS 1.2 or later and use the ssl module's secure cipher
defaults; peers' certificates are verified against the configured CA (and a
server is always verified by its host name on the client side).
"""

from __future__ import annotations

import ssl
from pathlib import Path

from node.errors import ConfigError


def _load_chain(context: ssl.SSLContext, cert: Path, key: Path) -> None:
    try:
        context.load_cert_chain(certfile=str(cert), keyfile=str(key))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"cannot load TLS certificate {str(cert)!r} with key {str(key)!r}: {exc}"
        ) from None


def _load_ca(context: ssl.SSLContext, ca: Path) -> None:
    try:
        context.load_verify_locations(cafile=str(ca))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load TLS CA certificates {str(ca)!r}: {exc}") from None


def server_context(cert: Path, key: Path, ca: Path | None) -> ssl.SSLContext:
    """The SCP's context; with ``ca``, callers must present a certificate it issued."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_chain(context, cert, key)
    if ca is not None:
        _load_ca(context, ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(
    ca: Path | None, cert: Path | None = None, key: Path | None = None
) -> ssl.SSLContext:
    """An SCU's context: the peer is verified against ``ca`` (else the system store)."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca is not None:
        _load_ca(context, ca)
    if cert is not None and key is not None:
        _load_chain(context, cert, key)
    return context
