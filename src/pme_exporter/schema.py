"""The ledger's event types and their tables, defined once.

Decoding (``decode``), SQL generation (``sqlgen``), the migrations' checks and
the tests all read these definitions. The DDL itself lives in ``sql/``; a unit
test keeps the two in step.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from functools import cached_property
from typing import Any


class Kind(Enum):
    """How a JSON value becomes COPY text; PostgreSQL then checks it against the column."""

    INTEGER = "integer"  # BIGINT / INT: JSON integer, or a string of digits
    DECIMAL = "decimal"  # NUMERIC(p,s): string or number, kept exactly as written
    TEXT = "text"  # VARCHAR(n) / TEXT: string
    BOOLEAN = "boolean"  # true / false
    DATE = "date"  # "YYYY-MM-DD"
    TIME = "time"  # "HH:MM:SS[.ffffff]"
    TIMESTAMPTZ = "timestamptz"  # RFC 3339 with an offset or Z


class WriteMode(Enum):
    UPSERT = "upsert"  # one row per key; the event with the greatest (ts, partition, offset) wins
    APPEND = "append"  # one row per Kafka message, unique on (src_partition, src_offset)


# The SQL type each kind is cast to from staging text before the INSERT's own
# assignment cast applies the column's typmod (VARCHAR length, NUMERIC scale).
# Casting text to varchar(n) explicitly would truncate silently; assignment raises.
CAST_TYPE = {
    Kind.INTEGER: "bigint",
    Kind.DECIMAL: "numeric",
    Kind.TEXT: "text",
    Kind.BOOLEAN: "boolean",
    Kind.DATE: "date",
    Kind.TIME: "time",
    Kind.TIMESTAMPTZ: "timestamptz",
}


@dataclass(frozen=True)
class Column:
    name: str
    sql_type: str
    kind: Kind
    # Filled from the envelope's ``ts`` when ``data`` does not give it.
    defaults_to_event_time: bool = False


@dataclass(frozen=True)
class ParentRef:
    """A foreign key: ``column`` of the child references ``table.key`` of a parent."""

    column: str
    table: str
    key: str


@dataclass(frozen=True)
class TableSpec:
    event_type: str
    table: str
    mode: WriteMode
    key: str | None  # the required field: upsert key, or the append table's required field
    columns: tuple[Column, ...]
    parents: tuple[ParentRef, ...] = ()
    # Columns with a UNIQUE constraint of their own, beside the key.
    unique: tuple[str, ...] = ()
    # Old rows may move to an archive table of the same columns (sql/005, ``retention``).
    archived: bool = False

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @property
    def is_child(self) -> bool:
        return bool(self.parents)

    @cached_property
    def key_kind(self) -> Kind | None:
        return next((c.kind for c in self.columns if c.name == self.key), None)

    @cached_property
    def collapsible(self) -> bool:
        """Whether a batch may keep only each key's newest version (plus its least ``ts``).

        Not for children: an older version whose parents exist must land while a newer
        one waits for its parent. Not with another unique column: whether a version
        clashes depends on the other rows, so each version must meet PostgreSQL."""
        return self.mode is WriteMode.UPSERT and not self.parents and not self.unique


def _c(name: str, sql_type: str, kind: Kind, from_ts: bool = False) -> Column:
    return Column(name, sql_type, kind, from_ts)


# Types exactly as the original design declares them (README "Tables"); the
# contract changes only TIMESTAMP to TIMESTAMPTZ and SERIAL to BIGSERIAL.
_PARTY = "VARCHAR(50)"  # participant and account codes
_INSTRUMENT = "VARCHAR(20)"
_NAME = "VARCHAR(200)"
_REFF = "VARCHAR(100)"
_QUANTITY = "DECIMAL(15,2)"
_LIMIT = "DECIMAL(20,2)"
_RATE = "DECIMAL(10,6)"
INT_, D, T, B = Kind.INTEGER, Kind.DECIMAL, Kind.TEXT, Kind.BOOLEAN
TSZ = Kind.TIMESTAMPTZ

TABLES: tuple[TableSpec, ...] = (
    TableSpec(
        "Participant",
        "participants",
        WriteMode.UPSERT,
        "code",
        (_c("code", _PARTY, T), _c("name", _NAME, T)),
    ),
    TableSpec(
        "Account",
        "accounts",
        WriteMode.UPSERT,
        "code",
        (
            _c("code", _PARTY, T),
            _c("participant_code", _PARTY, T),
            _c("sid", "VARCHAR(50)", T),
            _c("trade_limit", _LIMIT, D),
            _c("pool_limit", _LIMIT, D),
        ),
    ),
    TableSpec(
        "Instrument",
        "instruments",
        WriteMode.UPSERT,
        "code",
        (_c("code", _INSTRUMENT, T), _c("name", _NAME, T), _c("status", "BOOLEAN", B)),
    ),
    TableSpec(
        "Order",
        "orders",
        WriteMode.UPSERT,
        "nid",
        (
            _c("nid", "BIGINT", INT_),
            _c("account_code", _PARTY, T),
            _c("instrument_code", _INSTRUMENT, T),
            _c("side", "VARCHAR(4)", T),
            _c("quantity", _QUANTITY, D),
            _c("quantity_left", _QUANTITY, D),
            _c("periode", "INT", INT_),
            _c("state", "VARCHAR(1)", T),
            _c("settlement_date", "DATE", Kind.DATE),
            _c("aro_status", "BOOLEAN", B),
            _c("reff_request_id", _REFF, T),
        ),
        archived=True,
    ),
    TableSpec(
        "Trade",
        "trades",
        WriteMode.UPSERT,
        "nid",
        (
            _c("nid", "BIGINT", INT_),
            _c("kpei_reff", _REFF, T),
            _c("instrument_code", _INSTRUMENT, T),
            _c("quantity", _QUANTITY, D),
            _c("periode", "INT", INT_),
            _c("state", "VARCHAR(1)", T),
            _c("matched_at", "TIMESTAMPTZ", TSZ),
            _c("reimburse_at", "TIMESTAMPTZ", TSZ),
            _c("fee_flat_rate", _RATE, D),
            _c("fee_borr_rate", _RATE, D),
            _c("fee_lend_rate", _RATE, D),
        ),
        unique=("kpei_reff",),
        archived=True,
    ),
    TableSpec(
        "Contract",
        "contracts",
        WriteMode.UPSERT,
        "nid",
        (
            _c("nid", "BIGINT", INT_),
            _c("trade_nid", "BIGINT", INT_),
            _c("order_nid", "BIGINT", INT_),
            _c("kpei_reff", _REFF, T),
            _c("account_code", _PARTY, T),
            _c("instrument_code", _INSTRUMENT, T),
            _c("side", "VARCHAR(4)", T),
            _c("quantity", _QUANTITY, D),
            _c("state", "VARCHAR(1)", T),
            _c("matched_at", "TIMESTAMPTZ", TSZ),
            _c("reimburse_at", "TIMESTAMPTZ", TSZ),
            _c("fee_flat_val", _QUANTITY, D),
            _c("fee_val_daily", _QUANTITY, D),
        ),
        parents=(ParentRef("trade_nid", "trades", "nid"), ParentRef("order_nid", "orders", "nid")),
        archived=True,
    ),
    TableSpec(
        "OrderAck",
        "order_acks",
        WriteMode.APPEND,
        "order_nid",
        (_c("order_nid", "BIGINT", INT_), _c("acknowledged_at", "TIMESTAMPTZ", TSZ, from_ts=True)),
        parents=(ParentRef("order_nid", "orders", "nid"),),
        archived=True,
    ),
    TableSpec(
        "OrderNak",
        "order_naks",
        WriteMode.APPEND,
        "order_nid",
        (
            _c("order_nid", "BIGINT", INT_),
            _c("message", "TEXT", T),
            _c("rejected_at", "TIMESTAMPTZ", TSZ, from_ts=True),
        ),
        parents=(ParentRef("order_nid", "orders", "nid"),),
        archived=True,
    ),
    TableSpec(
        "Parameter",
        "parameters",
        WriteMode.APPEND,
        None,
        (
            _c("fee_flat_rate", _RATE, D),
            _c("fee_borr_rate", _RATE, D),
            _c("fee_lend_rate", _RATE, D),
            _c("auto_match_flag", "BOOLEAN", B),
            _c("effective_from", "TIMESTAMPTZ", TSZ),
        ),
    ),
    TableSpec(
        "Holiday",
        "holidays",
        WriteMode.UPSERT,
        "nid",
        (_c("nid", "BIGINT", INT_), _c("date", "DATE", Kind.DATE), _c("description", _NAME, T)),
    ),
    TableSpec(
        "SessionTime",
        "session_times",
        WriteMode.APPEND,
        None,
        (
            _c("pre_opening_time", "TIME", Kind.TIME),
            _c("opening_time", "TIME", Kind.TIME),
            _c("closing_time", "TIME", Kind.TIME),
            _c("effective_from", "TIMESTAMPTZ", TSZ),
        ),
    ),
)

BY_EVENT_TYPE: dict[str, TableSpec] = {spec.event_type: spec for spec in TABLES}
BY_TABLE: dict[str, TableSpec] = {spec.table: spec for spec in TABLES}

# Parents are written before children in every flush, so a child whose parent
# arrives in the same batch finds it; TABLES is already in that order.
FLUSH_ORDER: tuple[TableSpec, ...] = TABLES
# Tables whose old rows retention moves or deletes, children before their parents.
RETAINED: tuple[str, ...] = tuple(spec.table for spec in reversed(FLUSH_ORDER) if spec.archived)


def archive_table(table: str) -> str:
    """Where retention moves a table's old rows (same columns, sql/005)."""
    return f"{table}_archive"


def children_of(table: str) -> tuple[tuple[str, str], ...]:
    """(child table, its column) for every foreign key that references ``table``."""
    return tuple((child.table, ref.column) for child in TABLES for ref in child.parents if ref.table == table)


# The columns of exporter_parked_children that hold a waiting child's parent keys.
PARKED_PARENT_COLUMNS: tuple[str, ...] = ("trade_nid", "order_nid")


def declared_limits(sql_type: str) -> tuple[int | None, tuple[int, int] | None, int | None]:
    """What a declared type adds to a value's shape: (max characters, (precision, scale),
    integer bits). Reads this module's spellings and PostgreSQL's ``format_type``."""
    t = " ".join(sql_type.lower().split())
    if found := re.fullmatch(r"(?:character varying|varchar)\((\d+)\)", t):
        return int(found.group(1)), None, None
    if found := re.fullmatch(r"(?:numeric|decimal)\((\d+)(?:, ?(\d+))?\)", t):
        return None, (int(found.group(1)), int(found.group(2) or 0)), None
    bits = {"smallint": 16, "int2": 16, "integer": 32, "int": 32, "int4": 32, "bigint": 64, "int8": 64}
    return None, None, bits.get(t)


def live_column_types(conn: Any) -> dict[str, dict[str, str]]:
    """Each ledger table's column types as PostgreSQL declares them now (a column widened
    or narrowed by hand included), for the decoder's checks."""
    query = """SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod)
               FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
               WHERE c.relname = ANY(%s) AND c.relkind = 'r' AND a.attnum > 0 AND NOT a.attisdropped
                 AND pg_table_is_visible(c.oid)"""
    types: dict[str, dict[str, str]] = {}
    for table, column, sql_type in conn.execute(query, ([spec.table for spec in TABLES],)):
        types.setdefault(table, {})[column] = sql_type
    return types
