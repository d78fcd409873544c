"""A realistic, reproducible trading day of ledger events, and helpers to publish it.

Used by ``pme-exporter demo``, ``benchmarks/throughput.py`` and the tests.
Every message is keyed by its entity (``Order:123``) as the real producer
does, so all events of one entity land on one partition, in order.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import orjson

from pme_exporter.kafka_config import KAFKA_LOG

Event = tuple[bytes | None, bytes | None]  # (key, value); value None is a tombstone

JAKARTA = timezone(timedelta(hours=7))
_NAK_MESSAGES = ("insufficient pool limit", "instrument not eligible", "trade limit exceeded")
_DAY_START = datetime(2025, 11, 28, 8, 30, tzinfo=JAKARTA)


def envelope(event_type: str, ts: datetime, data: dict[str, Any]) -> bytes:
    return orjson.dumps({"type": event_type, "ts": ts.isoformat(timespec="microseconds"), "data": data})


def _key(event_type: str, ident: object) -> bytes:
    return f"{event_type}:{ident}".encode()


def trading_day(
    orders: int,
    seed: int = 7,
    *,
    invalid: bool = False,
    clock: Callable[[], datetime] | None = None,
    nid_base: int = 0,
) -> Iterator[Event]:
    """Reference data, then orders through their states with acks, naks, trades and contracts.

    About 5.5 events per order. With ``invalid`` a few bad messages and a
    tombstone are mixed in (each a different kind of README "Invalid input"). With
    ``clock`` every event time is read from it (the latency benchmark stamps
    events as they are produced). Order, trade and contract numbers start after
    ``nid_base``, so two days can share a topic without sharing keys.
    """
    rng = random.Random(seed)
    day_clock = _DAY_START

    def tick(max_ms: int = 40) -> datetime:
        nonlocal day_clock
        if clock is not None:
            return clock()
        day_clock += timedelta(microseconds=rng.randint(1, max_ms * 1000))
        return day_clock

    participants = [f"P{i:02d}" for i in range(1, 11)]
    accounts = [f"ACC{i:04d}" for i in range(1, 81)]
    instruments = [
        "BBCA",
        "BBRI",
        "BMRI",
        "TLKM",
        "ASII",
        "UNVR",
        "ICBP",
        "GOTO",
        "ADRO",
        "ANTM",
        "INCO",
        "PGAS",
    ]
    for code in participants:
        yield (
            _key("Participant", code),
            envelope("Participant", tick(), {"code": code, "name": f"Broker {code}"}),
        )
    for code in accounts:
        data = {
            "code": code,
            "participant_code": rng.choice(participants),
            "sid": f"SID{rng.randint(10**9, 10**10 - 1)}",
            "trade_limit": f"{rng.randint(1, 500) * 1_000_000}.00",
            "pool_limit": f"{rng.randint(1, 200) * 1_000_000}.00",
        }
        yield _key("Account", code), envelope("Account", tick(), data)
    for code in instruments:
        yield (
            _key("Instrument", code),
            envelope(
                "Instrument",
                tick(),
                # One instrument is not eligible for trading, so both values occur.
                {"code": code, "name": f"{code} Tbk", "status": code != "GOTO"},
            ),
        )
    for nid, day in enumerate(("2025-12-25", "2025-12-26", "2026-01-01"), start=1):
        yield (
            _key("Holiday", nid),
            envelope("Holiday", tick(), {"nid": nid, "date": day, "description": "Libur"}),
        )
    yield None, _parameter(rng, tick())
    yield (
        None,
        envelope(
            "SessionTime",
            tick(),
            {
                "pre_opening_time": "08:45:00",
                "opening_time": "09:00:00",
                "closing_time": "15:50:00",
                "effective_from": tick().isoformat(),
            },
        ),
    )
    if invalid:
        yield from _invalid_messages(tick())

    trade_nid = nid_base
    contract_nid = nid_base
    waiting: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for nid in range(nid_base + 1, nid_base + orders + 1):
        side = rng.choice(("BORR", "LEND"))
        instrument = rng.choice(instruments)
        qty = Decimal(rng.randint(1, 500) * 100)
        order: dict[str, Any] = {
            "nid": nid,
            "account_code": rng.choice(accounts),
            "instrument_code": instrument,
            "side": side,
            "quantity": f"{qty}.00",
            "quantity_left": f"{qty}.00",
            "periode": rng.choice((7, 14, 30, 60, 90)),
            "state": "S",
            "settlement_date": "2025-12-01",
            "aro_status": rng.random() < 0.2,
            "reff_request_id": f"REQ-{nid:08d}",
        }
        yield _key("Order", nid), envelope("Order", tick(), order)
        if rng.random() < 0.05:
            yield (
                _key("Order", nid),
                envelope("OrderNak", tick(), {"order_nid": nid, "message": rng.choice(_NAK_MESSAGES)}),
            )
            yield _key("Order", nid), envelope("Order", tick(), {**order, "state": "R"})
            continue
        yield _key("Order", nid), envelope("OrderAck", tick(), {"order_nid": nid})
        order = {**order, "state": "O"}
        yield _key("Order", nid), envelope("Order", tick(), order)
        other = "LEND" if side == "BORR" else "BORR"
        queue = waiting.get((instrument, other))
        if queue:
            counter = queue.pop(0)
            trade_nid += 1
            matched = tick()
            trade: dict[str, Any] = {
                "nid": trade_nid,
                "kpei_reff": f"KPEI-20251128-{trade_nid:07d}",
                "instrument_code": instrument,
                "quantity": order["quantity"],
                "periode": order["periode"],
                "state": "M",
                "matched_at": matched.isoformat(),
                "reimburse_at": None,
                "fee_flat_rate": "0.000500",
                "fee_borr_rate": "0.180000",
                "fee_lend_rate": "0.150000",
            }
            yield _key("Trade", trade_nid), envelope("Trade", matched, trade)
            for o in (order, counter):
                contract_nid += 1
                fee_daily = (Decimal(o["quantity"]) * Decimal("0.18") / 365).quantize(Decimal("0.01"))
                contract = {
                    "nid": contract_nid,
                    "trade_nid": trade_nid,
                    "order_nid": o["nid"],
                    "kpei_reff": trade["kpei_reff"],
                    "account_code": o["account_code"],
                    "instrument_code": instrument,
                    "side": o["side"],
                    "quantity": trade["quantity"],
                    "state": "A",
                    "matched_at": matched.isoformat(),
                    "reimburse_at": None,
                    "fee_flat_val": str(
                        (Decimal(o["quantity"]) * Decimal("0.0005")).quantize(Decimal("0.01"))
                    ),
                    "fee_val_daily": str(fee_daily),
                }
                yield _key("Contract", contract_nid), envelope("Contract", tick(), contract)
                yield (
                    _key("Order", o["nid"]),
                    envelope("Order", tick(), {**o, "state": "M", "quantity_left": "0.00"}),
                )
            if rng.random() < 0.3:
                yield _key("Trade", trade_nid), envelope("Trade", tick(), {**trade, "state": "E"})
        else:
            waiting.setdefault((instrument, side), []).append(order)
        if nid % 20_000 == 0:
            yield None, _parameter(rng, tick())


def _parameter(rng: random.Random, ts: datetime) -> bytes:
    return envelope(
        "Parameter",
        ts,
        {
            "fee_flat_rate": "0.000500",
            "fee_borr_rate": f"0.{rng.randint(150, 200)}000",
            "fee_lend_rate": f"0.{rng.randint(100, 149)}000",
            "auto_match_flag": True,
            "effective_from": ts.isoformat(),
        },
    )


def _invalid_messages(ts: datetime) -> Iterator[Event]:
    """One message of each invalid kind (README "Invalid input"), and a tombstone."""
    stamp = ts.isoformat()
    yield b"bad:json", b"{not json"
    yield b"bad:array", b"[1, 2, 3]"
    yield b"bad:type", orjson.dumps({"type": "Settlement", "ts": stamp, "data": {"nid": 1}})
    yield b"bad:data", orjson.dumps({"type": "Order", "ts": stamp})
    yield b"bad:key", orjson.dumps({"type": "Order", "ts": stamp, "data": {"state": "S"}})
    yield (
        b"bad:long",
        orjson.dumps({"type": "Instrument", "ts": stamp, "data": {"code": "X" * 40, "name": "too long"}}),
    )
    yield b"Order:0", None


def create_topic(bootstrap: str, topic: str, partitions: int, config: dict[str, Any] | None = None) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

    settings: dict[str, Any] = {"bootstrap.servers": bootstrap, "logger": KAFKA_LOG, **(config or {})}
    admin = AdminClient(settings)
    futures = admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    for future in futures.values():
        future.result(timeout=30)


# (partition, or None to let the key choose; key; value) of a message to send.
Outgoing = tuple[int | None, bytes | None, bytes | None]
# (partition, offset, value) of a message the broker stored; value None is a tombstone.
Located = tuple[int, int, bytes | None]


def publish(
    bootstrap: str,
    topic: str,
    events: Iterable[Outgoing],
    *,
    compression: str = "none",
    config: dict[str, Any] | None = None,
) -> list[Located]:
    """Sends events in order and returns where each one was stored, in the same order."""
    from confluent_kafka import Producer

    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 20,
            "batch.size": 1_000_000,
            "queue.buffering.max.messages": 500_000,
            "enable.idempotence": True,
            "compression.type": compression,
            "logger": KAFKA_LOG,
            **(config or {}),  # security settings, for a secured broker
        }
    )
    located: list[Located | None] = []
    failures: list[str] = []

    def delivered(index: int) -> Callable[[Any, Any], None]:
        def callback(err: Any, msg: Any) -> None:
            if err is not None:
                failures.append(str(err))
            else:
                located[index] = (msg.partition(), msg.offset(), msg.value())

        return callback

    for partition, key, value in events:
        located.append(None)
        callback = delivered(len(located) - 1)
        while True:
            try:
                if partition is None:
                    producer.produce(topic, value=value, key=key, on_delivery=callback)
                else:
                    producer.produce(topic, value=value, key=key, partition=partition, on_delivery=callback)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    remaining = producer.flush(120)
    if remaining or failures or None in located:
        raise RuntimeError(f"produce failed: {remaining} undelivered, errors: {failures[:3]}")
    return [place for place in located if place is not None]


def ends_of(located: Iterable[Located]) -> dict[int, int]:
    """The next offset per partition after these messages."""
    ends: dict[int, int] = {}
    for partition, offset, _ in located:
        ends[partition] = max(ends.get(partition, 0), offset + 1)
    return ends


def produce(bootstrap: str, topic: str, events: Iterable[Event]) -> dict[int, int]:
    """Publishes keyed events in order; returns the end offset (next offset) per partition."""
    return ends_of(publish(bootstrap, topic, ((None, key, value) for key, value in events)))
