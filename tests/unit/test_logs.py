"""The rate limit on repeated log lines, with an injected clock."""

from __future__ import annotations

import logging

from pme_exporter.logs import RateLimit


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def record(message: str, *args: object, level: int = logging.WARNING) -> logging.LogRecord:
    return logging.LogRecord("pme_exporter.kafka", level, __file__, 1, message, args, None)


def test_one_line_per_kind_per_interval_then_a_count_of_the_rest() -> None:
    clock = Clock()
    limit = RateLimit(60, clock)
    # The same failure with other numbers is the same kind of line.
    first = [limit.filter(record("Connect to 127.0.0.1:%d failed (after %dms)", 9092, n)) for n in range(50)]
    assert first == [True] + [False] * 49
    clock.now = 61
    again = record("Connect to 127.0.0.1:%d failed (after %dms)", 9092, 7)
    assert limit.filter(again)
    assert (
        again.getMessage()
        == "Connect to 127.0.0.1:9092 failed (after 7ms) (49 more like it in the last 60 s)"
    )


def test_different_kinds_and_levels_pass_on_their_own() -> None:
    limit = RateLimit(60, Clock())
    assert limit.filter(record("broker down"))
    assert limit.filter(record("topic missing"))
    assert limit.filter(record("broker down", level=logging.ERROR))
    assert not limit.filter(record("broker down"))
