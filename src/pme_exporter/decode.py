"""Kafka message value -> one staging row as COPY text, or a ``DecodeError`` naming what is wrong.

The contract: ``Decoder.decode(value)`` takes any bytes and returns ``(spec,
text)`` where ``text`` is the row's COPY text-format fields joined by tabs: the
envelope's ``ts`` first, then the spec's columns (``\\N`` for NULL). It never
touches the database and never blocks; for every invalid message it raises
``DecodeError``, and nothing else for any input: size and nesting are bounded
before any recursive work, and error texts never ``repr`` a container.

What Python checks, strictly, per event: structure, JSON types, and the shape
of every value (README "Value encodings"): timestamps and dates by an RFC 3339
/ ISO 8601 grammar with years 0001-9999, times as ``HH:MM:SS[.ffffff]``,
integers as ASCII digits, decimals as finite decimal numbers. So none of
PostgreSQL's own words (``infinity``, ``today``, ``allballs``, ``NaN``, `` 42 ``)
ever reaches it as a value. What PostgreSQL checks, per batch and with a
SQLSTATE: lengths, precisions and ranges against the column types, and calendar
validity (``2025-02-30``); the sink turns those refusals into dead letters.

Speed: this is the hot path (see README Performance). Each event type gets a
straight-line function generated from ``schema.TABLES``, and COPY escaping is
skipped when the raw message has no backslash: JSON must escape tab, newline,
CR and backslash inside strings, so without one no field can hold them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any, NoReturn

import orjson

from pme_exporter.errors import DecodeError
from pme_exporter.schema import BY_EVENT_TYPE, Kind, TableSpec

NULL = "\\N"
# An envelope nests 2 deep; anything past this is refused before it is parsed.
MAX_DEPTH = 32
DEFAULT_MAX_MESSAGE_BYTES = 1_048_576

_JSON_TYPE = {
    dict: "object",
    list: "array",
    str: "string",
    bool: "boolean",
    int: "integer",
    float: "number",
    type(None): "null",
}
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
_EXPECTED = {
    Kind.INTEGER: "an integer or a string of digits",
    Kind.DECIMAL: "a decimal string or a number",
    Kind.BOOLEAN: "true or false",
    Kind.TIMESTAMPTZ: "an RFC 3339 timestamp with a zone (YYYY-MM-DDTHH:MM:SS[.f]Z or +HH:MM)",
    Kind.DATE: "a date YYYY-MM-DD",
    Kind.TIME: "a time HH:MM:SS[.ffffff]",
}

_YEAR = r"(?!0000)[0-9]{4}"
_DATE = rf"{_YEAR}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])"
_HMS = r"(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]"
TIMESTAMP_TEXT = re.compile(
    rf"{_DATE}[Tt ]{_HMS}(?:\.[0-9]{{1,9}})?(?:[Zz]|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])", re.ASCII
)
DATE_TEXT = re.compile(_DATE, re.ASCII)
TIME_TEXT = re.compile(rf"{_HMS}(?:\.[0-9]{{1,6}})?", re.ASCII)
INTEGER_TEXT = re.compile(r"-?[0-9]{1,20}", re.ASCII)
DECIMAL_TEXT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]{1,4})?", re.ASCII)
_BRACKETS = re.compile(rb"[\[\]{}]")
_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)

RowCodec = Callable[[dict[str, Any], str, bool, bytes], str]

# Values repeat (quantities, dates, session times), so each kind remembers the
# strings it has already passed: a set lookup instead of a regex per field took
# decoding of a trading day from ~190k to ~230k events/s. Bounded, so memory is too.
_MEMO_LIMIT = 65_536


def _memoized(pattern: re.Pattern[str]) -> tuple[set[str], Callable[[str], bool]]:
    passed: set[str] = set()

    def check(v: str) -> bool:
        if pattern.fullmatch(v) is None:
            return False
        if len(passed) >= _MEMO_LIMIT:
            passed.clear()
        passed.add(v)
        return True

    return passed, check


def is_timestamp(ts: str) -> bool:
    return TIMESTAMP_TEXT.fullmatch(ts) is not None


def escape(text: str) -> str:
    return text.translate(_COPY_ESCAPES)


def nesting_depth(raw: bytes) -> int:
    """How deep arrays and objects nest, without parsing (brackets inside strings do not count)."""
    depth = deepest = 0
    for bracket in _BRACKETS.findall(_STRINGS.sub(b"", raw)):
        if bracket in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def show(v: Any) -> str:
    """A value for an error text: short, and never a recursive repr of a container."""
    if type(v) is str:
        return repr(v) if len(v) <= 40 else f"{v[:40]!r}... ({len(v)} characters)"
    if type(v) in (bool, int) or v is None:
        return "null" if v is None else str(v).lower() if type(v) is bool else str(v)
    return f"a JSON {_json_type(v)}"


def wrong_type(event_type: str, name: str, kind: Kind, v: Any) -> NoReturn:
    expected = _EXPECTED.get(kind, "a string")
    if kind is Kind.INTEGER and type(v) is float:
        raise DecodeError(
            "invalid_value", f"{event_type}.{name}: a number that is not a whole 64-bit integer"
        )
    raise DecodeError("wrong_type", f"{event_type}.{name}: expected {expected}, got JSON {_json_type(v)}")


def bad_value(event_type: str, name: str, kind: Kind, v: Any) -> NoReturn:
    if type(v) is not str:
        wrong_type(event_type, name, kind, v)
    raise DecodeError("invalid_value", f"{event_type}.{name}: {show(v)} is not {_EXPECTED[kind]}")


def exact_number_text(raw: bytes, name: str) -> str:
    """The number as written in the message, so no digit goes through binary floating point.

    ``json`` recurses; the message's depth was bounded before it got here.
    """
    return str(json.loads(raw, parse_float=str)["data"][name])


def _column_code(event_type: str, i: int, name: str, kind: Kind, null: str) -> list[str]:
    v = f"v{i}"
    where = f"{event_type!r}, {name!r}"
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
    elif kind in (Kind.TIMESTAMPTZ, Kind.DATE, Kind.TIME):
        # Validated text holds no backslash, tab or newline: nothing to escape.
        lines += [
            f"    elif type({v}) is str and ({v} in {kind.name}_PASSED or {kind.name}_CHECK({v})):",
            "        pass",
            "    else:",
            f"        bad_value({where}, {kind.name}, {v})",
        ]
    elif kind in (Kind.INTEGER, Kind.DECIMAL):
        lines += [
            f"    elif type({v}) is str and ({v} in {kind.name}_PASSED or {kind.name}_CHECK({v})):",
            "        pass",
            f"    elif type({v}) is int:",
            f"        {v} = str({v})",
        ]
        if kind is Kind.DECIMAL:
            lines += [f"    elif type({v}) is float:", f"        {v} = exact_number_text(raw, {name!r})"]
        lines += ["    else:", f"        bad_value({where}, {kind.name}, {v})"]
    else:  # TEXT: any string; PostgreSQL checks its length
        lines += [
            f"    elif type({v}) is str:",
            f"        {v} = esc({v}) if escaping else {v}",
            "    else:",
            f"        wrong_type({where}, TEXT, {v})",
        ]
    return lines


_MEMOS = {
    Kind.TIMESTAMPTZ: _memoized(TIMESTAMP_TEXT),
    Kind.DATE: _memoized(DATE_TEXT),
    Kind.TIME: _memoized(TIME_TEXT),
    Kind.INTEGER: _memoized(INTEGER_TEXT),
    Kind.DECIMAL: _memoized(DECIMAL_TEXT),
}


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
        "wrong_type": wrong_type,
        "bad_value": bad_value,
        "exact_number_text": exact_number_text,
        **{f"{kind.name}_PASSED": memo[0] for kind, memo in _MEMOS.items()},
        **{f"{kind.name}_CHECK": memo[1] for kind, memo in _MEMOS.items()},
        **{kind.name: kind for kind in Kind},
    }
    exec("\n".join(body), namespace)  # noqa: S102 - source built above from schema.TABLES only
    codec: RowCodec = namespace[f"row_{spec.event_type}"]
    return codec


class Decoder:
    """Table-driven decoder over ``schema.TABLES``; stateless and thread-safe."""

    def __init__(self, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        self._max_bytes = max_message_bytes
        self._plans: dict[str, tuple[TableSpec, RowCodec]] = {
            event_type: (spec, compile_row_codec(spec)) for event_type, spec in BY_EVENT_TYPE.items()
        }

    def decode(self, value: bytes) -> tuple[TableSpec, str]:
        if len(value) > self._max_bytes:
            raise DecodeError(
                "too_large", f"value is {len(value)} bytes, more than the {self._max_bytes} allowed"
            )
        # Counting brackets is cheap; only a message with many is scanned for its real depth.
        if value.count(b"[") + value.count(b"{") > MAX_DEPTH and nesting_depth(value) > MAX_DEPTH:
            raise DecodeError("too_deep", f"value nests arrays or objects deeper than {MAX_DEPTH} levels")
        try:
            envelope = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            raise DecodeError("invalid_json", _json_error(value, exc)) from None
        if type(envelope) is not dict:
            raise DecodeError("not_an_object", f"value is a JSON {_json_type(envelope)}, not an object")
        event_type = envelope.get("type")
        plan = self._plans.get(event_type) if type(event_type) is str else None
        if plan is None:
            raise DecodeError("unknown_type", f"unknown event type {show(event_type)}")
        spec, codec = plan
        ts = envelope.get("ts")
        if type(ts) is not str or TIMESTAMP_TEXT.fullmatch(ts) is None:
            raise DecodeError(
                "invalid_ts", f"{spec.event_type}: ts {show(ts)} is not {_EXPECTED[Kind.TIMESTAMPTZ]}"
            )
        data = envelope.get("data")
        if type(data) is not dict:
            raise DecodeError("missing_data", f"{spec.event_type}: data is missing or not an object")
        if spec.key is not None and data.get(spec.key) is None:
            raise DecodeError("missing_key", f"{spec.event_type}: key field {spec.key!r} is missing or null")
        escaping = b"\\" in value
        text = codec(data, ts, escaping, value)
        # PostgreSQL text cannot hold NUL, and one would fail the whole COPY; JSON spells it \u0000.
        if escaping and "\x00" in text:
            raise DecodeError("invalid_value", f"{spec.event_type}: a string contains the NUL character")
        return spec, text


def _json_error(value: bytes, exc: orjson.JSONDecodeError) -> str:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError as bad:
        return f"value is not valid UTF-8 (byte 0x{value[bad.start]:02x} at position {bad.start})"
    return f"value is not valid JSON: {exc}"


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
