"""Translation of botocore errors into the messagebus error tree (always chained)."""

from __future__ import annotations

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionError,
    EndpointConnectionError,
    HTTPClientError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
    ProfileNotFound,
)

from messagebus import ConfigurationError, InvalidOption, MessageBusError, TransportError

__all__ = ["AUTH_CODES", "MISSING_CODES", "error_code", "is_connection_error", "is_missing", "map_error"]

#: Error codes that mean the credentials are missing, wrong or not allowed.
AUTH_CODES = frozenset(
    {
        "AccessDenied",
        "AccessDeniedException",
        "AuthorizationError",
        "ExpiredToken",
        "ExpiredTokenException",
        "IncompleteSignature",
        "InvalidAccessKeyId",
        "InvalidClientTokenId",
        "InvalidSecurity",
        "MissingAuthenticationToken",
        "SignatureDoesNotMatch",
        "UnrecognizedClientException",
    }
)

#: Error codes that mean the queue or topic does not exist (any more): deleted, or the
#: endpoint (an emulator) restarted without its state.
MISSING_CODES = frozenset(
    {"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist", "NotFound", "NotFoundException"}
)

_NO_CREDENTIALS = (
    "no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, choose a profile "
    "with ?profile=NAME or AWS_PROFILE, or run where an instance/container role is available"
)


def error_code(exc: BaseException) -> str:
    """The AWS error code of a :class:`ClientError` (``""`` for other errors)."""
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        return str(code)
    return ""


def is_missing(exc: BaseException | None) -> bool:
    """True when ``exc`` (or an error it was chained from) says the queue or topic is gone."""
    while exc is not None:
        if isinstance(exc, ClientError):
            err = exc.response.get("Error", {})
            if err.get("Code") in MISSING_CODES or err.get("QueryErrorCode") in MISSING_CODES:
                return True
        exc = exc.__cause__
    return False


def is_connection_error(exc: BaseException) -> bool:
    """True when ``exc`` means the endpoint could not be reached or the connection dropped."""
    return isinstance(exc, ConnectionError | HTTPClientError | EndpointConnectionError)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        op = getattr(exc, "operation_name", "?")
        return f"{op} failed: {err.get('Code', '?')}: {err.get('Message', '')}".rstrip(": ")
    return f"{type(exc).__name__}: {exc}"


def map_error(exc: BaseException, during: type[TransportError], what: str) -> MessageBusError:
    """Translate a botocore error raised while doing ``what``.

    Everything becomes ``during`` (the operation's class: ConnectError, PublishError,
    ConsumeError, TopologyError ...) with a message saying what was wrong, except a missing
    region (:class:`ConfigurationError`) and an unknown profile (:class:`InvalidOption`). The
    caller chains it: ``raise map_error(exc, ...) from exc``. Messages never contain secrets
    (botocore's do not, and the endpoint URL cannot carry credentials).
    """
    if isinstance(exc, MessageBusError):
        return exc
    if isinstance(exc, NoRegionError):
        return ConfigurationError(f"{what}: no AWS region configured; add ?region=NAME to the sqs:// URL")
    if isinstance(exc, ProfileNotFound):
        return InvalidOption(f"{what}: {exc}; check ?profile= / AWS_PROFILE")
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return during(f"{what}: {_NO_CREDENTIALS}")
    if is_connection_error(exc):
        return during(f"{what}: cannot reach the AWS endpoint: {exc}")
    code = error_code(exc)
    if code in AUTH_CODES:
        return during(f"{what}: AWS rejected the credentials ({_describe(exc)})")
    if isinstance(exc, ClientError | BotoCoreError):
        return during(f"{what}: {_describe(exc)}")
    return during(f"{what}: {type(exc).__name__}: {exc}")
