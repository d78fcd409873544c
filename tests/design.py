"""The original design's tables and indexes, parsed from tests/fixtures/design_schema.sql.

Each design column becomes the set of ``information_schema.columns`` shapes
that the contract allows for it: (data_type, character_maximum_length,
numeric_precision, numeric_scale), with precision and scale only for numeric.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

FIXTURE = Path(__file__).parent / "fixtures" / "design_schema.sql"

Shape = tuple[str, int | None, int | None, int | None]


@dataclass(frozen=True)
class DesignIndex:
    name: str
    table: str
    columns: tuple[str, ...]


_INTEGERS = frozenset({("integer", None, None, None), ("bigint", None, None, None)})


def _allowed(table: str, column: str, declared: str) -> frozenset[Shape]:
    # The contract: SERIAL may become BIGSERIAL, and holidays.nid may be BIGINT.
    if declared == "SERIAL" or (table, column, declared) == ("holidays", "nid", "INT"):
        return _INTEGERS
    return frozenset({declared_shape(declared)})


def design_columns() -> dict[str, dict[str, frozenset[Shape]]]:
    text = FIXTURE.read_text()
    tables: dict[str, dict[str, frozenset[Shape]]] = {}
    for table, body in re.findall(r"CREATE TABLE (\w+) \((.*?)\n\);", text, re.S):
        columns = {}
        for line in body.splitlines():
            m = re.match(r"\s+(\w+) ([A-Z]+(?:\(\d+(?:,\d+)?\))?)", line)
            if m:
                columns[m.group(1)] = _allowed(table, m.group(1), m.group(2))
        tables[table] = columns
    return tables


def design_indexes() -> list[DesignIndex]:
    return [
        DesignIndex(name, table, tuple(c.strip() for c in cols.split(",")))
        for name, table, cols in re.findall(r"CREATE INDEX (\w+) ON (\w+)\(([^)]*)\)", FIXTURE.read_text())
    ]


_PLAIN = {
    "BIGINT": "bigint",
    "INT": "integer",
    "BOOLEAN": "boolean",
    "TEXT": "text",
    "DATE": "date",
    "TIME": "time without time zone",
    "TIMESTAMPTZ": "timestamp with time zone",
    "TIMESTAMP": "timestamp with time zone",  # the contract: TIMESTAMP becomes TIMESTAMPTZ
}


def declared_shape(sql_type: str) -> Shape:
    """The information_schema shape of a declared type (the design's, or schema.py's)."""
    m = re.fullmatch(r"([A-Z]+)(?:\((\d+)(?:,(\d+))?\))?", sql_type)
    assert m, sql_type
    word, n, scale = m.group(1), m.group(2), m.group(3)
    if word == "VARCHAR":
        return ("character varying", int(n), None, None)
    if word in ("DECIMAL", "NUMERIC"):
        return ("numeric", None, int(n), int(scale))
    return (_PLAIN[word], None, None, None)
