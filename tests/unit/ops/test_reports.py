"""Report queries bind every filter value, refuse filters a report lacks, and render three formats."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pme_exporter.ops.reports import BY_NAME, REPORTS, Filters, ReportError, find, query, render


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


def test_every_report_names_its_view_after_itself() -> None:
    assert len(REPORTS) == len(BY_NAME) == 10
    assert all(r.view == f"report_{r.name}" for r in REPORTS)


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
