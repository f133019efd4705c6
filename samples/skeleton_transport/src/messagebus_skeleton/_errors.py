"""sqlite3 errors -> the messagebus error tree: the one table of this adapter.

Raise sites say what they were doing (``raise ERRORS.map(exc, PublishError, "publishing to x")
from exc``); this table says what each native error means.
"""

from __future__ import annotations

import sqlite3

from messagebus import ConnectError, MessageBusError
from messagebus.transports import ErrorMap, describe_error

__all__ = ["ERRORS", "LeaseLost", "is_transient"]


class LeaseLost(Exception):
    """A settle found the message no longer leased to this consumer: its visibility timeout ran
    out and the broker delivers it again (to this or another consumer). Native to this broker:
    :class:`~messagebus.transports.Delivery` turns it into ``ConsumeError``."""


def _locked(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc)


def _not_a_database(exc: BaseException, what: str, _default: type[MessageBusError]) -> MessageBusError:
    return ConnectError(f"{what}: the file is not a skeleton broker database ({describe_error(exc)})")


def _still_locked(exc: BaseException, what: str, default: type[MessageBusError]) -> MessageBusError:
    return default(f"{what}: another process kept the database locked longer than busy_timeout ({exc})")


def _cannot_open(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and "unable to open" in str(exc)


def _open_failed(exc: BaseException, what: str, _default: type[MessageBusError]) -> MessageBusError:
    return ConnectError(f"{what}: cannot open the file; does its directory exist, and may this process write there?")


#: What each sqlite3 error means. The first matching rule wins; an unmatched error becomes the
#: caller's default class (PublishError when publishing, ConsumeError when settling ...).
ERRORS = ErrorMap(
    (_locked, _still_locked),
    (_cannot_open, _open_failed),
    (lambda exc: isinstance(exc, sqlite3.DatabaseError) and "not a database" in str(exc), _not_a_database),
)


def is_transient(exc: BaseException) -> bool:
    """True when opening the file again may succeed (locked, busy, a directory not there yet);
    False for a problem that does not go away by itself (not a database, corrupt)."""
    if isinstance(exc, sqlite3.OperationalError):
        return True
    return not isinstance(exc, sqlite3.DatabaseError)
