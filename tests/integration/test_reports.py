"""Each report view against a generated trading day, with the expected figures computed in Python.

The expectations come from the generated events through the one-at-a-time
model (tests/model.py), then plain Python grouping: never from the views' SQL.
Reports are run through ``pme-exporter report NAME --format json``.
"""

from __future__ import annotations

import json
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from pme_exporter import cli
from pme_exporter.devtools.databases import create_database, drop_database
from pme_exporter.devtools.generator import create_topic, ends_of, publish, trading_day
from pme_exporter.settings import Settings
from tests.helpers import ExporterThread, wait_exported
from tests.model import Tables, apply_events, diff, snapshot
from tests.stack import Stack

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
