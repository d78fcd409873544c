"""The probe server under floods: idle connections cost no thread, probes still answer, bad heads end."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pme_exporter.httpserver import BoundedHTTPServer


def _app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    if environ["PATH_INFO"] == "/slow":
        time.sleep(1.5)
    body = f"{environ['REQUEST_METHOD']} {environ['PATH_INFO']} {environ['QUERY_STRING']}".encode()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body]


@pytest.fixture
def server() -> Iterator[BoundedHTTPServer]:
    s = BoundedHTTPServer(_app, host="127.0.0.1", port=0, max_connections=64, read_timeout_s=1.0)
    s.start()
    yield s
    s.close()


def request(port: int, raw: bytes, timeout_s: float = 2.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as conn:
        conn.sendall(raw)
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def get(port: int, path: str, timeout_s: float = 2.0) -> bytes:
    return request(port, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode(), timeout_s)


def test_a_request_is_answered_and_the_connection_closed(server: BoundedHTTPServer) -> None:
    answer = get(server.port, "/a%20b?name[]=x")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert body == b"GET /a b name[]=x"
    assert f"Content-Length: {len(body)}\r\n".encode() in head + b"\r\n"
    assert b"Connection: close" in head


def test_two_thousand_idle_connections_leave_probes_answering_and_threads_bounded(
    server: BoundedHTTPServer,
) -> None:
    threads_before = threading.active_count()
    idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(2000)]
    try:
        started = time.monotonic()
        answer = get(server.port, "/healthz", timeout_s=1.0)
        assert answer.startswith(b"HTTP/1.1 200 OK")
        assert time.monotonic() - started < 1.0
        assert server.open_connections <= 64
        assert threading.active_count() <= threads_before + 4  # the worker threads, no more
    finally:
        for conn in idle:
            conn.close()


def test_an_idle_connection_is_closed_after_the_read_timeout(server: BoundedHTTPServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as conn:
        conn.sendall(b"GET /healthz HTTP/1.1\r\n")  # never finishes its head
        started = time.monotonic()
        assert conn.recv(1) == b""
        assert 0.5 < time.monotonic() - started < 4


def test_a_slow_answer_does_not_hold_up_another(server: BoundedHTTPServer) -> None:
    slow = threading.Thread(target=get, args=(server.port, "/slow", 5.0))
    slow.start()
    time.sleep(0.1)
    started = time.monotonic()
    assert get(server.port, "/healthz").startswith(b"HTTP/1.1 200")
    assert time.monotonic() - started < 1.0
    slow.join()


def test_a_head_past_its_bound_is_refused(server: BoundedHTTPServer) -> None:
    answer = request(server.port, b"GET / HTTP/1.1\r\nX: " + b"a" * 20_000)
    assert answer.startswith(b"HTTP/1.1 431")


@settings(max_examples=60, deadline=None)
@given(head=st.binary(max_size=300))
def test_any_bytes_get_an_answer_or_a_close_never_a_dead_server(head: bytes) -> None:
    server = BoundedHTTPServer(_app, host="127.0.0.1", port=0, read_timeout_s=0.3)
    server.start()
    try:
        answer = request(server.port, head + b"\r\n\r\n")
        assert answer == b"" or answer.startswith(b"HTTP/1.1 ")
        assert get(server.port, "/healthz").startswith(b"HTTP/1.1 200")
    finally:
        server.close()
