"""``pme-exporter dead-letters list | show | redrive``.

Dead letters are selected by stage, reason, table and age, bound as parameters.
``redrive`` decodes the selected dead letters again and writes those that decode
through the normal sink (same SQL, same stale guard, closing carry policy, so an
orphan is parked rather than lost), each in the life of the topic it came from;
the ones that land are deleted from ``exporter_dead_letters``, the rest stay
with their reason brought up to date, and the outcome of each is returned.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from pme_exporter.buffers import Batch, InMemoryMessage
from pme_exporter.decode import Decoder
from pme_exporter.progress import CarryPolicy
from pme_exporter.schema import live_column_types
from pme_exporter.settings import Settings
from pme_exporter.sink import PostgresSink


@dataclass(frozen=True)
class DeadLetterFilter:
    stage: str | None = None
    reason: str | None = None
    table: str | None = None  # the table named in a database refusal
    older_than_s: float | None = None
    limit: int | None = None


_COLUMNS = ("id", "partition", '"offset"', "stage", "reason", "sqlstate", "error", "created_at")


def _where(topic: str, f: DeadLetterFilter) -> tuple[sql.Composable, dict[str, Any]]:
    clauses = [sql.SQL("topic = %(topic)s")]
    params: dict[str, Any] = {"topic": topic}
    if f.stage is not None:
        clauses.append(sql.SQL("stage = %(stage)s"))
        params["stage"] = f.stage
    if f.reason is not None:
        clauses.append(sql.SQL("reason = %(reason)s"))
        params["reason"] = f.reason
    if f.table is not None:
        clauses.append(sql.SQL("table_name = %(table)s"))
        params["table"] = f.table
    if f.older_than_s is not None:
        clauses.append(sql.SQL("created_at < now() - make_interval(secs => %(age)s)"))
        params["age"] = f.older_than_s
    return sql.SQL(" AND ").join(clauses), params


def list_dead_letters(conn: psycopg.Connection[Any], topic: str, f: DeadLetterFilter) -> list[dict[str, Any]]:
    where, params = _where(topic, f)
    query = sql.SQL("SELECT {} FROM exporter_dead_letters WHERE {} ORDER BY id").format(
        sql.SQL(", ").join(map(sql.SQL, _COLUMNS)), where
    )
    if f.limit is not None:
        query += sql.SQL(" LIMIT %(limit)s")
        params["limit"] = f.limit
    with conn.cursor() as cur:
        cur.execute(query, params)
        names = [d.name for d in cur.description or []]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def show_dead_letter(conn: psycopg.Connection[Any], letter_id: int) -> dict[str, Any] | None:
    with conn.cursor() as cur:
        cur.execute(
            "SELECT *, msg_value IS NULL AS tombstone FROM exporter_dead_letters WHERE id = %s", (letter_id,)
        )
        row = cur.fetchone()
        return None if row is None else dict(zip([d.name for d in cur.description or []], row, strict=True))


def readable(raw: bytes | memoryview | None) -> str:
    """A message value as text when it is UTF-8, else as a hex dump (16 bytes a line)."""
    if raw is None:
        return "(null)"
    data = bytes(raw)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        lines = [f"{i:08x}  {data[i : i + 16].hex(' ')}" for i in range(0, len(data), 16)]
        return "(not UTF-8; hex)\n" + "\n".join(lines)


@dataclass(frozen=True)
class Redriven:
    id: int
    partition: int
    offset: int
    landed: bool
    reason: str  # why it still fails, when it does


def redrive(settings: Settings, f: DeadLetterFilter) -> list[Redriven]:
    """Decodes and writes the selected dead letters again; deletes the ones that land."""
    with psycopg.connect(settings.conninfo(), autocommit=True) as conn:
        where, params = _where(settings.kafka_topic, f)
        query = sql.SQL(
            'SELECT id, life, partition, "offset", msg_key, msg_value FROM exporter_dead_letters'
            " WHERE {} ORDER BY id"
        )
        rows = conn.execute(query.format(where), params).fetchall()
        column_types = live_column_types(conn)  # a column widened since is judged as it is now
    if not rows:
        return []
    decoder = Decoder(settings.max_message_bytes, column_types)
    # A batch belongs to one life of the topic: each dead letter goes back in its own.
    batches: dict[int, Batch] = {}
    ids: dict[tuple[int, int, int], int] = {}  # by (life, partition, offset)
    for letter_id, life, partition, offset, key, value in rows:
        ids[(life, partition, offset)] = letter_id
        batch = batches.setdefault(
            life, Batch(decoder=decoder, carry_policy=CarryPolicy(closing=True), life=life)
        )
        batch.add(
            [
                InMemoryMessage(
                    None if value is None else bytes(value),
                    partition,
                    offset,
                    None if key is None else bytes(key),
                )
            ]
        )
    sink = PostgresSink(conninfo=settings.conninfo(), topic=settings.kafka_topic, column_types=column_types)
    try:
        reports = [sink.write(batch) for batch in batches.values()]
    finally:
        sink.close(timeout_s=5)
    refused = {
        (life, d.partition, d.offset): d
        for life, report in zip(batches, reports, strict=True)
        for d in report.dead_letters
    }
    landed = [ids[place] for place in ids if place not in refused]
    with psycopg.connect(settings.conninfo(), autocommit=True) as conn:
        conn.execute("DELETE FROM exporter_dead_letters WHERE id = ANY(%s)", (landed,))
        # A dead letter redriven and refused again keeps its row; bring its reason up to date.
        for place, d in refused.items():
            conn.execute(
                "UPDATE exporter_dead_letters SET stage = %s, reason = %s, sqlstate = %s, error = %s WHERE id = %s",
                (d.stage, d.reason, d.sqlstate, d.error, ids[place]),
            )
    return [
        Redriven(
            ids[place],
            place[1],
            place[2],
            place not in refused,
            refused[place].reason if place in refused else "",
        )
        for place in sorted(ids, key=ids.__getitem__)
    ]
