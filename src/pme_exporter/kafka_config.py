"""The consumer's librdkafka configuration: what the exporter sets itself, and what an operator may tune.

``GUARANTEES`` are what the exporter's guarantees rest on (offsets committed only
after the database, cooperative rebalancing); no setting may change them.
``PREFETCH_DEFAULTS`` are measured defaults that ``PME_RDKAFKA_*`` may override.
The properties built from first-class variables (``KAFKA_URL``, ...) are
``settings``' own; together these are the managed properties that the
pass-through refuses.
"""

from __future__ import annotations

import logging
from typing import Any

from confluent_kafka import Consumer, KafkaException

from pme_exporter.errors import ConfigError

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
