"""Any message, on the real stack: each bad one is exactly one dead letter, every good neighbour lands,
offsets reach the end, and the worker never exits."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import orjson
import psycopg
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from pme_exporter.decode import Decoder
from pme_exporter.devtools.generator import ends_of, publish
from pme_exporter.errors import DecodeError
from pme_exporter.settings import Settings
from tests.corpus import DATABASE_CASES, DECODE_CASES, encode
from tests.helpers import ExporterProcess, ExporterThread, on_topic, wait_exported
from tests.stack import Stack

MAX_MESSAGE_BYTES = 4096


def _neighbour(i: int) -> bytes:
    return encode("Participant", {"code": f"N{i}", "name": "neighbour"})


def _dead_letters(conninfo: str, topic: str) -> dict[tuple[int, int], tuple[str, str, str]]:
    with psycopg.connect(conninfo) as conn:
        rows = conn.execute(
            'SELECT partition, "offset", stage, reason, error FROM exporter_dead_letters WHERE topic = %s',
            (topic,),
        ).fetchall()
    return {(p, o): (stage, reason, error) for p, o, stage, reason, error in rows}


def test_every_kind_of_bad_message_is_one_readable_dead_letter_and_the_worker_carries_on(
    stack: Stack, settings: Settings, make_topic: Callable[[int], str], tmp_path: Path
) -> None:
    rng = random.Random(5)
    cases = [
        *DECODE_CASES,
        *DATABASE_CASES,
        (encode("Participant", {"code": "BIG", "name": "x" * (MAX_MESSAGE_BYTES + 10)}), "too_large"),
        (encode("Trade", {"nid": 70, "kpei_reff": "K-DUP"}), "sqlstate_23505"),  # after the good K-DUP below
    ]
    assert len(cases) >= 60
    topic = make_topic(3)
    events: list[tuple[int | None, bytes | None, bytes | None]] = [
        (0, None, encode("Trade", {"nid": 69, "kpei_reff": "K-DUP"}))
    ]
    for i, (bad, _) in enumerate(cases):
        key = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 12)))  # binary keys too
        events.append((0 if i == len(cases) - 1 else i % 3, key, bad))
        events.append((i % 3, None, _neighbour(i)))
    events.append((1, b"Order:1", None))  # a tombstone: skipped, not an error
    located = publish(stack.kafka_url, topic, events)
    s = on_topic(
        settings,
        topic,
        max_message_bytes=MAX_MESSAGE_BYTES,
        breaker_ratio=1.0,  # this topic is half bad messages by design
    )
    worker = ExporterProcess(s, tmp_path / "exporter.log")
    try:
        wait_exported(s.conninfo(), topic, ends_of(located), timeout_s=120)
        assert worker.proc.poll() is None, worker.log_tail()
    finally:
        code = worker.terminate() if worker.proc.poll() is None else worker.proc.returncode
    assert code == 0, worker.log_tail()
    where = {v: (p, o) for p, o, v in located if v is not None}
    expected = {where[bad]: reason for bad, reason in cases}
    dead = _dead_letters(s.conninfo(), topic)
    assert {place: reason for place, (_, reason, _) in dead.items()} == expected
    for stage, reason, error in dead.values():
        assert stage == ("database" if reason.startswith("sqlstate_") else "decode")
        assert error.isprintable() and 0 < len(error) < 300, error
    with psycopg.connect(s.conninfo()) as conn:
        neighbours = conn.execute("SELECT count(*) FROM participants WHERE code LIKE 'N%%'").fetchone()
    assert neighbours == (len(cases),)
    assert "Traceback" not in worker.log_tail(2000)


def _deep(depth: int) -> bytes:
    return b"[" * depth + b"1" + b"]" * depth


JSON = st.recursive(
    # orjson writes integers up to 64 bits; larger ones are covered by the corpus as raw text.
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=8),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
    max_leaves=12,
)
EVENT_TYPES = st.sampled_from(
    ["Order", "Trade", "Contract", "OrderAck", "Holiday", "SessionTime", "Parameter"]
)


@st.composite
def any_message(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 4))
    if kind == 0:
        return draw(st.binary(max_size=200))
    if kind == 1:
        return orjson.dumps(draw(JSON))
    if kind == 2:  # an envelope whose fields are anything
        names = st.sampled_from(
            ["nid", "order_nid", "trade_nid", "quantity", "date", "opening_time", "state", "x"]
        )
        fields = {
            "type": draw(EVENT_TYPES | JSON),
            "ts": draw(st.just("2025-11-29T09:00:00Z") | JSON),
            "data": draw(st.dictionaries(names, JSON, max_size=5)),
        }
        return orjson.dumps(fields)
    depth = draw(st.integers(0, 1500))
    where = draw(st.sampled_from(["type", "ts", "data", "x"]))
    parts = {
        "type": b'"Order"',
        "ts": b'"2025-11-29T09:00:00Z"',
        "data": b'{"nid":1,"quantity":1.5}',
        "x": b"1",
    }
    parts[where] = _deep(depth)
    return b"{" + b",".join(b'"%s":%s' % (k.encode(), v) for k, v in parts.items()) + b"}"


@settings(
    max_examples=4,
    deadline=None,
    # Each example is a real export of a few seconds: report a failure as found, unshrunk.
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(messages=st.lists(any_message(), min_size=5, max_size=25))
def test_generated_messages_are_each_a_row_or_one_dead_letter(
    stack: Stack, settings: Settings, make_topic: Callable[[int], str], messages: list[bytes]
) -> None:
    topic = make_topic(2)
    events: list[tuple[int | None, bytes | None, bytes | None]] = []
    for i, message in enumerate(messages):
        events += [(i % 2, None, message), (i % 2, None, _neighbour(1000 + i))]
    located = publish(stack.kafka_url, topic, events)
    s = on_topic(settings, topic, breaker_ratio=1.0)
    with ExporterThread(s):
        wait_exported(s.conninfo(), topic, ends_of(located), timeout_s=60)
    dead = _dead_letters(s.conninfo(), topic)
    decoder = Decoder()
    for p, o, value in located:
        assert value is not None
        if value.startswith(b'{"type":"Participant"') and b"neighbour" in value:
            assert (p, o) not in dead
            continue
        try:
            decoder.decode(value)
        except DecodeError as exc:
            assert dead[(p, o)][:2] == ("decode", exc.reason)
        else:  # stored, or refused by PostgreSQL with its SQLSTATE
            assert (p, o) not in dead or dead[(p, o)][1].startswith("sqlstate_")
