"""pynetdicom tuned for the node's traffic: what it touches of pynetdicom's internals.

Every change here concerns only which thread does the work, how soon and in
how many calls bytes are read or sent; the DICOM exchanged is pynetdicom's.
If a pynetdicom release renames what these touch, its defaults stay in force
(the tests of this module then fail, so the loss is noticed).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import socket
from typing import Any, cast

from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import uid_to_service_class
from pynetdicom.transport import AssociationSocket

logger = logging.getLogger(__name__)

#: Largest PDU read into one buffer sized from its header; a longer one
#: (a peer may send anything when the node sets no limit) is read as
#: pynetdicom reads it, the buffer growing only as the bytes arrive.
BULK_READ_MAX = 4 * 1024 * 1024

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
        if nr_bytes > BULK_READ_MAX:
            return super().recv(nr_bytes)
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
    C-CANCEL), and a C-STORE that pynetdicom would refuse by aborting (a
    context not accepted, a SOP Class that is not storage), take
    pynetdicom's usual path: an abort waits for the DUL thread to stop, so
    it must not start in that thread.

    Installed by changing the class of the association's existing queue,
    so nothing queued before (or while) it is installed can be missed. A
    C-STORE handler served here must not call the association's
    ``release()``, blocking ``abort()`` or ``send_*()``: they wait on the
    DUL thread it runs in.
    """

    #: The association whose requests this queue serves.
    association: Any = None

    def put(
        self, item: tuple[int | None, Any], block: bool = True, timeout: float | None = None
    ) -> None:
        """Serve a C-STORE request now; queue anything else."""
        context_id, primitive = item
        context = self._storage_context(context_id, primitive)
        if context is None:
            super().put(item, block, timeout)
            return
        assoc = self.association
        assoc.dimse.cancel_req = {}
        try:
            # What Association._serve_request runs for it, less the checks above.
            StorageServiceClass(assoc).SCP(primitive, context)
        except Exception:
            logger.exception("C-STORE service failed; aborting the association")
            assoc.abort(block=False)

    def _storage_context(self, context_id: int | None, primitive: Any) -> Any:
        """The accepted presentation context of a valid storage request, else None."""
        assoc = self.association
        if context_id is None or not isinstance(primitive, C_STORE):
            return None
        if not primitive.is_valid_request or getattr(assoc, "_sent_release", True):
            return None
        context = getattr(assoc, "_accepted_cx", {}).get(context_id)
        sop_class = str(primitive.AffectedSOPClassUID)
        if context is None or str(context.abstract_syntax) != sop_class:
            return None
        if sop_class in assoc.acceptor.accepted_common_extended:
            return None  # served by another service class (extended negotiation)
        return context if uid_to_service_class(sop_class) is StorageServiceClass else None


def tune_receive(assoc: Any) -> None:
    """:func:`tune`, bulk reads and direct C-STORE service.

    For an association the node accepted (call it from ``EVT_ACCEPTED``).
    """
    tune(assoc)
    transport = getattr(getattr(assoc, "dul", None), "socket", None)
    if type(transport) is AssociationSocket:
        transport.__class__ = BulkReadSocket
    dimse = getattr(assoc, "dimse", None)
    if (
        hasattr(assoc, "_accepted_cx")
        and dimse is not None
        and type(getattr(dimse, "msg_queue", None)) is queue.Queue
    ):
        dimse.msg_queue.association = assoc
        dimse.msg_queue.__class__ = DirectStoreQueue


def tune(assoc: Any) -> None:
    """No Nagle delay and faster DUL polling: for every association of the node's."""
    _no_delay(assoc)
    dul = getattr(assoc, "dul", None)
    if dul is not None and hasattr(dul, "_run_loop_delay"):
        dul._run_loop_delay = DUL_POLL_SECONDS


def _no_delay(assoc: Any) -> None:
    """Send each PDU at once (TCP_NODELAY).

    pynetdicom leaves Nagle's algorithm on: the last, short segment of a
    dataset then waits for the peer's delayed acknowledgement (up to 40 ms
    on Linux) before it leaves.
    """
    transport = getattr(getattr(assoc, "dul", None), "socket", None)
    connection = getattr(transport, "socket", None)
    if isinstance(connection, socket.socket):
        with contextlib.suppress(OSError):  # closed already: nothing left to send
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
