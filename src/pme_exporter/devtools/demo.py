"""``pme-exporter demo``: a generated trading day through the exporter on the local stack.

Starts the stack when no servers are given, publishes the day (with a few
planted invalid messages) to a fresh topic, exports it into a fresh database
``pme_demo``, waits until every offset is exported, then prints what landed.
"""

from __future__ import annotations

import os
import sys
import threading
import time

import psycopg
from psycopg import sql

from pme_exporter.devtools.databases import create_database
from pme_exporter.devtools.generator import create_topic, produce, trading_day
from pme_exporter.devtools.stack import given_servers, servers_env, stored_offsets
from pme_exporter.errors import EXIT_FAILURE, EXIT_OK, reason_of
from pme_exporter.ops import reports
from pme_exporter.schema import TABLES
from pme_exporter.settings import Settings
from pme_exporter.worker import run_exporter

DEMO_DB = "pme_demo"
CATCH_UP_TIMEOUT_S = 300.0

# Printed through the same code as ``pme-exporter report``.
DEMO_REPORTS = (("open_borrowing", 5), ("order_book", None))


def run_demo(settings: Settings, *, orders: int, seed: int) -> int:
    if given_servers(os.environ) is None:
        print("Starting the local stack (deploy/local/up)...", flush=True)
    base = Settings.from_env(servers_env())
    topic = f"pme-ledger-demo-{int(time.time())}"
    create_database(base.conninfo(), DEMO_DB, replace=True)
    # No probes: the demo's worker lives for a minute, and a port in use would only get in the way.
    demo = base.replace(
        kafka_topic=topic, kafka_group_id=topic, db_name=DEMO_DB, database_url=None, metrics_port=0
    )

    create_topic(demo.kafka_url, topic, partitions=3)
    started = time.monotonic()
    ends = produce(demo.kafka_url, topic, trading_day(orders, seed, invalid=True))
    produced = sum(ends.values())
    print(f"Produced {produced} events to {topic} in {time.monotonic() - started:.1f} s", flush=True)

    stop = threading.Event()
    failure: list[BaseException] = []

    def work() -> None:
        try:
            run_exporter(demo, stop)
        except BaseException as exc:
            failure.append(exc)

    worker = threading.Thread(target=work, name="pme-demo-exporter")
    started = time.monotonic()
    worker.start()
    caught_up = _wait_caught_up(demo, topic, ends, failure)
    elapsed = time.monotonic() - started
    stop.set()
    worker.join()
    if failure:
        print(f"The exporter stopped: {reason_of(failure[0])}")
        return EXIT_FAILURE
    if not caught_up:
        print(f"The exporter did not catch up within {CATCH_UP_TIMEOUT_S:.0f} s")
        return EXIT_FAILURE
    print(
        f"Exported {produced} events in {elapsed:.1f} s ({produced / elapsed:,.0f} events/s incl. start-up)\n"
    )
    _print_report(demo)
    print(
        f"\nThe demo's rows are in database {DEMO_DB}, from topic {topic}. To operate on them:\n"
        '  eval "$(deploy/local/up)"\n'
        f"  export DB_NAME={DEMO_DB} KAFKA_TOPIC={topic} PME_GROUP_ID={topic}\n"
        "  pme-exporter status\n"
        "  pme-exporter verify\n"
        "  pme-exporter report order_book"
    )
    return EXIT_OK


def _wait_caught_up(
    settings: Settings, topic: str, ends: dict[int, int], failure: list[BaseException]
) -> bool:
    deadline = time.monotonic() + CATCH_UP_TIMEOUT_S
    while time.monotonic() < deadline and not failure:
        time.sleep(0.5)
        if stored_offsets(settings.conninfo(), topic) == ends:
            return True
    return False


def _print_report(settings: Settings) -> None:
    with psycopg.connect(settings.conninfo(), autocommit=True) as conn:
        print("Rows per table:")
        for spec in TABLES:
            row = conn.execute(
                sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(spec.table))
            ).fetchone()
            print(f"  {spec.table:<15} {row[0] if row else 0:>8}")
        print("\nDead letters (stage, reason, error):")
        for stage, reason, error in conn.execute(
            'SELECT stage, reason, error FROM exporter_dead_letters ORDER BY partition, "offset"'
        ):
            print(f"  {stage:<9} {reason:<15} {error}")
        reports.refresh(conn)  # what `pme-exporter report --refresh` does
        for name, limit in DEMO_REPORTS:
            report = reports.find(name)
            columns, rows = reports.fetch(conn, report, reports.Filters(limit=limit))
            print(f"\n{report.title} (pme-exporter report {name}):", flush=True)
            reports.render(columns, rows, "table", sys.stdout)
