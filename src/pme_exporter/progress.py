"""Partition progress in one place: what is assigned, in flight, stored, held back, and the lag.

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
