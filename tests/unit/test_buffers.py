from __future__ import annotations

from typing import Any

import orjson

from pme_exporter.buffers import Batch, Orphan, row_field
from pme_exporter.decode import Decoded, Decoder
from pme_exporter.schema import TABLES
from tests.fakes import FakeMessage


def order(nid: int) -> bytes:
    return orjson.dumps({"type": "Order", "ts": "2025-11-29T09:00:00Z", "data": {"nid": nid}})


def test_batch_routes_rows_and_tracks_next_offsets() -> None:
    batch = Batch(decoder=Decoder(), clock=lambda: 5.0)
    batch.add(
        [
            FakeMessage(order(1), 0, 10, b"Order:1", 1000),
            FakeMessage(b'{"type":"Nope"}', 0, 11, b"x", 1001),
            FakeMessage(None, 1, 3, b"Order:9", 1002),
            FakeMessage(order(2), 1, 4, b"Order:2", 1003),
        ]
    )
    assert batch.size == 4 and batch.tombstones == 1
    assert batch.next_offsets == {0: 12, 1: 5}
    rows = batch.tables["orders"]
    lines = rows.copy_data.decode().splitlines(keepends=True)
    assert [line.split("\t")[:3] for line in lines] == [["0", "0", "10"], ["1", "1", "4"]]
    assert all(line.endswith("\n") for line in lines) and len(rows) == 2
    assert rows.sources[1] == (1, 4, b"Order:2", order(2))
    [dead] = batch.dead_letters
    assert (dead.partition, dead.offset, dead.reason, dead.value) == (
        0,
        11,
        "unknown_type",
        b'{"type":"Nope"}',
    )
    assert batch.events_by_type == {"Order": 2, "invalid": 1}
    assert batch.newest_event_ms == 1003 and batch.started_at == 5.0


def test_carried_orphans_become_rows_and_keep_the_previous_batch_end() -> None:
    batch = Batch(decoder=Decoder(), clock=lambda: 7.0)
    batch.add([FakeMessage(order(5), 0, 40, b"Order:5")])
    first = Batch(decoder=Decoder())
    first.add([FakeMessage(order(3), 0, 12, b"Order:3"), FakeMessage(order(4), 2, 8)])
    texts = [first.tables["orders"].row_text(0), first.tables["orders"].row_text(1)]
    assert texts[0].split("\t")[:2] == ["2025-11-29T09:00:00Z", "3"]
    batch.carry(
        [
            Orphan("orders", 0, 12, b"Order:3", order(3), texts[0], 1),
            Orphan("orders", 2, 8, None, order(4), texts[1], 2),
        ],
        {0: 30, 2: 9, 3: 77},
    )
    # Partition 0 already read past the old end; partition 2 has only its orphan.
    assert batch.next_offsets == {0: 41, 2: 9}
    assert batch.times_carried == {(0, 12): 1, (2, 8): 2}
    # Carried rows keep the COPY text they had: the same line, renumbered.
    assert batch.tables["orders"].row_text(1) == texts[0] and batch.tables["orders"].row_text(2) == texts[1]
    rows = batch.tables["orders"]
    assert [s[:2] for s in rows.sources] == [(0, 40), (0, 12), (2, 8)]
    assert [line.split("\t")[:3] for line in rows.copy_data.decode().splitlines()][1:] == [
        ["1", "0", "12"],
        ["2", "2", "8"],
    ]
    assert batch.size == 3 and batch.events_by_type == {"Order": 1}  # counted once, when first read


class _BrokenOnSeven(Decoder):
    """A decoder with a bug that only one message meets."""

    def decode_event(self, value: bytes) -> Decoded:
        if b'"nid":7' in value:
            raise RecursionError("maximum recursion depth exceeded")
        return super().decode_event(value)


def test_an_unexpected_decoder_failure_is_one_dead_letter_and_the_rest_lands() -> None:
    batch = Batch(decoder=_BrokenOnSeven(), clock=lambda: 5.0)
    batch.add([FakeMessage(order(n), 0, n, None, n) for n in (6, 7, 8)])
    assert [(d.offset, d.stage, d.reason) for d in batch.dead_letters] == [(7, "decode", "internal")]
    assert batch.dead_letters[0].value == order(7) and "RecursionError" in batch.dead_letters[0].error
    assert len(batch.tables["orders"]) == 2 and batch.next_offsets == {0: 9}


def _order_at(nid: object, ts: str, offset: int, partition: int = 0) -> FakeMessage:
    return FakeMessage(orjson.dumps({"type": "Order", "ts": ts, "data": {"nid": nid}}), partition, offset)


def test_a_collapsed_batch_stages_each_keys_newest_version_and_its_least_ts() -> None:
    batch = Batch(decoder=Decoder(), clock=lambda: 5.0)
    batch.add(
        [
            _order_at(1, "2025-11-29T09:00:01+07:00", 0),
            _order_at(1, "2025-11-29T02:00:00Z", 1),  # earlier: the least ts, not the winner
            _order_at("001", "2025-11-29T09:00:01+07:00", 2),  # the same instant, a later offset: wins
            _order_at(2, "2025-11-29T09:00:00.0000004Z", 3),
            _order_at(2, "2025-11-29T09:00:00Z", 0, partition=1),  # a tie: the greater partition wins
        ]
    )
    rows = batch.tables["orders"]
    assert rows.winners == {1: 2, 2: 4} and rows.superseded == 3
    assert rows.least == {
        1: "2025-11-29T02:00:00Z",
        2: "2025-11-29T09:00:00.0000004Z",  # the same instant, seen first
    }
    lines = rows.collapsed_copy().decode().splitlines()
    assert [line.split("\t")[:4] for line in lines] == [
        ["2", "0", "2", "2025-11-29T09:00:01+07:00"],
        ["4", "1", "0", "2025-11-29T09:00:00Z"],
    ]
    assert [line.split("\t")[-1] for line in lines] == [
        "2025-11-29T02:00:00Z",
        "2025-11-29T09:00:00.0000004Z",
    ]
    assert len(rows) == 5  # every version stays, for a pass that isolates refused rows


def test_instants_round_to_the_microsecond_as_postgresql_does() -> None:
    from pme_exporter.decode import compare_instants, instant_of

    base = instant_of("2025-11-29T09:00:00Z")
    assert instant_of("2025-11-29t09:00:00z") == base == instant_of("2025-11-29 16:00:00+07:00")
    assert instant_of("2025-11-29T09:00:00.0000004Z") == base
    assert instant_of("2025-11-29T09:00:00.0000006Z") == base + 1
    assert instant_of("2025-11-29T09:00:00.9999996Z") == base + 1_000_000
    assert instant_of("2025-11-29T09:00:00.25Z") == base + 250_000
    # Compared as text when written alike, by instant otherwise: the same answers.
    pairs = [
        ("2025-11-29T09:00:01Z", "2025-11-29T09:00:00Z", 1),
        ("2025-11-29T09:00:00+07:00", "2025-11-29T08:59:59+07:00", 1),
        ("2025-11-29T09:00:00+07:00", "2025-11-29T02:00:00Z", 0),
        ("2025-11-29T09:00:00+07:00", "2025-11-29T09:00:00+06:00", -1),  # text-wise greater, earlier
        ("2025-11-29T09:00:00.5Z", "2025-11-29T09:00:00.4999999Z", 0),  # rounds to the same microsecond
        ("2025-11-29T09:00:00.5000001Z", "2025-11-29T09:00:00.4999994Z", 1),
        ("2025-11-29t09:00:00z", "2025-11-29T09:00:00Z", 0),
        ("2025-11-29 09:00:00Z", "2025-11-29T09:00:00.0000004Z", 0),
    ]
    for a, b, sign in pairs:
        assert compare_instants(a, b) == sign == -compare_instants(b, a), (a, b)


def test_children_and_tables_with_another_unique_column_are_never_collapsed() -> None:
    assert {spec.table for spec in TABLES if spec.collapsible} == {
        "participants",
        "accounts",
        "instruments",
        "orders",
        "holidays",
    }


def test_a_dead_letter_knows_its_table_once_decoding_got_that_far() -> None:
    from pme_exporter.buffers import DeadLetter, dead_letter_for
    from pme_exporter.errors import DecodeError, ValueRefused

    refused = dead_letter_for(ValueRefused("orders", "22001", "value too long"), 0, 1, None, b"{}")
    assert (refused.table, refused.kind) == ("orders", "database/sqlstate_22001")
    undecodable = dead_letter_for(DecodeError("invalid_json", "not JSON"), 0, 2, None, b"{")
    assert (undecodable.table, undecodable.kind) == (None, "decode/invalid_json")
    by_postgres = DeadLetter.refused((0, 3, None, b"{}"), "trades", "23505", "duplicate key")
    assert (by_postgres.table, by_postgres.error) == ("trades", "trades: duplicate key")


def test_direct_copy_data_is_the_staging_text_without_seq_and_with_topic_and_life() -> None:
    acks = [
        FakeMessage(
            orjson.dumps({"type": "OrderAck", "ts": "2025-11-28T09:00:00Z", "data": {"order_nid": n}}), p, o
        )
        for n, p, o in ((7, 2, 40), (8, 1, 12), (9, 2, 41), (10, 1, 11))
    ]
    batch = Batch(decoder=Decoder())
    batch.add(acks)  # type: ignore[arg-type]
    rows = batch.tables["order_acks"]
    staged = bytes(rows.copy_data).decode().splitlines()
    direct = rows.direct_copy_data("pme-ledger\\x", 3).decode().splitlines()
    assert len(direct) == len(staged) == 4
    for seq, (staged_line, direct_line) in enumerate(zip(staged, direct, strict=True)):
        assert staged_line.startswith(f"{seq}\t")
        # The seq field goes, the topic (escaped as COPY text) and its life come last.
        assert direct_line == staged_line.split("\t", 1)[1] + "\tpme-ledger\\\\x\t3"
    assert rows.lowest_offsets() == {2: 40, 1: 11}


def _event(event_type: str, data: dict[str, Any], partition: int, offset: int) -> FakeMessage:
    return FakeMessage(
        orjson.dumps({"type": event_type, "ts": "2025-11-28T09:00:00Z", "data": data}), partition, offset
    )


def test_children_of_parents_other_lanes_have_not_written_are_held_back_unstaged() -> None:
    parents = Batch(decoder=Decoder(), track_parents=True)
    parents.add(
        [
            _event("Trade", {"nid": 3}, 0, 0),
            _event("Order", {"nid": 5}, 0, 1),
            _event("Order", {"nid": 6}, 0, 2),
        ]
    )
    assert parents.parent_keys == {"trades": {"3"}, "orders": {"5", "6"}}
    children = Batch(decoder=Decoder(), track_parents=True)
    children.times_carried[(1, 11)] = 2
    children.add(
        [
            _event("Contract", {"nid": 1, "trade_nid": 3, "order_nid": 9}, 1, 10),  # its trade pends
            _event("Contract", {"nid": 2, "trade_nid": 4, "order_nid": 6}, 1, 11),  # its order pends
            _event("Contract", {"nid": 3, "trade_nid": 4, "order_nid": 9}, 1, 12),
            _event("OrderAck", {"order_nid": 5}, 1, 13),
            _event("OrderAck", {"order_nid": 7}, 1, 14),
            _event("Holiday", {"nid": 1}, 1, 15),
            _event("Contract", {"nid": 4, "trade_nid": 8, "order_nid": 9}, 1, 16),
            _event("Contract", {"nid": 5, "trade_nid": 8, "order_nid": 10}, 1, 17),
        ]
    )
    staged_text = {seq: children.tables["contracts"].row_text(seq) for seq in range(5)}
    assert children.hold_children(parents.parent_keys) == 3
    assert [(o.table, o.offset, o.times_carried) for o in children.held] == [
        ("contracts", 10, 0),
        ("contracts", 11, 2),  # holding is no carry: the count stays
        ("order_acks", 13, 0),
    ]
    assert children.held[0].text == staged_text[0] and children.held[1].text == staged_text[1]
    kept = children.tables["contracts"]
    assert [s[1] for s in kept.sources] == [12, 16, 17]
    assert [kept.row_text(seq) for seq in range(3)] == [staged_text[2], staged_text[3], staged_text[4]]
    # Renumbered from 0, each line where ``starts`` says.
    assert [bytes(kept.copy_data[at : at + 8]) for at in kept.starts] == [
        b"0\t1\t12\t2",
        b"1\t1\t16\t2",
        b"2\t1\t17\t2",
    ]
    assert [s[1] for s in children.tables["order_acks"].sources] == [14]
    assert len(children.tables["holidays"]) == 1
    assert children.hold_children({}) == 0 and children.hold_children({"trades": set()}) == 0


def test_a_parent_key_is_read_from_any_field_of_the_row_text() -> None:
    assert [row_field("ts\ta\tb\tc", i) for i in (1, 2, 3)] == ["a", "b", "c"]
    assert row_field("ts\t\t\\N", 1) == "" and row_field("ts\t\t\\N", 2) == "\\N"
