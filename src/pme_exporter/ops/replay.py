"""``pme-exporter replay``: the next run reads again from a point.

It refuses while members of the workers' group are active (unless forced; the
CLI asks), and sets the stored offsets down to that point in one transaction
(emptying the ledger tables first for a full rebuild).
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient
from psycopg import sql

from pme_exporter.errors import KafkaFatalError
from pme_exporter.kafka_config import KAFKA_LOG
from pme_exporter.progress import set_stored_offsets
from pme_exporter.schema import TABLES, children_of
from pme_exporter.settings import Settings


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
        more = {child for table in chosen for child, _ in children_of(table)} - chosen
        if not more:
            return tuple(spec.table for spec in TABLES if spec.table in chosen)
        chosen |= more


def active_members(settings: Settings, timeout_s: float = 10.0) -> int:
    """Members of the workers' consumer group now (0 when the group is empty or unknown)."""
    admin = AdminClient(settings.kafka_admin_config(logger=KAFKA_LOG))
    futures = admin.describe_consumer_groups([settings.kafka_group_id], request_timeout=timeout_s)
    try:
        group = futures[settings.kafka_group_id].result(timeout=timeout_s)
    except KafkaException:
        return 0
    except TimeoutError:
        raise KafkaFatalError(
            f"Kafka at {settings.kafka_url} did not say within {timeout_s:.0f}s whether workers are active"
        ) from None
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
    consumer = Consumer({**settings.kafka_config(), "enable.auto.commit": False, "logger": KAFKA_LOG})
    try:
        metadata = consumer.list_topics(settings.kafka_topic, timeout=timeout_s)
        topic = metadata.topics.get(settings.kafka_topic)
        if topic is None or topic.error is not None:
            raise KafkaFatalError(f"the topic {settings.kafka_topic} does not exist")
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
