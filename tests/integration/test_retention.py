"""``pme-exporter retention`` on the real stack, beside a running exporter."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from pme_exporter.devtools.generator import Located, ends_of, publish, trading_day
from pme_exporter.devtools.stack import exporter_env
from pme_exporter.errors import EXIT_OK, EXIT_REFUSED
from pme_exporter.schema import BY_TABLE, RETAINED, WriteMode
from pme_exporter.settings import Settings
from tests.corpus import encode
from tests.helpers import ExporterProcess, ExporterThread, on_topic, run_cli, wait_exported
from tests.model import Tables, apply_events, diff, snapshot
from tests.stack import Stack


def live_and_archived(conn: psycopg.Connection[Any]) -> tuple[Tables, Tables, dict[str, int]]:
    """The retained tables' rows, live and archived together, in the model's shape; the live rest;
    and how many rows each retained table holds in all (a key stored twice shows there)."""
    rows = snapshot(conn)
    counts = {}
    for table in RETAINED:
        spec = BY_TABLE[table]
        names = [*spec.column_names, "created_at", "src_partition", "src_offset"]
        if spec.mode is WriteMode.UPSERT:
            names.append("updated_at")
        query = sql.SQL("SELECT {} FROM {}").format(
            sql.SQL(", ").join(map(sql.Identifier, names)), sql.Identifier(f"{table}_archive")
        )
        archived = [dict(zip(names, values, strict=True)) for values in conn.execute(query)]
        counts[table] = len(rows[table]) + len(archived)
        for row in archived:
            if spec.key is None or spec.mode is WriteMode.APPEND:
                key = (row["src_partition"], row["src_offset"])
            else:
                key = row[spec.key]
            rows[table][key] = row
    return {t: rows[t] for t in RETAINED}, {t: r for t, r in rows.items() if t not in RETAINED}, counts


def test_archive_beside_a_loaded_exporter_loses_nothing_and_a_crash_then_a_rerun_gives_the_same_result(
    stack: Stack,
    settings: Settings,
    make_topic: Callable[[int], str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    topic = make_topic(2)
    s = on_topic(settings, topic)
    old = publish(stack.kafka_url, topic, [(None, k, v) for k, v in trading_day(400, seed=31)])
    # The new day's events carry today's time; the old day is a year before.
    new_day = [
        (None, k, v)
        for k, v in trading_day(1500, seed=32, nid_base=1_000_000, clock=lambda: datetime.now(UTC))
    ]
    worker = ExporterProcess(s, tmp_path / "exporter.log")
    new: list[Located] = []
    waits: list[float] = []
    done = threading.Event()

    def publish_slowly() -> None:
        for i in range(0, len(new_day), 500):
            new.extend(publish(stack.kafka_url, topic, new_day[i : i + 500]))
            time.sleep(0.2)

    def watch_lock_waits() -> None:
        """The longest time any exporter statement waited on a lock, sampled every 20 ms."""
        with psycopg.connect(s.conninfo(), autocommit=True) as conn:
            since: dict[int, float] = {}
            while not done.is_set():
                waiting = {
                    pid
                    for (pid,) in conn.execute(
                        """SELECT l.pid FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
                           WHERE NOT l.granted AND a.query NOT LIKE '%%picked%%'"""
                    )
                }
                now = time.monotonic()
                since = {pid: since.get(pid, now) for pid in waiting}
                waits.append(max((now - t for t in since.values()), default=0.0))
                time.sleep(0.02)

    try:
        wait_exported(s.conninfo(), topic, ends_of(old))
        code, out = run_cli(
            s, monkeypatch, capsys, "retention", "archive", "--older-than", "1d", "--dry-run", "--json"
        )
        planned = {o["table"]: o["rows"] for o in json.loads(out)}
        with psycopg.connect(s.conninfo()) as conn:
            everything = {
                t: conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(t))).fetchone()[0]  # type: ignore[index]
                for t in RETAINED
            }
        assert code == EXIT_OK and planned == everything and min(planned.values()) > 0
        watcher = threading.Thread(target=watch_lock_waits)
        publisher = threading.Thread(target=publish_slowly)
        watcher.start()
        publisher.start()
        # Small batches with pauses, so the kill lands in the middle of the move.
        archiver = subprocess.Popen(
            [sys.executable, "-m", "pme_exporter", "retention", "archive", "--older-than", "1d",
             "--batch-size", "25", "--pause-ms", "40"],
            env=exporter_env(s), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        with psycopg.connect(s.conninfo(), autocommit=True) as conn:
            deadline = time.monotonic() + 60
            while True:
                row = conn.execute("SELECT count(*) FROM order_acks_archive").fetchone()
                if row is not None and row[0] >= 100:
                    break
                assert archiver.poll() is None and time.monotonic() < deadline
                time.sleep(0.01)
        archiver.kill()  # kill -9, mid-archive
        archiver.wait(10)
        with psycopg.connect(s.conninfo()) as conn:
            left = conn.execute("SELECT count(*) FROM order_acks").fetchone()
        assert left is not None and left[0] > 0  # it did stop in the middle
        code, out = run_cli(
            s, monkeypatch, capsys, "retention", "archive", "--older-than", "1d", "--batch-size", "200"
        )
        assert code == EXIT_OK, out
        publisher.join(120)
        wait_exported(s.conninfo(), topic, ends_of(old + new))
    finally:
        done.set()
        assert worker.terminate() == 0
    valid = [(p, o, v) for p, o, v in old + new if v is not None]
    expected = apply_events(valid)
    with psycopg.connect(s.conninfo()) as conn:
        retained, rest, counts = live_and_archived(conn)
        live_orders = [n for (n,) in conn.execute("SELECT nid FROM orders")]
        archived_orders = [n for (n,) in conn.execute("SELECT nid FROM orders_archive")]
    for table in RETAINED:
        assert retained[table] == expected[table], diff({table: expected[table]}, {table: retained[table]})
        assert counts[table] == len(expected[table]), table  # no row both live and archived
    assert rest == {t: r for t, r in expected.items() if t not in RETAINED}
    assert min(live_orders) > 1_000_000 and max(archived_orders) <= 400 and len(archived_orders) == 400
    assert max(waits) < s.flush_interval_ms / 1000, max(waits)
    code, out = run_cli(s, monkeypatch, capsys, "verify")
    assert code == EXIT_OK, out  # archived rows count as stored


def test_a_parent_with_a_young_child_stays_and_purge_asks_then_deletes_live_and_archived_rows(
    stack: Stack,
    settings: Settings,
    make_topic: Callable[[int], str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    topic = make_topic(1)
    s = on_topic(settings, topic)
    young_ack = encode("OrderAck", {"order_nid": 1}, ts=datetime.now(UTC).isoformat())
    located = publish(
        stack.kafka_url, topic, [*((0, k, v) for k, v in trading_day(60, seed=33)), (0, None, young_ack)]
    )
    with ExporterThread(s):
        wait_exported(s.conninfo(), topic, ends_of(located))
    code, out = run_cli(s, monkeypatch, capsys, "retention", "archive", "--older-than", "7d")
    assert code == EXIT_OK and "orders: 59 row(s) archived" in out
    with psycopg.connect(s.conninfo()) as conn:
        assert [n for (n,) in conn.execute("SELECT nid FROM orders")] == [1]  # held by its young ack
        assert conn.execute("SELECT count(*) FROM order_acks").fetchone() == (1,)
    code, out = run_cli(s, monkeypatch, capsys, "retention", "purge", "--older-than", "7d")
    assert code == EXIT_REFUSED  # no terminal to confirm on, no --yes
    code, out = run_cli(s, monkeypatch, capsys, "retention", "purge", "--older-than", "7d", "--dry-run")
    assert code == EXIT_OK and "orders: 0 row(s) would be purged" in out
    code, out = run_cli(s, monkeypatch, capsys, "retention", "purge", "--older-than", "7d", "--yes", "--json")
    purged = {o["table"]: o["archived_purged"] for o in json.loads(out)}
    assert code == EXIT_OK and purged["orders"] == 59
    with psycopg.connect(s.conninfo()) as conn:
        for table in RETAINED:
            archived = conn.execute(
                sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(f"{table}_archive"))
            )
            assert archived.fetchone() == (0,), table
        assert [n for (n,) in conn.execute("SELECT nid FROM orders")] == [1]
