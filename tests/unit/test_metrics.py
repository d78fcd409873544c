"""The metrics endpoint: prometheus-client's exposition, the process collectors, build info, probes, HEAD."""

from __future__ import annotations

import gzip
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from pme_exporter import __version__
from pme_exporter.metrics import HealthServer, Metrics
from pme_exporter.sink import FlushReport, TableOutcome


@pytest.fixture
def server() -> Iterator[tuple[HealthServer, list[tuple[bool, str]]]]:
    readiness = [(True, "ready")]
    metrics = Metrics()
    metrics.rows_written.labels("orders", "inserted").inc(3)
    health = HealthServer(metrics, port=0, host="127.0.0.1", ready=lambda: readiness[0])
    health.start()
    yield health, readiness
    health.close()


def get(port: int, path: str, method: str = "GET", **headers: str) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_metrics_carry_process_figures_and_build_info(
    server: tuple[HealthServer, list[tuple[bool, str]]],
) -> None:
    status, _, body = get(server[0].port, "/metrics")
    text = body.decode()
    assert status == 200
    assert "process_resident_memory_bytes" in text and "python_gc_collections_total" in text
    assert 'pme_exporter_build_info{librdkafka="' in text and f'version="{__version__}"' in text
    assert 'pme_exporter_rows_written_total{outcome="inserted",table="orders"} 3.0' in text


def test_gzip_openmetrics_and_name_filters_are_negotiated(
    server: tuple[HealthServer, list[tuple[bool, str]]],
) -> None:
    port = server[0].port
    _, headers, body = get(port, "/metrics", **{"Accept-Encoding": "gzip"})
    assert headers["Content-Encoding"] == "gzip" and b"pme_exporter_" in gzip.decompress(body)
    _, headers, body = get(port, "/metrics", Accept="application/openmetrics-text; version=1.0.0")
    assert headers["Content-Type"].startswith("application/openmetrics-text") and body.endswith(b"# EOF\n")
    _, _, body = get(port, "/metrics?name[]=pme_exporter_halted")
    assert body.decode().count("# HELP") == 1 and "pme_exporter_halted 0.0" in body.decode()


def test_probes_and_head(server: tuple[HealthServer, list[tuple[bool, str]]]) -> None:
    health, readiness = server
    assert get(health.port, "/healthz")[::2] == (200, b"ok\n")
    assert get(health.port, "/readyz")[::2] == (200, b"ready\n")
    readiness[0] = (False, "halted: a flood of dead letters")
    assert get(health.port, "/readyz")[::2] == (503, b"halted: a flood of dead letters\n")
    status, _, body = get(health.port, "/metrics", method="HEAD")
    assert status == 200 and body == b""
    assert get(health.port, "/nope")[0] == 404


def test_a_flush_counts_its_held_children_and_the_ways_its_append_rows_went() -> None:
    metrics = Metrics()
    report = FlushReport(events=10, held=3)
    report.tables["order_acks"] = TableOutcome(inserted=5, direct=5)
    report.tables["order_naks"] = TableOutcome(inserted=2, fell_back=2)
    metrics.record_flush(report, 0.0)
    metrics.record_flush(FlushReport(events=1, held=1), 1.0)
    sample = metrics.registry.get_sample_value
    assert sample("pme_exporter_children_held_total") == 4
    assert (
        sample("pme_exporter_append_short_path_rows_total", {"table": "order_acks", "result": "direct"}) == 5
    )
    assert (
        sample("pme_exporter_append_short_path_rows_total", {"table": "order_naks", "result": "fell_back"})
        == 2
    )
    assert (
        sample("pme_exporter_append_short_path_rows_total", {"table": "order_acks", "result": "fell_back"})
        is None
    )
