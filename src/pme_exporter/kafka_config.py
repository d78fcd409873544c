"""The consumer's librdkafka configuration, and which of Kafka's errors end the worker.

``GUARANTEES`` are what the exporter's guarantees rest on (offsets committed only
after the database, cooperative rebalancing); no setting may change them.
``PREFETCH_DEFAULTS`` are measured defaults that ``PME_RDKAFKA_*`` may override.
The properties built from first-class variables (``KAFKA_URL``, ...) are
``settings``' own; together these are the managed properties that the
pass-through refuses.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from confluent_kafka import Consumer, KafkaError, KafkaException

from pme_exporter.errors import ConfigError, KafkaFatalError
from pme_exporter.logs import ledger_log

if TYPE_CHECKING:
    from pme_exporter.metrics import Metrics

RDKAFKA_PREFIX = "PME_RDKAFKA_"
# librdkafka's own log lines (its `logger` setting) and client errors: rate-limited.
KAFKA_LOG = logging.getLogger("pme_exporter.kafka")

GUARANTEES: dict[str, Any] = {
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
    "auto.offset.reset": "earliest",
    "partition.assignment.strategy": "cooperative-sticky",
}
# Set in code, never from a variable: callbacks and the log bridge.
CALLBACKS = ("logger", "error_cb")

PREFETCH_DEFAULTS: dict[str, Any] = {
    # librdkafka's prefetch was most of our memory. A fetched chunk stays
    # allocated until every message in it is gone, and a queue is counted in
    # compressed bytes, so smaller fetches bound memory more than a smaller
    # queue does. Small queues were slow only while a full one postponed the
    # next fetch by fetch.queue.backoff.ms (1000 ms by default). Measured on a
    # 1M-event, 6-partition lz4 backlog (events/s, peak RSS; pairs from one
    # run): 8 MB queue, 1 MB fetches and 60000 buffered events 51.7k / 270 MB
    # and 57.6k / 270 MB; 4 MB, 256 kB and 30000 53.4k / 159 MB and 61.1k /
    # 159 MB. 256 kB fetches alone took 263 MB to 189-193 MB; 128 kB ones were
    # slower (44k) and no smaller.
    "queued.min.messages": 100_000,
    "queued.max.messages.kbytes": 4_096,
    "max.partition.fetch.bytes": 262_144,
    "fetch.queue.backoff.ms": 20,
    "fetch.wait.max.ms": 100,
}


def consumer_config(base: dict[str, Any]) -> dict[str, Any]:
    """The consumer's configuration: prefetch defaults, then ``base`` (settings), then the guarantees."""
    return {**PREFETCH_DEFAULTS, **base, **GUARANTEES, "logger": KAFKA_LOG}


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
                ledger_log(KAFKA_LOG).warning("Kafka: the topic is missing (%s); waiting for it", err.str())
        else:
            ledger_log(KAFKA_LOG).warning("Kafka client error: %s", err.str())

    def topic_seen(self) -> None:
        self._topic_missing_since = None
        self._metrics.kafka_up.set(1)

    def raise_if_fatal(self) -> None:
        if self._fatal is not None:
            raise KafkaFatalError(f"Kafka refused the worker: {self._fatal}")
        since = self._topic_missing_since
        if since is not None and self._clock() - since >= self._topic_wait_s:
            raise KafkaFatalError(f"the topic has been missing for {self._clock() - since:.0f}s")
