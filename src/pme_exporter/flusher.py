"""The flusher thread: writes one batch at a time through the sink, retrying transient failures.

Contract:
- ``submit(batch)`` hands over a batch; call it only when ``idle()``; it never blocks;
- ``take_result()`` returns the report of the last written batch once, or None;
  the consumer commits Kafka offsets only after it has taken that report;
- while the database is away the same batch is retried with exponential
  backoff; ``retrying_since`` says since when, for ``/readyz``;
- ``abandon()`` makes a retrying flush give up (at shutdown, past the deadline):
  nothing of that batch was committed, so the next run reads it again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

from tenacity import Retrying, retry_if_exception, stop_any, wait_exponential_jitter
from tenacity.stop import stop_base

from pme_exporter.buffers import Batch
from pme_exporter.errors import is_retryable
from pme_exporter.logs import ledger_log
from pme_exporter.sink import FlushReport, Sink

log = ledger_log(logging.getLogger(__name__))


class FlushFailed(Exception):
    """A batch could not be written and was given up; nothing of it was committed."""


class _StopWhen(stop_base):
    def __init__(self, predicate: Callable[[], bool]) -> None:
        self._predicate = predicate

    def __call__(self, retry_state: object) -> bool:
        return self._predicate()


class Flusher:
    def __init__(
        self,
        sink: Sink,
        *,
        on_report: Callable[[FlushReport], None],
        on_retry: Callable[[BaseException], None],
        max_backoff_s: float = 10.0,
        name: str = "pme-flusher",
    ) -> None:
        self._sink = sink
        self._on_report = on_report
        self._on_retry = on_retry
        self._max_backoff_s = max_backoff_s
        self._lock = threading.Condition()
        self._pending: Batch | None = None
        self._busy = False
        self._result: FlushReport | BaseException | None = None
        self._abandoned = False
        self._closed = False
        self.retrying_since: float | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def idle(self) -> bool:
        with self._lock:
            return not self._busy

    def submit(self, batch: Batch) -> None:
        with self._lock:
            if self._busy:
                raise RuntimeError("submit() while a batch is being written")
            self._pending = batch
            self._busy = True
            self._lock.notify_all()

    def wait_idle(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._lock.wait(left)
            return True

    def take_result(self) -> FlushReport | None:
        """The last batch's report, once; raises FlushFailed if that batch was given up."""
        with self._lock:
            result, self._result = self._result, None
        if isinstance(result, BaseException):
            raise FlushFailed(str(result)) from result
        return result

    def abandon(self) -> None:
        with self._lock:
            self._abandoned = True

    def close(self, timeout_s: float = 5.0) -> None:
        """Stops the thread; a write still running after ``timeout_s`` is left to die with the process
        (its transaction never commits, so its batch is read again)."""
        close_all([self], timeout_s)

    def _request_close(self) -> None:
        with self._lock:
            self._closed = True
            self._abandoned = True
            self._lock.notify_all()

    def _run(self) -> None:
        while True:
            with self._lock:
                while self._pending is None and not self._closed:
                    self._lock.wait()
                if self._pending is None:
                    return
                batch = self._pending
            result: FlushReport | BaseException
            try:
                result = self._write_with_retry(batch)
                since = self.retrying_since
                if since is not None:
                    log.warning(
                        "The database is back: the write succeeded after %.0f s of retries",
                        time.monotonic() - since,
                    )
                self._on_report(result)
            except BaseException as exc:  # handed to the consumer thread, which decides
                result = exc
            with self._lock:
                self._pending = None
                self._result = result
                self._busy = False
                self.retrying_since = None
                self._lock.notify_all()

    def _write_with_retry(self, batch: Batch) -> FlushReport:
        retrying = Retrying(
            retry=retry_if_exception(is_retryable),
            wait=wait_exponential_jitter(multiplier=0.2, max=self._max_backoff_s, jitter=0.2),
            stop=stop_any(_StopWhen(lambda: self._abandoned)),
            before_sleep=self._before_sleep,
            reraise=True,
        )
        return retrying(self._sink.write, batch)

    def _before_sleep(self, retry_state: object) -> None:
        outcome = getattr(retry_state, "outcome", None)
        exc = outcome.exception() if outcome is not None else None
        if self.retrying_since is None:
            self.retrying_since = time.monotonic()
        if exc is not None:
            self._on_retry(exc)
            log.warning("Database write failed, retrying: %s", exc)


def close_all(flushers: Sequence[Flusher], timeout_s: float) -> None:
    """Closes every lane's flusher within one ``timeout_s`` in all, not one each."""
    deadline = time.monotonic() + timeout_s
    for flusher in flushers:
        flusher._request_close()
    for flusher in flushers:
        flusher._thread.join(timeout=max(0.0, deadline - time.monotonic()))
