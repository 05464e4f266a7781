"""Implementation of the node's Storage and Verification SCP (PS3.4 B, A).

Handlers are thin: validate, persist, record, answer. A C-STORE is answered
Success only after the instance is fsync'd in the spool and indexed; bad
input is answered with a failure status carrying an Error Comment, and an
audit record, and the node keeps serving.
"""

from __future__ import annotations

import logging
import queue
import socket
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
from pynetdicom.transport import AssociationSocket, ThreadedAssociationServer
from sqlalchemy.exc import SQLAlchemyError

from node import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME, audit
from node.db import Database, utcnow
from node.dicom.query import QueryError, find
from node.dicom.receipts import AssociationLog, ReceiptJournal, record_receipt
from node.dicom.syntaxes import ACCEPTED_TRANSFER_SYNTAXES
from node.dicom.tls import server_context
from node.errors import InvalidInstanceError, StorageError
from node.ingest import Ingest
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


#: How long an association's DUL thread sleeps when it has nothing to do.
#: pynetdicom's default (1 ms) adds up to a millisecond twice per C-STORE
#: (reading the next request, sending the response); a tenth of it costs a
#: little CPU only while an association is open.
DUL_POLL_SECONDS = 0.0001


class BulkReadSocket(AssociationSocket):
    """pynetdicom's association socket, reading a PDU in a few system calls.

    pynetdicom reads incoming data 4 KiB at a time: about 130 reads and
    buffer extensions for one 512 x 512 CT slice. This takes what the kernel
    has, up to the bytes still needed, straight into one buffer.
    """

    def recv(self, nr_bytes: int) -> bytearray:
        """Read ``nr_bytes`` (fewer only if the peer closes the connection)."""
        connection = cast(socket.socket, self.socket)
        buffer = bytearray(nr_bytes)
        view = memoryview(buffer)
        done = 0
        while done < nr_bytes:
            count = connection.recv_into(view[done:], nr_bytes - done)
            if not count:  # connection closed: what arrived so far
                return buffer[:done]
            done += count
        return buffer


class DirectStoreQueue(queue.Queue[tuple[int | None, Any]]):
    """An accepted association's DIMSE message queue that serves C-STORE at once.

    pynetdicom's DUL thread decodes each request and queues it; the
    association's own thread polls that queue every millisecond and runs the
    handler, and the DUL thread polls for the response to send. For a
    C-STORE the handler runs instead in the DUL thread, as the request
    completes, and the response leaves in the same thread's next turn: no
    thread hand-off, no polling delay. A storage peer waits for each
    response anyway (one outstanding operation, PS3.7 D.3.3.3), so the
    reader has nothing to read meanwhile. Other messages (C-ECHO, C-FIND,
    C-CANCEL) take pynetdicom's usual path.

    Installed by changing the class of the association's existing queue,
    so nothing queued before (or while) it is installed can be missed.
    """

    #: The association whose requests this queue serves.
    association: Any = None

    def put(
        self, item: tuple[int | None, Any], block: bool = True, timeout: float | None = None
    ) -> None:
        """Serve a C-STORE request now; queue anything else."""
        context_id, primitive = item
        if context_id is not None and isinstance(primitive, C_STORE) and primitive.is_valid_request:
            self.association._serve_request(primitive, context_id)
        else:
            super().put(item, block, timeout)


def _tune_receive(assoc: Any) -> None:
    """Direct C-STORE service, faster polling and bulk reads (pynetdicom internals).

    These change only which thread runs a C-STORE handler, how soon and in
    how many calls the bytes are read; if a pynetdicom release renames what
    they touch, its defaults stay in force.
    """
    dul = getattr(assoc, "dul", None)
    if dul is None:
        return
    if hasattr(dul, "_run_loop_delay"):
        dul._run_loop_delay = DUL_POLL_SECONDS
    if type(getattr(dul, "socket", None)) is AssociationSocket:
        dul.socket.__class__ = BulkReadSocket
    dimse = getattr(assoc, "dimse", None)
    if (
        hasattr(assoc, "_serve_request")
        and dimse is not None
        and type(getattr(dimse, "msg_queue", None)) is queue.Queue
    ):
        dimse.msg_queue.association = assoc
        dimse.msg_queue.__class__ = DirectStoreQueue


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
        _tune_receive(event.assoc)
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
            ident = accepted.identity
            key = (ident.study_uid, ident.series_uid, ident.patient_id)
            new_series = key not in log.received and key not in log.duplicates
            (log.duplicates if accepted.duplicate else log.received)[key] += 1
            if new_series:
                try:
                    self.journal.note(log)
                except StorageError as exc:
                    # Stored and indexed; only a crash before the association
                    # ends would now leave its receipt unaudited.
                    logger.error("cannot journal an association's receipt: %s", exc)
        return 0x0000

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
