"""The local stack is real: a Kafka broker with consumer groups, and a PostgreSQL server."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from confluent_kafka import Consumer, TopicPartition

from pme_exporter.devtools.generator import publish
from pme_exporter.devtools.stack import DOWN, run_up
from tests.stack import Stack


def _consume(stack: Stack, topic: str, group: str, limit: int, commit: bool) -> list[tuple[int, int]]:
    consumer = Consumer(
        {
            "bootstrap.servers": stack.kafka_url,
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([topic])
    seen: list[tuple[int, int]] = []
    try:
        for _ in range(300):
            for msg in consumer.consume(num_messages=limit - len(seen), timeout=0.2):
                assert msg.error() is None, msg.error()
                partition, offset = msg.partition(), msg.offset()
                assert partition is not None and offset is not None
                seen.append((partition, offset))
            if len(seen) >= limit:
                break
        if commit and seen:
            last: dict[int, int] = {}
            for p, o in seen:
                last[p] = max(last.get(p, -1), o)
            consumer.commit(
                offsets=[TopicPartition(topic, p, o + 1) for p, o in last.items()], asynchronous=False
            )
    finally:
        consumer.close()
    return seen


def test_a_second_consumer_in_the_group_resumes_from_committed_offsets(
    stack: Stack, make_topic: Callable[[int], str]
) -> None:
    topic = make_topic(3)
    located = publish(
        stack.kafka_url, topic, [(i % 3, f"k{i}".encode(), f"v{i}".encode()) for i in range(60)]
    )
    assert {p for p, _, _ in located} == {0, 1, 2}
    group = f"g-{uuid.uuid4().hex[:8]}"
    first = _consume(stack, topic, group, limit=60, commit=False)
    assert len(first) == 60
    # Consume only part of each partition and commit exactly what was read.
    consumer = Consumer(
        {"bootstrap.servers": stack.kafka_url, "group.id": group, "enable.auto.commit": False}
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(3)])
    consumer.commit(offsets=[TopicPartition(topic, p, 5) for p in range(3)], asynchronous=False)
    consumer.close()
    resumed = _consume(stack, topic, group, limit=45, commit=True)
    assert sorted(resumed) == sorted((p, o) for p in range(3) for o in range(5, 20))


def test_postgres_takes_writes_and_reads(admin_conninfo: str, empty_db: str) -> None:
    conninfo = admin_conninfo.replace(
        f"dbname={admin_conninfo.split('dbname=')[1].split(maxsplit=1)[0]}", f"dbname={empty_db}"
    )
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, v numeric(20,2), at timestamptz)")
        conn.execute("INSERT INTO t VALUES (1, '1500.25', '2025-11-29T09:15:02.123456+07:00')")
        row = conn.execute("SELECT v::text, extract(epoch FROM at)::text FROM t").fetchone()
    assert row == ("1500.25", "1764382502.123456")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_server_whose_port_is_taken_fails_with_its_log_tail(stack: Stack) -> None:
    if not stack.local:
        pytest.skip("starting a second local stack is only tested when the tests run the local stack")
    # Not under pytest's tmp_path: the postgres user must be able to reach it.
    stack_dir = Path(tempfile.mkdtemp(prefix="pme-stack-test-", dir="/var/tmp"))
    stack_dir.chmod(0o755)
    env = {
        "PME_STACK_DIR": str(stack_dir),
        "PME_KAFKA_PORT": str(_free_port()),
        "PME_PG_PORT": str(_free_port()),
    }
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", int(env["PME_PG_PORT"])))
    blocker.listen()
    try:
        proc = run_up(env)
    finally:
        blocker.close()
        subprocess.run([str(DOWN), "--purge"], env={**os.environ, **env}, timeout=120, capture_output=True)
        shutil.rmtree(stack_dir, ignore_errors=True)
    assert proc.returncode != 0
    assert "already in use" in proc.stderr and "last lines of" in proc.stderr
    # Kafka had started before PostgreSQL failed; down stopped it: nothing of that stack runs.
    leftover = subprocess.run(["pgrep", "-f", str(stack_dir)], capture_output=True, text=True)
    assert leftover.stdout == "", leftover.stdout
    assert "export KAFKA_URL" not in proc.stdout
