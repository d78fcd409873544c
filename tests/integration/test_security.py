"""The secured stack (deploy/local/up --secure): TLS and SASL end to end, least-privilege roles.

Every password of the secured stack is looked for in every log line (the
worker runs at DEBUG), in /metrics and in /readyz of these tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import errors as pgerr

from pme_exporter.devtools.generator import create_topic, ends_of, publish, trading_day
from pme_exporter.devtools.stack import DOWN, UP, parse_exports
from pme_exporter.errors import EXIT_CONFIG, EXIT_KAFKA
from pme_exporter.migrate import migrate
from pme_exporter.settings import Settings
from tests.helpers import ExporterProcess, wait_exported
from tests.model import apply_events, diff, snapshot
from tests.stack import Stack

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Secure:
    env: dict[str, str]  # what `up --secure` prints for the worker
    certs: Path
    secrets: Path

    def secret(self, name: str) -> str:
        return (self.secrets / name).read_text().strip()

    @property
    def passwords(self) -> list[str]:
        return [self.secret(n) for n in ("owner", "worker", "reader", "kafka-worker")]

    @property
    def mtls_url(self) -> str:
        host, port = self.env["KAFKA_URL"].rsplit(":", 1)
        return f"{host}:{int(port) + 1}"

    @property
    def admin_kafka(self) -> dict[str, str]:
        return {
            "security.protocol": "SSL",
            "ssl.ca.location": str(self.certs / "ca.pem"),
            "ssl.certificate.location": str(self.certs / "admin.crt"),
            "ssl.key.location": str(self.certs / "admin.key"),
        }

    def worker(self, db: str, **changes: Any) -> Settings:
        return Settings.from_env({**self.env, "DB_NAME": db}).replace(**changes)

    def conninfo(self, db: str, role: str = "owner") -> str:
        user = {"owner": "pme_owner", "worker": "pme_worker", "reader": "pme_report"}[role]
        return self.worker(db, db_user=user, db_password=self.secret(role)).conninfo()


@pytest.fixture(scope="session")
def secure(stack: Stack) -> Iterator[Secure]:
    env = {**os.environ, "PME_PYTHON": sys.executable}
    up = subprocess.run([str(UP), "--secure"], capture_output=True, text=True, env=env, timeout=600)
    if up.returncode != 0:
        pytest.fail(
            f"deploy/local/up --secure failed (exit {up.returncode}):\n{up.stderr[-6000:]}", pytrace=False
        )
    exports = parse_exports(up.stdout)
    certs = Path(exports["KAFKA_SSL_CA_LOCATION"]).parent
    yield Secure(exports, certs, Path(exports["DB_PASSWORD_FILE"]).parent)
    if not os.environ.get("PME_KEEP_STACK"):
        subprocess.run([str(DOWN), "--secure"], capture_output=True, timeout=120, check=False)


@pytest.fixture
def secure_db(secure: Secure) -> Iterator[str]:
    """A database of its own, owned by pme_owner, migrated by it (grants included)."""
    name = f"s_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(secure.conninfo("pme"), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
        conn.execute(f'REVOKE ALL ON DATABASE "{name}" FROM PUBLIC')
    migrate(secure.conninfo(name))
    yield name
    with psycopg.connect(secure.conninfo("pme"), autocommit=True) as conn:
        # A worker's server processes end a moment after the worker does; pme may not end
        # another role's sessions itself, so it waits (bounded) for them first.
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (name,)).fetchone()
            if row is None or row[0] == 0:
                break
            time.sleep(0.1)
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _topic(secure: Secure, partitions: int) -> str:
    topic = f"secure-{uuid.uuid4().hex[:10]}"
    create_topic(secure.mtls_url, topic, partitions, config=secure.admin_kafka)
    return topic


def _get(port: int, path: str) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return str(response.read().decode())
    except urllib.error.HTTPError as exc:
        return str(exc.read().decode())


def _assert_no_secret(secure: Secure, *texts: str) -> None:
    for text in texts:
        for password in secure.passwords:
            assert password not in text, "a password was written out"


def _export_day(secure: Secure, db: str, tmp_path: Path, free_port: int, **kafka: Any) -> None:
    topic = _topic(secure, 3)
    located = publish(
        secure.mtls_url,
        topic,
        [(None, k, v) for k, v in trading_day(300, seed=51)],
        config=secure.admin_kafka,
    )
    s = secure.worker(db, kafka_topic=topic, kafka_group_id=topic, metrics_port=free_port, log_level="DEBUG")
    s = s.replace(**kafka)
    worker = ExporterProcess(s, tmp_path / "exporter.log")
    try:
        wait_exported(secure.conninfo(db), topic, ends_of(located))
        metrics, ready = _get(free_port, "/metrics"), _get(free_port, "/readyz")
    finally:
        assert worker.terminate() == 0, worker.log_tail()
    expected = apply_events((p, o, v) for p, o, v in located if v is not None)
    with psycopg.connect(secure.conninfo(db)) as conn:
        actual = snapshot(conn)
    assert actual == expected, diff(expected, actual)
    assert "ready" in ready and "pme_exporter_events_consumed_total" in metrics
    _assert_no_secret(secure, (tmp_path / "exporter.log").read_text(), metrics, ready)


def test_a_trading_day_over_sasl_ssl_scram_with_verify_full_equals_the_model(
    secure: Secure, secure_db: str, tmp_path: Path, free_port: int
) -> None:
    assert secure.env["KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL" and secure.env["DB_SSLMODE"] == "verify-full"
    _export_day(secure, secure_db, tmp_path, free_port)


def test_a_trading_day_over_the_mtls_listener_equals_the_model(
    secure: Secure, secure_db: str, tmp_path: Path, free_port: int
) -> None:
    _export_day(
        secure,
        secure_db,
        tmp_path,
        free_port,
        kafka_url=secure.mtls_url,
        kafka_security_protocol="SSL",
        kafka_sasl_mechanism=None,
        kafka_sasl_username=None,
        kafka_sasl_password=None,
        kafka_ssl_certificate_location=str(secure.certs / "worker.crt"),
        kafka_ssl_key_location=str(secure.certs / "worker.key"),
    )


@pytest.mark.parametrize(
    ("case", "exit_code", "says"),
    [
        ("kafka_wrong_ca", EXIT_KAFKA, "certificate verify failed"),
        ("kafka_wrong_host", EXIT_KAFKA, "certificate verify failed"),
        ("kafka_wrong_password", EXIT_KAFKA, "Authentication failed"),
        ("kafka_missing_key_file", EXIT_CONFIG, "KAFKA_SSL_KEY_LOCATION"),
        ("db_wrong_ca", EXIT_CONFIG, "certificate verify failed"),
        ("db_wrong_host", EXIT_CONFIG, "does not match host name"),
    ],
)
def test_a_wrong_trust_or_credential_fails_at_start_up_with_one_line_and_its_exit_code(
    secure: Secure, secure_db: str, tmp_path: Path, case: str, exit_code: int, says: str
) -> None:
    topic = _topic(secure, 1)
    s = secure.worker(
        secure_db, kafka_topic=topic, kafka_group_id=topic, metrics_port=0, kafka_startup_wait_s=6.0
    )
    other_ca = str(secure.certs / "other-ca.pem")
    changes: dict[str, Any] = {
        "kafka_wrong_ca": {"kafka_ssl_ca_location": other_ca},
        "kafka_wrong_host": {"kafka_url": "localhost:" + s.kafka_url.rsplit(":", 1)[1]},
        "kafka_wrong_password": {"kafka_sasl_password": "not-" + secure.secret("kafka-worker")},
        "kafka_missing_key_file": {
            "kafka_url": secure.mtls_url,
            "kafka_security_protocol": "SSL",
            "kafka_ssl_certificate_location": str(secure.certs / "worker.crt"),
            "kafka_ssl_key_location": str(tmp_path / "gone.key"),
        },
        "db_wrong_ca": {"db_sslrootcert": other_ca},
        "db_wrong_host": {"db_host": "localhost"},
    }[case]
    s = s.replace(**changes)
    worker = ExporterProcess(s, tmp_path / "exporter.log")
    code = worker.proc.wait(90)
    log = (tmp_path / "exporter.log").read_text()
    assert code == exit_code, log[-3000:]
    errors = [line for line in log.splitlines() if " ERROR " in line or "configuration error" in line]
    assert errors and says in errors[-1], log[-3000:]
    _assert_no_secret(secure, log)


def test_the_worker_role_cannot_drop_alter_or_truncate_and_the_reader_reads_only_the_reports(
    secure: Secure, secure_db: str
) -> None:
    with psycopg.connect(secure.conninfo(secure_db, "worker"), autocommit=True) as conn:
        conn.execute("INSERT INTO holidays (nid, created_at, updated_at, src_partition, src_offset)"
                     " VALUES (1, now(), now(), 0, 0)")  # fmt: skip
        for statement in (
            "DROP TABLE orders",
            "ALTER TABLE orders ADD COLUMN x int",
            "TRUNCATE orders",
            "TRUNCATE exporter_offsets",
            "DELETE FROM orders",
            "DROP VIEW report_order_book",
            "CREATE TABLE mine (a int)",
            "ALTER TABLE exporter_dead_letters OWNER TO pme_worker",
            "GRANT pme_writer TO pme_report",
        ):
            with pytest.raises(pgerr.InsufficientPrivilege):
                conn.execute(statement)
        conn.execute("CREATE TEMP TABLE staging_like (a int)")  # its staging tables are temporary
    with psycopg.connect(secure.conninfo(secure_db, "reader"), autocommit=True) as conn:
        for view in ("report_order_book", "report_open_borrowing", "report_account_orders"):
            conn.execute(f"SELECT * FROM {view}").fetchall()
        for statement in (
            "SELECT * FROM orders",
            "SELECT * FROM exporter_offsets",
            "SELECT * FROM exporter_dead_letters",
            "INSERT INTO parameters (created_at, src_partition, src_offset) VALUES (now(), 0, 0)",
            "CREATE TABLE mine (a int)",
            "CREATE TEMP TABLE mine (a int)",
        ):
            with pytest.raises(pgerr.InsufficientPrivilege):
                conn.execute(statement)
    # Over plain TCP nothing is accepted: hostssl only.
    plain = secure.worker(secure_db, db_sslmode="disable").conninfo()
    with pytest.raises(psycopg.OperationalError, match=r"no pg_hba\.conf entry"):
        psycopg.connect(plain).close()
