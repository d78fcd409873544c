"""Kafka message value -> one staging row as COPY text, or a ``DecodeError`` naming what is wrong.

The contract: ``Decoder.decode(value)`` returns ``(spec, text)`` where
``text`` is the row's COPY text-format fields joined by tabs: the envelope's
``ts`` first, then the spec's columns (``\\N`` for NULL). It never touches the
database and never blocks; it raises ``DecodeError`` for every invalid message
of spec section 5 that can be seen without the database.

Checks are split on purpose: Python checks structure and JSON types (cheap, per
event); PostgreSQL checks formats, lengths and ranges when it casts the staging
text (exact, per batch, with a SQLSTATE); the sink turns those refusals into
dead letters row by row.

Speed: this is the hot path (it was three quarters of the consumer thread's
time in the profile, see README Performance). Each event type gets a
straight-line function generated from ``schema.TABLES``, and COPY escaping is
skipped when the raw message has no backslash: JSON must escape tab, newline,
CR and backslash inside strings, so without one no field can hold them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, NoReturn

import orjson

from pme_exporter.errors import DecodeError
from pme_exporter.schema import BY_EVENT_TYPE, Kind, TableSpec

NULL = "\\N"
_JSON_TYPE = {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer", float: "number"}
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
_EXPECTED = {
    Kind.INTEGER: "an integer or a string of digits",
    Kind.DECIMAL: "a decimal string or a number",
    Kind.BOOLEAN: "true or false",
}

RowCodec = Callable[[dict[str, Any], str, bool, bytes], str]


def has_zone(ts: str) -> bool:
    """RFC 3339 demands an offset or Z; without one PostgreSQL would guess the zone."""
    return len(ts) > 10 and (ts[-1] in "Zz" or (ts[-6] in "+-" and ts[-3] == ":"))


def escape(text: str) -> str:
    return text.translate(_COPY_ESCAPES)


def wrong_type(event_type: str, name: str, kind: Kind, v: Any) -> NoReturn:
    expected = _EXPECTED.get(kind, "a string")
    raise DecodeError("wrong_type", f"{event_type}.{name}: expected {expected}, got JSON {_json_type(v)}")


def bad_timestamp(event_type: str, name: str, v: Any) -> NoReturn:
    if type(v) is not str:
        wrong_type(event_type, name, Kind.TIMESTAMPTZ, v)
    raise DecodeError("invalid_value", f"{event_type}.{name}: {v!r} is not an RFC 3339 timestamp with a zone")


def exact_number_text(raw: bytes, name: str) -> str:
    """The number as written in the message, so no digit goes through binary floating point."""
    return str(json.loads(raw, parse_float=str)["data"][name])


def _column_code(event_type: str, i: int, name: str, kind: Kind, null: str) -> list[str]:
    v = f"v{i}"
    where = f"{event_type!r}, {name!r}"
    esc = f"{v} = esc({v}) if escaping else {v}"
    lines = [f"    {v} = get({name!r})", f"    if {v} is None:", f"        {v} = {null}"]
    if kind is Kind.BOOLEAN:
        lines += [
            f"    elif {v} is True:",
            f"        {v} = 't'",
            f"    elif {v} is False:",
            f"        {v} = 'f'",
            "    else:",
            f"        wrong_type({where}, BOOLEAN, {v})",
        ]
    elif kind is Kind.TIMESTAMPTZ:
        lines += [
            f"    elif type({v}) is str and has_zone({v}):",
            f"        {esc}",
            "    else:",
            f"        bad_timestamp({where}, {v})",
        ]
    elif kind in (Kind.INTEGER, Kind.DECIMAL):
        lines += [
            f"    elif type({v}) is str:",
            f"        {esc}",
            f"    elif type({v}) is int:",
            f"        {v} = str({v})",
        ]
        if kind is Kind.DECIMAL:
            lines += [f"    elif type({v}) is float:", f"        {v} = exact_number_text(raw, {name!r})"]
        lines += ["    else:", f"        wrong_type({where}, {kind.name}, {v})"]
    else:  # TEXT, DATE, TIME: strings; PostgreSQL judges their content
        lines += [
            f"    elif type({v}) is str:",
            f"        {esc}",
            "    else:",
            f"        wrong_type({where}, TEXT, {v})",
        ]
    return lines


def compile_row_codec(spec: TableSpec) -> RowCodec:
    """A straight-line function data -> COPY text for one event type."""
    body = [f"def row_{spec.event_type}(data, ts, escaping, raw):", "    get = data.get"]
    for i, c in enumerate(spec.columns):
        body += _column_code(spec.event_type, i, c.name, c.kind, "ts" if c.defaults_to_event_time else "NULL")
    fields = ", ".join(["ts", *(f"v{i}" for i in range(len(spec.columns)))])
    body.append(f"    return '\\t'.join(({fields},))")
    namespace: dict[str, Any] = {
        "NULL": NULL,
        "esc": escape,
        "has_zone": has_zone,
        "wrong_type": wrong_type,
        "bad_timestamp": bad_timestamp,
        "exact_number_text": exact_number_text,
        **{kind.name: kind for kind in Kind},
    }
    exec("\n".join(body), namespace)  # noqa: S102 - source built above from schema.TABLES only
    codec: RowCodec = namespace[f"row_{spec.event_type}"]
    return codec


class Decoder:
    """Table-driven decoder over ``schema.TABLES``; stateless and thread-safe."""

    def __init__(self) -> None:
        self._plans: dict[str, tuple[TableSpec, RowCodec]] = {
            event_type: (spec, compile_row_codec(spec)) for event_type, spec in BY_EVENT_TYPE.items()
        }

    def decode(self, value: bytes) -> tuple[TableSpec, str]:
        try:
            envelope = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            raise DecodeError("invalid_json", f"value is not valid UTF-8 JSON: {exc}") from None
        if type(envelope) is not dict:
            raise DecodeError("not_an_object", f"value is a JSON {_json_type(envelope)}, not an object")
        event_type = envelope.get("type")
        plan = self._plans.get(event_type) if type(event_type) is str else None
        if plan is None:
            raise DecodeError("unknown_type", f"unknown event type {event_type!r}")
        spec, codec = plan
        ts = envelope.get("ts")
        if type(ts) is not str or not has_zone(ts):
            raise DecodeError(
                "invalid_ts", f"{spec.event_type}: ts {ts!r} is not an RFC 3339 timestamp with a zone"
            )
        data = envelope.get("data")
        if type(data) is not dict:
            raise DecodeError("missing_data", f"{spec.event_type}: data is missing or not an object")
        if spec.key is not None and data.get(spec.key) is None:
            raise DecodeError("missing_key", f"{spec.event_type}: key field {spec.key!r} is missing or null")
        escaping = b"\\" in value
        text = codec(data, escape(ts) if escaping else ts, escaping, value)
        # PostgreSQL text cannot hold NUL, and one would fail the whole COPY; JSON spells it \u0000.
        if escaping and "\x00" in text:
            raise DecodeError("invalid_value", f"{spec.event_type}: a string contains the NUL character")
        return spec, text


def copy_fields(text: str) -> list[str | None]:
    """COPY text back to field values (for tests and the benchmark's checks)."""
    unescape = {"\\\\": "\\", "\\t": "\t", "\\n": "\n", "\\r": "\r"}
    fields: list[str | None] = []
    for raw in text.split("\t"):
        if raw == NULL:
            fields.append(None)
            continue
        out, i = [], 0
        while i < len(raw):
            pair = raw[i : i + 2]
            if pair in unescape:
                out.append(unescape[pair])
                i += 2
            else:
                out.append(raw[i])
                i += 1
        fields.append("".join(out))
    return fields


def _json_type(v: Any) -> str:
    return _JSON_TYPE.get(type(v), type(v).__name__)
