"""The consumer loop's policy, against a fake consumer, an in-memory sink and an injected clock."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
from confluent_kafka import OFFSET_BEGINNING, TopicPartition

from pme_exporter.consumer import ConsumerLoop
from pme_exporter.flusher import Flusher
from pme_exporter.kafka_config import PREFETCH_DEFAULTS, consumer_config
from pme_exporter.metrics import Metrics
from pme_exporter.settings import Settings
from tests.fakes import FakeConsumer, FakeMessage, MemorySink


def order(nid: int) -> bytes:
    return orjson.dumps({"type": "Order", "ts": "2025-11-29T09:00:00Z", "data": {"nid": nid}})


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
        max_batch: int = 10,
        interval_ms: int = 1000,
        bound: int = 20,
        stored: dict[int, int] | None = None,
        linger_ms: int = 0,
        lanes: int = 1,
        partitions: tuple[int, ...] = (0, 1),
        topic_id: Callable[[], str] | None = None,
        lives: tuple[str, ...] = (),
    ) -> tuple[FakeConsumer, MemorySink, Clock, threading.Event, ConsumerLoop]:
        consumer, sink = FakeConsumer(list(partitions)), MemorySink(stored)
        sink.lives = list(lives)
        clock, stop = Clock(), threading.Event()
        flushers = [Flusher(sink, on_report=lambda r: None, on_retry=lambda e: None) for _ in range(lanes)]
        loop = ConsumerLoop(
            consumer=consumer,  # type: ignore[arg-type]
            topic="t",
            sink=sink,
            flushers=flushers,
            flush_linger_ms=linger_ms,
            metrics=Metrics(),
            max_batch_events=max_batch,
            flush_interval_ms=interval_ms,
            max_buffered_events=bound,
            shutdown_deadline_s=5,
            topic_id=topic_id,
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


def ack(nid: int) -> bytes:
    return orjson.dumps({"type": "OrderAck", "ts": "2025-11-29T09:00:01Z", "data": {"order_nid": nid}})


def test_orphans_go_into_the_next_batch_and_hold_back_the_commit(harness: Any) -> None:
    consumer, sink, clock, _stop, _loop = harness(max_batch=5, interval_ms=500, bound=100)
    with consumer.lock:  # the ack at offset 2 comes before its order, which is on partition 1
        consumer.queue.extend(FakeMessage(ack(99) if i == 2 else order(i), 0, i) for i in range(5))
    wait_for(lambda: len(sink.batches) == 1)
    wait_for(lambda: consumer.commits == [{0: 2}])  # not past the orphan
    with consumer.lock:
        consumer.queue.append(FakeMessage(order(99), 1, 0))
    wait_for(lambda: not consumer.queue)

    def flushed_past_the_orphan() -> bool:
        clock.now += 0.6  # each step lets the next batch (the orphan, carried, and the parent) flush
        time.sleep(0.02)
        return bool(consumer.commits) and consumer.commits[-1].get(0) == 5

    wait_for(flushed_past_the_orphan)
    assert sink.batches[1].times_carried == {(0, 2): 1}  # carried, not decoded again
    assert len(sink.tables()["order_acks"]) == 1 and not sink.parked


def test_the_last_batch_before_stopping_parks_orphans(harness: Any) -> None:
    consumer, sink, _clock, stop, _loop = harness(max_batch=5, interval_ms=60_000, bound=100)
    with consumer.lock:
        consumer.queue.extend(FakeMessage(ack(77) if i == 0 else order(i), 1, i) for i in range(5))
    wait_for(lambda: consumer.commits == [{1: 0}])
    stop.set()
    wait_for(lambda: consumer.closed)
    assert [b.carry_policy.closing for b in sink.batches] == [False, True]
    assert sink.batches[1].times_carried == {(1, 0): 1} and {1: 5} in consumer.commits
    assert list(sink.parked) == [(1, 0)]


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


def test_lost_partitions_drop_the_unflushed_buffer_and_commit_nothing_for_them(harness: Any) -> None:
    consumer, sink, _clock, _stop, loop = harness(max_batch=1000, interval_ms=60_000, bound=2000)
    with consumer.lock:
        consumer.queue.extend(FakeMessage(order(i), 0, i) for i in range(4))
    wait_for(lambda: not consumer.queue)
    time.sleep(0.05)  # taken into the buffer
    # The group says partition 0 is lost (another member may own it): what we hold is not ours to write.
    loop._on_lost(consumer, [TopicPartition("t", 0)])
    stop_and_wait = _stop
    stop_and_wait.set()
    wait_for(lambda: consumer.closed)
    assert sum(b.size for b in sink.batches) == 0 and sink.applied == []
    assert all(0 not in c for c in consumer.commits)


def test_adaptive_flushing_writes_a_single_event_after_the_linger_not_after_the_interval(
    harness: Any,
) -> None:
    consumer, sink, clock, _stop, loop = harness(max_batch=1000, interval_ms=60_000, bound=2000, linger_ms=20)
    with consumer.lock:
        consumer.queue.append(FakeMessage(order(1), 0, 0))
    wait_for(lambda: loop.lanes[0].batch.size == 1)  # buffered, its age counted from now
    clock.now += 0.019
    time.sleep(0.05)
    assert sink.batches == []  # younger than the linger
    clock.now += 0.002
    wait_for(lambda: len(sink.batches) == 1)
    assert sink.batches[0].size == 1 and clock.now - 1000.0 < 60  # long before T


def test_a_backlog_still_yields_batches_of_n_with_adaptive_flushing(harness: Any) -> None:
    consumer, sink, clock, _stop, _loop = harness(max_batch=10, interval_ms=60_000, bound=40, linger_ms=20)
    sink.gate.clear()  # the database is slow: the backlog builds while the first batch is written
    with consumer.lock:
        consumer.queue.extend(FakeMessage(order(i), 0, i) for i in range(35))
    time.sleep(0.1)
    sink.gate.set()
    wait_for(lambda: sum(b.size for b in sink.batches) == 30)
    clock.now += 0.05  # the last five wait only for the linger
    wait_for(lambda: sum(b.size for b in sink.batches) == 35)
    assert [b.size for b in sink.batches] == [10, 10, 10, 5]


def test_lanes_own_their_partitions_and_flush_them_apart(harness: Any) -> None:
    consumer, sink, clock, _stop, loop = harness(
        max_batch=1000, interval_ms=500, bound=2000, lanes=2, partitions=(0, 1, 2, 3)
    )
    wait_for(lambda: len(consumer.assigned) == 4)
    assert [sorted(lane.partitions) for lane in loop.lanes] == [[0, 2], [1, 3]]
    with consumer.lock:
        consumer.queue.extend(FakeMessage(order(10 * p + i), p, i) for p in range(4) for i in range(3))
    wait_for(lambda: not consumer.queue)
    clock.now += 0.6
    wait_for(lambda: len(sink.batches) == 2)
    assert sorted(sorted(b.next_offsets) for b in sink.batches) == [[0, 2], [1, 3]]
    wait_for(lambda: {p: o for c in consumer.commits for p, o in c.items()} == {0: 3, 1: 3, 2: 3, 3: 3})


def test_a_child_waits_in_python_while_its_parent_is_in_another_lane_s_unwritten_batch(
    harness: Any,
) -> None:
    consumer, sink, clock, _stop, loop = harness(
        max_batch=1000, interval_ms=500, bound=2000, lanes=2, partitions=(0, 1)
    )
    wait_for(lambda: len(consumer.assigned) == 2)
    assert [sorted(lane.partitions) for lane in loop.lanes] == [[0], [1]]
    with consumer.lock:  # the order on lane 0's partition, its ack on lane 1's
        consumer.queue.extend([FakeMessage(order(99), 0, 0), FakeMessage(ack(99), 1, 0)])
    wait_for(lambda: not consumer.queue)
    clock.now += 0.6  # both due: lane 0 is handed its batch first, so the order is in flight

    def ack_written() -> bool:
        clock.now += 0.6
        time.sleep(0.02)
        return len(sink.tables()["order_acks"]) == 1

    wait_for(ack_written)
    lane_1 = [b for b in sink.batches if 1 in b.next_offsets]
    assert [(o.table, o.offset) for o in lane_1[0].held] == [("order_acks", 0)]
    assert "order_acks" not in lane_1[0].tables  # never staged while its parent was unwritten
    staged = [b for b in lane_1 if "order_acks" in b.tables]
    assert len(staged) == 1 and staged[0].times_carried == {(1, 0): 0}  # met once, as no orphan
    wait_for(lambda: {p: o for c in consumer.commits for p, o in c.items()} == {0: 1, 1: 1})


def test_prefetch_defaults_yield_to_the_operator_but_guarantees_do_not() -> None:
    settings = Settings.from_env(
        {
            "PME_RDKAFKA_QUEUED_MAX_MESSAGES_KBYTES": "1024",
            "PME_RDKAFKA_MAX_PARTITION_FETCH_BYTES": "65536",
        }
    )
    config = consumer_config(settings.kafka_config())
    assert config["queued.max.messages.kbytes"] == "1024"
    assert config["max.partition.fetch.bytes"] == "65536"
    assert config["fetch.queue.backoff.ms"] == PREFETCH_DEFAULTS["fetch.queue.backoff.ms"]
    # Offsets are stored and committed by the exporter alone, whatever the base says.
    forced = consumer_config({"enable.auto.commit": True, "enable.auto.offset.store": True})
    assert forced["enable.auto.commit"] is False and forced["enable.auto.offset.store"] is False
    assert consumer_config({})["max.partition.fetch.bytes"] == PREFETCH_DEFAULTS["max.partition.fetch.bytes"]


def test_the_poll_waits_only_until_the_soonest_batch_is_due(harness: Any) -> None:
    consumer, sink, clock, _stop, loop = harness(max_batch=1000, interval_ms=60_000, bound=2000, linger_ms=20)
    # Nothing buffered: poll() wakes at the first message, however long it may wait.
    wait_for(lambda: ("poll", 0.1) in consumer.latest_waits(1000))
    with consumer.lock:
        consumer.queue.append(FakeMessage(order(1), 0, 0))
    wait_for(lambda: loop.lanes[0].batch.size == 1)
    # The batch's whole linger (the clock stands still), poll after poll.
    wait_for(lambda: consumer.latest_waits(2) == [("consume", 0.02)] * 2)
    clock.now += 0.012
    wait_for(lambda: consumer.latest_waits(1)[0][1] == pytest.approx(0.008))  # what is left of it
    sink.gate.clear()  # the flush of this batch will not finish
    clock.now += 0.01
    wait_for(lambda: len(sink.batches) == 0 and consumer.latest_waits(1) == [("poll", 0.02)])
    # A flush runs: the poll returns soon to collect its result, or at the first message.
    with consumer.lock:
        consumer.queue.append(FakeMessage(order(2), 0, 1))
    wait_for(lambda: loop.lanes[0].batch.size == 1)
    clock.now += 0.05
    # Due, but its lane is still flushing: it looks again every few ms, not after T.
    wait_for(lambda: consumer.latest_waits(3) == [("consume", 0.005)] * 3)
    sink.gate.set()
    wait_for(lambda: sum(b.size for b in sink.batches) == 2)
    assert [b.size for b in sink.batches] == [1, 1]


def test_a_new_topic_id_at_assignment_is_a_new_life_read_from_its_first_offsets(harness: Any) -> None:
    consumer, sink, _clock, _stop, _loop = harness(
        max_batch=2, stored={0: 10, 1: 5}, topic_id=lambda: "B", lives=("A",)
    )
    wait_for(lambda: len(consumer.assigned) == 2)
    assert sink.lives == ["A", "B"] and sink.stored == {}  # the old life's positions are gone
    assert {tp.partition: tp.offset for tp in consumer.assigned} == {0: OFFSET_BEGINNING, 1: OFFSET_BEGINNING}
    with consumer.lock:
        consumer.queue.extend(FakeMessage(order(i), 0, i) for i in range(2))
    wait_for(lambda: len(sink.batches) == 1)
    assert sink.batches[0].life == 2


def test_the_same_topic_id_keeps_the_life_and_its_offsets(harness: Any) -> None:
    consumer, sink, _clock, _stop, _loop = harness(stored={1: 42}, topic_id=lambda: "A", lives=("A",))
    wait_for(lambda: len(consumer.assigned) == 2)
    assert sink.lives == ["A"]
    assert {tp.partition: tp.offset for tp in consumer.assigned}[1] == 42
