"""Reports read from a streaming replica (``deploy/local/up --replica``, PME_REPORT_DATABASE_URL)
equal the primary's once the replica has caught up."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from pme_exporter import cli
from pme_exporter.devtools.generator import create_topic, ends_of, publish, trading_day
from pme_exporter.devtools.stack import parse_exports, run_up
from pme_exporter.ops import reports
from pme_exporter.settings import Settings
from tests.helpers import ExporterThread, wait_exported
from tests.stack import Stack, stop_local


@pytest.fixture(scope="module")
def replica_url(stack: Stack) -> Iterator[str]:
    """The replica's URL that deploy/local/up --replica prints; stopped again afterwards."""
    if not stack.local:
        pytest.fail("the replica test needs the local stack (deploy/local/up --replica)")
    proc = run_up(args=("--replica",))
    assert proc.returncode == 0, proc.stderr[-4000:]
    printed = parse_exports(proc.stdout)
    assert {"KAFKA_URL", "DB_HOST", "PME_REPORT_DATABASE_URL"} <= set(printed), proc.stdout
    yield printed["PME_REPORT_DATABASE_URL"]
    stop_local("replica")


def _on_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def test_reports_through_the_replica_equal_the_primary_after_catch_up(
    replica_url: str,
    settings: Settings,
    stack: Stack,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    topic = f"test-replica-{uuid.uuid4().hex[:8]}"
    create_topic(stack.kafka_url, topic, 3)
    located = publish(stack.kafka_url, topic, ((None, k, v) for k, v in trading_day(400, seed=17)))
    s = settings.replace(kafka_topic=topic, kafka_group_id=topic)
    with ExporterThread(s):
        wait_exported(s.conninfo(), topic, ends_of(located))
    for name, value in s.to_env().items():
        monkeypatch.setenv(name, value)
    replica = _on_database(replica_url, s.db_name)
    monkeypatch.setenv("PME_REPORT_DATABASE_URL", replica)
    assert cli.main(["report", "--refresh"]) == 0  # written on the primary, even with a replica set
    capsys.readouterr()

    with psycopg.connect(s.conninfo(), autocommit=True) as primary:
        written = primary.execute("SELECT pg_current_wal_lsn()").fetchone()
        assert written is not None
    deadline = time.monotonic() + 60
    # The test's database may not be on the replica yet: wait on one that is.
    with psycopg.connect(_on_database(replica_url, "postgres"), autocommit=True) as conn:
        in_recovery = conn.execute("SELECT pg_is_in_recovery()").fetchone()
        assert in_recovery == (True,)  # really the standby
        while time.monotonic() < deadline:
            caught_up = conn.execute(
                "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (written[0],)
            ).fetchone()
            if caught_up == (True,):
                break
            time.sleep(0.1)
        else:
            pytest.fail("the replica did not catch up within 60 s")

    def report(name: str, *args: str) -> list[dict[str, object]]:
        assert cli.main(["report", name, "--format", "json", *args]) == 0
        rows: list[dict[str, object]] = json.loads(capsys.readouterr().out)
        return rows

    for r in reports.REPORTS:
        for args in ((), ("--live", "--tz", "UTC")):
            monkeypatch.setenv("PME_REPORT_DATABASE_URL", replica)
            from_replica = report(r.name, *args)
            monkeypatch.delenv("PME_REPORT_DATABASE_URL")
            from_primary = report(r.name, *args)
            assert from_replica == from_primary, (r.name, args)
    assert report("order_book") and report("account_orders")
