from __future__ import annotations

import subprocess
import sys

import orjson
import pytest

from pme_exporter.cli import main
from pme_exporter.errors import EXIT_CONFIG, EXIT_DATABASE, EXIT_USAGE
from pme_exporter.ops.reports import REPORTS


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pme_exporter", *args], capture_output=True, text=True, env=env, timeout=60
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
        ["status", "--max-lag", "-1"],
        ["status", "--max-dead-letters", "many"],
        ["dead-letters"],
        ["dead-letters", "show", "0"],
        ["dead-letters", "show", "x"],
        ["dead-letters", "list", "--older-than", "5 weeks"],
        ["dead-letters", "list", "--stage", "somewhere"],
        ["dead-letters", "redrive", "--limit", "-3"],
        ["replay"],
        ["replay", "--from-beginning", "--truncate"],
        ["replay", "--from-time", "yesterday"],
        ["replay", "--from-time", "2025-02-30T00:00:00Z"],
        ["replay", "--partition", "-1", "--offset", "0"],
        ["replay", "--partition", "0"],
        ["replay", "--from-beginning", "--offset", "3"],
        ["replay", "--from-beginning", "--tables", "orders"],
        ["replay", "--truncate", "--tables", "ordres"],
        ["retention", "archive"],
        ["retention", "shred", "--older-than", "1d"],
        ["retention", "archive", "--older-than", "1 year"],
        ["retention", "archive", "--older-than", "-5d"],
        ["retention", "archive", "--older-than", "99999999999d"],
        ["retention", "archive", "--older-than", "1d", "--tables", "participants"],
        ["retention", "archive", "--older-than", "1d", "--tables", ""],
        ["retention", "purge", "--older-than", "1d", "--batch-size", "0"],
        ["retention", "purge", "--older-than", "1d", "--pause-ms", "-1"],
        ["verify", "--sample", "0"],
        ["verify", "--sample", "1.5"],
        ["verify", "--sample", "nan"],
        ["verify", "--sample", "half"],
        ["verify", "--show", "0"],
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
    assert out.count("\n") == len(REPORTS) and "order_book" in out and "[--account, --from/--to]" in out


def test_config_prints_every_setting_with_secrets_hidden_and_warns_of_unknown_variables() -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "DB_PASSWORD": "hunter2",
        "PME_FLUSH_INTERVAL": "5",
        "PME_LOG_FORMAT": "json",
    }
    proc = run_cli("config", env=env)
    assert proc.returncode == 0, proc.stderr
    lines = dict(line.split("=", 1) for line in proc.stdout.splitlines())
    assert lines["DB_PASSWORD"] == "(set, hidden)" and lines["PME_LOG_FORMAT"] == "json"
    assert "hunter2" not in proc.stdout + proc.stderr
    warning = orjson.loads(proc.stderr.splitlines()[0])  # JSON log lines
    assert warning["level"] == "WARNING" and "did you mean PME_FLUSH_INTERVAL_MS?" in warning["message"]


def test_config_with_an_invalid_setting_exits_3() -> None:
    proc = run_cli("config", env={"PATH": "/usr/bin:/bin", "PME_LOG_FORMAT": "yaml"})
    assert proc.returncode == EXIT_CONFIG and "PME_LOG_FORMAT" in proc.stderr


def test_healthcheck_follows_the_metrics_port() -> None:
    import http.server
    import socket
    import threading

    class Healthy(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/healthz" else 404)
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            return

    server = http.server.HTTPServer(("127.0.0.1", 0), Healthy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        assert (
            run_cli("healthcheck", env={"PATH": "/usr/bin:/bin", "PME_METRICS_PORT": str(port)}).returncode
            == 0
        )
    finally:
        server.shutdown()
        server.server_close()
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        free = closed.getsockname()[1]
    down = run_cli("healthcheck", env={"PATH": "/usr/bin:/bin", "PME_METRICS_PORT": str(free)})
    assert down.returncode == 1 and "did not answer" in down.stderr
    off = run_cli("healthcheck", env={"PATH": "/usr/bin:/bin", "PME_METRICS_PORT": "0"})
    assert off.returncode == 1 and "PME_METRICS_PORT=0" in off.stderr


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("PME_RDKAFKA_FETCH_MIN_BYTES", "lots", 'Invalid value for configuration property "fetch.min.bytes"'),
        ("PME_RDKAFKA_NO_SUCH_THING", "1", 'No such configuration property: "no.such.thing"'),
    ],
)
def test_librdkafka_judges_pass_through_properties_before_anything_runs(
    variable: str, value: str, says: str
) -> None:
    for command in ("config", "run"):
        proc = run_cli(command, env={"PATH": "/usr/bin:/bin", variable: value, "DB_PORT": "1"})
        assert proc.returncode == EXIT_CONFIG, (command, proc.stderr)
        assert says in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr


def test_json_log_lines_carry_time_level_logger_message_and_exception() -> None:
    import logging

    from pme_exporter.logs import JsonLogFormatter

    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        exc_info = sys.exc_info()
    record = logging.LogRecord(
        "pme_exporter", logging.ERROR, __file__, 1, 'a "quoted" %s', ("value",), exc_info
    )
    line = orjson.loads(JsonLogFormatter().format(record))
    assert line["level"] == "ERROR" and line["logger"] == "pme_exporter"
    assert line["message"] == 'a "quoted" value' and "ValueError: boom" in line["exception"]
    assert line["time"].endswith("Z") and len(line["time"]) == len("2026-11-27T14:00:00.000Z")


def test_replay_times_are_rfc3339_in_either_case_and_must_exist() -> None:
    import argparse

    from pme_exporter.cli import rfc3339_instant

    assert (
        rfc3339_instant("2025-11-28t02:00:00z")
        == rfc3339_instant("2025-11-28T09:00:00+07:00")
        == 1764295200000
    )
    with pytest.raises(argparse.ArgumentTypeError, match="not a date that exists"):
        rfc3339_instant("2025-02-30T00:00:00Z")


def test_a_pass_through_of_the_session_timeout_is_a_config_error_naming_its_variable() -> None:
    env = {"PATH": "/usr/bin:/bin", "PME_RDKAFKA_SESSION_TIMEOUT_MS": "1000"}
    done = run_cli("config", env=env)
    assert done.returncode == EXIT_CONFIG, done.stderr
    assert "PME_KAFKA_SESSION_TIMEOUT_MS" in done.stderr
    assert "Traceback" not in done.stderr


def test_python_m_pme_exporter_tells_its_version() -> None:
    from pme_exporter import __version__

    done = run_cli("--version")
    assert (done.returncode, done.stdout.strip()) == (0, f"pme-exporter {__version__}")


def test_config_into_a_pipe_closed_early_ends_without_a_traceback() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "pme_exporter", "config"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before the first line (as `| head` after its lines)
    errors = proc.stderr.read().decode()
    assert proc.wait(60) == 0, errors
    assert "Traceback" not in errors and "BrokenPipe" not in errors


def test_a_reversed_date_range_is_refused_before_connecting() -> None:
    done = run_cli("report", "trades_by_date", "--from", "2025-11-29", "--to", "2025-11-01")
    assert done.returncode == EXIT_USAGE
    assert "--from 2025-11-29 is after --to 2025-11-01" in done.stderr


@pytest.mark.parametrize("action", ["archive", "purge"])
def test_retention_actions_have_their_own_help(action: str) -> None:
    done = run_cli("retention", action, "--help")
    assert done.returncode == 0 and done.stdout.startswith(f"usage: pme-exporter retention {action} ")
