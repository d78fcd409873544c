from __future__ import annotations

import contextlib
from collections.abc import Callable

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pme_exporter.decode import Decoded, Decoder, copy_fields
from pme_exporter.devtools.generator import trading_day
from pme_exporter.errors import DecodeError, ValueRefused
from pme_exporter.schema import BY_EVENT_TYPE, BY_TABLE, TABLES
from tests.corpus import DATABASE_CASES, DECODE_CASES, TS, encode

decoder = Decoder()


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
    ("value", "reason"), [*DECODE_CASES, (b'{"a":"' + b"x" * 2_000_000 + b'"}', "too_large")]
)
def test_invalid_messages_raise_a_classified_error(value: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as info:
        decoder.decode(value)
    assert info.value.reason == reason
    assert info.value.detail  # a clear message for the dead letter


@pytest.mark.parametrize(
    ("value", "says"),
    [
        (b"\xff\xfe{}", "not valid UTF-8 (byte 0xff at position 0)"),
        (b"null", "a JSON null, not an object"),
        (
            b'{"type":"Order","ts":"2025-11-29T09:00:00Z","data":{"nid":1180591620717411303424}}',
            "whole 64-bit",
        ),
        (encode("Order", {"nid": 1}, ts=[[1]]), "ts a JSON array is not"),
        (orjson.dumps({"type": ["Order"] * 100, "ts": TS, "data": {}}), "unknown event type a JSON array"),
        (
            encode("Order", {"nid": 1, "message": "S" * 5000, "settlement_date": "x" * 500}),
            "... (500 characters)",
        ),
    ],
)
def test_error_texts_say_what_is_wrong_briefly(value: bytes, says: str) -> None:
    with pytest.raises(DecodeError) as info:
        decoder.decode(value)
    assert says in info.value.detail and len(info.value.detail) < 200


@pytest.mark.parametrize(
    "ts",
    [
        "2025-11-29T09:00:00Z",
        "2025-11-29t09:00:00z",
        "2025-11-29 09:00:00+07:00",
        "2025-11-29T09:00:00.123456789-05:30",
        "0001-01-01T00:00:00Z",
        "9999-12-31T23:59:59.999999+14:00",
    ],
)
def test_rfc3339_timestamps_pass(ts: str) -> None:
    assert copy_fields(decoder.decode(encode("OrderAck", {"order_nid": 1}, ts=ts))[1]) == [ts, "1", ts]


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
    depth=st.integers(0, 1500),
    opener=st.sampled_from([b"[", b'{"a":', b'["x",', b'{"[":']),
    where=st.sampled_from(["type", "ts", "data", "unknown", "value"]),
)
def test_nesting_of_any_depth_anywhere_is_a_decode_error_or_a_row(
    depth: int, opener: bytes, where: str
) -> None:
    closer = b"]" if opener.startswith(b"[") else b"}"
    nested = opener * depth + b"1" + closer * depth
    if where == "value":
        raw = nested
    elif where == "unknown":
        raw = (
            b'{"type":"Order","ts":"2025-11-29T09:00:00Z","data":{"nid":1,"quantity":1.5,"x":'
            + nested
            + b"}}"
        )
    else:
        fields = {"type": b'"Order"', "ts": b'"2025-11-29T09:00:00Z"', "data": b'{"nid":1}'}
        fields[where] = nested
        raw = b"{" + b",".join(b'"%s":%s' % (k.encode(), v) for k, v in fields.items()) + b"}"
    try:
        decoder.decode(raw)
    except DecodeError as exc:
        assert exc.detail
        if depth > 40:
            assert exc.reason in ("too_deep", "unknown_type", "invalid_ts", "missing_data", "not_an_object")


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


@pytest.mark.parametrize(("value", "reason"), DATABASE_CASES)
def test_values_their_column_cannot_hold_are_refused_in_python_with_postgresqls_sqlstate(
    value: bytes, reason: str
) -> None:
    with pytest.raises(ValueRefused) as info:
        decoder.decode(value)
    assert info.value.reason == reason and info.value.sqlstate == reason.removeprefix("sqlstate_")
    assert info.value.detail.split(": ")[0] in BY_TABLE  # names the table, as the sink's refusals do


def test_the_live_column_types_decide_not_the_design() -> None:
    narrowed = Decoder(column_types={"participants": {"name": "character varying(5)"}})
    long_name = encode("Participant", {"code": "P1", "name": "Broker 1"})
    with pytest.raises(ValueRefused, match="character varying\\(5\\)"):
        narrowed.decode(long_name)
    assert decoder.decode(long_name)[0].table == "participants"
    widened = Decoder(column_types={"orders": {"quantity": "numeric(30,2)", "periode": "bigint"}})
    big = encode("Order", {"nid": 1, "quantity": "12345678901234.00", "periode": 3_000_000_000})
    assert widened.decode(big)[1].split("\t")[5] == "12345678901234.00"


@pytest.mark.parametrize(
    ("data", "fits"),
    [
        ({"quantity": "9999999999999.99"}, True),
        ({"quantity": "9999999999999.994"}, True),  # rounds down to .99
        ({"quantity": "9999999999999.995"}, False),  # rounds up, away from zero, to 10^13
        ({"quantity": "-9999999999999.995"}, False),
        ({"quantity": 1e-300}, True),
        ({"side": "LEND   "}, True),  # PostgreSQL cuts trailing spaces past the length
        ({"side": "LEND  x"}, False),
        ({"periode": 2147483647}, True),
        ({"periode": "2147483648"}, False),
        ({"nid": 9223372036854775807}, True),
        ({"settlement_date": "2024-02-29"}, True),
        ({"settlement_date": "2025-02-29"}, False),
    ],
)
def test_fit_follows_postgresqls_rules(data: dict[str, object], fits: bool) -> None:
    value = encode("Order", {"nid": 1, **data})
    if fits:
        decoder.decode(value)
    else:
        with pytest.raises(ValueRefused):
            decoder.decode(value)


# JSON texts of values a field may meet, valid and not, spelled as a producer could: the two
# passes must agree on every one of them, in any field of any event type.
_VALUE_TEXTS = [
    *("null", "true", "false", "0", "-0", "7", "1.0", "1e3", "1.5", "-1", "1e400", "[]", "{}", "[1]"),
    *("9223372036854775807", "9223372036854775808", "-9223372036854775809", "2147483648"),
    *("123456789012345678901234567890", '"123456789012345678901234567890"'),
    *('""', '"7"', '"007"', '"-7"', '" 7"', '"7 "', '"1.50"', '"1e2"', '"NaN"', '"infinity"', '"today"'),
    *('"9999999999999.995"', '"9999999999999.994"', '"0.0000005"', '"LEND"', '"LEND   "', '"LEND  x"'),
    *('"2025-11-29"', '"2025-02-29"', '"2024-02-29"', '"0000-01-01"', '"09:00:00"', '"24:00:00"'),
    *('"2025-11-29T09:00:00Z"', '"2025-11-29t09:00:00.123456789z"', '"2025-02-30T09:00:00Z"'),
    *('"2025-11-29 09:00:00+07:00"', '"2025-11-29T09:00:00"', '"allballs"', '"P\\\\1\\t2"'),
    *('"a\\u0000b"', '"\\ud800"', '"\\u00e9t\\u00e9"', '"x' + "y" * 60 + '"', '"\\n"', "9" * 5000),
]
# Bytes no str encodes to: invalid UTF-8, an encoded surrogate.
_VALUE_BYTES = [t.encode() for t in _VALUE_TEXTS] + [b'"\xff"', b'"\xed\xa0\x80"', b'["\xc3"]']
_FIELD_NAMES = sorted({c.name for spec in TABLES for c in spec.columns} | {"extra"})
_TS_TEXTS = ['"2025-11-29T09:00:00.200+07:00"', '"2025-11-29T09:00:00Z"', '"2025-02-30T00:00:00Z"', "5"]


@st.composite
def _messages(draw: st.DrawFn) -> bytes:
    """An envelope written field by field, so keys may repeat, be missing or come in any order."""
    data = b",".join(
        b'"%s":%s' % (draw(st.sampled_from(_FIELD_NAMES)).encode(), draw(st.sampled_from(_VALUE_BYTES)))
        for _ in range(draw(st.integers(0, 8)))
    )
    fields = [
        b'"type":"%s"' % draw(st.sampled_from([*BY_EVENT_TYPE, "Settlement"])).encode(),
        b'"ts":%s' % draw(st.sampled_from(_TS_TEXTS)).encode(),
        b'"data":' + draw(st.sampled_from([b"{%s}" % data, b"null", b"[%s]" % data])),
    ]
    fields += draw(
        st.lists(st.sampled_from([b'"type":"Order"', b'"ts":"2025-01-01T00:00:00Z"', b'"x":1']), max_size=2)
    )
    return b"{" + b",".join(draw(st.permutations(fields))) + b"}"


def _outcome(decode: Callable[[bytes], object], value: bytes) -> object:
    try:
        return decode(value)
    except DecodeError as exc:
        return (type(exc), exc.reason, exc.detail)


@settings(max_examples=2000)
@given(_messages())
def test_the_compiled_first_pass_and_the_checked_pass_decide_every_message_alike(value: bytes) -> None:
    assert _outcome(decoder.decode_event, value) == _outcome(decoder._checked, value)


def test_the_first_pass_takes_every_valid_event_of_a_trading_day() -> None:
    class CheckedPassRefused(Decoder):
        def _checked(self, value: bytes) -> Decoded:
            raise AssertionError(f"the first pass left this to the checked pass: {value!r}")

    first_pass_only, values = CheckedPassRefused(), [v for _, v in trading_day(300, seed=3) if v is not None]
    assert [first_pass_only.decode_event(v) for v in values] == [decoder._checked(v) for v in values]
    assert {spec.table for spec, *_ in map(decoder.decode_event, values)} >= {"orders", "trades", "contracts"}
