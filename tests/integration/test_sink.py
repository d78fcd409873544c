"""The sink against PostgreSQL: refused rows are isolated, children wait for parents, offsets only grow."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import orjson
import psycopg
import pytest

from pme_exporter.buffers import Batch
from pme_exporter.decode import Decoder
from pme_exporter.progress import CarryPolicy
from pme_exporter.settings import Settings
from pme_exporter.sink import PostgresSink
from tests.fakes import UNJUDGED, FakeMessage

TS = "2025-11-29T09:05:00+07:00"


def msg(partition: int, offset: int, event_type: str, data: dict[str, object], ts: str = TS) -> FakeMessage:
    return FakeMessage(orjson.dumps({"type": event_type, "ts": ts, "data": data}), partition, offset, b"k")


def batch_of(*messages: FakeMessage, closing: bool = False, judged: bool = True) -> Batch:
    decoder = Decoder() if judged else Decoder(column_types=UNJUDGED)
    batch = Batch(decoder=decoder, carry_policy=CarryPolicy(closing=closing))
    batch.add(list(messages))
    return batch


def stored_offsets(conn: psycopg.Connection[tuple[int, int]]) -> dict[int, int]:
    return dict(conn.execute("SELECT partition, next_offset FROM exporter_offsets").fetchall())


@pytest.fixture
def sink(settings: Settings) -> Iterator[PostgresSink]:
    s = PostgresSink(conninfo=settings.conninfo(), topic="ledger")
    yield s
    s.close(timeout_s=5)


def test_refused_rows_become_dead_letters_and_the_rest_commits(
    sink: PostgresSink, settings: Settings
) -> None:
    messages = [msg(0, i, "Trade", {"nid": i, "kpei_reff": f"K-{i}", "quantity": "10.00"}) for i in range(40)]
    messages[7] = msg(0, 7, "Trade", {"nid": 7, "kpei_reff": "K-3"})  # unique kpei_reff clash: 23505
    messages[21] = msg(0, 21, "Trade", {"nid": 21, "quantity": "1e30"})  # numeric overflow: 22003
    messages[30] = msg(
        0, 30, "Trade", {"nid": 30, "matched_at": "2025-02-30T00:00:00Z"}
    )  # a day February does not have: 22008
    report = sink.write(batch_of(*messages))
    assert sorted((d.offset, d.sqlstate) for d in report.dead_letters) == [
        (7, "23505"),
        (21, "22003"),
        (30, "22008"),
    ]
    with psycopg.connect(settings.conninfo()) as conn:
        nids = {r[0] for r in conn.execute("SELECT nid FROM trades")}
        dead = conn.execute(
            'SELECT "offset", stage, sqlstate, error, msg_value FROM exporter_dead_letters ORDER BY 1'
        ).fetchall()
        offsets = conn.execute("SELECT partition, next_offset FROM exporter_offsets").fetchall()
    assert nids == set(range(40)) - {7, 21, 30}
    assert [(o, stage, state) for o, stage, state, _, _ in dead] == [
        (7, "database", "23505"),
        (21, "database", "22003"),
        (30, "database", "22008"),
    ]
    assert "trades:" in dead[0][3] and bytes(dead[0][4]) == messages[7].value()
    assert offsets == [(0, 40)]


def test_orphans_are_carried_to_the_next_batch_and_hold_their_offset(
    sink: PostgresSink, settings: Settings
) -> None:
    first = batch_of(
        msg(1, 0, "Holiday", {"nid": 1}),
        msg(1, 1, "Contract", {"nid": 9, "trade_nid": 3, "order_nid": 5}),
        msg(1, 2, "Holiday", {"nid": 2}),
    )
    report = sink.write(first)
    assert [(o.table, o.partition, o.offset, o.times_carried) for o in report.carried] == [
        ("contracts", 1, 1, 1)
    ]
    assert report.saved_offsets == {1: 1}  # a crash now reads the contract again
    with psycopg.connect(settings.conninfo(), autocommit=True) as conn:
        assert stored_offsets(conn) == {1: 1}
        assert conn.execute("SELECT count(*) FROM holidays").fetchone() == (2,)
        assert conn.execute("SELECT count(*) FROM exporter_parked_children").fetchone() == (0,)

        second = batch_of(msg(0, 0, "Order", {"nid": 5}), msg(0, 1, "Trade", {"nid": 3}))
        second.carry(report.carried, first.next_offsets)
        report = sink.write(second)
        assert report.carried == [] and report.saved_offsets == {0: 2, 1: 3}
        assert stored_offsets(conn) == {0: 2, 1: 3}
        assert conn.execute("SELECT nid, src_partition, src_offset FROM contracts").fetchall() == [(9, 1, 1)]
        assert report.tables["contracts"].inserted == 1


def test_orphans_are_parked_after_max_carries(sink: PostgresSink, settings: Settings) -> None:
    batch = batch_of(msg(1, 0, "Contract", {"nid": 9, "trade_nid": 3, "order_nid": 5}))
    max_carries = CarryPolicy().max_carries
    for flush in range(1, max_carries + 2):
        report = sink.write(batch)
        if flush <= max_carries:
            assert [o.times_carried for o in report.carried] == [flush] and report.saved_offsets == {1: 0}
            assert report.end_offsets == {1: 1}
        batch = Batch(decoder=Decoder())
        batch.carry(report.carried, report.end_offsets)
    assert report.carried == [] and report.saved_offsets == {1: 1}
    assert report.tables["contracts"].parked == 1 and report.parked_waiting == 1
    with psycopg.connect(settings.conninfo(), autocommit=True) as conn:
        assert stored_offsets(conn) == {1: 1}
        assert conn.execute('SELECT partition, "offset" FROM exporter_parked_children').fetchall() == [(1, 0)]


def test_children_wait_for_parents_that_arrive_later(sink: PostgresSink, settings: Settings) -> None:
    sink.write(
        batch_of(
            msg(1, 0, "OrderAck", {"order_nid": 5}),
            msg(1, 1, "Contract", {"nid": 9, "trade_nid": 3, "order_nid": 5}),
            msg(1, 2, "OrderNak", {"order_nid": 6, "message": "no"}),
            closing=True,  # no later batch takes orphans, so they are parked
        )
    )
    with psycopg.connect(settings.conninfo(), autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM exporter_parked_children").fetchone() == (3,)
        assert conn.execute("SELECT count(*) FROM order_acks").fetchone() == (0,)
        sink.write(batch_of(msg(0, 0, "Order", {"nid": 5})))  # the contract still waits for trade 3
        assert conn.execute("SELECT count(*) FROM order_acks").fetchone() == (1,)
        assert conn.execute("SELECT count(*) FROM contracts").fetchone() == (0,)
        report = sink.write(batch_of(msg(0, 1, "Trade", {"nid": 3}), msg(0, 2, "Order", {"nid": 6})))
        assert report.parked_waiting == 0
        assert conn.execute(
            "SELECT nid, trade_nid, order_nid, src_partition, src_offset FROM contracts"
        ).fetchall() == [(9, 3, 5, 1, 1)]
        assert conn.execute("SELECT order_nid FROM order_naks").fetchall() == [(6,)]


def test_offsets_never_move_back(sink: PostgresSink, settings: Settings) -> None:
    sink.write(batch_of(msg(0, 10, "Holiday", {"nid": 1})))
    sink.write(batch_of(msg(0, 3, "Holiday", {"nid": 1})))  # a zombie writer's older batch
    with psycopg.connect(settings.conninfo()) as conn:
        assert conn.execute("SELECT next_offset FROM exporter_offsets").fetchone() == (11,)


def test_ten_thousand_refused_rows_in_a_twenty_thousand_row_batch_are_isolated_exactly(
    sink: PostgresSink, settings: Settings
) -> None:
    messages = [
        msg(0, i, "Order", {"nid": i, "account_code": "A" * 51 if i % 2 else f"ACC{i % 80}"})
        for i in range(20_000)
    ]
    report = sink.write(batch_of(*messages, judged=False))
    assert sorted(d.offset for d in report.dead_letters) == list(range(1, 20_000, 2))
    assert {d.sqlstate for d in report.dead_letters} == {"22001"}
    with psycopg.connect(settings.conninfo()) as conn:
        nids = [r[0] for r in conn.execute("SELECT nid FROM orders ORDER BY nid")]
        dead = conn.execute("SELECT count(*) FROM exporter_dead_letters").fetchone()
        offsets = stored_offsets(conn)
    assert nids == list(range(0, 20_000, 2)) and dead == (10_000,) and offsets == {0: 20_000}
    # Halving stops at small ranges, each tried row by row in one round trip.
    assert report.statements < 10_000


def test_refused_rows_and_orphans_in_one_child_range_are_each_accounted_for(
    sink: PostgresSink, settings: Settings
) -> None:
    orders = [
        msg(0, i, "Order", {"nid": i, "account_code": "A" * 51 if i % 3 == 0 else "ACC1"}) for i in range(600)
    ]
    contracts = [
        msg(1, i, "Contract", {"nid": i, "order_nid": i, "account_code": "B" * 51 if i % 4 == 0 else "ACC1"})
        for i in range(400)
    ]
    report = sink.write(batch_of(*orders, *contracts, judged=False))
    # A contract whose order was refused is an orphan: carried, not yet judged itself.
    refused = {(d.partition, d.offset) for d in report.dead_letters}
    assert refused == {(0, i) for i in range(600) if i % 3 == 0} | {
        (1, i) for i in range(400) if i % 4 == 0 and i % 3 != 0
    }
    carried = {o.offset for o in report.carried}
    assert carried == {i for i in range(400) if i % 3 == 0}
    with psycopg.connect(settings.conninfo()) as conn:
        stored = {r[0] for r in conn.execute("SELECT nid FROM contracts")}
    assert stored == {i for i in range(400) if i % 4 != 0 and i % 3 != 0}
    assert report.tables["contracts"].carried == len(carried) and report.tables["contracts"].inserted == len(
        stored
    )


PAD_60, PAD_70 = "PAD" + " " * 60, "PAD" + " " * 70  # one key once VARCHAR(50) cuts their spaces
T1, T2, T3 = "2025-11-29T09:00:00Z", "2025-11-29T09:00:01Z", "2025-11-29T09:00:02Z"


def _participants(conninfo: str) -> dict[str, tuple[str, int]]:
    with psycopg.connect(conninfo) as conn:
        return {c: (n, o) for c, n, o in conn.execute("SELECT code, name, src_offset FROM participants")}


@pytest.mark.parametrize("collapse", [True, False])
def test_keys_differing_only_in_excess_trailing_spaces_are_one_key_in_one_batch(
    sink: PostgresSink, settings: Settings, collapse: bool
) -> None:
    good = [msg(0, i, "Participant", {"code": f"P{i}", "name": f"n{i}"}) for i in range(10)]
    versions = [
        msg(0, 10, "Participant", {"code": PAD_60, "name": "older"}, ts=T1),
        msg(0, 11, "Participant", {"code": PAD_70, "name": "newest"}, ts=T3),
        msg(0, 12, "Participant", {"code": PAD_60, "name": "middle"}, ts=T2),
    ]
    batch = Batch(decoder=Decoder(), collapse=collapse)
    batch.add([*good, *versions])
    report = sink.write(batch)
    assert report.dead_letters == []
    outcome = report.tables["participants"]
    assert (outcome.inserted, outcome.stale) == (11, 2)
    stored = _participants(settings.conninfo())
    assert stored.pop(PAD_60[:50]) == ("newest", 11)
    assert stored == {f"P{i}": (f"n{i}", i) for i in range(10)}


def test_keys_differing_only_in_excess_trailing_spaces_are_one_key_across_batches(
    sink: PostgresSink, settings: Settings
) -> None:
    sink.write(batch_of(msg(0, 0, "Participant", {"code": PAD_70, "name": "newest"}, ts=T3)))
    sink.write(batch_of(msg(0, 1, "Participant", {"code": PAD_60, "name": "older"}, ts=T1)))
    assert _participants(settings.conninfo()) == {PAD_60[:50]: ("newest", 0)}
    with psycopg.connect(settings.conninfo()) as conn:
        row = conn.execute("SELECT created_at = %s::timestamptz FROM participants", (T1,)).fetchone()
    assert row == (True,)  # the older version counts only for the least ts ever seen


def test_a_check_constraint_added_by_hand_refuses_one_key_and_the_rest_is_stored(
    sink: PostgresSink, settings: Settings
) -> None:
    with psycopg.connect(settings.conninfo(), autocommit=True) as conn:
        conn.execute("ALTER TABLE participants ADD CONSTRAINT no_bad CHECK (code <> 'BAD')")
    good = [msg(0, i, "Participant", {"code": f"P{i}", "name": f"n{i}"}) for i in range(10)]
    bad = [
        msg(0, 10 + i, "Participant", {"code": "BAD", "name": f"v{i}"}, ts=ts)
        for i, ts in enumerate((T1, T2))
    ]
    for first in range(2):  # written twice, as a restarted worker would: the same outcome, no crash
        report = sink.write(batch_of(*good, *bad))
        assert sorted((d.offset, d.sqlstate) for d in report.dead_letters) == [(10, "23514"), (11, "23514")]
        assert report.saved_offsets == {0: 12}
        assert set(_participants(settings.conninfo())) == {f"P{i}" for i in range(10)}, first


def test_a_refusal_of_a_kind_the_worker_does_not_know_is_isolated_not_fatal(
    sink: PostgresSink, settings: Settings
) -> None:
    with psycopg.connect(settings.conninfo(), autocommit=True) as conn:
        conn.execute(
            """CREATE FUNCTION refuse_vetoed() RETURNS trigger LANGUAGE plpgsql AS $$
               BEGIN
                   IF NEW.code = 'VETO' THEN RAISE EXCEPTION 'vetoed by hand' USING ERRCODE = 'P0001'; END IF;
                   RETURN NEW;
               END $$"""
        )
        conn.execute(
            "CREATE TRIGGER veto BEFORE INSERT OR UPDATE ON participants FOR EACH ROW EXECUTE FUNCTION refuse_vetoed()"
        )
    good = [msg(0, i, "Participant", {"code": f"P{i}"}) for i in range(10)]
    report = sink.write(batch_of(*good, msg(0, 10, "Participant", {"code": "VETO"})))
    assert [(d.offset, d.stage, d.reason, d.sqlstate) for d in report.dead_letters] == [
        (10, "database", "sqlstate_P0001", "P0001")
    ]
    assert "vetoed by hand" in report.dead_letters[0].error
    assert set(_participants(settings.conninfo())) == {f"P{i}" for i in range(10)}


def _orders_and_acks(partition: int, first_offset: int, orders: int) -> list[FakeMessage]:
    """Orders, each followed by its ack, on one partition from ``first_offset``."""
    out = []
    for i in range(orders):
        nid = first_offset + 2 * i
        out.append(msg(partition, nid, "Order", {"nid": nid, "account_code": "ACC1", "state": "O"}))
        out.append(msg(partition, nid + 1, "OrderAck", {"order_nid": nid}))
    return out


def _acks(settings: Settings) -> list[tuple[int, int, int]]:
    with psycopg.connect(settings.conninfo()) as conn:
        rows = conn.execute(
            "SELECT src_partition, src_offset, order_nid FROM order_acks ORDER BY 1, 2"
        ).fetchall()
    return [(p, o, n) for p, o, n in rows]


def test_append_rows_beyond_the_stored_ones_go_straight_into_their_table(
    sink: PostgresSink, settings: Settings
) -> None:
    first = sink.write(batch_of(*_orders_and_acks(0, 0, 50)))
    assert first.tables["order_acks"].direct == first.tables["order_acks"].inserted == 50
    second = sink.write(batch_of(*_orders_and_acks(0, 100, 50)))  # the next batch of the stream
    assert second.tables["order_acks"].direct == 50 and second.tables["order_acks"].fell_back == 0
    # A replay: the rows may be stored already, so the staging way, which skips them.
    again = sink.write(batch_of(*_orders_and_acks(0, 0, 50)))
    assert again.tables["order_acks"].direct == 0 and again.tables["order_acks"].duplicate == 50
    acks = _acks(settings)
    assert acks == [(0, 2 * i + 1, 2 * i) for i in range(50)] + [
        (0, 100 + 2 * i + 1, 100 + 2 * i) for i in range(50)
    ]


def test_the_short_path_falls_back_on_a_clash_with_rows_committed_meanwhile(
    sink: PostgresSink, settings: Settings
) -> None:
    """Another worker (one that lost the partition and has not noticed) commits an ack of the
    batch while it is being written: the COPY meets it, and the staging way skips it."""
    sink.write(batch_of(*_orders_and_acks(0, 0, 10)))
    batch = batch_of(*_orders_and_acks(0, 100, 10))
    with psycopg.connect(settings.conninfo()) as other:
        other.execute(
            "INSERT INTO order_acks (order_nid, created_at, src_topic, src_life, src_partition, src_offset)"
            " VALUES (0, now(), 'ledger', 1, 0, 111)"
        )
        result: list[Any] = []
        writer = threading.Thread(target=lambda: result.append(sink.write(batch)))
        writer.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not _waits_for_a_lock(settings):
            time.sleep(0.02)
        assert _waits_for_a_lock(settings), "the COPY never met the other transaction's row"
        other.commit()
        writer.join(30)
    (report,) = result
    acks = report.tables["order_acks"]
    assert acks.direct == 0 and acks.fell_back == 10
    assert acks.inserted == 9 and acks.duplicate == 1
    stored = _acks(settings)
    assert len(stored) == len(set((p, o) for p, o, _ in stored)) == 20
    assert (0, 111, 0) in stored  # the other worker's


def test_the_short_path_falls_back_for_children_whose_parent_is_not_stored(
    sink: PostgresSink, settings: Settings
) -> None:
    acks = [msg(0, i, "OrderAck", {"order_nid": 1_000 + i}) for i in range(5)]
    report = sink.write(batch_of(*acks))
    outcome = report.tables["order_acks"]
    assert outcome.direct == 0 and outcome.fell_back == 5 and outcome.carried == 5
    assert report.saved_offsets == {0: 0}  # held at the first carried child
    assert _acks(settings) == []


def _waits_for_a_lock(settings: Settings) -> bool:
    with psycopg.connect(settings.conninfo(), autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock' AND application_name = 'pme-exporter'"
        ).fetchone()
    return bool(row and row[0])
