"""Start-up failures end fast, in one clear line and a documented exit code; SIGTERM is honoured while waiting."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import time
import uuid

import psycopg
import pytest

from pme_exporter import __version__
from pme_exporter.devtools.databases import drop_database
from pme_exporter.devtools.generator import create_topic
from pme_exporter.devtools.stack import exporter_env
from pme_exporter.errors import EXIT_CONFIG, EXIT_MIGRATION, EXIT_OK
from pme_exporter.migrate import load_migrations
from pme_exporter.settings import Settings
from tests.helpers import ExporterThread, http_answer, http_status, on_topic
from tests.stack import Stack


def start(settings: Settings, **extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pme_exporter", "run"],
        env={**exporter_env(settings.replace(metrics_port=0, kafka_topic="t-startup")), **extra},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.parametrize(
    ("change", "cause"),
    [
        ({"db_password": "not-the-password"}, 'password authentication failed for user "pme"'),
        ({"db_name": "no_such_database"}, 'database "no_such_database" does not exist'),
    ],
)
def test_a_database_that_refuses_us_is_a_configuration_error_named_in_the_first_error_line(
    base_settings: Settings, change: dict[str, str], cause: str
) -> None:
    started = time.monotonic()
    proc = start(base_settings.replace(**change))
    out, _ = proc.communicate(timeout=60)
    elapsed = time.monotonic() - started
    assert proc.returncode == EXIT_CONFIG, out
    errors = [line for line in out.splitlines() if " ERROR " in line]
    assert cause in errors[0], out
    assert "not-the-password" not in out
    assert elapsed < 30, f"took {elapsed:.1f}s"  # not the 60 s an unreachable server gets


def test_sigterm_while_waiting_for_an_unreachable_database_exits_0_within_a_second(
    base_settings: Settings,
) -> None:
    proc = start(base_settings.replace(db_port=1))
    deadline = time.monotonic() + 30
    assert proc.stdout is not None
    for line in proc.stdout:  # until the worker says it waits
        if "Database not reachable yet" in line or time.monotonic() > deadline:
            break
    proc.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == EXIT_OK, out
    assert time.monotonic() - sent < 1.5
    assert "stopped while" in out


def test_a_metrics_port_in_use_is_one_line_and_exit_3(base_settings: Settings, settings: Settings) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))  # noqa: S104 - the exporter binds all interfaces too
        taken.listen()
        port = taken.getsockname()[1]
        proc = start(settings, PME_METRICS_PORT=str(port))
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_CONFIG, out
    assert f"PME_METRICS_PORT: cannot listen on port {port}: Address already in use" in out
    assert "Traceback" not in out


def test_a_database_not_encoded_utf8_is_refused_at_start_up_with_exit_3(
    base_settings: Settings, admin_conninfo: str
) -> None:
    name = "t_latin1"
    drop_database(admin_conninfo, name)
    with psycopg.connect(admin_conninfo, autocommit=True) as conn:
        conn.execute(
            f"CREATE DATABASE {name} ENCODING 'LATIN1' TEMPLATE template0 LC_COLLATE 'C' LC_CTYPE 'C'"
        )
    try:
        proc = start(base_settings.replace(db_name=name))
        out, _ = proc.communicate(timeout=60)
        with psycopg.connect(base_settings.replace(db_name=name).conninfo()) as conn:
            tables = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()
    finally:
        drop_database(admin_conninfo, name)
    assert proc.returncode == EXIT_CONFIG, out
    assert f"the database {name} is encoded LATIN1; pme-exporter needs a UTF8 database" in out
    assert "Traceback" not in out
    assert tables == (0,)  # refused before any migration


@pytest.mark.parametrize("after_s", [0.1, 0.3])
def test_sigterm_moments_after_the_start_exits_0(settings: Settings, after_s: float) -> None:
    proc = start(settings)
    time.sleep(after_s)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == EXIT_OK, out
    assert "Traceback" not in out


def test_readyz_is_503_while_the_topic_is_missing_and_200_once_it_exists(
    stack: Stack, settings: Settings, free_port: int
) -> None:
    topic = f"t-missing-{uuid.uuid4().hex[:8]}"
    s = on_topic(settings, topic, metrics_port=free_port, topic_wait_s=60)
    with ExporterThread(s):
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError):  # not listening yet
                if http_status(free_port, "/healthz") == 200:
                    break
            assert time.monotonic() < deadline, "the probes never answered"
            time.sleep(0.1)
        missing = (503, f"kafka: the topic {topic} does not exist")
        while (answer := http_answer(free_port, "/readyz")) != missing:  # past the start-up phases
            assert answer[1].startswith("starting: "), answer
            assert time.monotonic() < deadline, answer
            time.sleep(0.1)
        create_topic(stack.kafka_url, topic, 1)
        while http_status(free_port, "/readyz") != 200:
            assert time.monotonic() < deadline, http_answer(free_port, "/readyz")
            time.sleep(0.2)


def test_a_database_migrated_by_a_newer_version_is_refused_naming_both(settings: Settings) -> None:
    with psycopg.connect(settings.conninfo(), autocommit=True) as conn:
        conn.execute("INSERT INTO schema_migrations (version, name, checksum) VALUES ('999', 'future', 'x')")
    proc = start(settings)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_MIGRATION, out
    newest = load_migrations()[-1]
    assert f"carries migration 999_future, newer than this pme-exporter {__version__} knows" in out
    assert f"(up to {newest.version}_{newest.name})" in out
    assert "Traceback" not in out


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"kafka_url": "127.0.0.1:1"}, "Kafka at 127.0.0.1:1"),
        ({"db_port": 1}, "the database at 127.0.0.1:1/"),
    ],
    ids=["kafka", "database"],
)
def test_probes_answer_from_the_first_seconds_while_a_server_is_unreachable(
    settings: Settings, free_port: int, change: dict[str, object], named: str
) -> None:
    waiting = settings.replace(kafka_startup_wait_s=30, db_startup_wait_s=30, **change)
    started = time.monotonic()
    proc = start(waiting, PME_METRICS_PORT=str(free_port))
    try:
        while True:
            with contextlib.suppress(OSError):
                if http_status(free_port, "/healthz") == 200:
                    break
            assert time.monotonic() - started < 2, "no /healthz within 2 s of the start"
            time.sleep(0.05)
        deadline = time.monotonic() + 10
        while named not in (reason := http_answer(free_port, "/readyz"))[1]:
            assert time.monotonic() < deadline, reason
            time.sleep(0.2)
        assert reason[0] == 503 and reason[1].startswith("starting: "), reason
        assert http_status(free_port, "/healthz") == 200  # waiting as designed is alive
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == EXIT_OK, out


@pytest.mark.parametrize("state", ["unmigrated", "one migration pending"])
def test_a_worker_that_only_checks_migrations_refuses_a_database_not_migrated_for_it(
    base_settings: Settings, settings: Settings, empty_db: str, state: str
) -> None:
    newest = load_migrations()[-1]
    if state == "unmigrated":
        s, says = base_settings.replace(db_name=empty_db), "the database is not migrated"
    else:
        with psycopg.connect(settings.conninfo(), autocommit=True) as conn:
            conn.execute("DELETE FROM schema_migrations WHERE version = %s", (newest.version,))
        s, says = settings, f"migrations not applied yet: {newest.version}_{newest.name}"
    proc = start(s, PME_MIGRATE="check")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_MIGRATION, out
    assert says in out and "Traceback" not in out
    with psycopg.connect(s.conninfo()) as conn:  # and it applied nothing
        row = conn.execute("SELECT to_regclass('exporter_topic_lives') IS NOT NULL").fetchone()
    assert row == (state != "unmigrated",)
