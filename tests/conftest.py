"""Session-wide servers, and a fresh database and topic for every test that asks."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable, Iterator

import pytest

from pme_exporter.devtools.databases import create_database, drop_database
from pme_exporter.devtools.generator import create_topic
from pme_exporter.migrate import migrate
from pme_exporter.settings import Settings
from tests.stack import Stack, containers, given_servers, start_local, stop_local

TEMPLATE_DB = "pme_test_template"


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    given = given_servers()
    if given is not None:
        yield given
    elif os.environ.get("PME_TEST_STACK") == "containers":
        with containers() as started:
            yield started
    else:
        local, started_here = start_local()
        yield local
        if started_here and not os.environ.get("PME_KEEP_STACK"):
            stop_local()


@pytest.fixture(scope="session")
def base_settings(stack: Stack) -> Settings:
    return Settings.from_env(stack.env).replace(metrics_port=0, flush_interval_ms=200, shutdown_deadline_s=20)


@pytest.fixture(scope="session")
def admin_conninfo(base_settings: Settings) -> str:
    return base_settings.conninfo()


@pytest.fixture(scope="session")
def migrated_template(admin_conninfo: str, base_settings: Settings) -> str:
    """A database with the schema applied once; each test's database is a copy."""
    create_database(admin_conninfo, TEMPLATE_DB, replace=True)
    migrate(base_settings.replace(db_name=TEMPLATE_DB).conninfo())
    return TEMPLATE_DB


@pytest.fixture
def empty_db(admin_conninfo: str) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    create_database(admin_conninfo, name)
    yield name
    drop_database(admin_conninfo, name)


@pytest.fixture
def db(admin_conninfo: str, migrated_template: str) -> Iterator[str]:
    """A fresh, migrated database of this test's own."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    create_database(admin_conninfo, name, template=migrated_template)
    yield name
    drop_database(admin_conninfo, name)


@pytest.fixture
def make_topic(stack: Stack) -> Callable[[int], str]:
    def make(partitions: int) -> str:
        topic = f"test-{uuid.uuid4().hex[:10]}"
        create_topic(stack.kafka_url, topic, partitions)
        return topic

    return make


@pytest.fixture
def settings(base_settings: Settings, db: str) -> Settings:
    """Settings for this test's own database; the test picks topic and group."""
    return base_settings.replace(db_name=db)


@pytest.fixture
def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """The root logger as it was: a command run in-process binds it to this test's captured
    stream, which is closed once the test ends, while other tests' threads still log."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
