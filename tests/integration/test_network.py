"""A database connection that stops forwarding without closing (a NAT or firewall dropping
its state): the worker cuts it off within its bound, says so, reconnects and goes on; and
when it cannot, /healthz says it is stuck. Through a real TCP proxy (tests/proxy.py)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pme_exporter.devtools.generator import ends_of, publish, trading_day
from pme_exporter.devtools.stack import stored_offsets
from pme_exporter.settings import Settings
from tests.helpers import (
    ExporterProcess,
    assert_tables_equal_model,
    http_answer,
    on_topic,
    scrape,
    total,
    wait_exported,
)
from tests.proxy import stalling_proxy
from tests.stack import Stack

pytestmark = pytest.mark.slow


def _events(orders: int, seed: int) -> list[tuple[None, bytes | None, bytes | None]]:
    return [(None, k, v) for k, v in trading_day(orders, seed)]


def _wait_for(condition: Callable[[], bool], timeout_s: float, why: Callable[[], str]) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout_s, why()
        time.sleep(0.05)
    return time.monotonic() - started


def test_a_connection_that_stops_forwarding_is_cut_off_and_the_worker_goes_on(
    stack: Stack, settings: Settings, make_topic: Callable[[int], str], tmp_path: Path, free_port: int
) -> None:
    topic = make_topic(3)
    located = publish(stack.kafka_url, topic, _events(6_000, seed=21))
    with stalling_proxy(settings.db_host, settings.db_port) as proxy:
        s = on_topic(
            settings,
            topic,
            db_host="127.0.0.1",
            db_port=proxy.port,
            db_statement_timeout_ms=2_000,  # the client's own bound: 3 s
            metrics_port=free_port,
            max_batch_events=1_000,
            max_buffered_events=2_000,
        )
        worker = ExporterProcess(s, tmp_path / "worker.log")
        try:
            # Mid-backlog, so that flushes are in flight when the connections stop forwarding.
            _wait_for(
                lambda: sum(stored_offsets(settings.conninfo(), topic).values()) > len(located) // 4,
                120,
                worker.log_tail,
            )
            assert proxy.stall() > 0
            stalled_at = time.monotonic()
            warned_in = _wait_for(lambda: "has not answered for" in worker.log_tail(200), 10, worker.log_tail)
            assert warned_in < 3 + 2, f"the warning came {warned_in:.1f}s after the stall"
            assert sum(stored_offsets(settings.conninfo(), topic).values()) < len(located)
            wait_exported(settings.conninfo(), topic, ends_of(located), timeout_s=120)
            assert time.monotonic() - stalled_at < 60
            assert total(scrape(free_port), "pme_exporter_db_connections_dropped_total") >= 1
        finally:
            code = worker.terminate()
    assert code == 0, worker.log_tail()
    log = (tmp_path / "worker.log").read_text()
    # A batch was being written: its server process held locks, and was ended from a new connection.
    assert re.search(
        r"WARNING \[DB-EXPORTER\] The database has not answered for \ds while writing a batch", log
    ), log[-3000:]
    assert "Ended server process" in log
    assert "Traceback" not in log
    assert_tables_equal_model(settings.conninfo(), located)


def test_healthz_fails_when_a_stuck_connection_outlasts_the_liveness_bound(
    stack: Stack, settings: Settings, make_topic: Callable[[int], str], tmp_path: Path, free_port: int
) -> None:
    topic = make_topic(1)
    with stalling_proxy(settings.db_host, settings.db_port) as proxy:
        s = on_topic(
            settings,
            topic,
            db_host="127.0.0.1",
            db_port=proxy.port,
            db_statement_timeout_ms=120_000,  # the client's bound far beyond the liveness bound
            liveness_max_stall_s=3,
            metrics_port=free_port,
        )
        worker = ExporterProcess(s, tmp_path / "worker.log")
        try:
            first = publish(stack.kafka_url, topic, _events(50, seed=22))
            wait_exported(settings.conninfo(), topic, ends_of(first), timeout_s=120)
            assert http_answer(free_port, "/healthz") == (200, "ok")
            proxy.stall()
            publish(stack.kafka_url, topic, _events(50, seed=23))
            _wait_for(lambda: http_answer(free_port, "/healthz")[0] == 503, 15, worker.log_tail)
            status, reason = http_answer(free_port, "/healthz")
            assert status == 503
            assert reason.startswith("stuck: events held for"), reason
            assert sum(stored_offsets(settings.conninfo(), topic).values()) == ends_of(first)[0]
        finally:
            worker.kill()
