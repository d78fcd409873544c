"""Kafka message value -> one staging row, or a ``DecodeError`` naming what is wrong.

The contract: ``Decoder.decode(value)`` returns ``(spec, fields)`` where
``fields[0]`` is the envelope's ``ts`` and ``fields[1:]`` are the spec's columns
as COPY text (``str``) or ``None``. It never touches the database and never
blocks; it raises ``DecodeError`` for every invalid message of spec section 5
that can be seen without the database.

Checks are split on purpose: Python checks structure and JSON types (cheap, per
event); PostgreSQL checks formats, lengths and ranges when it casts the staging
text (exact, per batch, with a SQLSTATE); the sink turns those refusals into
dead letters row by row.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

from pme_exporter.errors import DecodeError
from pme_exporter.schema import BY_EVENT_TYPE, Kind, TableSpec

Fields = list[str | None]

_NUL_ESCAPE = b"\\u0000"
_JSON_TYPE = {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer", float: "number"}


def _has_zone(ts: str) -> bool:
    """RFC 3339 demands an offset or Z; without one PostgreSQL would guess the zone."""
    return len(ts) > 10 and (ts[-1] in "Zz" or (ts[-6] in "+-" and ts[-3] == ":"))


class Decoder:
    """Table-driven decoder over ``schema.TABLES``; stateless and thread-safe."""

    def __init__(self) -> None:
        self._plans: dict[str, tuple[TableSpec, tuple[tuple[str, Kind, bool], ...]]] = {
            event_type: (spec, tuple((c.name, c.kind, c.defaults_to_event_time) for c in spec.columns))
            for event_type, spec in BY_EVENT_TYPE.items()
        }

    def decode(self, value: bytes) -> tuple[TableSpec, Fields]:
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
        spec, columns = plan
        event_type = spec.event_type
        ts = envelope.get("ts")
        if type(ts) is not str or not _has_zone(ts):
            raise DecodeError(
                "invalid_ts", f"{event_type}: ts {ts!r} is not an RFC 3339 timestamp with a zone"
            )
        data = envelope.get("data")
        if type(data) is not dict:
            raise DecodeError("missing_data", f"{event_type}: data is missing or not an object")
        if spec.key is not None and data.get(spec.key) is None:
            raise DecodeError("missing_key", f"{event_type}: key field {spec.key!r} is missing or null")

        fields: Fields = [ts]
        append = fields.append
        for name, kind, defaults_to_ts in columns:
            v = data.get(name)
            if v is None:
                append(ts if defaults_to_ts else None)
            elif type(v) is str and kind is not Kind.BOOLEAN:
                if kind is Kind.TIMESTAMPTZ and not _has_zone(v):
                    raise DecodeError(
                        "invalid_value",
                        f"{event_type}.{name}: {v!r} is not an RFC 3339 timestamp with a zone",
                    )
                append(v)
            else:
                append(_convert(event_type, name, kind, v, value))
        if _NUL_ESCAPE in value:
            _reject_nul(str(event_type), fields)
        return spec, fields


def _convert(event_type: str, name: str, kind: Kind, v: Any, raw: bytes) -> str:
    """The rare non-string values: numbers and booleans."""
    t = type(v)
    if kind is Kind.BOOLEAN and t is bool:
        return "t" if v else "f"
    if kind in (Kind.INTEGER, Kind.DECIMAL) and t is int:
        return str(v)
    if kind is Kind.DECIMAL and t is float:
        return _exact_number_text(raw, name)
    expected = {
        Kind.INTEGER: "an integer or a string of digits",
        Kind.DECIMAL: "a decimal string or a number",
        Kind.BOOLEAN: "true or false",
    }.get(kind, "a string")
    raise DecodeError("wrong_type", f"{event_type}.{name}: expected {expected}, got JSON {_json_type(v)}")


def _exact_number_text(raw: bytes, name: str) -> str:
    """The number as written in the message, so no digit goes through binary floating point."""
    data = json.loads(raw, parse_float=str)["data"]
    return str(data[name])


def _reject_nul(event_type: str, fields: Fields) -> None:
    # PostgreSQL text cannot hold NUL, and one NUL would fail the whole COPY.
    for text in fields:
        if text is not None and "\x00" in text:
            raise DecodeError("invalid_value", f"{event_type}: a string contains the NUL character")


def _json_type(v: Any) -> str:
    return _JSON_TYPE.get(type(v), type(v).__name__)
