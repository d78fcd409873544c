"""Set-based statements generated from ``schema.TABLES``.

Every statement works on one table's staging rows ``seq BETWEEN %(lo)s AND
%(hi)s``, so the sink can run a whole batch at once or, when PostgreSQL refuses
a row, bisect the range to find it; append statements also take ``%(topic)s``
and ``%(life)s`` (the topic's life, ``progress.enter_topic_life``), part of each
append row's identity. Staging columns are all text: COPY never
fails on content, and the casts below raise the SQLSTATE that names the fault.

Upsert rule (README "Event types and tables"): per key the event with the greatest
``(ts, src_partition, src_offset)`` wins, in the batch and against the stored
row; ``created_at`` is the least ``ts`` ever seen. Applying any split of the
events in any order therefore gives the same rows.
"""

from __future__ import annotations

from dataclasses import dataclass

from pme_exporter.errors import not_refusals_sql
from pme_exporter.schema import CAST_TYPE, PARKED_PARENT_COLUMNS, TableSpec, WriteMode

LINEAGE = ("seq", "src_partition", "src_offset", "ts")


@dataclass(frozen=True)
class TableStatements:
    create_staging: str
    copy: str
    # Collapsed tables: one row per key, its least ts last (``TableRows.collapsed_copy``).
    copy_collapsed: str | None
    # Returns one row: inserted, updated, staged, ready, then the orphans (children
    # whose parent is missing) as arrays: seqs, then one per PARKED_PARENT_COLUMNS;
    # NULL arrays when there are none (always, for tables without parents).
    apply: str
    # A temporary function (table) -> rows: apply(lo..hi) one row at a time, each
    # in its own exception block, in one round trip. Returns a row per refused
    # staging row (seq, SQLSTATE, message, NULLs), then one row of totals in the
    # shape of ``apply`` (NULL, NULL, NULL, inserted, updated, ...).
    create_row_by_row: str
    row_by_row: str  # the call, with %(lo)s, %(hi)s, %(topic)s and %(life)s
    # Append tables: the short path. ``copy_direct`` takes ``TableRows.direct_copy_data``
    # straight into the table; ``stored_ends`` returns (partition, greatest stored offset)
    # for %(partitions)s of %(topic)s in %(life)s, so rows beyond it cannot clash.
    copy_direct: str | None = None
    stored_ends: str | None = None


def staging_table(spec: TableSpec) -> str:
    return f"stg_{spec.table}"


def _src_cte(spec: TableSpec) -> str:
    casts = ",\n            ".join(f"s.{c.name}::{CAST_TYPE[c.kind]} AS {c.name}" for c in spec.columns)
    if spec.mode is WriteMode.UPSERT:
        # Set when the batch was collapsed: the least ts of the key's versions left out.
        casts += ",\n            s.least_ts::timestamptz AS least_ts"
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


_RESULT_INTO = "INTO v_ins, v_upd, v_staged, v_ready, v_orphans, v_trade, v_order"


def _counts(spec: TableSpec, inserted: str, updated: str) -> str:
    """The statement's result row; orphans come back in it so staging is scanned once."""
    if spec.is_child:
        keys = [
            f"(SELECT array_agg({c} ORDER BY seq) FROM src WHERE NOT parents_ok)"
            if c in spec.column_names
            else "NULL::bigint[]"
            for c in PARKED_PARENT_COLUMNS
        ]
        orphans = f"(SELECT array_agg(seq ORDER BY seq) FROM src WHERE NOT parents_ok), {', '.join(keys)}"
    else:
        orphans = ", ".join(["NULL::int[]"] + ["NULL::bigint[]" for _ in PARKED_PARENT_COLUMNS])
    return f"""SELECT {inserted}, {updated},
    (SELECT count(*) FROM src), (SELECT count(*) FROM src WHERE parents_ok),
    {orphans}
    /*into*/
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
    SELECT DISTINCT ON ({key}) *, min(coalesce(least_ts, ts)) OVER (PARTITION BY {key}) AS first_ts
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
    INSERT INTO {spec.table} ({", ".join(cols)}, created_at, src_topic, src_life, src_partition, src_offset)
    SELECT {", ".join(cols)}, ts, %(topic)s, %(life)s, src_partition, src_offset FROM src WHERE parents_ok
    ON CONFLICT (src_topic, src_life, src_partition, src_offset) DO NOTHING
    RETURNING 1
)
{_counts(spec, "count(*)", "0")}"""


def adopt_parked_statement(specs: tuple[TableSpec, ...]) -> str:
    """Deletes and returns every parked child of ``%(topic)s`` in its life ``%(life)s`` whose
    parents are now stored, for all child tables. A child parked in an earlier life of the
    topic stays parked: written now, it would take the identity of the new life's message."""
    which = "\n   OR ".join(
        f"(pc.table_name = '{spec.table}' AND {_parents_present(spec, 'pc')})"
        for spec in specs
        if spec.is_child
    )
    return f"""DELETE FROM exporter_parked_children pc
WHERE pc.topic = %(topic)s AND pc.life = %(life)s AND (
    {which})
RETURNING pc.table_name, pc.partition, pc."offset", pc.msg_key, pc.msg_value"""


def row_by_row_function(spec: TableSpec) -> str:
    """``apply`` for one staging row at a time, refusals caught per row (see TableStatements)."""
    assert PARKED_PARENT_COLUMNS == ("trade_nid", "order_nid")  # the v_trade / v_order below
    apply = _upsert(spec) if spec.mode is WriteMode.UPSERT else _append(spec)
    # Variables are prefixed v_/r_/t_ so that none shadows a column name in the statement.
    body = (
        apply.replace("%(lo)s", "v_i")
        .replace("%(hi)s", "v_i")
        .replace("%(topic)s", "v_topic")
        .replace("%(life)s", "v_life")
        .replace("/*into*/", _RESULT_INTO)
    )
    return f"""CREATE OR REPLACE FUNCTION pg_temp.{row_by_row_name(spec)}(v_lo int, v_hi int, v_topic text, v_life int)
RETURNS TABLE (r_seq int, r_state text, r_message text, r_inserted bigint, r_updated bigint,
               r_staged bigint, r_ready bigint, r_orphans int[], r_trade bigint[], r_order bigint[])
LANGUAGE plpgsql AS $fn$
DECLARE
    v_i int;
    v_ins bigint; v_upd bigint; v_staged bigint; v_ready bigint;
    v_orphans int[]; v_trade bigint[]; v_order bigint[];
    t_ins bigint := 0; t_upd bigint := 0; t_staged bigint := 0; t_ready bigint := 0;
    t_orphans int[] := '{{}}'; t_trade bigint[] := '{{}}'; t_order bigint[] := '{{}}';
BEGIN
    FOR v_i IN v_lo .. v_hi LOOP
        BEGIN
{_indent(body, 12)};
            t_ins := t_ins + v_ins; t_upd := t_upd + v_upd;
            t_staged := t_staged + v_staged; t_ready := t_ready + v_ready;
            t_orphans := t_orphans || coalesce(v_orphans, '{{}}');
            t_trade := t_trade || coalesce(v_trade, '{{}}');
            t_order := t_order || coalesce(v_order, '{{}}');
        EXCEPTION WHEN OTHERS THEN
            -- Retried (a parent deleted meanwhile, a lock timeout, ...) or systemic: the whole
            -- batch fails (errors.py); anything else is this row's refusal.
            IF {not_refusals_sql("SQLSTATE")} THEN
                RAISE;
            END IF;
            r_seq := v_i; r_state := SQLSTATE; r_message := SQLERRM;
            RETURN NEXT;
        END;
    END LOOP;
    r_seq := NULL; r_state := NULL; r_message := NULL;
    r_inserted := t_ins; r_updated := t_upd; r_staged := t_staged; r_ready := t_ready;
    r_orphans := nullif(t_orphans, '{{}}');
    r_trade := nullif(t_trade, '{{}}');
    r_order := nullif(t_order, '{{}}');
    RETURN NEXT;
END
$fn$"""


def row_by_row_name(spec: TableSpec) -> str:
    return f"pme_row_by_row_{spec.table}"


def _indent(text: str, spaces: int) -> str:
    return "\n".join(" " * spaces + line for line in text.splitlines())


def statements_for(spec: TableSpec) -> TableStatements:
    stg_cols = ", ".join(LINEAGE + spec.column_names)
    upsert = spec.mode is WriteMode.UPSERT
    typed = ", ".join(
        ["seq int", "src_partition int", "src_offset bigint", "ts text"]
        + [f"{c} text" for c in spec.column_names]
        + (["least_ts text"] if upsert else [])
    )
    return TableStatements(
        create_staging=(
            f"CREATE TEMP TABLE IF NOT EXISTS {staging_table(spec)} ({typed}) ON COMMIT DELETE ROWS"
        ),
        copy=f"COPY {staging_table(spec)} ({stg_cols}) FROM STDIN",
        copy_collapsed=f"COPY {staging_table(spec)} ({stg_cols}, least_ts) FROM STDIN"
        if spec.collapsible
        else None,
        apply=(_upsert(spec) if spec.mode is WriteMode.UPSERT else _append(spec)).replace("/*into*/", ""),
        create_row_by_row=row_by_row_function(spec),
        row_by_row=f"SELECT * FROM pg_temp.{row_by_row_name(spec)}(%(lo)s, %(hi)s, %(topic)s, %(life)s)",
        copy_direct=None
        if upsert
        else (
            f"COPY {spec.table} (src_partition, src_offset, created_at, {', '.join(spec.column_names)},"
            " src_topic, src_life) FROM STDIN"
        ),
        stored_ends=None
        if upsert
        else (
            f"SELECT p, (SELECT max(src_offset) FROM {spec.table}"
            " WHERE src_topic = %(topic)s AND src_life = %(life)s AND src_partition = p)"
            " FROM unnest(%(partitions)s::int[]) AS p"
        ),
    )
