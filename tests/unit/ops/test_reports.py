"""Report queries bind every filter value, refuse filters a report lacks, and render three formats."""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pme_exporter.migrate import sql_dir
from pme_exporter.ops.reports import (
    BY_NAME,
    MATERIALIZED,
    REPORTS,
    Filters,
    ReportError,
    Source,
    find,
    query,
    reads_materialized,
    render,
)


@given(account=st.text(max_size=60))
def test_an_account_is_bound_never_formatted_into_the_statement(account: str) -> None:
    statement, params = query(BY_NAME["account_orders"], Filters(account=account))
    reference, _ = query(BY_NAME["account_orders"], Filters(account="ACC001"))
    assert params == {"account": account}
    # The statement's text does not depend on the value: it travels only as a parameter.
    assert statement.as_string(None) == reference.as_string(None)
    assert '"account_code" = %(account)s' in statement.as_string(None)


def test_dates_and_limit_are_bound_and_the_order_is_the_report_s() -> None:
    f = Filters(date_from=date(2025, 11, 1), date_to=date(2025, 11, 30), limit=5)
    statement, params = query(BY_NAME["trades_by_date"], f)
    text = statement.as_string(None)
    assert params == {"date_from": date(2025, 11, 1), "date_to": date(2025, 11, 30), "limit": 5}
    assert text.endswith('ORDER BY "matched_at" DESC, "nid" DESC LIMIT %(limit)s')
    assert '"matched_at" >= %(date_from)s::date AND "matched_at" < %(date_to)s::date + 1' in text


def test_filters_a_report_lacks_are_refused() -> None:
    with pytest.raises(ReportError, match="no account"):
        query(BY_NAME["order_book"], Filters(account="A"))
    with pytest.raises(ReportError, match="no date"):
        query(BY_NAME["open_borrowing"], Filters(date_to=date(2025, 1, 1)))
    with pytest.raises(ReportError, match="no report named"):
        find("orders; DROP TABLE orders")


def test_every_report_is_a_view_of_the_migrations_and_the_materialized_ones_have_their_copy() -> None:
    migrations = "\n".join(p.read_text() for p in sorted(sql_dir().glob("[0-9]*.sql")))
    views = set(re.findall(r"CREATE VIEW (report_\w+)", migrations))
    copies = set(re.findall(r"CREATE MATERIALIZED VIEW (report_\w+)", migrations))
    assert len(REPORTS) == len(BY_NAME) and views == {r.view for r in REPORTS}
    assert copies == {r.materialized_view for r in MATERIALIZED} and MATERIALIZED
    refreshed_by_the_migration = re.search(r"unnest\(ARRAY\[([^]]*)\]\)", migrations)
    assert refreshed_by_the_migration
    assert set(re.findall(r"'(\w+)'", refreshed_by_the_migration.group(1))) == {r.name for r in MATERIALIZED}


def test_a_materialized_report_is_read_unless_live_or_another_zone_is_asked_for() -> None:
    volume = BY_NAME["trading_volume"]
    assert reads_materialized(volume, Filters()) and reads_materialized(volume, Filters(time_zone="utc"))
    assert not reads_materialized(volume, Filters(live=True))
    assert not reads_materialized(volume, Filters(time_zone="Asia/Jakarta"))
    assert not reads_materialized(BY_NAME["account_orders"], Filters())
    statement, _ = query(volume, Filters())
    assert '"report_trading_volume_mat"' in statement.as_string(None)
    statement, _ = query(volume, Filters(live=True))
    assert '"report_trading_volume"' in statement.as_string(None)


def test_a_source_says_how_fresh_it_is() -> None:
    now = datetime(2025, 11, 28, 10, 0, tzinfo=UTC)
    assert Source("report_order_book", materialized=False).describe(now) == "report_order_book: live"
    never = Source("report_order_book_mat", materialized=True).describe(now)
    assert "never refreshed" in never and "report --refresh" in never
    fresh = Source("report_order_book_mat", materialized=True, refreshed_at=now - timedelta(seconds=90))
    assert fresh.describe(now) == (
        "report_order_book_mat: materialized (days in UTC), refreshed 2025-11-28T09:58:30+00:00,"
        " 90 s ago; --live for the live view"
    )


COLUMNS = ["code", "amount", "at", "ok", "note"]
ROWS = [
    ("A,1", Decimal("10.50"), datetime(2025, 11, 28, 1, 30, tzinfo=UTC), True, None),
    ("B", Decimal("0.10"), datetime(2025, 11, 28, 2, 0, tzinfo=UTC), False, 'say "hi"'),
]


def test_json_keeps_every_digit_and_nulls() -> None:
    out = io.StringIO()
    render(COLUMNS, ROWS, "json", out)
    assert json.loads(out.getvalue())[0] == {
        "code": "A,1",
        "amount": "10.50",
        "at": "2025-11-28T01:30:00+00:00",
        "ok": True,
        "note": None,
    }


def test_csv_quotes_what_needs_quoting() -> None:
    out = io.StringIO()
    render(COLUMNS, ROWS, "csv", out)
    parsed = list(csv.reader(io.StringIO(out.getvalue())))
    assert parsed[0] == COLUMNS
    assert parsed[1] == ["A,1", "10.50", "2025-11-28T01:30:00+00:00", "true", ""]
    assert parsed[2][4] == 'say "hi"'


def test_table_aligns_columns_and_counts_rows() -> None:
    out = io.StringIO()
    render(COLUMNS, ROWS, "table", out)
    lines = out.getvalue().splitlines()
    assert lines[0].split() == COLUMNS and set(lines[1].replace(" ", "")) == {"-"}
    assert lines[2].index("10.50") == lines[0].index("amount") and lines[-1] == "(2 rows)"


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(ReportError, match="unknown format"):
        render(COLUMNS, ROWS, "xml", io.StringIO())
