"""The sink contract (tests/sink_contract.py) against the in-memory sink: no server needed."""

from __future__ import annotations

import pytest

from tests.sink_contract import (
    InMemory,
    UnderTest,
    test_a_write_is_all_or_nothing,
    test_orphans_are_carried_then_parked_then_adopted,
    test_refused_rows_are_dead_letters_and_the_rest_is_stored,
    test_replays_and_any_order_of_batches_give_the_same_tables,
)

__all__ = [
    "test_a_write_is_all_or_nothing",
    "test_orphans_are_carried_then_parked_then_adopted",
    "test_refused_rows_are_dead_letters_and_the_rest_is_stored",
    "test_replays_and_any_order_of_batches_give_the_same_tables",
]


@pytest.fixture
def under_test() -> UnderTest:
    return InMemory()
