"""``pme-exporter status``: where each partition stands, read from Kafka and PostgreSQL.

It reads Kafka (end offsets, the group's committed offsets, the time of the
oldest message not yet exported) and PostgreSQL (the stored offsets, dead
letters, parked children); it writes nothing and is safe beside running workers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime

import psycopg
from confluent_kafka import Consumer, TopicPartition

from pme_exporter.buffers import kind_of
from pme_exporter.kafka_config import KAFKA_LOG
from pme_exporter.progress import last_saved_at, read_stored_offsets
from pme_exporter.settings import Settings


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
            kind_of(stage, reason): int(n)
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
    consumer = Consumer({**settings.kafka_config(), "enable.auto.commit": False, "logger": KAFKA_LOG})
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
