"""``pme-exporter verify`` on the real stack: a clean export passes, hand-made damage is named."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import orjson
import psycopg
import pytest

from pme_exporter.devtools.generator import ends_of, publish, trading_day
from pme_exporter.errors import EXIT_MISMATCH, EXIT_OK
from pme_exporter.ops.verify import in_sample
from pme_exporter.settings import Settings
from tests.corpus import DATABASE_CASES, encode
from tests.helpers import ExporterProcess, on_topic, run_cli, wait_exported
from tests.stack import Stack


def _planted_day() -> list[tuple[int | None, bytes | None, bytes | None]]:
    """A trading day with every kind of message verify must account for."""
    day: list[tuple[int | None, bytes | None, bytes | None]] = [
        (None, k, v)
        for k, v in trading_day(300, seed=21, invalid=True)  # bad messages, a tombstone
    ]
    # Children before their parents (late parents), and one child whose parent never comes (parked).
    late = [
        encode("OrderAck", {"order_nid": 990_001, "acknowledged_at": "2025-11-29T09:00:01Z"}),
        encode("Order", {"nid": 990_001, "account_code": "ACC-LATE", "state": "O", "quantity": "100.00"}),
    ]
    orphan = encode("OrderNak", {"order_nid": 990_999, "message": "no parent, ever"})
    # Old versions published again after the newer ones: stale replays.
    replays = [(None, k, v) for _, k, v in day[100:300] if v is not None and b'"Order"' in v]
    refused = [(0, None, value) for value, _ in DATABASE_CASES[:4]]
    return [
        *day[:50],
        (0, None, late[0]),
        (0, None, orphan),
        *day[50:],
        (1, None, late[1]),
        *replays,
        *refused,
    ]


def test_verify_passes_on_an_exported_day_and_names_an_altered_a_deleted_and_a_duplicated_row(
    stack: Stack,
    settings: Settings,
    make_topic: Callable[[int], str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    topic = make_topic(2)
    s = on_topic(settings, topic, breaker_ratio=1.0)
    located = publish(stack.kafka_url, topic, _planted_day())
    worker = ExporterProcess(s, tmp_path / "exporter.log")
    try:
        wait_exported(s.conninfo(), topic, ends_of(located))
        # Read-only and consistent beside a running worker.
        code, out = run_cli(s, monkeypatch, capsys, "verify", "--json")
    finally:
        assert worker.terminate() == 0
    result = json.loads(out)
    assert code == EXIT_OK and result["ok"] and result["mismatches"] == [], out
    tables = result["tables"]
    assert result["messages"] == len(located) and result["tombstones"] == 1
    assert result["decode_failures"] >= 3
    assert tables["order_naks"]["parked"] == 1 and tables["orders"]["stale"] >= 10
    assert (
        tables["order_acks"]["stored"]
        == tables["order_acks"]["messages"] - tables["order_acks"]["dead_letter"]
    )
    with psycopg.connect(s.conninfo(), autocommit=True) as conn:
        stages: dict[str, int] = dict(
            conn.execute("SELECT stage, count(*) FROM exporter_dead_letters GROUP BY 1").fetchall()
        )
        assert stages["decode"] == result["decode_failures"]
        # Our four refusals (and the day's own): judged before staging, or by PostgreSQL.
        assert stages["database"] == result["refused"] + sum(t["dead_letter"] for t in tables.values()) >= 4
        altered = conn.execute("UPDATE orders SET quantity = quantity + 1 WHERE nid = 990001 RETURNING nid")
        assert altered.fetchone() is not None
        deleted = conn.execute(
            "DELETE FROM instruments WHERE code = (SELECT min(code) FROM instruments) RETURNING code"
        )
        instrument = deleted.fetchone()
        assert instrument is not None
        # A hand-made copy of an ack, given the place of a message that is not an ack.
        p, o = next((p, o) for p, o, v in located if v is not None and b'"Trade"' in v)
        conn.execute(
            """INSERT INTO order_acks (order_nid, acknowledged_at, created_at, src_topic, src_partition, src_offset)
               SELECT order_nid, acknowledged_at, created_at, src_topic, %s, %s FROM order_acks LIMIT 1""",
            (p, o),
        )
    code, out = run_cli(s, monkeypatch, capsys, "verify")
    assert code == EXIT_MISMATCH, out
    assert "verify: 3 mismatch(es)" in out
    assert "orders: altered key 990001" in out and "quantity" in out
    assert f"instruments: missing key {instrument[0]}" in out
    assert f"order_acks: extra at partition {p} offset {o}" in out
    # Sampled: the keys outside the sample are not read, the ones inside still are.
    code, out = run_cli(s, monkeypatch, capsys, "verify", "--json", "--sample", "0.5")
    sampled = json.loads(out)
    named = {(m["table"], m["key"]) for m in sampled["mismatches"]}
    assert (("orders", "990001") in named) == in_sample("990001", 0.5)
    assert sum(t["messages"] for t in sampled["tables"].values()) < sum(
        t["messages"] for t in tables.values()
    )


def test_sampling_is_the_same_in_python_and_in_sql(stack: Stack, settings: Settings) -> None:
    keys = [str(n) for n in range(0, 2000, 7)] + ["ACC-001", "é", "x" * 50, ""]
    with psycopg.connect(settings.conninfo()) as conn:
        in_sql = conn.execute(
            "SELECT k, ('x' || left(md5(k), 8))::bit(32)::bigint < %s * 4294967296 FROM unnest(%s::text[]) k",
            (0.3, keys),
        ).fetchall()
    assert dict(in_sql) == {k: in_sample(k, 0.3) for k in keys}
    assert 0.15 < sum(in_sample(k, 0.3) for k in keys) / len(keys) < 0.45


def test_verify_reports_a_decode_failure_that_is_not_a_dead_letter(
    stack: Stack,
    settings: Settings,
    make_topic: Callable[[int], str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    topic = make_topic(1)
    s = on_topic(settings, topic)
    participant = orjson.dumps({"type": "Participant", "ts": "2025-11-29T09:00:00Z", "data": {"code": "P1"}})
    located = publish(stack.kafka_url, topic, [(0, None, participant), (0, None, b"{not json")])
    worker = ExporterProcess(s, tmp_path / "exporter.log")
    try:
        wait_exported(s.conninfo(), topic, ends_of(located))
    finally:
        assert worker.terminate() == 0
    with psycopg.connect(s.conninfo(), autocommit=True) as conn:
        conn.execute("DELETE FROM exporter_dead_letters")
    code, out = run_cli(s, monkeypatch, capsys, "verify")
    assert code == EXIT_MISMATCH
    assert "dead_letters: lost at partition 0 offset 1: the message fails decoding (invalid_json)" in out
