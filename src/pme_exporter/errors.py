"""How a failure is handled is decided here, by type and SQLSTATE class, never by message text.

- ``ConfigError``: bad settings; the process exits with ``EXIT_CONFIG``.
- ``DecodeError``: one message is invalid; it becomes a dead letter.
- ``RetryableError``: the database or broker is away or asked us to try again;
  the batch is retried with backoff and nothing is committed meanwhile.
- a row the database refuses (any SQLSTATE no retry cures, but for the classes
  that mean the schema or privileges are wrong) is isolated and dead-lettered by
  the sink; see ``is_row_error``.
"""

from __future__ import annotations

import psycopg
from confluent_kafka import KafkaException

# Exit codes, distinct so an orchestrator can tell a bad config from a lost database.
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_CONFIG = 3
EXIT_DATABASE = 4
EXIT_KAFKA = 5
EXIT_MIGRATION = 6
EXIT_THRESHOLD = 7  # `status` found the lag or the dead letters over the thresholds given
EXIT_REFUSED = 8  # `replay` would race active workers, or was not confirmed
EXIT_MISMATCH = 9  # `verify` found the mirror and the topic disagree

# SQLSTATE classes (first two characters) and codes that a retry can cure.
_RETRYABLE_CLASSES = frozenset({"08", "53", "57", "58"})  # connection, resources, operator, system
# serialization, deadlock, lock timeout; and a foreign key violation, which the
# apply's own parent check rules out except when a parent is deleted under it
# (``retention``): tried again, the child finds its parent gone and waits as an orphan.
_RETRYABLE_CODES = frozenset({"40001", "40P01", "55P03", "23503"})
# Classes that say the worker's statements, schema or privileges are wrong (a table or
# column dropped, a grant revoked, ...): no row causes them, so none is dead-lettered for
# them. Every other refusal that no retry cures (a value, a constraint, a trigger's RAISE,
# two rows for one key, an index row too large) is the rows' own: the sink isolates it.
SYSTEMIC_CLASSES = frozenset({"0A", "25", "28", "3D", "3F", "42", "XX"})


class ExporterError(Exception):
    """Base of the exporter's own errors."""


class ConfigError(ExporterError):
    """A setting is missing or invalid; the message names the variable."""


class DecodeError(ExporterError):
    """A message cannot become a row; ``reason`` is a short class for metrics."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class RetryableError(ExporterError):
    """A transient failure: retry the whole batch later; nothing was committed."""


class MigrationError(ExporterError):
    """A migration could not be applied, or an applied one was changed."""


class KafkaFatalError(ExporterError):
    """Kafka said something no retry cures (fenced static member, authentication, a topic that
    stays missing); the process exits with ``EXIT_KAFKA``. Nothing uncommitted is lost."""


class Stopped(ExporterError):
    """A stop was asked for (SIGTERM) while starting up; nothing was written, exit 0."""


def sqlstate_of(exc: BaseException | None) -> str | None:
    return getattr(exc, "sqlstate", None) if isinstance(exc, psycopg.Error) else None


def is_row_error(exc: BaseException) -> bool:
    """True when PostgreSQL refused what a batch holds, for a reason no retry cures and no
    fault of the schema explains; the sink then isolates the rows that cause it, so no batch
    content can make a flush fail for ever."""
    state = sqlstate_of(exc)
    return state is not None and not is_retryable(exc) and state[:2] not in SYSTEMIC_CLASSES


def not_refusals_sql(sqlstate: str) -> str:
    """A PL/pgSQL condition on ``sqlstate``, true for the errors ``is_row_error`` does not
    count as a row's refusal (retried, or systemic), so a row-by-row pass raises them."""
    classes = sorted(_RETRYABLE_CLASSES | SYSTEMIC_CLASSES)
    return (
        f"left({sqlstate}, 2) IN ({', '.join(repr(c) for c in classes)})"
        f" OR {sqlstate} IN ({', '.join(repr(c) for c in sorted(_RETRYABLE_CODES))})"
    )


def retry_reason(exc: BaseException) -> str:
    """A short label for a retried failure: its SQLSTATE (or its cause's), or 'connection'."""
    return sqlstate_of(exc) or sqlstate_of(exc.__cause__) or "connection"


def is_retryable(exc: BaseException) -> bool:
    """True for failures that a later attempt can cure.

    A connection that broke has no SQLSTATE at all (``OperationalError`` raised
    by libpq, or ``InterfaceError`` on a closed connection), so those count too.
    """
    if isinstance(exc, RetryableError):
        return True
    state = sqlstate_of(exc)
    if state is None:
        return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)
    return state in _RETRYABLE_CODES or state[:2] in _RETRYABLE_CLASSES


class VerifyError(ExporterError):
    """``verify`` could not read what Kafka says it holds; the CLI exits with ``EXIT_KAFKA``."""


class FatalError(ExporterError):
    """The worker cannot go on (a batch given up, a rebalance that could not flush); the process
    exits with ``EXIT_FAILURE`` and is restarted; nothing uncommitted is lost."""


# How each failure ends the process: its exit code and the words its one log line starts with.
# The first entry whose type matches wins; anything else is a bug: EXIT_FAILURE with its traceback.
EXITS: tuple[tuple[type[BaseException], int, str], ...] = (
    (ConfigError, EXIT_CONFIG, "configuration error"),
    (MigrationError, EXIT_MIGRATION, "migration error"),
    (KafkaFatalError, EXIT_KAFKA, "Kafka"),
    (VerifyError, EXIT_KAFKA, "verify"),
    (KafkaException, EXIT_KAFKA, "Kafka unreachable or refusing"),
    (psycopg.OperationalError, EXIT_DATABASE, "database unreachable"),
    (
        psycopg.errors.UndefinedTable,
        EXIT_MIGRATION,
        "the database is not migrated (run pme-exporter migrate)",
    ),
    (FatalError, EXIT_FAILURE, "stopped"),
)


def reason_of(exc: BaseException) -> str:
    """A failure in words for its one log line: Kafka's own words without the
    ``KafkaError{...}`` wrapping, a server's message without its context lines."""
    if isinstance(exc, KafkaException) and exc.args and hasattr(exc.args[0], "str"):
        return str(exc.args[0].str())
    if isinstance(exc, psycopg.Error) and exc.diag.message_primary:
        return exc.diag.message_primary
    return " ".join(str(exc).split())


def exit_for(exc: BaseException) -> tuple[int, str] | None:
    """The exit code and the words of the log line for ``exc``; None for an unforeseen error."""
    return next(((code, words) for kind, code, words in EXITS if isinstance(exc, kind)), None)


class ValueRefused(DecodeError):
    """A value that does not fit its column's declared type (too long, out of range, not
    a real date), judged in Python before PostgreSQL would refuse it: a dead letter of
    stage ``database`` with the SQLSTATE PostgreSQL gives, so a refused version never
    reaches staging and the next-newest version of its key wins."""

    def __init__(self, table: str, sqlstate: str, message: str) -> None:
        super().__init__(f"sqlstate_{sqlstate}", f"{table}: {message}")
        self.table = table
        self.sqlstate = sqlstate
