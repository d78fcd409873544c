from __future__ import annotations

import orjson

from pme_exporter.buffers import Batch
from pme_exporter.decode import Decoder
from tests.helpers import FakeMessage


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
