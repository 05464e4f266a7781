"""The receive socket reads whole PDUs in bulk, and stops at a closed connection."""

from __future__ import annotations

import os
import socket
import threading

from pynetdicom import AE
from pynetdicom.association import Association

from node.dicom.scp import BulkReadSocket


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
