"""Wires the stages together for ``pme-exporter run``; the only place that builds them."""

from __future__ import annotations

import ctypes
import gc
import logging
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TypeVar

import psycopg
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicCollection
from confluent_kafka.admin import AdminClient
from psycopg.conninfo import conninfo_to_dict

from pme_exporter.breaker import DeadLetterBreaker
from pme_exporter.consumer import ConsumerLoop
from pme_exporter.errors import ConfigError, KafkaFatalError, Stopped, is_retryable, retry_reason
from pme_exporter.flusher import Flusher, close_all
from pme_exporter.kafka_config import KAFKA_LOG, KafkaErrorPolicy, consumer_config
from pme_exporter.logs import ledger_log
from pme_exporter.metrics import HealthServer, Metrics
from pme_exporter.migrate import check_migrations, migrate
from pme_exporter.refresher import ReportRefresher
from pme_exporter.schema import live_column_types
from pme_exporter.settings import Settings
from pme_exporter.sink import FlushReport, PostgresSink, count_outcomes

log = ledger_log(logging.getLogger("pme_exporter"))
T = TypeVar("T")

# A server that answers but refuses us (wrong password, no such database) is a
# configuration fault; this short grace covers the refusals of a server that is
# starting up or shutting down, which look the same from here.
REFUSED_GRACE_S = 3.0
_LOG_EVERY_S = 10.0


def tune_gc() -> None:
    """Fewer collections of the young generation, and start-up objects frozen out of them.

    Every event allocates short-lived containers (messages, decoded dicts, source
    tuples). On a 1M-event backlog this took the worker from 4.2 to 3.9 CPU-seconds.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)


# glibc's mallopt parameter for the size from which an allocation gets its own mapping.
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 128 * 1024


def tune_malloc() -> bool:
    """Fixes glibc's mmap threshold at its starting value, 128 KiB; False where there is no glibc.

    glibc raises the threshold each time a mapped block is freed, up to 32 MiB, so a
    batch's growing COPY buffers soon come from the heap, which fragments and is not
    given back. Fixed, they are mapped and unmapped whole, and the soak of
    ``benchmarks/scale.py`` no longer creeps (docs/performance.md).
    """
    try:
        libc = ctypes.CDLL(None)
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    except (OSError, AttributeError):  # not glibc (musl, macOS): its allocator is left alone
        return False


def server_answers(conninfo: str, timeout_s: float = 2.0) -> bool:
    """Whether anything accepts a connection where the database should be.

    libpq reports why a connection failed only as text, with no SQLSTATE; this
    tells "nobody there" (retry) from "the server answered and said no" (a
    setting is wrong) by the transport alone.
    """
    info = conninfo_to_dict(conninfo)
    port = int(str(info.get("port") or 5432).split(",")[0])
    for host in str(info.get("host") or "/var/run/postgresql").split(","):
        try:
            if host.startswith("/"):
                with socket.socket(socket.AF_UNIX) as unix:
                    unix.settimeout(timeout_s)
                    unix.connect(f"{host}/.s.PGSQL.{port}")
            else:
                socket.create_connection((host, port), timeout=timeout_s).close()
        except OSError:
            continue
        return True
    return False


def _interruptible(work: Callable[[], T], stop: threading.Event, waiting_for: str) -> T:
    """Runs ``work`` on a helper thread so that a stop is noticed within 0.1 s."""
    outcome: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            outcome.append(work())
        except BaseException as exc:
            failure.append(exc)

    helper = threading.Thread(target=run, name="pme-startup", daemon=True)
    helper.start()
    while helper.is_alive():
        if stop.wait(0.1):
            raise Stopped(f"stopped while waiting for {waiting_for}")
    if failure:
        raise failure[0]
    return outcome[0]


_AUTHENTICATION_CODES = frozenset({KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED})


def wait_for_kafka(
    settings: Settings, stop: threading.Event, phase: Callable[[str], None] = lambda _words: None
) -> None:
    """Returns once a broker answers a metadata request; after PME_KAFKA_STARTUP_WAIT_S raises
    KafkaFatalError naming the cause (the broker's own error when one came: a TLS handshake
    refused, ...), at once for a refused authentication, and Stopped when ``stop`` is set."""
    broker_errors: list[KafkaError] = []

    def on_error(err: KafkaError) -> None:  # librdkafka's thread; a list append is atomic
        if err.code() != KafkaError._ALL_BROKERS_DOWN:
            broker_errors.append(err)

    admin = AdminClient(settings.kafka_admin_config(logger=KAFKA_LOG, error_cb=on_error))
    started = time.monotonic()
    while True:
        try:
            _interruptible(lambda: admin.list_topics(timeout=5.0), stop, "Kafka")
            return
        except KafkaException as exc:
            cause = exc.args[0].str() if exc.args else str(exc)
            admin.poll(0.1)  # serves the error callbacks queued meanwhile
            if broker_errors:
                last = broker_errors[-1]
                cause = f"{cause}; the broker said: {' '.join(last.str().split())}"
                if last.code() in _AUTHENTICATION_CODES or last.fatal():
                    raise KafkaFatalError(
                        f"Kafka at {settings.kafka_url} refused the worker: {cause}"
                    ) from None
            waited = time.monotonic() - started
            if waited >= settings.kafka_startup_wait_s:
                raise KafkaFatalError(
                    f"no Kafka broker at {settings.kafka_url} answered for {waited:.0f}s: {cause}"
                ) from None
            phase(f"starting: Kafka at {settings.kafka_url} not reachable yet: {cause}")
            ledger_log(KAFKA_LOG).warning("Kafka not reachable yet, retrying: %s", cause)
        if stop.wait(1.0):
            raise Stopped("stopped while waiting for Kafka")


# What start-up does about migrations, by PME_MIGRATE; each returns the versions it applied.
STEPS: dict[str, Callable[[str], list[str]]] = {
    "auto": migrate,
    "check": lambda conninfo: check_migrations(conninfo) and [],
    "off": lambda conninfo: [],
}


def migrate_with_retry(
    settings: Settings, stop: threading.Event, phase: Callable[[str], None] = lambda _words: None
) -> list[str]:
    """Applies migrations, waiting up to PME_DB_STARTUP_WAIT_S for an unreachable database.

    Raises ConfigError at once (after REFUSED_GRACE_S) when the server answers
    but refuses the connection, psycopg's error when the wait runs out, and
    Stopped when ``stop`` is set meanwhile.
    """
    conninfo = settings.conninfo()
    started = time.monotonic()
    refused_since: float | None = None
    logged_at = -_LOG_EVERY_S
    delay = 0.5
    while True:
        try:
            if settings.migrate == "auto":
                work = lambda: migrate(conninfo, publication=settings.publication)  # noqa: E731
            else:
                work = lambda: STEPS[settings.migrate](conninfo)  # noqa: E731
            return _interruptible(work, stop, "the database")
        except psycopg.Error as exc:
            if not is_retryable(exc):
                raise
            now = time.monotonic()
            cause = " ".join(str(exc).split())  # for people; never parsed
            if _interruptible(lambda: server_answers(conninfo), stop, "the database"):
                if refused_since is None:
                    refused_since = now
                    log.error("The database refused the connection: %s", cause)
                if now - refused_since >= REFUSED_GRACE_S:
                    raise ConfigError(f"the database refused the connection: {cause}") from exc
            else:
                refused_since = None
                if now - started >= settings.db_startup_wait_s:
                    raise
                if now - logged_at >= _LOG_EVERY_S:
                    logged_at = now
                    log.warning("Database not reachable yet, retrying: %s", cause)
                phase(f"starting: the database at {settings.db_target()} not reachable yet: {cause}")
        if stop.wait(delay):
            raise Stopped("stopped while waiting for the database")
        delay = min(delay * 2, 5.0)


class Readiness:
    """``/readyz``: not halted, events not held past a threshold, no flush retrying past another,
    and Kafka and PostgreSQL answer.

    Kafka is asked through an AdminClient of its own: the consumer belongs to
    the consumer thread, and ``list_topics`` on it from another thread blocks
    while that thread is inside ``consume()``.
    """

    def __init__(
        self,
        *,
        admin: AdminClient,
        sink: PostgresSink,
        flushers: Sequence[Flusher],
        loop: ConsumerLoop,
        topic: str,
        max_retry_s: float,
        max_stall_s: float,
    ):
        self._admin = admin
        self._sink = sink
        self._flushers = flushers
        self._loop = loop
        self._topic = topic
        self._max_retry_s = max_retry_s
        self._max_stall_s = max_stall_s

    def __call__(self) -> tuple[bool, str]:
        if self._loop.halted is not None:
            return False, f"halted: {self._loop.halted}"
        stalled = self._loop.stalled_s()
        if stalled > self._max_stall_s:
            return False, f"events held for {stalled:.0f}s with no flush committing"
        since = retrying_since(self._flushers)
        if since is not None and time.monotonic() - since > self._max_retry_s:
            return False, f"database writes failing for {time.monotonic() - since:.0f}s"
        try:
            self._sink.ping()
        except Exception as exc:
            return False, f"database: {exc}"
        try:
            metadata = self._admin.list_topics(self._topic, timeout=2.0)
        except KafkaException as exc:
            return False, f"kafka: {_kafka_reason(exc)}"
        topic = metadata.topics.get(self._topic)
        if topic is None or topic.error is not None:
            return False, f"kafka: the topic {self._topic} does not exist"
        return True, "ready"


def _kafka_reason(exc: KafkaException) -> str:
    """A KafkaException's own words, without the KafkaError{...} wrapping."""
    error = exc.args[0] if exc.args else None
    return error.str() if isinstance(error, KafkaError) else str(exc)


class Liveness:
    """``/healthz``: 503 when the worker is stuck in a way no waiting cures, so that an
    orchestrator restarts it: events held with no flush committing for longer than
    ``max_stall_s`` while no lane is waiting out a database outage (that wait is by design,
    and a restart would not shorten it), or a consumer loop that has not turned for as long."""

    def __init__(self, *, loop: ConsumerLoop, flushers: Sequence[Flusher], max_stall_s: float) -> None:
        self._loop = loop
        self._flushers = flushers
        self._max_stall_s = max_stall_s

    def __call__(self) -> tuple[bool, str]:
        still = self._loop.still_s()
        if still > self._max_stall_s:
            return False, f"stuck: the consumer loop has not turned for {still:.0f}s"
        stalled = self._loop.stalled_s()
        if stalled > self._max_stall_s and retrying_since(self._flushers) is None:
            return False, f"stuck: events held for {stalled:.0f}s with no flush committing and none retrying"
        return True, "ok"


def topic_id_of(admin: AdminClient, topic: str) -> str:
    """The ID Kafka gave the topic when it was created; raises KafkaException when it cannot tell."""
    described = admin.describe_topics(TopicCollection([topic]), request_timeout=5)[topic].result(10)
    return str(described.topic_id)


def retrying_since(flushers: Sequence[Flusher]) -> float | None:
    """Since when the longest-failing lane has been retrying its write (None: none is)."""
    return min((f.retrying_since for f in flushers if f.retrying_since is not None), default=None)


class FlushSummary:
    """One INFO line a minute of what the flushes did, where a line a flush would make the log
    grow with the traffic; each flush's own line is DEBUG. Thread-safe (every lane reports)."""

    def __init__(self, interval_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._since = clock()
        self._flushes = self._events = self._dead_letters = self._held = 0
        self._slowest_s = 0.0
        self._rows: Counter[str] = Counter()

    def add(self, report: FlushReport, rows: Counter[str]) -> None:
        with self._lock:
            self._flushes += 1
            self._events += report.events
            self._dead_letters += len(report.dead_letters)
            self._held += report.held
            self._slowest_s = max(self._slowest_s, report.total_s)
            self._rows.update(rows)
        if self._clock() - self._since >= self._interval_s:
            self.write()

    def write(self, *, final: bool = False) -> None:
        """Logs what was flushed since the last line (nothing when nothing was), and starts over."""
        with self._lock:
            now = self._clock()
            flushes, events, dead, slowest, rows, held = (
                self._flushes, self._events, self._dead_letters, self._slowest_s, +self._rows, self._held
            )  # fmt: skip
            seconds = now - self._since
            self._since, self._flushes, self._events, self._dead_letters, self._slowest_s = now, 0, 0, 0, 0.0
            self._held = 0
            self._rows = Counter()
        if not flushes:
            return
        log.info(
            "%s %.0f s: %d events in %d flushes (slowest %.0f ms): %s; %d dead letters;"
            " %d children held for a parent in another lane",
            "Flushed in the last" if not final else "Flushed in the final",
            seconds,
            events,
            flushes,
            slowest * 1000,
            ", ".join(f"{n} {outcome}" for outcome, n in rows.items()) or "no rows",
            dead,
            held,
            extra={
                "events": events,
                "flushes": flushes,
                "rows": dict(rows),
                "dead_letters": dead,
                "held": held,
                "slowest_flush_ms": round(slowest * 1000, 1),
                "seconds": round(seconds, 1),
            },
        )


class Probes:
    """What ``/readyz`` and ``/healthz`` answer from the first second: until the worker runs,
    ``/readyz`` is 503 with the start-up phase ("starting: waiting for Kafka at ...") and
    ``/healthz`` is 200 (every start-up wait has its own bound, and ends the process with its
    own exit code); then the worker's own checks answer."""

    def __init__(self) -> None:
        self._phase = "starting"
        self._ready: Callable[[], tuple[bool, str]] | None = None
        self._live: Callable[[], tuple[bool, str]] | None = None

    def phase(self, words: str) -> None:
        self._phase = words

    def running(self, ready: Callable[[], tuple[bool, str]], live: Callable[[], tuple[bool, str]]) -> None:
        self._ready, self._live = ready, live

    def ready(self) -> tuple[bool, str]:
        return (False, self._phase) if self._ready is None else self._ready()

    def live(self) -> tuple[bool, str]:
        return (True, "ok") if self._live is None else self._live()


def _start_probes(settings: Settings, metrics: Metrics, probes: Probes) -> HealthServer | None:
    if not settings.metrics_port:
        return None
    try:
        health = HealthServer(metrics, port=settings.metrics_port, ready=probes.ready, live=probes.live)
    except OSError as exc:
        raise ConfigError(
            f"PME_METRICS_PORT: cannot listen on port {settings.metrics_port}: {exc.strerror}"
        ) from exc
    health.start()
    log.info("Metrics and probes on :%d (/metrics, /healthz, /readyz)", health.port)
    return health


def run_exporter(settings: Settings, stop: threading.Event, metrics: Metrics | None = None) -> None:
    """Runs until ``stop`` is set; raises on fatal errors (the CLI maps them to exit codes)."""
    metrics = metrics or Metrics()
    if stop.is_set():
        raise Stopped("stopped before start-up")
    log.info("Starting Database Exporter Service...")
    probes = Probes()
    health = _start_probes(settings, metrics, probes)
    try:
        _run(settings, stop, metrics, probes)
    finally:
        if health is not None:
            health.close()


def _run(settings: Settings, stop: threading.Event, metrics: Metrics, probes: Probes) -> None:
    log.info(
        "Kafka: %s, topic %s, group %s",
        settings.kafka_url,
        settings.kafka_topic,
        settings.kafka_group_id,
    )
    log.info("Database: %s", settings.db_target())
    probes.phase(f"starting: {settings.migrate} migrations of the database at {settings.db_target()}")
    applied = migrate_with_retry(settings, stop, probes.phase)
    log.info("Database schema ready (%d migrations applied now)", len(applied))
    probes.phase(f"starting: waiting for Kafka at {settings.kafka_url}")
    wait_for_kafka(settings, stop, probes.phase)
    # Values are judged against the column types as they are now; after altering a
    # column, restart the workers (and redrive what the old type refused).
    with psycopg.connect(settings.conninfo(), autocommit=True) as conn:
        column_types = live_column_types(conn)

    sink = PostgresSink(
        conninfo=settings.conninfo(),
        topic=settings.kafka_topic,
        lock_timeout_ms=settings.db_lock_timeout_ms,
        idle_in_transaction_timeout_ms=settings.db_idle_in_transaction_timeout_ms,
        statement_timeout_ms=settings.db_statement_timeout_ms,
        breaker=DeadLetterBreaker(window=settings.breaker_window, ratio=settings.breaker_ratio),
        pool_max_size=settings.flush_lanes + 1,
        column_types=column_types,
        on_connection_dropped=metrics.db_connections_dropped.inc,
    )

    summary = FlushSummary()

    def on_report(report: FlushReport) -> None:
        metrics.record_flush(report, time.time())
        totals = count_outcomes(report)
        log.debug(
            "Flushed %d events in %.0f ms (copy %.0f, upsert %.0f, commit %.0f): %s, %d dead letters;"
            " %d append rows straight into their tables, %d fell back; %d children held for a parent"
            " in another lane",
            report.events,
            report.total_s * 1000,
            sum(o.copy_s for o in report.tables.values()) * 1000,
            sum(o.apply_s for o in report.tables.values()) * 1000,
            report.commit_s * 1000,
            ", ".join(f"{n} {outcome}" for outcome, n in totals.items()),
            len(report.dead_letters),
            sum(o.direct for o in report.tables.values()),
            sum(o.fell_back for o in report.tables.values()),
            report.held,
            extra={"events": report.events, "duration_ms": round(report.total_s * 1000, 1), "rows": totals},
        )
        summary.add(report, totals)

    flushers = [
        Flusher(
            sink,
            on_report=on_report,
            on_retry=lambda exc: metrics.db_retries.labels(retry_reason(exc)).inc(),
            name=f"pme-flusher-{lane}",
        )
        for lane in range(settings.flush_lanes)
    ]
    kafka_errors = KafkaErrorPolicy(metrics, topic_wait_s=settings.topic_wait_s)
    topics = AdminClient(settings.kafka_admin_config(logger=KAFKA_LOG))
    config = consumer_config(settings.kafka_config())
    config["error_cb"] = kafka_errors.on_error
    consumer = Consumer(config)
    loop = ConsumerLoop(
        consumer=consumer,
        topic=settings.kafka_topic,
        sink=sink,
        flushers=flushers,
        metrics=metrics,
        max_batch_events=settings.max_batch_events,
        flush_interval_ms=settings.flush_interval_ms,
        flush_linger_ms=settings.flush_linger_ms,
        max_buffered_events=settings.max_buffered_events,
        shutdown_deadline_s=settings.shutdown_deadline_s,
        max_message_bytes=settings.max_message_bytes,
        column_types=column_types,
        kafka_errors=kafka_errors,
        topic_id=lambda: topic_id_of(topics, settings.kafka_topic),
        start_new_life=settings.topic_recreated == "restart",
    )

    def retrying_for() -> float:
        since = retrying_since(flushers)
        return 0.0 if since is None else time.monotonic() - since

    metrics.flush_retrying_seconds.set_function(retrying_for)
    metrics.halted.set_function(lambda: 0.0 if loop.halted is None else 1.0)
    probes.running(
        Readiness(
            admin=AdminClient(settings.kafka_admin_config(logger=KAFKA_LOG)),
            sink=sink,
            flushers=flushers,
            loop=loop,
            topic=settings.kafka_topic,
            max_retry_s=settings.ready_max_retry_s,
            max_stall_s=settings.ready_max_stall_s,
        ),
        Liveness(loop=loop, flushers=flushers, max_stall_s=settings.liveness_max_stall_s),
    )
    refresher = None
    if settings.report_refresh_s:

        def refreshed(took_s: float) -> None:
            metrics.report_refresh_seconds.set(took_s)
            metrics.report_refreshed.set(time.time())

        refresher = ReportRefresher(
            conninfo=settings.conninfo(),
            interval_s=settings.report_refresh_s,
            statement_timeout_ms=max(settings.db_statement_timeout_ms, 600_000),
            on_refreshed=refreshed,
            on_failed=metrics.report_refresh_failures.inc,
        )
        refresher.start()
    tune_gc()
    tune_malloc()
    log.info("Database Exporter Service started")
    try:
        loop.run(stop)
    finally:
        if refresher is not None:
            refresher.close(timeout_s=2.0)
        summary.write(final=True)
        # The loop spent the shutdown deadline; what is still being written is
        # left uncommitted (read again next run) rather than waited for.
        close_all(flushers, timeout_s=0.5)
        sink.close(timeout_s=0.5)
        log.info("Database Exporter Service stopped")
