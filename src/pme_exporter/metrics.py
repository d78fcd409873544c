"""Prometheus metrics and the HTTP endpoints ``/metrics``, ``/healthz``, ``/readyz``.

All metrics carry the ``pme_exporter_`` prefix and their unit in the name.
Each ``Metrics`` owns its registry, so tests can run several side by side.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import confluent_kafka
from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    make_wsgi_app,
)

from pme_exporter import __version__
from pme_exporter.httpserver import BoundedHTTPServer

if TYPE_CHECKING:
    from wsgiref.types import StartResponse

from pme_exporter.sink import OUTCOMES, FlushReport

_FLUSH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH_BUCKETS = (1, 10, 100, 1_000, 5_000, 10_000, 20_000, 50_000, 100_000)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.events_consumed = Counter(
            "pme_exporter_events_consumed", "Messages consumed, by event type", ["event_type"], registry=r
        )
        self.tombstones = Counter("pme_exporter_tombstones", "Null-value messages skipped", registry=r)
        self.dead_letters = Counter(
            "pme_exporter_dead_letters", "Messages stored as dead letters", ["stage", "reason"], registry=r
        )
        self.rows_written = Counter(
            "pme_exporter_rows_written", "Row outcomes by table", ["table", "outcome"], registry=r
        )
        self.flush_seconds = Histogram(
            "pme_exporter_flush_duration_seconds",
            "Flush time by phase (copy, upsert, commit, total)",
            ["phase"],
            buckets=_FLUSH_BUCKETS,
            registry=r,
        )
        self.table_flush_seconds = Histogram(
            "pme_exporter_table_flush_duration_seconds",
            "Per-table flush time by phase (copy, upsert)",
            ["table", "phase"],
            buckets=_FLUSH_BUCKETS,
            registry=r,
        )
        self.batch_events = Histogram(
            "pme_exporter_batch_size_events", "Messages per flushed batch", buckets=_BATCH_BUCKETS, registry=r
        )
        self.buffered_events = Gauge(
            "pme_exporter_buffered_events", "Messages buffered, not yet written", registry=r
        )
        self.buffer_capacity = Gauge(
            "pme_exporter_buffer_capacity_events", "The buffer bound (PME_MAX_BUFFERED_EVENTS)", registry=r
        )
        self.paused_seconds = Counter(
            "pme_exporter_backpressure_paused_seconds",
            "Time consumption was paused for backpressure",
            registry=r,
        )
        self.lag_messages = Gauge(
            "pme_exporter_consumer_lag_messages",
            "High watermark minus next offset to export",
            ["partition"],
            registry=r,
        )
        self.lag_seconds = Gauge(
            "pme_exporter_consumer_lag_seconds",
            "Now minus the Kafka timestamp of the newest exported event (0 when caught up)",
            registry=r,
        )
        self.last_flush = Gauge(
            "pme_exporter_last_flush_timestamp_seconds", "Unix time of the last committed flush", registry=r
        )
        self.db_retries = Counter(
            "pme_exporter_db_retries",
            "Database attempts that failed and were retried, by SQLSTATE ('connection' when none)",
            ["reason"],
            registry=r,
        )
        self.db_connections_dropped = Counter(
            "pme_exporter_db_connections_dropped",
            "Database connections the worker cut off after they stopped answering",
            registry=r,
        )
        self.children_held = Counter(
            "pme_exporter_children_held",
            "Children held back in Python while their parent was in another lane's unwritten batch",
            registry=r,
        )
        self.append_short_path_rows = Counter(
            "pme_exporter_append_short_path_rows",
            "Append rows past every stored row of their partition: COPYed straight into their table"
            " (direct), or sent the staging way after a clash or a missing parent (fell_back)",
            ["table", "result"],
            registry=r,
        )
        self.report_refresh_seconds = Gauge(
            "pme_exporter_report_refresh_seconds",
            "How long the last refresh of the materialized reports took (PME_REPORT_REFRESH_S)",
            registry=r,
        )
        self.report_refreshed = Gauge(
            "pme_exporter_report_refreshed_timestamp_seconds",
            "When this worker last refreshed the materialized reports",
            registry=r,
        )
        self.report_refresh_failures = Counter(
            "pme_exporter_report_refresh_failures",
            "Refreshes of the materialized reports that failed",
            registry=r,
        )
        self.kafka_errors = Counter(
            "pme_exporter_kafka_errors", "Errors reported by the Kafka client", ["code"], registry=r
        )
        self.parked_children = Gauge(
            "pme_exporter_parked_children", "Children waiting for their parent row", registry=r
        )
        # State gauges: they drop to 0 the moment a condition ends, so alerts resolve at once.
        self.flush_retrying_seconds = Gauge(
            "pme_exporter_flush_retrying_seconds",
            "How long the current flush has been failing and retrying (0 when it is not)",
            registry=r,
        )
        self.halted = Gauge(
            "pme_exporter_halted", "1 while the dead-letter breaker holds the worker halted", registry=r
        )
        self.kafka_up = Gauge(
            "pme_exporter_kafka_up", "0 while the Kafka client reports every broker down", registry=r
        )
        self.kafka_up.set(1)
        Info("pme_exporter_build", "Versions this worker runs", registry=r).info(
            {
                "version": __version__,
                "python": platform.python_version(),
                "librdkafka": confluent_kafka.libversion()[0],
            }
        )
        # The process, platform and garbage-collector figures prometheus-client offers.
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            r.register(collector)

    def record_flush(self, report: FlushReport, now_s: float) -> None:
        for event_type, n in report.events_by_type.items():
            if event_type != "invalid":
                self.events_consumed.labels(event_type).inc(n)
        self.tombstones.inc(report.tombstones)
        for d in report.dead_letters:
            self.dead_letters.labels(d.stage, d.reason).inc()
        copy_s = apply_s = 0.0
        for table, o in report.tables.items():
            for outcome in OUTCOMES:
                n = getattr(o, outcome)
                if n:
                    self.rows_written.labels(table, outcome).inc(n)
            if o.direct:
                self.append_short_path_rows.labels(table, "direct").inc(o.direct)
            if o.fell_back:
                self.append_short_path_rows.labels(table, "fell_back").inc(o.fell_back)
            self.table_flush_seconds.labels(table, "copy").observe(o.copy_s)
            self.table_flush_seconds.labels(table, "upsert").observe(o.apply_s)
            copy_s += o.copy_s
            apply_s += o.apply_s
        self.flush_seconds.labels("copy").observe(copy_s)
        self.flush_seconds.labels("upsert").observe(apply_s)
        self.flush_seconds.labels("commit").observe(report.commit_s)
        self.flush_seconds.labels("total").observe(report.total_s)
        self.batch_events.observe(report.events)
        self.children_held.inc(report.held)
        self.parked_children.set(report.parked_waiting)
        self.last_flush.set(now_s)


class HealthServer:
    """Serves ``/metrics`` (prometheus-client's own exposition: gzip, OpenMetrics negotiation,
    ``name[]`` filters), ``/healthz`` and ``/readyz`` on one port, through a server that a
    flood of idle connections cannot exhaust (``httpserver``). ``HEAD`` answers like ``GET``
    without a body. ``/healthz`` is 200 while ``live`` says so (always, without one)."""

    def __init__(
        self,
        metrics: Metrics,
        *,
        port: int,
        ready: Callable[[], tuple[bool, str]],
        live: Callable[[], tuple[bool, str]] | None = None,
        host: str = "0.0.0.0",  # noqa: S104 - the kubelet and Prometheus reach probes from outside
        max_connections: int = 256,
        read_timeout_s: float = 5.0,
    ) -> None:
        exposition = make_wsgi_app(metrics.registry)

        def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
            path = environ.get("PATH_INFO", "/")
            head = environ.get("REQUEST_METHOD") == "HEAD"
            if path == "/metrics":
                # prometheus-client serves GET only; HEAD is the same answer without its body.
                body: Iterable[bytes] = exposition({**environ, "REQUEST_METHOD": "GET"}, start_response)
            elif path in ("/healthz", "/readyz"):
                check = ready if path == "/readyz" else live or _always_ok
                ok, why = check()
                body = _plain(start_response, "200 OK" if ok else "503 Service Unavailable", why)
            else:
                body = _plain(start_response, "404 Not Found", "not found")
            return [] if head else body

        self._server = BoundedHTTPServer(
            app, host=host, port=port, max_connections=max_connections, read_timeout_s=read_timeout_s
        )
        self.port = self._server.port

    def start(self) -> None:
        self._server.start()

    def close(self) -> None:
        self._server.close()


def _always_ok() -> tuple[bool, str]:
    return True, "ok"


def _plain(start_response: StartResponse, status: str, text: str) -> list[bytes]:
    body = (text + "\n").encode()
    start_response(
        status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))]
    )
    return [body]
