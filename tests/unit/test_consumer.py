"""The consumer loop's policy, against a fake consumer, an in-memory sink and an injected clock."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
from confluent_kafka import TopicPartition

from pme_exporter.buffers import Batch, Orphan
from pme_exporter.consumer import ConsumerLoop
from pme_exporter.flusher import Flusher
from pme_exporter.metrics import Metrics
from pme_exporter.sink import FlushReport
from tests.helpers import FakeMessage


def order(nid: int) -> bytes:
    return orjson.dumps({"type": "Order", "ts": "2025-11-29T09:00:00Z", "data": {"nid": nid}})


class FakeConsumer:
    def __init__(self, partitions: list[int]) -> None:
        self.partitions = partitions
        self.queue: list[FakeMessage] = []
        self.lock = threading.Lock()
        self.paused: set[int] = set()
        self.commits: list[dict[int, int]] = []
        self.assigned: list[TopicPartition] = []
        self.on_assign: Callable[..., None] | None = None
        self.closed = False

    def subscribe(self, topics: list[str], **callbacks: Any) -> None:
        self.on_assign = callbacks["on_assign"]

    def consume(self, num_messages: int, timeout: float) -> list[FakeMessage]:
        if self.on_assign is not None:
            assign, self.on_assign = self.on_assign, None
            assign(self, [TopicPartition("t", p) for p in self.partitions])
        with self.lock:
            ready = [m for m in self.queue if m.partition() not in self.paused][:num_messages]
            for m in ready:
                self.queue.remove(m)
        if not ready:
            time.sleep(0.005)
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


class MemorySink:
    """Stores batches; hands back as orphans, once each, the messages at ``orphan_at`` (partition, offset)."""

    def __init__(self, stored: dict[int, int] | None = None) -> None:
        self.batches: list[Batch] = []
        self.gate = threading.Event()
        self.gate.set()
        self.stored = stored or {}
        self.orphan_at: set[tuple[int, int]] = set()

    def write(self, batch: Batch) -> FlushReport:
        self.gate.wait(10)
        self.batches.append(batch)
        report = FlushReport(saved_offsets=dict(batch.next_offsets))
        if not batch.closing:
            for (partition, offset), value in self._values(batch).items():
                if (partition, offset) in self.orphan_at and (partition, offset) not in batch.carries:
                    report.carried.append(Orphan("orders", partition, offset, None, value, 1))
                    report.saved_offsets[partition] = min(report.saved_offsets[partition], offset)
        return report

    @staticmethod
    def _values(batch: Batch) -> dict[tuple[int, int], bytes]:
        return {(p, o): v for rows in batch.tables.values() for p, o, _k, v in rows.sources}

    def stored_offsets(self, partitions: list[int]) -> dict[int, int]:
        return {p: o for p, o in self.stored.items() if p in partitions}

    def ping(self) -> None:
        return None

    def close(self, timeout_s: float) -> None:
        return None


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def wait_for(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


@pytest.fixture
def harness() -> Iterator[
    Callable[..., tuple[FakeConsumer, MemorySink, Clock, threading.Event, ConsumerLoop]]
]:
    threads: list[tuple[threading.Thread, threading.Event]] = []

    def start(
        max_batch: int = 10, interval_ms: int = 1000, bound: int = 20, stored: dict[int, int] | None = None
    ) -> tuple[FakeConsumer, MemorySink, Clock, threading.Event, ConsumerLoop]:
        consumer, sink, clock, stop = FakeConsumer([0, 1]), MemorySink(stored), Clock(), threading.Event()
        flusher = Flusher(sink, on_report=lambda b, r: None, on_retry=lambda e: None)
        loop = ConsumerLoop(
            consumer=consumer,  # type: ignore[arg-type]
            topic="t",
            sink=sink,
            flusher=flusher,
            metrics=Metrics(),
            max_batch_events=max_batch,
            flush_interval_ms=interval_ms,
            max_buffered_events=bound,
            shutdown_deadline_s=5,
            clock=clock,
        )
        thread = threading.Thread(target=loop.run, args=(stop,), daemon=True)
        thread.start()
        threads.append((thread, stop))
        return consumer, sink, clock, stop, loop

    yield start
    for thread, stop in threads:
        stop.set()
        thread.join(10)


def test_flushes_when_the_batch_reaches_max_events(harness: Any) -> None:
    consumer, sink, _clock, _stop, _loop = harness(max_batch=10, interval_ms=60_000, bound=100)
    with consumer.lock:
        consumer.queue.extend(FakeMessage(order(i), 0, i) for i in range(10))
    wait_for(lambda: len(sink.batches) == 1)
    assert sink.batches[0].size == 10
    wait_for(lambda: consumer.commits == [{0: 10}])


def test_flushes_a_small_batch_once_the_interval_passes(harness: Any) -> None:
    consumer, sink, clock, _stop, _loop = harness(max_batch=1000, interval_ms=500, bound=2000)
    with consumer.lock:
        consumer.queue.extend(FakeMessage(order(i), 1, i) for i in range(3))
    wait_for(lambda: not consumer.queue)
    time.sleep(0.05)
    assert sink.batches == []  # the clock has not moved
    clock.now += 0.6
    wait_for(lambda: len(sink.batches) == 1)
    assert sink.batches[0].size == 3


def test_kafka_commit_waits_for_the_database_and_backpressure_pauses(harness: Any) -> None:
    consumer, sink, _clock, _stop, _loop = harness(max_batch=5, interval_ms=60_000, bound=10)
    sink.gate.clear()  # the database hangs
    with consumer.lock:
        consumer.queue.extend(FakeMessage(order(i), 0, i) for i in range(40))
    wait_for(lambda: consumer.paused == {0, 1})  # first batch in flight, second full
    assert consumer.commits == [] and sink.batches == []
    sink.gate.set()
    wait_for(lambda: sum(b.size for b in sink.batches) == 40)
    wait_for(lambda: bool(consumer.commits) and consumer.commits[-1] == {0: 40})
    assert consumer.paused == set()


def test_assignment_seeks_to_offsets_stored_in_postgres(harness: Any) -> None:
    consumer, _sink, _clock, _stop, _loop = harness(stored={1: 42})
    wait_for(lambda: len(consumer.assigned) == 2)
    offsets = {tp.partition: tp.offset for tp in consumer.assigned}
    assert offsets[1] == 42 and offsets[0] < 0  # 0 has nothing stored: the group's committed offset


def test_stop_flushes_what_is_buffered_and_closes(harness: Any) -> None:
    consumer, sink, _clock, stop, _loop = harness(max_batch=1000, interval_ms=60_000, bound=2000)
    with consumer.lock:
        consumer.queue.extend(FakeMessage(order(i), 0, i) for i in range(7))
    wait_for(lambda: not consumer.queue)
    stop.set()
    wait_for(lambda: consumer.closed)
    assert sum(b.size for b in sink.batches) == 7 and {0: 7} in consumer.commits


def test_orphans_go_into_the_next_batch_and_hold_back_the_commit(harness: Any) -> None:
    consumer, sink, clock, _stop, _loop = harness(max_batch=5, interval_ms=500, bound=100)
    sink.orphan_at = {(0, 2)}
    with consumer.lock:
        consumer.queue.extend(FakeMessage(order(i), 0, i) for i in range(5))
    wait_for(lambda: len(sink.batches) == 1)
    wait_for(lambda: consumer.commits == [{0: 2}])  # not past the orphan
    clock.now += 0.6  # nothing new arrives: the orphan alone is flushed after the interval
    wait_for(lambda: len(sink.batches) == 2)
    second = sink.batches[1]
    assert second.carries == {(0, 2): 1} and second.size == 1 and not second.events_by_type
    assert second.next_offsets == {0: 5}
    wait_for(lambda: consumer.commits[-1] == {0: 5})


def test_the_last_batch_before_stopping_parks_orphans(harness: Any) -> None:
    consumer, sink, _clock, stop, _loop = harness(max_batch=5, interval_ms=60_000, bound=100)
    sink.orphan_at = {(1, 0)}
    with consumer.lock:
        consumer.queue.extend(FakeMessage(order(i), 1, i) for i in range(5))
    wait_for(lambda: consumer.commits == [{1: 0}])
    stop.set()
    wait_for(lambda: consumer.closed)
    assert [b.closing for b in sink.batches] == [False, True]
    assert sink.batches[1].carries == {(1, 0): 1} and {1: 5} in consumer.commits


def test_events_held_without_a_committed_flush_count_as_a_stall(harness: Any) -> None:
    consumer, sink, clock, _stop, loop = harness(max_batch=5, interval_ms=500, bound=100)
    clock.now += 100  # idle: nothing held, so no stall however long
    time.sleep(0.05)
    assert loop.stalled_s() == 0
    sink.gate.clear()  # the database hangs
    with consumer.lock:
        consumer.queue.extend(FakeMessage(order(i), 0, i) for i in range(5))
    wait_for(lambda: not consumer.queue)
    clock.now += 90
    assert loop.stalled_s() >= 90
    sink.gate.set()
    wait_for(lambda: bool(consumer.commits))
    wait_for(lambda: loop.stalled_s() == 0)
