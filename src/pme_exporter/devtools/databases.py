"""Whole databases made and dropped: the demo, the benchmark and the tests start from empty ones."""

from __future__ import annotations

import time

import psycopg
from psycopg import sql


def drop_database(conninfo: str, name: str, timeout_s: float = 30.0) -> None:
    """Drops ``name`` if it exists, waiting for its sessions to go.

    A plain DROP DATABASE stops autovacuum workers itself; WITH (FORCE) would
    instead refuse a role without pg_signal_backend while one is analysing the
    database. So FORCE is the last resort for sessions that will not leave.
    """
    deadline = time.monotonic() + timeout_s
    statement = sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name))
    with psycopg.connect(conninfo, autocommit=True) as conn:
        while True:
            try:
                conn.execute(statement)
                return
            except psycopg.errors.ObjectInUse:
                if time.monotonic() > deadline:
                    conn.execute(
                        sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                    )
                    return
                time.sleep(0.2)


def create_database(conninfo: str, name: str, *, template: str | None = None, replace: bool = False) -> None:
    if replace:
        drop_database(conninfo, name)
    query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    if template is not None:
        query = sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
            sql.Identifier(name), sql.Identifier(template)
        )
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(query)
