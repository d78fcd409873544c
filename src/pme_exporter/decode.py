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
ever reaches it as a value. Then whether each value fits its column's declared
type, as PostgreSQL would judge it: lengths, numeric precision, integer ranges,
calendar validity (``2025-02-30``). The types are the live ones when the caller
read them (``schema.live_column_types``), else the design's. A misfit raises
``ValueRefused`` with PostgreSQL's SQLSTATE: the version becomes a dead letter
before staging, so the next-newest version of its key wins, in any batch cut.
What only the database can judge (a unique value held by another key) it still
judges, and the sink isolates those rows.

Speed: this is the hot path (see README Performance). A compiled first pass
(msgspec, into one typed struct per event type) parses a valid event without
building dicts; whatever it does not take goes through the checked pass, which
alone decides what is refused and why (``Decoder``). Each event type gets a
straight-line row codec generated from ``schema.TABLES``, shared by both passes,
and COPY escaping is skipped when the raw message has no backslash: JSON must
escape tab, newline, CR and backslash inside strings, so without one no field
can hold them.
"""

from __future__ import annotations

import json
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Context, Decimal, InvalidOperation
from typing import Any, NoReturn, Union

import msgspec
import orjson

from pme_exporter.errors import DecodeError, ValueRefused
from pme_exporter.schema import BY_EVENT_TYPE, Kind, TableSpec, declared_limits

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

# (the event's data fields in column order, ts, whether the raw message has a backslash, the raw
# message) -> the row's COPY text.
RowCodec = Callable[[Sequence[Any], str, bool, bytes], str]

# Values repeat (quantities, dates, session times), so each kind remembers the
# strings it has already passed: a set lookup instead of a regex per field took
# decoding of a trading day from ~190k to ~230k events/s. Bounded, so memory is too.
_MEMO_LIMIT = 65_536


def _remember(memo: set[str], value: str) -> None:
    """Adds a value that passed to its memo, emptied first once it holds ``_MEMO_LIMIT``."""
    if len(memo) >= _MEMO_LIMIT:
        memo.clear()
    memo.add(value)


class Misfit(Exception):
    """A value of the right shape that its column's type cannot hold (raised inside a row codec;
    the decoder names the table)."""

    def __init__(self, sqlstate: str, message: str) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message


def misfit(sqlstate: str, message: str) -> NoReturn:
    raise Misfit(sqlstate, message)


# Days already found in the calendar: timestamps rarely repeat, their days do, and building a
# date costs more than matching the timestamp's grammar.
_REAL_DAYS: set[str] = set()


def _real_date(v: str) -> bool:
    """Whether the YYYY-MM-DD that ``v`` starts with (its grammar already checked) is a day."""
    day = v[:10]
    if day in _REAL_DAYS:
        return True
    try:
        date(int(v[0:4]), int(v[5:7]), int(v[8:10]))
    except ValueError:
        return False
    _remember(_REAL_DAYS, day)
    return True


def _memoized(
    pattern: re.Pattern[str], real: Callable[[str], bool] | None = None
) -> tuple[set[str], Callable[[str], bool]]:
    passed: set[str] = set()

    def check(v: str) -> bool:
        if pattern.fullmatch(v) is None:
            return False
        if real is not None and not real(v):
            misfit("22008", f'date/time field value out of range: "{v}"')
        _remember(passed, v)
        return True

    return passed, check


def is_timestamp(ts: str) -> bool:
    """An RFC 3339 timestamp of the grammar above (the calendar is not checked here)."""
    return TIMESTAMP_TEXT.fullmatch(ts) is not None


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def instant_of(ts: str) -> int:
    """Microseconds since the epoch of a timestamp of the grammar above, its fraction rounded
    to the microsecond the way PostgreSQL rounds its input (``rint``: half to even)."""
    text = ts.upper()  # RFC 3339 allows t and z; fromisoformat does not
    dot = text.find(".")
    if dot < 0:
        return (datetime.fromisoformat(text) - _EPOCH) // _MICROSECOND
    end = dot + 1
    while end < len(text) and text[end].isdigit():
        end += 1
    whole = datetime.fromisoformat(text[:dot] + text[end:])
    return (whole - _EPOCH) // _MICROSECOND + round(float("0." + text[dot + 1 : end]) * 1_000_000)


def compare_instants(a: str, b: str) -> int:
    """The sign of instant_of(a) - instant_of(b), for two timestamps of the grammar above.

    Written the same way (length, separator, zone), the text orders as the instant
    does, so most comparisons of a batch's versions are string comparisons."""
    if a == b:
        return 0
    if len(a) == len(b) and a[10] == b[10] and a[-1] == b[-1] and (a[-1] in "Zz" or a[-6:] == b[-6:]):
        return -1 if a < b else 1
    x, y = instant_of(a), instant_of(b)
    return (x > y) - (x < y)


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


_INT_NAMES = {16: "smallint", 32: "integer", 64: "bigint"}


def _numeric_fit(precision: int, scale: int) -> Callable[[str], bool]:
    """Whether a decimal text fits NUMERIC(precision, scale) once rounded as PostgreSQL rounds
    (half away from zero); memoized, as amounts repeat."""
    step = Decimal(1).scaleb(-scale)
    bound = Decimal(10) ** (precision - scale)
    context = Context(prec=2 * precision + 10)
    fitting: set[str] = set()

    def fits(v: str) -> bool:
        if v in fitting:
            return True
        try:
            ok = abs(Decimal(v).quantize(step, rounding=ROUND_HALF_UP, context=context)) < bound
        except InvalidOperation:  # too many digits to even round: it does not fit
            return False
        if ok:
            _remember(fitting, v)
        return ok

    return fits


def _column_code(
    event_type: str, i: int, name: str, kind: Kind, null: str, sql_type: str, namespace: dict[str, Any]
) -> list[str]:
    v = f"v{i}"
    where = f"{event_type!r}, {name!r}"
    max_chars, numeric, bits = declared_limits(sql_type)
    lines = [f"    if {v} is None:", f"        {v} = {null}"]
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
    elif kind is Kind.INTEGER:
        if bits is None:
            bits = 64  # the staging cast is to bigint
        low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        out_of_range = (
            f"misfit('22003', 'value \"' + str({v}) + '\" is out of range for type {_INT_NAMES[bits]}')"
        )
        lines += [
            f"    elif type({v}) is int:",
            f"        if not {low} <= {v} <= {high}:",
            f"            {out_of_range}",
            f"        {v} = str({v})",
            f"    elif type({v}) is str and ({v} in INTEGER_PASSED or INTEGER_CHECK({v})):",
            f"        if not {low} <= int({v}) <= {high}:",
            f"            {out_of_range}",
            "    else:",
            f"        bad_value({where}, INTEGER, {v})",
        ]
    elif kind is Kind.DECIMAL:
        lines += [
            f"    elif type({v}) is str and ({v} in DECIMAL_PASSED or DECIMAL_CHECK({v})):",
            "        pass",
            f"    elif type({v}) is int:",
            f"        {v} = str({v})",
            f"    elif type({v}) is float:",
            f"        {v} = exact_number_text(raw, {name!r})",
            "    else:",
            f"        bad_value({where}, DECIMAL, {v})",
        ]
        if numeric is not None:
            namespace[f"fits_{i}"] = _numeric_fit(*numeric)
            lines += [
                f"    if {v} is not {null} and not fits_{i}({v}):",
                "        misfit('22003', 'numeric field overflow')",
            ]
    else:  # TEXT: any string, as long as its column's type allows
        lines += [f"    elif type({v}) is str:"]
        if max_chars is not None:
            # PostgreSQL cuts trailing spaces past the length silently; anything else is refused.
            # The value is cut here too, so the staged text is what the column will hold: two
            # spellings of one stored key are one key in the batch as in the table.
            lines += [
                f"        if len({v}) > {max_chars}:",
                f"            if {v}[{max_chars}:].strip(' '):",
                f"                misfit('22001', 'value too long for type character varying({max_chars})')",
                f"            {v} = {v}[:{max_chars}]",
            ]
        lines += [
            f"        {v} = esc({v}) if escaping else {v}",
            "    else:",
            f"        wrong_type({where}, TEXT, {v})",
        ]
    return lines


_MEMOS: dict[Kind, tuple[set[str], Callable[[str], bool]]] = {
    Kind.TIMESTAMPTZ: _memoized(TIMESTAMP_TEXT, _real_date),
    Kind.DATE: _memoized(DATE_TEXT, _real_date),
    Kind.TIME: _memoized(TIME_TEXT),
    Kind.INTEGER: _memoized(INTEGER_TEXT),
    Kind.DECIMAL: _memoized(DECIMAL_TEXT),
}


_TS_PASSED, _TS_CHECK = _MEMOS[Kind.TIMESTAMPTZ]


def compile_row_codec(spec: TableSpec, column_types: Mapping[str, str] | None = None) -> RowCodec:
    """A straight-line function (data fields in column order) -> COPY text for one event type;
    ``column_types`` (live declared types by column) default to the design's."""
    types = column_types or {}
    namespace: dict[str, Any] = {}
    values = ", ".join(f"v{i}" for i in range(len(spec.columns)))
    body = [f"def row_{spec.event_type}(values, ts, escaping, raw):", f"    {values}, = values"]
    for i, c in enumerate(spec.columns):
        body += _column_code(
            spec.event_type,
            i,
            c.name,
            c.kind,
            "ts" if c.defaults_to_event_time else "NULL",
            types.get(c.name, c.sql_type),
            namespace,
        )
    fields = ", ".join(["ts", *(f"v{i}" for i in range(len(spec.columns)))])
    body.append(f"    return '\\t'.join(({fields},))")
    namespace |= {
        "NULL": NULL,
        "esc": escape,
        "wrong_type": wrong_type,
        "bad_value": bad_value,
        "misfit": misfit,
        "exact_number_text": exact_number_text,
        **{f"{kind.name}_PASSED": memo[0] for kind, memo in _MEMOS.items()},
        **{f"{kind.name}_CHECK": memo[1] for kind, memo in _MEMOS.items()},
        **{kind.name: kind for kind in Kind},
    }
    exec("\n".join(body), namespace)  # noqa: S102 - source built above from schema.TABLES only
    codec: RowCodec = namespace[f"row_{spec.event_type}"]
    return codec


# (the table, its row's COPY text, the event's ts, its key as the table will hold it
# (``Decoder.stored_key``) or None for a table without one)
Decoded = tuple[TableSpec, str, str, Any]

# The JSON types each kind may arrive as, for the compiled first pass (``Decoder``): whatever
# else arrives (a float decimal, a bool integer) is left to the checked pass, which names it.
_FIRST_PASS_TYPES: dict[Kind, Any] = {
    Kind.INTEGER: int | str | None,
    Kind.DECIMAL: str | int | None,
    Kind.BOOLEAN: bool | None,
}


def _first_pass_envelope(spec: TableSpec) -> type[msgspec.Struct]:
    """The envelope of one event type as a msgspec struct: ``type`` its tag, ``ts`` and
    ``data`` required, each data field of its JSON types or absent, and no other field.

    No other field, because msgspec skips an unknown field's value without judging all of
    it as orjson does (a number past a double's range, invalid UTF-8): an event with a
    field its type does not list takes the checked pass, which ignores the field."""
    data = msgspec.defstruct(
        f"{spec.event_type}Data",
        [(c.name, _FIRST_PASS_TYPES.get(c.kind, str | None), None) for c in spec.columns],
        gc=False,
        forbid_unknown_fields=True,
    )
    return msgspec.defstruct(
        spec.event_type,
        [("ts", str), ("data", data)],
        tag_field="type",
        tag=spec.event_type,
        gc=False,
        forbid_unknown_fields=True,
    )


def _unchanged(key: Any) -> Any:
    return key


def _stored_key_of(spec: TableSpec, live_type: str) -> Callable[[Any], Any]:
    """``Decoder.stored_key`` for one table: ``int`` for an integer key; for a VARCHAR(n) key
    (``live_type``, else the design's), the first n characters: past them, a valid value
    holds only the trailing spaces PostgreSQL cuts."""
    if spec.key_kind is Kind.INTEGER:
        return int
    limit = declared_limits(live_type or next(c.sql_type for c in spec.columns if c.name == spec.key))[0]
    if limit is None:
        return _unchanged
    return operator.itemgetter(slice(None, limit))


class Decoder:
    """Table-driven decoder over ``schema.TABLES``; stateless and thread-safe.

    Two passes share each event type's row codec, so every value rule has one
    definition. The first, msgspec's compiled decoding into typed structs, only
    parses and sorts values by JSON type, and builds no dicts. Any message it does
    not take, and any message whose row codec raises on it, goes through the checked
    pass, which decides alone: orjson, then every structural check, each with its
    own error. So the first pass can only speed up a message the checked pass
    accepts, and ``tests/unit/test_decode.py`` shows both give the same row for any
    input.
    """

    def __init__(
        self,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        column_types: Mapping[str, Mapping[str, str]] | None = None,
    ) -> None:
        self._max_bytes = max_message_bytes
        types = column_types or {}
        self._plans: dict[str, tuple[TableSpec, RowCodec, tuple[str, ...]]] = {
            event_type: (spec, compile_row_codec(spec, types.get(spec.table)), spec.column_names)
            for event_type, spec in BY_EVENT_TYPE.items()
        }
        envelopes = {spec.event_type: _first_pass_envelope(spec) for spec in BY_EVENT_TYPE.values()}
        self._first_pass = msgspec.json.Decoder(Union[tuple(envelopes.values())])  # noqa: UP007
        # How a valid key field becomes the key its table holds, by table (``stored_key``).
        self._stored: dict[str, Callable[[Any], Any]] = {
            spec.table: _stored_key_of(spec, types.get(spec.table, {}).get(spec.key, ""))
            for spec in BY_EVENT_TYPE.values()
            if spec.key is not None
        }
        self._first_pass_plans: dict[type, tuple[TableSpec, RowCodec, int | None, Callable[[Any], Any]]] = {
            envelope: (
                spec,
                self._plans[event_type][1],
                spec.column_names.index(spec.key) if spec.key is not None else None,
                self._stored.get(spec.table, _unchanged),
            )
            for event_type, envelope in envelopes.items()
            for spec in (BY_EVENT_TYPE[event_type],)
        }

    def stored_key(self, spec: TableSpec, key: Any) -> Any:
        """An event's valid key field as its table will hold it, so that two spellings of one
        stored key are one key: ``"042"`` and ``42`` for an integer key; for a VARCHAR(n) key,
        the value without the trailing spaces past n that PostgreSQL cuts."""
        return self._stored[spec.table](key)

    def decode(self, value: bytes) -> tuple[TableSpec, str]:
        spec, text, _ts, _key = self.decode_event(value)
        return spec, text

    def decode_event(self, value: bytes) -> Decoded:
        """``decode``, with the event's ts and stored key too (``Decoded``)."""
        if len(value) > self._max_bytes:
            raise DecodeError(
                "too_large", f"value is {len(value)} bytes, more than the {self._max_bytes} allowed"
            )
        # Counting brackets is cheap; only a message with many is scanned for its real depth.
        if value.count(b"[") + value.count(b"{") > MAX_DEPTH and nesting_depth(value) > MAX_DEPTH:
            raise DecodeError("too_deep", f"value nests arrays or objects deeper than {MAX_DEPTH} levels")
        try:
            envelope = self._first_pass.decode(value)
            spec, codec, key_at, stored = self._first_pass_plans[type(envelope)]
            ts = envelope.ts
            values = msgspec.structs.astuple(envelope.data)
            key = None if key_at is None else values[key_at]
            if (key_at is None or key is not None) and (ts in _TS_PASSED or _TS_CHECK(ts)):
                escaping = b"\\" in value
                text = codec(values, ts, escaping, value)
                if not (escaping and "\x00" in text):
                    return spec, text, ts, None if key is None else stored(key)
        except Exception:  # noqa: S110 - the checked pass below decides, with its own error
            pass
        return self._checked(value)

    def _checked(self, value: bytes) -> Decoded:
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
        spec, codec, names = plan
        ts = envelope.get("ts")
        try:
            if type(ts) is not str or not (ts in _TS_PASSED or _TS_CHECK(ts)):
                raise DecodeError(
                    "invalid_ts", f"{spec.event_type}: ts {show(ts)} is not {_EXPECTED[Kind.TIMESTAMPTZ]}"
                )
            data = envelope.get("data")
            if type(data) is not dict:
                raise DecodeError("missing_data", f"{spec.event_type}: data is missing or not an object")
            key = None if spec.key is None else data.get(spec.key)
            if spec.key is not None and key is None:
                raise DecodeError(
                    "missing_key", f"{spec.event_type}: key field {spec.key!r} is missing or null"
                )
            escaping = b"\\" in value
            text = codec([data.get(name) for name in names], ts, escaping, value)
        except Misfit as exc:
            raise ValueRefused(spec.table, exc.sqlstate, exc.message) from None
        # PostgreSQL text cannot hold NUL, and one would fail the whole COPY; JSON spells it \u0000.
        if escaping and "\x00" in text:
            raise DecodeError("invalid_value", f"{spec.event_type}: a string contains the NUL character")
        return spec, text, ts, None if key is None else self.stored_key(spec, key)


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
