"""Bad messages, each with the reason it must be refused for: shared by the decode unit test
and the end-to-end corpus test (tests/integration/test_corpus.py)."""

from __future__ import annotations

import orjson

TS = "2025-11-29T09:00:00.200+07:00"


def encode(event_type: str, data: object, ts: object = TS) -> bytes:
    return orjson.dumps({"type": event_type, "ts": ts, "data": data})


# Refused by decoding: (message value, dead-letter reason).
DECODE_CASES: list[tuple[bytes, str]] = [
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
    (encode("Order", {"nid": 1.5}), "invalid_value"),
    (encode("Order", {"nid": True}), "wrong_type"),
    (encode("Trade", {"nid": 1, "matched_at": "2025-11-29 09:00"}), "invalid_value"),
    (encode("Participant", {"code": "P\u0000"}), "invalid_value"),
    # PostgreSQL's own words and lenient forms never pass as values.
    (encode("Order", {"nid": 1}, ts="infinity+00:00"), "invalid_ts"),
    (encode("Order", {"nid": 1}, ts="-infinity"), "invalid_ts"),
    (encode("Order", {"nid": 1}, ts="yesterday+00:00"), "invalid_ts"),
    (encode("Order", {"nid": 1}, ts="now"), "invalid_ts"),
    (encode("Order", {"nid": 1}, ts="2025-11-29T09:00:00 EST+05:00"), "invalid_ts"),
    (encode("Order", {"nid": 1}, ts="0000-11-29T09:00:00Z"), "invalid_ts"),
    (encode("Order", {"nid": 1}, ts="12025-11-29T09:00:00Z"), "invalid_ts"),
    (encode("Order", {"nid": 1}, ts="2025-11-29T24:00:00Z"), "invalid_ts"),
    (encode("Order", {"nid": 1}, ts="2025-11-29T09:00:60Z"), "invalid_ts"),
    (encode("Order", {"nid": 1}, ts="2025-11-29T09:00:00+7:00"), "invalid_ts"),
    (encode("Order", {"nid": 1}, ts="2025-11-29T09:00:00+07:00 "), "invalid_ts"),
    (encode("Order", {"nid": 1}, ts="epoch"), "invalid_ts"),
    (encode("Order", {"nid": 1}, ts="2025-11-29T09:00:00.1234567890Z"), "invalid_ts"),
    (encode("Order", {"nid": 1}, ts="\uff12\uff10\uff12\uff15-11-29T09:00:00Z"), "invalid_ts"),
    (encode("Order", {"nid": 1, "settlement_date": "today"}), "invalid_value"),
    (encode("Order", {"nid": 1, "settlement_date": "2025-12-01 "}), "invalid_value"),
    (encode("Order", {"nid": 1, "settlement_date": "20251201"}), "invalid_value"),
    (encode("Order", {"nid": 1, "settlement_date": "infinity"}), "invalid_value"),
    (encode("Order", {"nid": 1, "settlement_date": "2025-13-01"}), "invalid_value"),
    (encode("Order", {"nid": 1, "quantity": "NaN"}), "invalid_value"),
    (encode("Order", {"nid": 1, "quantity": "Infinity"}), "invalid_value"),
    (encode("Order", {"nid": 1, "quantity": " 1.5"}), "invalid_value"),
    (encode("Order", {"nid": 1, "quantity": "1,5"}), "invalid_value"),
    (encode("Order", {"nid": 1, "quantity": "0x10"}), "invalid_value"),
    (encode("Order", {"nid": 1, "quantity": "١٢"}), "invalid_value"),
    (encode("Order", {"nid": 1, "quantity": ""}), "invalid_value"),
    (encode("Order", {"nid": " 42 "}), "invalid_value"),
    (encode("Order", {"nid": "+42"}), "invalid_value"),
    (encode("Order", {"nid": "4_2"}), "invalid_value"),
    (encode("Order", {"nid": "٤٢"}), "invalid_value"),
    (encode("Order", {"nid": 1, "periode": "1e3"}), "invalid_value"),
    (encode("SessionTime", {"opening_time": "allballs"}), "invalid_value"),
    (encode("SessionTime", {"opening_time": "24:00:00"}), "invalid_value"),
    (encode("SessionTime", {"opening_time": "09:00"}), "invalid_value"),
    (encode("SessionTime", {"opening_time": "09:00:00+07"}), "invalid_value"),
    (encode("SessionTime", {"effective_from": "today"}), "invalid_value"),
    (
        b'{"type":"Order","ts":"2025-11-29T09:00:00Z","data":{"nid":1180591620717411303424}}',
        "invalid_value",
    ),
    (b"null", "not_an_object"),
    (b"\xef\xbb\xbf{}", "invalid_json"),  # a byte-order mark
    (b'"\\ud800"', "invalid_json"),  # a lone surrogate
    (b'{"a":1e400}', "invalid_json"),
    (b"[" * 1010 + b"]" * 1010, "too_deep"),
    (b'{"type":' + b"[" * 1010 + b"]" * 1010 + b', "ts": "x", "data": {}}', "too_deep"),
    (
        b'{"type":"Order","ts":"2025-11-29T09:00:00Z","data":{"nid":1,"quantity":1.5,"x":'
        + b"[" * 1010
        + b"]" * 1010
        + b"}}",
        "too_deep",
    ),
]

# Refused by PostgreSQL against the design's column types: (message value, reason).
DATABASE_CASES: list[tuple[bytes, str]] = [
    (encode("Account", {"code": "B" * 51}), "sqlstate_22001"),
    (encode("Instrument", {"code": "X" * 21}), "sqlstate_22001"),
    (encode("Participant", {"code": "P9", "name": "n" * 201}), "sqlstate_22001"),
    (encode("Order", {"nid": 91, "side": "BORROW"}), "sqlstate_22001"),
    (encode("Order", {"nid": 92, "reff_request_id": "R" * 101}), "sqlstate_22001"),
    (encode("Order", {"nid": 93, "quantity": "12345678901234.00"}), "sqlstate_22003"),
    (encode("Trade", {"nid": 94, "fee_borr_rate": "12345.5"}), "sqlstate_22003"),
    (encode("Order", {"nid": 95, "periode": 3_000_000_000}), "sqlstate_22003"),
    (encode("Order", {"nid": "99999999999999999999"}), "sqlstate_22003"),
    (encode("Order", {"nid": 96, "quantity": "1e400"}), "sqlstate_22003"),
    (encode("Holiday", {"nid": 97, "date": "2025-02-30"}), "sqlstate_22008"),
    (encode("Trade", {"nid": 98, "matched_at": "2025-04-31T09:00:00Z"}), "sqlstate_22008"),
]
