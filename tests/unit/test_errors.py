from __future__ import annotations

import psycopg
import pytest
from psycopg import errors as pgerr

from pme_exporter.errors import RetryableError, is_retryable, is_row_error


@pytest.mark.parametrize(
    ("exc", "retry", "row"),
    [
        (pgerr.SerializationFailure(), True, False),
        (pgerr.DeadlockDetected(), True, False),
        (pgerr.AdminShutdown(), True, False),
        (pgerr.TooManyConnections(), True, False),
        (psycopg.OperationalError("connection lost"), True, False),
        (psycopg.InterfaceError("connection closed"), True, False),
        (RetryableError("db away"), True, False),
        (pgerr.StringDataRightTruncation(), False, True),
        (pgerr.NumericValueOutOfRange(), False, True),
        (pgerr.InvalidDatetimeFormat(), False, True),
        (pgerr.UniqueViolation(), False, True),
        (pgerr.ForeignKeyViolation(), True, False),  # a parent deleted under the apply
        (pgerr.CardinalityViolation(), False, True),  # two rows of a batch for one stored key
        (pgerr.RaiseException(), False, True),  # a trigger added by hand
        (pgerr.ProgramLimitExceeded(), False, True),  # an index row too large
        (pgerr.CheckViolation(), False, True),
        (pgerr.QueryCanceled(), True, False),  # statement_timeout
        (pgerr.DiskFull(), True, False),
        (pgerr.InsufficientPrivilege(), False, False),
        (pgerr.UndefinedColumn(), False, False),
        (pgerr.UndefinedTable(), False, False),
        (pgerr.SyntaxError(), False, False),
        (ValueError("not a database error"), False, False),
    ],
)
def test_classification_is_by_sqlstate_class(exc: BaseException, retry: bool, row: bool) -> None:
    assert is_retryable(exc) is retry
    assert is_row_error(exc) is row


def test_a_retry_is_labelled_by_the_sqlstate_of_the_error_or_of_its_cause() -> None:
    from pme_exporter.errors import RetryableError, retry_reason

    wrapped = RetryableError("flush failed, will retry")
    wrapped.__cause__ = pgerr.LockNotAvailable()
    assert retry_reason(wrapped) == "55P03"
    assert retry_reason(pgerr.DeadlockDetected()) == "40P01"
    assert retry_reason(RetryableError("pool timeout")) == "connection"
