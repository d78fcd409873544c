"""Throughput, ceilings, latency and memory of pme-exporter, measured in one run on one machine.

    python benchmarks/throughput.py [--events 1000000] [--partitions 6] [--workers 1]
                                    [--lanes 1,2,4] [--worker-sweep 2] [--baseline-events 20000]
                                    [--json FILE] [--plot FILE.png] [--quick]

Brings up the local stack when KAFKA_URL/DB_HOST are not given. Every speed is
reported next to the machine's own ceilings measured in the same run:
- Kafka consume-only: the exporter's consumer settings, decoding nothing;
- PostgreSQL ingest-only: the same rows as COPY files, loaded by psql into the
  staging tables and applied with the exporter's own SQL, no Python in the loop;
  every event's row, so what collapse leaves out counts against the exporter;
  run before and after the exporter, the mean used and the spread reported;
- the COPY limit: the exported database's final rows COPYed by psql straight into
  the indexed tables, the least work any exporter can make PostgreSQL do;
- the original design's pattern: one INSERT ... ON CONFLICT per event, autocommit,
  one connection, on a slice of the same events (what pme-exporter replaces).
CPU per event is reported for the exporter and PostgreSQL in the run and in the
ceiling, and sweeps over flush lanes and workers print a scaling table.
Nothing here asserts a speed; the test suite runs --quick so the harness keeps working.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import platform
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import confluent_kafka
import orjson
import psycopg
from confluent_kafka import Consumer, Producer
from prometheus_client.parser import text_string_to_metric_families

from pme_exporter.buffers import Batch, InMemoryMessage
from pme_exporter.decode import Decoder, copy_fields
from pme_exporter.devtools.databases import create_database
from pme_exporter.devtools.generator import create_topic, publish, trading_day
from pme_exporter.devtools.stack import exporter_env as worker_env
from pme_exporter.devtools.stack import servers_env
from pme_exporter.errors import DecodeError
from pme_exporter.kafka_config import consumer_config
from pme_exporter.migrate import migrate
from pme_exporter.progress import read_stored_offsets
from pme_exporter.schema import FLUSH_ORDER
from pme_exporter.settings import Settings
from pme_exporter.sqlgen import staging_table, statements_for

REPO = Path(__file__).resolve().parents[1]
EVENTS_PER_ORDER = 5.44  # measured on trading_day(18_500): 100,705 events


@dataclass
class Figures:
    values: dict[str, Any] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)

    def put(self, name: str, value: Any, unit: str) -> None:
        self.values[name] = value
        self.units[name] = unit
        print(
            f"  {name:<38} {value:>14,.2f} {unit}"
            if isinstance(value, float)
            else f"  {name:<38} {value!s:>14} {unit}",
            flush=True,
        )


# -- the stack ---------------------------------------------------------------------


def stack_env() -> dict[str, str]:
    return servers_env()


def fresh_database(base: Settings, name: str) -> Settings:
    create_database(base.conninfo(), name, replace=True)
    settings = base.replace(db_name=name, database_url=None)
    migrate(settings.conninfo())
    return settings


def exporter_env(settings: Settings) -> dict[str, str]:
    return worker_env(settings) | {"PME_LOG_LEVEL": "WARNING"}


# -- producing -----------------------------------------------------------------------


def events(count: int, seed: int) -> list[tuple[bytes | None, bytes | None]]:
    orders = int(count / EVENTS_PER_ORDER) + 100
    return [e for _, e in zip(range(count), trading_day(orders, seed), strict=False)]


def produce_all(
    bootstrap: str, topic: str, batch: list[tuple[bytes | None, bytes | None]]
) -> list[tuple[int, int]]:
    """Produces in order (lz4, as producers commonly do); returns (partition, offset) of each event."""
    located = publish(bootstrap, topic, ((None, k, v) for k, v in batch), compression="lz4")
    # The broker's fresh log is still being written back; left alone, that I/O
    # lands in the next measurement.
    os.sync()
    return [(p, o) for p, o, _ in located]


# -- end to end ----------------------------------------------------------------------


_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of these processes, plus what their reaped children used."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # exited meanwhile; its parent's cutime has it if the parent is counted
            continue
        total += sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
    return total / _TICKS_PER_S


def pids_running(marker: str) -> list[int]:
    """Processes on this machine whose command line contains ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


class CpuMeter:
    """CPU-seconds used by the local servers between start() and stop(); 0 when they run elsewhere.

    PostgreSQL's postmaster reaps its backends into its cutime, so a backend
    that exits in between (psql's) still counts, once reaped: stop() first
    waits (bounded) for the backends that started meanwhile to be gone. Read
    while one is exiting, its CPU is in neither place (its command line reads
    empty, its stat vanishes, the postmaster was read before the reap): a short
    ceiling run read 0.0 CPU-s that way.
    """

    def __init__(self) -> None:
        self._start: dict[str, float] = {}
        self._backends_before: set[int] = set()

    @staticmethod
    def _now() -> dict[str, float]:
        return {
            "postgres": cpu_seconds(pids_running("postgres")),
            "kafka": cpu_seconds(pids_running("kafka.Kafka")),
        }

    def start(self) -> None:
        _await_gone(lambda: _backends(departing_only=True))
        self._backends_before = set(_backends())
        self._start = self._now()

    def stop(self, clients_gone: bool) -> dict[str, float]:
        """``clients_gone``: the clients that connected meanwhile have exited, so their
        backends are awaited; otherwise they are still running and counted as such."""
        if clients_gone:
            _await_gone(lambda: [pid for pid in _backends() if pid not in self._backends_before])
        return {name: used - self._start[name] for name, used in self._now().items()}


def _backends(departing_only: bool = False) -> list[int]:
    """Children of the postmaster but autovacuum workers, which come and go on their own;
    with ``departing_only``, those exiting or exited but not yet reaped."""
    postmasters = set()
    for pid in pids_running("postgres"):
        try:
            if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"/"):  # backends retitle theirs
                postmasters.add(pid)
        except OSError:
            continue
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                cmdline = (entry / "cmdline").read_bytes()
            except (OSError, ValueError, IndexError):
                continue
            if ppid not in postmasters or b"autovacuum" in cmdline:
                continue
            if not departing_only or not cmdline:
                found.append(int(entry.name))
    return found


def _await_gone(pending: Callable[[], list[int]], bound_s: float = 5.0) -> None:
    deadline = time.monotonic() + bound_s
    while pending() and time.monotonic() < deadline:
        time.sleep(0.01)


def peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


class Progress:
    """Events exported so far, polled over one connection: a new connection per poll
    costs a SCRAM handshake of CPU on the machine being measured."""

    def __init__(self, conninfo: str, topic: str) -> None:
        self._conninfo = conninfo
        self._topic = topic
        self._conn: psycopg.Connection[Any] | None = None

    def __call__(self) -> int:
        try:
            if self._conn is None or self._conn.closed:
                self._conn = psycopg.connect(self._conninfo, autocommit=True)
            return sum(read_stored_offsets(self._conn, self._topic).values())
        except psycopg.Error:  # the schema is not there yet, or the server restarts
            self.close()
            return 0

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def end_to_end(settings: Settings, topic: str, total: int, workers: int, timeout_s: float) -> dict[str, Any]:
    group = f"bench-{uuid.uuid4().hex[:8]}"
    s = settings.replace(kafka_topic=topic, kafka_group_id=group, metrics_port=0)
    servers = CpuMeter()
    servers.start()
    started = time.monotonic()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "pme_exporter", "run"],
            env=exporter_env(s),
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(workers)
    ]
    timeline: list[tuple[float, int]] = []
    progress = Progress(s.conninfo(), topic)
    first_commit_at = None
    done_at_first_commit = 0
    peak = 0.0
    done = 0
    try:
        while time.monotonic() - started < timeout_s:
            done = progress()
            now = time.monotonic() - started
            timeline.append((now, done))
            peak = max([peak] + [peak_rss_mb(p.pid) for p in procs if p.poll() is None])
            if done and first_commit_at is None:
                first_commit_at, done_at_first_commit = now, done
            if done >= total:
                break
            if any(p.poll() is not None for p in procs):
                raise RuntimeError(f"an exporter exited: {procs[0].stderr.read() if procs[0].stderr else ''}")
            time.sleep(0.1)
        elapsed = time.monotonic() - started
        cpu = servers.stop(clients_gone=False) | {"exporter": cpu_seconds([p.pid for p in procs])}
    finally:
        for p in procs:
            peak = max(peak, peak_rss_mb(p.pid)) if p.poll() is None else peak
            p.terminate()
        for p in procs:
            p.wait(60)
        progress.close()
    if done < total:
        raise RuntimeError(f"exported {done} of {total} events within {timeout_s}s")
    # After the first commit: start-up (migrations, group join) left out.
    steady = elapsed - (first_commit_at or 0.0)
    return {
        "elapsed_s": elapsed,
        "events_per_s": total / elapsed,
        "steady_events_per_s": (total - done_at_first_commit) / steady if steady > 0.5 else 0.0,
        "peak_rss_mb": peak,
        "cpu_s": cpu,
        "timeline": timeline,
    }


# -- ceilings ------------------------------------------------------------------------


def kafka_ceiling(settings: Settings, topic: str, total: int) -> float:
    config = consumer_config(
        settings.replace(kafka_group_id=f"ceiling-{uuid.uuid4().hex[:8]}").kafka_config()
    )
    consumer = Consumer(config)
    consumer.subscribe([topic])
    seen = 0
    started = None
    while seen < total:
        messages = consumer.consume(num_messages=5000, timeout=1.0)
        if messages and started is None:
            started = time.monotonic()
        seen += len(messages)
    elapsed = time.monotonic() - (started or time.monotonic())
    consumer.close()
    return total / elapsed if elapsed > 0 else 0.0


def pg_ceiling(
    settings: Settings,
    batch: list[tuple[bytes | None, bytes | None]],
    located: list[tuple[int, int]],
    batch_events: int,
    workdir: Path,
) -> tuple[float, dict[str, float]]:
    """psql loads COPY files into staging and applies the exporter's SQL; Python only prepares files.

    Returns events/s and the servers' CPU-seconds while psql ran."""
    decoder = Decoder()
    statements = {spec.table: statements_for(spec) for spec in FLUSH_ORDER}
    script = [stmts.create_staging + ";" for stmts in statements.values()]
    for start in range(0, len(batch), batch_events):
        chunk = Batch(decoder=decoder, collapse=False)  # every event's row: the ceiling's definition
        chunk.add(
            [
                InMemoryMessage(v, p, o)
                for (k, v), (p, o) in zip(
                    batch[start : start + batch_events], located[start : start + batch_events], strict=True
                )
            ]
        )
        script.append("BEGIN;")
        for spec in FLUSH_ORDER:
            rows = chunk.tables.get(spec.table)
            if not rows:
                continue
            path = workdir / f"{start}-{spec.table}.copy"
            path.write_bytes(rows.copy_data)
            columns = statements[spec.table].copy.split("(", 1)[1].split(")", 1)[0]
            script.append(f"\\copy {staging_table(spec)} ({columns}) FROM '{path}'")
            script.append(
                statements[spec.table]
                .apply.replace("%(lo)s", "0")
                .replace("%(hi)s", str(len(rows) - 1))
                .replace("%(topic)s", "'pme-ledger'")
                .replace("%(life)s", "1")
                + ";"
            )
        parts = ",".join(str(p) for p in chunk.next_offsets)
        offsets = ",".join(str(o) for o in chunk.next_offsets.values())
        script.append(
            "INSERT INTO exporter_offsets (topic, partition, next_offset) SELECT 'ceiling', p, o "
            f"FROM unnest('{{{parts}}}'::int[], '{{{offsets}}}'::bigint[]) AS u(p, o) "
            "ON CONFLICT (topic, partition) DO UPDATE SET next_offset = GREATEST(exporter_offsets.next_offset, EXCLUDED.next_offset);"
        )
        script.append("COMMIT;")
    script_path = workdir / "ceiling.sql"
    script_path.write_text("\n".join(script) + "\n")
    servers = CpuMeter()
    servers.start()
    started = time.monotonic()
    run_psql(settings, script_path)
    elapsed = time.monotonic() - started
    return len(batch) / elapsed, servers.stop(clients_gone=True)


def copy_limit(exported: Settings, target: Settings, workdir: Path) -> tuple[float, int]:
    """The least work any exporter can make PostgreSQL do for the same result: the final rows of
    an exported database (one per key in upsert tables, every row in append tables) COPYed by
    psql straight into the indexed tables of a freshly migrated one, parents first, in one
    transaction. Returns the seconds psql took and the rows."""
    script = ["BEGIN;"]
    rows = 0
    with psycopg.connect(exported.conninfo()) as conn:
        for spec in FLUSH_ORDER:
            path = workdir / f"final-{spec.table}.copy"
            with path.open("wb") as out, conn.cursor().copy(f"COPY {spec.table} TO STDOUT") as copy:
                for data in copy:
                    out.write(data)
            count = conn.execute(f"SELECT count(*) FROM {spec.table}").fetchone()
            rows += int(count[0]) if count else 0
            script.append(f"\\copy {spec.table} FROM '{path}'")
    script.append("COMMIT;")
    script_path = workdir / "copy_limit.sql"
    script_path.write_text("\n".join(script) + "\n")
    started = time.monotonic()
    run_psql(target, script_path)
    return time.monotonic() - started, rows


def run_psql(settings: Settings, script: Path) -> None:
    env = {**os.environ, "PGPASSWORD": settings.db_password, "PGCONNECT_TIMEOUT": "10"}
    subprocess.run(
        [
            "psql",
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            settings.db_host,
            "-p",
            str(settings.db_port),
            "-U",
            settings.db_user,
            "-d",
            settings.db_name,
            "-f",
            str(script),
        ],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )


# -- the original design's pattern --------------------------------------------------------


def design_pattern(
    settings: Settings, batch: list[tuple[bytes | None, bytes | None]], located: list[tuple[int, int]]
) -> float:
    """The design's data path (README "Performance"): every event becomes one INSERT ... ON
    CONFLICT DO UPDATE (plain INSERT for append tables), autocommit, on one connection, in
    topic order. Statements are prepared (psycopg does after five runs), so this is, if
    anything, faster than the Go service's. A refused statement is logged and skipped, as
    the design does. Returns events/s."""
    decoder = Decoder()
    statements: dict[str, str] = {}
    for spec in FLUSH_ORDER:
        columns = [*spec.column_names, "created_at", "src_partition", "src_offset"]
        casts = [f"%s::{c.sql_type}" for c in spec.columns] + ["%s::timestamptz", "%s", "%s"]
        if spec.mode.value == "upsert":
            columns.append("updated_at")
            casts.append("%s::timestamptz")
            sets = ", ".join(f"{c} = EXCLUDED.{c}" for c in columns if c not in (spec.key, "created_at"))
            conflict = f" ON CONFLICT ({spec.key}) DO UPDATE SET {sets}"
        else:
            columns.append("src_topic")
            casts.append("%s")
            conflict = " ON CONFLICT DO NOTHING"
        statements[spec.table] = (
            f"INSERT INTO {spec.table} ({', '.join(columns)}) VALUES ({', '.join(casts)}){conflict}"
        )
    rows = []
    for (_key, value), (partition, offset) in zip(batch, located, strict=False):
        if value is None:
            continue
        try:
            spec, text = decoder.decode(value)
        except DecodeError:  # the design would log it and go on
            continue
        fields = copy_fields(text)
        ts, values = fields[0], fields[1:]
        extra = [ts, partition, offset] + ([ts] if spec.mode.value == "upsert" else ["design"])
        rows.append((statements[spec.table], [*values, *extra]))
    failed = 0
    with psycopg.connect(settings.conninfo(), autocommit=True) as conn:
        started = time.monotonic()
        for statement, params in rows:
            try:
                conn.execute(statement, params)
            except psycopg.errors.IntegrityError:  # a child before its parent: the design logs it
                failed += 1
        elapsed = time.monotonic() - started
    print(f"  (design pattern: {len(rows):,} statements, {failed:,} refused)", flush=True)
    return len(batch) / elapsed


# -- latency -------------------------------------------------------------------------


# The latency runs' producer waits as long as librdkafka's own default before sending a
# request. At 1 ms it sent nearly a request per event at 5,000 events/s, and the broker,
# busy with them (0.93 of a core), acknowledged events over a second late: Kafka's
# "delivery" measured the harness's producer, not Kafka (docs/performance.md).
PRODUCER_LINGER_MS = 5.0


def produce_steadily(producer: Producer, topic: str, rate: int, seconds: float) -> list[float]:
    """A trading day at ``rate`` events/s, each stamped with the time it is produced; returns
    how long after each stamp the broker acknowledged it (ms): the producer's share of
    Kafka's delivery latency."""
    source: Iterator[tuple[bytes | None, bytes | None]] = trading_day(
        10**9, seed=5, clock=lambda: datetime.now(UTC)
    )
    total = int(rate * seconds)
    acked: list[float] = []
    started = time.monotonic()
    for i, (key, value) in enumerate(source):
        if i >= total:
            break
        wait = started + i / rate - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        producer.produce(topic, key=key, value=value, on_delivery=_acknowledged(acked, time.time()))
        producer.poll(0)
    producer.flush(30)
    return acked


def _acknowledged(acked: list[float], sent: float) -> Callable[[Any, Any], None]:
    def callback(err: Any, _msg: Any) -> None:
        if err is None:
            acked.append((time.time() - sent) * 1000)

    return callback


def quiesce(settings: Settings, bound_s: float = 120.0) -> float:
    """Waits (bounded) until no autovacuum runs, then checkpoints and syncs, so the latency runs
    do not share the machine with the backlog phases' aftermath; returns the seconds waited."""
    started = time.monotonic()
    with psycopg.connect(settings.conninfo(), autocommit=True) as conn:
        while time.monotonic() - started < bound_s:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'"
            ).fetchone()
            if not (row and row[0]):
                break
            time.sleep(0.5)
        # PostgreSQL 15: superusers and pg_checkpoint only (deploy/local/up grants it).
        with contextlib.suppress(psycopg.errors.InsufficientPrivilege):
            conn.execute("CHECKPOINT")
    os.sync()
    return time.monotonic() - started


class KafkaReceiver:
    """Kafka's own delivery latency, measured on the same stream as the exporter's and at
    the same time, so under the same load: a bare consumer (its own group, the exporter's
    consumer settings) in a process of its own; latency = receipt - event time."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        spawn = multiprocessing.get_context("spawn")
        self._ready, self._stop, self._results = spawn.Event(), spawn.Event(), spawn.Queue()
        self._process = spawn.Process(
            target=receive_latencies,
            args=(bootstrap, topic, self._ready, self._stop, self._results),
            daemon=True,  # ends with the harness, whatever stops it
        )
        self._process.start()

    def wait_ready(self, timeout_s: float) -> None:
        if not self._ready.wait(timeout_s):
            raise RuntimeError(f"the Kafka latency receiver got no partitions within {timeout_s:.0f} s")

    def stop(self) -> dict[str, float]:
        """Percentiles of what it received; call once the stream has ended."""
        self._stop.set()
        try:
            latencies: list[float] = sorted(self._results.get(timeout=60))
        finally:
            self._process.join(30)
            if self._process.is_alive():
                self._process.kill()
        if not latencies:
            raise RuntimeError("the Kafka latency receiver got no events")
        return {
            "kafka_p50_ms": latencies[len(latencies) // 2],
            "kafka_p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        }


def receive_latencies(bootstrap: str, topic: str, ready: Any, stop: Any, results: Any) -> None:
    """KafkaReceiver's process: poll() returns at each message, so nothing here waits to
    fill a batch."""
    # A group of its own: in the worker's group it would take some of its partitions.
    consumer = Consumer(consumer_config({"bootstrap.servers": bootstrap, "group.id": f"{topic}-kafka-only"}))
    consumer.subscribe([topic], on_assign=lambda _c, _p: ready.set())
    received: list[float] = []
    try:
        while not stop.is_set():
            message = consumer.poll(0.1)
            value = None if message is None or message.error() is not None else message.value()
            if value is None:
                continue
            at = time.time()
            sent = datetime.fromisoformat(orjson.loads(value)["ts"]).timestamp()
            received.append((at - sent) * 1000)
    finally:
        consumer.close()
    results.put(received)


def latency(
    settings: Settings,
    rate: int,
    seconds: float,
    partitions: int,
    into: Settings | None = None,
    linger_ms: float = PRODUCER_LINGER_MS,
) -> dict[str, float]:
    """Events stamped with their produce time at a steady rate; latency = exported_at - event
    time, where exported_at is when the transaction that stored the event began (its flush's
    own duration, reported beside, comes on top). Kafka's delivery latency of the same
    stream is measured alongside."""
    topic = f"bench-latency-{rate}-{uuid.uuid4().hex[:6]}"
    create_topic(settings.kafka_url, topic, partitions)
    # ``into``: a database that already holds rows (the scale benchmark's soak); only rows
    # exported from now on are counted.
    target = into if into is not None else fresh_database(settings, "pme_bench_latency")
    s = target.replace(kafka_topic=topic, kafka_group_id=topic, metrics_port=free_port())
    since = datetime.now(UTC)
    proc = subprocess.Popen([sys.executable, "-m", "pme_exporter", "run"], env=exporter_env(s))
    receiver = KafkaReceiver(settings.kafka_url, topic)
    try:
        producer = Producer({"bootstrap.servers": settings.kafka_url, "linger.ms": linger_ms})
        # Let the worker join its group before the clock starts.
        deadline = time.monotonic() + 30
        progress = Progress(s.conninfo(), topic)
        while progress() == 0 and time.monotonic() < deadline:
            producer.produce(topic, key=b"warmup", value=None)
            producer.flush(5)
            time.sleep(0.2)
        receiver.wait_ready(30)
        servers = CpuMeter()
        servers.start()
        acked = sorted(produce_steadily(producer, topic, rate, seconds))
        busy = servers.stop(clients_gone=False)
        progress.close()
        time.sleep(1.0 + s.flush_interval_ms / 1000)
        flushes = flush_durations(s.metrics_port)
        kafka = receiver.stop()
    finally:
        proc.terminate()
        proc.wait(60)
    union = " UNION ALL ".join(
        f"SELECT extract(epoch FROM exported_at - {'updated_at' if spec.mode.value == 'upsert' else 'created_at'}) * 1000 AS ms FROM {spec.table} WHERE exported_at >= %(since)s"
        for spec in FLUSH_ORDER
    )
    with psycopg.connect(s.conninfo()) as conn:
        row = conn.execute(
            f"SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY ms), percentile_cont(0.99) WITHIN GROUP (ORDER BY ms), max(ms), count(*) FROM ({union}) l",
            {"since": since},
        ).fetchone()
    assert row is not None
    return {
        "p50_ms": float(row[0]),
        "p99_ms": float(row[1]),
        "max_ms": float(row[2]),
        "rows": int(row[3]),
        **flushes,
        **kafka,
        # The broker's acknowledgement of each event, from its stamp: the producer's share.
        "produce_ack_p50_ms": acked[len(acked) // 2] if acked else 0.0,
        "produce_ack_p99_ms": acked[min(len(acked) - 1, int(len(acked) * 0.99))] if acked else 0.0,
        # What the servers did meanwhile, as a share of one core.
        "postgres_cpu_share": busy["postgres"] / seconds,
        "kafka_cpu_share": busy["kafka"] / seconds,
        # A bound for a slower machine: the linger plus twice the median flush.
        "p99_bound_ms": s.flush_linger_ms + 2 * flushes["flush_p50_ms"],
    }


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def scrape(port: int) -> str:
    """A local worker's /metrics page."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return str(response.read().decode())


def flush_durations(port: int) -> dict[str, float]:
    """The worker's own flush figures from /metrics: the median as histogram_quantile
    interpolates it in its bucket, the mean, the count and the mean batch size."""
    text = scrape(port)
    buckets: list[tuple[float, float]] = []
    count = total = batches = batch_events = 0.0
    flush = "pme_exporter_flush_duration_seconds"
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith(flush) and sample.labels.get("phase") != "total":
                continue
            if sample.name == f"{flush}_bucket":
                buckets.append((float(sample.labels["le"]), sample.value))
            elif sample.name == f"{flush}_count":
                count = sample.value
            elif sample.name == f"{flush}_sum":
                total = sample.value
            elif sample.name == "pme_exporter_batch_size_events_count":
                batches = sample.value
            elif sample.name == "pme_exporter_batch_size_events_sum":
                batch_events = sample.value
    return {
        "flush_p50_ms": histogram_median(sorted(buckets)) * 1000,
        "flush_mean_ms": total / count * 1000 if count else 0.0,
        "flushes": count,
        "batch_mean_events": batch_events / batches if batches else 0.0,
    }


def histogram_median(buckets: list[tuple[float, float]]) -> float:
    """Prometheus's histogram_quantile(0.5, ...) for cumulative (upper bound, count) pairs."""
    if not buckets or buckets[-1][1] == 0:
        return 0.0
    rank = buckets[-1][1] / 2
    lower, below = 0.0, 0.0
    for upper, cumulative in buckets:
        if cumulative >= rank:
            if upper == float("inf"):
                return lower
            return lower + (upper - lower) * (rank - below) / (cumulative - below)
        lower, below = upper, cumulative
    return lower


# -- main ----------------------------------------------------------------------------


def machine(settings: Settings) -> dict[str, Any]:
    with psycopg.connect(settings.conninfo()) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    pom = (REPO / "deploy/local/kafka/pom.xml").read_text()
    kafka = re.search(r"<kafka.version>(.*)</kafka.version>", pom)
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    mem_kb = next(int(line.split()[1]) for line in meminfo if line.startswith("MemTotal"))
    return {
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "postgresql": row[0] if row else "?",
        "kafka": kafka.group(1) if kafka else "?",
        "librdkafka": confluent_kafka.libversion()[0],
        "confluent_kafka": confluent_kafka.__version__,
        "psycopg": psycopg.__version__,
    }


def plot(path: str, runs: dict[str, dict[str, Any]]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install -e '.[bench]'") from None
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    for label, run in runs.items():
        times = [t for t, _ in run["timeline"]]
        done = [d for _, d in run["timeline"]]
        # Progress moves in whole flushes, so rate over a trailing three-second window.
        rates = []
        for i, t in enumerate(times):
            j = next(k for k in range(i + 1) if times[k] >= t - 3.0)
            rates.append((done[i] - done[j]) / max(t - times[j], 1e-6) if i > j else 0.0)
        ax1.plot(times, rates, label=label)
        ax2.plot(times, [run["total"] - d for d in done], label=label)
    ax1.set_ylabel("exported events/s")
    ax2.set_ylabel("lag (events not yet exported)")
    ax2.set_xlabel("seconds since the exporter started")
    ax1.legend()
    fig.tight_layout()
    fig.savefig(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--lanes", default="1,2,4", help="flush lanes to sweep (comma-separated)")
    parser.add_argument(
        "--worker-sweep", default="2", help="more worker counts to run with the default lanes"
    )
    parser.add_argument(
        "--baseline-events", type=int, default=20_000, help="events of the original design's pattern"
    )
    parser.add_argument("--rates", default="5000,20000", help="steady rates for the latency runs (events/s)")
    parser.add_argument("--latency-seconds", type=float, default=15.0)
    parser.add_argument(
        "--producer-linger-ms",
        type=float,
        default=PRODUCER_LINGER_MS,
        help="linger.ms of the latency runs' producer (default: librdkafka's own, 5)",
    )
    parser.add_argument("--json", dest="json_path")
    parser.add_argument("--plot", dest="plot_path")
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes: checks the harness, measures nothing useful"
    )
    args = parser.parse_args(argv)
    if args.events < 1 or args.partitions < 1 or args.workers < 1:
        parser.error("--events, --partitions and --workers must be positive")
    try:
        rates = [int(r) for r in args.rates.split(",")]
    except ValueError:
        parser.error(f"--rates must be whole numbers separated by commas, not {args.rates!r}")
    try:
        lane_counts = [int(n) for n in args.lanes.split(",")]
        worker_counts = [int(n) for n in args.worker_sweep.split(",") if n]
    except ValueError:
        parser.error("--lanes and --worker-sweep are whole numbers separated by commas")
    if not 0 <= args.producer_linger_ms <= 1000:
        parser.error("--producer-linger-ms must be from 0 to 1000")
    if min(lane_counts + worker_counts + [args.baseline_events]) < 1:
        parser.error("--lanes, --worker-sweep and --baseline-events must be positive")
    if args.quick:
        args.events, rates, args.latency_seconds = 20_000, [500, 2_000], 2.0
        lane_counts, worker_counts, args.baseline_events = [1, 2], [], 2_000

    base = Settings.from_env(stack_env())
    settings = fresh_database(base, "pme_bench")
    figures = Figures()
    print(f"pme-exporter benchmark: {args.events:,} events over {args.partitions} partitions", flush=True)

    batch = events(args.events, seed=1)
    topic = f"bench-{uuid.uuid4().hex[:8]}"
    create_topic(base.kafka_url, topic, args.partitions)
    started = time.monotonic()
    located = produce_all(base.kafka_url, topic, batch)
    figures.put("produce_events_per_s", len(batch) / (time.monotonic() - started), "events/s")

    # The ceiling moves with the machine's load from minute to minute: measured before and
    # after the exporter's run, the ratios use the mean and the spread is reported.
    with tempfile.TemporaryDirectory(prefix="pme-ceiling-") as workdir:
        ceiling_before, ceiling_cpu_before = pg_ceiling(
            fresh_database(base, "pme_bench_ceiling"),
            batch,
            located,
            settings.max_batch_events,
            Path(workdir),
        )
    run = end_to_end(settings, topic, len(batch), args.workers, timeout_s=900)
    run["total"] = len(batch)
    figures.put("end_to_end_events_per_s", run["events_per_s"], "events/s")
    figures.put("end_to_end_steady_events_per_s", run["steady_events_per_s"], "events/s")
    figures.put("end_to_end_elapsed_s", run["elapsed_s"], "s")
    figures.put("peak_rss_mb", run["peak_rss_mb"], "MB")
    # Where the time goes: CPU of each process over the run (servers: 0 when not on this machine).
    for process in ("exporter", "postgres", "kafka"):
        figures.put(f"end_to_end_cpu_s_{process}", run["cpu_s"][process], "CPU-s")

    figures.put("end_to_end_cpu_us_per_event_exporter", run["cpu_s"]["exporter"] / len(batch) * 1e6, "CPU-us")
    figures.put("end_to_end_cpu_us_per_event_postgres", run["cpu_s"]["postgres"] / len(batch) * 1e6, "CPU-us")

    figures.put("kafka_ceiling_events_per_s", kafka_ceiling(base, topic, len(batch)), "events/s")
    with tempfile.TemporaryDirectory(prefix="pme-ceiling-") as workdir:
        ceiling_after, ceiling_cpu_after = pg_ceiling(
            fresh_database(base, "pme_bench_ceiling"),
            batch,
            located,
            settings.max_batch_events,
            Path(workdir),
        )
        limit_s, limit_rows = copy_limit(
            settings, fresh_database(base, "pme_bench_copy_limit"), Path(workdir)
        )
    ceiling = (ceiling_before + ceiling_after) / 2
    figures.put("pg_ceiling_events_per_s", ceiling, "events/s")
    figures.put("pg_ceiling_before_events_per_s", ceiling_before, "events/s")
    figures.put("pg_ceiling_after_events_per_s", ceiling_after, "events/s")
    figures.put("pg_ceiling_spread", abs(ceiling_before - ceiling_after) / ceiling, "x")
    ceiling_pg_cpu = (ceiling_cpu_before["postgres"] + ceiling_cpu_after["postgres"]) / 2
    figures.put("pg_ceiling_cpu_s_postgres", ceiling_pg_cpu, "CPU-s")
    ceiling_pg_us = ceiling_pg_cpu / len(batch) * 1e6
    figures.put("pg_ceiling_cpu_us_per_event_postgres", ceiling_pg_us, "CPU-us")
    figures.put("copy_limit_events_per_s", len(batch) / limit_s, "events/s")
    figures.put("copy_limit_rows", limit_rows, "rows")
    figures.put("ratio_to_copy_limit", run["events_per_s"] * limit_s / len(batch), "x")
    if ceiling_pg_us > 0:
        figures.put(
            "postgres_cpu_ratio_run_to_ceiling",
            figures.values["end_to_end_cpu_us_per_event_postgres"] / ceiling_pg_us,
            "x",
        )
        figures.put(
            "exporter_cpu_ratio_to_ceiling_postgres",
            figures.values["end_to_end_cpu_us_per_event_exporter"] / ceiling_pg_us,
            "x",
        )
    figures.put("ratio_to_pg_ceiling", run["events_per_s"] / figures.values["pg_ceiling_events_per_s"], "x")
    figures.put(
        "ratio_steady_to_pg_ceiling",
        run["steady_events_per_s"] / figures.values["pg_ceiling_events_per_s"],
        "x",
    )
    figures.put(
        "ratio_to_kafka_ceiling", run["events_per_s"] / figures.values["kafka_ceiling_events_per_s"], "x"
    )

    sweep: list[dict[str, Any]] = []
    for lanes in lane_counts:
        for workers in [args.workers, *worker_counts] if lanes == settings.flush_lanes else [args.workers]:
            if lanes == settings.flush_lanes and workers == args.workers:
                result = run  # the main run
            else:
                result = end_to_end(
                    fresh_database(base, "pme_bench_sweep").replace(flush_lanes=lanes),
                    topic,
                    len(batch),
                    workers,
                    timeout_s=900,
                )
            sweep.append(
                {
                    "lanes": lanes,
                    "workers": workers,
                    "events_per_s": result["events_per_s"],
                    "ratio_to_pg_ceiling": result["events_per_s"] / figures.values["pg_ceiling_events_per_s"],
                    "exporter_cpu_us_per_event": result["cpu_s"]["exporter"] / len(batch) * 1e6,
                    "postgres_cpu_us_per_event": result["cpu_s"]["postgres"] / len(batch) * 1e6,
                    "peak_rss_mb": result["peak_rss_mb"],
                }
            )
    print("  scaling, the same events, a fresh database each:", flush=True)
    print(
        f"  {'lanes':>5} {'workers':>7} {'events/s':>10} {'x ceiling':>9} {'exp us/ev':>9} {'pg us/ev':>9} {'RSS MB':>7}"
    )
    for row in sweep:
        print(
            f"  {row['lanes']:>5} {row['workers']:>7} {row['events_per_s']:>10,.0f} {row['ratio_to_pg_ceiling']:>9.2f}"
            f" {row['exporter_cpu_us_per_event']:>9.2f} {row['postgres_cpu_us_per_event']:>9.2f} {row['peak_rss_mb']:>7.0f}",
            flush=True,
        )
    figures.values["scaling"] = sweep
    figures.units["scaling"] = "table"

    slice_events = batch[: args.baseline_events]
    design = design_pattern(fresh_database(base, "pme_bench_design"), slice_events, located)
    figures.put("design_pattern_events_per_s", design, "events/s")
    figures.put("speedup_vs_design_pattern", run["events_per_s"] / design, "x")

    # Memory with twice the backlog: the same topic doubled, a fresh database and group.
    produce_all(base.kafka_url, topic, events(args.events, seed=2))
    doubled = end_to_end(
        fresh_database(base, "pme_bench_double"), topic, 2 * len(batch), args.workers, timeout_s=1800
    )
    doubled["total"] = 2 * len(batch)
    figures.put("peak_rss_mb_double_backlog", doubled["peak_rss_mb"], "MB")
    figures.put(
        "peak_rss_ratio_double_to_single", doubled["peak_rss_mb"] / max(run["peak_rss_mb"], 1e-9), "x"
    )
    figures.put("end_to_end_events_per_s_double_backlog", doubled["events_per_s"], "events/s")

    figures.put("latency_quiesce_s", quiesce(base, bound_s=10 if args.quick else 120), "s")
    for rate in rates:
        result = latency(base, rate, args.latency_seconds, args.partitions, linger_ms=args.producer_linger_ms)
        figures.put(f"latency_p50_ms@{rate}", result["p50_ms"], "ms")
        figures.put(f"latency_p99_ms@{rate}", result["p99_ms"], "ms")
        figures.put(f"latency_max_ms@{rate}", result["max_ms"], "ms")
        figures.put(f"latency_flush_p50_ms@{rate}", result["flush_p50_ms"], "ms")
        figures.put(f"latency_flush_mean_ms@{rate}", result["flush_mean_ms"], "ms")
        figures.put(f"latency_batch_mean_events@{rate}", result["batch_mean_events"], "events")
        figures.put(f"latency_p99_bound_ms@{rate}", result["p99_bound_ms"], "ms")
        figures.put(f"latency_kafka_p50_ms@{rate}", result["kafka_p50_ms"], "ms")
        figures.put(f"latency_kafka_p99_ms@{rate}", result["kafka_p99_ms"], "ms")
        figures.put(f"latency_p99_over_kafka_ms@{rate}", result["p99_ms"] - result["kafka_p99_ms"], "ms")
        figures.put(f"added_latency_p50_ms@{rate}", result["p50_ms"] - result["kafka_p50_ms"], "ms")
        figures.put(f"added_latency_p99_ms@{rate}", result["p99_ms"] - result["kafka_p99_ms"], "ms")
        figures.put(f"latency_produce_ack_p50_ms@{rate}", result["produce_ack_p50_ms"], "ms")
        figures.put(f"latency_produce_ack_p99_ms@{rate}", result["produce_ack_p99_ms"], "ms")
        figures.put(f"latency_postgres_cpu_share@{rate}", result["postgres_cpu_share"], "cores")
        figures.put(f"latency_kafka_cpu_share@{rate}", result["kafka_cpu_share"], "cores")
    figures.values["latency_p99_ms"] = {str(r): figures.values[f"latency_p99_ms@{r}"] for r in rates}
    figures.units["latency_p99_ms"] = "ms by events/s"

    report = {
        "results": figures.values,
        "units": figures.units,
        "settings": {
            "events": len(batch),
            "partitions": args.partitions,
            "workers": args.workers,
            "max_batch_events": settings.max_batch_events,
            "flush_interval_ms": settings.flush_interval_ms,
            "max_buffered_events": settings.max_buffered_events,
            "flush_lanes": settings.flush_lanes,
            "flush_linger_ms": settings.flush_linger_ms,
            "baseline_events": args.baseline_events,
            "latency_seconds": args.latency_seconds,
            "producer_linger_ms": args.producer_linger_ms,
            "quick": args.quick,
        },
        "machine": machine(settings),
        "measured_at": datetime.now(UTC).isoformat(),
        "timelines_s_exported": {"backlog": run["timeline"], "double_backlog": doubled["timeline"]},
    }
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(report, indent=2))
    if args.plot_path:
        plot(args.plot_path, {"backlog": run, "double backlog": doubled})
    return 0


if __name__ == "__main__":
    sys.exit(main())
