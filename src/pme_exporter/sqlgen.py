"""Set-based statements generated from ``schema.TABLES``.

Every statement works on one table's staging rows ``seq BETWEEN %(lo)s AND
%(hi)s``, so the sink can run a whole batch at once or, when PostgreSQL refuses
a row, bisect the range to find it; append statements also take ``%(topic)s``,
part of each append row's identity. Staging columns are all text: COPY never
fails on content, and the casts below raise the SQLSTATE that names the fault.

Upsert rule (spec section 3): per key the event with the greatest
``(ts, src_partition, src_offset)`` wins, in the batch and against the stored
row; ``created_at`` is the least ``ts`` ever seen. Applying any split of the
events in any order therefore gives the same rows.
"""

from __future__ import annotations

from dataclasses import dataclass

from pme_exporter.schema import CAST_TYPE, PARKED_PARENT_COLUMNS, TableSpec, WriteMode

LINEAGE = ("seq", "src_partition", "src_offset", "ts")


@dataclass(frozen=True)
class TableStatements:
    create_staging: str
    copy: str
    # Returns one row: inserted, updated, staged, ready, then for child tables the
    # orphans (parent missing) as arrays: seqs, then one array per PARKED_PARENT_COLUMNS.
    apply: str


def staging_table(spec: TableSpec) -> str:
    return f"stg_{spec.table}"


def _src_cte(spec: TableSpec) -> str:
    casts = ",\n            ".join(f"s.{c.name}::{CAST_TYPE[c.kind]} AS {c.name}" for c in spec.columns)
    parents_ok = _parents_present(spec, "c") if spec.is_child else "true"
    return f"""src AS (
    SELECT c.*, {parents_ok} AS parents_ok
    FROM (
        SELECT s.seq, s.src_partition, s.src_offset, s.ts::timestamptz AS ts,
            {casts}
        FROM {staging_table(spec)} s
        WHERE s.seq BETWEEN %(lo)s AND %(hi)s
    ) c
)"""


def _parents_present(spec: TableSpec, alias: str) -> str:
    return " AND ".join(
        f"({alias}.{p.column} IS NULL"
        f" OR EXISTS (SELECT 1 FROM {p.table} p WHERE p.{p.key} = {alias}.{p.column}))"
        for p in spec.parents
    )


def _counts(spec: TableSpec, inserted: str, updated: str) -> str:
    """The statement's result row; orphans come back in it so staging is scanned once."""
    orphans = ""
    if spec.is_child:
        keys = [
            f"(SELECT array_agg({c} ORDER BY seq) FROM src WHERE NOT parents_ok)"
            if c in spec.column_names
            else "NULL::bigint[]"
            for c in PARKED_PARENT_COLUMNS
        ]
        orphans = f""",
    (SELECT array_agg(seq ORDER BY seq) FROM src WHERE NOT parents_ok),
    {", ".join(keys)}"""
    return f"""SELECT {inserted}, {updated},
    (SELECT count(*) FROM src), (SELECT count(*) FROM src WHERE parents_ok){orphans}
FROM written"""


def _upsert(spec: TableSpec) -> str:
    key = spec.key
    cols = spec.column_names
    data_cols = [c for c in cols if c != key]
    wins = (
        "(t.updated_at, t.src_partition, t.src_offset)"
        " < (EXCLUDED.updated_at, EXCLUDED.src_partition, EXCLUDED.src_offset)"
    )
    sets = ",\n        ".join(
        [f"{c} = CASE WHEN {wins} THEN EXCLUDED.{c} ELSE t.{c} END" for c in data_cols]
        + [
            f"{c} = CASE WHEN {wins} THEN EXCLUDED.{c} ELSE t.{c} END"
            for c in ("updated_at", "src_partition", "src_offset")
        ]
        + [
            f"exported_at = CASE WHEN {wins} THEN now() ELSE t.exported_at END",
            "created_at = LEAST(t.created_at, EXCLUDED.created_at)",
        ]
    )
    return f"""WITH {_src_cte(spec)},
winners AS (
    SELECT DISTINCT ON ({key}) *, min(ts) OVER (PARTITION BY {key}) AS first_ts
    FROM src WHERE parents_ok
    ORDER BY {key}, ts DESC, src_partition DESC, src_offset DESC
),
written AS (
    INSERT INTO {spec.table} AS t ({", ".join(cols)}, created_at, updated_at, src_partition, src_offset)
    SELECT {", ".join(cols)}, first_ts, ts, src_partition, src_offset FROM winners
    ON CONFLICT ({key}) DO UPDATE SET
        {sets}
    WHERE {wins} OR EXCLUDED.created_at < t.created_at
    RETURNING (xmax = 0) AS inserted
)
{_counts(spec, "count(*) FILTER (WHERE inserted)", "count(*) FILTER (WHERE NOT inserted)")}"""


def _append(spec: TableSpec) -> str:
    cols = spec.column_names
    return f"""WITH {_src_cte(spec)},
written AS (
    INSERT INTO {spec.table} ({", ".join(cols)}, created_at, src_topic, src_partition, src_offset)
    SELECT {", ".join(cols)}, ts, %(topic)s, src_partition, src_offset FROM src WHERE parents_ok
    ON CONFLICT (src_topic, src_partition, src_offset) DO NOTHING
    RETURNING 1
)
{_counts(spec, "count(*)", "0")}"""


def adopt_parked_statement(specs: tuple[TableSpec, ...]) -> str:
    """Deletes and returns every parked child whose parents are now stored, for all child tables."""
    which = "\n   OR ".join(
        f"(pc.table_name = '{spec.table}' AND {_parents_present(spec, 'pc')})"
        for spec in specs
        if spec.is_child
    )
    return f"""DELETE FROM exporter_parked_children pc
WHERE {which}
RETURNING pc.table_name, pc.partition, pc."offset", pc.msg_key, pc.msg_value"""


def statements_for(spec: TableSpec) -> TableStatements:
    stg_cols = ", ".join(LINEAGE + spec.column_names)
    typed = ", ".join(
        ["seq int", "src_partition int", "src_offset bigint", "ts text"]
        + [f"{c} text" for c in spec.column_names]
    )
    return TableStatements(
        create_staging=(
            f"CREATE TEMP TABLE IF NOT EXISTS {staging_table(spec)} ({typed}) ON COMMIT DELETE ROWS"
        ),
        copy=f"COPY {staging_table(spec)} ({stg_cols}) FROM STDIN",
        apply=_upsert(spec) if spec.mode is WriteMode.UPSERT else _append(spec),
    )
