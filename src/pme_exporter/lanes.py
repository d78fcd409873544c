"""Flush lanes: each a flusher (its own database transactions) with its own share of the
assigned partitions, and the batch it is filling for them.

Contract of ``Lanes``: owned by the consumer thread, like the batches (not thread-safe).
``place`` and ``unplace`` follow the group: a partition keeps its lane while held, and a
new one joins the lane with the fewest. ``route`` adds messages to their partition's
lane's batch. ``room`` bounds the next poll so that no batch passes N nor all of them
their bound, whichever lane the messages are for; ``blocked`` is the lane that
backpressure waits on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from pme_exporter.buffers import Batch
from pme_exporter.flusher import Flusher


@dataclass
class Lane:
    """One flush lane: its own flusher (its own database transactions) for a subset of the
    assigned partitions, and the batch it is filling for them."""

    index: int
    flusher: Flusher
    batch: Batch
    partitions: set[int] = field(default_factory=set)
    last_flush_at: float = 0.0
    parked_waiting: int = 0
    in_flight: Batch | None = None  # submitted to the flusher, its report not taken yet


class Lanes:
    def __init__(self, flushers: Sequence[Flusher], new_batch: Callable[[], Batch], now: float) -> None:
        if not flushers:
            raise ValueError("at least one flusher (lane)")
        self._all = [Lane(i, f, new_batch(), last_flush_at=now) for i, f in enumerate(flushers)]
        self._of: dict[int, Lane] = {}

    def __iter__(self) -> Iterator[Lane]:
        return iter(self._all)

    def __len__(self) -> int:
        return len(self._all)

    def __getitem__(self, index: int) -> Lane:
        return self._all[index]

    def of(self, partition: int) -> Lane | None:
        """The lane that holds ``partition`` now, if any."""
        return self._of.get(partition)

    def place(self, partitions: Iterable[int]) -> None:
        """New partitions join the lane with the fewest; a partition keeps its lane while held."""
        for p in sorted(partitions):
            if p not in self._of:
                lane = min(self._all, key=lambda lane: (len(lane.partitions), lane.index))
                lane.partitions.add(p)
                self._of[p] = lane

    def unplace(self, partitions: Iterable[int]) -> None:
        for p in partitions:
            lane = self._of.pop(p, None)
            if lane is not None:
                lane.partitions.discard(p)

    def pending_parents(self, besides: Lane) -> dict[str, set[str]]:
        """The parent keys the other lanes have yet to commit (their batch and the one in flight)."""
        pending: dict[str, set[str]] = {}
        for lane in self._all:
            if lane is besides:
                continue
            for batch in (lane.batch, lane.in_flight):
                if batch is not None:
                    for table, keys in batch.parent_keys.items():
                        pending.setdefault(table, set()).update(keys)
        return pending

    def layout(self) -> dict[int, list[int]]:
        return {lane.index: sorted(lane.partitions) for lane in self._all}

    def route(self, messages: list[Any]) -> None:
        """Adds each message to the batch of its partition's lane. A message of a partition no
        lane holds is left out: librdkafka may still hand over what it fetched for partitions
        since lost, and their new owner reads them again from the stored offsets."""
        lane_of = self._of
        routed: dict[int, list[Any]] = {}
        for m in messages:
            lane = lane_of.get(m.partition())
            if lane is not None:
                routed.setdefault(lane.index, []).append(m)
        for index, routed_messages in routed.items():
            self._all[index].batch.add(routed_messages)

    def buffered(self) -> int:
        return sum(lane.batch.size for lane in self._all)

    def idle(self) -> bool:
        """No lane's flusher is writing."""
        return all(lane.flusher.idle() for lane in self._all)

    def room(self, max_batch: int, max_buffered: int) -> int:
        """Messages the next poll may take: no lane's batch passes ``max_batch``, nor all of them
        ``max_buffered``, whichever lane the messages are for."""
        fullest = max(lane.batch.size for lane in self._all)
        return min(max_buffered - self.buffered(), max_batch - fullest)

    def blocked(self, max_batch: int, max_buffered: int) -> Lane | None:
        """A lane whose batch is full while its flush runs, or the fullest when the buffers are."""
        fullest = max(self._all, key=lambda lane: lane.batch.size)
        if fullest.batch.size >= max_batch or self.buffered() >= max_buffered:
            return fullest
        return None

    def empty_batches(self, new_batch: Callable[[], Batch]) -> None:
        """Every lane starts a new batch; what the old ones held is dropped (never committed)."""
        for lane in self._all:
            lane.batch = new_batch()
