"""Per-table buffers of one batch, filled by the consumer thread.

A ``Batch`` is owned by one thread at a time: the consumer fills it, hands it
to the flusher, and starts a new one. Nothing in it is shared, so no locks.
The bound is the caller's: it checks ``size`` against ``max_buffered_events``
and pauses its partitions when the batch is full and the flusher busy.
"""

from __future__ import annotations

import re
import time
from array import array
from collections import Counter
from collections.abc import Callable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any, Protocol

from pme_exporter.decode import Decoder, compare_instants, escape
from pme_exporter.errors import DecodeError, ValueRefused
from pme_exporter.progress import CarryPolicy
from pme_exporter.schema import BY_TABLE, TABLES, TableSpec


class Message(Protocol):
    """The part of ``confluent_kafka.Message`` the exporter reads."""

    def value(self) -> bytes | None: ...
    def key(self) -> bytes | None: ...
    def partition(self) -> int: ...
    def offset(self) -> int: ...
    def timestamp(self) -> tuple[int, int]: ...


@dataclass(frozen=True)
class InMemoryMessage:
    """A Kafka message held in memory, read the way the consumer reads ``confluent_kafka.Message``."""

    _value: bytes | None
    _partition: int = 0
    _offset: int = 0
    _key: bytes | None = None
    _timestamp_ms: int = 0
    _error: Any = None

    def value(self) -> bytes | None:
        return self._value

    def key(self) -> bytes | None:
        return self._key

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def timestamp(self) -> tuple[int, int]:
        return (1, self._timestamp_ms)

    def error(self) -> Any:
        return self._error


# (partition, offset, key, value) of the message behind a staged row, kept so a
# row the database refuses can become a dead letter with its raw bytes.
Source = tuple[int, int, bytes | None, bytes]


@dataclass(frozen=True)
class DeadLetter:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    stage: str  # 'decode' or 'database'
    reason: str  # short class for metrics: 'unknown_type', 'sqlstate_22001', ...
    error: str
    sqlstate: str | None = None
    table: str | None = None  # the table it was meant for, once decoding got that far

    @property
    def kind(self) -> str:
        """``stage/reason``: how dead letters are counted and grouped (the breaker, ``status``)."""
        return kind_of(self.stage, self.reason)

    @classmethod
    def refused(cls, source: Source, table: str, sqlstate: str | None, message: str) -> DeadLetter:
        """A row PostgreSQL refused, with its SQLSTATE."""
        partition, offset, key, value = source
        return cls(
            partition,
            offset,
            key,
            value,
            "database",
            f"sqlstate_{sqlstate}",
            f"{table}: {message}",
            sqlstate,
            table,
        )


def kind_of(stage: str, reason: str) -> str:
    return f"{stage}/{reason}"


@dataclass(frozen=True, slots=True)
class Orphan:
    """A child row whose parent was not stored when its batch was written.

    Rather than parking it in the database, the sink hands it back and the
    consumer adds it to the next batch; the partition's saved offset stays at
    the orphan until it is written, so a crash reads it again.
    """

    table: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    text: str  # its COPY text, as decoded the first time
    times_carried: int  # flushes it has been carried over, this one included


def dead_letter_for(
    exc: Exception, partition: int, offset: int, key: bytes | None, value: bytes
) -> DeadLetter:
    """The dead letter for a message whose decoding raised ``exc``: its reason when it is a
    DecodeError (a value its column cannot hold is a ``database`` refusal, with PostgreSQL's
    SQLSTATE), else ``internal`` (a decoder bug costs one message, never the partition)."""
    if isinstance(exc, ValueRefused):
        return DeadLetter(
            partition, offset, key, value, "database", exc.reason, exc.detail, exc.sqlstate, exc.table
        )
    if isinstance(exc, DecodeError):
        return DeadLetter(partition, offset, key, value, "decode", exc.reason, exc.detail)
    return DeadLetter(
        partition,
        offset,
        key,
        value,
        "decode",
        "internal",
        f"internal error while decoding: {type(exc).__name__}",
    )


# A staging line's first field, its seq (TableRows.add).
_SEQ_FIELD = re.compile(rb"^[0-9]+\t", re.MULTILINE)

# Where a parent's key sits in its row text (ts first, then the columns), and where each
# child's parent columns sit in its own: (child table) -> [(parent table, field)].
_PARENT_KEY_FIELD: dict[str, int] = {
    ref.table: BY_TABLE[ref.table].column_names.index(ref.key) + 1 for spec in TABLES for ref in spec.parents
}
_CHILD_FIELDS: dict[str, list[tuple[str, int]]] = {
    spec.table: [(ref.table, spec.column_names.index(ref.column) + 1) for ref in spec.parents]
    for spec in TABLES
    if spec.parents
}
PARENT_TABLES: frozenset[str] = frozenset(_PARENT_KEY_FIELD)


def row_field(text: str, index: int) -> str:
    """Field ``index`` of a row's COPY text, without splitting the rest of the row."""
    start = -1
    for _ in range(index):
        start = text.index("\t", start + 1)
    end = text.find("\t", start + 1)
    return text[start + 1 : end if end >= 0 else len(text)]


@dataclass
class TableRows:
    """One table's staging rows as COPY text, ready to send: seq, src_partition, src_offset, ts, columns.

    ``seq`` is the row's index here, so a row the database refuses maps back to
    its message in ``sources``.
    """

    spec: TableSpec
    copy_data: bytearray = field(default_factory=bytearray)
    sources: list[Source] = field(default_factory=list)
    # Where each row's line starts in copy_data, so one row's text can be taken back.
    starts: array[int] = field(default_factory=lambda: array("q"))
    # Collapse (``spec.collapsible``): per key, the seq and ts of its newest version by
    # (ts, partition, offset), and the least ts seen. Every version stays in
    # copy_data, so a batch PostgreSQL refuses can be written uncollapsed.
    winners: dict[Any, int] = field(default_factory=dict)
    winner_ts: dict[Any, str] = field(default_factory=dict)
    least: dict[Any, str] = field(default_factory=dict)

    def add(self, partition: int, offset: int, key: bytes | None, value: bytes, text: str) -> None:
        # Encoded here, in the consumer thread, so the flusher hands PostgreSQL
        # bytes without holding the GIL for a join and an encode of the batch.
        self.starts.append(len(self.copy_data))
        self.copy_data += f"{len(self.sources)}\t{partition}\t{offset}\t{text}\n".encode()
        self.sources.append((partition, offset, key, value))

    def add_version(
        self, partition: int, offset: int, key: bytes | None, value: bytes, text: str, entity: Any, ts: str
    ) -> None:
        """``add`` for a collapsible table: also keeps the key's newest version and least ts."""
        seq = len(self.sources)
        self.add(partition, offset, key, value, text)
        current = self.winners.get(entity)
        if current is None:
            self.winners[entity] = seq
            self.winner_ts[entity] = self.least[entity] = ts
            return
        order = compare_instants(ts, self.winner_ts[entity])
        if order > 0 or (order == 0 and (partition, offset) > self.sources[current][:2]):
            self.winners[entity] = seq
            self.winner_ts[entity] = ts
        # Past the newest, a version is past the least too: only an older one can be least.
        if order < 0 and compare_instants(ts, self.least[entity]) < 0:
            self.least[entity] = ts

    @property
    def collapsed(self) -> bool:
        return bool(self.winners)

    @property
    def superseded(self) -> int:
        """Versions a collapsed COPY leaves out: each lost to a newer one of its key."""
        return len(self.sources) - len(self.winners) if self.winners else 0

    def collapsed_copy(self) -> bytearray:
        """Each key's newest version as a staging line, with the key's least ts appended."""
        out = bytearray()
        data, starts, least, n = self.copy_data, self.starts, self.least, len(self.starts)
        for entity, seq in self.winners.items():
            end = starts[seq + 1] if seq + 1 < n else len(data)
            out += data[starts[seq] : end - 1]
            out += f"\t{least[entity]}\n".encode()
        return out

    def direct_copy_data(self, topic: str, life: int) -> bytes:
        """The rows as COPY text for the table itself (``TableStatements.copy_direct``): each
        line without its seq, with the topic and its life after the columns."""
        suffix = f"\t{escape(topic)}\t{life}\n".encode()
        return _SEQ_FIELD.sub(b"", self.copy_data).replace(b"\n", suffix)

    def lowest_offsets(self) -> dict[int, int]:
        """The lowest offset of these rows per partition."""
        lowest: dict[int, int] = {}
        for partition, offset, *_ in self.sources:
            if offset < lowest.get(partition, offset + 1):
                lowest[partition] = offset
        return lowest

    def row_text(self, seq: int) -> str:
        """Row ``seq``'s COPY text as ``add`` took it (without seq, partition and offset)."""
        end = self.starts[seq + 1] if seq + 1 < len(self.starts) else len(self.copy_data)
        line = bytes(self.copy_data[self.starts[seq] : end - 1]).decode()
        return line.split("\t", 3)[3]

    def __len__(self) -> int:
        return len(self.sources)


@dataclass
class Batch:
    decoder: Decoder
    clock: Callable[[], float] = time.monotonic
    tables: dict[str, TableRows] = field(default_factory=dict)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    next_offsets: dict[int, int] = field(default_factory=dict)
    events_by_type: Counter[str] = field(default_factory=Counter)
    size: int = 0
    tombstones: int = 0
    started_at: float | None = None
    newest_event_ms: int = 0
    # Orphans carried over from the previous flush, by (partition, offset): how often.
    times_carried: dict[tuple[int, int], int] = field(default_factory=dict)
    # What the sink does with this batch's orphans; the last batch before partitions
    # are given up gets a closing policy (orphans are parked, not carried).
    carry_policy: CarryPolicy = field(default_factory=CarryPolicy)
    # Keep only each key's newest version of collapsible tables for the COPY (README
    # "How it works"); off, every version is staged and PostgreSQL picks the newest.
    collapse: bool = True
    # The life of the topic its messages come from (progress.enter_topic_life): part of
    # the identity of its append rows, dead letters and parked children.
    life: int = 1
    # With flush lanes: the keys of the parent rows this batch writes (PARENT_TABLES),
    # by table, as COPY text; other lanes hold back children of these (hold_children).
    track_parents: bool = False
    parent_keys: dict[str, set[str]] = field(default_factory=dict)
    # Children held back, unstaged, while their parent is in another lane's unwritten
    # batch: the sink hands them back like orphans (report.carried).
    held: list[Orphan] = field(default_factory=list)

    def add(self, messages: list[Message]) -> None:
        """Decodes and buffers messages; invalid ones become dead letters, never exceptions."""
        if not messages:
            return
        if self.started_at is None:
            self.started_at = self.clock()
        decode = self.decoder.decode_event
        collapse = self.collapse
        tables = self.tables
        next_offsets = self.next_offsets
        by_type = self.events_by_type
        track, parent_keys = self.track_parents, self.parent_keys
        # Events are counted by type from the rows each table gained: one table per type.
        rows_before = {table: len(rows) for table, rows in tables.items()}
        for msg in messages:
            partition = msg.partition()
            offset = msg.offset()
            next_offsets[partition] = offset + 1
            value = msg.value()
            if value is None:
                self.tombstones += 1
                continue
            try:
                spec, text, ts, key = decode(value)
            except Exception as exc:
                self.dead_letters.append(dead_letter_for(exc, partition, offset, msg.key(), value))
                # A value its column cannot hold still came in an event of a known type.
                by_type[BY_TABLE[exc.table].event_type if isinstance(exc, ValueRefused) else "invalid"] += 1
                continue
            if track and spec.table in PARENT_TABLES:
                keys = parent_keys.get(spec.table)
                if keys is None:
                    keys = parent_keys[spec.table] = set()
                position = _PARENT_KEY_FIELD[spec.table]
                if position == 1:  # the key first, as in every parent table now: no loop
                    start = text.index("\t") + 1
                    end = text.find("\t", start)
                    keys.add(text[start : end if end >= 0 else len(text)])
                else:
                    keys.add(row_field(text, position))
            buf = tables.get(spec.table)
            if buf is None:
                buf = tables[spec.table] = TableRows(spec)
            if collapse and spec.collapsible:
                buf.add_version(partition, offset, msg.key(), value, text, key, ts)
            else:
                buf.add(partition, offset, msg.key(), value, text)
        for table, rows in tables.items():
            gained = len(rows) - rows_before.get(table, 0)
            if gained:
                by_type[rows.spec.event_type] += gained
        self.size += len(messages)
        self.newest_event_ms = max(self.newest_event_ms, messages[-1].timestamp()[1])

    def carry(self, orphans: list[Orphan], ends: Mapping[int, int]) -> None:
        """Takes the previous flush's orphans; ``ends`` are that batch's end offsets.

        They become ordinary rows of this batch, with the COPY text they were
        decoded to the first time; events are not counted twice.
        """
        if not orphans:
            return
        if self.started_at is None:
            self.started_at = self.clock()
        for orphan in orphans:
            buf = self.tables.get(orphan.table)
            if buf is None:
                buf = self.tables[orphan.table] = TableRows(BY_TABLE[orphan.table])
            buf.add(orphan.partition, orphan.offset, orphan.key, orphan.value, orphan.text)
            self.times_carried[(orphan.partition, orphan.offset)] = orphan.times_carried
            partition = orphan.partition
            self.next_offsets[partition] = max(self.next_offsets.get(partition, 0), ends[partition])
        self.size += len(orphans)

    def hold_children(self, pending: Mapping[str, AbstractSet[str]]) -> int:
        """Takes out of the batch, unstaged, every child row with a parent key in ``pending``
        (the parents other lanes have yet to commit) into ``held``; returns how many. So
        PostgreSQL meets such a child once, after its parent, instead of once as an orphan
        and again when carried."""
        if not any(pending.values()):
            return 0
        held = 0
        encoded: dict[str, set[bytes]] = {}
        for table, fields in _CHILD_FIELDS.items():
            rows = self.tables.get(table)
            if rows is None:
                continue
            checks = []
            for parent, position in fields:
                if pending.get(parent):
                    if parent not in encoded:
                        encoded[parent] = {key.encode() for key in pending[parent]}
                    # In a staging line, seq, partition and offset come before the row's text.
                    checks.append((encoded[parent], position + 3))
            if not checks:
                continue
            last = max(field for _, field in checks)
            lines = bytes(rows.copy_data).split(b"\n")
            split = (line.split(b"\t", last + 1) for line in lines[: len(rows)])
            # Spelled out for one parent and for two: a generator per row cost as much as the split.
            if len(checks) == 1:
                ((keys, at),) = checks
                holding = [seq for seq, parts in enumerate(split) if parts[at] in keys]
            elif len(checks) == 2:
                (keys, at), (other_keys, other_at) = checks
                holding = [
                    seq
                    for seq, parts in enumerate(split)
                    if parts[at] in keys or parts[other_at] in other_keys
                ]
            else:
                holding = [
                    seq for seq, parts in enumerate(split) if any(parts[at] in keys for keys, at in checks)
                ]
            if not holding:
                continue
            for seq in holding:
                partition, offset, key, value = rows.sources[seq]
                text = lines[seq].split(b"\t", 3)[3].decode()
                times = self.times_carried.get((partition, offset), 0)
                self.held.append(Orphan(table, partition, offset, key, value, text, times))
            held += len(holding)
            held_seqs = set(holding)
            keeping = [seq for seq in range(len(rows)) if seq not in held_seqs]
            if not keeping:
                del self.tables[table]
                continue
            # Renumbered: a kept row's seq is its index in the kept sources.
            kept_lines = [
                b"%d%s\n" % (new_seq, (line := lines[seq])[line.index(b"\t") :])
                for new_seq, seq in enumerate(keeping)
            ]
            kept = TableRows(rows.spec)
            kept.copy_data = bytearray(b"".join(kept_lines))
            kept.starts = array("q", accumulate(map(len, kept_lines[:-1]), initial=0))
            kept.sources = [rows.sources[seq] for seq in keeping]
            self.tables[table] = kept
        return held

    def age_s(self) -> float:
        return 0.0 if self.started_at is None else self.clock() - self.started_at
