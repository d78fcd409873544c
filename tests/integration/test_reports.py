"""Each report view against a generated trading day, with the expected figures computed in Python.

The expectations come from the generated events through the one-at-a-time
model (tests/model.py), then plain Python grouping: never from the views' SQL.
Reports are run through ``pme-exporter report NAME --format json``.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from pme_exporter import cli
from pme_exporter.devtools.databases import create_database, drop_database
from pme_exporter.devtools.generator import create_topic, ends_of, publish, trading_day
from pme_exporter.migrate import migrate
from pme_exporter.ops import reports
from pme_exporter.settings import Settings
from tests.helpers import ExporterThread, wait_exported
from tests.model import Tables, apply_events, diff, snapshot
from tests.stack import REPO, Stack

JAKARTA = timezone(timedelta(hours=7))  # Asia/Jakarta has kept +07:00 since 1964
Row = dict[str, Any]


@pytest.fixture(scope="module")
def day(
    stack: Stack, base_settings: Settings, admin_conninfo: str, migrated_template: str
) -> Iterator[tuple[Settings, Tables]]:
    """A trading day exported once for the module: its settings and the model's tables."""
    name = f"t_reports_{uuid.uuid4().hex[:8]}"
    create_database(admin_conninfo, name, template=migrated_template)
    topic = f"test-reports-{uuid.uuid4().hex[:8]}"
    create_topic(stack.kafka_url, topic, 3)
    located = publish(stack.kafka_url, topic, ((None, k, v) for k, v in trading_day(600, seed=11)))
    settings = base_settings.replace(db_name=name, kafka_topic=topic, kafka_group_id=topic)
    with ExporterThread(settings):
        wait_exported(settings.conninfo(), topic, ends_of(located))
    model = apply_events([(p, o, v) for p, o, v in located if v is not None])
    with psycopg.connect(settings.conninfo()) as conn:
        stored = snapshot(conn)
    assert stored == model, diff(model, stored)
    yield settings, model
    drop_database(admin_conninfo, name)


@pytest.fixture
def report(
    day: tuple[Settings, Tables], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Callable[..., list[Row]]:
    settings, _ = day
    for name, value in settings.to_env().items():
        monkeypatch.setenv(name, value)

    def run(name: str, *args: str) -> list[Row]:
        code = cli.main(["report", name, "--format", "json", "--tz", "Asia/Jakarta", *args])
        out = capsys.readouterr().out
        assert code == 0, out
        rows: list[Row] = json.loads(out)
        return rows

    return run


def local_day(instant: datetime) -> date:
    return instant.astimezone(JAKARTA).date()


def money(total: Decimal) -> str:
    return str(total)


def test_account_orders(report: Callable[..., list[Row]], day: tuple[Settings, Tables]) -> None:
    orders = day[1]["orders"].values()
    account = max(
        {o["account_code"] for o in orders}, key=lambda a: sum(o["account_code"] == a for o in orders)
    )
    mine = sorted(
        (o for o in orders if o["account_code"] == account), key=lambda o: (o["created_at"], o["nid"])
    )
    rows = report("account_orders", "--account", account)
    assert [(r["nid"], r["state"], r["quantity_left"]) for r in rows] == [
        (o["nid"], o["state"], money(o["quantity_left"])) for o in reversed(mine)
    ]
    assert len(rows) > 1


def test_trades_by_date(report: Callable[..., list[Row]], day: tuple[Settings, Tables]) -> None:
    trades = day[1]["trades"].values()
    first = min(local_day(t["matched_at"]) for t in trades)
    expected = sorted(
        (t for t in trades if local_day(t["matched_at"]) == first), key=lambda t: (t["matched_at"], t["nid"])
    )
    rows = report("trades_by_date", "--from", first.isoformat(), "--to", first.isoformat())
    assert [r["nid"] for r in rows] == [t["nid"] for t in reversed(expected)] and rows
    after = (first + timedelta(days=1)).isoformat()
    assert report("trades_by_date", "--from", after) == []


def test_active_contracts(report: Callable[..., list[Row]], day: tuple[Settings, Tables]) -> None:
    tables = day[1]
    account = next(iter(sorted(c["account_code"] for c in tables["contracts"].values())))
    expected = [
        (
            c["nid"],
            tables["trades"][c["trade_nid"]]["kpei_reff"],
            tables["orders"][c["order_nid"]]["account_code"],
        )
        for nid, c in sorted(tables["contracts"].items())
        if c["state"] == "A" and c["account_code"] == account
    ]
    rows = report("active_contracts", "--account", account)
    assert [(r["nid"], r["trade_kpei_reff"], r["order_account_code"]) for r in rows] == expected and expected


def _grouped(rows: Any, key: Callable[[Row], Any]) -> dict[Any, list[Row]]:
    groups: dict[Any, list[Row]] = defaultdict(list)
    for row in rows:
        groups[key(row)].append(row)
    return groups


def test_trading_volume(report: Callable[..., list[Row]], day: tuple[Settings, Tables]) -> None:
    groups = _grouped(day[1]["trades"].values(), lambda t: (local_day(t["matched_at"]), t["instrument_code"]))
    totals = {k: (len(g), sum(t["quantity"] for t in g)) for k, g in groups.items()}
    expected = sorted(
        ((d.isoformat(), i, n, money(q)) for (d, i), (n, q) in totals.items()),
        key=lambda r: (-date.fromisoformat(r[0]).toordinal(), -Decimal(r[3]), r[1]),
    )
    rows = report("trading_volume")
    assert [
        (r["trade_date"], r["instrument_code"], r["trade_count"], r["total_quantity"]) for r in rows
    ] == expected


def test_account_activity(report: Callable[..., list[Row]], day: tuple[Settings, Tables]) -> None:
    groups = _grouped(day[1]["orders"].values(), lambda o: (o["account_code"], local_day(o["created_at"])))

    # Amounts compare as decimals: the design's `ELSE 0` makes PostgreSQL print an all-zero sum as 0.
    def figures(g: list[Row], side: str) -> tuple[int, Decimal]:
        return (
            len({o["nid"] for o in g if o["side"] == side}),
            sum((o["quantity"] for o in g if o["side"] == side and o["state"] == "M"), Decimal(0)),
        )

    expected = sorted(
        ((a, d.isoformat(), *figures(g, "BORR"), *figures(g, "LEND")) for (a, d), g in groups.items()),
        key=lambda r: (-date.fromisoformat(r[1]).toordinal(), r[0]),
    )
    rows = report("account_activity")
    assert [
        (
            r["account_code"],
            r["activity_date"],
            r["borr_orders"],
            Decimal(r["borr_matched"]),
            r["lend_orders"],
            Decimal(r["lend_matched"]),
        )
        for r in rows
    ] == expected


def test_rejected_orders(report: Callable[..., list[Row]], day: tuple[Settings, Tables]) -> None:
    groups = _grouped(day[1]["order_naks"].values(), lambda n: local_day(n["rejected_at"]))
    expected = [
        (d.isoformat(), len(g), "; ".join(sorted({n["message"] for n in g})))
        for d, g in sorted(groups.items(), reverse=True)
    ]
    rows = report("rejected_orders")
    assert [(r["date"], r["rejection_count"], r["rejection_reasons"]) for r in rows] == expected and expected


def test_daily_trading(report: Callable[..., list[Row]], day: tuple[Settings, Tables]) -> None:
    matched = [t for t in day[1]["trades"].values() if t["state"] == "M"]
    groups = _grouped(matched, lambda t: (local_day(t["matched_at"]), t["instrument_code"]))
    expected = sorted(
        (
            (
                d.isoformat(),
                i,
                len(g),
                money(sum(t["quantity"] for t in g)),
                sum(t["quantity"] for t in g) / len(g),
            )
            for (d, i), g in groups.items()
        ),
        key=lambda r: (-date.fromisoformat(r[0]).toordinal(), -Decimal(r[3]), r[1]),
    )
    rows = report("daily_trading")
    got = [(r["trading_date"], r["instrument_code"], r["trades_count"], r["total_quantity"]) for r in rows]
    assert got == [e[:4] for e in expected]
    places = Decimal("1e-10")
    assert [Decimal(r["avg_quantity"]).quantize(places) for r in rows] == [
        e[4].quantize(places) for e in expected
    ]


def test_account_performance(report: Callable[..., list[Row]], day: tuple[Settings, Tables]) -> None:
    tables = day[1]
    accounts = tables["accounts"]
    joined = [o for o in tables["orders"].values() if o["account_code"] in accounts]
    groups = _grouped(joined, lambda o: (o["account_code"], local_day(o["created_at"]).replace(day=1)))
    expected = sorted(
        (
            (
                a,
                accounts[a]["participant_code"],
                m.isoformat(),
                len({o["nid"] for o in g}),
                len({o["nid"] for o in g if o["state"] == "M"}),
                sum((o["quantity"] for o in g if o["state"] == "M"), Decimal(0)),
            )
            for (a, m), g in groups.items()
        ),
        key=lambda r: (-date.fromisoformat(r[2]).toordinal(), -r[5], r[0]),
    )
    rows = report("account_performance")
    assert [
        (
            r["code"],
            r["participant_code"],
            r["month"],
            r["total_orders"],
            r["matched_orders"],
            Decimal(r["total_volume"]),
        )
        for r in rows
    ] == expected
    one = expected[-1][0]
    assert [r["code"] for r in report("account_performance", "--account", one)] == [one]


def test_open_borrowing(report: Callable[..., list[Row]], day: tuple[Settings, Tables]) -> None:
    open_borr = [c for c in day[1]["contracts"].values() if c["state"] == "A" and c["side"] == "BORR"]
    groups = _grouped(open_borr, lambda c: c["instrument_code"])
    expected = sorted(
        (
            (i, len(g), money(sum(c["quantity"] for c in g)), money(sum(c["fee_val_daily"] for c in g)))
            for i, g in groups.items()
        ),
        key=lambda r: (-Decimal(r[2]), r[0]),
    )
    rows = report("open_borrowing")
    assert [(r["instrument_code"], r["contracts"], r["quantity"], r["fee_per_day"]) for r in rows] == expected
    assert len(report("open_borrowing", "--limit", "2")) == 2


def test_order_book(report: Callable[..., list[Row]], day: tuple[Settings, Tables]) -> None:
    groups = _grouped(day[1]["orders"].values(), lambda o: (o["state"], o["side"]))
    expected = [
        (s, d, len(g), money(sum(o["quantity_left"] for o in g))) for (s, d), g in sorted(groups.items())
    ]
    rows = report("order_book")
    assert [(r["state"], r["side"], r["orders"], r["quantity_left"]) for r in rows] == expected
    assert {s for s, *_ in expected} >= {"M", "O", "R"}


@pytest.fixture
def day_copy(day: tuple[Settings, Tables], admin_conninfo: str) -> Iterator[Settings]:
    """A copy of the exported day that a test may change."""
    settings, _ = day
    name = f"t_reports_copy_{uuid.uuid4().hex[:8]}"
    create_database(admin_conninfo, name, template=settings.db_name)
    yield settings.replace(db_name=name)
    drop_database(admin_conninfo, name)


def _relation(conn: psycopg.Connection[Any], relation: str) -> Counter[tuple[Any, ...]]:
    return Counter(conn.execute(f"SELECT * FROM {relation}").fetchall())


def test_a_refreshed_materialized_report_equals_its_plain_view_and_says_how_fresh_it_is(
    day_copy: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in day_copy.to_env().items():
        monkeypatch.setenv(name, value)
    assert reports.MATERIALIZED, "some reports are materialized"
    with psycopg.connect(day_copy.conninfo(), autocommit=True) as conn:
        conn.execute("SET TimeZone = 'UTC'")  # materialized reports count days in UTC
        # Migrated before the day was exported: the copies are empty, the views are not.
        for report in reports.MATERIALIZED:
            assert _relation(conn, report.view), report.name
            assert not _relation(conn, report.materialized_view), report.name

    assert cli.main(["report", "--refresh"]) == 0
    out = capsys.readouterr().out
    assert f"refreshed {len(reports.MATERIALIZED)} report(s)" in out

    with psycopg.connect(day_copy.conninfo(), autocommit=True) as conn:
        conn.execute("SET TimeZone = 'UTC'")
        for report in reports.MATERIALIZED:
            assert _relation(conn, report.materialized_view) == _relation(conn, report.view), report.name
        refreshed = reports.refreshes(conn)
    assert set(refreshed) == {r.name for r in reports.MATERIALIZED}

    # `report NAME` reads the materialized copy and says so; --live reads the view: same rows.
    assert cli.main(["report", "daily_trading", "--format", "json"]) == 0
    materialized = capsys.readouterr()
    assert "report_daily_trading_mat: materialized (days in UTC), refreshed" in materialized.err
    assert cli.main(["report", "daily_trading", "--format", "json", "--live", "--tz", "UTC"]) == 0
    live = capsys.readouterr()
    assert "report_daily_trading: live" in live.err
    assert json.loads(materialized.out) == json.loads(live.out) and json.loads(live.out)

    # The list marks each report, with the refresh time of the materialized ones.
    assert cli.main(["report", "--list"]) == 0
    listed = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    for report in reports.REPORTS:
        if report.materialized:
            at = refreshed[report.name][0].isoformat(timespec="seconds")
            assert f"(materialized, refreshed {at})" in listed[report.name]
        else:
            assert listed[report.name].endswith("(live)")


def test_a_materialized_report_keeps_its_rows_until_refreshed(
    day_copy: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in day_copy.to_env().items():
        monkeypatch.setenv(name, value)
    assert cli.main(["report", "--refresh", "order_book"]) == 0
    capsys.readouterr()

    def book(*args: str) -> list[Row]:
        assert cli.main(["report", "order_book", "--format", "json", *args]) == 0
        rows: list[Row] = json.loads(capsys.readouterr().out)
        return rows

    before = book()
    with psycopg.connect(day_copy.conninfo()) as conn:
        conn.execute("UPDATE orders SET quantity_left = quantity_left + 1 WHERE state = 'O'")
    assert book() == before  # materialized: as of its refresh
    assert book("--live") != before
    assert cli.main(["report", "--refresh", "order_book"]) == 0
    capsys.readouterr()
    assert book() == book("--live") != before


def test_refresh_refuses_a_report_that_is_not_materialized(
    day_copy: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in day_copy.to_env().items():
        monkeypatch.setenv(name, value)
    assert cli.main(["report", "--refresh", "account_orders"]) == 2
    assert "report account_orders is not materialized" in capsys.readouterr().err
    assert cli.main(["report", "--refresh", "no_such"]) == 2
    assert "no report named 'no_such'" in capsys.readouterr().err


def test_the_worker_refreshes_the_materialized_reports_on_its_schedule(day_copy: Settings) -> None:
    with psycopg.connect(day_copy.conninfo(), autocommit=True) as conn:
        conn.execute("TRUNCATE report_refreshes")
    with ExporterThread(day_copy.replace(report_refresh_s=10, kafka_group_id=f"g-{uuid.uuid4().hex[:6]}")):
        deadline = time.monotonic() + 40
        with psycopg.connect(day_copy.conninfo(), autocommit=True) as conn:
            while time.monotonic() < deadline and len(reports.refreshes(conn)) < len(reports.MATERIALIZED):
                time.sleep(0.5)
            conn.execute("SET TimeZone = 'UTC'")
            assert set(reports.refreshes(conn)) == {r.name for r in reports.MATERIALIZED}
            for report in reports.MATERIALIZED:
                assert _relation(conn, report.materialized_view) == _relation(conn, report.view)


DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "pme-ledger.json"


def grafana_sql(raw: str, time_from: datetime, time_to: datetime) -> str:
    """Grafana's PostgreSQL macros, expanded as Grafana expands them for a time range."""
    start, end = (f"'{t.isoformat().replace('+00:00', 'Z')}'" for t in (time_from, time_to))
    expanded = re.sub(r"\$__timeFilter\(([^)]+)\)", rf"\1 BETWEEN {start} AND {end}", raw)
    expanded = expanded.replace("$__timeFrom()", start).replace("$__timeTo()", end)
    assert "$" not in expanded, f"a macro the test does not expand: {raw}"
    return expanded


def test_every_business_dashboard_panel_returns_rows_for_an_exported_day_as_the_reader(
    day: tuple[Settings, Tables],
) -> None:
    settings, _ = day
    panels = json.loads(DASHBOARD.read_text())["panels"]
    assert len(panels) >= 8
    # The generated day is 2025-11-28 in Jakarta; the range is the dashboard's time picker.
    time_from, time_to = datetime(2025, 11, 27, tzinfo=UTC), datetime(2025, 11, 29, tzinfo=UTC)
    with psycopg.connect(settings.conninfo()) as conn:
        conn.execute("SET ROLE pme_reader")  # the data source's role: report views only
        for panel in panels:
            for target in panel["targets"]:
                rows = conn.execute(grafana_sql(target["rawSql"], time_from, time_to)).fetchall()
                assert rows and any(v is not None for v in rows[0]), panel["title"]
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT count(*) FROM orders")


def test_migrating_while_reports_are_refreshed_changes_no_grant_and_fails_nothing(day_copy: Settings) -> None:
    """A worker's start-up (PME_MIGRATE=auto applies grants.sql) while the reports are being
    refreshed: grants already held are not granted again, so no catalog row is rewritten
    under the refresh ("tuple concurrently updated")."""
    stop = threading.Event()
    refreshed = 0

    def refresh_again_and_again() -> None:
        nonlocal refreshed
        with psycopg.connect(day_copy.conninfo(), autocommit=True) as conn:
            while not stop.is_set():
                reports.refresh(conn)
                refreshed += 1

    refresher = threading.Thread(target=refresh_again_and_again)
    refresher.start()
    try:
        for _ in range(20):
            migrate(day_copy.conninfo())
    finally:
        stop.set()
        refresher.join(60)
    assert refreshed > 0
