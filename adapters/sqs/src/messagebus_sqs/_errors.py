"""The one table that turns botocore errors into the messagebus error tree (always chained).

Raise sites read ``raise errors.map(exc, PublishError, "publishing to x") from exc``: a missing
region becomes :class:`ConfigurationError`, an unknown profile :class:`InvalidOption`, the rest
the caller's class with a message saying what was wrong. Messages never contain secrets
(botocore's do not, and the endpoint URL cannot carry credentials).
"""

from __future__ import annotations

from collections.abc import Callable

from botocore.exceptions import (
    ClientError,
    ConnectionError,
    HTTPClientError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
    ProfileNotFound,
)

from messagebus import ConfigurationError, InvalidOption, MessageBusError
from messagebus.transports import ErrorMap

__all__ = ["AUTH_CODES", "CONNECTION_ERRORS", "MISSING_CODES", "error_code", "errors", "is_missing"]

#: Error codes that mean the credentials are missing, wrong or not allowed.
AUTH_CODES = frozenset(  # a dozen names on 3 lines, not 12:
    "AccessDenied AccessDeniedException AuthorizationError ExpiredToken ExpiredTokenException IncompleteSignature "  # noqa: SIM905
    "InvalidAccessKeyId InvalidClientTokenId InvalidSecurity MissingAuthenticationToken SignatureDoesNotMatch "
    "UnrecognizedClientException".split()
)

#: Error codes that mean the queue or topic does not exist (any more): deleted, or the
#: endpoint (an emulator) restarted without its state.
MISSING_CODES = frozenset(
    {"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist", "NotFound", "NotFoundException"}
)

#: The endpoint could not be reached, or the connection dropped (botocore retried already).
CONNECTION_ERRORS = (ConnectionError, HTTPClientError)

_NO_CREDENTIALS = (
    "no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, choose a profile "
    "with ?profile=NAME or AWS_PROFILE, or run where an instance/container role is available"
)


def error_code(exc: BaseException) -> str:
    """The AWS error code of a :class:`ClientError` (``""`` for other errors)."""
    return str(exc.response.get("Error", {}).get("Code", "")) if isinstance(exc, ClientError) else ""


def is_missing(exc: BaseException | None) -> bool:
    """True when ``exc`` (or an error it was chained from) says the queue or topic is gone."""
    while exc is not None:
        if isinstance(exc, ClientError):
            err = exc.response.get("Error", {})
            if err.get("Code") in MISSING_CODES or err.get("QueryErrorCode") in MISSING_CODES:
                return True
        exc = exc.__cause__
    return False


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        op = getattr(exc, "operation_name", "?")
        return f"{op} failed: {err.get('Code', '?')}: {err.get('Message', '')}".rstrip(": ")
    return f"{type(exc).__name__}: {exc}"


def _message(text: str) -> Callable[[BaseException, str, type[MessageBusError]], MessageBusError]:
    """A rule target giving ``default("<what>: <text>")``; ``{exc}`` / ``{described}`` are filled in."""

    def target(exc: BaseException, what: str, default: type[MessageBusError]) -> MessageBusError:
        return default(f"{what}: " + text.format(exc=exc, described=_describe(exc)))

    return target


errors = ErrorMap(
    (NoRegionError, lambda _, what, __: ConfigurationError(f"{what}: no AWS region; add ?region=NAME to the URL")),
    (ProfileNotFound, lambda exc, what, _: InvalidOption(f"{what}: {exc}; check ?profile= / AWS_PROFILE")),
    ((NoCredentialsError, PartialCredentialsError), _message(_NO_CREDENTIALS)),
    (CONNECTION_ERRORS, _message("cannot reach the AWS endpoint: {exc}")),
    (lambda exc: error_code(exc) in AUTH_CODES, _message("AWS rejected the credentials ({described})")),
    describe=_describe,
)
"""botocore error -> messagebus error (see the module docstring)."""
