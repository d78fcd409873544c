"""Operator commands on the real stack: status, and dead letters listed, shown and redriven."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest

from pme_exporter.devtools.generator import ends_of, publish, trading_day
from pme_exporter.errors import EXIT_OK, EXIT_REFUSED, EXIT_THRESHOLD
from pme_exporter.settings import Settings
from tests.helpers import ExporterProcess, ExporterThread, on_topic, run_cli, scrape, wait_exported
from tests.model import apply_events, diff, snapshot
from tests.stack import Stack


def test_status_matches_the_metrics_and_the_group_and_flags_lag(
    stack: Stack,
    settings: Settings,
    make_topic: Callable[[int], str],
    tmp_path: Path,
    free_port: int,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    topic = make_topic(3)
    s = on_topic(settings, topic, metrics_port=free_port)
    located = publish(
        stack.kafka_url, topic, [(None, k, v) for k, v in trading_day(300, seed=6, invalid=True)]
    )
    worker = ExporterProcess(s, tmp_path / "exporter.log")
    try:
        wait_exported(s.conninfo(), topic, ends_of(located))
        code, out = run_cli(s.replace(metrics_port=0), monkeypatch, capsys, "status", "--json")
        status = json.loads(out)
        deadline = time.monotonic() + 30
        while True:  # the worker reports lag once a second, per partition it holds
            metrics = scrape(free_port)
            reported = {
                dict(labels).get("partition") for name, labels in metrics if name.endswith("lag_messages")
            }
            if reported >= {"0", "1", "2"} or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        assert worker.terminate() == 0
    assert code == EXIT_OK
    ends = ends_of(located)
    for p in status["partitions"]:
        assert p["end_offset"] == p["exported_offset"] == ends[p["partition"]] and p["lag_messages"] == 0
        assert metrics[("pme_exporter_consumer_lag_messages", (("partition", str(p["partition"])),))] == 0
    with psycopg.connect(s.conninfo()) as conn:
        dead: dict[str, int] = dict(
            conn.execute(
                "SELECT stage || '/' || reason, count(*) FROM exporter_dead_letters GROUP BY 1"
            ).fetchall()
        )
    assert status["dead_letters"] == dead and sum(dead.values()) == 6
    # The worker stopped; more events arrive: the lag is theirs, and the thresholds say so.
    more = publish(stack.kafka_url, topic, [(p, None, orjson.dumps({"x": p})) for p in (0, 0, 1)])
    code, out = run_cli(s.replace(metrics_port=0), monkeypatch, capsys, "status", "--json", "--max-lag", "2")
    status = json.loads(out)
    assert code == EXIT_THRESHOLD and status["lag_messages"] == len(more) == 3
    lag = {
        p["partition"]: (p["lag_messages"], p["committed_offset"], p["lag_seconds"])
        for p in status["partitions"]
    }
    assert lag[0][0] == 2 and lag[1][0] == 1 and lag[2][0] == 0
    assert lag[0][1] == ends[0] and lag[0][2] > 0  # the group committed what was exported
    code, _ = run_cli(
        s.replace(metrics_port=0), monkeypatch, capsys, "status", "--max-lag", "3", "--max-dead-letters", "6"
    )
    assert code == EXIT_OK


def test_dead_letters_from_a_too_narrow_column_land_once_it_is_widened_and_the_invalid_ones_stay(
    stack: Stack,
    settings: Settings,
    make_topic: Callable[[int], str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    topic = make_topic(1)
    s = on_topic(settings, topic, breaker_ratio=1.0)
    with psycopg.connect(s.conninfo(), autocommit=True) as conn:
        conn.execute("ALTER TABLE participants ALTER COLUMN name TYPE VARCHAR(5)")  # too narrow
    ts = "2025-11-29T09:00:00Z"
    events = [
        orjson.dumps({"type": "Participant", "ts": ts, "data": {"code": f"P{i}", "name": f"Broker {i}"}})
        for i in range(4)
    ]
    events += [b"{not json", b"\xff\xfe not utf-8"]
    located = publish(stack.kafka_url, topic, [(0, None, v) for v in events])
    with ExporterThread(s):
        wait_exported(s.conninfo(), topic, ends_of(located))
    code, out = run_cli(s, monkeypatch, capsys, "dead-letters", "list", "--json")
    listed = json.loads(out)
    assert (
        code == EXIT_OK
        and sorted(d["reason"] for d in listed) == ["invalid_json"] * 2 + ["sqlstate_22001"] * 4
    )
    code, out = run_cli(
        s,
        monkeypatch,
        capsys,
        "dead-letters",
        "list",
        "--json",
        "--reason",
        "sqlstate_22001",
        "--table",
        "participants",
    )
    assert len(json.loads(out)) == 4
    binary = next(d["id"] for d in listed if d["offset"] == 5)
    code, out = run_cli(s, monkeypatch, capsys, "dead-letters", "show", str(binary))
    assert code == EXIT_OK and "(not UTF-8; hex)" in out and "ff fe 20 6e 6f 74" in out
    code, out = run_cli(s, monkeypatch, capsys, "dead-letters", "show", str(binary), "--json")
    shown = json.loads(out)
    assert code == EXIT_OK and shown["reason"] == "invalid_json" and "ff fe 20 6e 6f 74" in shown["msg_value"]
    with psycopg.connect(s.conninfo(), autocommit=True) as conn:
        conn.execute("ALTER TABLE participants ALTER COLUMN name TYPE VARCHAR(200)")  # fixed
    code, out = run_cli(s, monkeypatch, capsys, "dead-letters", "redrive", "--json")
    redriven = json.loads(out)
    assert code == EXIT_OK
    assert sorted((r["offset"], r["landed"], r["reason"]) for r in redriven) == [
        (0, True, ""),
        (1, True, ""),
        (2, True, ""),
        (3, True, ""),
        (4, False, "invalid_json"),
        (5, False, "invalid_json"),
    ]
    with psycopg.connect(s.conninfo()) as conn:
        names = [r[0] for r in conn.execute("SELECT name FROM participants ORDER BY code")]
        left = conn.execute('SELECT "offset", reason FROM exporter_dead_letters ORDER BY 1').fetchall()
    assert names == [f"Broker {i}" for i in range(4)] and left == [(4, "invalid_json"), (5, "invalid_json")]
    code, out = run_cli(s, monkeypatch, capsys, "dead-letters", "redrive", "--json", "--stage", "database")
    assert json.loads(out) == []  # nothing of the kind is left


def test_replay_refuses_beside_active_workers_then_reads_again_without_duplicates(
    stack: Stack,
    settings: Settings,
    make_topic: Callable[[int], str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    topic = make_topic(2)
    s = on_topic(settings, topic)
    day = [(None, k, v) for k, v in trading_day(200, seed=12)]
    first = publish(stack.kafka_url, topic, day[: len(day) // 2])
    time.sleep(1.0)
    middle = datetime.now(UTC).isoformat(timespec="milliseconds")
    time.sleep(0.5)
    second = publish(stack.kafka_url, topic, day[len(day) // 2 :])
    located = first + second
    worker = ExporterProcess(s, tmp_path / "first.log")
    try:
        wait_exported(s.conninfo(), topic, ends_of(located))
        code, _ = run_cli(s, monkeypatch, capsys, "replay", "--from-time", middle, "--yes")
        assert code == EXIT_REFUSED  # a worker of the group is active
    finally:
        assert worker.terminate() == 0
    counts_before = _append_counts(s)
    code, out = run_cli(s, monkeypatch, capsys, "replay", "--from-time", middle)
    assert code == EXIT_REFUSED and "partition" in out  # said what it would do, then was not confirmed
    code, out = run_cli(s, monkeypatch, capsys, "replay", "--from-time", middle, "--yes")
    assert code == EXIT_OK
    with psycopg.connect(s.conninfo()) as conn:
        restart: dict[int, int] = dict(
            conn.execute("SELECT partition, next_offset FROM exporter_offsets").fetchall()
        )
    second_starts = {p: min(o for q, o, _ in second if q == p) for p in {q for q, _, _ in second}}
    assert restart == {p: second_starts.get(p, ends_of(located)[p]) for p in restart}
    again = ExporterProcess(s, tmp_path / "again.log")
    try:
        wait_exported(s.conninfo(), topic, ends_of(located))
    finally:
        assert again.terminate() == 0
    assert "Flushed" in again.log_tail(400)  # it did read the second half again
    assert _append_counts(s) == counts_before
    expected = apply_events((p, o, v) for p, o, v in located if v is not None)
    with psycopg.connect(s.conninfo()) as conn:
        actual = snapshot(conn)
    assert actual == expected, diff(expected, actual)
    # A full rebuild: empty tables, every message read again, the same result.
    code, _ = run_cli(s, monkeypatch, capsys, "replay", "--truncate", "--yes")
    assert code == EXIT_OK and _append_counts(s) == (0, 0, 0, 0)
    rebuilt = ExporterProcess(s, tmp_path / "rebuilt.log")
    try:
        wait_exported(s.conninfo(), topic, ends_of(located))
    finally:
        assert rebuilt.terminate() == 0
    with psycopg.connect(s.conninfo()) as conn:
        assert snapshot(conn) == expected
    assert _append_counts(s) == counts_before


def _append_counts(settings: Settings) -> tuple[int, ...]:
    with psycopg.connect(settings.conninfo()) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM order_acks), (SELECT count(*) FROM order_naks),"
            " (SELECT count(*) FROM parameters), (SELECT count(*) FROM session_times)"
        ).fetchone()
    assert row is not None
    return tuple(int(n) for n in row)


def test_replay_of_some_tables_rebuilds_them_and_their_children_and_leaves_the_rest(
    stack: Stack,
    settings: Settings,
    make_topic: Callable[[int], str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    topic = make_topic(2)
    s = on_topic(settings, topic)
    located = publish(stack.kafka_url, topic, [(None, k, v) for k, v in trading_day(150, seed=14)])
    with ExporterThread(s):
        wait_exported(s.conninfo(), topic, ends_of(located))
    with psycopg.connect(s.conninfo(), autocommit=True) as conn:
        conn.execute("UPDATE orders SET state = 'X'")  # damage to repair
        conn.execute("DELETE FROM order_acks WHERE id IN (SELECT id FROM order_acks LIMIT 5)")
        before: dict[str, Any] = dict(conn.execute("SELECT code, exported_at FROM participants").fetchall())
    code, out = run_cli(
        s, monkeypatch, capsys, "replay", "--truncate", "--tables", "orders", "--yes", "--json"
    )
    plan = json.loads(out)
    assert code == EXIT_OK and plan["applied"] and plan["truncate"]
    assert plan["tables"] == ["orders", "contracts", "order_acks", "order_naks"]
    with ExporterThread(s):
        wait_exported(s.conninfo(), topic, ends_of(located))
    expected = apply_events((p, o, v) for p, o, v in located if v is not None)
    with psycopg.connect(s.conninfo()) as conn:
        actual = snapshot(conn)
        after: dict[str, Any] = dict(conn.execute("SELECT code, exported_at FROM participants").fetchall())
    assert actual == expected, diff(expected, actual)
    assert after == before  # read again, left as they were by the stale guard
