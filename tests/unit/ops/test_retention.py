"""What retention moves and in which order, derived from schema.TABLES."""

from __future__ import annotations

import re

from pme_exporter.migrate import sql_dir
from pme_exporter.ops.retention import batch_statement, retained
from pme_exporter.schema import RETAINED


def test_children_move_before_their_parents() -> None:
    for position, table in enumerate(RETAINED):
        for child, _column in retained(table).children:
            assert child in RETAINED and RETAINED.index(child) < position, (child, table)


def test_each_parent_knows_every_child_that_references_it() -> None:
    assert set(retained("orders").children) == {
        ("order_acks", "order_nid"),
        ("order_naks", "order_nid"),
        ("contracts", "order_nid"),
    }
    assert retained("trades").children == (("contracts", "trade_nid"),)
    assert retained("order_acks").children == ()


def test_upserts_age_by_their_latest_state_and_appends_by_their_creation() -> None:
    assert (retained("orders").key, retained("orders").age) == ("nid", "updated_at")
    assert (retained("order_naks").key, retained("order_naks").age) == ("id", "created_at")


def test_the_retained_tables_are_the_ones_with_an_archive_table() -> None:
    archives = re.findall(
        r"CREATE TABLE (\w+)_archive \(LIKE (\w+)\)", (sql_dir() / "005_archive.sql").read_text()
    )
    assert sorted(RETAINED) == sorted(table for table, like in archives if table == like)
    assert len(RETAINED) == 5


def test_a_batch_takes_only_unlocked_rows_and_archives_in_the_statement_that_deletes() -> None:
    archive = batch_statement(retained("orders"), archive=True).as_string(None)
    purge = batch_statement(retained("orders"), archive=False).as_string(None)
    assert "FOR UPDATE SKIP LOCKED" in archive and "FOR UPDATE SKIP LOCKED" in purge
    assert 'INSERT INTO "orders_archive" SELECT * FROM gone' in archive and "archive" not in purge
    assert archive.count("NOT EXISTS") == 3  # acks, naks and contracts hold an order
