from __future__ import annotations

import contextlib

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pme_exporter.decode import Decoder, copy_fields
from pme_exporter.errors import DecodeError
from pme_exporter.schema import BY_EVENT_TYPE, TABLES

TS = "2025-11-29T09:00:00.200+07:00"
decoder = Decoder()


def encode(event_type: str, data: object, ts: object = TS) -> bytes:
    return orjson.dumps({"type": event_type, "ts": ts, "data": data})


def test_order_becomes_copy_text_in_column_order() -> None:
    spec, text = decoder.decode(
        encode(
            "Order",
            {
                "nid": 123,
                "account_code": "ACC001",
                "side": "BORR",
                "quantity": "1000.00",
                "periode": 30,
                "aro_status": False,
                "settlement_date": "2025-12-01",
                "unknown_new_field": [1, 2],
            },
        )
    )
    assert spec.table == "orders"
    row = dict(zip(("ts", *spec.column_names), copy_fields(text), strict=True))
    assert row["ts"] == TS and row["nid"] == "123" and row["quantity"] == "1000.00" and row["periode"] == "30"
    assert row["aro_status"] == "f" and row["settlement_date"] == "2025-12-01"
    assert row["instrument_code"] is None and row["state"] is None  # missing -> NULL


def test_event_time_columns_default_to_ts_unless_given() -> None:
    _, text = decoder.decode(encode("OrderAck", {"order_nid": 1}))
    assert copy_fields(text)[-1] == TS
    _, text = decoder.decode(encode("OrderAck", {"order_nid": 1, "acknowledged_at": "2025-11-29T10:00:00Z"}))
    assert copy_fields(text)[-1] == "2025-11-29T10:00:00Z"


def test_numbers_keep_the_digits_written() -> None:
    raw = b'{"type":"Account","ts":"2025-11-29T09:00:00Z","data":{"code":"A","trade_limit":1234567890123456.78,"pool_limit":10}}'
    fields = copy_fields(decoder.decode(raw)[1])
    assert fields[4] == "1234567890123456.78"  # a float would say 1234567890123456.8
    assert fields[5] == "10"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"{not json", "invalid_json"),
        (b"\xff\xfe", "invalid_json"),
        (b"[1,2]", "not_an_object"),
        (b'"text"', "not_an_object"),
        (orjson.dumps({"type": "Settlement", "ts": TS, "data": {}}), "unknown_type"),
        (orjson.dumps({"type": 7, "ts": TS, "data": {}}), "unknown_type"),
        (orjson.dumps({"ts": TS, "data": {"nid": 1}}), "unknown_type"),
        (orjson.dumps({"type": "Order", "ts": TS}), "missing_data"),
        (orjson.dumps({"type": "Order", "ts": TS, "data": [1]}), "missing_data"),
        (encode("Order", {"state": "S"}), "missing_key"),
        (encode("Order", {"nid": None}), "missing_key"),
        (encode("Order", {"nid": 1}, ts="2025-11-29T09:00:00"), "invalid_ts"),
        (encode("Order", {"nid": 1}, ts=12345), "invalid_ts"),
        (encode("Order", {"nid": 1, "aro_status": "yes"}), "wrong_type"),
        (encode("Order", {"nid": 1, "side": 5}), "wrong_type"),
        (encode("Order", {"nid": 1.5}), "wrong_type"),
        (encode("Order", {"nid": True}), "wrong_type"),
        (encode("Trade", {"nid": 1, "matched_at": "2025-11-29 09:00"}), "invalid_value"),
        (encode("Participant", {"code": "P\u0000"}), "invalid_value"),
    ],
)
def test_invalid_messages_raise_a_classified_error(value: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as info:
        decoder.decode(value)
    assert info.value.reason == reason
    assert info.value.detail  # a clear message for the dead letter


def test_every_table_has_a_decodable_event() -> None:
    for spec in TABLES:
        data: dict[str, str | None] = {c.name: None for c in spec.columns}
        if spec.key:
            data[spec.key] = "1" if spec.key.endswith("nid") else "K1"
        decoded_spec, text = decoder.decode(encode(spec.event_type, data))
        assert decoded_spec is BY_EVENT_TYPE[spec.event_type]
        assert len(copy_fields(text)) == 1 + len(spec.columns)


def test_copy_special_characters_are_escaped_and_round_trip() -> None:
    name = "tab\there\nnewline\r backslash \\ literal \\N e\u0301"
    _, text = decoder.decode(encode("Participant", {"code": "P\\1", "name": name}))
    assert "\n" not in text and "\r" not in text and text.count("\t") == 2  # only the field separators
    assert copy_fields(text) == ["2025-11-29T09:00:00.200+07:00", "P\\1", name]


@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_escape_as_other_exceptions(value: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decoder.decode(value)


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=5),
        lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
        max_leaves=10,
    )
)
def test_arbitrary_json_data_never_escape_as_other_exceptions(data: object) -> None:
    for event_type in BY_EVENT_TYPE:
        with contextlib.suppress(DecodeError):
            decoder.decode(encode(event_type, data))
