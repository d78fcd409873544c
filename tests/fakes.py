"""Fakes for unit tests of pure logic, in one place: a Kafka message, a Kafka consumer, sinks.

``MemorySink`` keeps the sink contract (pme_exporter.sink) in memory: the
one-at-a-time model of tests/model.py for the tables, carry or park by the
batch's policy, rows refused by the column types' limits (as PostgreSQL would,
with its SQLSTATE), all or nothing per write. ``tests/integration/test_sink_contract.py``
runs the same tests against it and against ``PostgresSink``.
"""

from __future__ import annotations

import re
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson
from confluent_kafka import TopicPartition

from pme_exporter.buffers import Batch, DeadLetter, InMemoryMessage, Orphan
from pme_exporter.progress import TopicLife, TopicRecreated
from pme_exporter.schema import BY_TABLE, FLUSH_ORDER, TABLES, Column, Kind, TableSpec
from pme_exporter.sink import FlushReport, TableOutcome
from tests.model import Tables, apply_events

# A Kafka message in memory (its error() may carry a KafkaError).
FakeMessage = InMemoryMessage


class FakeConsumer:
    """The part of confluent_kafka.Consumer the consumer loop uses, fed from ``queue``."""

    def __init__(self, partitions: list[int]) -> None:
        self.partitions = partitions
        self.queue: list[FakeMessage] = []
        self.lock = threading.Lock()
        self.paused: set[int] = set()
        self.commits: list[dict[int, int]] = []
        self.assigned: list[TopicPartition] = []
        self.on_assign: Callable[..., None] | None = None
        self.closed = False
        # (call, timeout) of the latest polls and consumes
        self.waits: deque[tuple[str, float]] = deque(maxlen=1000)

    def latest_waits(self, count: int) -> list[tuple[str, float]]:
        """The last ``count`` (call, timeout) pairs, read under the lock the loop appends under."""
        with self.lock:
            return list(self.waits)[-count:]

    def subscribe(self, topics: list[str], **callbacks: Any) -> None:
        self.on_assign = callbacks["on_assign"]

    def poll(self, timeout: float) -> FakeMessage | None:
        with self.lock:
            self.waits.append(("poll", timeout))
        ready = self._take(1, timeout)
        return ready[0] if ready else None

    def consume(self, num_messages: int, timeout: float) -> list[FakeMessage]:
        with self.lock:
            self.waits.append(("consume", timeout))
        return self._take(num_messages, timeout)

    def _take(self, num_messages: int, timeout: float) -> list[FakeMessage]:
        if self.on_assign is not None:
            assign, self.on_assign = self.on_assign, None
            assign(self, [TopicPartition("t", p) for p in self.partitions])
        with self.lock:
            ready = [m for m in self.queue if m.partition() not in self.paused][:num_messages]
            for m in ready:
                self.queue.remove(m)
        if not ready:
            time.sleep(min(timeout, 0.005))
        return ready

    def incremental_assign(self, partitions: list[TopicPartition]) -> None:
        self.assigned.extend(partitions)

    def assignment(self) -> list[TopicPartition]:
        return self.assigned

    def pause(self, partitions: list[TopicPartition]) -> None:
        self.paused.update(tp.partition for tp in partitions)

    def resume(self, partitions: list[TopicPartition]) -> None:
        self.paused.difference_update(tp.partition for tp in partitions)

    def commit(self, offsets: list[TopicPartition], asynchronous: bool) -> None:
        self.commits.append({tp.partition: tp.offset for tp in offsets})

    def get_watermark_offsets(self, tp: TopicPartition, cached: bool) -> tuple[int, int]:
        return (0, 100)

    def close(self) -> None:
        self.closed = True


class ScriptedSink:
    """Fails with the given exceptions first, then succeeds (for the flusher's retry policy)."""

    def __init__(self, *failures: BaseException) -> None:
        self.failures = list(failures)
        self.attempts = 0

    def write(self, batch: Batch) -> FlushReport:
        self.attempts += 1
        if self.failures:
            raise self.failures.pop(0)
        return FlushReport(saved_offsets={0: batch.size})

    def stored_offsets(self, partitions: list[int]) -> dict[int, int]:
        return {}

    def topic_life(self, topic_id: str, *, allow_new: bool) -> TopicLife:
        return TopicLife(1, topic_id)

    def ping(self) -> None:
        return None

    def close(self, timeout_s: float) -> None:
        return None


_LIMIT = re.compile(r"(VARCHAR|DECIMAL)\((\d+)(?:,(\d+))?\)")


def refusal(column: Column, raw: Any) -> str | None:
    """The SQLSTATE PostgreSQL refuses this (decoded, shape-checked) value with, or None."""
    if raw is None:
        return None
    limit = _LIMIT.fullmatch(column.sql_type)
    if column.kind is Kind.TEXT and limit:
        return "22001" if len(raw) > int(limit.group(2)) else None
    if column.kind is Kind.DECIMAL and limit:
        try:
            digits = Decimal(str(raw)).quantize(Decimal(1).scaleb(-int(limit.group(3))))
        except InvalidOperation:
            return "22003"
        return "22003" if abs(digits) >= Decimal(10) ** (int(limit.group(2)) - int(limit.group(3))) else None
    if column.kind is Kind.INTEGER:
        bits = 31 if column.sql_type == "INT" else 63
        return None if -(2**bits) <= int(raw) < 2**bits else "22003"
    if column.kind in (Kind.DATE, Kind.TIMESTAMPTZ):
        try:
            (date.fromisoformat if column.kind is Kind.DATE else datetime.fromisoformat)(raw)
        except ValueError:
            return "22008"
    return None


# Types wider than the tables': the decoder passes every length and precision, so
# PostgreSQL itself refuses and the sink's row isolation is what is tested.
UNJUDGED = {
    spec.table: {
        c.name: {Kind.TEXT: "text", Kind.DECIMAL: "numeric", Kind.INTEGER: "bigint"}.get(c.kind, c.sql_type)
        for c in spec.columns
    }
    for spec in TABLES
}


class MemorySink:
    """The sink contract in memory (see the module docstring). ``gate`` holds writes back,
    ``fail_before_commit`` makes the next write fail after all its work, committing nothing."""

    def __init__(self, stored: dict[int, int] | None = None) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.batches: list[Batch] = []
        self.stored: dict[int, int] = dict(stored or {})
        self.applied: list[tuple[int, int, bytes]] = []
        self.dead: dict[tuple[int, int], DeadLetter] = {}
        self.parked: dict[tuple[int, int], tuple[str, bytes | None, bytes]] = {}
        self.fail_before_commit: BaseException | None = None
        self.lives: list[str] = []  # topic IDs, oldest first

    def tables(self) -> Tables:
        return apply_events(self.applied)

    def write(self, batch: Batch) -> FlushReport:
        self.gate.wait(10)
        self.batches.append(batch)
        report = FlushReport.of(batch)
        applied = list(self.applied)
        parked = dict(self.parked)
        dead = dict(self.dead)
        pending: list[tuple[TableSpec, int, int, bytes | None, bytes, str | None]] = []
        for spec in FLUSH_ORDER:
            rows = batch.tables.get(spec.table)
            for seq, (partition, offset, key, value) in enumerate(rows.sources if rows else []):
                pending.append((spec, partition, offset, key, value, rows.row_text(seq) if rows else None))
        # Parked children come back in their table's turn, as adopted rows.
        for (partition, offset), (table, key, value) in sorted(parked.items()):
            pending.append((BY_TABLE[table], partition, offset, key, value, None))
        pending.sort(key=lambda r: FLUSH_ORDER.index(r[0]))
        known: set[tuple[int, int]] = {(p, o) for p, o, _ in applied}
        stored_parents: Tables | None = None  # every parent row of the batch precedes every child
        for spec, partition, offset, key, value, text in pending:
            outcome = report.tables.setdefault(spec.table, TableOutcome())
            adopted = (partition, offset) in parked
            envelope = orjson.loads(value)
            data = envelope["data"]
            if spec.is_child:
                stored_parents = stored_parents or apply_events(applied)
            if spec.is_child and stored_parents and not self._parents_stored(spec, data, stored_parents):
                if adopted:
                    continue  # still waiting
                times = batch.times_carried.get((partition, offset), 0)
                if batch.carry_policy.carry(times):
                    assert text is not None
                    report.carried.append(Orphan(spec.table, partition, offset, key, value, text, times + 1))
                    outcome.carried += 1
                else:
                    parked[(partition, offset)] = (spec.table, key, value)
                    outcome.parked += 1
                continue
            if adopted:
                del parked[(partition, offset)]
                outcome.adopted += 1
            state = next((s for c in spec.columns if (s := refusal(c, data.get(c.name))) is not None), None)
            if state is None and spec.unique:
                state = self._unique_clash(spec, data, apply_events(applied))
            if state is not None:
                letter = DeadLetter.refused((partition, offset, key, value), spec.table, state, "refused")
                report.dead_letters.append(letter)
                dead.setdefault((partition, offset), letter)
                continue
            if (partition, offset) not in known:  # the model itself keeps the upsert and stale rules
                applied.append((partition, offset, value))
                known.add((partition, offset))
        saved = dict(batch.next_offsets)
        for orphan in report.carried:
            saved[orphan.partition] = min(saved[orphan.partition], orphan.offset)
        report.saved_offsets = saved
        report.parked_waiting = len(parked)
        if self.fail_before_commit is not None:
            failure, self.fail_before_commit = self.fail_before_commit, None
            raise failure
        for letter in batch.dead_letters:
            dead.setdefault((letter.partition, letter.offset), letter)
        self.applied, self.parked, self.dead = applied, parked, dead
        for partition, offset in saved.items():
            self.stored[partition] = max(self.stored.get(partition, 0), offset)
        return report

    @staticmethod
    def _unique_clash(spec: TableSpec, data: dict[str, Any], tables: Tables) -> str | None:
        """23505 when another key's row holds one of the version's unique values."""
        key = int(data[str(spec.key)])
        for column in spec.unique:
            value = data.get(column)
            if value is not None and any(
                other != key and row[column] == value for other, row in tables[spec.table].items()
            ):
                return "23505"
        return None

    @staticmethod
    def _parents_stored(spec: TableSpec, data: dict[str, Any], tables: Tables) -> bool:
        return all(data.get(p.column) is None or int(data[p.column]) in tables[p.table] for p in spec.parents)

    def stored_offsets(self, partitions: list[int]) -> dict[int, int]:
        return {p: o for p, o in self.stored.items() if p in partitions}

    def topic_life(self, topic_id: str, *, allow_new: bool) -> TopicLife:
        """The registry of progress.enter_topic_life: a new ID is a new life, whose offsets start afresh."""
        if self.lives and self.lives[-1] != topic_id:
            if not allow_new:
                raise TopicRecreated(f"topic ID {topic_id}, life {len(self.lives)} had {self.lives[-1]}")
            previous = self.lives[-1]
            self.lives.append(topic_id)
            self.stored.clear()
            return TopicLife(len(self.lives), topic_id, previous)
        if not self.lives:
            self.lives.append(topic_id)
        return TopicLife(len(self.lives), topic_id)

    def ping(self) -> None:
        return None

    def close(self, timeout_s: float) -> None:
        return None
