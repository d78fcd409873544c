"""The consumer loop: Kafka -> per-table buffers -> flusher, with offsets committed after the database.

Contract of ``ConsumerLoop.run(stop)``: it runs on the calling thread, which
owns the Kafka consumer (rebalance callbacks run here too), until ``stop`` is
set; then it stops polling, flushes what it holds within the shutdown
deadline, commits, and closes. It raises ``FatalError`` when it cannot go on.

Lanes: each flusher is a lane that owns a share of the assigned partitions
(stable while held); messages go to their partition's lane, each lane's batch
is flushed on its own (N events, T ms, or once idle and a linger old) and no
batch passes N. A partition's offsets are committed after its lane commits.

Offsets: the offsets stored in PostgreSQL (``progress``) are the truth, written in the
flush's own transaction; on assignment the consumer seeks there, so a crash
between the database commit and the Kafka commit replays nothing. Kafka
commits follow each flush for the benefit of lag tooling.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_INVALID,
    Consumer,
    TopicPartition,
)

from pme_exporter.breaker import DeadLetterFlood
from pme_exporter.buffers import Batch
from pme_exporter.decode import DEFAULT_MAX_MESSAGE_BYTES, Decoder
from pme_exporter.errors import FatalError, KafkaFatalError, RetryableError, retry_reason
from pme_exporter.flusher import Flusher, FlushFailed
from pme_exporter.kafka_config import KafkaErrorPolicy
from pme_exporter.lanes import Lane, Lanes
from pme_exporter.logs import ledger_log
from pme_exporter.metrics import Metrics
from pme_exporter.progress import CarryPolicy, PartitionProgress, TopicRecreated
from pme_exporter.sink import Sink

log = ledger_log(logging.getLogger(__name__))

_POLL_TIMEOUT_S = 0.1
# How often a lane whose batch is due, but whose previous flush still runs, looks again:
# consume() otherwise holds the batch until its timeout, whenever the flush ends.
_BUSY_POLL_S = 0.005
_FLUSHING_POLL_S = 0.02
_MAX_POLL_MESSAGES = 5_000
_LAG_EVERY_S = 1.0
# Full buffers wait this long for the running flush before pausing partitions.
# Pausing drops librdkafka's prefetched messages and refetches them on resume,
# which cost a third of the throughput when it happened on every batch.
_BACKPRESSURE_WAIT_S = 1.0
_TOPIC_ID_WAIT_S = 30.0
T = TypeVar("T")


class ConsumerLoop:
    def __init__(
        self,
        *,
        consumer: Consumer,
        topic: str,
        sink: Sink,
        flushers: Sequence[Flusher],
        metrics: Metrics,
        max_batch_events: int,
        flush_interval_ms: int,
        max_buffered_events: int,
        shutdown_deadline_s: float,
        flush_linger_ms: int = 0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        column_types: Mapping[str, Mapping[str, str]] | None = None,
        kafka_errors: KafkaErrorPolicy | None = None,
        topic_id: Callable[[], str] | None = None,
        start_new_life: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._consumer = consumer
        self._topic = topic
        self._sink = sink
        self._metrics = metrics
        self._decoder = Decoder(max_message_bytes, column_types)
        self._max_batch = max_batch_events
        self._interval_s = flush_interval_ms / 1000.0
        # 0 turns adaptive flushing off: a batch waits for N events or T ms.
        self._linger_s = flush_linger_ms / 1000.0 if flush_linger_ms > 0 else None
        self._due_after_s = self._linger_s if self._linger_s is not None else self._interval_s
        self._max_buffered = max_buffered_events
        self._deadline_s = shutdown_deadline_s
        self._clock = clock
        # The topic's ID as Kafka gives it now (raises when it cannot be read); None: lives
        # are not tracked. A new ID is a new life of the topic (progress.enter_topic_life).
        self._topic_id = topic_id
        self._start_new_life = start_new_life
        self._life = 1
        self._tracks_parents = len(flushers) > 1  # children wait for parents of other lanes
        self._lanes = Lanes(flushers, self._new_batch, clock())
        self._progress = PartitionProgress()
        self._paused_since: float | None = None
        self._stop: threading.Event | None = None
        self._kafka_errors = kafka_errors or KafkaErrorPolicy(metrics, topic_wait_s=60.0, clock=clock)
        self._last_progress_at = clock()
        self._last_turn_at = clock()
        self._shutdown_deadline: float | None = None
        # Why the worker stopped consuming (the dead-letter breaker), for /readyz and the log.
        self.halted: str | None = None
        metrics.buffer_capacity.set(max_buffered_events)

    @property
    def lanes(self) -> Lanes:
        return self._lanes

    def run(self, stop: threading.Event) -> None:
        self._stop = stop
        self._consumer.subscribe(
            [self._topic], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )
        next_lag_at = 0.0
        try:
            while not stop.is_set():
                self._kafka_errors.raise_if_fatal()
                if self.halted is None:
                    self._collect()
                    self._maybe_flush()
                messages = self._poll()
                if messages and self.halted is None:
                    self._add(messages)
                now = self._last_turn_at = self._clock()
                if self._lanes.buffered() == 0 and self._lanes.idle():
                    self._last_progress_at = now
                if now >= next_lag_at:
                    self._update_lag()
                    next_lag_at = now + _LAG_EVERY_S
        finally:
            self._shutdown()

    def still_s(self) -> float:
        """How long since the loop last turned (polled and handed over what was due)."""
        return max(0.0, self._clock() - self._last_turn_at)

    def stalled_s(self) -> float:
        """How long events have been held with no flush committing (0 when nothing is held)."""
        return max(0.0, self._clock() - self._last_progress_at)

    # -- the data path ------------------------------------------------------
    def _poll(self) -> list[Any]:
        """The next messages, taken so that no batch waits on the poll past its due time.

        ``consume(n, timeout)`` returns when it has n messages or the timeout passes.
        With nothing buffered, ``poll`` instead wakes at the first message, and what
        else has arrived is taken without waiting; the batch's linger starts then.
        """
        room = max(1, self._room())  # at least one, to serve the group's callbacks
        timeout = self._poll_timeout()
        if timeout is not None:
            return self._consumer.consume(num_messages=room, timeout=timeout)
        # A running flush's result (its offsets to commit) is collected between polls.
        flushing = not self._lanes.idle()
        first = self._consumer.poll(_FLUSHING_POLL_S if flushing else _POLL_TIMEOUT_S)
        if first is None:
            return []
        if room == 1:
            return [first]
        return [first, *self._consumer.consume(num_messages=room - 1, timeout=0)]

    def _poll_timeout(self) -> float | None:
        """Until the soonest buffered batch is due (its linger, or T without one); a due
        batch whose lane is still flushing looks again shortly. None: nothing is waiting."""
        if self.halted is not None:
            return None
        soonest: float | None = None
        for lane in self._lanes:
            if lane.batch.size == 0:
                continue
            due_in = self._due_after_s - lane.batch.age_s()
            if due_in <= 0 or lane.batch.size >= self._max_batch:
                due_in = _BUSY_POLL_S
            soonest = due_in if soonest is None else min(soonest, due_in)
        if soonest is None:
            return None
        return min(_POLL_TIMEOUT_S, max(_BUSY_POLL_S, soonest))

    def _new_batch(self) -> Batch:
        return Batch(
            decoder=self._decoder, clock=self._clock, life=self._life, track_parents=self._tracks_parents
        )

    def _add(self, messages: list[Any]) -> None:
        good = messages
        if any(m.error() is not None for m in messages):
            good = []
            for m in messages:
                err = m.error()
                if err is None:
                    good.append(m)
                else:
                    self._kafka_errors.on_error(err)
        if good:
            self._kafka_errors.topic_seen()
        self._lanes.route(good)
        self._metrics.buffered_events.set(self._lanes.buffered())

    def _due(self, lane: Lane, now: float) -> bool:
        batch = lane.batch
        if batch.size >= self._max_batch:
            return True
        if batch.size > 0:
            age = batch.age_s()
            # Adaptive: an idle lane flushes once its batch is a linger old, so a quiet
            # ledger is written at once and a busy one builds batches while it waits.
            if age >= self._interval_s or (self._linger_s is not None and age >= self._linger_s):
                return True
        # Every flush adopts parked children whose parents are stored, whoever wrote
        # the parent; an idle lane re-checks soon for a parent that another lane (or
        # worker) committed at the same moment as the child was parked.
        return lane.parked_waiting > 0 and now - lane.last_flush_at >= 2 * self._interval_s

    def _maybe_flush(self) -> None:
        now = self._clock()
        for lane in self._lanes:
            if lane.flusher.idle() and self._due(lane, now):
                self._submit(lane)
        blocked = self._blocked_lane() if self._paused_since is None else None
        if blocked is not None:
            waited_from = self._clock()
            finished = blocked.flusher.wait_idle(_BACKPRESSURE_WAIT_S)
            self._metrics.paused_seconds.inc(max(0.0, self._clock() - waited_from))
            if finished:
                self._collect()
                self._submit(blocked)
            else:  # a long flush or a database outage: keep polling for group callbacks
                self._pause()

    def _blocked_lane(self) -> Lane | None:
        return self._lanes.blocked(self._max_batch, self._max_buffered)

    def _room(self) -> int:
        return min(self._lanes.room(self._max_batch, self._max_buffered), _MAX_POLL_MESSAGES)

    def _submit(self, lane: Lane) -> None:
        batch, lane.batch = lane.batch, self._new_batch()
        if self._tracks_parents and not batch.carry_policy.closing:
            # A closing batch holds nothing back: no later batch of this lane would take it.
            batch.hold_children(self._lanes.pending_parents(besides=lane))
        lane.last_flush_at = self._clock()
        lane.in_flight = batch
        lane.flusher.submit(batch)
        self._metrics.buffered_events.set(self._lanes.buffered())
        if self._paused_since is not None and self._blocked_lane() is None:
            self._resume()

    def _collect(self) -> None:
        for lane in self._lanes:
            self._collect_lane(lane)

    def _collect_lane(self, lane: Lane) -> None:
        """Takes a lane's finished flush report and commits its partitions' offsets to Kafka."""
        try:
            report = lane.flusher.take_result()
        except FlushFailed as exc:
            if isinstance(exc.__cause__, DeadLetterFlood):
                self._halt(str(exc.__cause__))
                return
            raise FatalError(f"a batch could not be written: {exc}") from exc
        if report is None:
            return
        lane.in_flight = None
        self._last_progress_at = self._clock()
        progress = self._progress
        # Orphans of partitions given up (or moved to another lane) meanwhile stay
        # behind: their saved offset points at them, so the owner reads them again.
        lane.batch.carry(
            [o for o in report.carried if self._lanes.of(o.partition) is lane], report.end_offsets
        )
        lane.parked_waiting = report.parked_waiting
        committable = progress.saved(report.saved_offsets, report.newest_event_ms)
        to_commit = [TopicPartition(self._topic, p, o) for p, o in committable.items()]
        if to_commit:
            try:
                self._consumer.commit(offsets=to_commit, asynchronous=True)
            except Exception as exc:  # PostgreSQL holds the truth; a failed Kafka commit costs nothing
                log.debug("Kafka commit failed: %s", exc)

    def _wait_all_idle(self, deadline: float) -> bool:
        return all(lane.flusher.wait_idle(max(0.0, deadline - self._clock())) for lane in self._lanes)

    def _drain(self, deadline: float) -> bool:
        """Writes everything held (in flight and buffered) in every lane; True if all of it committed."""
        if not self._wait_all_idle(deadline):
            return False
        self._collect()
        submitted = False
        for lane in self._lanes:
            # A lane that saw children parked flushes once more, if only to adopt those
            # whose parents another lane committed meanwhile.
            if lane.batch.size > 0 or lane.parked_waiting > 0:
                # No later batch will take orphans: park them.
                lane.batch.carry_policy = CarryPolicy(lane.batch.carry_policy.max_carries, closing=True)
                self._submit(lane)
                submitted = True
        if submitted:
            if not self._wait_all_idle(deadline):
                return False
            self._collect()
        return True

    def _halt(self, why: str) -> None:
        """Stops consuming for good (until a restart) and keeps the stored offsets: nothing
        of the refused batch, or of what was read after it, is committed. Another lane's
        flush that trips the breaker too adds nothing."""
        if self.halted is not None:
            return
        self.halted = why
        self._lanes.empty_batches(self._new_batch)
        self._metrics.buffered_events.set(0)
        assignment = self._consumer.assignment()
        if assignment:
            self._consumer.pause(assignment)
        log.error(
            "Halted by the dead-letter breaker: %s. Nothing of that batch was committed; "
            "find the cause (see exporter_dead_letters and the flush logs), then restart. "
            "PME_BREAKER_RATIO=1 turns the breaker off.",
            why,
        )

    # -- backpressure -------------------------------------------------------
    def _pause(self) -> None:
        self._paused_since = self._clock()
        assignment = self._consumer.assignment()
        if assignment:
            self._consumer.pause(assignment)

    def _resume(self) -> None:
        if self._paused_since is not None:
            self._metrics.paused_seconds.inc(self._clock() - self._paused_since)
        self._paused_since = None
        assignment = self._consumer.assignment()
        if assignment:
            self._consumer.resume(assignment)

    # -- lanes ----------------------------------------------------------------

    # -- rebalance callbacks (run inside consume()) ---------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        numbers = [tp.partition for tp in partitions]
        self._enter_life()
        stored = self._stored_offsets(numbers)
        # Nothing stored: Kafka's committed offset, else the earliest; in a later life of
        # the topic, its first offset (a commit of the old life means nothing in this one).
        unstored = OFFSET_BEGINNING if self._life > 1 else OFFSET_INVALID
        for tp in partitions:
            tp.offset = stored.get(tp.partition, unstored)
        self._lanes.place(numbers)
        consumer.incremental_assign(partitions)
        self._kafka_errors.topic_seen()
        if self._paused_since is not None or self.halted is not None:
            consumer.pause(partitions)
        self._progress.assign(numbers, stored)
        lanes = self._lanes.layout()
        log.info(
            "Assigned partitions %s, resuming at %s%s",
            sorted(numbers),
            stored,
            f"; lanes {lanes}" if len(self._lanes) > 1 else "",
            extra={"partitions": sorted(numbers), "offsets": stored, "life": self._life},
        )

    def _stored_offsets(self, partitions: list[int]) -> dict[int, int]:
        return self._retrying(lambda: self._sink.stored_offsets(partitions), "Reading stored offsets")

    def _retrying(self, read: Callable[[], T], what: str) -> T:
        """``read`` from the database, retried with backoff while it is away, until a stop."""
        delay = 0.2
        while True:
            try:
                return read()
            except RetryableError as exc:
                if self._stop is not None and self._stop.is_set():
                    raise FatalError("stopping while the database was unreachable") from exc
                self._metrics.db_retries.labels(retry_reason(exc)).inc()
                log.warning("%s failed, retrying: %s", what, exc)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _enter_life(self) -> None:
        """Finds which life of the topic the assignment is in; a new one starts afresh: what
        is held of the old life is written first, and its positions are forgotten."""
        if self._topic_id is None:
            return
        topic_id = self._read_topic_id(self._topic_id)
        try:
            life = self._retrying(
                lambda: self._sink.topic_life(topic_id, allow_new=self._start_new_life),
                "Reading the topic's life",
            )
        except TopicRecreated as exc:
            raise KafkaFatalError(
                f"{exc}; nothing of its new life was exported. PME_TOPIC_RECREATED=restart exports "
                "the new life from its first offset (README: A recreated topic is a new life of it)"
            ) from None
        if life.previous_id is not None:
            log.warning(
                "The topic %s was deleted and created again (topic ID %s, was %s): "
                "exporting its life %d from its first offsets",
                self._topic,
                life.topic_id,
                life.previous_id,
                life.life,
            )
        if life.life != self._life:
            if not self._drain(self._clock() + self._deadline_s):
                raise FatalError("could not flush what was held of the topic's earlier life")
            self._life = life.life
            self._lanes.empty_batches(self._new_batch)
            self._progress = PartitionProgress()

    def _read_topic_id(self, read: Callable[[], str]) -> str:
        """The topic's ID from Kafka, retried for up to _TOPIC_ID_WAIT_S."""
        started = self._clock()
        while True:
            try:
                return read()
            except Exception as exc:
                if self._clock() - started >= _TOPIC_ID_WAIT_S or (
                    self._stop is not None and self._stop.is_set()
                ):
                    raise FatalError(f"the topic's ID could not be read from Kafka: {exc}") from exc
                log.warning("Reading the topic's ID failed, retrying: %s", exc)
                time.sleep(1.0)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        numbers = sorted(tp.partition for tp in partitions)
        if self._shutdown_deadline is not None:
            # Closing: the shutdown drain already ran, within the one deadline. What is
            # not committed by then is read again by the next owner: nothing is lost.
            try:
                drained = self._drain(self._shutdown_deadline)
            except FatalError as exc:
                log.error("%s", exc)
                drained = False
            if drained:
                log.info("Revoked partitions %s after flushing", numbers, extra={"partitions": numbers})
            else:
                log.warning("Gave up partitions %s with writes left for the next owner", numbers)
            self._progress.revoke(numbers)
            self._lanes.unplace(numbers)
            return
        # Every lane is drained, not only the revoked partitions' lanes: a lane's batch
        # may hold children of their parents, and a drain is rare and short.
        if not self._drain(self._clock() + self._deadline_s):
            # The new owner reads from the stored offsets, so nothing is lost; but our
            # buffer may mix partitions we keep, so restart cleanly rather than guess.
            raise FatalError(f"could not flush before giving up partitions {numbers}")
        self._progress.revoke(numbers)
        self._lanes.unplace(numbers)
        for p in numbers:
            self._forget_lag(p)
        log.info("Revoked partitions %s after flushing", numbers, extra={"partitions": numbers})

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Lost, not revoked: another member may own them already. Drop what we
        # hold; it is not committed, and the owner re-reads it from the stored offsets.
        numbers = sorted(tp.partition for tp in partitions)
        self._lanes.empty_batches(self._new_batch)
        self._progress.revoke(numbers)
        self._lanes.unplace(numbers)
        for p in numbers:
            self._forget_lag(p)
        log.warning("Lost partitions %s; dropped the unflushed buffer", numbers)

    # -- lag ------------------------------------------------------------------
    def _forget_lag(self, partition: int) -> None:
        with contextlib.suppress(KeyError):  # no lag was ever reported for it
            self._metrics.lag_messages.remove(str(partition))

    def _update_lag(self) -> None:
        highs: dict[int, int] = {}
        for p in sorted(self._progress.assigned):
            try:
                _low, highs[p] = self._consumer.get_watermark_offsets(
                    TopicPartition(self._topic, p), cached=True
                )
            except Exception as exc:  # a partition in flux; the next round tells
                log.debug("watermarks of partition %d unavailable: %s", p, exc)
        behind, seconds = self._progress.lag(highs)
        for p, messages in behind.items():
            self._metrics.lag_messages.labels(str(p)).set(messages)
        self._metrics.lag_seconds.set(seconds)

    # -- shutdown -------------------------------------------------------------
    def _shutdown(self) -> None:
        deadline = self._shutdown_deadline = self._clock() + self._deadline_s
        try:
            if self.halted is None and not self._drain(deadline):
                log.warning("Shutdown deadline passed; unflushed events will be read again")
                for lane in self._lanes:
                    lane.flusher.abandon()
        except FatalError as exc:
            log.error("%s", exc)
        committed = [TopicPartition(self._topic, p, o) for p, o in self._progress.committable().items()]
        if committed:
            try:
                self._consumer.commit(offsets=committed, asynchronous=False)
            except Exception as exc:
                log.debug("final Kafka commit failed: %s", exc)
        self._consumer.close()
