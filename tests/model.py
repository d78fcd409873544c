"""The reference model of README "Event types and tables": events applied one at a time, in Python.

Tables are ``{table: {row_key: {column: value}}}`` with the row key the
entity key (upsert tables) or ``(src_partition, src_offset)`` (append
tables); values are what psycopg returns for the column, so a database
snapshot compares with ``==``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import date, datetime, time
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import orjson
import psycopg
from psycopg import sql

from pme_exporter.schema import BY_EVENT_TYPE, TABLES, Column, Kind, TableSpec, WriteMode, declared_limits

Tables = dict[str, dict[Any, dict[str, Any]]]
# (partition, offset, value) of a message the decoder accepts; (life, partition, offset, value)
# for a message of a later life of a recreated topic.
ValidMessage = tuple[int, int, bytes] | tuple[int, int, int, bytes]


def column_value(column: Column, raw: Any) -> Any:
    if raw is None:
        return None
    kind = column.kind
    if kind is Kind.INTEGER:
        return int(raw)
    if kind is Kind.DECIMAL:
        scale = int(re.findall(r"\d+", column.sql_type)[1])
        return Decimal(str(raw)).quantize(Decimal(1).scaleb(-scale), rounding=ROUND_HALF_UP)
    if kind is Kind.BOOLEAN:
        return bool(raw)
    if kind is Kind.DATE:
        return date.fromisoformat(raw)
    if kind is Kind.TIME:
        return time.fromisoformat(raw)
    if kind is Kind.TIMESTAMPTZ:
        return datetime.fromisoformat(raw)
    # VARCHAR(n) holds at most n characters: PostgreSQL cuts the trailing spaces past them.
    max_chars = declared_limits(column.sql_type)[0]
    return str(raw)[:max_chars] if max_chars is not None else str(raw)


def _row(spec: TableSpec, envelope: dict[str, Any]) -> dict[str, Any]:
    data = envelope["data"]
    row = {}
    for c in spec.columns:
        raw = data.get(c.name)
        if raw is None and c.defaults_to_event_time:
            raw = envelope["ts"]
        row[c.name] = column_value(c, raw)
    return row


def apply_events(events: Iterable[ValidMessage]) -> Tables:
    """Applies valid events one at a time; the same (partition, offset) counts once.

    A child event whose parent never arrives waits in exporter_parked_children
    and is not applied; its table shows the newest version whose parents exist.
    """
    decoded = []
    seen: set[tuple[int, int, int]] = set()
    for message in events:
        life, partition, offset, value = message if len(message) == 4 else (1, *message)
        if (life, partition, offset) not in seen:
            seen.add((life, partition, offset))
            envelope = orjson.loads(value)
            spec = BY_EVENT_TYPE[envelope["type"]]
            decoded.append((life, partition, offset, spec, envelope, _row(spec, envelope)))
    tables: Tables = {spec.table: {} for spec in TABLES}
    for life, partition, offset, spec, envelope, row in decoded:
        if not spec.is_child:
            _apply(tables, life, partition, offset, spec, envelope, row)
    for life, partition, offset, spec, envelope, row in decoded:
        if spec.is_child and all(
            row[p.column] is None or row[p.column] in tables[p.table] for p in spec.parents
        ):
            _apply(tables, life, partition, offset, spec, envelope, row)
    return tables


def append_key(life: int, partition: int, offset: int) -> tuple[int, ...]:
    """An append row's key in the model: its message's place, with the topic's life after the first."""
    return (partition, offset) if life == 1 else (life, partition, offset)


def _apply(
    tables: Tables,
    life: int,
    partition: int,
    offset: int,
    spec: TableSpec,
    envelope: dict[str, Any],
    row: dict[str, Any],
) -> None:
    ts = datetime.fromisoformat(envelope["ts"])
    rows = tables[spec.table]
    if spec.mode is WriteMode.APPEND:
        rows[append_key(life, partition, offset)] = {
            **row,
            "created_at": ts,
            "src_partition": partition,
            "src_offset": offset,
        }
        return
    assert spec.key is not None
    key = row[spec.key]
    old = rows.get(key)
    new = {**row, "updated_at": ts, "src_partition": partition, "src_offset": offset}
    if old is None:
        rows[key] = {**new, "created_at": ts}
    elif (ts, partition, offset) > (old["updated_at"], old["src_partition"], old["src_offset"]):
        rows[key] = {**new, "created_at": min(old["created_at"], ts)}
    else:
        old["created_at"] = min(old["created_at"], ts)


def snapshot(conn: psycopg.Connection[Any]) -> Tables:
    """The exported tables, in the model's shape."""
    tables: Tables = {}
    for spec in TABLES:
        lineage = ["created_at", "src_partition", "src_offset"]
        if spec.mode is WriteMode.UPSERT:
            lineage.append("updated_at")
        names = [*spec.column_names, *lineage]
        life = "src_life" if spec.mode is WriteMode.APPEND else "1"
        query = sql.SQL("SELECT {}, {} FROM {}").format(
            sql.SQL(", ").join(map(sql.Identifier, names)), sql.SQL(life), sql.Identifier(spec.table)
        )
        rows: dict[Any, dict[str, Any]] = {}
        for *values, src_life in conn.execute(query):
            row = dict(zip(names, values, strict=True))
            if spec.mode is WriteMode.APPEND:
                rows[append_key(src_life, row["src_partition"], row["src_offset"])] = row
            else:
                rows[row[str(spec.key)]] = row
        tables[spec.table] = rows
    return tables


def diff(expected: Tables, actual: Tables, limit: int = 5) -> str:
    """A short human description of how two table sets differ ('' when equal)."""
    lines = []
    for table in expected:
        e, a = expected[table], actual.get(table, {})
        if e == a:
            continue
        missing = [k for k in e if k not in a][:limit]
        extra = [k for k in a if k not in e][:limit]
        changed = [k for k in e if k in a and e[k] != a[k]][:limit]
        lines.append(f"{table}: {len(e)} expected, {len(a)} stored; missing {missing}, extra {extra}")
        for k in changed:
            cols = {c: (e[k][c], a[k].get(c)) for c in e[k] if e[k][c] != a[k].get(c)}
            lines.append(f"  {table}[{k}] expected vs stored: {cols}")
    return "\n".join(lines)
