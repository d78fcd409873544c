"""The dead-letter breaker trips on a flood of one reason, and only then."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from pme_exporter.breaker import DeadLetterBreaker, DeadLetterFlood


def test_a_batch_that_is_mostly_one_reason_trips_and_is_not_recorded() -> None:
    breaker = DeadLetterBreaker(window=1000, ratio=0.25)
    breaker.check(2000, ["database/sqlstate_22001"] * 400)  # 20%: passes
    breaker.record(2000, ["database/sqlstate_22001"] * 400)
    with pytest.raises(DeadLetterFlood, match=r"sqlstate_22001") as tripped:
        breaker.check(2000, ["database/sqlstate_22001"] * 600)
    assert tripped.value.reason == "database/sqlstate_22001"


def test_before_a_window_is_seen_the_threshold_is_a_share_of_the_window() -> None:
    breaker = DeadLetterBreaker(window=1000, ratio=0.25)
    for _ in range(25):  # 10 messages a batch, all dead letters: 250 in all, not more than 250
        breaker.check(10, ["decode/invalid_json"] * 10)
        breaker.record(10, ["decode/invalid_json"] * 10)
    with pytest.raises(DeadLetterFlood):
        breaker.check(10, ["decode/invalid_json"] * 10)


def test_different_reasons_do_not_add_up() -> None:
    breaker = DeadLetterBreaker(window=100, ratio=0.25)
    reasons = [f"decode/r{i % 5}" for i in range(100)]  # 20 each of 5 reasons
    breaker.check(100, reasons)


def test_old_batches_leave_the_window() -> None:
    breaker = DeadLetterBreaker(window=100, ratio=0.25)
    breaker.check(100, ["decode/invalid_json"] * 20)
    breaker.record(100, ["decode/invalid_json"] * 20)
    for _ in range(3):  # clean batches push the old dead letters out
        breaker.check(100, [])
        breaker.record(100, [])
    breaker.check(100, ["decode/invalid_json"] * 25)


def test_ratio_one_turns_it_off() -> None:
    breaker = DeadLetterBreaker(window=10, ratio=1.0)
    breaker.check(1000, ["decode/invalid_json"] * 1000)


@given(st.lists(st.tuples(st.integers(1, 300), st.integers(0, 300)), max_size=40))
@example(batches=[(5, 0), (1, 0), (198, 51), (1, 0)])  # a clean batch after a flood that passed at 51/204
def test_committed_dead_letters_of_one_reason_never_exceed_the_window_share(
    batches: list[tuple[int, int]],
) -> None:
    """However batches are cut, a batch with dead letters passes only if the newest batches that
    make up a window, it included, hold at most ratio * max(their messages, window) of them.
    (A clean batch always passes: it adds none.)"""
    window, ratio = 200, 0.25
    breaker = DeadLetterBreaker(window=window, ratio=ratio)
    passed: list[tuple[int, int]] = []
    for messages, wanted in batches:
        dead = min(wanted, messages)
        try:
            breaker.check(messages, ["decode/x"] * dead)
        except DeadLetterFlood:
            continue
        breaker.record(messages, ["decode/x"] * dead)
        passed.append((messages, dead))
        if dead == 0:
            continue
        seen = total = 0
        for m, d in reversed(passed):
            seen, total = seen + m, total + d
            if seen >= window:
                break
        assert total <= ratio * max(seen, window)
