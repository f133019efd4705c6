"""The one table that turns google-api-core / google-auth / client errors into the messagebus
error tree (raise sites: ``raise errors.map(exc, PublishError, "publishing to x") from exc``).

Messages say what failed and what to check; they never include credentials.
"""

from __future__ import annotations

from google.api_core import exceptions as gexc
from google.api_core.retry_async import AsyncRetry
from google.auth import exceptions as auth_exc

from messagebus import ConnectError, MessageBusError
from messagebus.transports import ErrorMap, describe_error

__all__ = ["errors", "transient_retry"]

_UNREACHABLE = (gexc.ServiceUnavailable, gexc.DeadlineExceeded, gexc.RetryError, TimeoutError)
# What a call retries (as the client library's publisher does); anything else fails at once.
_TRANSIENT = (
    gexc.ServiceUnavailable,
    gexc.DeadlineExceeded,
    gexc.Aborted,
    gexc.InternalServerError,
    gexc.ResourceExhausted,
    gexc.Unknown,
)


def _detail(exc: BaseException) -> str:
    if isinstance(exc, gexc.GoogleAPICallError):
        return f"{exc.code} {exc.message}".strip() if exc.code is not None else str(exc.message)
    return describe_error(exc)


def _gave_up(exc: BaseException, what: str, default: type[MessageBusError]) -> MessageBusError:
    cause = exc.cause if isinstance(exc, gexc.RetryError) else None
    if isinstance(cause, BaseException) and not isinstance(cause, _UNREACHABLE):
        return errors.map(cause, default, what)
    return ConnectError(f"{what}: Pub/Sub is unreachable, gave up retrying ({_detail(cause or exc)})")


errors = ErrorMap(
    (gexc.RetryError, _gave_up),
    (_UNREACHABLE, lambda exc, what, _: ConnectError(f"{what}: Pub/Sub is unreachable ({_detail(exc)})")),
    (
        (gexc.Unauthenticated, gexc.PermissionDenied),
        lambda exc, what, _: ConnectError(
            f"{what}: Pub/Sub refused the credentials ({_detail(exc)}); check the credentials and that they "
            "have the Pub/Sub Editor role on the project"
        ),
    ),
    (
        auth_exc.DefaultCredentialsError,
        lambda exc, what, _: ConnectError(
            f"{what}: no Google Cloud credentials found ({exc}). Set credentials_file=PATH in the URL or "
            "GOOGLE_APPLICATION_CREDENTIALS, run `gcloud auth application-default login`, or point at an "
            "emulator with emulator_host=HOST:PORT / PUBSUB_EMULATOR_HOST"
        ),
    ),
    (
        auth_exc.GoogleAuthError,
        lambda exc, what, _: ConnectError(f"{what}: authenticating failed ({describe_error(exc)})"),
    ),
    (gexc.NotFound, lambda exc, what, default: default(f"{what}: not found ({_detail(exc)}); does the project exist?")),
    (
        gexc.InvalidArgument,
        lambda exc, what, default: default(f"{what}: Pub/Sub rejected the request ({_detail(exc)})"),
    ),
    describe=_detail,
)


def transient_retry(timeout: float) -> AsyncRetry:
    """The client-side retry of a call: transient errors only, for ``timeout`` seconds."""
    return AsyncRetry(
        initial=0.1,
        maximum=2.0,
        multiplier=2.0,
        timeout=timeout,
        predicate=lambda exc: isinstance(exc, _TRANSIENT),
    )
