"""The watchdog cuts off a connection whose round trip outlasts its bound, and only such a one."""

from __future__ import annotations

import socket
import time
from types import SimpleNamespace
from typing import Any

from pme_exporter.watchdog import ConnectionWatchdog


def _connection(sock: socket.socket, pid: int) -> Any:
    """What the watchdog reads of a psycopg connection: its socket and its server process."""
    return SimpleNamespace(
        pgconn=SimpleNamespace(socket=sock.fileno()), info=SimpleNamespace(backend_pid=pid)
    )


def test_a_wait_past_the_bound_is_cut_off_and_reported_once() -> None:
    cuts: list[tuple[int, Any, str]] = []
    watchdog = ConnectionWatchdog(
        bound_s=0.3, on_cut=lambda pid, tag, waited, what: cuts.append((pid, tag, what))
    )
    ours, peer = socket.socketpair()
    try:
        with watchdog.watch(_connection(ours, 42), "writing a batch", tag="started"):
            ours.settimeout(5)
            started = time.monotonic()
            assert ours.recv(1) == b""  # the waiting call ends: the socket was shut down under it
            assert 0.3 <= time.monotonic() - started < 2
            time.sleep(0.6)  # no second report for the same watch
        assert cuts == [(42, "started", "writing a batch")]
    finally:
        watchdog.close()
        ours.close()
        peer.close()


def test_beats_keep_a_long_stretch_of_quick_round_trips_alive() -> None:
    cuts: list[int] = []
    watchdog = ConnectionWatchdog(bound_s=0.3, on_cut=lambda pid, tag, waited, what: cuts.append(pid))
    ours, peer = socket.socketpair()
    try:
        with watchdog.watch(_connection(ours, 7), "writing a batch") as beat:
            for _ in range(10):  # 1 s in all, 0.1 s a round trip
                beat()
                peer.sendall(b"x")
                ours.settimeout(1)
                assert ours.recv(1) == b"x"
                time.sleep(0.1)
        time.sleep(0.6)  # out of the watch: never cut
        assert cuts == []
        peer.sendall(b"y")
        assert ours.recv(1) == b"y"
    finally:
        watchdog.close()
        ours.close()
        peer.close()


def test_a_shorter_bound_for_one_watch() -> None:
    cuts: list[str] = []
    watchdog = ConnectionWatchdog(bound_s=60, on_cut=lambda pid, tag, waited, what: cuts.append(what))
    ours, peer = socket.socketpair()
    try:
        with watchdog.watch(_connection(ours, 1), "a readiness check", bound_s=0.2):
            ours.settimeout(5)
            assert ours.recv(1) == b""
        assert cuts == ["a readiness check"]
    finally:
        watchdog.close()
        ours.close()
        peer.close()
