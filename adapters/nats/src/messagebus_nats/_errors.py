"""What nats-py's errors mean, in one table: raise sites call ``ERRORS.map(exc, Default, what)``."""

from __future__ import annotations

import ssl

import nats.errors as nerr
import nats.js.errors as jerr

from messagebus import ConnectError, MessageBusError, MessageTooLarge, TopologyError
from messagebus.transports import ErrorMap, describe_error

__all__ = ["ERRORS", "is_fatal"]

#: JetStream errors of declarations that conflict with what exists (a stream of that name
#: with other settings, overlapping subjects, a consumer of that name with other settings).
_TOPOLOGY_CODES = frozenset({10058, 10065, 10012, 10013, 10148, 10099})


def _auth(exc: BaseException, what: str, default: type[MessageBusError]) -> MessageBusError:
    return ConnectError(
        f"{what}: the server refused the credentials ({describe_error(exc)}); check user:password@, token or creds"
    )


def _no_stream(exc: BaseException, what: str, default: type[MessageBusError]) -> MessageBusError:
    return default(f"{what}: no JetStream stream answered (is JetStream enabled on the server, -js?)")


def _topology(exc: BaseException) -> bool:
    return isinstance(exc, jerr.APIError) and exc.err_code in _TOPOLOGY_CODES


def _conflict(exc: BaseException, what: str, default: type[MessageBusError]) -> MessageBusError:
    return TopologyError(
        f"{what}: {describe_error(exc)}; an existing stream or consumer of that name was made with other settings "
        "(delete it, or use another ?prefix=)"
    )


def _refused(exc: BaseException) -> bool:
    # nats-py raises a plain Error for the server's -ERR 'Authorization Violation'.
    text = str(exc).lower()
    return isinstance(exc, nerr.AuthorizationError | nerr.InvalidUserCredentialsError) or (
        isinstance(exc, nerr.Error) and ("authorization violation" in text or "authentication" in text)
    )


#: nats-py error -> messagebus error; anything else becomes the caller's default class.
ERRORS = ErrorMap(
    (_refused, _auth),
    (nerr.MaxPayloadError, MessageTooLarge),
    ((nerr.NoServersError, nerr.ConnectionClosedError, ssl.SSLError, nerr.SecureConnFailedError), ConnectError),
    (jerr.NoStreamResponseError, _no_stream),
    (_topology, _conflict),
)


def is_fatal(exc: BaseException) -> bool:
    """True when connecting again cannot help (credentials, TLS setup)."""
    return _refused(exc) or isinstance(exc, nerr.SecureConnRequiredError | ssl.SSLError)
