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
    "args",
    [
        [],
        ["launch"],
        ["demo", "--orders", "zero"],
        ["demo", "--orders", "-5"],
        ["run", "--bogus"],
        ["report"],
        ["report", "order_book", "--format", "xml"],
        ["report", "trades_by_date", "--from", "2025-13-01"],
        ["report", "trades_by_date", "--to", "20251128"],
        ["report", "order_book", "--limit", "0"],
    ],
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


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["report", "no_such_report"], "no report named 'no_such_report'"),
        (["report", "order_book", "--account", "ACC1"], "has no account to filter by"),
        (["report", "open_borrowing", "--from", "2025-11-28"], "has no date to filter by"),
    ],
)
def test_report_arguments_the_report_cannot_take_exit_2_before_connecting(
    args: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # DB_PORT 1 is closed: reaching it would fail with exit 4, not 2.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DB_PORT", "1")
        assert main(args) == EXIT_USAGE
    assert says in capsys.readouterr().err


def test_report_list_needs_no_database(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DB_PORT", "1")
        assert main(["report", "--list"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 10 and "order_book" in out and "[--account, --from/--to]" in out
