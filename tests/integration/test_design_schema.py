"""The live schema is the original design's (tests/fixtures/design_schema.sql), and 001 databases migrate to it."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest

from pme_exporter.devtools.generator import ends_of, publish
from pme_exporter.errors import MigrationError
from pme_exporter.migrate import load_migrations, migrate, sql_dir
from pme_exporter.schema import TABLES
from pme_exporter.settings import Settings
from tests.design import design_columns, design_indexes
from tests.helpers import ExporterThread, on_topic, wait_exported
from tests.stack import Stack

TS = "2025-11-29T09:00:00+07:00"


def env(event_type: str, data: dict[str, Any]) -> bytes:
    return orjson.dumps({"type": event_type, "ts": TS, "data": data})


def live_columns(conn: psycopg.Connection[Any]) -> dict[tuple[str, str], tuple[Any, ...]]:
    rows = conn.execute(
        """SELECT table_name, column_name, data_type, character_maximum_length,
                  CASE WHEN data_type = 'numeric' THEN numeric_precision END,
                  CASE WHEN data_type = 'numeric' THEN numeric_scale END
           FROM information_schema.columns WHERE table_schema = 'public'"""
    ).fetchall()
    return {(r[0], r[1]): tuple(r[2:]) for r in rows}


def assert_design_types(conn: psycopg.Connection[Any]) -> None:
    live = live_columns(conn)
    mismatched = {
        (table, column): live.get((table, column))
        for table, columns in design_columns().items()
        for column, allowed in columns.items()
        if live.get((table, column)) not in allowed
    }
    assert not mismatched, f"columns that differ from the design (live shape shown): {mismatched}"


def test_live_schema_has_every_design_column_type_and_index(settings: Settings) -> None:
    with psycopg.connect(settings.conninfo()) as conn:
        assert_design_types(conn)
        indexed = {
            (table, tuple(columns))
            for table, columns in conn.execute(
                """SELECT t.relname, array_agg(a.attname ORDER BY k.ord)
                   FROM pg_index i
                   JOIN pg_class t ON t.oid = i.indrelid
                   JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) ON true
                   JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.attnum
                   JOIN pg_namespace n ON n.oid = t.relnamespace AND n.nspname = 'public'
                   GROUP BY i.indexrelid, t.relname"""
            )
        }
    missing = [ix for ix in design_indexes() if (ix.table, ix.columns) not in indexed]
    assert not missing, f"design indexes with no index on exactly their columns: {missing}"


def test_values_the_design_accepts_land_and_those_it_refuses_are_dead_letters(
    stack: Stack, settings: Settings, make_topic: Callable[[int], str]
) -> None:
    topic = make_topic(1)
    good = [
        env("Instrument", {"code": "BBCA", "name": "Bank Central Asia", "status": True}),
        env("Instrument", {"code": "GOTO", "name": "GoTo", "status": False}),
        env("Account", {"code": "A" * 50, "participant_code": "P" * 50}),
        env("Trade", {"nid": 1, "kpei_reff": "K" * 100, "quantity": "1234567890123.99"}),
        env("Order", {"nid": 1, "account_code": "A" * 50, "reff_request_id": "R" * 100}),
    ]
    bad = {
        env("Account", {"code": "B" * 51}): "22001",
        env("Order", {"nid": 2, "quantity": "12345678901234.00"}): "22003",
        env("Trade", {"nid": 2, "kpei_reff": "K2", "fee_borr_rate": "12345.5"}): "22003",
    }
    located = publish(stack.kafka_url, topic, [(None, None, v) for v in good + list(bad)])
    s = on_topic(settings, topic)
    with ExporterThread(s):
        wait_exported(s.conninfo(), topic, ends_of(located))
    with psycopg.connect(s.conninfo()) as conn:
        statuses: dict[str, bool] = dict(conn.execute("SELECT code, status FROM instruments").fetchall())
        account = conn.execute("SELECT length(code), length(participant_code) FROM accounts").fetchall()
        trade = conn.execute("SELECT length(kpei_reff), quantity::text FROM trades").fetchall()
        order = conn.execute("SELECT length(account_code), length(reff_request_id) FROM orders").fetchall()
        dead = conn.execute(
            'SELECT msg_value, stage, sqlstate, error FROM exporter_dead_letters ORDER BY "offset"'
        ).fetchall()
    assert statuses == {"BBCA": True, "GOTO": False}
    assert account == [(50, 50)] and trade == [(100, "1234567890123.99")] and order == [(50, 100)]
    assert {bytes(v): state for v, _, state, _ in dead} == bad
    assert all(stage == "database" and error for _, stage, _, error in dead)


# One row per table in 001's types, including instrument statuses as text.
_ROWS_001 = """
INSERT INTO participants VALUES ('P01', 'Broker', now(), now(), 0, 1);
INSERT INTO accounts VALUES ('ACC1', 'P01', 'SID', 1000.00, 2000.00, now(), now(), 0, 2);
INSERT INTO instruments VALUES
    ('I1', 'yes', 'true', now(), now(), 0, 3),
    ('I2', 'no', ' F ', now(), now(), 0, 4),
    ('I3', 'active', 'A', now(), now(), 0, 5),
    ('I4', 'none', NULL, now(), now(), 0, 6);
INSERT INTO orders VALUES (1, 'ACC1', 'I1', 'BORR', 100.00, 50.00, 30, 'O', '2025-12-01', false, 'REQ', now(), now(), 0, 7);
INSERT INTO trades VALUES (1, 'K1', 'I1', 100.00, 30, 'M', now(), NULL, 0.0005, 0.18, 0.15, now(), now(), 0, 8);
INSERT INTO contracts VALUES (1, 1, 1, 'K1', 'ACC1', 'I1', 'BORR', 100.00, 'A', now(), NULL, 0.05, 0.05, now(), now(), 0, 9);
INSERT INTO order_acks (order_nid, acknowledged_at, created_at, src_partition, src_offset) VALUES (1, now(), now(), 0, 10);
INSERT INTO order_naks (order_nid, message, rejected_at, created_at, src_partition, src_offset) VALUES (1, 'x', now(), now(), 0, 11);
INSERT INTO parameters (fee_flat_rate, fee_borr_rate, fee_lend_rate, auto_match_flag, effective_from, created_at, src_partition, src_offset)
    VALUES (0.0005, 0.18, 0.15, true, now(), now(), 0, 12);
INSERT INTO holidays VALUES (1, '2025-12-25', 'Natal', now(), now(), 0, 13);
INSERT INTO session_times (pre_opening_time, opening_time, closing_time, effective_from, created_at, src_partition, src_offset)
    VALUES ('08:45', '09:00', '15:50', now(), now(), 0, 14);
INSERT INTO exporter_offsets VALUES ('pme-ledger', 0, 15, now());
"""
_TABLES = (*(spec.table for spec in TABLES), "exporter_offsets")


def _only_001(tmp_path: Path) -> Path:
    only = tmp_path / "sql-001"
    only.mkdir()
    shutil.copy(sql_dir() / "001_schema.sql", only)
    return only


def _counts(conn: psycopg.Connection[Any]) -> dict[str, int]:
    return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in _TABLES}  # type: ignore[index]


def test_a_001_database_migrates_to_the_design_without_losing_a_row(
    base_settings: Settings, empty_db: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    conninfo = base_settings.replace(db_name=empty_db).conninfo()
    assert migrate(conninfo, _only_001(tmp_path)) == ["001"]
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(_ROWS_001)
        before = _counts(conn)
    with caplog.at_level(logging.INFO, logger="pme_exporter.migrate"):
        applied = migrate(conninfo)
    assert applied == [m.version for m in load_migrations()][1:]
    assert (
        "instruments.status to BOOLEAN: 1 true, 1 false, 1 already NULL, 1 unmapped text to NULL"
        in caplog.text
    )
    with psycopg.connect(conninfo) as conn:
        assert _counts(conn) == before and all(before.values())
        assert dict(conn.execute("SELECT code, status FROM instruments").fetchall()) == {
            "I1": True,
            "I2": False,
            "I3": None,
            "I4": None,
        }
        assert conn.execute("SELECT code, old_status FROM exporter_migration_002_status").fetchall() == [
            ("I3", "A")
        ]
        assert_design_types(conn)
        assert conn.execute("SELECT src_topic FROM order_acks").fetchall() == [("pme-ledger",)]
    assert "append rows written before 004 are attributed to topic 'pme-ledger'" in caplog.text


def test_a_migration_that_stored_values_do_not_fit_is_refused_and_changes_nothing(
    base_settings: Settings, empty_db: str, tmp_path: Path
) -> None:
    conninfo = base_settings.replace(db_name=empty_db).conninfo()
    migrate(conninfo, _only_001(tmp_path))
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(_ROWS_001)
        conn.execute("UPDATE orders SET quantity = 12345678901234.00")
        conn.execute("UPDATE participants SET name = repeat('n', 201)")
    with pytest.raises(MigrationError) as refused:
        migrate(conninfo)
    assert "002_design_types.sql was refused" in str(refused.value)
    assert "orders.quantity: 1 row(s)" in str(refused.value)
    assert "participants.name: 1 row(s)" in str(refused.value)
    with psycopg.connect(conninfo) as conn:
        assert conn.execute("SELECT version FROM schema_migrations").fetchall() == [("001",)]
        status_type = conn.execute(
            "SELECT data_type FROM information_schema.columns WHERE table_name = 'instruments' AND column_name = 'status'"
        ).fetchone()
        assert status_type == ("character varying",)


def test_an_applied_migration_that_changed_is_refused(
    base_settings: Settings, empty_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conninfo = base_settings.replace(db_name=empty_db).conninfo()
    copy = tmp_path / "sql"
    shutil.copytree(sql_dir(), copy)
    migrate(conninfo, copy)
    with (copy / "001_schema.sql").open("a") as edited:
        edited.write("\n-- an edit after the fact\n")
    with pytest.raises(MigrationError, match=r"001_schema\.sql was changed after it was applied"):
        migrate(conninfo, copy)
    # The CLI says so in one line and exits 6.
    import pme_exporter.migrate as migrate_module
    from pme_exporter import cli

    monkeypatch.setattr(migrate_module, "sql_dir", lambda: copy)
    for name, value in base_settings.replace(db_name=empty_db).to_env().items():
        monkeypatch.setenv(name, value)
    assert cli.main(["migrate"]) == 6
