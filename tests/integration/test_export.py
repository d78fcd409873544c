"""End to end through Kafka: values land exactly, invalid input is dead-lettered, children wait for parents."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import orjson
import psycopg

from pme_exporter.devtools.generator import ends_of, publish, trading_day
from pme_exporter.settings import Settings
from tests.helpers import ExporterProcess, ExporterThread, on_topic, valid_only, wait_exported
from tests.model import apply_events, diff, snapshot
from tests.stack import Stack

WIB = timezone(timedelta(hours=7))

# The contract's example of one order's life, verbatim.
ONE_ORDERS_LIFE = [
    b'{"type":"Order","ts":"2025-11-29T09:00:00+07:00","data":{"nid":123,"account_code":"ACC001","instrument_code":"BBCA","side":"BORR","quantity":"1000.00","quantity_left":"1000.00","periode":30,"state":"S","settlement_date":"2025-12-01","aro_status":false,"reff_request_id":"REQ-1"}}',
    b'{"type":"OrderAck","ts":"2025-11-29T09:00:00.200+07:00","data":{"order_nid":123}}',
    b'{"type":"Order","ts":"2025-11-29T09:00:00.200+07:00","data":{"nid":123,"account_code":"ACC001","instrument_code":"BBCA","side":"BORR","quantity":"1000.00","quantity_left":"1000.00","periode":30,"state":"O","settlement_date":"2025-12-01","aro_status":false,"reff_request_id":"REQ-1"}}',
    b'{"type":"Trade","ts":"2025-11-29T09:05:00+07:00","data":{"nid":456,"kpei_reff":"KPEI-20251129-0001","instrument_code":"BBCA","quantity":"1000.00","periode":30,"state":"M","matched_at":"2025-11-29T09:05:00+07:00","reimburse_at":null,"fee_flat_rate":"0.000500","fee_borr_rate":"0.180000","fee_lend_rate":"0.150000"}}',
    b'{"type":"Contract","ts":"2025-11-29T09:05:00+07:00","data":{"nid":789,"trade_nid":456,"order_nid":123,"kpei_reff":"KPEI-20251129-0001","account_code":"ACC001","instrument_code":"BBCA","side":"BORR","quantity":"1000.00","state":"A","matched_at":"2025-11-29T09:05:00+07:00","reimburse_at":null,"fee_flat_val":"5000.00","fee_val_daily":"493.15"}}',
]


def env(event_type: str, ts: str, data: dict[str, object]) -> bytes:
    return orjson.dumps({"type": event_type, "ts": ts, "data": data})


OTHER_TYPES = [
    # COPY's special characters must arrive as written; a literal \N is text, not NULL.
    env("Participant", "2025-11-29T08:00:00Z", {"code": "P\\02", "name": "tab\there\nline\r \\N"}),
    env(
        "Participant",
        "2025-11-29T08:00:00Z",
        {"code": "P01", "name": "Broker Satu", "extra": {"ignored": True}},
    ),
    env(
        "Account",
        "2025-11-29T08:00:01+07:00",
        {
            "code": "ACC001",
            "participant_code": "P01",
            "sid": "SID1",
            "trade_limit": "123456789012345678.99",
            "pool_limit": 2500000.5,
        },
    ),
    env(
        "Instrument",
        "2025-11-29T08:00:02-05:00",
        {"code": "BBCA", "name": "Bank Central Asia", "status": True},
    ),
    env(
        "Parameter",
        "2025-11-29T08:00:03+07:00",
        {
            "fee_flat_rate": "0.0005",
            "fee_borr_rate": "0.18",
            "fee_lend_rate": "0.15",
            "auto_match_flag": True,
            "effective_from": "2025-12-01T00:00:00+07:00",
        },
    ),
    env("Holiday", "2025-11-29T08:00:04+07:00", {"nid": 1, "date": "2025-12-25", "description": "Natal"}),
    env(
        "SessionTime",
        "2025-11-29T08:00:05+07:00",
        {
            "pre_opening_time": "08:45:00",
            "opening_time": "09:00:00.250",
            "closing_time": "15:50:00",
            "effective_from": "2025-12-01T00:00:00Z",
        },
    ),
    env("OrderNak", "2025-11-29T09:00:01+07:00", {"order_nid": 123, "message": "limit exceeded"}),
    env("Order", "2025-11-29T08:59:59+07:00", {"nid": 123, "state": "W"}),  # late, older: must not roll back
]


def test_every_event_type_lands_with_its_values(
    stack: Stack, settings: Settings, make_topic: Callable[[int], str]
) -> None:
    topic = make_topic(1)
    located = publish(stack.kafka_url, topic, [(None, None, v) for v in ONE_ORDERS_LIFE + OTHER_TYPES])
    s = on_topic(settings, topic)
    with ExporterThread(s):
        wait_exported(s.conninfo(), topic, ends_of(located))
    with psycopg.connect(s.conninfo()) as conn:
        actual = snapshot(conn)
        order = conn.execute(
            "SELECT state, created_at, updated_at, quantity, aro_status, settlement_date FROM orders"
        ).fetchall()
        account = conn.execute("SELECT trade_limit, pool_limit FROM accounts").fetchone()
        session = conn.execute("SELECT opening_time, effective_from FROM session_times").fetchone()
        instrument = conn.execute("SELECT created_at FROM instruments").fetchone()
        counts = conn.execute(
            "SELECT (SELECT count(*) FROM order_acks), (SELECT count(*) FROM trades), (SELECT count(*) FROM contracts)"
        ).fetchone()
        dead = conn.execute("SELECT count(*) FROM exporter_dead_letters").fetchone()
    assert order == [
        (
            "O",
            datetime(2025, 11, 29, 8, 59, 59, tzinfo=WIB),
            datetime(2025, 11, 29, 9, 0, 0, 200000, tzinfo=WIB),
            Decimal("1000.00"),
            False,
            date(2025, 12, 1),
        )
    ]
    assert account == (Decimal("123456789012345678.99"), Decimal("2500000.50"))
    assert session == (time(9, 0, 0, 250000), datetime(2025, 12, 1, tzinfo=UTC))
    assert instrument == (datetime(2025, 11, 29, 13, 0, 2, tzinfo=UTC),)
    assert counts == (1, 1, 1) and dead == (0,)
    expected = apply_events(valid_only(located))
    assert actual == expected, diff(expected, actual)


INVALID = [
    (b"{not json", "invalid_json"),
    (b"[1, 2]", "not_an_object"),
    (env("Settlement", "2025-11-29T09:00:00Z", {"nid": 1}), "unknown_type"),
    (orjson.dumps({"type": "Order", "ts": "2025-11-29T09:00:00Z"}), "missing_data"),
    (env("Order", "2025-11-29T09:00:00Z", {"state": "S"}), "missing_key"),
    (env("Order", "2025-11-29T09:00:00", {"nid": 77}), "invalid_ts"),
    (env("Order", "2025-11-29T09:00:00Z", {"nid": 78, "aro_status": "yes"}), "wrong_type"),
    (env("Instrument", "2025-11-29T09:00:00Z", {"code": "X" * 21}), "sqlstate_22001"),
    (env("Order", "2025-11-29T09:00:00Z", {"nid": 79, "periode": 3_000_000_000}), "sqlstate_22003"),
    (env("Holiday", "2025-11-29T09:00:00Z", {"nid": 2, "date": "2025-02-30"}), "sqlstate_22008"),
    (env("Account", "2025-11-29T09:00:00Z", {"code": "A9", "trade_limit": "lots"}), "invalid_value"),
]


def test_each_invalid_message_is_one_dead_letter_and_its_neighbours_land(
    stack: Stack, settings: Settings, make_topic: Callable[[int], str]
) -> None:
    topic = make_topic(2)
    events: list[tuple[int | None, bytes | None, bytes | None]] = []
    for i, (bad, _) in enumerate(INVALID):
        events.append(
            (i % 2, None, env("Participant", "2025-11-29T09:00:00Z", {"code": f"P{i}", "name": "before"}))
        )
        events.append((i % 2, b"bad", bad))
        events.append((i % 2, None, env("Order", "2025-11-29T09:00:00Z", {"nid": 1000 + i, "state": "S"})))
    events.append((0, b"Order:1", None))  # a tombstone: skipped, not an error
    located = publish(stack.kafka_url, topic, events)
    s = on_topic(settings, topic)
    with ExporterThread(s) as exporter:
        wait_exported(s.conninfo(), topic, ends_of(located))
    with psycopg.connect(s.conninfo()) as conn:
        dead = conn.execute('SELECT partition, "offset", reason, error FROM exporter_dead_letters').fetchall()
        participants = conn.execute("SELECT count(*) FROM participants").fetchone()
        orders = conn.execute("SELECT count(*) FROM orders").fetchone()
    bad_places = {(p, o): v for (p, o, v) in located if v in {b for b, _ in INVALID}}
    assert sorted((p, o) for p, o, _, _ in dead) == sorted(bad_places)
    reasons = {bad_places[(p, o)]: reason for p, o, reason, _ in dead}
    assert reasons == {bad: reason for bad, reason in INVALID}
    assert all(error for *_, error in dead)
    assert participants == (len(INVALID),) and orders == (len(INVALID),)
    tombstones = exporter.metrics.registry.get_sample_value("pme_exporter_tombstones_total")
    assert tombstones == 1


def test_children_before_their_parents_on_another_partition_all_land(
    stack: Stack, settings: Settings, make_topic: Callable[[int], str]
) -> None:
    topic = make_topic(2)
    children: list[tuple[int | None, bytes | None, bytes | None]] = []
    for nid in range(1, 51):
        children.append((1, None, env("OrderAck", "2025-11-29T09:00:01Z", {"order_nid": nid})))
        children.append(
            (
                1,
                None,
                env("Contract", "2025-11-29T09:00:02Z", {"nid": nid, "trade_nid": nid, "order_nid": nid}),
            )
        )
    first = publish(stack.kafka_url, topic, children)
    s = on_topic(settings, topic)
    with ExporterThread(s):
        wait_exported(s.conninfo(), topic, ends_of(first))
        with psycopg.connect(s.conninfo(), autocommit=True) as conn:
            assert conn.execute("SELECT count(*) FROM exporter_parked_children").fetchone() == (100,)
        parents: list[tuple[int | None, bytes | None, bytes | None]] = []
        for nid in range(1, 51):
            parents.append((0, None, env("Order", "2025-11-29T09:00:00Z", {"nid": nid})))
            parents.append(
                (0, None, env("Trade", "2025-11-29T09:00:00Z", {"nid": nid, "kpei_reff": f"K{nid}"}))
            )
        second = publish(stack.kafka_url, topic, parents)
        wait_exported(s.conninfo(), topic, ends_of(first + second))
    with psycopg.connect(s.conninfo()) as conn:
        actual = snapshot(conn)
        parked = conn.execute("SELECT count(*) FROM exporter_parked_children").fetchone()
    assert parked == (0,)
    expected = apply_events(valid_only(first + second))
    assert len(expected["contracts"]) == 50 and len(expected["order_acks"]) == 50
    assert actual == expected, diff(expected, actual)


def test_two_lanes_with_children_on_one_lane_and_their_parents_on_the_other(
    stack: Stack, settings: Settings, make_topic: Callable[[int], str], tmp_path: Path
) -> None:
    topic = make_topic(2)
    # A trading day split by kind: parents on partition 1 (lane 1), children on partition 0 (lane 0),
    # so every child's parent is written by the other lane's transactions, at their own pace.
    children = {b'"OrderAck"', b'"OrderNak"', b'"Contract"'}
    day = [
        (0 if v and any(kind in v for kind in children) else 1, k, v) for k, v in trading_day(1_500, seed=41)
    ]
    s = on_topic(
        settings,
        topic,
        flush_lanes=2,
        max_batch_events=300,
        max_buffered_events=600,
        flush_interval_ms=50,
    )
    worker = ExporterProcess(s, tmp_path / "exporter.log")
    located: list[tuple[int, int, bytes | None]] = []
    try:
        for start in range(0, len(day), 1_000):  # published while the worker runs
            located += publish(stack.kafka_url, topic, day[start : start + 1_000])
        wait_exported(s.conninfo(), topic, ends_of(located))
    finally:
        assert worker.terminate() == 0, worker.log_tail()
    log = worker.log_tail(2_000)
    assert "lanes {0: [0], 1: [1]}" in log
    # Children did wait for the other lane: held back in Python while their parents were unwritten.
    assert sum(int(n) for n in re.findall(r"(\d+) children held for a parent", log)) > 0
    expected = apply_events(valid_only(located))
    with psycopg.connect(s.conninfo()) as conn:
        actual = snapshot(conn)
        parked = conn.execute("SELECT count(*) FROM exporter_parked_children").fetchone()
    assert parked == (0,)
    assert actual == expected, diff(expected, actual)


def test_a_second_topic_on_the_same_database_keeps_every_append_row(
    stack: Stack, settings: Settings, make_topic: Callable[[int], str]
) -> None:
    ts = "2025-11-29T09:00:00Z"
    day: list[tuple[int | None, bytes | None, bytes | None]] = [(None, None, env("Order", ts, {"nid": 1}))]
    day += [(None, None, env("OrderAck", ts, {"order_nid": 1})) for _ in range(40)]
    day += [(None, None, env("OrderNak", ts, {"order_nid": 1, "message": "m"})) for _ in range(20)]
    day += [(None, None, env("Parameter", ts, {"auto_match_flag": True})) for _ in range(20)]
    day += [(None, None, env("SessionTime", ts, {"opening_time": "09:00:00"})) for _ in range(20)]
    for topic in (make_topic(1), make_topic(1)):  # the same offsets, a different topic
        located = publish(stack.kafka_url, topic, day)
        s = on_topic(settings, topic)
        with ExporterThread(s):
            wait_exported(s.conninfo(), topic, ends_of(located))
    with psycopg.connect(settings.conninfo()) as conn:
        counts = conn.execute(
            """SELECT (SELECT count(DISTINCT (src_topic, src_offset)) FROM order_acks),
                      (SELECT count(*) FROM order_naks), (SELECT count(*) FROM parameters),
                      (SELECT count(*) FROM session_times), (SELECT count(DISTINCT src_topic) FROM order_acks)"""
        ).fetchone()
    assert counts == (80, 40, 40, 40, 2)
