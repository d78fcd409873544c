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

import pytest

from pme_exporter.devtools.stack import DOWN, REPO, parse_exports, run_up
from pme_exporter.devtools.stack import given_servers as given_server_env

__all__ = ["REPO", "Stack", "containers", "given_servers", "run_up", "start_local", "stop_local"]


@dataclass(frozen=True)
class Stack:
    env: dict[str, str]  # devtools.stack.SERVER_VARIABLES
    local: bool  # started by deploy/local/up: the tests may stop and start its servers

    @property
    def kafka_url(self) -> str:
        return self.env["KAFKA_URL"]


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
    env = given_server_env(os.environ)
    return None if env is None else Stack(env, local=False)


def stop_local(component: str | None = None) -> None:
    args = [str(DOWN)] + ([component] if component else [])
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        pytest.fail(f"deploy/local/down failed:\n{proc.stderr[-4000:]}", pytrace=False)
