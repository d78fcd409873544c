"""The mirror's changes flow out: a pgoutput client of the publication (PME_PUBLICATION) sees
every row the worker writes, once, through a kill -9 and a replay of the whole topic.

The client here is PostgreSQL's own SQL interface to a logical replication slot, decoding
the pgoutput protocol that Debezium and every subscriber read.
"""

from __future__ import annotations

import struct
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pme_exporter.devtools.generator import ends_of, publish, trading_day
from pme_exporter.migrate import migrate
from pme_exporter.schema import BY_TABLE, FLUSH_ORDER
from pme_exporter.settings import Settings
from tests.helpers import ExporterProcess, wait_exported
from tests.model import apply_events, diff, snapshot

PUBLICATION = "pme_ledger"
Change = tuple[str, str, dict[str, str | None]]  # (table, "I" or "U", the new row as text)


class PgOutput:
    """Decodes pgoutput (protocol 1) messages: relations, inserts, updates and deletes."""

    def __init__(self) -> None:
        self.relations: dict[int, tuple[str, list[str]]] = {}

    def decode(self, message: bytes) -> Change | None:
        kind = message[:1]
        if kind == b"R":
            relid, at = struct.unpack_from(">I", message, 1)[0], 5
            _namespace, at = _string(message, at)
            name, at = _string(message, at)
            at += 1  # replica identity
            (count,) = struct.unpack_from(">H", message, at)
            at += 2
            columns = []
            for _ in range(count):
                column, at = _string(message, at + 1)  # past the flags
                columns.append(column)
                at += 8  # type oid, type modifier
            self.relations[relid] = (name, columns)
            return None
        if kind in (b"I", b"U"):
            (relid,) = struct.unpack_from(">I", message, 1)
            at = 5
            if message[at : at + 1] in (b"K", b"O"):  # an update's old key or row: skipped
                _old, at = _tuple(message, at + 1)
            assert message[at : at + 1] == b"N", message[:16]
            values, _ = _tuple(message, at + 1)
            table, columns = self.relations[relid]
            return table, kind.decode(), dict(zip(columns, values, strict=True))
        if kind in (b"D", b"T"):
            raise AssertionError(f"the worker deleted or truncated rows: {message[:16]!r}")
        return None  # begin, commit, origin, type, message


def _string(data: bytes, at: int) -> tuple[str, int]:
    end = data.index(b"\0", at)
    return data[at:end].decode(), end + 1


def _tuple(data: bytes, at: int) -> tuple[list[str | None], int]:
    (count,) = struct.unpack_from(">H", data, at)
    at += 2
    values: list[str | None] = []
    for _ in range(count):
        kind = data[at : at + 1]
        at += 1
        if kind == b"t":
            (length,) = struct.unpack_from(">I", data, at)
            values.append(data[at + 4 : at + 4 + length].decode())
            at += 4 + length
        else:  # n: null; u: an unchanged TOASTed value
            values.append(None)
    return values, at


@pytest.fixture
def slot(settings: Settings) -> Iterator[Callable[[], list[Change]]]:
    """A logical replication slot on the test's database; yields a reader of its changes."""
    migrate(settings.conninfo(), publication=PUBLICATION)
    name = f"t_slot_{uuid.uuid4().hex[:8]}"
    decoder = PgOutput()
    with psycopg.connect(settings.conninfo(), autocommit=True) as conn:
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (name,))

        def changes() -> list[Change]:
            rows = conn.execute(
                "SELECT data FROM pg_logical_slot_get_binary_changes(%s, NULL, NULL,"
                " 'proto_version', '1', 'publication_names', %s)",
                (name, PUBLICATION),
            ).fetchall()
            return [c for (data,) in rows if (c := decoder.decode(bytes(data))) is not None]

        try:
            yield changes
        finally:  # a slot keeps WAL, and its database from being dropped, until it goes
            conn.execute("SELECT pg_drop_replication_slot(%s)", (name,))


def _key(table: str, row: dict[str, Any]) -> tuple[Any, ...]:
    spec = BY_TABLE[table]
    if spec.key is not None and spec.mode.value == "upsert":
        return (row[spec.key],)
    return (row["src_topic"], row["src_life"], row["src_partition"], row["src_offset"])


def test_a_slot_sees_every_row_once_through_a_kill_and_a_replay_of_the_topic(
    settings: Settings, slot: Callable[[], list[Change]], make_topic: Callable[[int], str], tmp_path: Path
) -> None:
    topic = make_topic(3)
    s = settings.replace(
        kafka_topic=topic, kafka_group_id=topic, publication=PUBLICATION, max_batch_events=500
    )
    events = list(trading_day(1_500, seed=31))
    located = publish(s.kafka_url, topic, ((None, k, v) for k, v in events))
    ends = ends_of(located)

    worker = ExporterProcess(s, tmp_path / "first.log")
    deadline = time.monotonic() + 60
    while not slot_has_changes(s) and time.monotonic() < deadline:
        time.sleep(0.05)
    worker.kill()  # kill -9 mid-stream: its open transaction never reaches the slot
    worker = ExporterProcess(s, tmp_path / "second.log")
    wait_exported(s.conninfo(), topic, ends)
    assert worker.terminate() == 0

    changes = slot()
    with psycopg.connect(s.conninfo()) as conn:
        final = {
            spec.table: {_key(spec.table, r): r for r in _rows_as_text(conn, spec.table)}
            for spec in FLUSH_ORDER
        }
    assert {t for t, _, _ in changes} <= {spec.table for spec in FLUSH_ORDER}  # exporter_* are not published
    inserts = Counter((t, _key(t, row)) for t, kind, row in changes if kind == "I")
    assert inserts and max(inserts.values()) == 1  # no row inserted twice
    assert set(inserts) == {(t, k) for t, rows in final.items() for k in rows}
    assert any(kind == "U" for _, kind, _ in changes)  # orders move through their states
    # Each key's changes are all different (nothing rewritten as it was), and its last one
    # is the row as it stands.
    history: dict[tuple[str, tuple[Any, ...]], list[dict[str, str | None]]] = defaultdict(list)
    for table, _kind, row in changes:
        history[(table, _key(table, row))].append(row)
    for (table, key), rows in history.items():
        without_stamp = [tuple(sorted((c, v) for c, v in r.items() if c != "exported_at")) for r in rows]
        assert len(set(without_stamp)) == len(without_stamp), (table, key)
        assert rows[-1] == final[table][key], (table, key)

    # The whole topic again: every event is a replay, and no change flows out.
    replayed = s.replace(kafka_group_id=f"{topic}-again")
    with psycopg.connect(s.conninfo(), autocommit=True) as conn:
        conn.execute("DELETE FROM exporter_offsets WHERE topic = %s", (topic,))
    worker = ExporterProcess(replayed, tmp_path / "replay.log")
    wait_exported(s.conninfo(), topic, ends)
    assert worker.terminate() == 0
    assert slot() == []
    model = apply_events([(p, o, v) for p, o, v in located if v is not None])
    with psycopg.connect(s.conninfo()) as conn:
        stored = snapshot(conn)
    assert stored == model, diff(model, stored)


def slot_has_changes(settings: Settings) -> bool:
    """The worker has committed something (its first batches): a kill now lands mid-stream."""
    with psycopg.connect(settings.conninfo(), autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM exporter_offsets").fetchone()
    return bool(row and row[0])


def _rows_as_text(conn: psycopg.Connection[Any], table: str) -> list[dict[str, str | None]]:
    """Each row as pgoutput sends it: every column in its type's text output (COPY's)."""
    with conn.cursor() as cur:
        cur.execute(f"SELECT * FROM {table} LIMIT 0")
        columns = [d.name for d in cur.description or []]
        with cur.copy(f"COPY {table} TO STDOUT") as copy:
            return [dict(zip(columns, row, strict=True)) for row in copy.rows()]
