"""Prometheus metrics and the HTTP endpoints ``/metrics``, ``/healthz``, ``/readyz``.

All metrics carry the ``pme_exporter_`` prefix and their unit in the name.
Each ``Metrics`` owns its registry, so tests can run several side by side.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

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
        self.kafka_errors = Counter(
            "pme_exporter_kafka_errors", "Errors reported by the Kafka client", ["code"], registry=r
        )
        self.parked_children = Gauge(
            "pme_exporter_parked_children", "Children waiting for their parent row", registry=r
        )

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
            self.table_flush_seconds.labels(table, "copy").observe(o.copy_s)
            self.table_flush_seconds.labels(table, "upsert").observe(o.apply_s)
            copy_s += o.copy_s
            apply_s += o.apply_s
        self.flush_seconds.labels("copy").observe(copy_s)
        self.flush_seconds.labels("upsert").observe(apply_s)
        self.flush_seconds.labels("commit").observe(report.commit_s)
        self.flush_seconds.labels("total").observe(report.total_s)
        self.batch_events.observe(report.events)
        self.parked_children.set(report.parked_waiting)
        self.last_flush.set(now_s)


class HealthServer:
    """Serves the registry and the two probes on a background thread."""

    def __init__(
        self,
        metrics: Metrics,
        *,
        port: int,
        ready: Callable[[], tuple[bool, str]],
        host: str = "0.0.0.0",  # noqa: S104 - the kubelet and Prometheus reach probes from outside
    ) -> None:
        registry = metrics.registry

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    self._send(200, b"ok\n")
                elif path == "/readyz":
                    ok, why = ready()
                    self._send(200 if ok else 503, (why + "\n").encode())
                else:
                    self._send(404, b"not found\n")

            def _send(
                self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8"
            ) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # scrapes are not news
                return

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name="pme-health", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
