"""Exit 0 once a Kafka broker answers a Metadata request; stdlib only.

deploy/local/up runs this before any virtual environment exists, so it speaks
the wire protocol itself: Metadata v4 (non-flexible, supported by Kafka 4.x)
asking for no topics; a reply listing at least one broker means ready.
"""

from __future__ import annotations

import socket
import ssl
import struct
import sys
import time


def metadata_brokers(host: str, port: int, timeout_s: float, tls: ssl.SSLContext | None = None) -> int:
    client_id = b"pme-ready"
    body = struct.pack(">hhih", 3, 4, 7, len(client_id)) + client_id
    body += struct.pack(">ib", 0, 0)  # topics: empty array; allow_auto_topic_creation: false
    with socket.create_connection((host, port), timeout=timeout_s) as raw:
        sock = tls.wrap_socket(raw, server_hostname=host) if tls is not None else raw
        sock.sendall(struct.pack(">i", len(body)) + body)
        header = _read_exact(sock, 4)
        (size,) = struct.unpack(">i", header)
        payload = _read_exact(sock, size)
    correlation_id, _throttle_ms, broker_count = struct.unpack(">iii", payload[:12])
    if correlation_id != 7:
        raise ConnectionError(f"unexpected correlation id {correlation_id}")
    return int(broker_count)


def _read_exact(sock: socket.socket, n: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < n:
        chunk = sock.recv(n - len(chunks))
        if not chunk:
            raise ConnectionError("connection closed by broker")
        chunks += chunk
    return bytes(chunks)


def main() -> int:
    """host port deadline_s [ca.pem client.crt client.key]: the last three for an mTLS listener."""
    host, port, deadline_s = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    tls = None
    if len(sys.argv) == 7:
        tls = ssl.create_default_context(cafile=sys.argv[4])
        tls.load_cert_chain(sys.argv[5], sys.argv[6])
    deadline = time.monotonic() + deadline_s
    last_error = "no attempt"
    while time.monotonic() < deadline:
        try:
            if metadata_brokers(host, port, 2.0, tls) > 0:
                return 0
            last_error = "metadata lists no broker yet"
        except (OSError, struct.error) as exc:
            last_error = str(exc)
        time.sleep(0.3)
    print(f"kafka at {host}:{port} not ready after {deadline_s}s: {last_error}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
