"""The log grows with time, not with traffic: a steady stream writes a summary a minute at INFO,
and JSON lines carry their fields (partitions, events, ...) as fields."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Producer

from pme_exporter.devtools.generator import trading_day
from pme_exporter.settings import Settings
from tests.helpers import ExporterProcess, on_topic
from tests.stack import Stack

pytestmark = pytest.mark.slow

RATE, SECONDS = 1_000, 62


def test_a_steady_thousand_events_a_second_for_a_minute_writes_at_most_three_info_lines(
    stack: Stack, settings: Settings, make_topic: Callable[[int], str], tmp_path: Path
) -> None:
    topic = make_topic(3)
    s = on_topic(settings, topic, log_format="json")
    worker = ExporterProcess(s, tmp_path / "worker.log")
    try:
        deadline = time.monotonic() + 60
        while "Assigned partitions [" not in worker.log_tail(200):
            assert worker.proc.poll() is None and time.monotonic() < deadline, worker.log_tail()
            time.sleep(0.1)
        events = trading_day(RATE * SECONDS // 5, seed=51)
        producer = Producer({"bootstrap.servers": stack.kafka_url, "linger.ms": 5})
        started = time.monotonic()
        for tick in range(SECONDS * 10):  # 100 events every 0.1 s
            for _ in range(RATE // 10):
                key, value = next(events)
                producer.produce(topic, value=value, key=key)
            producer.poll(0)
            time.sleep(max(0.0, started + (tick + 1) / 10 - time.monotonic()))
        producer.flush(30)
        time.sleep(1)
        lines = [
            orjson.loads(line)
            for line in (tmp_path / "worker.log").read_text().splitlines()
            if line.startswith("{")
        ]
    finally:
        assert worker.terminate() == 0, worker.log_tail()
    assigned = next(
        i for i, line in enumerate(lines) if line["message"].startswith("[DB-EXPORTER] Assigned partitions")
    )
    assert sorted(lines[assigned]["partitions"]) == [0, 1, 2] and "offsets" in lines[assigned]
    info_after = [line["message"] for line in lines[assigned + 1 :] if line["level"] == "INFO"]
    assert 1 <= len(info_after) <= 3, info_after
    summary = next(
        line
        for line in lines[assigned + 1 :]
        if line["message"].startswith("[DB-EXPORTER] Flushed in the last")
    )
    assert summary["events"] > RATE * 50 and summary["rows"]["inserted"] > 0, summary
