"""The servers a tool talks to: the ones given in the environment, or the local stack.

One set of helpers for the demo, the tests and the benchmarks:
``servers_env`` (given servers, else ``deploy/local/up``), ``exporter_env``
(the environment that makes ``pme-exporter run`` use some settings) and
``stored_offsets`` (where the exporter has got to, read over a fresh connection).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path

import psycopg

from pme_exporter.errors import ConfigError
from pme_exporter.progress import read_stored_offsets
from pme_exporter.settings import Settings

REPO = Path(__file__).resolve().parents[3]
UP = REPO / "deploy" / "local" / "up"
DOWN = REPO / "deploy" / "local" / "down"
SERVER_VARIABLES = ("KAFKA_URL", "DB_HOST", "DB_PORT", "DB_USER", "DB_PASSWORD", "DB_NAME", "DB_SSLMODE")


def given_servers(env: Mapping[str, str]) -> dict[str, str] | None:
    """The server variables, when the environment names both a broker and a database."""
    if env.get("KAFKA_URL") and (env.get("DB_HOST") or env.get("DATABASE_URL")):
        return {n: env[n] for n in (*SERVER_VARIABLES, "DATABASE_URL") if n in env}
    return None


def run_up(
    extra_env: Mapping[str, str] | None = None, args: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    if not UP.exists():
        raise ConfigError("KAFKA_URL and DB_HOST are not set and deploy/local/up is not beside this install")
    return subprocess.run(
        [str(UP), *args], capture_output=True, text=True, timeout=900, env={**os.environ, **(extra_env or {})}
    )


def parse_exports(text: str) -> dict[str, str]:
    """The ``export NAME=value`` lines that deploy/local/up prints."""
    values = {}
    for line in text.splitlines():
        if line.startswith("export ") and "=" in line:
            name, _, value = line[len("export ") :].partition("=")
            values[name] = value
    return values


def servers_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's) with servers: the given ones, else the local stack's."""
    env = dict(os.environ if env is None else env)
    if given_servers(env) is not None:
        return env
    proc = run_up()
    if proc.returncode != 0:
        raise ConfigError(f"deploy/local/up failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return env | parse_exports(proc.stdout)


def exporter_env(settings: Settings, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment that makes ``pme-exporter run`` use exactly these settings."""
    inherited = {
        k: v
        for k, v in (os.environ if base is None else base).items()
        if not k.startswith(("KAFKA_", "DB_", "PME_", "DATABASE_URL"))
    }
    return inherited | settings.to_env()


def stored_offsets(conninfo: str, topic: str) -> dict[int, int]:
    """Next offset to export per partition, {} before the schema exists."""
    try:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            return read_stored_offsets(conn, topic)
    except psycopg.errors.UndefinedTable:
        return {}
