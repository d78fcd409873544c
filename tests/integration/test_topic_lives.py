"""A topic deleted and created again under the same name is a new life of it: every row of
both lives is stored, with the same, more or fewer partitions; or the worker stops, by choice."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import psycopg
import pytest
from confluent_kafka.admin import AdminClient

from pme_exporter.devtools.generator import create_topic, ends_of, publish, trading_day
from pme_exporter.errors import EXIT_KAFKA
from pme_exporter.ops.verify import verify_topic
from pme_exporter.settings import Settings
from tests.helpers import ExporterProcess, on_topic, valid_only, wait_exported
from tests.model import apply_events, diff, snapshot
from tests.stack import Stack

pytestmark = pytest.mark.slow


def recreate(bootstrap: str, topic: str, partitions: int) -> None:
    """Deletes ``topic`` and creates it again once the broker has let it go."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.delete_topics([topic], operation_timeout=30)[topic].result(30)
    deadline = time.monotonic() + 60
    while topic in admin.list_topics(timeout=10).topics:
        assert time.monotonic() < deadline, f"{topic} was not deleted"
        time.sleep(0.2)
    while True:
        try:
            create_topic(bootstrap, topic, partitions)
            return
        except Exception:  # the deletion still finishing on the broker
            assert time.monotonic() < deadline, f"{topic} could not be created again"
            time.sleep(0.5)


def _day(orders: int, seed: int) -> list[tuple[None, bytes | None, bytes | None]]:
    return [(None, k, v) for k, v in trading_day(orders, seed, invalid=True)]


def _run_until_exported(settings: Settings, ends: dict[int, int], log: Path) -> str:
    worker = ExporterProcess(settings, log)
    try:
        wait_exported(settings.conninfo(), settings.kafka_topic, ends, timeout_s=120)
    finally:
        code = worker.terminate()
    text = log.read_text()
    assert code == 0, text[-3000:]
    return text


@pytest.mark.parametrize(("first", "second"), [(3, 3), (3, 5), (3, 2)], ids=["same", "more", "fewer"])
def test_every_row_of_both_lives_of_a_recreated_topic_is_stored(
    stack: Stack, settings: Settings, tmp_path: Path, first: int, second: int
) -> None:
    topic = f"t-lives-{uuid.uuid4().hex[:8]}"
    s = on_topic(settings, topic)
    create_topic(stack.kafka_url, topic, first)
    # The second life reuses the first one's keys: its messages sit at the same partitions and
    # offsets as the first life's, where they are no replay of them.
    life_1 = publish(stack.kafka_url, topic, _day(400, seed=31))
    _run_until_exported(s, ends_of(life_1), tmp_path / "life-1.log")

    recreate(stack.kafka_url, topic, second)
    life_2 = publish(stack.kafka_url, topic, _day(400, seed=32))
    log = _run_until_exported(s, ends_of(life_2), tmp_path / "life-2.log")
    assert log.count("was deleted and created again") == 1, log[-3000:]

    expected = apply_events(
        [(1, p, o, v) for p, o, v in valid_only(life_1)] + [(2, p, o, v) for p, o, v in valid_only(life_2)]
    )
    with psycopg.connect(s.conninfo()) as conn:
        actual = snapshot(conn)
        lives = conn.execute("SELECT life FROM exporter_topic_lives WHERE topic = %s ORDER BY life", (topic,))
        dead = conn.execute("SELECT life, count(*) FROM exporter_dead_letters GROUP BY life ORDER BY life")
        assert lives.fetchall() == [(1,), (2,)]
        invalid = [len(life_1) - len(valid_only(life_1)), len(life_2) - len(valid_only(life_2))]
        tombstones = [sum(v is None for _, _, v in life) for life in (life_1, life_2)]
        assert dead.fetchall() == [(1, invalid[0] - tombstones[0]), (2, invalid[1] - tombstones[1])]
    assert expected["order_acks"] and any(len(key) == 3 for key in expected["order_acks"])
    assert actual == expected, diff(expected, actual)
    result = verify_topic(s)
    assert result.ok, [m.line() for m in result.mismatches]


def test_a_recreated_topic_stops_the_worker_when_so_chosen(
    stack: Stack, settings: Settings, tmp_path: Path
) -> None:
    topic = f"t-lives-{uuid.uuid4().hex[:8]}"
    s = on_topic(settings, topic, topic_recreated="stop")
    create_topic(stack.kafka_url, topic, 1)
    life_1 = publish(stack.kafka_url, topic, _day(50, seed=33))
    _run_until_exported(s, ends_of(life_1), tmp_path / "life-1.log")
    recreate(stack.kafka_url, topic, 1)
    publish(stack.kafka_url, topic, _day(50, seed=34))
    worker = ExporterProcess(s, tmp_path / "life-2.log")
    code = worker.proc.wait(90)
    text = (tmp_path / "life-2.log").read_text()
    assert code == EXIT_KAFKA, text[-3000:]
    assert f"the topic {topic} was deleted and created again" in text
    assert "PME_TOPIC_RECREATED=restart" in text
    with psycopg.connect(s.conninfo()) as conn:
        assert conn.execute("SELECT count(*) FROM exporter_topic_lives").fetchone() == (1,)
        stored: dict[int, int] = dict(
            conn.execute("SELECT partition, next_offset FROM exporter_offsets").fetchall()
        )
    assert stored == ends_of(life_1)  # nothing of the new life, the old positions kept
