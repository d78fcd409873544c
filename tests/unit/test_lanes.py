"""Lanes without servers: placing partitions, and routing that leaves out partitions no lane holds."""

from __future__ import annotations

from pme_exporter.buffers import Batch
from pme_exporter.decode import Decoder
from pme_exporter.flusher import Flusher
from pme_exporter.lanes import Lanes
from tests.fakes import FakeMessage, MemorySink

ORDER = b'{"type":"Order","ts":"2025-11-29T09:00:00Z","data":{"nid":1}}'


def test_a_message_of_a_lost_partition_is_left_out_not_a_crash() -> None:
    sink = MemorySink()
    flushers = [Flusher(sink, on_report=lambda r: None, on_retry=lambda e: None) for _ in range(2)]
    decoder = Decoder()
    lanes = Lanes(flushers, lambda: Batch(decoder=decoder), 0.0)
    lanes.place([0, 1, 2])
    assert lanes.layout() == {0: [0, 2], 1: [1]}
    lanes.unplace([2])  # lost: librdkafka may still hand over what it fetched for it
    lanes.route([FakeMessage(ORDER, 0, 5), FakeMessage(ORDER, 2, 9), FakeMessage(ORDER, 1, 3)])
    assert (lanes[0].batch.next_offsets, lanes[1].batch.next_offsets) == ({0: 6}, {1: 4})
    assert lanes.buffered() == 2
