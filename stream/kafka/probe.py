"""Whether a Kafka-protocol broker serves requests, asked without a client library."""

from __future__ import annotations

import socket
import struct

__all__ = ["kafka_ready"]


def kafka_ready(host: str, port: int, timeout: float = 1.0) -> bool:
    """True when ``host:port`` answers a Kafka ApiVersions (v0) request without error.

    A bare TCP connect is not enough: the listener opens before the broker serves requests.
    """
    client_id = b"shopscore-probe"
    body = struct.pack(">hhih", 18, 0, 1, len(client_id)) + client_id
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(struct.pack(">i", len(body)) + body)
            header = _recv_exact(sock, 4)
            (size,) = struct.unpack(">i", header)
            reply = _recv_exact(sock, size)
    except OSError:
        return False
    correlation_id, error_code = struct.unpack(">ih", reply[:6])
    return correlation_id == 1 and error_code == 0


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise ConnectionError("connection closed")
        chunks.extend(chunk)
    return bytes(chunks)
