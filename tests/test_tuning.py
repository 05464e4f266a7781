"""pynetdicom tuned for the node's traffic (``node.dicom.tuning``).

The socket reads whole PDUs in bulk and stops at a closed connection; a
C-STORE is served in the association's DUL thread as its request completes,
other requests in the association's own thread; both sides send without
Nagle's delay.
"""

from __future__ import annotations

import os
import socket
import threading
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset
from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.dul import DULServiceProvider
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from node.dicom.tuning import (
    BULK_READ_MAX,
    DUL_POLL_SECONDS,
    BulkReadSocket,
    tune,
    tune_receive,
)
from node.peers import LOOPBACK, free_port, run_tool, start_storescp, wait_until
from node.samples import CT_128, make_series, write_series


def _no_delay(assoc: Association) -> int:
    """The TCP_NODELAY option of an association's connection."""
    transport = assoc.dul.socket
    assert transport is not None and transport.socket is not None
    return transport.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


def _serve_tuned(ae: AE, handlers: list[Any]) -> tuple[ThreadedAssociationServer, int]:
    """Start ``ae`` on a free port, every association it accepts tuned for receiving."""
    port = free_port()
    server = ae.start_server(
        (LOOPBACK, port),
        block=False,
        evt_handlers=[(evt.EVT_ACCEPTED, lambda event: tune_receive(event.assoc)), *handlers],
    )
    assert server is not None
    return server, port


def _socket(connection: socket.socket) -> BulkReadSocket:
    return BulkReadSocket(Association(AE(), "acceptor"), client_socket=connection)


def test_reads_exactly_the_bytes_asked_for_across_many_segments() -> None:
    ours, peer = socket.socketpair()
    payload = os.urandom(300_000)

    def send() -> None:
        for start in range(0, len(payload), 7_001):  # odd-sized writes
            peer.sendall(payload[start : start + 7_001])

    writer = threading.Thread(target=send)
    writer.start()
    try:
        sock = _socket(ours)
        assert sock.recv(6) == payload[:6]
        assert sock.recv(len(payload) - 6) == payload[6:]
    finally:
        writer.join()
        ours.close()
        peer.close()


def test_returns_what_arrived_when_the_peer_closes() -> None:
    ours, peer = socket.socketpair()
    try:
        peer.sendall(b"partial PDU")
        peer.close()
        assert _socket(ours).recv(1_000) == b"partial PDU"
    finally:
        ours.close()


def test_c_store_is_served_in_the_dul_thread_and_c_echo_in_the_association(
    tmp_path: Path,
) -> None:
    threads: dict[str, list[threading.Thread]] = {"store": [], "echo": []}
    no_delay: list[int] = []

    def on_store(event: evt.Event) -> int:
        threads["store"].append(threading.current_thread())
        no_delay.append(_no_delay(event.assoc))
        return 0x0000

    def on_echo(event: evt.Event) -> int:
        threads["echo"].append(threading.current_thread())
        return 0x0000

    ae = AE(ae_title="TUNED")
    ae.add_supported_context(CTImageStorage)
    ae.add_supported_context(Verification)
    server, port = _serve_tuned(ae, [(evt.EVT_C_STORE, on_store), (evt.EVT_C_ECHO, on_echo)])
    try:
        files = write_series(make_series(CT_128, slices=3), tmp_path / "series")
        sent = run_tool(["storescu", "-aec", "TUNED", LOOPBACK, str(port), *map(str, files)])
        echoed = run_tool(["echoscu", "-aec", "TUNED", LOOPBACK, str(port)])
    finally:
        server.shutdown()
    assert sent.returncode == 0, sent.stderr
    assert echoed.returncode == 0, echoed.stderr
    assert len(threads["store"]) == 3
    assert all(isinstance(t, DULServiceProvider) for t in threads["store"])
    assert len(threads["echo"]) == 1 and isinstance(threads["echo"][0], Association)
    assert no_delay and all(no_delay)


def test_an_association_the_node_requests_sends_without_delay(tmp_path: Path) -> None:
    peer = start_storescp(tmp_path / "storescp")
    try:
        ae = AE(ae_title="RADNODE")
        ae.add_requested_context(Verification)
        assoc = ae.associate(LOOPBACK, peer.port, ae_title="STORESCP")
        assert assoc.is_established
        try:
            tune(assoc)
            assert _no_delay(assoc)
            assert assoc.dul._run_loop_delay == DUL_POLL_SECONDS
            assert assoc.send_c_echo().Status == 0x0000
        finally:
            assoc.release()
    finally:
        peer.stop()


def test_a_pdu_longer_than_the_bulk_limit_is_read_as_it_arrives() -> None:
    ours, peer = socket.socketpair()
    payload = os.urandom(BULK_READ_MAX + 10_000)
    writer = threading.Thread(target=peer.sendall, args=(payload,))
    writer.start()
    try:
        assert _socket(ours).recv(len(payload)) == payload
    finally:
        writer.join()
        ours.close()
        peer.close()


@pytest.mark.parametrize(
    ("what", "sop_class", "accepted_context"),
    [
        ("a SOP Class that is not storage", "1.2.3.4", True),
        ("a presentation context never accepted", CTImageStorage, False),
    ],
)
def test_a_c_store_pynetdicom_refuses_aborts_in_the_association_thread(
    what: str, sop_class: str, accepted_context: bool
) -> None:
    """pynetdicom aborts such a request and waits for the DUL thread: not from inside it."""
    aborted: list[threading.Thread] = []
    ae = AE(ae_title="TUNED")
    ae.add_supported_context(CTImageStorage, ImplicitVRLittleEndian)
    server, port = _serve_tuned(
        ae,
        [
            (evt.EVT_C_STORE, lambda event: 0x0000),
            (evt.EVT_ABORTED, lambda event: aborted.append(threading.current_thread())),
        ],
    )
    stopped = threading.Event()
    try:
        scu = AE(ae_title="PEER")
        scu.add_requested_context(CTImageStorage, ImplicitVRLittleEndian)
        scu.network_timeout = scu.dimse_timeout = 10
        assoc = scu.associate(LOOPBACK, port, ae_title="TUNED")
        assert assoc.is_established
        request = C_STORE()
        request.MessageID = 1
        request.Priority = 2
        request.AffectedSOPClassUID = sop_class
        request.AffectedSOPInstanceUID = "1.2.3.5"
        dataset = Dataset()
        dataset.PatientID = "P1"
        encoded = encode(dataset, True, True)
        assert encoded is not None
        request.DataSet = BytesIO(encoded)
        context_id = assoc.accepted_contexts[0].context_id
        assert context_id is not None
        assoc.dimse.send_msg(request, context_id if accepted_context else 99)
        assert wait_until(lambda: assoc.is_aborted, 10, f"the abort after {what}")
    finally:

        def stop() -> None:
            server.shutdown()
            stopped.set()

        shutdown = threading.Thread(target=stop)
        shutdown.start()
        shutdown.join(10)
    assert stopped.is_set(), f"the server did not stop after {what}"
    assert len(aborted) == 1 and isinstance(aborted[0], Association)
