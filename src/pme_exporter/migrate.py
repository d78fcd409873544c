"""Applies ``sql/NNN_*.sql`` in order, once each, recorded with checksums.

Two workers starting at once serialise on a session advisory lock; the second
finds everything applied. A file that changed after it was applied is refused:
fix forward with a new file instead. A file the server refuses (for example a
narrowing that stored values do not fit) changes nothing and raises
``MigrationError`` with the server's message; what a file reports with
``RAISE NOTICE`` (counts of converted values) goes to the log.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from pme_exporter import __version__
from pme_exporter.errors import ConfigError, MigrationError, is_retryable
from pme_exporter.logs import ledger_log
from pme_exporter.schema import FLUSH_ORDER

log = ledger_log(logging.getLogger(__name__))

# pg_advisory_lock key: "pme-exporter migrations", stable across releases.
_LOCK_KEY = 0x706D_655F_6D69_67


@dataclass(frozen=True)
class Migration:
    version: str
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def sql_dir() -> Path:
    """``sql/`` beside the sources in a checkout, or the copy packed into the wheel."""
    packed = resources.files("pme_exporter") / "sql"
    if packed.is_dir():
        return Path(str(packed))
    return Path(__file__).resolve().parents[2] / "sql"


def load_migrations(directory: Path | None = None) -> list[Migration]:
    directory = directory or sql_dir()
    migrations = []
    for path in sorted(directory.glob("[0-9][0-9][0-9]_*.sql")):
        version, _, name = path.stem.partition("_")
        migrations.append(Migration(version, name, path.read_text(encoding="utf-8")))
    if not migrations:
        raise MigrationError(f"no migration files found in {directory}")
    return migrations


def migrate(conninfo: str, directory: Path | None = None, *, publication: str | None = None) -> list[str]:
    """Applies pending migrations, then the grants, then (given a name) keeps a publication of
    the ledger tables (``PME_PUBLICATION``); returns the versions applied now."""
    migrations = load_migrations(directory)
    applied_now = []
    with psycopg.connect(conninfo, autocommit=True) as conn:
        check_encoding(conn)
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        try:
            exists = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
            if not (exists and exists[0]):  # a worker role may not create; it only checks
                conn.execute(
                    """CREATE TABLE IF NOT EXISTS schema_migrations (
                        version TEXT PRIMARY KEY,
                        name TEXT NOT NULL,
                        checksum TEXT NOT NULL,
                        applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"""
                )
            conn.add_notice_handler(_log_notice)  # from here on, notices are the files' own
            done: dict[str, str] = dict(
                conn.execute("SELECT version, checksum FROM schema_migrations").fetchall()
            )
            refuse_newer(conn, migrations)
            for m in migrations:
                if m.version in done:
                    if done[m.version] != m.checksum:
                        raise MigrationError(
                            f"migration {m.version}_{m.name}.sql was changed after it was applied "
                            f"(checksum {done[m.version][:12]} in the database, {m.checksum[:12]} on disk); "
                            "add a new migration instead of editing an applied one"
                        )
                    continue
                try:
                    with conn.transaction():
                        conn.execute(m.sql.encode())
                        conn.execute(
                            "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                            (m.version, m.name, m.checksum),
                        )
                except psycopg.Error as exc:
                    if is_retryable(exc):
                        raise
                    raise MigrationError(
                        f"migration {m.version}_{m.name}.sql was refused and changed nothing: "
                        f"{_server_message(exc)}"
                    ) from exc
                log.info("Applied migration %s_%s", m.version, m.name)
                applied_now.append(m.version)
            _grant(conn, directory or sql_dir())
            if publication is not None:
                ensure_publication(conn, publication)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    return applied_now


def check_migrations(conninfo: str, directory: Path | None = None) -> list[str]:
    """Applies nothing: raises MigrationError naming the migrations not applied yet, one
    changed after it was applied, or one newer than this version knows; returns the versions
    applied. For workers whose database an owner migrates (``PME_MIGRATE=check``)."""
    migrations = load_migrations(directory)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        check_encoding(conn)
        exists = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
        if not (exists and exists[0]):
            raise MigrationError("the database is not migrated; run pme-exporter migrate as its owner first")
        refuse_newer(conn, migrations)
        done: dict[str, str] = dict(
            conn.execute("SELECT version, checksum FROM schema_migrations").fetchall()
        )
    changed = [m for m in migrations if m.version in done and done[m.version] != m.checksum]
    if changed:
        raise MigrationError(
            f"migration {changed[0].version}_{changed[0].name}.sql was changed after it was applied"
        )
    pending = [f"{m.version}_{m.name}" for m in migrations if m.version not in done]
    if pending:
        raise MigrationError(
            f"migrations not applied yet: {', '.join(pending)}; run pme-exporter migrate as the owner first"
        )
    return sorted(done)


def refuse_newer(conn: psycopg.Connection[Any], migrations: list[Migration]) -> None:
    """Raises MigrationError when the database carries a migration this version does not know:
    a newer pme-exporter migrated it, and this one would write to tables it does not understand."""
    known = {m.version for m in migrations}
    unknown = [
        (version, name)
        for version, name in conn.execute("SELECT version, name FROM schema_migrations ORDER BY version")
        if version not in known
    ]
    if unknown:
        version, name = unknown[-1]
        raise MigrationError(
            f"the database carries migration {version}_{name}, newer than this pme-exporter "
            f"{__version__} knows (up to {migrations[-1].version}_{migrations[-1].name}); "
            "run the newer version, or restore the database from before it (docs/operations.md, Upgrading)"
        )


def check_encoding(conn: psycopg.Connection[Any]) -> None:
    """Raises ConfigError unless the database stores text as UTF-8.

    The ledger's text is Unicode. A LATIN1 database would store what it can
    translate and refuse the rest; SQL_ASCII stores bytes, counting lengths in
    bytes and translating nothing, so values would differ from the topic's.
    """
    row = conn.execute("SELECT current_setting('server_encoding'), current_database()").fetchone()
    if row is not None and row[0] != "UTF8":
        raise ConfigError(
            f"the database {row[1]} is encoded {row[0]}; pme-exporter needs a UTF8 database "
            f"(CREATE DATABASE ... ENCODING 'UTF8' TEMPLATE template0)"
        )


def ensure_publication(conn: psycopg.Connection[Any], name: str) -> None:
    """Creates the publication ``name`` over every ledger table, or sets its tables to them, so
    that a downstream consumer (a pgoutput client such as Debezium) follows the mirror's changes.
    Each table's primary key identifies its rows in updates and deletes."""
    tables = sql.SQL(", ").join(sql.Identifier(spec.table) for spec in FLUSH_ORDER)
    try:
        with conn.transaction():
            found = conn.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (name,)).fetchone()
            verb = "ALTER PUBLICATION {} SET TABLE {}" if found else "CREATE PUBLICATION {} FOR TABLE {}"
            conn.execute(sql.SQL(verb).format(sql.Identifier(name), tables))
    except psycopg.Error as exc:
        if is_retryable(exc):
            raise
        raise MigrationError(f"the publication {name} was refused: {_server_message(exc)}") from exc
    level = conn.execute("SHOW wal_level").fetchone()
    if level and level[0] != "logical":
        log.warning(
            "The publication %s is kept, but wal_level is %s: nothing can follow it until the "
            "server runs with wal_level=logical",
            name,
            level[0],
        )
    else:
        log.info("Publication %s covers the %d ledger tables", name, len(FLUSH_ORDER))


def _grant(conn: psycopg.Connection[Any], directory: Path) -> None:
    """``grants.sql`` when the tables are ours to grant on (the owner migrates; a worker only checks)."""
    path = directory / "grants.sql"
    owner = conn.execute(
        "SELECT tableowner = current_user FROM pg_tables WHERE tablename = 'schema_migrations'"
    ).fetchone()
    if path.is_file() and owner and owner[0]:
        try:
            conn.execute(path.read_text(encoding="utf-8").encode())
        except psycopg.Error as exc:
            raise MigrationError(f"grants.sql was refused: {_server_message(exc)}") from exc


def _log_notice(diagnostic: psycopg.errors.Diagnostic) -> None:
    log.info("Migration: %s", diagnostic.message_primary)


def _server_message(exc: psycopg.Error) -> str:
    diag = exc.diag
    message = diag.message_primary or str(exc).splitlines()[0]
    return f"{message} (hint: {diag.message_hint})" if diag.message_hint else message
