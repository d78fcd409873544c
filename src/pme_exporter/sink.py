"""The sink: one batch into PostgreSQL in one transaction, offsets included.

Contract of ``Sink.write(batch)``:
- all or nothing: the batch's rows, its dead letters, its parked children and
  its stored offsets (``progress``) commit together, or nothing does;
- a row PostgreSQL refuses (any SQLSTATE no retry cures, but for the schema's own
  faults: ``errors.is_row_error``) does not fail the batch: it is isolated by
  bisection and written to ``exporter_dead_letters``;
- children the batch holds back (``Batch.held``) are handed back in
  ``report.carried`` unwritten, and their partitions' saved offsets stay at them;
- a child whose parent is not stored yet is handed back in ``report.carried``
  (the caller puts it in the next batch, see ``Batch.carry``) and the saved
  offset of its partition stays at it; when the batch's ``carry_policy`` says
  no more (carried too often, or a closing batch), it is parked in
  ``exporter_parked_children`` instead, and a later flush adopts it once the
  parent is stored;
- the report is the one account of the flush: the batch's events and end
  offsets, what was saved, every dead letter (decode and database), timings;
- a transient failure (connection lost, serialization failure, deadlock, ...)
  raises ``RetryableError``; nothing was committed and the same batch may be
  written again; any other database error propagates unchanged (a bug);
- writing a batch twice, or batches in any order, yields the same tables;
- append rows beyond every stored row of their partition (so no clash is possible)
  are COPYed straight into their table under a savepoint; a clash (another
  worker's rows committed meanwhile) or a missing parent rolls that back, and the
  rows go the staging way like every other table.
It may block for as long as the database takes; it is called from one thread.
"""

from __future__ import annotations

import logging
import time
import weakref
from array import array
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

import psycopg
from psycopg_pool import ConnectionPool

from pme_exporter.breaker import DeadLetterBreaker
from pme_exporter.buffers import Batch, DeadLetter, Orphan, TableRows, dead_letter_for
from pme_exporter.decode import Decoder
from pme_exporter.errors import RetryableError, is_retryable, is_row_error
from pme_exporter.logs import ledger_log
from pme_exporter.progress import SAVE_OFFSETS, TopicLife, enter_topic_life, read_stored_offsets
from pme_exporter.schema import FLUSH_ORDER, PARKED_PARENT_COLUMNS, TableSpec, WriteMode
from pme_exporter.sqlgen import TableStatements, adopt_parked_statement, staging_table, statements_for
from pme_exporter.watchdog import ConnectionWatchdog

log = ledger_log(logging.getLogger("pme_exporter"))


@dataclass
class TableOutcome:
    inserted: int = 0
    updated: int = 0
    stale: int = 0  # upsert events that lost to a newer event (in the batch or stored)
    duplicate: int = 0  # append events already stored (a replay)
    parked: int = 0  # children waiting for their parent in exporter_parked_children
    carried: int = 0  # children waiting for their parent in the next batch
    adopted: int = 0  # parked children applied because their parent arrived
    # Append tables: rows COPYed straight into the table (the short path), and rows whose
    # short path met a clash or a missing parent and went the staging way after all.
    direct: int = 0
    fell_back: int = 0
    copy_s: float = 0.0
    apply_s: float = 0.0


@dataclass
class FlushReport:
    events: int = 0  # messages in the batch, tombstones and invalid ones included
    events_by_type: Counter[str] = field(default_factory=Counter)
    tombstones: int = 0
    newest_event_ms: int = 0
    tables: dict[str, TableOutcome] = field(default_factory=dict)
    dead_letters: list[DeadLetter] = field(default_factory=list)  # decode and database
    carried: list[Orphan] = field(default_factory=list)
    end_offsets: dict[int, int] = field(default_factory=dict)  # where the batch ended
    saved_offsets: dict[int, int] = field(default_factory=dict)  # as stored (progress.SAVE_OFFSETS)
    parked_waiting: int = 0
    held: int = 0  # children held back unstaged for a parent in another lane's unwritten batch
    statements: int = 0  # round trips to PostgreSQL for the tables (COPY, apply, savepoints)
    commit_s: float = 0.0
    total_s: float = 0.0

    @classmethod
    def of(cls, batch: Batch) -> FlushReport:
        """A report that starts with what the batch already knows (its events and decode dead letters)."""
        return cls(
            events=batch.size,
            events_by_type=batch.events_by_type,
            tombstones=batch.tombstones,
            newest_event_ms=batch.newest_event_ms,
            dead_letters=list(batch.dead_letters),
            end_offsets=dict(batch.next_offsets),
            # Held back unstaged (Batch.hold_children): handed back like orphans.
            carried=list(batch.held),
            held=len(batch.held),
        )


class Sink(Protocol):
    def write(self, batch: Batch) -> FlushReport:
        """Writes ``batch`` in one transaction; see the module docstring."""
        ...

    def stored_offsets(self, partitions: list[int]) -> dict[int, int]:
        """Next offset to read per partition, for the partitions that have one stored."""
        ...

    def ping(self) -> None:
        """Raises if the database cannot be reached now."""
        ...

    def topic_life(self, topic_id: str, *, allow_new: bool) -> TopicLife:
        """The topic's life for ``topic_id`` (``progress.enter_topic_life``); RetryableError
        while the database is away, TopicRecreated when a new life is not allowed."""
        ...

    def close(self, timeout_s: float) -> None: ...


_INSERT_DEAD_LETTER = """
INSERT INTO exporter_dead_letters
    (topic, life, partition, "offset", msg_key, msg_value, stage, reason, sqlstate, error, table_name)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (topic, life, partition, "offset") DO NOTHING"""

_PARK = f"""
INSERT INTO exporter_parked_children
    (topic, life, partition, "offset", table_name, {", ".join(PARKED_PARENT_COLUMNS)}, msg_key, msg_value)
VALUES (%s, %s, %s, %s, %s, {", ".join("%s" for _ in PARKED_PARENT_COLUMNS)}, %s, %s)
ON CONFLICT (topic, life, partition, "offset") DO NOTHING"""


# Isolating refused rows: ranges are halved down to this size, then tried row by
# row in one round trip. Measured with benchmarks/isolation.py on 20,000 orders
# (seconds for 10,000 / 100 / 1 refused): 64: 5.3 / 3.5 / 0.54; 256: 3.3 / 2.4 /
# 0.55; 1024: 2.2 / 1.9 / 0.52; 4096: 1.8 / 1.9 / 0.68; bisection alone: 113 s for 10,000.
ROW_BY_ROW_MAX = 1024

_STATEMENTS = {spec.table: statements_for(spec) for spec in FLUSH_ORDER}
_ADOPT_PARKED = adopt_parked_statement(FLUSH_ORDER)


class _RowRefused(Exception):
    """A row error in the optimistic pass; the batch is written again, isolating rows."""

    def __init__(self, statements: int) -> None:
        super().__init__(f"a row was refused after {statements} statements")
        self.statements = statements


# A round trip that has not been answered within this many times the server's own
# statement_timeout is cut off by the client (watchdog.py): the server's cancel comes
# first whenever the server can still be reached.
CLIENT_BOUND_FACTOR = 1.5
# Server-side keepalives, so that PostgreSQL too ends a session whose client vanished
# (with its locks) within about 30 s instead of the system's two hours.
_SERVER_KEEPALIVES = {
    "tcp_keepalives_idle": "10",
    "tcp_keepalives_interval": "5",
    "tcp_keepalives_count": "4",
    "tcp_user_timeout": "30000",
}
# A cut-off server process may still hold its transaction's locks, waiting for a client
# that is gone; it is ended from a healthy connection (the same role may end its own).
_END_CUT_OFF = """SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
WHERE pid = %s AND backend_start = %s"""
_BACKEND_START = "SELECT backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()"


class PostgresSink:
    def __init__(
        self,
        *,
        conninfo: str,
        topic: str,
        pool_max_size: int = 3,
        lock_timeout_ms: int = 5_000,
        idle_in_transaction_timeout_ms: int = 15_000,
        statement_timeout_ms: int = 60_000,
        breaker: DeadLetterBreaker | None = None,
        row_by_row_max: int = ROW_BY_ROW_MAX,
        column_types: Mapping[str, Mapping[str, str]] | None = None,
        on_connection_dropped: Callable[[], None] | None = None,
    ) -> None:
        self._topic = topic
        self._row_by_row_max = row_by_row_max
        self._breaker = breaker or DeadLetterBreaker(window=1, ratio=1.0)
        self._conninfo = conninfo
        self._session_settings = {
            "lock_timeout": str(lock_timeout_ms),
            "idle_in_transaction_session_timeout": str(idle_in_transaction_timeout_ms),
            "statement_timeout": str(statement_timeout_ms),
            # The per-key collapse sorts a whole batch; at the default 4 MB a
            # 60k-event batch sorted on disk.
            "work_mem": "64MB",
            **_SERVER_KEEPALIVES,
        }
        self._on_connection_dropped = on_connection_dropped
        self._watchdog = ConnectionWatchdog(
            bound_s=CLIENT_BOUND_FACTOR * statement_timeout_ms / 1000, on_cut=self._cut_off
        )
        self._backend_starts: weakref.WeakKeyDictionary[psycopg.Connection[Any], Any] = (
            weakref.WeakKeyDictionary()
        )
        self._cut: list[tuple[int, Any]] = []  # (pid, backend_start) to end; appends are atomic
        self._decoder = Decoder(column_types=column_types)
        self._pool = ConnectionPool(
            conninfo,
            min_size=1,
            max_size=pool_max_size,
            open=False,
            configure=self._configure,
            check=self._check,
            name="pme-exporter",
        )
        self._pool.open(wait=False)

    def _configure(self, conn: psycopg.Connection[Any]) -> None:
        with self._watchdog.watch(conn, "setting up a connection") as beat, conn.cursor() as cur:
            for name, value in self._session_settings.items():
                beat()
                cur.execute("SELECT set_config(%s, %s, false)", (name, value))
            # Staging tables live per connection and empty themselves at each commit.
            for stmts in _STATEMENTS.values():
                beat()
                cur.execute(stmts.create_staging)
                cur.execute(stmts.create_row_by_row)
            beat()
            row = cur.execute(_BACKEND_START).fetchone()
            self._backend_starts[conn] = row[0] if row else None
            conn.commit()

    def _check(self, conn: psycopg.Connection[Any]) -> None:
        """The pool's check of a connection it hands out, bounded like every round trip."""
        with self._watch(conn, "checking a pooled connection"):
            ConnectionPool.check_connection(conn)

    def _watch(self, conn: psycopg.Connection[Any], what: str) -> AbstractContextManager[Callable[[], None]]:
        return self._watchdog.watch(conn, what, tag=self._backend_starts.get(conn))

    def _cut_off(self, pid: int, backend_start: Any, waited_s: float, what: str) -> None:
        log.warning(
            "The database has not answered for %.0fs while %s (server process %d); "
            "dropping the connection and reconnecting",
            waited_s,
            what,
            pid,
        )
        if backend_start is not None:
            self._cut.append((pid, backend_start))
        if self._on_connection_dropped is not None:
            self._on_connection_dropped()

    def _end_cut_off(self, conn: psycopg.Connection[Any]) -> None:
        """Ends the server processes of connections cut off before, so their locks go now."""
        while True:
            try:  # one pop each: two lanes may end cut-off processes at once
                pid, backend_start = self._cut.pop(0)
            except IndexError:
                return
            try:
                with self._watch(conn, "ending a cut-off server process"):
                    row = conn.execute(_END_CUT_OFF, (pid, backend_start)).fetchone()
                conn.commit()
            except BaseException:
                self._cut.append((pid, backend_start))  # the next write tries again
                raise
            if row and row[0]:
                log.info("Ended server process %d of a dropped connection, releasing its locks", pid)

    def ping(self) -> None:
        # Its own short-lived connection: a probe must answer within seconds, and
        # the pool may be busy with a flush or waiting out a reconnect.
        try:
            with (
                psycopg.connect(self._conninfo, connect_timeout=2, autocommit=True) as conn,
                self._watchdog.watch(conn, "a readiness check", bound_s=2.0),
            ):
                conn.execute("SELECT 1")
        except psycopg.Error as exc:
            raise RetryableError(f"database unreachable: {type(exc).__name__}") from exc

    def topic_life(self, topic_id: str, *, allow_new: bool) -> TopicLife:
        try:
            with self._pool.connection(timeout=10) as conn, self._watch(conn, "reading the topic's life"):
                return enter_topic_life(conn, self._topic, topic_id, allow_new=allow_new)
        except psycopg.Error as exc:
            if is_retryable(exc):
                raise RetryableError(f"reading the topic's life failed: {type(exc).__name__}") from exc
            raise

    def stored_offsets(self, partitions: list[int]) -> dict[int, int]:
        try:
            with self._pool.connection(timeout=10) as conn, self._watch(conn, "reading stored offsets"):
                return read_stored_offsets(conn, self._topic, partitions)
        except psycopg.Error as exc:
            if is_retryable(exc):
                raise RetryableError(f"reading stored offsets failed: {type(exc).__name__}") from exc
            raise

    def write(self, batch: Batch) -> FlushReport:
        started = time.perf_counter()
        # Optimistic first: no savepoints, so fewer round trips. Only a batch holding
        # a row PostgreSQL refuses pays for a second pass that isolates it.
        try:
            report = self._write_once(batch, isolate_rows=False)
        except _RowRefused as refused:
            report = self._write_once(batch, isolate_rows=True)
            report.statements += refused.statements
        self._breaker.record(report.events, _reasons(report))
        report.total_s = time.perf_counter() - started
        return report

    def _write_once(self, batch: Batch, *, isolate_rows: bool) -> FlushReport:
        try:
            with self._pool.connection(timeout=10) as conn:
                self._end_cut_off(conn)
                with self._watch(conn, "writing a batch") as beat:
                    return _Attempt(
                        conn,
                        batch,
                        self._topic,
                        self._decoder,
                        isolate_rows,
                        self._breaker,
                        self._row_by_row_max,
                        beat,
                    ).run()
        except psycopg.Error as exc:
            if is_retryable(exc):
                raise RetryableError(f"flush failed, will retry: {type(exc).__name__}: {exc}") from exc
            raise

    def close(self, timeout_s: float) -> None:
        self._pool.close(timeout=timeout_s)
        self._watchdog.close()


class _Attempt:
    """One attempt at writing a batch: the body of its transaction."""

    def __init__(
        self,
        conn: psycopg.Connection[Any],
        batch: Batch,
        topic: str,
        decoder: Decoder,
        isolate_rows: bool,
        breaker: DeadLetterBreaker,
        row_by_row_max: int,
        beat: Callable[[], None],
    ) -> None:
        self._conn = conn
        self._beat = beat  # before each round trip: the watchdog's bound runs from it
        self._breaker = breaker
        self._row_by_row_max = row_by_row_max
        self._cur = conn.cursor()
        self._batch = batch
        self._report = FlushReport.of(batch)
        self._topic = topic
        self._decoder = decoder
        self._isolate_rows = isolate_rows

    def run(self) -> FlushReport:
        batch, report, cur = self._batch, self._report, self._cur
        with self._conn.transaction(), cur:
            adopted: dict[str, list[Adopted]] | None = None
            for spec in FLUSH_ORDER:
                rows = batch.tables.get(spec.table)
                outcome = TableOutcome()
                if spec.is_child:
                    # Every parent table precedes every child table in FLUSH_ORDER.
                    if adopted is None:
                        adopted = self._adopt_parked()
                    rows, outcome.adopted = _merged(spec, rows, adopted.get(spec.table))
                if rows is not None and len(rows):
                    self._write_table(rows, outcome)
                    report.tables[spec.table] = outcome
            # Before anything of the batch is saved: a flood rolls it all back.
            self._breaker.check(report.events, _reasons(report))
            self._write_dead_letters(report.dead_letters)
            self._beat()
            saved = dict(batch.next_offsets)
            for orphan in report.carried:  # read again after a crash, until written
                saved[orphan.partition] = min(saved[orphan.partition], orphan.offset)
            report.saved_offsets = saved
            row = cur.execute(
                SAVE_OFFSETS,
                {
                    "topic": self._topic,
                    "life": batch.life,
                    "partitions": list(saved),
                    "offsets": list(saved.values()),
                },
            ).fetchone()
            report.parked_waiting = int(row[0]) if row else 0
            self._beat()
            commit_started = time.perf_counter()
        report.commit_s = time.perf_counter() - commit_started
        return report

    def _range(self, lo: int, hi: int) -> dict[str, Any]:
        """The parameters of an apply over staging rows lo..hi (see sqlgen)."""
        return {"lo": lo, "hi": hi, "topic": self._topic, "life": self._batch.life}

    def _write_dead_letters(self, dead: list[DeadLetter]) -> None:
        if dead:
            self._beat()
            self._cur.executemany(
                _INSERT_DEAD_LETTER,
                [
                    (
                        self._topic,
                        self._batch.life,
                        d.partition,
                        d.offset,
                        d.key,
                        d.value,
                        d.stage,
                        d.reason,
                        d.sqlstate,
                        d.error,
                        d.table,
                    )
                    for d in dead
                ],
            )

    def _adopt_parked(self) -> dict[str, list[Adopted]]:
        """Takes parked children whose parents are now stored, decoded, per table."""
        adopted: dict[str, list[Adopted]] = {}
        self._beat()
        params = {"topic": self._topic, "life": self._batch.life}
        for table, partition, offset, stored_key, stored_value in self._cur.execute(_ADOPT_PARKED, params):
            value = bytes(stored_value)
            key = bytes(stored_key) if stored_key is not None else None
            try:  # a parked row decoded once already; it fails only if the contract changed under it
                _spec, text = self._decoder.decode(value)
            except Exception as exc:
                self._report.dead_letters.append(dead_letter_for(exc, partition, offset, key, value))
                continue
            adopted.setdefault(table, []).append((partition, offset, key, value, text))
        return adopted

    def _write_table(self, rows: TableRows, outcome: TableOutcome) -> None:
        stmts = _STATEMENTS[rows.spec.table]
        if not self._isolate_rows and self._write_direct(rows, stmts, outcome):
            return
        self._beat()
        t0 = time.perf_counter()
        # Collapsed: only each key's newest version is staged. The isolating pass stages
        # every version, so a refused newest one leaves the next-newest to win.
        if rows.collapsed and stmts.copy_collapsed is not None and not self._isolate_rows:
            with self._cur.copy(stmts.copy_collapsed) as copy:
                copy.write(rows.collapsed_copy())
            outcome.stale += rows.superseded
        else:
            with self._cur.copy(stmts.copy) as copy:
                copy.write(rows.copy_data)
        self._report.statements += 1
        t1 = time.perf_counter()
        self._beat()
        if self._isolate_rows:
            # Small ranges are looked up by seq many times over: index them for this
            # pass only, so the hot path's COPY never maintains an index.
            index = f"{staging_table(rows.spec)}_seq"
            self._cur.execute(f"CREATE INDEX {index} ON {staging_table(rows.spec)} (seq)")
            self._apply_isolating(stmts, rows, 0, len(rows) - 1, outcome)
            self._cur.execute(f"DROP INDEX {index}")
            self._report.statements += 2
        else:
            try:
                self._apply(stmts, rows, 0, len(rows) - 1, outcome)
            except psycopg.Error as exc:
                if is_row_error(exc):
                    raise _RowRefused(self._report.statements) from exc
                raise
        outcome.copy_s = t1 - t0
        outcome.apply_s = time.perf_counter() - t1

    def _write_direct(self, rows: TableRows, stmts: TableStatements, outcome: TableOutcome) -> bool:
        """The short path for append rows (see the contract); False: take the staging way."""
        if stmts.copy_direct is None or stmts.stored_ends is None:
            return False
        lowest = rows.lowest_offsets()
        self._beat()
        self._report.statements += 1
        ends = self._cur.execute(
            stmts.stored_ends,
            {"topic": self._topic, "life": self._batch.life, "partitions": list(lowest)},
        ).fetchall()
        if any(end is not None and end >= lowest[partition] for partition, end in ends):
            return False  # a replay, or rows after a carried child: some may be stored already
        t0 = time.perf_counter()
        try:
            self._report.statements += 3  # the savepoint, the COPY, the release
            self._beat()
            with self._conn.transaction(), self._cur.copy(stmts.copy_direct) as copy:
                copy.write(rows.direct_copy_data(self._topic, self._batch.life))
        except psycopg.Error as exc:
            # 23503 is retried elsewhere (a parent deleted under the flush); here it is a
            # child whose parent is not stored yet, which the staging way carries or parks.
            if exc.sqlstate != "23503" and not is_row_error(exc):
                raise
            outcome.fell_back += len(rows)
            return False
        outcome.inserted += len(rows)
        outcome.direct += len(rows)
        outcome.copy_s = time.perf_counter() - t0
        return True

    def _apply(
        self, stmts: TableStatements, rows: TableRows, lo: int, hi: int, outcome: TableOutcome
    ) -> None:
        """Applies staging rows lo..hi in one statement; their orphans are carried or parked."""
        self._report.statements += 1
        self._beat()
        result = self._cur.execute(stmts.apply, self._range(lo, hi)).fetchone()
        assert result is not None
        self._account(rows, result, outcome)

    def _account(self, rows: TableRows, result: Sequence[Any], outcome: TableOutcome) -> None:
        """Counts an apply's result row (see TableStatements.apply) and sets its orphans aside."""
        inserted, updated, _staged, ready = (int(c) for c in result[:4])
        self._set_aside_orphans(rows, tuple(result[4:]), outcome)
        outcome.inserted += inserted
        outcome.updated += updated
        if rows.spec.mode is WriteMode.UPSERT:
            outcome.stale += ready - inserted - updated
        else:
            outcome.duplicate += ready - inserted

    def _apply_isolating(
        self, stmts: TableStatements, rows: TableRows, lo: int, hi: int, outcome: TableOutcome
    ) -> None:
        """Like _apply, under a savepoint; a refused range is halved until it is small, then
        applied row by row in one round trip, each refused row a dead letter. O(refused *
        log(batch / row_by_row_max)) statements. Applying any split gives the same tables."""
        try:
            self._report.statements += 2  # the savepoint and its release
            self._beat()
            with self._conn.transaction():
                self._apply(stmts, rows, lo, hi, outcome)
        except psycopg.Error as exc:
            if not is_row_error(exc):
                raise
            if hi - lo < self._row_by_row_max:
                self._apply_row_by_row(stmts, rows, lo, hi, outcome)
                return
            mid = (lo + hi) // 2
            self._apply_isolating(stmts, rows, lo, mid, outcome)
            self._apply_isolating(stmts, rows, mid + 1, hi, outcome)

    def _apply_row_by_row(
        self, stmts: TableStatements, rows: TableRows, lo: int, hi: int, outcome: TableOutcome
    ) -> None:
        self._report.statements += 1
        self._beat()
        results = self._cur.execute(stmts.row_by_row, self._range(lo, hi)).fetchall()
        *refused, totals = results
        for seq, state, message, *_ in refused:
            self._report.dead_letters.append(
                DeadLetter.refused(rows.sources[seq], rows.spec.table, state, message)
            )
        self._account(rows, totals[3:], outcome)

    def _set_aside_orphans(self, rows: TableRows, orphans: tuple[Any, ...], outcome: TableOutcome) -> None:
        """Children whose parent is missing: carried to the next batch, or stored raw until adopted."""
        if not orphans or not orphans[0]:
            return
        seqs, *parent_keys = orphans
        table = rows.spec.table
        batch = self._batch
        carried, park = [], []
        for i, seq in enumerate(seqs):
            partition, offset, key, value = rows.sources[seq]
            times = batch.times_carried.get((partition, offset), 0)
            if batch.carry_policy.carry(times):
                carried.append(Orphan(table, partition, offset, key, value, rows.row_text(seq), times + 1))
            else:
                keys = [column[i] if column is not None else None for column in parent_keys]
                park.append((self._topic, batch.life, partition, offset, table, *keys, key, value))
        if park:
            self._beat()
            self._cur.executemany(_PARK, park)
        self._report.carried += carried
        outcome.carried += len(carried)
        outcome.parked += len(park)


def _reasons(report: FlushReport) -> list[str]:
    return [d.kind for d in report.dead_letters]


# A parked child taken back: (partition, offset, key, value, COPY text).
Adopted = tuple[int, int, bytes | None, bytes, str]


def _merged(
    spec: TableSpec, rows: TableRows | None, adopted: list[Adopted] | None
) -> tuple[TableRows | None, int]:
    """The batch's rows of a child table plus the parked ones adopted now, numbered after them."""
    if not adopted:
        return rows, 0
    merged = (
        TableRows(spec, bytearray(rows.copy_data), list(rows.sources), array("q", rows.starts))
        if rows is not None
        else TableRows(spec)
    )
    for partition, offset, key, value, text in adopted:
        merged.add(partition, offset, key, value, text)
    return merged, len(adopted)


# The row outcomes a flush counts per table, as TableOutcome fields and metric labels.
OUTCOMES = ("inserted", "updated", "stale", "duplicate", "carried", "parked", "adopted")


def count_outcomes(report: FlushReport) -> Counter[str]:
    """Totals over all tables, for log lines."""
    totals: Counter[str] = Counter()
    for outcome in report.tables.values():
        totals.update({name: getattr(outcome, name) for name in OUTCOMES})
    return totals
