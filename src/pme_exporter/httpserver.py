"""A small HTTP/1.1 server for probes and scrapes that a flood of connections cannot exhaust.

Contract of ``BoundedHTTPServer(app, ...)``: serves a WSGI application.
- one event-loop thread holds every connection, so an idle one costs a few kB,
  never a thread;
- a connection that has not sent a whole request head within ``read_timeout_s``
  is closed, and so is one whose head passes ``max_head_bytes``;
- at most ``max_connections`` are open: past that the connection that has waited
  longest without a request is closed, so a new probe is always served;
- each request is answered on one of ``workers`` threads (a readiness check asks
  the database and Kafka and may take seconds; it must not hold up the others),
  then its connection closes (``Connection: close``);
- the port is bound in the constructor, so a port in use raises ``OSError`` there.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import socket
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import unquote

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

_BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
_TOO_LARGE = b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class BoundedHTTPServer:
    def __init__(
        self,
        app: WSGIApp,
        *,
        host: str,
        port: int,
        max_connections: int = 256,
        read_timeout_s: float = 5.0,
        workers: int = 4,
        max_head_bytes: int = 16_384,
    ) -> None:
        self._app = app
        self._max_connections = max_connections
        self.read_timeout_s = read_timeout_s
        self.max_head_bytes = max_head_bytes
        self._sock = socket.create_server((host, port), backlog=1024)
        self._sock.setblocking(False)
        self.port = int(self._sock.getsockname()[1])
        self._host = host
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="pme-http")
        self._loop = asyncio.new_event_loop()
        # Open connections, oldest first; a value is True while its request is answered.
        self._open: OrderedDict[_Connection, bool] = OrderedDict()
        self._thread = threading.Thread(target=self._serve, name="pme-http", daemon=True)

    @property
    def open_connections(self) -> int:
        return len(self._open)

    def start(self) -> None:
        self._thread.start()

    def close(self, timeout_s: float = 2.0) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout_s)
        else:
            self._sock.close()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _serve(self) -> None:
        loop = self._loop
        asyncio.set_event_loop(loop)
        server = loop.run_until_complete(loop.create_server(lambda: _Connection(self), sock=self._sock))
        try:
            loop.run_forever()
        finally:
            server.close()
            for connection in list(self._open):
                connection.close()
            with contextlib.suppress(Exception):
                loop.run_until_complete(asyncio.wait_for(server.wait_closed(), 1.0))
            loop.close()

    # -- called on the loop's thread --------------------------------------------
    def _opened(self, connection: _Connection) -> None:
        self._open[connection] = False
        while len(self._open) > self._max_connections:
            idle = next((c for c, busy in self._open.items() if not busy), None)
            if idle is None:
                break
            idle.close()

    def _closed(self, connection: _Connection) -> None:
        self._open.pop(connection, None)

    def _dispatch(self, connection: _Connection, head: bytes) -> None:
        self._open[connection] = True
        environ = _environ(head, self._host, self.port)
        if environ is None:
            connection.send(_BAD_REQUEST)
            return
        future = self._loop.run_in_executor(self._executor, self._answer, environ)
        future.add_done_callback(lambda done: connection.send(done.result() if not done.cancelled() else b""))

    # -- called on a worker thread ---------------------------------------------
    def _answer(self, environ: dict[str, Any]) -> bytes:
        started: list[Any] = []

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
            started[:] = [status, headers]

        try:
            body = b"".join(self._app(environ, start_response))
        except Exception:  # the application's bug costs this request, not the server
            return b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        status, headers = started
        lines = [f"HTTP/1.1 {status}"]
        lines += [f"{name}: {value}" for name, value in headers if name.lower() != "connection"]
        if not any(name.lower() == "content-length" for name, _ in headers):
            lines.append(f"Content-Length: {len(body)}")
        lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class _Connection(asyncio.Protocol):
    def __init__(self, server: BoundedHTTPServer) -> None:
        self._server = server
        self._head = bytearray()
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._requested = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._timer = asyncio.get_running_loop().call_later(self._server.read_timeout_s, self.close)
        self._server._opened(self)

    def data_received(self, data: bytes) -> None:
        if self._requested:
            return  # one request a connection; a body, if any, is not read
        self._head += data
        end = self._head.find(b"\r\n\r\n")
        if end < 0:
            if len(self._head) > self._server.max_head_bytes:
                self._requested = True
                self.send(_TOO_LARGE)
            return
        self._requested = True
        if self._timer is not None:
            self._timer.cancel()
        self._server._dispatch(self, bytes(self._head[:end]))
        self._head = bytearray()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._server._closed(self)

    def send(self, response: bytes) -> None:
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.write(response)
            transport.close()  # after the write is flushed
        self._server._closed(self)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.abort()
        self._server._closed(self)


def _environ(head: bytes, host: str, port: int) -> dict[str, Any] | None:
    """The WSGI environ of a request head, or None when it is not HTTP/1.x."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        return None
    method, target, protocol = parts
    path, _, query = target.partition("?")
    environ: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "PATH_INFO": unquote(path),
        "QUERY_STRING": query,
        "SERVER_NAME": host,
        "SERVER_PORT": str(port),
        "SERVER_PROTOCOL": protocol,
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon:
            return None
        key = name.strip().upper().replace("-", "_")
        if key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            environ[key] = value.strip()
        else:
            environ[f"HTTP_{key}"] = value.strip()
    return environ
