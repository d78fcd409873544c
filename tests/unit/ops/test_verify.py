"""verify's sampling without servers: stable per key, about the fraction asked for, all at 1."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pme_exporter.ops.verify import MISMATCHES, VERDICTS, in_sample


@given(st.text(max_size=40), st.floats(0.0, 1.0))
def test_a_key_is_in_or_out_of_a_sample_the_same_way_every_time(key: str, fraction: float) -> None:
    assert in_sample(key, fraction) == in_sample(key, fraction)
    assert in_sample(key, 1.0)


def test_a_sample_takes_about_the_fraction_asked_for_and_grows_with_it() -> None:
    keys = [str(n) for n in range(20_000)]
    for fraction in (0.1, 0.5, 0.9):
        taken = sum(in_sample(k, fraction) for k in keys) / len(keys)
        assert abs(taken - fraction) < 0.02, (fraction, taken)
    assert {k for k in keys if in_sample(k, 0.2)} <= {k for k in keys if in_sample(k, 0.6)}


def test_every_mismatch_but_a_lost_message_is_a_verdict_of_a_table() -> None:
    assert MISMATCHES - {"lost"} <= set(VERDICTS)
    assert "unverifiable" in VERDICTS and "unverifiable" not in MISMATCHES
