"""The consumer loop: Kafka -> per-table buffers -> flusher, with offsets committed after the database.

Contract of ``ConsumerLoop.run(stop)``: it runs on the calling thread, which
owns the Kafka consumer (rebalance callbacks run here too), until ``stop`` is
set; then it stops polling, flushes what it holds within the shutdown
deadline, commits, and closes. It raises ``FatalError`` when it cannot go on.

Offsets: ``exporter_offsets`` in PostgreSQL is the truth, written in the
flush's own transaction; on assignment the consumer seeks there, so a crash
between the database commit and the Kafka commit replays nothing. Kafka
commits follow each flush for the benefit of lag tooling.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import OFFSET_INVALID, Consumer, KafkaError, KafkaException, TopicPartition

from pme_exporter.breaker import DeadLetterFlood
from pme_exporter.buffers import Batch
from pme_exporter.decode import DEFAULT_MAX_MESSAGE_BYTES, Decoder
from pme_exporter.errors import ConfigError, KafkaFatalError, RetryableError, retry_reason
from pme_exporter.flusher import Flusher, FlushFailed
from pme_exporter.metrics import Metrics
from pme_exporter.progress import CarryPolicy, PartitionProgress
from pme_exporter.settings import RDKAFKA_PREFIX
from pme_exporter.sink import Sink

log = logging.getLogger(__name__)
# librdkafka's own log lines (its `logger` setting) and client errors: rate-limited (app.py).
KAFKA_LOG = logging.getLogger("pme_exporter.kafka")

_POLL_TIMEOUT_S = 0.1
_MAX_POLL_MESSAGES = 5_000
_LAG_EVERY_S = 1.0
# Full buffers wait this long for the running flush before pausing partitions.
# Pausing drops librdkafka's prefetched messages and refetches them on resume,
# which cost a third of the throughput when it happened on every batch.
_BACKPRESSURE_WAIT_S = 1.0


class FatalError(Exception):
    """The loop cannot continue; the process should exit and be restarted."""


# Errors no retry cures. A fenced static member reaches error_cb as _FATAL.
_FATAL_CODES = frozenset(
    {
        KafkaError._FATAL,
        KafkaError._AUTHENTICATION,
        KafkaError.SASL_AUTHENTICATION_FAILED,
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.GROUP_AUTHORIZATION_FAILED,
        KafkaError.FENCED_INSTANCE_ID,
    }
)
_TOPIC_MISSING_CODES = frozenset({KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC})


class KafkaErrorPolicy:
    """Counts every Kafka client error and decides which ones end the worker.

    ``on_error`` is the client's ``error_cb`` and also sees the errors carried
    by messages; both run on the consumer thread, inside ``consume()`` or
    after it. ``raise_if_fatal`` raises ``KafkaFatalError`` once a fatal error
    was seen, or once the topic has been missing for ``topic_wait_s``.
    """

    def __init__(
        self, metrics: Metrics, *, topic_wait_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._metrics = metrics
        self._topic_wait_s = topic_wait_s
        self._clock = clock
        self._fatal: str | None = None
        self._topic_missing_since: float | None = None

    def on_error(self, err: KafkaError) -> None:
        self._metrics.kafka_errors.labels(err.name()).inc()
        if err.code() == KafkaError._ALL_BROKERS_DOWN:
            self._metrics.kafka_up.set(0)
        if err.fatal() or err.code() in _FATAL_CODES:
            self._fatal = f"{err.name()}: {err.str()}"
        elif err.code() in _TOPIC_MISSING_CODES:
            if self._topic_missing_since is None:
                self._topic_missing_since = self._clock()
                log.warning("[DB-EXPORTER] Kafka: the topic is missing (%s); waiting for it", err.str())
        else:
            KAFKA_LOG.warning("[DB-EXPORTER] Kafka client error: %s", err.str())

    def topic_seen(self) -> None:
        self._topic_missing_since = None
        self._metrics.kafka_up.set(1)

    def raise_if_fatal(self) -> None:
        if self._fatal is not None:
            raise KafkaFatalError(f"Kafka refused the worker: {self._fatal}")
        since = self._topic_missing_since
        if since is not None and self._clock() - since >= self._topic_wait_s:
            raise KafkaFatalError(f"the topic has been missing for {self._clock() - since:.0f}s")


def consumer_config(base: dict[str, Any]) -> dict[str, Any]:
    return {
        **base,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "partition.assignment.strategy": "cooperative-sticky",
        # librdkafka's prefetch queue (per partition in practice) was most of our
        # memory. Small queues were slow only because a full queue postponed the
        # next fetch by fetch.queue.backoff.ms, 1000 ms by default. Measured on a
        # 500k-event, 6-partition backlog (exported in / peak RSS): 32 MB 5.6 s /
        # 219 MB; 8 MB 13.4 s; 8 MB with a 20 ms backoff 5.6 s / 149 MB. On 1M
        # events, 8 MB and 32 MB both took 10.4 s (182 / 229 MB).
        "queued.min.messages": 100_000,
        "queued.max.messages.kbytes": 8_192,
        "fetch.queue.backoff.ms": 20,
        "fetch.wait.max.ms": 100,
        "logger": KAFKA_LOG,
    }


def check_kafka_properties(config: dict[str, Any]) -> None:
    """librdkafka's own judgement of a configuration (names and values), without connecting:
    a client with no bootstrap servers is built and closed. Raises ConfigError."""
    probe = {k: v for k, v in consumer_config(config).items() if k != "bootstrap.servers"}
    try:
        Consumer(probe).close()
    except KafkaException as exc:
        raise ConfigError(
            f"{RDKAFKA_PREFIX}*: librdkafka refused the settings: {exc.args[0].str()}"
        ) from None


class ConsumerLoop:
    def __init__(
        self,
        *,
        consumer: Consumer,
        topic: str,
        sink: Sink,
        flusher: Flusher,
        metrics: Metrics,
        max_batch_events: int,
        flush_interval_ms: int,
        max_buffered_events: int,
        shutdown_deadline_s: float,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        kafka_errors: KafkaErrorPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._consumer = consumer
        self._topic = topic
        self._sink = sink
        self._flusher = flusher
        self._metrics = metrics
        self._decoder = Decoder(max_message_bytes)
        self._max_batch = max_batch_events
        self._interval_s = flush_interval_ms / 1000.0
        self._max_buffered = max_buffered_events
        self._deadline_s = shutdown_deadline_s
        self._clock = clock
        self._batch = self._new_batch()
        self._progress = PartitionProgress()
        self._paused_since: float | None = None
        self._last_flush_at = clock()
        self._parked_waiting = 0
        self._stop: threading.Event | None = None
        self._kafka_errors = kafka_errors or KafkaErrorPolicy(metrics, topic_wait_s=60.0, clock=clock)
        self._last_progress_at = clock()
        self._shutdown_deadline: float | None = None
        # Why the worker stopped consuming (the dead-letter breaker), for /readyz and the log.
        self.halted: str | None = None
        metrics.buffer_capacity.set(max_buffered_events)

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
                room = self._max_buffered - self._batch.size
                messages = self._consumer.consume(
                    num_messages=max(1, min(room, _MAX_POLL_MESSAGES)), timeout=_POLL_TIMEOUT_S
                )
                if messages and self.halted is None:
                    self._add(messages)
                now = self._clock()
                if self._batch.size == 0 and self._flusher.idle():
                    self._last_progress_at = now
                if now >= next_lag_at:
                    self._update_lag()
                    next_lag_at = now + _LAG_EVERY_S
        finally:
            self._shutdown()

    def stalled_s(self) -> float:
        """How long events have been held with no flush committing (0 when nothing is held)."""
        return max(0.0, self._clock() - self._last_progress_at)

    # -- the data path ------------------------------------------------------
    def _new_batch(self) -> Batch:
        return Batch(decoder=self._decoder, clock=self._clock)

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
        self._batch.add(good)
        self._metrics.buffered_events.set(self._batch.size)

    def _maybe_flush(self) -> None:
        batch = self._batch
        now = self._clock()
        due = batch.size >= self._max_batch or (batch.size > 0 and batch.age_s() >= self._interval_s)
        # Every flush adopts parked children whose parents are stored, whoever wrote
        # the parent; an idle worker re-checks now and then for a parent another
        # worker committed at the same moment as the child was parked.
        due = due or (self._parked_waiting > 0 and now - self._last_flush_at >= 10 * self._interval_s)
        if due and self._flusher.idle():
            self._submit()
        elif batch.size >= self._max_buffered and self._paused_since is None:
            waited_from = self._clock()
            finished = self._flusher.wait_idle(_BACKPRESSURE_WAIT_S)
            self._metrics.paused_seconds.inc(max(0.0, self._clock() - waited_from))
            if finished:
                self._collect()
                self._submit()
            else:  # a long flush or a database outage: keep polling for group callbacks
                self._pause()

    def _submit(self) -> None:
        batch, self._batch = self._batch, self._new_batch()
        self._last_flush_at = self._clock()
        self._flusher.submit(batch)
        self._metrics.buffered_events.set(0)
        if self._paused_since is not None:
            self._resume()

    def _collect(self) -> None:
        """Takes a finished flush's report and commits its offsets to Kafka."""
        try:
            report = self._flusher.take_result()
        except FlushFailed as exc:
            if isinstance(exc.__cause__, DeadLetterFlood):
                self._halt(str(exc.__cause__))
                return
            raise FatalError(f"a batch could not be written: {exc}") from exc
        if report is None:
            return
        self._last_progress_at = self._clock()
        progress = self._progress
        # Orphans of partitions given up meanwhile stay behind: their saved offset
        # points at them, so the new owner reads them again.
        self._batch.carry([o for o in report.carried if o.partition in progress.assigned], report.end_offsets)
        self._parked_waiting = report.parked_waiting
        committable = progress.saved(report.saved_offsets, report.newest_event_ms)
        to_commit = [TopicPartition(self._topic, p, o) for p, o in committable.items()]
        if to_commit:
            try:
                self._consumer.commit(offsets=to_commit, asynchronous=True)
            except Exception as exc:  # PostgreSQL holds the truth; a failed Kafka commit costs nothing
                log.debug("Kafka commit failed: %s", exc)

    def _drain(self, deadline: float) -> bool:
        """Writes everything held (in flight and buffered); True if all of it committed."""
        if not self._flusher.wait_idle(max(0.0, deadline - self._clock())):
            return False
        self._collect()
        if self._batch.size > 0:
            # No later batch will take orphans: park them.
            self._batch.carry_policy = CarryPolicy(self._batch.carry_policy.max_carries, closing=True)
            self._submit()
            if not self._flusher.wait_idle(max(0.0, deadline - self._clock())):
                return False
            self._collect()
        return True

    def _halt(self, why: str) -> None:
        """Stops consuming for good (until a restart) and keeps the stored offsets: nothing
        of the refused batch, or of what was read after it, is committed."""
        self.halted = why
        self._batch = self._new_batch()
        self._metrics.buffered_events.set(0)
        assignment = self._consumer.assignment()
        if assignment:
            self._consumer.pause(assignment)
        log.error(
            "[DB-EXPORTER] Halted by the dead-letter breaker: %s. Nothing of that batch was committed; "
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

    # -- rebalance callbacks (run inside consume()) ---------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        numbers = [tp.partition for tp in partitions]
        stored = self._stored_offsets(numbers)
        for tp in partitions:
            tp.offset = stored.get(tp.partition, OFFSET_INVALID)
        consumer.incremental_assign(partitions)
        self._kafka_errors.topic_seen()
        if self._paused_since is not None or self.halted is not None:
            consumer.pause(partitions)
        self._progress.assign(numbers, stored)
        log.info("[DB-EXPORTER] Assigned partitions %s, resuming at %s", sorted(numbers), stored)

    def _stored_offsets(self, partitions: list[int]) -> dict[int, int]:
        delay = 0.2
        while True:
            try:
                return self._sink.stored_offsets(partitions)
            except RetryableError as exc:
                if self._stop is not None and self._stop.is_set():
                    raise FatalError("stopping while the database was unreachable") from exc
                self._metrics.db_retries.labels(retry_reason(exc)).inc()
                log.warning("[DB-EXPORTER] Reading stored offsets failed, retrying: %s", exc)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        numbers = sorted(tp.partition for tp in partitions)
        if self._shutdown_deadline is not None:
            # Closing: the shutdown drain already ran, within the one deadline. What is
            # not committed by then is read again by the next owner: nothing is lost.
            try:
                drained = self._drain(self._shutdown_deadline)
            except FatalError as exc:
                log.error("[DB-EXPORTER] %s", exc)
                drained = False
            if drained:
                log.info("[DB-EXPORTER] Revoked partitions %s after flushing", numbers)
            else:
                log.warning(
                    "[DB-EXPORTER] Gave up partitions %s with writes left for the next owner", numbers
                )
            self._progress.revoke(numbers)
            return
        if not self._drain(self._clock() + self._deadline_s):
            # The new owner reads from exporter_offsets, so nothing is lost; but our
            # buffer may mix partitions we keep, so restart cleanly rather than guess.
            raise FatalError(f"could not flush before giving up partitions {numbers}")
        self._progress.revoke(numbers)
        for p in numbers:
            self._forget_lag(p)
        log.info("[DB-EXPORTER] Revoked partitions %s after flushing", numbers)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Lost, not revoked: another member may own them already. Drop what we
        # hold; it is not committed, and the owner re-reads it from exporter_offsets.
        numbers = sorted(tp.partition for tp in partitions)
        self._batch = self._new_batch()
        self._progress.revoke(numbers)
        for p in numbers:
            self._forget_lag(p)
        log.warning("[DB-EXPORTER] Lost partitions %s; dropped the unflushed buffer", numbers)

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
                log.warning("[DB-EXPORTER] Shutdown deadline passed; unflushed events will be read again")
                self._flusher.abandon()
        except FatalError as exc:
            log.error("[DB-EXPORTER] %s", exc)
        committed = [TopicPartition(self._topic, p, o) for p, o in self._progress.committable().items()]
        if committed:
            try:
                self._consumer.commit(offsets=committed, asynchronous=False)
            except Exception as exc:
                log.debug("final Kafka commit failed: %s", exc)
        self._consumer.close()
