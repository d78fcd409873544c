"""One line per distinct message per interval: what keeps an outage from flooding the log.

Contract: ``RateLimit`` is a ``logging.Filter``. The first record of a kind
(level, logger, and the message with its numbers blanked out) passes; more of
that kind within ``interval_s`` are dropped and counted; the next one after the
interval passes with "(N more like it in the last S s)" appended. Thread-safe.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable

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
