"""Faults on the real stack: kill -9 at random moments, PostgreSQL stopped, a worker leaving its group.

Each runs ``pme-exporter run`` as a child process, the container's entrypoint,
on at least 100,000 events, and ends with the tables equal to the model.
"""

from __future__ import annotations

import random
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
    http_status,
    on_topic,
    scrape,
    total,
    wait_exported,
)
from tests.stack import Stack, run_up, stop_local

pytestmark = pytest.mark.slow

ORDERS_FOR_100K_EVENTS = 18_500


def _publish_day(
    stack: Stack, topic: str, orders: int = ORDERS_FOR_100K_EVENTS, seed: int = 11
) -> list[tuple[int, int, bytes | None]]:
    return publish(stack.kafka_url, topic, [(None, k, v) for k, v in trading_day(orders, seed)])


def _progress(conninfo: str, topic: str) -> int:
    return sum(stored_offsets(conninfo, topic).values())


def _wait_progress(conninfo: str, topic: str, beyond: int, timeout_s: float = 60) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        done = _progress(conninfo, topic)
        if done > beyond:
            return done
        time.sleep(0.05)
    raise AssertionError(f"no progress beyond {beyond} within {timeout_s}s")


def test_kill_9_at_random_moments_loses_and_duplicates_nothing(
    stack: Stack, settings: Settings, make_topic: Callable[[int], str], tmp_path: Path
) -> None:
    topic = make_topic(3)
    located = _publish_day(stack, topic)
    total = len(located)
    assert total >= 100_000
    s = on_topic(
        settings,
        topic,
        kafka_group_instance_id="crash-worker",
        log_level="DEBUG",  # each flush's line says what it carried; a killed worker writes no summary
        flush_lanes=2,
        max_batch_events=3_000,
        max_buffered_events=6_000,
        flush_interval_ms=100,
    )
    rng = random.Random(20251129)
    kills = 5
    for round_ in range(kills):
        # Kill k lands at a random point of the k-th sixth of the run, then up to
        # 50 ms later, so it may hit a COPY, an upsert or a commit in flight.
        target = int(total * rng.uniform(round_ / (kills + 1), (round_ + 1) / (kills + 1)))
        worker = ExporterProcess(s, tmp_path / f"exporter-{round_}.log")
        try:
            _wait_progress(s.conninfo(), topic, target)
        except AssertionError:
            raise AssertionError(worker.log_tail()) from None
        time.sleep(rng.uniform(0.0, 0.05))
        worker.kill()
        assert _progress(s.conninfo(), topic) < total, "the run finished before the kill; give it more events"
    # The killed workers held children carried to their next batch, with offsets kept back for them.
    logs = "".join((tmp_path / f"exporter-{round_}.log").read_text() for round_ in range(kills))
    assert sum(int(n) for n in re.findall(r"(\d+) carried", logs)) > 0
    # ... and wrote append rows the short way, straight into their tables.
    assert sum(int(n) for n in re.findall(r"(\d+) append rows straight into their tables", logs)) > 0
    # ... and held children back while their parent sat in the other lane's unwritten batch.
    assert sum(int(n) for n in re.findall(r"(\d+) children held for a parent", logs)) > 0
    final = ExporterProcess(s, tmp_path / "exporter-final.log")
    wait_exported(s.conninfo(), topic, ends_of(located), timeout_s=180)
    final.wait_started()
    assert final.terminate() == 0, final.log_tail()
    assert_tables_equal_model(s.conninfo(), located)


def test_database_outage_is_survived_without_restart(
    stack: Stack, settings: Settings, make_topic: Callable[[int], str], tmp_path: Path, free_port: int
) -> None:
    if not stack.local:
        pytest.skip("stopping PostgreSQL needs the local stack; servers were given")
    topic = make_topic(3)
    first = _publish_day(stack, topic, orders=9_000, seed=3)
    s = on_topic(
        settings,
        topic,
        metrics_port=free_port,
        ready_max_retry_s=5,
        max_batch_events=2_000,
        max_buffered_events=4_000,
    )
    worker = ExporterProcess(s, tmp_path / "exporter.log")
    try:
        _wait_progress(s.conninfo(), topic, 0)
        assert http_status(free_port, "/readyz") == 200
        stop_local("postgres")
        stopped_at = time.monotonic()
        second = publish(stack.kafka_url, topic, [(None, k, v) for k, v in trading_day(9_500, seed=4)][60:])
        time.sleep(2)
        assert http_status(free_port, "/readyz") == 503
        time.sleep(max(0.0, 11 - (time.monotonic() - stopped_at)))
        up = run_up()
        assert up.returncode == 0, up.stderr[-3000:]
        located = first + second
        wait_exported(s.conninfo(), topic, ends_of(located), timeout_s=180)
        assert http_status(free_port, "/readyz") == 200
        assert total(scrape(free_port), "pme_exporter_db_retries_total") > 0
        assert "The database is back: the write succeeded after" in worker.log_tail(400)
    finally:
        code = worker.terminate() if worker.proc.poll() is None else worker.proc.returncode
        run_up()  # whatever happened, leave PostgreSQL running for the next test
    assert code == 0, worker.log_tail()
    assert_tables_equal_model(s.conninfo(), first + second)


def test_two_workers_share_a_group_and_one_leaves_mid_run(
    stack: Stack, settings: Settings, make_topic: Callable[[int], str], tmp_path: Path
) -> None:
    topic = make_topic(6)
    s = on_topic(
        settings,
        topic,
        max_batch_events=3_000,
        max_buffered_events=6_000,
        flush_interval_ms=100,
    )
    a = ExporterProcess(s, tmp_path / "a.log")
    b = ExporterProcess(s, tmp_path / "b.log")
    try:
        deadline = time.monotonic() + 60
        # Cooperative rebalancing first gives a joining member an empty assignment.
        while not all(re.search(r"Assigned partitions \[\d", w.log_tail(200)) for w in (a, b)):
            assert time.monotonic() < deadline, a.log_tail() + "\n" + b.log_tail()
            time.sleep(0.2)
        located = _publish_day(stack, topic)
        done = _wait_progress(s.conninfo(), topic, 0)
        assert done < len(located), "the run finished before a worker could leave; give it more events"
        assert a.terminate() == 0, a.log_tail()
        wait_exported(s.conninfo(), topic, ends_of(located), timeout_s=180)
    finally:
        code = b.terminate() if b.proc.poll() is None else b.proc.returncode
    assert code == 0, b.log_tail()
    assert "Revoked partitions" in a.log_tail(200)
    assert_tables_equal_model(s.conninfo(), located)
