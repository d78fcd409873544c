"""/metrics during a real run, checked against what happened; the container's entrypoint, run here."""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import psycopg

from pme_exporter.decode import Decoder
from pme_exporter.devtools.generator import ends_of, publish, trading_day
from pme_exporter.devtools.stack import exporter_env
from pme_exporter.errors import DecodeError, ValueRefused
from pme_exporter.schema import BY_TABLE, TABLES
from pme_exporter.settings import Settings
from tests.helpers import ExporterProcess, http_answer, http_status, on_topic, scrape, total, wait_exported
from tests.stack import REPO, Stack


def dockerfile_command() -> list[str]:
    """ENTRYPOINT + CMD of deploy/Dockerfile, exec form."""
    text = (REPO / "deploy" / "Dockerfile").read_text()
    entrypoint = re.findall(r"^ENTRYPOINT (\[.*\])$", text, re.M)[-1]
    cmd = re.findall(r"^CMD (\[.*\])$", text, re.M)[-1]
    return [*json.loads(entrypoint), *json.loads(cmd)]


def test_metrics_match_what_happened_in_a_real_run(
    stack: Stack, settings: Settings, make_topic: Callable[[int], str], free_port: int, tmp_path: Path
) -> None:
    topic = make_topic(3)
    located = publish(
        stack.kafka_url, topic, [(None, k, v) for k, v in trading_day(400, seed=9, invalid=True)]
    )
    produced: Counter[str] = Counter()
    planted = 0
    decoder = Decoder()
    for _, _, value in located:
        if value is None:
            continue
        try:
            produced[decoder.decode(value)[0].event_type] += 1
        except ValueRefused as refused:  # an event of its type, refused by its column's type
            produced[BY_TABLE[refused.table].event_type] += 1
        except DecodeError:
            planted += 1
    command = dockerfile_command()
    assert command == ["pme-exporter", "run"]
    executable = shutil.which(command[0], path=str(Path(sys.executable).parent))
    assert executable, "the entrypoint is not installed beside this Python"
    s = on_topic(settings, topic, metrics_port=free_port)
    log = (tmp_path / "exporter.log").open("wb")
    proc = subprocess.Popen(
        [executable, *command[1:]], env=exporter_env(s), stdout=log, stderr=subprocess.STDOUT
    )
    try:
        wait_exported(s.conninfo(), topic, ends_of(located))
        deadline = time.monotonic() + 30
        while True:
            samples = scrape(free_port)
            lag = total(samples, "pme_exporter_consumer_lag_messages")
            lag_parts = {ls for (n, ls) in samples if n == "pme_exporter_consumer_lag_messages"}
            if lag == 0 and len(lag_parts) == 3 and total(samples, "pme_exporter_consumer_lag_seconds") == 0:
                break
            assert time.monotonic() < deadline, f"lag did not reach 0: {lag}"
            time.sleep(0.5)
        assert http_status(free_port, "/healthz") == 200 and http_status(free_port, "/readyz") == 200
        with psycopg.connect(s.conninfo()) as conn:
            counts: dict[str, int] = {}
            for spec in TABLES:
                row = conn.execute(f"SELECT count(*) FROM {spec.table}").fetchone()
                assert row is not None
                counts[spec.table] = int(row[0])
            db_dead = conn.execute(
                "SELECT stage, count(*) FROM exporter_dead_letters GROUP BY stage"
            ).fetchall()
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
        log.close()
    assert code == 0, (tmp_path / "exporter.log").read_text()[-3000:]
    # Events by type: produced minus the planted bad ones (the DB-refused instrument counts as consumed).
    for event_type, n in produced.items():
        assert total(samples, "pme_exporter_events_consumed_total", event_type=event_type) == n, event_type
    # Rows by table: a fresh database, so every stored row was inserted once.
    for table, n in counts.items():
        assert total(samples, "pme_exporter_rows_written_total", table=table, outcome="inserted") == n, table
    dead_by_stage: dict[str, int] = dict(db_dead)
    assert (
        total(samples, "pme_exporter_dead_letters_total", stage="decode")
        == dead_by_stage["decode"]
        == planted
    )
    assert (
        total(samples, "pme_exporter_dead_letters_total", stage="database") == dead_by_stage["database"] == 1
    )
    assert total(samples, "pme_exporter_tombstones_total") == 1
    assert total(samples, "pme_exporter_last_flush_timestamp_seconds") > time.time() - 120
    assert total(samples, "pme_exporter_flush_duration_seconds_count", phase="commit") >= 1


def _rss_kb(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M).group(1))  # type: ignore[union-attr]


def test_two_thousand_idle_connections_leave_readyz_answering_and_memory_flat(
    settings: Settings, make_topic: Callable[[int], str], free_port: int, tmp_path: Path
) -> None:
    topic = make_topic(1)
    worker = ExporterProcess(on_topic(settings, topic, metrics_port=free_port), tmp_path / "w.log")
    try:
        worker.wait_started()
        deadline = time.monotonic() + 30
        while http_status(free_port, "/readyz") != 200:
            assert time.monotonic() < deadline, worker.log_tail()
            time.sleep(0.2)
        before = _rss_kb(worker.proc.pid)
        idle = []
        try:
            for _ in range(2000):
                idle.append(socket.create_connection(("127.0.0.1", free_port), timeout=5))
            time.sleep(0.5)  # every one accepted and waiting
            started = time.monotonic()
            status, _ = http_answer(free_port, "/readyz", timeout_s=1.0)
            answered_in = time.monotonic() - started
            grown_mb = (_rss_kb(worker.proc.pid) - before) / 1024
        finally:
            for conn in idle:
                conn.close()
        assert status == 200, worker.log_tail()
        assert answered_in < 1.0
        assert grown_mb < 20, f"RSS grew by {grown_mb:.1f} MB"
        assert http_status(free_port, "/healthz") == 200  # and after the flood, at once
    finally:
        code = worker.terminate()
    assert code == 0, worker.log_tail()
