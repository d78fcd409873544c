"""How the cost per event grows with the tables and with time, measured in one run on one machine.

    python benchmarks/scale.py [--preload-rows 20000000] [--events 500000]
                               [--soak-events 20000000] [--rate 5000] [--latency-seconds 15]
                               [--analyst-seconds 120] [--json FILE] [--plot FILE.png] [--quick]

Brings up the local stack when KAFKA_URL/DB_HOST are not given. Five phases:
- preload: a year-like history COPYed straight into the ledger tables of a freshly
  migrated database: one seed day exported by the worker's own sink, then copied
  day after day (each copy a day earlier, its numbers and references shifted)
  until ``--preload-rows``; then ``VACUUM ANALYZE``;
- reports: each report's time on the preloaded tables, the plain view against the
  materialized one, and what a refresh of every materialized report takes;
- on top: the same ``--events`` exported into the preloaded database and into an
  empty one, each beside the PostgreSQL ceiling (throughput.py's) in that database;
  ``preloaded_to_empty_ratio`` divides the first by the second; and once more into a
  copy of the preloaded one while every materialized report is refreshed again and
  again (``refreshing_to_plain_throughput``: the refresh's cost to the worker);
- analyst: the same events into copies of the preloaded database while an analyst's
  query (a join of contracts and orders, up to ``--analyst-seconds``) runs on the
  primary, then on a streaming replica (``deploy/local/up --replica``, stopped after);
- soak: one worker through ``--soak-events`` (produced first) into an empty
  database: per million events exported, throughput, peak RSS, table and index
  sizes, dead tuples, autovacuum runs and WAL bytes; latency at ``--rate`` into the
  same database before and after the soak.
Nothing here asserts a speed; the test suite runs --quick so the harness keeps working.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from confluent_kafka import Producer

from pme_exporter.buffers import Batch, InMemoryMessage
from pme_exporter.decode import Decoder
from pme_exporter.devtools.databases import drop_database
from pme_exporter.devtools.generator import create_topic, trading_day
from pme_exporter.devtools.stack import DOWN, parse_exports, run_up
from pme_exporter.ops import reports
from pme_exporter.schema import FLUSH_ORDER
from pme_exporter.settings import Settings
from pme_exporter.sink import PostgresSink
from throughput import (
    EVENTS_PER_ORDER,
    CpuMeter,
    Progress,
    cpu_seconds,
    end_to_end,
    events,
    exporter_env,
    fresh_database,
    latency,
    machine,
    peak_rss_mb,
    pg_ceiling,
    produce_all,
    quiesce,
    stack_env,
)

# Numbers of each day's copy are shifted by this much times its day: past any number the
# harness's own streams use, so history and new events never share a key.
NID_STRIDE = 100_000_000
# Tables copied day by day; the reference tables (participants, accounts, ...) keep the seed's rows.
HISTORY_TABLES = ("orders", "trades", "contracts", "order_acks", "order_naks")
SEED_EVENTS = 200_000


# -- preload ---------------------------------------------------------------------------


def export_seed(settings: Settings, count: int) -> None:
    """One trading day written by the worker's sink, in batches as the worker makes them."""
    decoder = Decoder()
    sink = PostgresSink(conninfo=settings.conninfo(), topic="history")
    try:
        seed = events(count, seed=11)
        for start in range(0, len(seed), 30_000):
            batch = Batch(decoder=decoder)
            batch.add(
                [InMemoryMessage(v, 0, start + i) for i, (_k, v) in enumerate(seed[start : start + 30_000])]
            )
            sink.write(batch)
    finally:
        sink.close(timeout_s=10)


def _shifted_columns(conn: psycopg.Connection[Any], table: str) -> tuple[list[str], list[str]]:
    """The columns a day's copy writes, and the seed's expression for each (%(day)s: its day)."""
    rows = conn.execute(
        "SELECT column_name, data_type FROM information_schema.columns"
        " WHERE table_schema = 'public' AND table_name = %s ORDER BY ordinal_position",
        (table,),
    ).fetchall()
    names, expressions = [], []
    for name, data_type in rows:
        if name in ("id", "exported_at"):  # their defaults: a new id, the time of the load
            continue
        if name == "nid" or name.endswith("_nid"):
            expression = f"{name} + %(day)s::bigint * {NID_STRIDE}"
        elif data_type == "timestamp with time zone":
            expression = f"{name} - %(day)s * interval '1 day'"
        elif data_type == "date":
            expression = f"{name} - %(day)s::int"
        elif name == "kpei_reff":
            expression = f"{name} || '-H' || %(day)s::text"
        elif name == "src_life":  # append rows' unique source: (topic, life, partition, offset)
            expression = "%(day)s::int + 1"
        else:
            expression = name
        names.append(name)
        expressions.append(expression)
    return names, expressions


def preload(seed: Settings, target: Settings, rows_wanted: int) -> dict[str, Any]:
    """Copies the seed's history tables into ``target``, a day earlier each time, until it holds
    ``rows_wanted`` rows; reference tables are copied once. Returns rows per table and seconds."""
    started = time.monotonic()
    with psycopg.connect(seed.conninfo()) as src, psycopg.connect(target.conninfo()) as dst:
        for spec in FLUSH_ORDER:
            if spec.table not in HISTORY_TABLES:  # as they are; ids from the target's own sequences
                names, _ = _shifted_columns(src, spec.table)
                with (
                    src.cursor().copy(f"COPY {spec.table} ({', '.join(names)}) TO STDOUT") as out,
                    dst.cursor().copy(f"COPY {spec.table} ({', '.join(names)}) FROM STDIN") as into,
                ):
                    for data in out:
                        into.write(data)
        dst.commit()
        per_day = 0
        shifted = {}
        for table in HISTORY_TABLES:
            count = src.execute(f"SELECT count(*) FROM {table}").fetchone()
            per_day += int(count[0]) if count else 0
            shifted[table] = _shifted_columns(src, table)
        days = max(1, -(-rows_wanted // per_day))
        for day in range(1, days + 1):
            for table in HISTORY_TABLES:  # parents first: orders, trades, then their children
                names, expressions = shifted[table]
                select = f"COPY (SELECT {', '.join(expressions)} FROM {table}) TO STDOUT"
                with (
                    src.cursor().copy(select, {"day": day}) as out,
                    dst.cursor().copy(f"COPY {table} ({', '.join(names)}) FROM STDIN") as into,
                ):
                    for data in out:
                        into.write(data)
            dst.commit()
            if day % 50 == 0:
                print(f"  preload: {day} of {days} days", flush=True)
    loaded_s = time.monotonic() - started
    with psycopg.connect(target.conninfo(), autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
        counts = {
            spec.table: int(conn.execute(f"SELECT count(*) FROM {spec.table}").fetchone()[0])  # type: ignore[index]
            for spec in FLUSH_ORDER
        }
    return {"rows": counts, "days": days, "load_s": loaded_s, "total_s": time.monotonic() - started}


# -- reports ---------------------------------------------------------------------------


def report_times(settings: Settings) -> dict[str, Any]:
    """Each report as ``pme-exporter report NAME`` reads it, best of three: every row of the
    aggregating reports, the first 100 rows of the listing ones; plain and (where it has
    one) materialized. First the refresh of every materialized report, timed."""
    times: dict[str, Any] = {}
    with psycopg.connect(settings.conninfo(), autocommit=True) as conn:
        started = time.perf_counter()
        stored = reports.refresh(conn)
        times["refresh_all_ms"] = (time.perf_counter() - started) * 1000
        times["refresh_rows"] = sum(stored.values())
        for report in reports.REPORTS:
            entry: dict[str, float] = {}
            limit = None if report.materialized else 100
            for label, live in (("plain", True), ("materialized", False)):
                if label == "materialized" and not report.materialized:
                    continue
                best, rows = float("inf"), 0
                for _ in range(3):
                    started = time.perf_counter()
                    _columns, fetched = reports.fetch(conn, report, reports.Filters(limit=limit, live=live))
                    best = min(best, time.perf_counter() - started)
                    rows = len(fetched)
                entry[f"{label}_ms"] = best * 1000
                entry["rows"] = rows
            times[report.name] = entry
    return times


# -- soak ------------------------------------------------------------------------------


def stream(count: int, seed: int) -> Iterator[tuple[bytes | None, bytes | None]]:
    orders = int(count / EVENTS_PER_ORDER) + 100
    for i, event in enumerate(trading_day(orders, seed)):
        if i >= count:
            return
        yield event


def produce_stream(bootstrap: str, topic: str, count: int, seed: int) -> None:
    """Produces ``count`` generated events without holding them: the soak is larger than memory."""
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 20,
            "batch.size": 1_000_000,
            "queue.buffering.max.messages": 500_000,
            "compression.type": "lz4",
            "enable.idempotence": True,
        }
    )
    failures: list[str] = []

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            failures.append(str(err))

    for key, value in stream(count, seed):
        while True:
            try:
                producer.produce(topic, key=key, value=value, on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    if producer.flush(120) or failures:
        raise RuntimeError(f"produce failed: {failures[:3]}")


_TABLE_STATS = """
SELECT relname, n_live_tup, n_dead_tup, autovacuum_count, autoanalyze_count,
       pg_table_size(relid), pg_indexes_size(relid)
FROM pg_stat_user_tables WHERE relname = ANY(%s)"""


def table_stats(conn: psycopg.Connection[Any]) -> dict[str, dict[str, int]]:
    tables = [spec.table for spec in FLUSH_ORDER]
    return {
        name: {
            "live": live,
            "dead": dead,
            "autovacuums": vacuums,
            "autoanalyzes": analyzes,
            "table_bytes": table_bytes,
            "index_bytes": index_bytes,
        }
        for name, live, dead, vacuums, analyzes, table_bytes, index_bytes in conn.execute(
            _TABLE_STATS, (tables,)
        )
    }


def soak(settings: Settings, topic: str, total: int, step: int, timeout_s: float) -> dict[str, Any]:
    """One worker through the topic; a sample each ``step`` events exported."""
    s = settings.replace(kafka_topic=topic, kafka_group_id=f"soak-{uuid.uuid4().hex[:8]}", metrics_port=0)
    samples: list[dict[str, Any]] = []
    progress = Progress(s.conninfo(), topic)
    proc = subprocess.Popen([sys.executable, "-m", "pme_exporter", "run"], env=exporter_env(s))
    started = time.monotonic()
    next_mark = step
    peak_since = 0.0
    try:
        with psycopg.connect(s.conninfo(), autocommit=True) as conn:
            wal_at_start = conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]  # type: ignore[index]
            last_t, last_done, last_wal = 0.0, 0, wal_at_start
            while True:
                if time.monotonic() - started > timeout_s:
                    raise RuntimeError(
                        f"the soak exported {last_done} of {total} events in {timeout_s:.0f} s"
                    )
                if proc.poll() is not None:
                    raise RuntimeError(f"the soak's worker exited with {proc.returncode}")
                done = progress()
                rss_now = current_rss_mb(proc.pid)
                peak_since = max(peak_since, rss_now)
                if done >= min(next_mark, total):
                    now = time.monotonic() - started
                    wal = conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]  # type: ignore[index]
                    wal_bytes = conn.execute("SELECT pg_wal_lsn_diff(%s, %s)", (wal, last_wal)).fetchone()[0]  # type: ignore[index]
                    samples.append(
                        {
                            "events": done,
                            "seconds": now,
                            "events_per_s": (done - last_done) / max(now - last_t, 1e-9),
                            "peak_rss_mb": peak_since,
                            "peak_rss_mb_so_far": peak_rss_mb(proc.pid),
                            "wal_bytes_per_event": float(wal_bytes) / max(done - last_done, 1),
                            "tables": table_stats(conn),
                        }
                    )
                    last = samples[-1]
                    print(
                        f"  soak: {done:>11,} events  {last['events_per_s']:>8,.0f} events/s"
                        f"  RSS {last['peak_rss_mb']:.0f} MB  WAL {last['wal_bytes_per_event']:.0f} B/event",
                        flush=True,
                    )
                    last_t, last_done, last_wal, peak_since = now, done, wal, 0.0
                    next_mark = (done // step + 1) * step
                    if done >= total:
                        break
                time.sleep(0.2)
        cpu = cpu_seconds([proc.pid])
    finally:
        proc.terminate()
        proc.wait(60)
        progress.close()
    return {"samples": samples, "elapsed_s": time.monotonic() - started, "exporter_cpu_s": cpu}


def current_rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def soak_figures(samples: list[dict[str, Any]]) -> dict[str, float]:
    """First tenth against last tenth (at least one sample each)."""
    tenth = max(1, len(samples) // 10)
    first, last = samples[:tenth], samples[-tenth:]
    rate_first = sum(s["events_per_s"] for s in first) / len(first)
    rate_last = sum(s["events_per_s"] for s in last) / len(last)
    rss_after_first = max(s["peak_rss_mb"] for s in first)
    rss_peak = max(s["peak_rss_mb"] for s in samples)
    end = samples[-1]["tables"]
    # Tables of at least 1,000 rows: autovacuum leaves smaller ones alone (its threshold is
    # 50 rows plus 20%), so ten reference rows updated once read as 100% dead.
    shares = {t: v["dead"] / v["live"] for t, v in end.items() if v["live"] >= 1_000}
    during = [
        v["dead"] / v["live"] for sample in samples for v in sample["tables"].values() if v["live"] >= 1_000
    ]
    return {
        "soak_first_tenth_events_per_s": rate_first,
        "soak_last_tenth_events_per_s": rate_last,
        "soak_last_to_first_throughput": rate_last / rate_first,
        "soak_rss_growth": max(s["peak_rss_mb"] for s in last) / rss_after_first - 1,
        "soak_peak_rss_mb": rss_peak,
        "max_dead_tuple_share": max(shares.values()) if shares else 0.0,
        "max_dead_tuple_share_during": max(during) if during else 0.0,
        "soak_wal_bytes_per_event": sum(s["wal_bytes_per_event"] for s in samples) / len(samples),
        "soak_autovacuums": sum(v["autovacuums"] for v in end.values()),
    }


def plot(path: str, samples: list[dict[str, Any]]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install -e '.[bench]'") from None
    millions = [s["events"] / 1e6 for s in samples]
    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(9, 9), sharex=True)
    ax1.plot(millions, [s["events_per_s"] for s in samples], marker=".")
    ax1.set_ylabel("events/s (per step)")
    ax1.set_ylim(bottom=0)
    ax2.plot(millions, [s["peak_rss_mb"] for s in samples], marker=".")
    ax2.set_ylabel("worker peak RSS (MB)")
    ax2.set_ylim(bottom=0)
    for table in ("orders", "trades", "contracts", "order_acks"):
        ax3.plot(
            millions,
            [100 * s["tables"][table]["dead"] / max(s["tables"][table]["live"], 1) for s in samples],
            label=table,
        )
    ax3.set_ylabel("dead tuples (% of live)")
    ax3.set_xlabel("million events exported")
    ax3.legend()
    fig.tight_layout()
    fig.savefig(path)


# -- main ------------------------------------------------------------------------------


def on_top(base: Settings, preloaded: Settings, count: int, partitions: int, workdir: Path) -> dict[str, Any]:
    """The same events into the preloaded database and into an empty one, each beside its ceiling."""
    batch = events(count, seed=1)
    topic = f"scale-{uuid.uuid4().hex[:8]}"
    create_topic(base.kafka_url, topic, partitions)
    located = produce_all(base.kafka_url, topic, batch)
    figures: dict[str, Any] = {}
    runs = (
        ("empty", fresh_database(base, "pme_scale_empty")),
        ("preloaded_refreshing", clone_database(preloaded, "pme_scale_refreshing")),
        ("preloaded", preloaded),
    )
    for label, settings in runs:
        if label == "preloaded_refreshing":  # the same run while every report is refreshed, again and again
            with RefreshingMeanwhile(settings) as refreshing:
                run = end_to_end(settings, topic, count, 1, timeout_s=900)
            drop_database(base.conninfo(), settings.db_name)  # a copy of 20M rows: space back
            figures[label] = {
                "events_per_s": run["events_per_s"],
                "refreshes": refreshing.count,
                "refresh_mean_s": refreshing.mean_s(),
            }
            print(
                f"  {label}: {run['events_per_s']:>9,.0f} events/s while refreshing"
                f" ({refreshing.count} refreshes of every report, {refreshing.mean_s():.1f} s each)",
                flush=True,
            )
            continue
        ceiling_db = (
            fresh_database(base, "pme_scale_ceiling")
            if label == "empty"
            else clone_database(preloaded, "pme_scale_ceiling")
        )
        ceiling, _cpu = pg_ceiling(ceiling_db, batch, located, settings.max_batch_events, workdir)
        drop_database(base.conninfo(), ceiling_db.db_name)
        run = end_to_end(settings, topic, count, 1, timeout_s=900)
        figures[label] = {
            "events_per_s": run["events_per_s"],
            "pg_ceiling_events_per_s": ceiling,
            "ratio_to_pg_ceiling": run["events_per_s"] / ceiling,
            "exporter_cpu_us_per_event": run["cpu_s"]["exporter"] / count * 1e6,
            "postgres_cpu_us_per_event": run["cpu_s"]["postgres"] / count * 1e6,
            "peak_rss_mb": run["peak_rss_mb"],
        }
        print(
            f"  {label:>9}: {run['events_per_s']:>9,.0f} events/s, ceiling {ceiling:>9,.0f}"
            f" ({figures[label]['ratio_to_pg_ceiling']:.2f}x)",
            flush=True,
        )
    return figures


# An analyst's query over a year of ledger: every contract with its order, by account and
# instrument (a hash join of the two largest tables).
ANALYST_QUERY = """
SELECT o.account_code, c.instrument_code, count(*), sum(c.quantity), avg(c.fee_val_daily)
FROM contracts c JOIN orders o ON o.nid = c.order_nid
GROUP BY 1, 2 ORDER BY 4 DESC"""


class AnalystMeanwhile:
    """Runs ANALYST_QUERY again and again on ``conninfo`` (each bounded by what is left of
    ``seconds``) while the block runs; cancelled when it ends."""

    def __init__(self, conninfo: str, seconds: float) -> None:
        self._conninfo = conninfo
        self._seconds = seconds
        self._stop = threading.Event()
        self._conn: psycopg.Connection[Any] | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.completed = 0
        self.failures: list[str] = []

    def _run(self) -> None:
        deadline = time.monotonic() + self._seconds
        with psycopg.connect(self._conninfo, autocommit=True) as conn:
            self._conn = conn
            while not self._stop.is_set() and time.monotonic() < deadline:
                left_ms = int((deadline - time.monotonic()) * 1000)
                try:
                    conn.execute(f"SET statement_timeout = {max(left_ms, 1)}")
                    conn.execute(ANALYST_QUERY).fetchall()
                    self.completed += 1
                except psycopg.Error as exc:
                    if not self._stop.is_set() and exc.sqlstate != "57014":  # not our own cancel
                        self.failures.append(f"{exc.sqlstate}: {exc.diag.message_primary}")

    def __enter__(self) -> AnalystMeanwhile:
        self._thread.start()
        time.sleep(2.0)  # the query is under way when the worker starts
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        if self._conn is not None:
            self._conn.cancel_safe(timeout=5)
        self._thread.join(60)


def analyst(
    base: Settings, preloaded: Settings, count: int, partitions: int, seconds: float
) -> dict[str, Any]:
    """The same events into copies of the preloaded database while an analyst's query runs,
    first on the primary, then on a streaming replica (deploy/local/up --replica)."""
    batch = events(count, seed=4)
    topic = f"scale-analyst-{uuid.uuid4().hex[:8]}"
    create_topic(base.kafka_url, topic, partitions)
    produce_all(base.kafka_url, topic, batch)
    figures: dict[str, Any] = {}
    up = run_up(args=("--replica",))
    if up.returncode != 0:
        raise RuntimeError(f"deploy/local/up --replica failed:\n{up.stderr[-3000:]}")
    try:
        replica_url = parse_exports(up.stdout)["PME_REPORT_DATABASE_URL"]
        on_replica = urlunsplit(urlsplit(replica_url)._replace(path=f"/{preloaded.db_name}"))
        for label, conninfo in (("primary", preloaded.conninfo()), ("replica", on_replica)):
            target = clone_database(preloaded, f"pme_scale_analyst_{label}")
            with AnalystMeanwhile(conninfo, seconds) as query:
                run = end_to_end(target, topic, count, 1, timeout_s=900)
            drop_database(base.conninfo(), target.db_name)
            figures[label] = {
                "events_per_s": run["events_per_s"],
                "analyst_queries_completed": query.completed,
                "analyst_query_failures": query.failures,
            }
            print(
                f"  analyst on the {label}: {run['events_per_s']:>9,.0f} events/s"
                f" ({query.completed} queries completed, {len(query.failures)} failed)",
                flush=True,
            )
    finally:
        subprocess.run([str(DOWN), "replica"], capture_output=True, timeout=120)
    return figures


class RefreshingMeanwhile:
    """Refreshes every materialized report over and over in a thread, as an operator's
    scheduler might, while the block runs."""

    def __init__(self, settings: Settings) -> None:
        self._conninfo = settings.conninfo()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.count = 0
        self._seconds = 0.0

    def _run(self) -> None:
        with psycopg.connect(self._conninfo, autocommit=True) as conn:
            while not self._stop.is_set():
                started = time.monotonic()
                reports.refresh(conn)
                self._seconds += time.monotonic() - started
                self.count += 1

    def mean_s(self) -> float:
        return self._seconds / self.count if self.count else 0.0

    def __enter__(self) -> RefreshingMeanwhile:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(600)


def clone_database(source: Settings, name: str) -> Settings:
    """A copy of ``source`` made by the server (CREATE DATABASE ... TEMPLATE): the ceiling's own
    preloaded tables, without a second preload."""
    with psycopg.connect(
        source.replace(db_name="postgres", database_url=None).conninfo(), autocommit=True
    ) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        # FILE_COPY: a few WAL records rather than the whole copy, which a replica would replay.
        c.execute(f'CREATE DATABASE "{name}" TEMPLATE "{source.db_name}" STRATEGY FILE_COPY')
    return source.replace(db_name=name, database_url=None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preload-rows", type=int, default=20_000_000)
    parser.add_argument("--events", type=int, default=500_000, help="events exported on top of each database")
    parser.add_argument("--soak-events", type=int, default=20_000_000)
    parser.add_argument("--soak-step", type=int, default=1_000_000, help="events between two soak samples")
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--rate", type=int, default=5_000, help="events/s of the latency runs")
    parser.add_argument("--latency-seconds", type=float, default=15.0)
    parser.add_argument(
        "--analyst-seconds",
        type=float,
        default=120.0,
        help="how long the analyst's query may run beside the worker, on the primary then on a replica; 0: skip",
    )
    parser.add_argument("--json", dest="json_path")
    parser.add_argument("--plot", dest="plot_path")
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes: checks the harness, measures nothing useful"
    )
    args = parser.parse_args(argv)
    if min(args.preload_rows, args.events, args.soak_events, args.soak_step, args.partitions, args.rate) < 1:
        parser.error("every size, --partitions and --rate must be positive")
    if args.latency_seconds <= 0:
        parser.error("--latency-seconds must be positive")
    if args.analyst_seconds < 0:
        parser.error("--analyst-seconds must be 0 (skip) or positive")
    seed_events = SEED_EVENTS
    if args.quick:
        args.preload_rows, args.events, args.soak_events, args.soak_step = 200_000, 20_000, 40_000, 10_000
        args.rate, args.latency_seconds, seed_events = 500, 2.0, 20_000
        args.analyst_seconds = min(args.analyst_seconds, 10.0)

    base = Settings.from_env(stack_env())
    results: dict[str, Any] = {}
    started = time.monotonic()
    print(
        f"pme-exporter scale benchmark: {args.preload_rows:,} rows preloaded, {args.soak_events:,} soaked",
        flush=True,
    )

    seed_db = fresh_database(base, "pme_scale_seed")
    export_seed(seed_db, seed_events)
    preloaded = fresh_database(base, "pme_scale_preloaded")
    loaded = preload(seed_db, preloaded, args.preload_rows)
    total_rows = sum(loaded["rows"].values())
    print(f"  preloaded {total_rows:,} rows ({loaded['days']} days) in {loaded['total_s']:.0f} s", flush=True)
    results["preload"] = loaded
    results["preload_rows"] = total_rows

    results["reports"] = report_times(preloaded)
    for name, entry in results["reports"].items():
        if isinstance(entry, dict):
            shown = "  ".join(f"{k} {v:,.1f}" for k, v in entry.items())
            print(f"  report {name:<20} {shown}", flush=True)
    print(
        f"  refresh of every materialized report: {results['reports']['refresh_all_ms']:,.0f} ms", flush=True
    )

    with tempfile.TemporaryDirectory(prefix="pme-scale-") as workdir:
        top = on_top(base, preloaded, args.events, args.partitions, Path(workdir))
    results["on_top"] = top
    results["preloaded_to_empty_ratio"] = top["preloaded"]["events_per_s"] / top["empty"]["events_per_s"]
    results["refreshing_to_plain_throughput"] = (
        top["preloaded_refreshing"]["events_per_s"] / top["preloaded"]["events_per_s"]
    )
    results["preloaded_ratio_to_pg_ceiling"] = top["preloaded"]["ratio_to_pg_ceiling"]
    if args.analyst_seconds > 0:
        seen = analyst(base, preloaded, args.events, args.partitions, args.analyst_seconds)
        results["analyst"] = seen
        for where in ("primary", "replica"):
            results[f"analyst_on_{where}_to_plain_throughput"] = (
                seen[where]["events_per_s"] / top["preloaded"]["events_per_s"]
            )
    results["empty_ratio_to_pg_ceiling"] = top["empty"]["ratio_to_pg_ceiling"]

    soak_db = fresh_database(base, "pme_scale_soak")
    # After the phases above the machine still writes back gigabytes; the latency runs wait.
    results["soak_latency_start_quiesce_s"] = quiesce(base)
    results["soak_latency_start"] = latency(
        base, args.rate, args.latency_seconds, args.partitions, into=soak_db
    )
    topic = f"soak-{uuid.uuid4().hex[:8]}"
    create_topic(base.kafka_url, topic, args.partitions)
    produced_at = time.monotonic()
    produce_stream(base.kafka_url, topic, args.soak_events, seed=3)
    results["soak_produce_events_per_s"] = args.soak_events / (time.monotonic() - produced_at)
    servers = CpuMeter()
    servers.start()
    run = soak(soak_db, topic, args.soak_events, args.soak_step, timeout_s=7200)
    cpu = servers.stop(clients_gone=False)
    results["soak"] = run
    results.update(soak_figures(run["samples"]))
    results["soak_events_per_s"] = args.soak_events / run["elapsed_s"]
    results["soak_exporter_cpu_us_per_event"] = run["exporter_cpu_s"] / args.soak_events * 1e6
    results["soak_postgres_cpu_us_per_event"] = cpu["postgres"] / args.soak_events * 1e6
    results["soak_latency_end_quiesce_s"] = quiesce(base)
    results["soak_latency_end"] = latency(
        base, args.rate, args.latency_seconds, args.partitions, into=soak_db
    )
    results["elapsed_s"] = time.monotonic() - started

    headline = (
        "preloaded_to_empty_ratio",
        "refreshing_to_plain_throughput",
        "analyst_on_primary_to_plain_throughput",
        "analyst_on_replica_to_plain_throughput",
        "soak_last_to_first_throughput",
        "soak_rss_growth",
        "soak_peak_rss_mb",
        "max_dead_tuple_share",
        "soak_wal_bytes_per_event",
        "soak_events_per_s",
    )
    for key in headline:
        if key in results:
            print(f"  {key:<32} {results[key]:,.3f}")
    for phase in ("soak_latency_start", "soak_latency_end"):
        r = results[phase]
        print(
            f"  {phase:<32} p50 {r['p50_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms (Kafka p99 {r['kafka_p99_ms']:.0f} ms)"
        )
    report = {
        "results": results,
        "settings": vars(args) | {"seed_events": seed_events},
        "machine": machine(base),
        "measured_at": datetime.now(UTC).isoformat(),
    }
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(report, indent=2, default=str))
    if args.plot_path:
        plot(args.plot_path, run["samples"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
