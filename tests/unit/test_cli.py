from __future__ import annotations

import subprocess
import sys

import pytest

from pme_exporter.cli import main
from pme_exporter.errors import EXIT_CONFIG, EXIT_DATABASE, EXIT_USAGE


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pme_exporter.cli", *args], capture_output=True, text=True, env=env, timeout=60
    )


@pytest.mark.parametrize(
    "args", [[], ["launch"], ["demo", "--orders", "zero"], ["demo", "--orders", "-5"], ["run", "--bogus"]]
)
def test_bad_arguments_exit_with_usage(args: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == EXIT_USAGE


def test_bad_configuration_is_one_line_and_exit_3_without_secrets() -> None:
    proc = run_cli("run", env={"PATH": "/usr/bin:/bin", "DB_PORT": "not-a-port", "DB_PASSWORD": "hunter2"})
    assert proc.returncode == EXIT_CONFIG
    assert proc.stderr.strip().count("\n") == 0
    assert "DB_PORT" in proc.stderr and "hunter2" not in proc.stderr


def test_unreachable_database_exits_4_without_secrets() -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "DB_HOST": "127.0.0.1",
        "DB_PORT": "1",
        "DB_PASSWORD": "hunter2",
        "PME_LOG_LEVEL": "ERROR",
    }
    proc = run_cli("migrate", env=env)
    assert proc.returncode == EXIT_DATABASE, proc.stderr
    assert "hunter2" not in proc.stderr
