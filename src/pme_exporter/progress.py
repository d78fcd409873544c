"""Partition progress in one place: what is assigned, in flight, stored, held back, the lag,
and the topic's life.

The rule it keeps: ``exporter_offsets`` in PostgreSQL is the truth. A flush
report says both where its batch ended (``end_offsets``) and what was saved
(``saved_offsets``); the saved offset of a partition is lower than its end
while a carried child of that partition waits for its parent (it is read
again after a crash). Kafka offsets are committed only from what was saved.

Contract of ``PartitionProgress``: owned by the consumer thread (not
thread-safe); ``assign``/``revoke`` follow the group, ``saved`` records a
committed flush and returns the Kafka commits to make, ``lag`` turns high
watermarks into messages behind per partition and seconds behind overall.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import psycopg

_STORED_OFFSETS = "SELECT partition, next_offset FROM exporter_offsets WHERE topic = %s"


def read_stored_offsets(
    conn: psycopg.Connection[Any], topic: str, partitions: Iterable[int] | None = None
) -> dict[int, int]:
    """Next offset to read per partition of ``topic`` (only ``partitions``, when given)."""
    if partitions is None:
        rows = conn.execute(_STORED_OFFSETS, (topic,)).fetchall()
    else:
        rows = conn.execute(
            _STORED_OFFSETS + " AND partition = ANY(%s)", (topic, list(partitions))
        ).fetchall()
    return {int(p): int(o) for p, o in rows}


@dataclass(frozen=True)
class TopicLife:
    """The life of a topic whose ID is ``topic_id``: 1 for the first ID the workers saw, one
    more each time the topic was deleted and created again. ``previous_id`` is set when the
    call that returned it recorded the new life."""

    life: int
    topic_id: str
    previous_id: str | None = None


class TopicRecreated(Exception):
    """The topic's ID is not the one recorded, and a new life may not be started here."""


_LIVES_LOCK = "SELECT pg_advisory_xact_lock(hashtext('pme-exporter topic lives: ' || %s))"
_NEWEST_LIFE = "SELECT life, topic_id FROM exporter_topic_lives WHERE topic = %s ORDER BY life DESC LIMIT 1"
_RECORD_LIFE = "INSERT INTO exporter_topic_lives (topic, life, topic_id) VALUES (%s, %s, %s)"


# Saves a flush's offsets and answers how many children still wait, in one round trip.
# Offsets belong to the topic's newest life: a batch of an earlier one saves none.
SAVE_OFFSETS = """
WITH saved AS (
    INSERT INTO exporter_offsets (topic, partition, next_offset)
    SELECT %(topic)s, p, o FROM unnest(%(partitions)s::int[], %(offsets)s::bigint[]) AS u(p, o)
    WHERE %(life)s >= (SELECT coalesce(max(life), 1) FROM exporter_topic_lives WHERE topic = %(topic)s)
    ON CONFLICT (topic, partition) DO UPDATE
    SET next_offset = GREATEST(exporter_offsets.next_offset, EXCLUDED.next_offset), updated_at = now()
    RETURNING 1
)
SELECT count(*) FROM exporter_parked_children"""


def last_saved_at(conn: psycopg.Connection[Any], topic: str) -> Any:
    """When a flush last saved offsets of ``topic`` (None before any did)."""
    row = conn.execute("SELECT max(updated_at) FROM exporter_offsets WHERE topic = %s", (topic,)).fetchone()
    return row[0] if row else None


def set_stored_offsets(
    conn: psycopg.Connection[Any], topic: str, targets: Mapping[int, int], *, forget_others: bool
) -> None:
    """Sets where the next run reads each partition of ``topic`` from, backwards too (a replay);
    with ``forget_others`` the partitions not in ``targets`` lose theirs."""
    if forget_others:
        conn.execute("DELETE FROM exporter_offsets WHERE topic = %s", (topic,))
    conn.execute(
        """INSERT INTO exporter_offsets (topic, partition, next_offset)
           SELECT %s, p, o FROM unnest(%s::int[], %s::bigint[]) AS u(p, o)
           ON CONFLICT (topic, partition) DO UPDATE SET next_offset = EXCLUDED.next_offset, updated_at = now()""",
        (topic, list(targets), list(targets.values())),
    )


def current_life(conn: psycopg.Connection[Any], topic: str) -> int:
    """The newest life of ``topic`` the workers recorded (1 before any was)."""
    row = conn.execute(
        "SELECT coalesce(max(life), 1) FROM exporter_topic_lives WHERE topic = %s", (topic,)
    ).fetchone()
    return int(row[0]) if row else 1


def enter_topic_life(
    conn: psycopg.Connection[Any], topic: str, topic_id: str, *, allow_new: bool
) -> TopicLife:
    """The life of ``topic`` for ``topic_id``, recorded when new, in one transaction that
    workers starting together take in turn.

    The first ID recorded is life 1 (rows written before lives were recorded belong to
    it). Another ID is the next life: its offsets start again from the beginning, so the
    topic's ``exporter_offsets`` rows (the old life's) are deleted in the same transaction.
    With ``allow_new`` false, another ID raises TopicRecreated and changes nothing.
    """
    with conn.transaction():
        conn.execute(_LIVES_LOCK, (topic,))
        row = conn.execute(_NEWEST_LIFE, (topic,)).fetchone()
        if row is None:
            conn.execute(_RECORD_LIFE, (topic, 1, topic_id))
            return TopicLife(1, topic_id)
        life, known_id = int(row[0]), str(row[1])
        if known_id == topic_id:
            return TopicLife(life, topic_id)
        if not allow_new:
            raise TopicRecreated(
                f"the topic {topic} was deleted and created again (topic ID {topic_id}, "
                f"life {life} had {known_id})"
            )
        conn.execute(_RECORD_LIFE, (topic, life + 1, topic_id))
        conn.execute("DELETE FROM exporter_offsets WHERE topic = %s", (topic,))
        return TopicLife(life + 1, topic_id, known_id)


@dataclass(frozen=True)
class CarryPolicy:
    """What the sink does with a child whose parent is not stored yet.

    Most orphans meet their parent one flush later: the parent sat on a partition
    whose fetched chunk ended a little earlier. Parking costs a write, a delete, a
    decode and a second apply in the database; carrying in memory costs a second
    COPY and apply of the row. Past a few flushes the parent is likely far away.
    A closing batch (the last before partitions are given up) parks everything.
    """

    max_carries: int = 3
    closing: bool = False

    def carry(self, times_carried: int) -> bool:
        return not self.closing and times_carried < self.max_carries


@dataclass
class PartitionProgress:
    clock: Callable[[], float] = time.time
    assigned: set[int] = field(default_factory=set)
    # Next offset stored in PostgreSQL, per partition ever seen.
    exported: dict[int, int] = field(default_factory=dict)
    # Kafka timestamp (ms) of the newest event stored.
    newest_exported_ms: int = 0

    def assign(self, partitions: Iterable[int], stored: Mapping[int, int]) -> None:
        for p in partitions:
            self.assigned.add(p)
            if p in stored:
                self.exported[p] = stored[p]

    def revoke(self, partitions: Iterable[int]) -> None:
        self.assigned.difference_update(partitions)

    def saved(self, saved_offsets: Mapping[int, int], newest_event_ms: int) -> dict[int, int]:
        """Records a committed flush; returns the offsets to commit to Kafka (assigned partitions only)."""
        self.newest_exported_ms = max(self.newest_exported_ms, newest_event_ms)
        for p, o in saved_offsets.items():
            self.exported[p] = max(self.exported.get(p, 0), o)
        return {p: o for p, o in saved_offsets.items() if p in self.assigned}

    def committable(self) -> dict[int, int]:
        """What is stored, for the assigned partitions (the last Kafka commit at shutdown)."""
        return {p: o for p, o in self.exported.items() if p in self.assigned}

    def lag(self, high_watermarks: Mapping[int, int]) -> tuple[dict[int, int], float]:
        """Messages behind per assigned partition with a known position, and seconds behind
        (now minus the newest stored event's time; 0 when nothing is behind)."""
        behind = {
            p: max(0, high - self.exported[p])
            for p, high in high_watermarks.items()
            if p in self.assigned and p in self.exported and high >= 0
        }
        if not any(behind.values()) or self.newest_exported_ms == 0:
            return behind, 0.0
        return behind, max(0.0, self.clock() - self.newest_exported_ms / 1000.0)
