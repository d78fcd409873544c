"""Operator commands beside the worker: ``status``, ``dead-letters list | show | redrive``, ``replay``.

Contracts:
- ``status`` reads Kafka (end offsets, the group's committed offsets, the time
  of the oldest message not yet exported) and PostgreSQL (the stored offsets,
  dead letters, parked children); it writes nothing and is safe beside
  running workers.
- ``dead_letters`` selects by stage, reason, table and age, bound as parameters.
- ``redrive`` decodes the selected dead letters again and writes those that
  decode through the normal sink (same SQL, same stale guard, closing carry
  policy, so an orphan is parked rather than lost); the ones that land are
  deleted from ``exporter_dead_letters`` in the same transaction as the check,
  the rest stay, and the outcome of each is returned.
- ``replay`` makes the next run read again from a point: it refuses while
  members of the workers' group are active (unless forced; the CLI asks), and
  sets the stored offsets down to that point in one transaction (emptying the
  ledger tables first for a full rebuild).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient
from psycopg import sql

from pme_exporter.buffers import Batch, InMemoryMessage
from pme_exporter.decode import Decoder
from pme_exporter.progress import CarryPolicy, last_saved_at, read_stored_offsets, set_stored_offsets
from pme_exporter.schema import TABLES, live_column_types
from pme_exporter.settings import Settings
from pme_exporter.sink import PostgresSink


@dataclass
class PartitionStatus:
    partition: int
    end_offset: int  # Kafka's high watermark: the next offset to be written
    exported_offset: int | None  # next offset to export, as stored
    committed_offset: int | None  # the group's committed offset in Kafka
    lag_messages: int
    lag_seconds: float  # now minus the Kafka time of the oldest message not yet exported


@dataclass
class Status:
    topic: str
    group: str
    partitions: list[PartitionStatus] = field(default_factory=list)
    last_flush: datetime | None = None
    dead_letters: dict[str, int] = field(default_factory=dict)  # "stage/reason" -> count
    parked_children: int = 0

    @property
    def lag_messages(self) -> int:
        return sum(p.lag_messages for p in self.partitions)

    @property
    def dead_letter_count(self) -> int:
        return sum(self.dead_letters.values())


def read_status(settings: Settings, timeout_s: float = 10.0) -> Status:
    status = Status(settings.kafka_topic, settings.kafka_group_id)
    with psycopg.connect(settings.conninfo(), autocommit=True) as conn:
        exported = read_stored_offsets(conn, settings.kafka_topic)
        status.last_flush = last_saved_at(conn, settings.kafka_topic)
        status.dead_letters = {
            f"{stage}/{reason}": int(n)
            for stage, reason, n in conn.execute(
                "SELECT stage, reason, count(*) FROM exporter_dead_letters WHERE topic = %s"
                " GROUP BY stage, reason ORDER BY stage, reason",
                (settings.kafka_topic,),
            )
        }
        parked = conn.execute(
            "SELECT count(*) FROM exporter_parked_children WHERE topic = %s", (settings.kafka_topic,)
        ).fetchone()
        status.parked_children = int(parked[0]) if parked else 0
    # A consumer of the workers' group that never subscribes: it reads, it does not join.
    consumer = Consumer({**settings.kafka_config(), "enable.auto.commit": False})
    try:
        metadata = consumer.list_topics(settings.kafka_topic, timeout=timeout_s)
        topic = metadata.topics.get(settings.kafka_topic)
        numbers = sorted(topic.partitions) if topic is not None and topic.error is None else []
        committed = {
            tp.partition: tp.offset
            for tp in consumer.committed(
                [TopicPartition(settings.kafka_topic, p) for p in numbers], timeout=timeout_s
            )
        }
        for p in numbers:
            _low, high = consumer.get_watermark_offsets(
                TopicPartition(settings.kafka_topic, p), timeout=timeout_s
            )
            next_offset = exported.get(p)
            lag = max(0, high - (next_offset or 0))
            status.partitions.append(
                PartitionStatus(
                    partition=p,
                    end_offset=high,
                    exported_offset=next_offset,
                    committed_offset=committed[p] if committed.get(p, -1) >= 0 else None,
                    lag_messages=lag,
                    lag_seconds=_age_of(consumer, settings.kafka_topic, p, next_offset or 0, timeout_s)
                    if lag
                    else 0.0,
                )
            )
    finally:
        consumer.close()
    return status


def _age_of(consumer: Consumer, topic: str, partition: int, offset: int, timeout_s: float) -> float:
    """Seconds since the Kafka timestamp of the message at ``offset`` (0 if it cannot be read)."""
    consumer.assign([TopicPartition(topic, partition, offset)])
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        message = consumer.poll(0.5)
        if message is not None and message.error() is None:
            return max(0.0, time.time() - message.timestamp()[1] / 1000.0)
    return 0.0


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
        clauses.append(sql.SQL("error LIKE %(table)s"))  # database refusals read "<table>: <message>"
        params["table"] = f"{f.table}: %"
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


class ReplayRefused(Exception):
    """A replay that would race running workers, or that nobody confirmed."""


@dataclass(frozen=True)
class ReplayPlan:
    topic: str
    targets: dict[int, int]  # partition -> the offset the next run starts from
    truncate: bool
    tables: tuple[str, ...] = ()  # with truncate: only these, with every table referencing them


def with_children(tables: tuple[str, ...]) -> tuple[str, ...]:
    """The tables and, transitively, the tables whose foreign keys reference them, in schema order."""
    chosen = set(tables)
    while True:
        more = {c.table for c in TABLES for ref in c.parents if ref.table in chosen} - chosen
        if not more:
            return tuple(spec.table for spec in TABLES if spec.table in chosen)
        chosen |= more


def active_members(settings: Settings, timeout_s: float = 10.0) -> int:
    """Members of the workers' consumer group now (0 when the group is empty or unknown)."""
    admin = AdminClient(settings.kafka_admin_config())
    futures = admin.describe_consumer_groups([settings.kafka_group_id], request_timeout=timeout_s)
    try:
        group = futures[settings.kafka_group_id].result(timeout=timeout_s)
    except KafkaException:
        return 0
    return len(group.members)


def plan_replay(
    settings: Settings,
    *,
    from_beginning: bool = False,
    from_time_ms: int | None = None,
    partition_offset: tuple[int, int] | None = None,
    truncate: bool = False,
    tables: tuple[str, ...] | None = None,
    timeout_s: float = 10.0,
) -> ReplayPlan:
    """Where each partition's next run starts: its first offset, the first at or after a time, or one given."""
    consumer = Consumer({**settings.kafka_config(), "enable.auto.commit": False})
    try:
        metadata = consumer.list_topics(settings.kafka_topic, timeout=timeout_s)
        topic = metadata.topics.get(settings.kafka_topic)
        if topic is None or topic.error is not None:
            raise ReplayRefused(f"topic {settings.kafka_topic} does not exist")
        numbers = sorted(topic.partitions)
        if partition_offset is not None:
            p, o = partition_offset
            if p not in numbers:
                raise ReplayRefused(f"topic {settings.kafka_topic} has no partition {p}")
            return ReplayPlan(settings.kafka_topic, {p: o}, truncate)
        if from_time_ms is not None:
            found = consumer.offsets_for_times(
                [TopicPartition(settings.kafka_topic, p, from_time_ms) for p in numbers], timeout=timeout_s
            )
            targets = {}
            for tp in found:
                # No message at or after that time: nothing of this partition is replayed.
                targets[tp.partition] = (
                    tp.offset
                    if tp.offset >= 0
                    else consumer.get_watermark_offsets(
                        TopicPartition(settings.kafka_topic, tp.partition), timeout=timeout_s
                    )[1]
                )
            return ReplayPlan(settings.kafka_topic, targets, truncate)
        assert from_beginning or truncate
        return ReplayPlan(
            settings.kafka_topic,
            {
                p: consumer.get_watermark_offsets(TopicPartition(settings.kafka_topic, p), timeout=timeout_s)[
                    0
                ]
                for p in numbers
            },
            truncate,
            with_children(tables) if tables else (),
        )
    finally:
        consumer.close()


def apply_replay(settings: Settings, plan: ReplayPlan) -> None:
    """Sets where the next run reads from, in one transaction (and empties the ledger tables first
    with ``truncate``). Upsert tables converge through the stale guard; append rows, dead letters
    and parked children are unique per message, so nothing is stored twice."""
    with psycopg.connect(settings.conninfo()) as conn, conn.transaction():
        if plan.truncate and plan.tables:
            # Only these tables: the others converge when read again (stale guard, unique appends).
            conn.execute(sql.SQL("TRUNCATE {}").format(sql.SQL(", ").join(map(sql.Identifier, plan.tables))))
        elif plan.truncate:
            tables = [spec.table for spec in TABLES] + ["exporter_dead_letters", "exporter_parked_children"]
            conn.execute(sql.SQL("TRUNCATE {}").format(sql.SQL(", ").join(map(sql.Identifier, tables))))
        set_stored_offsets(conn, plan.topic, plan.targets, forget_others=plan.truncate and not plan.tables)
