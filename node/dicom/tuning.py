"""pynetdicom tuned for the node's traffic: what it touches of pynetdicom's internals.

Every change here concerns only which thread does the work, how soon and in
how many calls bytes are read or sent; the DICOM exchanged is pynetdicom's.
If a pynetdicom release renames what these touch, its defaults stay in force
(the tests of this module then fail, so the loss is noticed).
"""

from __future__ import annotations

import queue
import socket
from typing import Any, cast

from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.transport import AssociationSocket

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


def tune_receive(assoc: Any) -> None:
    """Direct C-STORE service, faster polling, bulk reads, no Nagle delay.

    For an association the node accepted (call it from ``EVT_ACCEPTED``).
    """
    _no_delay(assoc)
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


def _no_delay(assoc: Any) -> None:
    """Send each PDU at once (TCP_NODELAY).

    pynetdicom leaves Nagle's algorithm on: the last, short segment of a
    dataset then waits for the peer's delayed acknowledgement (up to 40 ms
    on Linux) before it leaves.
    """
    transport = getattr(getattr(assoc, "dul", None), "socket", None)
    connection = getattr(transport, "socket", None)
    if isinstance(connection, socket.socket):
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def tune_send(assoc: Any) -> None:
    """No Nagle delay and faster DUL polling for an association the node requested."""
    _no_delay(assoc)
    dul = getattr(assoc, "dul", None)
    if dul is not None and hasattr(dul, "_run_loop_delay"):
        dul._run_loop_delay = DUL_POLL_SECONDS
