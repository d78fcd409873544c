"""Kafka away at start-up: a few lines naming the cause, exit 5 after the configured wait;
a broker that comes back within the wait is used."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pme_exporter.devtools.generator import ends_of, publish, trading_day
from pme_exporter.errors import EXIT_KAFKA, EXIT_OK
from pme_exporter.settings import Settings
from tests.helpers import ExporterProcess, on_topic, wait_exported
from tests.stack import Stack, run_up, stop_local

pytestmark = pytest.mark.slow


def test_no_broker_for_the_whole_wait_is_a_few_lines_and_exit_5(settings: Settings, tmp_path: Path) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        nobody = f"127.0.0.1:{closed.getsockname()[1]}"
    s = settings.replace(kafka_url=nobody, kafka_startup_wait_s=30, kafka_topic="t-no-broker")
    worker = ExporterProcess(s, tmp_path / "exporter.log")
    started = time.monotonic()
    code = worker.proc.wait(90)
    took = time.monotonic() - started
    log = worker.log_tail(1000)
    assert code == EXIT_KAFKA, log
    assert 30 <= took < 60, took
    lines = log.splitlines()
    assert len(lines) <= 20, log
    assert any("Kafka not reachable yet" in line and "Broker transport failure" in line for line in lines), (
        log
    )
    assert f"no Kafka broker at {nobody} answered" in lines[-1]


def test_a_broker_that_comes_back_within_the_wait_is_used(
    stack: Stack, settings: Settings, make_topic: Callable[[int], str], tmp_path: Path
) -> None:
    if not stack.local:
        pytest.skip("stopping Kafka needs the local stack; servers were given")
    topic = make_topic(2)
    s = on_topic(settings, topic, kafka_startup_wait_s=120)
    stop_local("kafka")
    try:
        worker = ExporterProcess(s, tmp_path / "exporter.log")
        deadline = time.monotonic() + 60
        while "Kafka not reachable yet" not in worker.log_tail(200):
            assert time.monotonic() < deadline and worker.proc.poll() is None, worker.log_tail()
            time.sleep(0.2)
    finally:
        up = run_up()
        assert up.returncode == 0, up.stderr[-3000:]
    try:
        located = publish(stack.kafka_url, topic, [(None, k, v) for k, v in trading_day(50, seed=4)])
        wait_exported(s.conninfo(), topic, ends_of(located), timeout_s=120)
    finally:
        code = worker.terminate() if worker.proc.poll() is None else worker.proc.returncode
    assert code == EXIT_OK, worker.log_tail()
