"""A bound on every database round trip of the worker, where the network gives none.

A connection whose peer stops forwarding without closing it (a NAT or a firewall
dropping state, a failover, a frozen proxy) leaves the client waiting for an
answer for ever. TCP keepalives and ``tcp_user_timeout`` on every connection
(``settings``) find most of these, but not a peer whose kernel still
acknowledges (a proxy that stopped forwarding). So the worker's statements run
under a watch: when one has waited ``bound_s`` without an answer, the watchdog
shuts the socket down under the waiting call, which then fails as a lost
connection does (``OperationalError``: retried), and the pool replaces the
connection. ``on_cut`` is told which server process was cut off, so its locks
can be released (``PostgresSink``).

Contract of ``ConnectionWatchdog.watch(conn, what)``: a context manager for a
stretch of work on one connection; call the ``beat`` it yields before each
round trip (the bound runs from the last beat, checked every 0.25 s); ``tag``
comes back to ``on_cut``; ``bound_s`` overrides the bound for this watch.
Thread-safe; one thread watches every connection; ``close()`` ends it.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

# (the server process cut off, its tag as given to ``watch``, seconds waited, what was waiting)
OnCut = Callable[[int, Any, float, str], None]


@dataclass
class _Watch:
    fd: int
    pid: int
    what: str
    tag: Any
    bound_s: float
    last: float = field(default_factory=time.monotonic)
    cut: bool = False

    def beat(self) -> None:
        self.last = time.monotonic()


class ConnectionWatchdog:
    def __init__(self, *, bound_s: float, on_cut: OnCut) -> None:
        self.bound_s = bound_s
        self._on_cut = on_cut
        self._lock = threading.Lock()
        self._watched: dict[int, _Watch] = {}
        self._closed = threading.Event()
        self._tick_s = 0.25
        self._thread = threading.Thread(target=self._run, name="pme-db-watchdog", daemon=True)
        self._thread.start()

    @contextlib.contextmanager
    def watch(
        self, conn: Any, what: str, *, tag: Any = None, bound_s: float | None = None
    ) -> Iterator[Callable[[], None]]:
        try:
            watch = _Watch(conn.pgconn.socket, conn.info.backend_pid, what, tag, bound_s or self.bound_s)
        except Exception:  # already closed or broken: the work fails at once, nothing to watch
            yield _no_beat
            return
        key = id(watch)
        with self._lock:
            self._watched[key] = watch
        try:
            yield watch.beat
        finally:
            # Under the lock: once out of here, the socket may close and its number be reused.
            with self._lock:
                del self._watched[key]

    def close(self) -> None:
        self._closed.set()
        self._thread.join(5.0)

    def _run(self) -> None:
        while not self._closed.wait(self._tick_s):
            now = time.monotonic()
            cut: list[_Watch] = []
            with self._lock:
                for watch in self._watched.values():
                    if not watch.cut and now - watch.last > watch.bound_s:
                        watch.cut = True
                        _shut_down(watch.fd)
                        cut.append(watch)
            for watch in cut:
                self._on_cut(watch.pid, watch.tag, now - watch.last, watch.what)


def _shut_down(fd: int) -> None:
    """Ends the connection on socket ``fd`` at once; the call waiting on it then fails."""
    with contextlib.suppress(OSError):
        duplicate = socket.socket(fileno=os.dup(fd))
        try:
            duplicate.shutdown(socket.SHUT_RDWR)
        finally:
            duplicate.close()


def _no_beat() -> None:
    return
