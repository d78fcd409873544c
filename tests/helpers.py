"""Small helpers shared by the tests: in-memory messages and an exporter on a thread."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pme_exporter import cli
from pme_exporter.decode import Decoder
from pme_exporter.devtools.generator import Located
from pme_exporter.devtools.stack import exporter_env, stored_offsets
from pme_exporter.errors import DecodeError
from pme_exporter.metrics import Metrics
from pme_exporter.settings import Settings
from pme_exporter.worker import run_exporter
from tests.model import apply_events, diff, snapshot


class ExporterThread:
    """``run_exporter`` on a background thread, as the CLI would run it."""

    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.stop_event = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="test-exporter", daemon=True)

    def _run(self) -> None:
        try:
            run_exporter(self.settings, self.stop_event, self.metrics)
        except BaseException as exc:
            self.error = exc

    def __enter__(self) -> ExporterThread:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self, timeout_s: float = 60) -> None:
        self.stop_event.set()
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), "exporter did not stop within its deadline"
        if self.error is not None:
            raise AssertionError(f"exporter failed: {self.error!r}") from self.error


def wait_exported(conninfo: str, topic: str, ends: dict[int, int], timeout_s: float = 120) -> None:
    """Waits until exporter_offsets covers every produced offset."""
    deadline = time.monotonic() + timeout_s
    stored: dict[int, int] = {}
    while time.monotonic() < deadline:
        stored = stored_offsets(conninfo, topic)
        if all(stored.get(p, 0) >= end for p, end in ends.items()):
            return
        time.sleep(0.2)
    raise AssertionError(f"not exported within {timeout_s}s: stored {stored}, produced up to {ends}")


def valid_only(located: list[Located]) -> list[tuple[int, int, bytes]]:
    """The messages the model applies: no tombstones, nothing the decoder refuses."""
    decoder = Decoder()
    kept = []
    for partition, offset, value in located:
        if value is None:
            continue
        try:
            decoder.decode(value)
        except DecodeError:
            continue
        kept.append((partition, offset, value))
    return kept


class ExporterProcess:
    """``pme-exporter run`` as a child process: the entrypoint of the container image."""

    def __init__(self, settings: Settings, log_path: Any) -> None:
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in kill() and terminate()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pme_exporter", "run"],
            env=exporter_env(settings),
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(30)
        self._log.close()

    def terminate(self, timeout_s: float = 60) -> int:
        self.proc.terminate()
        code = self.proc.wait(timeout_s)
        self._log.close()
        return code

    def wait_started(self, timeout_s: float = 60) -> None:
        """Until the worker logs that it runs (its signal handlers are installed by then)."""
        deadline = time.monotonic() + timeout_s
        while "Database Exporter Service started" not in self.log_tail(500):
            assert self.proc.poll() is None, self.log_tail()
            assert time.monotonic() < deadline, self.log_tail()
            time.sleep(0.1)

    def log_tail(self, lines: int = 30) -> str:
        with open(self.log_path, "rb") as f:
            return b"\n".join(f.read().splitlines()[-lines:]).decode(errors="replace")


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def http_status(port: int, path: str) -> int:
    """The status of GET http://127.0.0.1:port/path, errors included."""
    return http_answer(port, path)[0]


def http_answer(port: int, path: str, timeout_s: float = 5) -> tuple[int, str]:
    """The status and body (stripped) of GET http://127.0.0.1:port/path, errors included."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout_s) as response:
            return int(response.status), response.read().decode().strip()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode().strip()


def scrape(port: int) -> Samples:
    """Every sample /metrics exposes, by name and sorted labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include these."""
    return sum(
        v for (n, ls), v in samples.items() if n == name and all((k, w) in ls for k, w in labels.items())
    )


def run_cli(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int, str]:
    """``pme-exporter ARGS`` in this process, with ``settings`` as its environment: (exit code, stdout)."""
    for name, value in settings.to_env().items():
        monkeypatch.setenv(name, value)
    code = cli.main(list(args))
    return code, capsys.readouterr().out


def assert_tables_equal_model(conninfo: str, located: list[tuple[int, int, bytes | None]]) -> None:
    """The tables equal the model of the valid messages, no append row twice, no dead letter."""
    expected = apply_events((p, o, v) for p, o, v in located if v is not None)
    with psycopg.connect(conninfo) as conn:
        actual = snapshot(conn)
        append_counts = conn.execute(
            "SELECT (SELECT count(*) FROM order_acks), (SELECT count(*) FROM order_naks),"
            " (SELECT count(*) FROM parameters), (SELECT count(*) FROM session_times),"
            " (SELECT count(*) FROM exporter_dead_letters)"
        ).fetchone()
    assert actual == expected, diff(expected, actual)
    # No append row stored twice (the snapshot keys by message, so count separately), no dead letter.
    assert append_counts == (
        len(expected["order_acks"]),
        len(expected["order_naks"]),
        len(expected["parameters"]),
        len(expected["session_times"]),
        0,
    )


def on_topic(settings: Settings, topic: str, **changes: Any) -> Settings:
    """``settings`` for a worker of ``topic`` in a consumer group of its own (named after it)."""
    return settings.replace(kafka_topic=topic, kafka_group_id=topic, **changes)
