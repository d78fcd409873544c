"""The servers the integration tests talk to: given, local (default) or containers.

- ``KAFKA_URL`` and ``DB_HOST`` (or ``DATABASE_URL``) set: use those servers.
- ``PME_TEST_STACK=containers`` and a reachable Docker engine: testcontainers.
- otherwise: ``deploy/local/up`` starts a real Kafka broker and PostgreSQL here.
A server that cannot be had fails the run with its log tail; nothing is skipped.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from pme_exporter.demo import parse_exports

REPO = Path(__file__).resolve().parents[1]
UP = REPO / "deploy" / "local" / "up"
DOWN = REPO / "deploy" / "local" / "down"


@dataclass(frozen=True)
class Stack:
    env: dict[str, str]  # KAFKA_URL, DB_HOST, DB_PORT, DB_USER, DB_PASSWORD, DB_NAME, DB_SSLMODE
    local: bool  # started by deploy/local/up: the tests may stop and start its servers

    @property
    def kafka_url(self) -> str:
        return self.env["KAFKA_URL"]


def run_up(extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(UP)], capture_output=True, text=True, timeout=900, env={**os.environ, **(extra_env or {})}
    )


def start_local() -> tuple[Stack, bool]:
    """Returns the stack and whether this call started it (so it should stop it)."""
    proc = run_up()
    if proc.returncode != 0:
        pytest.fail(f"deploy/local/up failed (exit {proc.returncode}):\n{proc.stderr[-6000:]}", pytrace=False)
    started = "already running" not in proc.stderr
    return Stack(parse_exports(proc.stdout), local=True), started


@contextmanager
def containers() -> Iterator[Stack]:
    from testcontainers.kafka import KafkaContainer  # type: ignore[import-not-found]
    from testcontainers.postgres import PostgresContainer  # type: ignore[import-not-found]

    with KafkaContainer("apache/kafka:4.1.1").with_kraft() as kafka, PostgresContainer("postgres:15") as pg:
        yield Stack(
            {
                "KAFKA_URL": kafka.get_bootstrap_server(),
                "DB_HOST": pg.get_container_host_ip(),
                "DB_PORT": str(pg.get_exposed_port(5432)),
                "DB_USER": pg.username,
                "DB_PASSWORD": pg.password,
                "DB_NAME": pg.dbname,
                "DB_SSLMODE": "disable",
            },
            local=False,
        )


def given_servers() -> Stack | None:
    if os.environ.get("KAFKA_URL") and (os.environ.get("DB_HOST") or os.environ.get("DATABASE_URL")):
        names = ("KAFKA_URL", "DB_HOST", "DB_PORT", "DB_USER", "DB_PASSWORD", "DB_NAME", "DB_SSLMODE")
        return Stack({n: os.environ[n] for n in names if n in os.environ}, local=False)
    return None


def stop_local(component: str | None = None) -> None:
    args = [str(DOWN)] + ([component] if component else [])
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        pytest.fail(f"deploy/local/down failed:\n{proc.stderr[-4000:]}", pytrace=False)
