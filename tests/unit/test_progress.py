"""Partition progress without servers: what is committed to Kafka, the lag, the carry policy."""

from __future__ import annotations

import pytest

from pme_exporter.progress import CarryPolicy, PartitionProgress


def test_only_assigned_partitions_are_committed_and_saved_offsets_never_go_back() -> None:
    progress = PartitionProgress(clock=lambda: 1_000.0)
    progress.assign([0, 1], stored={0: 10})
    assert progress.saved({0: 15, 2: 7}, newest_event_ms=900_000) == {0: 15}  # 2 is not ours
    progress.saved({0: 12}, newest_event_ms=800_000)  # an older report: the position stays
    assert progress.committable() == {0: 15}
    progress.revoke([0])
    assert progress.committable() == {}


def test_lag_counts_messages_behind_per_partition_and_seconds_behind_overall() -> None:
    progress = PartitionProgress(clock=lambda: 1_000.0)
    progress.assign([0, 1, 2], stored={0: 10, 1: 20})
    progress.saved({0: 10, 1: 20}, newest_event_ms=990_000)
    behind, seconds = progress.lag({0: 15, 1: 20, 2: 5, 3: 9})
    # 2 has no known position yet and 3 is not assigned: neither is reported.
    assert behind == {0: 5, 1: 0} and seconds == pytest.approx(10.0)
    behind, seconds = progress.lag({0: 10, 1: 20})
    assert behind == {0: 0, 1: 0} and seconds == 0.0  # caught up: no seconds behind


@pytest.mark.parametrize(
    ("times", "closing", "carried"), [(0, False, True), (2, False, True), (3, False, False), (0, True, False)]
)
def test_a_child_is_carried_a_few_flushes_then_parked_and_a_closing_batch_parks_at_once(
    times: int, closing: bool, carried: bool
) -> None:
    assert CarryPolicy(max_carries=3, closing=closing).carry(times) is carried
