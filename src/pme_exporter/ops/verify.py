"""``pme-exporter verify``: reconciles the PostgreSQL mirror with the topic it was made from.

Contract:
- Reads the topic from each partition's first offset up to the offset
  the stored offsets say were exported, and nothing after it.
- Streams: the messages are decoded here (the worker's decoder) and COPYed,
  a few megabytes at a time, into temporary tables of the verifying session;
  the comparison is then set-based SQL. Memory stays bounded whatever the
  topic's size; PostgreSQL holds the rest on disk.
- Read-only and safe beside running workers: one REPEATABLE READ transaction
  reads the offsets and every table in the same snapshot, writes only its
  own temporary tables, and is rolled back at the end.
- Every message is accounted for exactly once: a decode failure (or a value
  its column cannot hold, judged against the live column types) must be a
  dead letter; a decoded message is a dead letter, a parked child, the source
  of its stored row, or (upserts) a version that lost to a newer one. For
  upsert tables each key's row must equal its winning event, ``created_at``
  the least ``ts``; append tables hold exactly one row per message.
- Rows moved by ``retention archive`` count as stored. Rows whose source lies
  beyond the exported offsets (a worker ahead of its checkpoint, or carrying an
  orphan) are counted as ``ahead`` and not judged; rows whose source is below
  the topic's first offset (Kafka's own retention) as ``unverifiable``.
- ``sample`` in (0, 1] checks only the keys (append tables: the messages) whose
  md5 falls in that fraction, the same in Python and in SQL.
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from confluent_kafka import Consumer, KafkaException, TopicPartition
from psycopg import sql

from pme_exporter.decode import NULL, Decoder, copy_fields
from pme_exporter.errors import DecodeError, ValueRefused, VerifyError, reason_of
from pme_exporter.kafka_config import KAFKA_LOG
from pme_exporter.progress import current_life, read_stored_offsets
from pme_exporter.schema import (
    CAST_TYPE,
    TABLES,
    Kind,
    TableSpec,
    WriteMode,
    archive_table,
    live_column_types,
)
from pme_exporter.settings import Settings

COPY_CHUNK_BYTES = 4 << 20
VERDICTS = ("stored", "stale", "dead_letter", "parked", "missing", "altered", "extra", "duplicate", "ahead",
            "unverifiable")  # fmt: skip
MISMATCHES = frozenset({"missing", "altered", "extra", "duplicate", "lost"})


@dataclass(frozen=True)
class Mismatch:
    table: str  # or "dead_letters" for a decode failure nobody recorded
    kind: str  # missing | altered | extra | duplicate | lost
    partition: int | None
    offset: int | None
    key: str | None
    detail: str

    def line(self) -> str:
        where = "" if self.partition is None else f" at partition {self.partition} offset {self.offset}"
        key = "" if self.key is None else f" key {self.key}"
        return f"{self.table}: {self.kind}{key}{where}: {self.detail}"


@dataclass
class VerifyResult:
    topic: str
    bounds: dict[int, int]  # partition -> first offset not exported (exclusive end of what was read)
    sample: float
    messages: int = 0
    tombstones: int = 0
    decode_failures: int = 0
    refused: int = 0  # values their column cannot hold: dead letters before any table
    tables: dict[str, dict[str, int]] = field(default_factory=dict)
    mismatch_count: int = 0
    mismatches: list[Mismatch] = field(default_factory=list)  # the first ones only

    @property
    def ok(self) -> bool:
        return self.mismatch_count == 0


def in_sample(identity: str, fraction: float) -> bool:
    """Whether a key (or an append message's "partition:offset") is in the sample; see ``_SAMPLED``."""
    if fraction >= 1.0:
        return True
    return int(hashlib.md5(identity.encode()).hexdigest()[:8], 16) < fraction * 4294967296  # noqa: S324


def _sampled(expression: sql.Composable) -> sql.Composable:
    """The SQL twin of ``in_sample``."""
    return sql.SQL("(('x' || left(md5({}::text), 8))::bit(32)::bigint < %(sample)s * 4294967296)").format(
        expression
    )


def verify_topic(
    settings: Settings,
    *,
    sample: float = 1.0,
    keep: int = 20,
    progress: Callable[[int, int], None] | None = None,
    stall_s: float = 30.0,
) -> VerifyResult:
    topic = settings.kafka_topic
    with psycopg.connect(settings.conninfo()) as conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        bounds = read_stored_offsets(conn, topic)
        life = current_life(conn, topic)
        result = VerifyResult(topic, bounds, sample)
        column_types = live_column_types(conn)  # as they are now: a column widened by hand included
        _create_scratch(conn)
        starts = _stream(
            settings, conn, Decoder(settings.max_message_bytes, column_types), result, progress, stall_s
        )
        conn.execute(
            "CREATE TEMP TABLE vfy_bounds AS SELECT * FROM unnest(%s::int[], %s::bigint[], %s::bigint[])"
            " AS b(p, first_offset, end_offset)",
            (list(bounds), [starts.get(p, 0) for p in bounds], list(bounds.values())),
        )
        present = {name for (name,) in conn.execute("SELECT tablename FROM pg_tables")}
        for spec in TABLES:
            live_types = column_types[spec.table]
            with_archive = archive_table(spec.table) in present
            query = (
                _upsert_check(spec, live_types, with_archive)
                if spec.mode is WriteMode.UPSERT
                else (_append_check(spec, live_types, with_archive))
            )
            counts = dict.fromkeys(VERDICTS, 0)
            params = {"topic": topic, "life": life, "sample": sample}
            # A server-side cursor: a row per key or message comes back, so fetch them a batch at a time.
            with conn.cursor(name=f"vfy_check_{spec.table}") as cur:
                cur.itersize = 10_000
                cur.execute(query, params)
                for verdict, partition, offset, key, detail in cur:
                    counts[verdict] += 1
                    if verdict in MISMATCHES:
                        result.mismatch_count += 1
                        if len(result.mismatches) < keep:
                            result.mismatches.append(
                                Mismatch(spec.table, verdict, partition, offset, key, detail)
                            )
            counts["messages"] = conn.execute(
                sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(f"vfy_{spec.table}"))
            ).fetchone()[0]  # type: ignore[index]
            result.tables[spec.table] = counts
        for partition, offset, reason in conn.execute(
            """SELECT r.p, r.o, r.reason FROM vfy_rejected r
               WHERE NOT EXISTS (SELECT 1 FROM exporter_dead_letters d
                                 WHERE d.topic = %s AND d.life = %s AND d.partition = r.p AND d."offset" = r.o)
               ORDER BY r.p, r.o""",
            (topic, life),
        ):
            result.mismatch_count += 1
            if len(result.mismatches) < keep:
                result.mismatches.append(
                    Mismatch(
                        "dead_letters",
                        "lost",
                        partition,
                        offset,
                        None,
                        f"the message fails decoding ({reason}) and is not a dead letter",
                    )
                )
        conn.rollback()
    return result


def _create_scratch(conn: psycopg.Connection[Any]) -> None:
    for spec in TABLES:
        columns = ", ".join(
            ["seq int", "src_partition int", "src_offset bigint", "ts text"]
            + [f"{c} text" for c in spec.column_names]
        )
        conn.execute(f"CREATE TEMP TABLE vfy_{spec.table} ({columns})")
    conn.execute("CREATE TEMP TABLE vfy_rejected (p int, o bigint, reason text)")


class _Copier:
    """Per-table COPY text of the decoded messages, sent a chunk at a time."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn
        self.data: dict[str, bytearray] = {}
        self.rejected = bytearray()
        self.size = 0

    def add(self, table: str, line: bytes) -> None:
        self.data.setdefault(table, bytearray()).extend(line)
        self.size += len(line)
        if self.size >= COPY_CHUNK_BYTES:
            self.flush()

    def reject(self, line: bytes) -> None:
        self.rejected += line
        self.size += len(line)

    def flush(self) -> None:
        chunks = [(f"vfy_{t}", d) for t, d in self.data.items() if d] + [("vfy_rejected", self.rejected)]
        for table, data in chunks:
            if data:
                with self.conn.cursor().copy(
                    sql.SQL("COPY {} FROM STDIN").format(sql.Identifier(table))
                ) as cp:
                    cp.write(data)
        self.data.clear()
        self.rejected = bytearray()
        self.size = 0


def _stream(
    settings: Settings,
    conn: psycopg.Connection[Any],
    decoder: Decoder,
    result: VerifyResult,
    progress: Callable[[int, int], None] | None,
    stall_s: float,
) -> dict[int, int]:
    """Reads every partition from its first offset to its bound; returns the first offsets."""
    topic = result.topic
    copier = _Copier(conn)
    consumer = Consumer(
        {
            **settings.kafka_config(),
            "enable.auto.commit": False,
            "enable.partition.eof": False,
            "logger": KAFKA_LOG,
        }
    )
    try:
        # The topic is read even when nothing was exported from it: "all match" must mean
        # that Kafka was asked, not that it could not be reached.
        try:
            described = consumer.list_topics(topic, timeout=10.0).topics.get(topic)
        except KafkaException as exc:
            raise VerifyError(f"Kafka at {settings.kafka_url} did not answer: {reason_of(exc)}") from None
        if described is None or described.error is not None:
            raise VerifyError(f"the topic {topic} does not exist at {settings.kafka_url}")
        starts: dict[int, int] = {}
        assignment = []
        for p, end in result.bounds.items():
            low, _high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10.0)
            starts[p] = low
            if end > low:
                assignment.append(TopicPartition(topic, p, low))
        remaining = {tp.partition: result.bounds[tp.partition] for tp in assignment}
        total = sum(result.bounds[p] - starts[p] for p in remaining)
        consumer.assign(assignment)
        last_seen = time.monotonic()
        seq = 0
        while remaining:
            messages = consumer.consume(1000, 0.5)
            if not messages:
                # Offsets without a message (compaction, transaction markers) end a partition too.
                for tp in consumer.position([TopicPartition(topic, p) for p in remaining]):
                    if tp.offset >= remaining[tp.partition]:
                        del remaining[tp.partition]
            if not messages and remaining and time.monotonic() - last_seen > stall_s:
                where = ", ".join(f"partition {p} before offset {o}" for p, o in sorted(remaining.items()))
                raise VerifyError(f"Kafka delivered nothing for {stall_s:.0f} s; still to read: {where}")
            for msg in messages:
                if msg.error() is not None:
                    raise VerifyError(f"Kafka: {msg.error()}")
                part, off = msg.partition(), msg.offset()
                limit = None if part is None else remaining.get(part)
                if part is None or off is None or limit is None or off >= limit:
                    continue
                p, o = part, off
                last_seen = time.monotonic()
                result.messages += 1
                if o + 1 >= limit:
                    del remaining[p]
                    consumer.pause([TopicPartition(topic, p)])
                value = msg.value()
                if value is None:
                    result.tombstones += 1
                    continue
                try:
                    spec, text = decoder.decode(value)
                except Exception as exc:  # any failure must have made a dead letter
                    if isinstance(exc, ValueRefused):
                        result.refused += 1
                    else:
                        result.decode_failures += 1
                    reason = exc.reason if isinstance(exc, DecodeError) else "internal"
                    copier.reject(f"{p}\t{o}\t{reason}\n".encode())
                    continue
                if result.sample < 1.0 and not in_sample(_identity(spec, text, p, o), result.sample):
                    continue
                seq += 1
                copier.add(spec.table, f"{seq}\t{p}\t{o}\t{text}\n".encode())
            if progress is not None:
                progress(result.messages, total)
        copier.flush()
        return starts
    finally:
        consumer.close()


def _identity(spec: TableSpec, text: str, partition: int, offset: int) -> str:
    if spec.mode is WriteMode.APPEND or spec.key is None:
        return f"{partition}:{offset}"
    raw = copy_fields(text)[1 + spec.column_names.index(spec.key)]
    kind = next(c.kind for c in spec.columns if c.name == spec.key)
    return str(int(raw)) if kind is Kind.INTEGER and raw is not None else (raw or "")


def _typed(spec: TableSpec, live_types: dict[str, str]) -> sql.Composable:
    """Staging text cast as the worker casts it, then to the live column type (its typmod rounds)."""
    return sql.SQL(", ").join(
        sql.SQL("v.{c}::{k}::{t} AS {c}").format(
            c=sql.Identifier(c.name), k=sql.SQL(CAST_TYPE[c.kind]), t=sql.SQL(live_types[c.name])
        )
        for c in spec.columns
    )


_ACCOUNTED = """NOT EXISTS (SELECT 1 FROM exporter_dead_letters d
                WHERE d.topic = %(topic)s AND d.life = %(life)s
                  AND d.partition = v.src_partition AND d."offset" = v.src_offset)
            AND NOT EXISTS (SELECT 1 FROM exporter_parked_children pc
                WHERE pc.topic = %(topic)s AND pc.life = %(life)s
                  AND pc.partition = v.src_partition AND pc."offset" = v.src_offset)"""
# When the topic's current life began (NULL in its first): a row written before then came
# from a message the topic no longer holds.
_LIFE_BEGAN = """(SELECT seen_at FROM exporter_topic_lives
                  WHERE topic = %(topic)s AND life = %(life)s AND life > 1)"""


def _set_aside(spec: TableSpec) -> str:
    """One row per message that is a dead letter or a parked child instead of a row."""
    return f"""SELECT CASE WHEN EXISTS (SELECT 1 FROM exporter_dead_letters d WHERE d.topic = %(topic)s
                        AND d.life = %(life)s AND d.partition = v.src_partition AND d."offset" = v.src_offset)
                   THEN 'dead_letter' ELSE 'parked' END,
              v.src_partition, v.src_offset, NULL::text, NULL::text
       FROM vfy_{spec.table} v WHERE NOT ({_ACCOUNTED})"""


def _differs(spec: TableSpec, left: str, right: str) -> str:
    """The names of the columns that differ, as text[]."""
    names = [*spec.column_names]
    cells = ", ".join(f"CASE WHEN {left}.{n} IS DISTINCT FROM {right}.{n} THEN '{n}' END" for n in names)
    return f"array_remove(ARRAY[{cells}], NULL)"


def _stored(spec: TableSpec, with_archive: bool, lineage: str, where: str = "") -> str:
    columns = ", ".join([*spec.column_names, lineage])
    live = f"SELECT {columns} FROM {spec.table} {where}"
    return live + (
        f" UNION ALL SELECT {columns} FROM {archive_table(spec.table)} {where}" if with_archive else ""
    )


def _upsert_check(spec: TableSpec, live_types: dict[str, str], with_archive: bool) -> sql.Composed:
    key = spec.key
    assert key is not None
    differs = _differs(spec, "e", "s")
    text = f"""
WITH msgs AS (
    SELECT v.src_partition AS p, v.src_offset AS o, v.ts::timestamptz AS ts, {{typed}}
    FROM vfy_{spec.table} v WHERE {_ACCOUNTED}
),
expected AS (
    SELECT DISTINCT ON ({key}) *, min(ts) OVER (PARTITION BY {key}) AS first_ts,
        count(*) OVER (PARTITION BY {key}) AS versions
    FROM msgs ORDER BY {key}, ts DESC, p DESC, o DESC
),
stored_all AS ({_stored(spec, with_archive, "created_at, updated_at, src_partition, src_offset, exported_at")}),
stored AS (
    SELECT DISTINCT ON ({key}) *, count(*) OVER (PARTITION BY {key}) AS copies
    FROM stored_all WHERE {{sampled}}
    ORDER BY {key}, updated_at DESC, src_partition DESC, src_offset DESC
),
judged AS (
    SELECT e.{key} AS e_key, s.{key} AS s_key, e.p, e.o, e.versions, s.src_partition, s.src_offset,
        CASE
            WHEN s.exported_at < {_LIFE_BEGAN} AND (e.{key} IS NULL
                OR (s.updated_at, s.src_partition, s.src_offset) > (e.ts, e.p, e.o)) THEN 'unverifiable'
            WHEN s.{key} IS NOT NULL AND (b.p IS NULL OR s.src_offset >= b.end_offset) THEN 'ahead'
            WHEN e.{key} IS NULL AND s.src_offset < b.first_offset THEN 'unverifiable'
            WHEN e.{key} IS NULL THEN 'extra'
            WHEN s.{key} IS NULL THEN 'missing'
            WHEN (e.p, e.o, e.ts) IS DISTINCT FROM (s.src_partition, s.src_offset, s.updated_at)
                THEN 'altered'
            WHEN cardinality({differs}) > 0 THEN 'altered'
            WHEN s.created_at IS DISTINCT FROM e.first_ts AND s.copies = 1 AND b.first_offset = 0
                AND NOT (s.created_at < e.first_ts AND {_LIFE_BEGAN} IS NOT NULL) THEN 'altered'
            ELSE 'stored'
        END AS verdict,
        CASE
            WHEN e.{key} IS NULL THEN 'no message of the topic has this key'
            WHEN s.{key} IS NULL THEN 'the key has ' || e.versions || ' message(s) and no row'
            WHEN (e.p, e.o, e.ts) IS DISTINCT FROM (s.src_partition, s.src_offset, s.updated_at)
                THEN format('the row is from partition %%s offset %%s (ts %%s); the winner is offset %%s (ts %%s)',
                            s.src_partition, s.src_offset, s.updated_at, e.o, e.ts)
            WHEN cardinality({differs}) > 0 THEN 'columns differ from the winning event: '
                || array_to_string({differs}, ', ')
            ELSE format('created_at %%s, the first event''s ts is %%s', s.created_at, e.first_ts)
        END AS detail
    FROM expected e
    FULL JOIN stored s ON s.{key} = e.{key}
    LEFT JOIN vfy_bounds b ON b.p = coalesce(s.src_partition, e.p)
)
SELECT verdict, coalesce(p, src_partition), coalesce(o, src_offset), coalesce(e_key, s_key)::text, detail
FROM judged
UNION ALL
SELECT 'stale', NULL, NULL, NULL, NULL FROM judged, generate_series(2, versions)
WHERE verdict IN ('stored', 'altered') AND e_key IS NOT NULL
UNION ALL
{_set_aside(spec)}
ORDER BY 2, 3"""
    return sql.SQL(text).format(typed=_typed(spec, live_types), sampled=_sampled(sql.Identifier(key)))


def _append_check(spec: TableSpec, live_types: dict[str, str], with_archive: bool) -> sql.Composed:
    differs = _differs(spec, "m", "s")
    stored = _stored(
        spec,
        with_archive,
        "created_at, src_partition, src_offset",
        "WHERE src_topic = %(topic)s AND src_life = %(life)s",
    )
    text = f"""
WITH msgs AS (
    SELECT v.src_partition AS p, v.src_offset AS o, v.ts::timestamptz AS ts, {{typed}}
    FROM vfy_{spec.table} v WHERE {_ACCOUNTED}
),
stored AS (
    SELECT *, count(*) OVER (PARTITION BY src_partition, src_offset) AS copies
    FROM ({stored}) x WHERE {{sampled}}
)
SELECT
    CASE
        WHEN s.src_offset IS NOT NULL AND (b.p IS NULL OR s.src_offset >= b.end_offset) THEN 'ahead'
        WHEN m.o IS NULL AND s.src_offset < b.first_offset THEN 'unverifiable'
        WHEN m.o IS NULL THEN 'extra'
        WHEN s.src_offset IS NULL THEN 'missing'
        WHEN s.copies > 1 THEN 'duplicate'
        WHEN cardinality({differs}) > 0 OR s.created_at IS DISTINCT FROM m.ts THEN 'altered'
        ELSE 'stored'
    END,
    coalesce(m.p, s.src_partition), coalesce(m.o, s.src_offset), NULL::text,
    CASE
        WHEN m.o IS NULL THEN 'a row whose message is not a {spec.event_type} event of the topic'
        WHEN s.src_offset IS NULL THEN 'the message has no row'
        WHEN s.copies > 1 THEN s.copies || ' rows for one message'
        ELSE 'columns differ from the event: ' || array_to_string({differs}, ', ')
            || CASE WHEN s.created_at IS DISTINCT FROM m.ts THEN ' created_at' ELSE '' END
    END
FROM msgs m
FULL JOIN stored s ON (s.src_partition, s.src_offset) = (m.p, m.o)
LEFT JOIN vfy_bounds b ON b.p = coalesce(s.src_partition, m.p)
UNION ALL
{_set_aside(spec)}
ORDER BY 2, 3"""
    identity = sql.SQL("(src_partition || ':' || src_offset)")
    return sql.SQL(text).format(typed=_typed(spec, live_types), sampled=_sampled(identity))


def print_progress(done: int, total: int) -> None:
    """A one-line progress bar on a terminal; nothing otherwise."""
    if sys.stderr.isatty() and total:
        width = 30
        filled = int(width * min(done, total) / total)
        sys.stderr.write(f"\rverify: [{'#' * filled}{'.' * (width - filled)}] {done:,}/{total:,} messages")
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()


__all__ = ["NULL", "Mismatch", "VerifyResult", "in_sample", "print_progress", "verify_topic"]
