"""Implementation of the node's Storage and Verification SCP (PS3.4 B, A).

Handlers are thin: validate, persist, record, answer. A C-STORE is answered
Success only after the instance is fsync'd in the spool and indexed; bad
input is answered with a failure status carrying an Error Comment, and an
audit record, and the node keeps serving.
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Iterator
from typing import Any, cast

from pydicom import Dataset
from pynetdicom import AE, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
    Verification,
)
from pynetdicom.transport import ThreadedAssociationServer
from sqlalchemy.exc import SQLAlchemyError

from node import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME, audit
from node.db import Database, utcnow
from node.dicom.query import QueryError, find
from node.dicom.receipts import AssociationLog, ReceiptJournal, record_receipt
from node.dicom.syntaxes import ACCEPTED_TRANSFER_SYNTAXES
from node.dicom.tls import server_context
from node.dicom.tuning import tune_receive
from node.errors import InvalidInstanceError, StorageError
from node.ingest import Accepted, Ingest
from node.settings import NodeSettings
from node.spool import Spool

logger = logging.getLogger(__name__)

# C-STORE failure statuses (PS3.4 Table B.2-1 and PS3.7 C.4.2).
OUT_OF_RESOURCES = 0xA700
DATASET_DOES_NOT_MATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000
# C-FIND failure statuses (PS3.4 Table C.4-1).
IDENTIFIER_DOES_NOT_MATCH = 0xA900
UNABLE_TO_PROCESS = 0xC000


def _status(code: int, comment: str) -> Dataset:
    status = Dataset()
    status.Status = code
    # Error Comment is LO: at most 64 characters, no backslash.
    status.ErrorComment = comment.replace("\\", "/")[:64]
    return status


def _is_tls(event: evt.Event) -> bool:
    """Whether the association came in over the TLS port."""
    transport = event.assoc.dul.socket
    return transport is not None and isinstance(transport.socket, ssl.SSLSocket)


class StorageSCP:
    """The node's listening AE: C-ECHO and C-STORE for every storage SOP class."""

    def __init__(
        self,
        settings: NodeSettings,
        db: Database,
        ingest: Ingest,
        spool: Spool,
        journal: ReceiptJournal,
    ) -> None:
        self.settings = settings
        self.db = db
        self.ingest = ingest
        self.spool = spool
        self.journal = journal
        self._servers: list[ThreadedAssociationServer] = []
        self._lock = threading.Lock()
        self._associations: dict[int, AssociationLog] = {}

    def _make_ae(self) -> AE:
        ae = AE(ae_title=self.settings.ae_title)
        ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
        ae.implementation_version_name = IMPLEMENTATION_VERSION_NAME
        ae.maximum_pdu_size = self.settings.max_pdu
        ae.maximum_associations = 32
        ae.network_timeout = 60
        ae.dimse_timeout = 60
        ae.acse_timeout = 30
        if self.settings.allowed_calling_ae:
            ae.require_calling_aet = list(self.settings.allowed_calling_ae)
        ae.add_supported_context(Verification)
        ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
        ae.add_supported_context(PatientRootQueryRetrieveInformationModelFind)
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(str(cx.abstract_syntax), ACCEPTED_TRANSFER_SYNTAXES)
        return ae

    def start(self) -> None:
        """Listen on ``host:port`` in background threads."""
        ae = self._make_ae()
        handlers: list[Any] = [
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_FIND, self._on_find),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_RELEASED, self._on_ended),
            (evt.EVT_ABORTED, self._on_ended),
        ]
        address = (self.settings.host, self.settings.port)
        self._listen(ae.start_server(address, block=False, evt_handlers=handlers))
        logger.info("listening as %s on %s:%d", self.settings.ae_title, *address)
        tls = self.settings.tls
        if tls is not None:
            context = server_context(tls.cert, tls.key, tls.ca)
            address = (self.settings.host, tls.port)
            self._listen(
                ae.start_server(address, block=False, evt_handlers=handlers, ssl_context=context)
            )
            logger.info("listening as %s on %s:%d (TLS)", self.settings.ae_title, *address)

    def _listen(self, server: ThreadedAssociationServer | None) -> None:
        if server is None:  # only a blocking server returns None
            raise RuntimeError("the DICOM server did not start")
        self._servers.append(server)

    @property
    def running(self) -> bool:
        """Whether the server accepts connections."""
        return bool(self._servers)

    def stop(self) -> None:
        """Stop listening; associations in progress are ended."""
        for server in self._servers:
            server.shutdown()
        self._servers.clear()

    # -- association events ------------------------------------------------------

    def _on_echo(self, event: evt.Event) -> int:
        return 0x0000

    def _on_accepted(self, event: evt.Event) -> None:
        requestor = event.assoc.requestor
        log = AssociationLog(
            calling_ae=str(requestor.ae_title).strip(),
            address=str(requestor.address),
            started=utcnow(),
        )
        with self._lock:
            self._associations[id(event.assoc)] = log
        with self.db.session() as session:
            audit.record(
                session,
                audit.AuditEvent.ASSOCIATION_ACCEPTED,
                actor=log.calling_ae,
                address=log.address,
                called_ae=self.settings.ae_title,
                tls=_is_tls(event),
            )
        # Last: from here on a C-STORE may be served in the DUL thread, and
        # it must find the association's log.
        tune_receive(event.assoc)

    def _on_rejected(self, event: evt.Event) -> None:
        requestor = event.assoc.requestor
        calling = str(requestor.ae_title).strip()
        logger.warning("association from %s (%s) rejected", calling, requestor.address)
        with self.db.session() as session:
            audit.record(
                session,
                audit.AuditEvent.ASSOCIATION_REJECTED,
                outcome=audit.Outcome.MINOR_FAILURE,
                actor=calling,
                address=str(requestor.address),
                called_ae=str(event.assoc.acceptor.ae_title).strip(),
                reason=(
                    "calling AE title not allowed"
                    if self.settings.allowed_calling_ae
                    and calling not in self.settings.allowed_calling_ae
                    else "association request rejected"
                ),
            )

    def _on_ended(self, event: evt.Event) -> None:
        with self._lock:
            log = self._associations.pop(id(event.assoc), None)
            if log is not None:
                log.closed = True
        if log is None or not (log.received or log.duplicates):
            return
        # One record per series per association (DICOM Instances Transferred).
        with self.db.session() as session:
            for key in log.series:
                record_receipt(
                    session,
                    key,
                    log.calling_ae,
                    log.address,
                    instances=log.received[key],
                    duplicates=log.duplicates[key],
                    aborted=event.event is evt.EVT_ABORTED,
                )
        self.journal.forget(log)

    # -- C-FIND -----------------------------------------------------------------

    def _on_find(self, event: evt.Event) -> Iterator[tuple[int | Dataset, Dataset | None]]:
        calling = str(event.assoc.requestor.ae_title).strip()
        try:
            identifier = event.identifier
            level = str(identifier.get("QueryRetrieveLevel", ""))
            matches = list(find(self.db, self.spool, identifier))
        except QueryError as exc:
            logger.warning("C-FIND from %s refused: %s", calling, exc)
            yield _status(IDENTIFIER_DOES_NOT_MATCH, str(exc)), None
            return
        except Exception as exc:
            logger.exception("C-FIND failed")
            yield _status(UNABLE_TO_PROCESS, f"{type(exc).__name__}: {exc}"), None
            return
        with self.db.session() as session:
            audit.record(
                session, audit.AuditEvent.QUERY, actor=calling, level=level, results=len(matches)
            )
        for response in matches:
            if event.is_cancelled:
                yield 0xFE00, None
                return
            yield 0xFF00, response

    # -- C-STORE ----------------------------------------------------------------

    def _on_store(self, event: evt.Event) -> int | Dataset:
        calling = str(event.assoc.requestor.ae_title).strip()
        with self._lock:
            log = self._associations.get(id(event.assoc))
        try:
            request = cast(C_STORE, event.request)
            ds = event.dataset
            raw = request.DataSet.getvalue() if request.DataSet is not None else b""
            accepted = self.ingest.accept(
                ds,
                raw,
                str(event.context.transfer_syntax),
                calling,
                expected=(str(request.AffectedSOPClassUID), str(request.AffectedSOPInstanceUID)),
            )
        except InvalidInstanceError as exc:
            return self._reject(event, calling, DATASET_DOES_NOT_MATCH, str(exc))
        except (StorageError, SQLAlchemyError) as exc:
            # Disk full, or the index unreachable: the peer may try again later.
            logger.error("cannot store durably: %s", type(exc).__name__)
            return self._reject(event, calling, OUT_OF_RESOURCES, f"cannot store: {exc}")
        except Exception as exc:
            logger.exception("C-STORE failed")
            return self._reject(event, calling, CANNOT_UNDERSTAND, f"{type(exc).__name__}: {exc}")
        if log is not None:
            self._count(log, accepted)
        return 0x0000

    def _count(self, log: AssociationLog, accepted: Accepted) -> None:
        """Add a stored instance to its association's receipt."""
        ident = accepted.identity
        key = (ident.study_uid, ident.series_uid, ident.patient_id)
        with self._lock:  # the association may end (or time out) meanwhile
            if not log.closed:
                new_series = key not in log.received and key not in log.duplicates
                (log.duplicates if accepted.duplicate else log.received)[key] += 1
                if new_series:
                    try:
                        self.journal.note(log)
                    except StorageError as exc:
                        # Stored and indexed; only a crash before the association
                        # ends would now leave its receipt unaudited.
                        logger.error("cannot journal an association's receipt: %s", exc)
                return
        # Its end is recorded already: this instance gets a record of its own.
        try:
            with self.db.session() as session:
                record_receipt(
                    session,
                    key,
                    log.calling_ae,
                    log.address,
                    instances=0 if accepted.duplicate else 1,
                    duplicates=1 if accepted.duplicate else 0,
                    aborted=True,
                )
        except Exception:  # stored and indexed: the answer stays Success
            logger.exception("could not audit an instance stored after its association ended")

    def _reject(
        self,
        event: evt.Event,
        calling: str,
        code: int,
        reason: str,
    ) -> Dataset:
        logger.warning("C-STORE from %s refused (0x%04X): %s", calling, code, reason)
        try:
            with self.db.session() as session:
                audit.record(
                    session,
                    audit.AuditEvent.INSTANCE_REJECTED,
                    outcome=audit.Outcome.MINOR_FAILURE,
                    actor=calling,
                    status=f"0x{code:04X}",
                    reason=reason,
                    sop_class=str(cast(C_STORE, event.request).AffectedSOPClassUID),
                )
        except Exception:
            logger.exception("could not audit a refused C-STORE")
        return _status(code, reason)
