"""The sink contract (pme_exporter.sink), one suite for both sinks: imported by
tests/unit/test_sink_contract.py for the in-memory sink and by
tests/integration/test_sink_contract.py for PostgresSink, each giving the
``under_test`` fixture.

All or nothing; refused rows isolated as dead letters (refusals only a sink can
judge: values a decoder of wider types passes, a unique value another key
holds); orphans carried with their partition's offset held back, parked by a
closing batch, adopted once the parent is stored; replays and any order of
batches give the same tables.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Protocol

import orjson
import pytest

from pme_exporter.buffers import Batch
from pme_exporter.decode import Decoder
from pme_exporter.errors import RetryableError
from pme_exporter.progress import CarryPolicy
from pme_exporter.sink import Sink
from tests.fakes import UNJUDGED, FakeMessage, MemorySink
from tests.model import Tables, apply_events, diff

TS = "2025-11-29T09:00:00Z"
TOPIC = "ledger"


class UnderTest(Protocol):
    sink: Sink

    def tables(self) -> Tables: ...
    def stored(self) -> dict[int, int]: ...
    def dead(self) -> set[tuple[int, int]]: ...
    def parked(self) -> set[tuple[int, int]]: ...
    def failing_once(self) -> contextlib.AbstractContextManager[None]: ...


class InMemory:
    def __init__(self) -> None:
        self.memory = MemorySink()
        self.sink: Sink = self.memory

    def tables(self) -> Tables:
        return self.memory.tables()

    def stored(self) -> dict[int, int]:
        return dict(self.memory.stored)

    def dead(self) -> set[tuple[int, int]]:
        return set(self.memory.dead)

    def parked(self) -> set[tuple[int, int]]:
        return set(self.memory.parked)

    @contextlib.contextmanager
    def failing_once(self) -> Iterator[None]:
        self.memory.fail_before_commit = RetryableError("connection lost before the commit")
        yield


def msg(partition: int, offset: int, event_type: str, data: dict[str, object]) -> FakeMessage:
    return FakeMessage(orjson.dumps({"type": event_type, "ts": TS, "data": data}), partition, offset)


def batch(*messages: FakeMessage, closing: bool = False, judged: bool = True) -> Batch:
    decoder = Decoder() if judged else Decoder(column_types=UNJUDGED)
    b = Batch(decoder=decoder, carry_policy=CarryPolicy(closing=closing))
    b.add(list(messages))
    return b


def model(*messages: FakeMessage) -> Tables:
    return apply_events((m.partition(), m.offset(), m.value() or b"") for m in messages)


def test_a_write_is_all_or_nothing(under_test: UnderTest) -> None:
    first = [msg(0, 0, "Order", {"nid": 1}), msg(0, 1, "OrderAck", {"order_nid": 1})]
    under_test.sink.write(batch(*first))
    second = [msg(0, 2, "Order", {"nid": 2}), msg(0, 3, "Order", {"nid": 3, "account_code": "B" * 51})]
    with under_test.failing_once(), pytest.raises(RetryableError):
        under_test.sink.write(batch(*second))
    assert under_test.tables() == model(*first) and under_test.stored() == {0: 2}
    assert under_test.dead() == set()  # the refused row of the failed write was not kept either
    under_test.sink.write(batch(*second))  # the same batch again, as the flusher retries it
    assert under_test.tables() == model(*first, second[0]) and under_test.stored() == {0: 4}
    assert under_test.dead() == {(0, 3)}


def test_refused_rows_are_dead_letters_and_the_rest_is_stored(under_test: UnderTest) -> None:
    messages = [msg(0, i, "Order", {"nid": i, "account_code": f"A{i}"}) for i in range(30)]
    messages[4] = msg(0, 4, "Order", {"nid": 4, "account_code": "B" * 51})  # 22001
    messages[17] = msg(0, 17, "Order", {"nid": 17, "quantity": "12345678901234.00"})  # 22003
    messages[25] = msg(0, 25, "Holiday", {"nid": 1, "date": "2025-02-30"})  # 22008
    messages[26] = msg(0, 26, "Trade", {"nid": 1, "kpei_reff": "K-1"})
    messages[27] = msg(0, 27, "Trade", {"nid": 2, "kpei_reff": "K-1"})  # 23505: trade 1 holds K-1
    # Decoded with wider types than the tables': the sink itself must find the misfits.
    report = under_test.sink.write(batch(*messages, judged=False))
    assert sorted((d.offset, d.sqlstate) for d in report.dead_letters) == [
        (4, "22001"),
        (17, "22003"),
        (25, "22008"),
        (27, "23505"),
    ]
    kept = [m for i, m in enumerate(messages) if i not in (4, 17, 25, 27)]
    assert under_test.tables() == model(*kept)
    assert under_test.dead() == {(0, 4), (0, 17), (0, 25), (0, 27)}
    assert under_test.stored() == {0: 30}


def test_orphans_are_carried_then_parked_then_adopted(under_test: UnderTest) -> None:
    ack, nak = (
        msg(1, 0, "OrderAck", {"order_nid": 7}),
        msg(1, 1, "OrderNak", {"order_nid": 8, "message": "m"}),
    )
    first = batch(ack, nak)
    report = under_test.sink.write(first)
    assert {(o.partition, o.offset, o.times_carried) for o in report.carried} == {(1, 0, 1), (1, 1, 1)}
    assert report.saved_offsets == {1: 0} and report.end_offsets == {1: 2}  # held back at the first orphan
    assert under_test.stored() == {1: 0}
    closing = Batch(decoder=Decoder(), carry_policy=CarryPolicy(closing=True))
    closing.carry(report.carried, report.end_offsets)
    report = under_test.sink.write(closing)
    assert report.carried == [] and under_test.parked() == {(1, 0), (1, 1)} and under_test.stored() == {1: 2}
    parent, another = msg(0, 0, "Order", {"nid": 7}), msg(1, 2, "OrderAck", {"order_nid": 9})
    report = under_test.sink.write(batch(parent, another))  # adopts one ack, carries a new one
    assert report.tables["order_acks"].adopted == 1 and under_test.parked() == {(1, 1)}
    assert [(o.offset, o.text.split("\t")[1]) for o in report.carried] == [(2, "9")]
    assert under_test.tables() == model(parent, ack)


def test_replays_and_any_order_of_batches_give_the_same_tables(under_test: UnderTest) -> None:
    messages = [
        msg(0, 0, "Order", {"nid": 1, "state": "S"}),
        msg(1, 0, "Order", {"nid": 2, "state": "S"}),
        msg(0, 1, "Order", {"nid": 1, "state": "O"}),
        msg(0, 2, "Parameter", {"auto_match_flag": True}),
        msg(1, 1, "Order", {"nid": 2, "state": "M"}),
    ]
    later, earlier = batch(*messages[2:]), batch(*messages[:2])
    for b in (later, earlier, later, earlier):  # newer first, then older, then both again
        under_test.sink.write(b)
    expected = model(*messages)
    actual = under_test.tables()
    assert actual == expected, diff(expected, actual)
    assert under_test.stored() == {0: 3, 1: 2}
