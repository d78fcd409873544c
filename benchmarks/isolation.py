"""How fast the sink isolates rows PostgreSQL refuses, measured on the real database.

    python benchmarks/isolation.py [--rows 20000] [--refused 10000] [--row-by-row-max N] [--json FILE]

Writes one batch of ``--rows`` orders, ``--refused`` of them spread evenly and
each with an account code that a CHECK constraint added for the run refuses
(SQLSTATE 23514: only PostgreSQL judges it, as with a unique clash; values too
long for their column are refused in Python before staging), through
``PostgresSink`` into a fresh database, and reports the time and the round
trips the write took, and how many dead letters it made.
``--row-by-row-max 1`` isolates by bisection alone, for comparison.
Brings up the local stack when DB_HOST is not given. Asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import orjson
import psycopg

from pme_exporter.buffers import Batch, InMemoryMessage
from pme_exporter.decode import Decoder
from pme_exporter.devtools.databases import create_database
from pme_exporter.devtools.stack import servers_env
from pme_exporter.migrate import migrate
from pme_exporter.settings import Settings
from pme_exporter.sink import ROW_BY_ROW_MAX, PostgresSink

BENCH_DB = "pme_bench_isolation"
REFUSED_ACCOUNT = "REFUSED"


def messages(rows: int, refused: int) -> list[InMemoryMessage]:
    every = rows / refused if refused else rows + 1
    bad = {int(i * every) for i in range(refused)}
    out = []
    for nid in range(rows):
        account = REFUSED_ACCOUNT if nid in bad else f"ACC{nid % 80:04d}"
        data = {"nid": nid, "account_code": account, "quantity": "100.00", "state": "S", "side": "BORR"}
        value = orjson.dumps({"type": "Order", "ts": "2025-11-28T09:00:00Z", "data": data})
        out.append(InMemoryMessage(value, 0, nid))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--refused", type=int, default=10_000)
    parser.add_argument("--row-by-row-max", type=int, default=ROW_BY_ROW_MAX)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if not 0 <= args.refused <= args.rows or args.rows < 1 or args.row_by_row_max < 1:
        parser.error("need 0 <= --refused <= --rows, --rows >= 1 and --row-by-row-max >= 1")
    base = Settings.from_env(os.environ if os.environ.get("DB_HOST") else servers_env())
    create_database(base.conninfo(), BENCH_DB, replace=True)
    settings = base.replace(db_name=BENCH_DB, database_url=None)
    migrate(settings.conninfo())
    with psycopg.connect(settings.conninfo(), autocommit=True) as conn:
        conn.execute(f"ALTER TABLE orders ADD CONSTRAINT refused CHECK (account_code <> '{REFUSED_ACCOUNT}')")
    batch = Batch(decoder=Decoder())
    batch.add(messages(args.rows, args.refused))  # type: ignore[arg-type]
    sink = PostgresSink(conninfo=settings.conninfo(), topic="bench", row_by_row_max=args.row_by_row_max)
    try:
        started = time.perf_counter()
        report = sink.write(batch)
        took = time.perf_counter() - started
    finally:
        sink.close(timeout_s=5)
    with psycopg.connect(settings.conninfo()) as conn:
        stored = conn.execute("SELECT count(*) FROM orders").fetchone()
    figures = {
        "rows": args.rows,
        "refused": args.refused,
        "row_by_row_max": args.row_by_row_max,
        "seconds": round(took, 3),
        "statements": report.statements,
        "dead_letters": len(report.dead_letters),
        "rows_stored": stored[0] if stored else 0,
    }
    for name, value in figures.items():
        print(f"  {name:<16} {value}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
