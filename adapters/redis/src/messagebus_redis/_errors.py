"""What redis-py's errors mean, in one table: raise sites call ``ERRORS.map(exc, Default, what)``."""

from __future__ import annotations

from redis import exceptions as rex

from messagebus import ConnectError, MessageBusError, TopologyError
from messagebus.transports import ErrorMap, describe_error

__all__ = ["ERRORS", "is_transient"]

AUTH_HINT = "check the user name and password in the URL (redis://user:password@host:6379) and the server's ACL"

_AUTH = (rex.AuthenticationError, rex.AuthenticationWrongNumberOfArgsError)
#: Worth another try: the connection (or the server, while it loads its data or fails over).
_TRANSIENT = (rex.ConnectionError, rex.TimeoutError, rex.BusyLoadingError, rex.ReadOnlyError, OSError)


def _auth(exc: BaseException, what: str, default: type[MessageBusError]) -> MessageBusError:
    return ConnectError(f"{what}: Redis refused the credentials ({describe_error(exc)}); {AUTH_HINT}")


def _refused_auth(exc: BaseException) -> bool:
    text = str(exc)
    return isinstance(exc, _AUTH) or (
        isinstance(exc, rex.ResponseError) and text.startswith(("NOAUTH", "WRONGPASS", "NOPERM"))
    )


def is_transient(exc: BaseException) -> bool:
    """True for errors a retry may cure (lost connection, timeout, a server loading or failing
    over); False for refused credentials and every answer Redis gave on purpose."""
    return isinstance(exc, _TRANSIENT) and not _refused_auth(exc)


#: redis-py error -> messagebus error; anything else becomes the caller's default class.
ERRORS = ErrorMap(
    (_refused_auth, _auth),
    (lambda exc: isinstance(exc, rex.ResponseError) and str(exc).startswith("WRONGTYPE"), TopologyError),
    (_TRANSIENT, ConnectError),
)
