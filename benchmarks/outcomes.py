"""Where a backlog's rows go: one worker exports a generated day, and its own counters say
how many rows each table inserted, updated, left stale, carried or parked, and how the
flush time split into COPY, upserts and commit.

    python benchmarks/outcomes.py --events 1000000 --lanes 2

It explains the harness's figures rather than adding to them: for instance, a contract
keyed apart from its trade lands in another partition, often in another lane, and is
held back in Python while its trade is in that lane's unwritten batch (counted as held),
or carried to a later batch (COPYed again) when its trade is nowhere yet.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import uuid
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from pme_exporter.devtools.generator import create_topic
from pme_exporter.settings import Settings
from throughput import (
    Progress,
    events,
    exporter_env,
    free_port,
    fresh_database,
    produce_all,
    scrape,
    stack_env,
)


def export_and_count(events_total: int, lanes: int, partitions: int, timeout_s: float) -> dict[str, Any]:
    base = Settings.from_env(stack_env())
    batch = events(events_total, seed=1)
    topic = f"bench-outcomes-{uuid.uuid4().hex[:8]}"
    create_topic(base.kafka_url, topic, partitions)
    produce_all(base.kafka_url, topic, batch)
    settings = fresh_database(base, "pme_bench_outcomes").replace(
        kafka_topic=topic, kafka_group_id=topic, metrics_port=free_port(), flush_lanes=lanes
    )
    worker = subprocess.Popen([sys.executable, "-m", "pme_exporter", "run"], env=exporter_env(settings))
    progress = Progress(settings.conninfo(), topic)
    started = time.monotonic()
    try:
        while progress() < len(batch):
            if worker.poll() is not None:
                raise RuntimeError(f"the worker exited with {worker.returncode}")
            if time.monotonic() - started > timeout_s:
                raise RuntimeError(f"not exported within {timeout_s:.0f}s")
            time.sleep(0.2)
        elapsed = time.monotonic() - started
        counts = counted(scrape(settings.metrics_port))
    finally:
        progress.close()
        worker.terminate()
        worker.wait(60)
    return {"events": len(batch), "lanes": lanes, "elapsed_s": elapsed, **counts}


def counted(metrics_text: str) -> dict[str, Any]:
    rows: dict[str, dict[str, float]] = {}
    flush_s: dict[str, float] = {}
    batches = batch_events = held = 0.0
    short_path: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == "pme_exporter_rows_written_total" and sample.value:
                rows.setdefault(sample.labels["table"], {})[sample.labels["outcome"]] = sample.value
            elif sample.name == "pme_exporter_flush_duration_seconds_sum":
                flush_s[sample.labels["phase"]] = sample.value
            elif sample.name == "pme_exporter_batch_size_events_count":
                batches = sample.value
            elif sample.name == "pme_exporter_batch_size_events_sum":
                batch_events = sample.value
            elif sample.name == "pme_exporter_children_held_total":
                held = sample.value
            elif sample.name == "pme_exporter_append_short_path_rows_total":
                short_path.setdefault(sample.labels["table"], {})[sample.labels["result"]] = sample.value
    return {
        "rows": rows,
        "flush_seconds": flush_s,
        "batches": batches,
        "batched_events": batch_events,
        "children_held": held,
        "append_short_path": short_path,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--lanes", type=int, default=2)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds the export may take")
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args(argv)
    if min(args.events, args.lanes, args.partitions) < 1 or args.timeout <= 0:
        parser.error("--events, --lanes, --partitions and --timeout must be positive")
    result = export_and_count(args.events, args.lanes, args.partitions, args.timeout)
    print(f"{result['events']:,} events, {result['lanes']} lanes, exported in {result['elapsed_s']:.1f} s")
    print(
        f"{result['batches']:.0f} batches holding {result['batched_events']:,.0f} events (carried ones again)"
    )
    for table, outcomes in sorted(result["rows"].items()):
        print(f"  {table:15s} " + ", ".join(f"{k} {v:,.0f}" for k, v in sorted(outcomes.items())))
    print(f"children held in Python for another lane's parents: {result['children_held']:,.0f}")
    for table, ways in sorted(result["append_short_path"].items()):
        print(
            f"  {table:15s} straight into the table "
            + ", ".join(f"{k} {v:,.0f}" for k, v in sorted(ways.items()))
        )
    print("flush seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in sorted(result["flush_seconds"].items())))
    if args.json_path:
        with open(args.json_path, "w") as out:
            json.dump(result, out, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
