"""Keeps the materialized reports fresh from inside the worker (``PME_REPORT_REFRESH_S``).

Contract of ``ReportRefresher``: ``start()`` runs a thread that, every interval,
refreshes every materialized report the database holds (``refresh_all``) on a
connection of its own, never one of the flushers'. Only one worker of a group refreshes at a time
(a session advisory lock, tried, never waited for). A failed refresh is logged,
counted and tried again next interval; it never stops the worker. ``close``
cancels a refresh under way and returns within its bound.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg

from pme_exporter.logs import ledger_log

log = ledger_log(logging.getLogger(__name__))

# pg_try_advisory_lock key: the refresh of a database's reports, one worker at a time.
REFRESH_LOCK_KEY = 0x706D6552  # "pmeR"
# The materialized reports the database holds (sql/008): report_<name>_mat.
_MATERIALIZED = r"""SELECT substring(matviewname FROM '^report_(.*)_mat$') FROM pg_matviews
WHERE schemaname = 'public' AND matviewname LIKE 'report\_%\_mat' ORDER BY 1"""


def refresh_report(conn: psycopg.Connection[Any], name: str) -> int:
    """Refreshes one materialized report in its own transaction, without blocking its readers
    (refresh_report() in sql/008 runs as the view's owner); returns the rows it holds now."""
    with conn.transaction():
        row = conn.execute("SELECT refresh_report(%s)", (name,)).fetchone()
    return int(row[0]) if row else 0


def refresh_all(conn: psycopg.Connection[Any]) -> dict[str, int]:
    """Refreshes every materialized report of the database; returns the rows each holds."""
    names = [name for (name,) in conn.execute(_MATERIALIZED).fetchall()]
    return {name: refresh_report(conn, name) for name in names}


class ReportRefresher:
    def __init__(
        self,
        *,
        conninfo: str,
        interval_s: float,
        statement_timeout_ms: int,
        on_refreshed: Callable[[float], None] | None = None,
        on_failed: Callable[[], None] | None = None,
    ) -> None:
        self._conninfo = conninfo
        self._interval_s = interval_s
        self._statement_timeout_ms = statement_timeout_ms
        self._on_refreshed = on_refreshed or (lambda _s: None)
        self._on_failed = on_failed or (lambda: None)
        self._stop = threading.Event()
        self._conn: psycopg.Connection[Any] | None = None
        self._thread = threading.Thread(target=self._run, name="pme-report-refresher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self.refresh_once()
            except Exception as exc:  # the reports stay as they were; tried again next interval
                self._on_failed()
                log.warning(
                    "Refreshing the materialized reports failed (tried again in %.0f s): %s",
                    self._interval_s,
                    exc,
                )
                self._disconnect()

    def refresh_once(self) -> bool:
        """One refresh of every materialized report, if no other worker holds the lock; True if done."""
        conn = self._connect()
        row = conn.execute("SELECT pg_try_advisory_lock(%s)", (REFRESH_LOCK_KEY,)).fetchone()
        if not (row and row[0]):
            return False
        try:
            started = time.monotonic()
            stored = refresh_all(conn)
            took = time.monotonic() - started
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (REFRESH_LOCK_KEY,))
        self._on_refreshed(took)
        log.info(
            "Refreshed %d materialized reports in %.1f s (%d rows)", len(stored), took, sum(stored.values())
        )
        return True

    def _connect(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(
                self._conninfo,
                autocommit=True,
                application_name="pme-exporter-reports",
                options=f"-c statement_timeout={self._statement_timeout_ms}",
            )
        return self._conn

    def _disconnect(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def close(self, timeout_s: float) -> None:
        self._stop.set()
        conn = self._conn
        if conn is not None and self._thread.is_alive():
            try:
                conn.cancel_safe(timeout=min(timeout_s, 2.0))
            except psycopg.Error as exc:  # the server ends the statement with the session
                log.debug("Cancelling the report refresh failed: %s", exc)
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        if not self._thread.is_alive():
            self._disconnect()
