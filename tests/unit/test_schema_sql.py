"""schema.py and sql/001_schema.sql describe the same tables."""

from __future__ import annotations

import re

from pme_exporter.migrate import load_migrations
from pme_exporter.schema import TABLES, WriteMode
from pme_exporter.sqlgen import statements_for


def _ddl_columns() -> dict[str, dict[str, str]]:
    text = "\n".join(m.sql for m in load_migrations())
    tables = {}
    for name, body in re.findall(r"CREATE TABLE (\w+) \((.*?)\n\);", text, re.S):
        cols = {}
        for line in body.splitlines():
            m = re.match(r"\s+\"?(\w+)\"?\s+([A-Z]+(?:\(\d+(?:,\d+)?\))?)", line)
            if m and m.group(1) not in ("UNIQUE", "PRIMARY"):
                cols[m.group(1)] = m.group(2)
        tables[name] = cols
    return tables


def test_every_spec_column_exists_with_its_type() -> None:
    ddl = _ddl_columns()
    for spec in TABLES:
        assert spec.table in ddl, spec.table
        for column in spec.columns:
            assert ddl[spec.table].get(column.name) == column.sql_type, (spec.table, column.name)


def test_every_table_has_lineage_and_append_tables_are_unique_per_message() -> None:
    ddl = _ddl_columns()
    text = "\n".join(m.sql for m in load_migrations())
    for spec in TABLES:
        cols = ddl[spec.table]
        assert {"src_partition", "src_offset", "exported_at", "created_at"} <= set(cols)
        assert ("updated_at" in cols) == (spec.mode is WriteMode.UPSERT)
    for table in ("order_acks", "order_naks", "parameters", "session_times"):
        block = re.search(rf"CREATE TABLE {table} \((.*?)\n\);", text, re.S)
        assert block and "UNIQUE (src_partition, src_offset)" in block.group(1)


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
