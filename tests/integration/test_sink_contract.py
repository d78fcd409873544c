"""The sink contract (tests/sink_contract.py) against PostgreSQL: PostgresSink's COPY, set-based
statements and row isolation."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from pme_exporter.progress import read_stored_offsets
from pme_exporter.settings import Settings
from pme_exporter.sink import PostgresSink, Sink
from tests.model import Tables, snapshot
from tests.sink_contract import (
    TOPIC,
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


class InPostgres:
    def __init__(self, settings: Settings) -> None:
        self.conninfo = settings.conninfo()
        self.postgres = PostgresSink(conninfo=self.conninfo, topic=TOPIC, lock_timeout_ms=300)
        self.sink: Sink = self.postgres

    def _query(self, sql: str) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.conninfo) as conn:
            return conn.execute(sql).fetchall()

    def tables(self) -> Tables:
        with psycopg.connect(self.conninfo) as conn:
            return snapshot(conn)

    def stored(self) -> dict[int, int]:
        with psycopg.connect(self.conninfo) as conn:
            return read_stored_offsets(conn, TOPIC)

    def dead(self) -> set[tuple[int, int]]:
        return {(p, o) for p, o in self._query('SELECT partition, "offset" FROM exporter_dead_letters')}

    def parked(self) -> set[tuple[int, int]]:
        return {(p, o) for p, o in self._query('SELECT partition, "offset" FROM exporter_parked_children')}

    @contextlib.contextmanager
    def failing_once(self) -> Iterator[None]:
        # Another session holds the offsets rows: the write's last step waits past
        # its lock timeout and fails (55P03, retryable) after all its other work.
        with psycopg.connect(self.conninfo) as blocker:
            blocker.execute("SELECT * FROM exporter_offsets FOR UPDATE").fetchall()
            blocker.execute("LOCK TABLE exporter_offsets IN SHARE ROW EXCLUSIVE MODE")
            yield
            blocker.rollback()


@pytest.fixture
def under_test(settings: Settings) -> Iterator[UnderTest]:
    target = InPostgres(settings)
    yield target
    target.postgres.close(timeout_s=5)
