"""``pme-exporter retention archive | purge``: the design's "Data Retention", safe beside workers.

Contract:
- Tables: the event-heavy ones, children before parents (``RETAINED``).
  Reference data (participants, accounts, instruments, parameters, holidays,
  session times) is small and referenced by everything; it stays.
- An entity moves when its latest state is older than the cut-off: an upsert
  row by ``updated_at`` (the time of its winning event), an append row by
  ``created_at``; a parent only once no child row references it any more, so a
  parent with a recent child stays with it.
- ``archive`` moves rows into ``<table>_archive`` (same columns, created by
  ``sql/005_archive.sql``) with one statement per batch (DELETE ... RETURNING
  into INSERT): a row is in exactly one of the two at any instant, and a crash
  loses at most the batch in flight, rolled back. A rerun finds what is left,
  so it is resumable without a journal.
- ``purge`` deletes the same rows, and the archive's rows older than the
  cut-off too.
- Batches are small and take their rows with ``FOR UPDATE SKIP LOCKED``, so a
  row a worker is writing is left for the next run instead of being waited
  for, and a worker waits at most one batch for a row being moved. A later
  event for a moved key lands in the live table as a new row; a late child of
  a moved parent waits in ``exporter_parked_children``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from pme_exporter.errors import is_retryable
from pme_exporter.schema import BY_TABLE, RETAINED, WriteMode, archive_table, children_of

# Children first: a parent can only go once nothing references it.
LOCK_TIMEOUT_MS = 1000


@dataclass(frozen=True)
class Retained:
    table: str
    key: str  # the row's identity: the entity key, or the append table's id
    age: str  # the column that says how old the row's latest state is
    children: tuple[tuple[str, str], ...]  # (child table, its column that references ``key``)


def retained(table: str) -> Retained:
    spec = BY_TABLE[table]
    children = children_of(table)
    if spec.mode is WriteMode.UPSERT:
        assert spec.key is not None
        return Retained(table, spec.key, "updated_at", children)
    return Retained(table, "id", "created_at", children)


def _eligible(r: Retained, *, dry_run: bool) -> sql.Composable:
    """Rows older than the cut-off that nothing live holds on to.

    A dry run counts before the children have moved, so there a parent is held
    only by children that will not move."""
    held = [
        sql.SQL("NOT EXISTS (SELECT 1 FROM {c} c WHERE c.{fk} = t.{key}{young})").format(
            c=sql.Identifier(child),
            fk=sql.Identifier(column),
            key=sql.Identifier(r.key),
            young=sql.SQL(" AND c.{} >= %(cut)s").format(sql.Identifier(retained(child).age))
            if dry_run
            else sql.SQL(""),
        )
        for child, column in r.children
    ]
    return sql.SQL(" AND ").join([sql.SQL("t.{} < %(cut)s").format(sql.Identifier(r.age)), *held])


def batch_statement(r: Retained, *, archive: bool) -> sql.Composed:
    """One batch's statement; its row count is the rows moved."""
    picked = sql.SQL(
        """WITH picked AS (
    SELECT t.{key} FROM {table} t WHERE {eligible}
    ORDER BY t.{key} LIMIT %(n)s FOR UPDATE SKIP LOCKED
)"""
    ).format(key=sql.Identifier(r.key), table=sql.Identifier(r.table), eligible=_eligible(r, dry_run=False))
    delete = sql.SQL("DELETE FROM {table} t USING picked WHERE t.{key} = picked.{key}").format(
        key=sql.Identifier(r.key), table=sql.Identifier(r.table)
    )
    if not archive:
        return picked + sql.SQL("\n") + delete
    return picked + sql.SQL(", gone AS ({} RETURNING t.*)\nINSERT INTO {} SELECT * FROM gone").format(
        delete, sql.Identifier(archive_table(r.table))
    )


@dataclass
class Outcome:
    table: str
    rows: int  # moved (or deleted); for a dry run, the rows that would be
    archived_purged: int = 0  # purge only: rows deleted from the archive table


def run_retention(
    conninfo: str,
    *,
    action: str,  # "archive" or "purge"
    older_than_s: float,
    tables: tuple[str, ...] = RETAINED,
    batch_size: int = 1000,
    pause_s: float = 0.0,
    dry_run: bool = False,
    stop: Callable[[], bool] = lambda: False,
    on_batch: Callable[[str, int], None] | None = None,
) -> list[Outcome]:
    assert action in ("archive", "purge")
    chosen = [t for t in RETAINED if t in tables]
    outcomes = []
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f"SET lock_timeout = {LOCK_TIMEOUT_MS}")
        cut = conn.execute("SELECT now() - make_interval(secs => %s)", (older_than_s,)).fetchone()
        assert cut is not None
        params: dict[str, Any] = {"cut": cut[0], "n": batch_size}
        for table in chosen:
            r = retained(table)
            if dry_run:
                query = sql.SQL("SELECT count(*) FROM {} t WHERE {}").format(
                    sql.Identifier(table), _eligible(r, dry_run=True)
                )
                counted = conn.execute(query, params).fetchone()
                outcomes.append(Outcome(table, int(counted[0]) if counted else 0))
                continue
            outcome = Outcome(table, 0)
            statement = batch_statement(r, archive=action == "archive")
            while not stop():
                moved = _with_retries(conn, statement, params)
                outcome.rows += moved
                if on_batch is not None:
                    on_batch(table, moved)
                if moved < batch_size:
                    break
                if pause_s:
                    time.sleep(pause_s)
            if action == "purge" and not stop():
                outcome.archived_purged = _purge_archive(conn, r, params)
            outcomes.append(outcome)
    return outcomes


def _with_retries(conn: psycopg.Connection[Any], statement: sql.Composed, params: dict[str, Any]) -> int:
    """One batch; a lock wait over the timeout, a deadlock or a serialization failure is tried again."""
    for attempt in range(1, 11):
        try:
            with conn.transaction():
                cur = conn.execute(statement, params)
                return cur.rowcount if cur.rowcount >= 0 else 0
        except psycopg.Error as exc:
            if not is_retryable(exc) or attempt == 10:
                raise
            time.sleep(0.1 * attempt)
    raise AssertionError("unreachable")


def _purge_archive(conn: psycopg.Connection[Any], r: Retained, params: dict[str, Any]) -> int:
    exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (archive_table(r.table),)).fetchone()
    if not exists or not exists[0]:
        return 0
    total = 0
    statement = sql.SQL(
        "DELETE FROM {a} WHERE ctid = ANY (ARRAY(SELECT ctid FROM {a} WHERE {age} < %(cut)s LIMIT %(n)s))"
    ).format(a=sql.Identifier(archive_table(r.table)), age=sql.Identifier(r.age))
    while True:
        deleted = _with_retries(conn, statement, params)
        total += deleted
        if deleted < params["n"]:
            return total
