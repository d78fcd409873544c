"""schema.py and the migrations describe the original design's tables (tests/fixtures/design_schema.sql)."""

from __future__ import annotations

import re

from pme_exporter.migrate import load_migrations
from pme_exporter.schema import TABLES, WriteMode
from pme_exporter.sqlgen import statements_for
from tests.design import declared_shape, design_columns


def test_every_spec_column_has_the_design_type() -> None:
    design = design_columns()
    for spec in TABLES:
        for column in spec.columns:
            allowed = design[spec.table][column.name]
            assert declared_shape(column.sql_type) in allowed, (spec.table, column.name, column.sql_type)


def test_every_design_column_of_an_exported_table_is_in_the_spec_or_lineage() -> None:
    design = design_columns()
    lineage = {"id", "created_at", "updated_at"}
    for spec in TABLES:
        assert set(design[spec.table]) - lineage <= set(spec.column_names), spec.table
    assert set(design) == {spec.table for spec in TABLES}


def test_append_tables_are_unique_per_message_of_a_topic_life() -> None:
    text = "\n".join(m.sql for m in load_migrations())
    identity = "(src_topic, src_life, src_partition, src_offset)"
    for spec in TABLES:
        unique = f"ADD CONSTRAINT {spec.table}_src_key UNIQUE {identity}" in text
        assert unique == (spec.mode is WriteMode.APPEND), spec.table
        if spec.mode is WriteMode.APPEND:
            assert f"ON CONFLICT {identity} DO NOTHING" in statements_for(spec).apply


def test_foreign_keys_match_the_parent_definitions() -> None:
    text = "\n".join(m.sql for m in load_migrations())
    for spec in TABLES:
        for parent in spec.parents:
            assert re.search(rf"{parent.column}\s+BIGINT.*REFERENCES {parent.table} \({parent.key}\)", text)


def test_statements_bisect_by_sequence_range() -> None:
    for spec in TABLES:
        stmts = statements_for(spec)
        assert "%(lo)s" in stmts.apply and "%(hi)s" in stmts.apply
        assert ("parents_ok" in stmts.apply) and (("array_agg(seq" in stmts.apply) == spec.is_child)
