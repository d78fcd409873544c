from __future__ import annotations

import orjson

from pme_exporter.buffers import Batch, Orphan
from pme_exporter.decode import Decoder
from pme_exporter.schema import TableSpec
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

    def decode(self, value: bytes) -> tuple[TableSpec, str]:
        if b'"nid":7' in value:
            raise RecursionError("maximum recursion depth exceeded")
        return super().decode(value)


def test_an_unexpected_decoder_failure_is_one_dead_letter_and_the_rest_lands() -> None:
    batch = Batch(decoder=_BrokenOnSeven(), clock=lambda: 5.0)
    batch.add([FakeMessage(order(n), 0, n, None, n) for n in (6, 7, 8)])
    assert [(d.offset, d.stage, d.reason) for d in batch.dead_letters] == [(7, "decode", "internal")]
    assert batch.dead_letters[0].value == order(7) and "RecursionError" in batch.dead_letters[0].error
    assert len(batch.tables["orders"]) == 2 and batch.next_offsets == {0: 9}
