"""The report views of ``sql/003_reports.sql``: which exist, how to filter them, how to print them.

Contract: ``fetch(conn, report, filters)`` runs one ``SELECT`` on the view with
every filter value bound as a parameter (identifiers come only from
``REPORTS``), and returns the column names and rows; ``render`` prints them as
an aligned table, CSV or JSON. A filter the report does not offer raises
``ReportError`` before any query runs.

The reports that aggregate over whole tables are also materialized
(``sql/008_materialized_reports.sql``), with days counted in UTC. ``fetch`` reads
the materialized copy unless ``Filters.live`` is set or the days are asked for in
another zone; ``source`` says which it reads and how fresh that is. ``refresh``
refreshes them without blocking readers.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any, TextIO

import psycopg
from psycopg import sql

from pme_exporter.refresher import refresh_report

FORMATS = ("table", "csv", "json")


class ReportError(ValueError):
    """The report or one of its filters does not exist; the message says which."""


@dataclass(frozen=True)
class Report:
    name: str
    title: str
    order_by: tuple[tuple[str, bool], ...]  # (column, descending)
    account_column: str | None = None  # what --account filters
    date_column: str | None = None  # what --from / --to filter (a date or an instant)
    materialized: bool = False  # also kept as a materialized view (sql/008)

    @property
    def view(self) -> str:
        return f"report_{self.name}"

    @property
    def materialized_view(self) -> str:
        return f"report_{self.name}_mat"


REPORTS: tuple[Report, ...] = (
    Report(
        "account_orders",
        "Orders of an account",
        (("created_at", True), ("nid", True)),
        "account_code",
        "created_at",
    ),
    Report(
        "trades_by_date", "Trades by date matched", (("matched_at", True), ("nid", True)), None, "matched_at"
    ),
    Report("active_contracts", "Active contracts", (("nid", False),), "account_code", "matched_at"),
    Report(
        "trading_volume",
        "Trading volume by instrument",
        (("trade_date", True), ("total_quantity", True), ("instrument_code", False)),
        None,
        "trade_date",
        materialized=True,
    ),
    Report(
        "account_activity",
        "Account activity summary",
        (("activity_date", True), ("account_code", False)),
        "account_code",
        "activity_date",
        materialized=True,
    ),
    Report("rejected_orders", "Rejected orders by day", (("date", True),), None, "date", materialized=True),
    Report(
        "daily_trading",
        "Daily trading report (matched trades)",
        (("trading_date", True), ("total_quantity", True), ("instrument_code", False)),
        None,
        "trading_date",
        materialized=True,
    ),
    Report(
        "account_performance",
        "Account performance by month",
        (("month", True), ("total_volume", True), ("code", False)),
        "code",
        "month",
        materialized=True,
    ),
    Report(
        "open_borrowing",
        "Open borrowing by instrument (active BORR contracts)",
        (("quantity", True), ("instrument_code", False)),
        materialized=True,
    ),
    Report(
        "order_book", "Order book by state and side", (("state", False), ("side", False)), materialized=True
    ),
    Report(
        "order_outcomes",
        "Orders accepted and rejected, with the reason",
        (("answered_at", True), ("order_nid", True)),
        "account_code",
        "answered_at",
    ),
    Report("settlement_calendar", "Settlement calendar", (("date", False),), None, "date"),
)
BY_NAME: dict[str, Report] = {r.name: r for r in REPORTS}
MATERIALIZED: tuple[Report, ...] = tuple(r for r in REPORTS if r.materialized)
# The zone a materialized report's days are counted in (refresh_report sets it).
MATERIALIZED_ZONE = "UTC"


@dataclass(frozen=True)
class Filters:
    account: str | None = None
    date_from: date | None = None
    date_to: date | None = None  # inclusive
    limit: int | None = None
    time_zone: str | None = None  # days and months are taken in this zone
    live: bool = False  # the plain view even where a materialized copy exists


@dataclass(frozen=True)
class Source:
    """Where a report's rows come from, and how fresh they are."""

    relation: str
    materialized: bool
    refreshed_at: datetime | None = None
    refresh_ms: float | None = None

    def describe(self, now: datetime) -> str:
        if not self.materialized:
            return f"{self.relation}: live"
        if self.refreshed_at is None:
            return f"{self.relation}: materialized, never refreshed (pme-exporter report --refresh)"
        age = int((now - self.refreshed_at).total_seconds())
        return (
            f"{self.relation}: materialized (days in {MATERIALIZED_ZONE}), refreshed"
            f" {self.refreshed_at.isoformat(timespec='seconds')}, {age} s ago; --live for the live view"
        )


def reads_materialized(report: Report, filters: Filters) -> bool:
    return (
        report.materialized
        and not filters.live
        and (filters.time_zone is None or filters.time_zone.upper() == MATERIALIZED_ZONE)
    )


def refreshes(conn: psycopg.Connection[Any]) -> dict[str, tuple[datetime, float, int]]:
    """Each materialized report's last refresh: (when, how long in ms, rows)."""
    return {
        name: (at, float(ms), int(count))
        for name, at, ms, count in conn.execute(
            "SELECT report, refreshed_at, duration_ms, row_count FROM report_refreshes"
        )
    }


def source(conn: psycopg.Connection[Any], report: Report, filters: Filters) -> Source:
    if not reads_materialized(report, filters):
        return Source(report.view, materialized=False)
    last = refreshes(conn).get(report.name)
    return Source(
        report.materialized_view,
        materialized=True,
        refreshed_at=last[0] if last else None,
        refresh_ms=last[1] if last else None,
    )


def refresh(conn: psycopg.Connection[Any], names: Sequence[str] | None = None) -> dict[str, int]:
    """Refreshes the named materialized reports (all by default), each in its own transaction,
    without blocking their readers; returns the rows each holds now."""
    chosen = MATERIALIZED if not names else tuple(find(n) for n in names)
    for report in chosen:
        if not report.materialized:
            raise ReportError(
                f"report {report.name} is not materialized; materialized: {', '.join(r.name for r in MATERIALIZED)}"
            )
    return {report.name: refresh_report(conn, report.name) for report in chosen}


def find(name: str) -> Report:
    try:
        return BY_NAME[name]
    except KeyError:
        raise ReportError(f"no report named {name!r}; reports: {', '.join(BY_NAME)}") from None


def query(report: Report, filters: Filters) -> tuple[sql.Composed, dict[str, Any]]:
    """The statement and its parameters; raises ReportError for a filter the report lacks."""
    where: list[sql.Composable] = []
    params: dict[str, Any] = {}
    if filters.account is not None:
        if report.account_column is None:
            raise ReportError(f"report {report.name} has no account to filter by")
        where.append(sql.SQL("{} = %(account)s").format(sql.Identifier(report.account_column)))
        params["account"] = filters.account
    if filters.date_from is not None or filters.date_to is not None:
        if report.date_column is None:
            raise ReportError(f"report {report.name} has no date to filter by")
        if (
            filters.date_from is not None
            and filters.date_to is not None
            and filters.date_from > filters.date_to
        ):
            raise ReportError(
                f"--from {filters.date_from} is after --to {filters.date_to}: no day is in between"
            )
        column = sql.Identifier(report.date_column)
        # A whole day either side, whether the column holds dates or instants.
        if filters.date_from is not None:
            where.append(sql.SQL("{} >= %(date_from)s::date").format(column))
            params["date_from"] = filters.date_from
        if filters.date_to is not None:
            where.append(sql.SQL("{} < %(date_to)s::date + 1").format(column))
            params["date_to"] = filters.date_to
    relation = report.materialized_view if reads_materialized(report, filters) else report.view
    statement = sql.SQL("SELECT * FROM {}").format(sql.Identifier(relation))
    if where:
        statement += sql.SQL(" WHERE ") + sql.SQL(" AND ").join(where)
    statement += sql.SQL(" ORDER BY ") + sql.SQL(", ").join(
        sql.SQL("{} DESC" if descending else "{}").format(sql.Identifier(column))
        for column, descending in report.order_by
    )
    if filters.limit is not None:
        statement += sql.SQL(" LIMIT %(limit)s")
        params["limit"] = filters.limit
    return statement, params


def fetch(
    conn: psycopg.Connection[Any], report: Report, filters: Filters
) -> tuple[list[str], list[tuple[Any, ...]]]:
    statement, params = query(report, filters)
    with conn.transaction(), conn.cursor() as cur:
        if filters.time_zone is not None:
            # set_config binds the zone as a value; SET would need it formatted into SQL.
            cur.execute("SELECT set_config('TimeZone', %s, true)", (filters.time_zone,))
        cur.execute(statement, params)
        columns = [d.name for d in cur.description or []]
        return columns, cur.fetchall()


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    return str(value)


def _json_value(value: Any) -> Any:
    # Decimals as strings keep every digit; JSON numbers would go through binary floats.
    if isinstance(value, Decimal | datetime | date | time):
        return _text(value)
    return value


def render(columns: Sequence[str], rows: Sequence[Sequence[Any]], fmt: str, out: TextIO) -> None:
    if fmt == "json":
        records = [{c: _json_value(v) for c, v in zip(columns, row, strict=True)} for row in rows]
        out.write(json.dumps(records, indent=2, ensure_ascii=False) + "\n")
    elif fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([_text(v) for v in row] for row in rows)
    elif fmt == "table":
        cells = [[_text(v) for v in row] for row in rows]
        widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
        out.write("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip() + "\n")
        out.write("  ".join("-" * w for w in widths) + "\n")
        for r in cells:
            out.write("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() + "\n")
        out.write(f"({len(cells)} row{'s' if len(cells) != 1 else ''})\n")
    else:
        raise ReportError(f"unknown format {fmt!r}; formats: {', '.join(FORMATS)}")
