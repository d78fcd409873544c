"""The flusher thread's contract: one batch at a time, transient failures retried, give-up on abandon."""

from __future__ import annotations

import threading
import time

import pytest

from pme_exporter.buffers import Batch
from pme_exporter.decode import Decoder
from pme_exporter.errors import RetryableError
from pme_exporter.flusher import Flusher, FlushFailed
from pme_exporter.sink import FlushReport
from tests.fakes import ScriptedSink


def _batch() -> Batch:
    return Batch(decoder=Decoder(), size=3)


def test_a_batch_is_written_and_its_report_taken_once() -> None:
    reports: list[FlushReport] = []
    gate = threading.Event()

    class Held(ScriptedSink):
        def write(self, batch: Batch) -> FlushReport:
            gate.wait(5)
            return super().write(batch)

    flusher = Flusher(Held(), on_report=reports.append, on_retry=lambda e: None)
    flusher.submit(_batch())
    with pytest.raises(RuntimeError):
        flusher.submit(_batch())  # one at a time
    assert not flusher.idle()
    gate.set()
    assert flusher.wait_idle(5)
    report = flusher.take_result()
    assert report is not None and report.saved_offsets == {0: 3} and reports == [report]
    assert flusher.take_result() is None
    flusher.close()


def test_transient_failures_are_retried_and_counted() -> None:
    retried: list[BaseException] = []
    sink = ScriptedSink(RetryableError("db away"), RetryableError("db away"))
    flusher = Flusher(sink, on_report=lambda r: None, on_retry=retried.append, max_backoff_s=0.01)
    flusher.submit(_batch())
    assert flusher.wait_idle(10)
    assert flusher.take_result() is not None and sink.attempts == 3 and len(retried) == 2
    assert flusher.retrying_since is None
    flusher.close()


def test_a_bug_is_not_retried_and_reaches_the_consumer() -> None:
    flusher = Flusher(ScriptedSink(ValueError("bug")), on_report=lambda r: None, on_retry=lambda e: None)
    flusher.submit(_batch())
    assert flusher.wait_idle(5)
    with pytest.raises(FlushFailed, match="bug"):
        flusher.take_result()
    flusher.close()


def test_abandon_ends_a_retrying_flush_and_nothing_is_reported() -> None:
    reports: list[FlushReport] = []
    sink = ScriptedSink(*[RetryableError("db away")] * 1000)
    flusher = Flusher(sink, on_report=reports.append, on_retry=lambda e: None, max_backoff_s=0.01)
    flusher.submit(_batch())
    deadline = time.monotonic() + 5
    while flusher.retrying_since is None:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    flusher.abandon()
    assert flusher.wait_idle(5)
    with pytest.raises(FlushFailed):
        flusher.take_result()
    assert reports == []
    flusher.close()


def test_close_does_not_wait_past_its_timeout_for_a_hung_write() -> None:
    gate = threading.Event()

    class Hung(ScriptedSink):  # a database that never answers
        def write(self, batch: Batch) -> FlushReport:
            gate.wait(30)
            return FlushReport()

    flusher = Flusher(Hung(), on_report=lambda r: None, on_retry=lambda e: None)
    flusher.submit(_batch())
    started = time.monotonic()
    flusher.close(timeout_s=0.2)
    assert time.monotonic() - started < 2
    gate.set()
