"""Implementation of the node's Storage SCU: C-STORE of outputs to a destination (PS3.4 B)."""

from __future__ import annotations

import logging
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pynetdicom import AE

from node import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from node.dicom.syntaxes import SEND_TRANSFER_SYNTAXES
from node.dicom.tuning import tune
from node.errors import DeliveryError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoreResult:
    """The outcome of one C-STORE: the peer's status, or why none came."""

    status: int | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Success (0x0000) or a warning (0x0001, 0xBxxx): the peer stored it."""
        return self.status is not None and (
            self.status in (0x0000, 0x0001) or (self.status & 0xF000) == 0xB000
        )


def send_files(
    calling_ae: str,
    ae_title: str,
    host: str,
    port: int,
    files: Sequence[tuple[Path, str]],
    timeout: float = 30.0,
    tls: ssl.SSLContext | None = None,
) -> list[StoreResult]:
    """Send ``files`` (path, SOP Class UID) over one association (TLS with ``tls``).

    Raises
    ------
    DeliveryError
        When the association cannot be established (peer down, rejected).
    """
    ae = AE(ae_title=calling_ae)
    ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
    ae.implementation_version_name = IMPLEMENTATION_VERSION_NAME
    ae.acse_timeout = timeout
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout
    ae.connection_timeout = timeout
    for sop_class in sorted({sop for _, sop in files}):
        ae.add_requested_context(sop_class, SEND_TRANSFER_SYNTAXES)
    tls_args = (tls, host) if tls is not None else None
    assoc = ae.associate(host, port, ae_title=ae_title, tls_args=tls_args)
    if not assoc.is_established:
        reason = (
            "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "unreachable"
        )
        raise DeliveryError(f"association with {ae_title}@{host}:{port} {reason}")
    tune(assoc)
    results: list[StoreResult] = []
    try:
        for path, _ in files:
            if not assoc.is_established:
                results.append(StoreResult(None, "association ended early"))
                continue
            try:
                status = assoc.send_c_store(path)
            except Exception as exc:  # one unreadable file must not stop the batch
                logger.exception("C-STORE of one output failed")
                results.append(StoreResult(None, f"{type(exc).__name__}: {exc}"))
                continue
            if status is None or "Status" not in status:
                results.append(StoreResult(None, "no response (timeout or abort)"))
            else:
                code = int(status.Status)
                comment = str(status.get("ErrorComment", "")) or None
                results.append(StoreResult(code, comment))
    finally:
        if assoc.is_established:
            assoc.release()
    return results
