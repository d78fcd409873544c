"""The dead-letter circuit breaker: a flood of one kind of dead letter stops the worker, not the ledger.

When something systematic goes wrong (a column narrowed by hand, a producer
sending a new format), every message becomes a dead letter and the offsets
march to the end of the topic: the mirror is emptied into
``exporter_dead_letters``. The breaker refuses that.

Contract: the sink calls ``check(messages, reasons)`` inside a batch's
transaction before its offsets are saved; it raises ``DeadLetterFlood`` when
dead letters of one reason (``stage/reason``, the SQLSTATE included for
database refusals) are more than ``ratio`` of the newest ``window`` messages,
this batch included; the batch then rolls back, so its offsets stay where they
were. After the batch commits the sink calls ``record`` with the same figures
(a retried attempt is checked again but recorded once).
Before ``window`` messages were seen, the threshold is ``ratio * window``
dead letters. So no batch is committed that would make the newest batches
covering a window hold more than ``ratio`` of their messages (at least
``ratio * window``) in dead letters of one reason; a clean batch adds none.
``ratio`` 1 turns the breaker off. Thread-safe: the flush lanes of a worker share one.
"""

from __future__ import annotations

import threading
from collections import Counter, deque
from collections.abc import Iterable

from pme_exporter.errors import ExporterError


class DeadLetterFlood(ExporterError):
    """Too many dead letters of one reason; the batch was not committed."""

    def __init__(self, reason: str, count: int, messages: int) -> None:
        super().__init__(
            f"{count} of the last {messages} messages would be dead letters for the same reason ({reason})"
        )
        self.reason = reason


class DeadLetterBreaker:
    def __init__(self, *, window: int, ratio: float) -> None:
        self._window = window
        self._ratio = ratio
        self._recent: deque[tuple[int, Counter[str]]] = deque()
        self._recent_messages = 0
        self._lock = threading.Lock()

    def check(self, messages: int, reasons: Iterable[str]) -> None:
        batch = (messages, Counter(reasons))
        with self._lock:
            self._check(batch)

    def _check(self, batch: tuple[int, Counter[str]]) -> None:
        if self._ratio < 1 and batch[1]:
            seen = 0
            counts: Counter[str] = Counter()
            for n, c in (batch, *reversed(self._recent)):
                seen += n
                counts.update(c)
                if seen >= self._window:
                    break
            reason, count = counts.most_common(1)[0]
            if count > self._ratio * max(seen, self._window):
                raise DeadLetterFlood(reason, count, seen)

    def record(self, messages: int, reasons: Iterable[str]) -> None:
        batch = (messages, Counter(reasons))
        with self._lock:
            self._record(batch)

    def _record(self, batch: tuple[int, Counter[str]]) -> None:
        messages = batch[0]
        self._recent.append(batch)
        self._recent_messages += messages
        # Keep just enough of the newest batches to cover one window.
        while len(self._recent) > 1 and self._recent_messages - self._recent[0][0] >= self._window:
            self._recent_messages -= self._recent.popleft()[0]
