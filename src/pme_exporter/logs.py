"""The worker's log: the prefix of the original design's lines, the formats, and rate limits.

``ledger_log(logger)`` starts every line with ``PREFIX``, as the original
design's log lines do (``PREFIX`` then ``Starting Database Exporter Service...``).
``configure_logging`` sets the root handler once, at the program's edge: text or
JSON lines, and librdkafka's chatter rate-limited.

Contract: ``RateLimit`` is a ``logging.Filter``. The first record of a kind
(level, logger, and the message with its numbers blanked out) passes; more of
that kind within ``interval_s`` are dropped and counted; the next one after the
interval passes with "(N more like it in the last S s)" appended. Thread-safe.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import time
from collections.abc import Callable, MutableMapping
from typing import Any

import orjson

PREFIX = "[DB-EXPORTER]"
# A broker that is away makes librdkafka repeat itself many times a second.
KAFKA_LOG_INTERVAL_S = 60.0


class _Prefixed(logging.LoggerAdapter):  # type: ignore[type-arg]
    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        return f"{PREFIX} {msg}", kwargs


def ledger_log(logger: logging.Logger) -> logging.LoggerAdapter[logging.Logger]:
    """``logger``, each of whose lines starts with the design's ``PREFIX``."""
    return _Prefixed(logger, {})


_NUMBERS = re.compile(r"\d+")


class RateLimit(logging.Filter):
    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._seen: dict[tuple[int, str, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        kind = (record.levelno, record.name, _NUMBERS.sub("#", record.getMessage()))
        now = self._clock()
        with self._lock:
            since, dropped = self._seen.get(kind, (None, 0))
            if since is not None and now - since < self._interval_s:
                self._seen[kind] = (since, dropped + 1)
                return False
            self._seen[kind] = (now, 0)
        if dropped:
            record.msg = (
                f"{record.getMessage()} ({dropped} more like it in the last {self._interval_s:.0f} s)"
            )
            record.args = None
        return True


# What every LogRecord carries; anything else on a record came from ``extra=``.
_RECORD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class JsonLogFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, the fields given with ``extra=``
    (partitions, lane, events, duration_ms, ...) and the exception, if any."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update((k, v) for k, v in vars(record).items() if k not in _RECORD_ATTRIBUTES)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str, option=orjson.OPT_NON_STR_KEYS).decode()


def configure_logging(*, level: int, json_lines: bool) -> None:
    """The root handler: text or JSON lines to stderr, at ``level``; librdkafka rate-limited."""
    handler = logging.StreamHandler(sys.stderr)
    if json_lines:
        formatter: logging.Formatter = JsonLogFormatter()
        formatter.converter = time.gmtime
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)s %(message)s")
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Libraries that repeat themselves while a server is away: one line a kind a minute.
    for chatty in ("pme_exporter.kafka", "psycopg.pool"):
        logger = logging.getLogger(chatty)
        logger.filters[:] = [f for f in logger.filters if not isinstance(f, RateLimit)]
        logger.addFilter(RateLimit(KAFKA_LOG_INTERVAL_S))
