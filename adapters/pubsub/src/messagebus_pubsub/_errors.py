"""Translate google-api-core / google-auth / client errors into the messagebus error tree.

Callers always chain: ``raise map_error(exc, ...) from exc`` so ``__cause__`` keeps the native
error for debugging while the message says what failed and what to check.
"""

from __future__ import annotations

from google.api_core import exceptions as gexc
from google.auth import exceptions as auth_exc
from google.cloud.pubsub_v1.publisher import exceptions as pub_exc

from messagebus import ConnectError, MessageBusError, MessageTooLarge, TransportError

__all__ = ["map_error"]

_UNREACHABLE = (gexc.ServiceUnavailable, gexc.DeadlineExceeded, gexc.RetryError, TimeoutError)


def _detail(exc: BaseException) -> str:
    if isinstance(exc, gexc.GoogleAPICallError):
        return f"{exc.code} {exc.message}".strip() if exc.code is not None else str(exc.message)
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def map_error(
    exc: BaseException, doing: str, *, where: str, default: type[TransportError] = TransportError
) -> MessageBusError:
    """The messagebus error for native error ``exc`` raised while ``doing`` something.

    ``where`` names the endpoint (emulator address or API host and project); ``default`` is
    the class for errors that are neither connectivity, auth nor size problems. Pure; never
    includes credentials.
    """
    if isinstance(exc, MessageBusError):
        return exc
    if isinstance(exc, pub_exc.MessageTooLargeError):
        return MessageTooLarge(f"{doing}: the message is larger than Pub/Sub's 10 MB request limit ({exc})")
    if isinstance(exc, gexc.RetryError) and isinstance(exc.cause, BaseException):
        cause = exc.cause
        if not isinstance(cause, _UNREACHABLE):
            return map_error(cause, doing, where=where, default=default)
        return ConnectError(f"{doing}: Pub/Sub at {where} is unreachable, gave up retrying ({_detail(cause)})")
    if isinstance(exc, _UNREACHABLE):
        return ConnectError(f"{doing}: Pub/Sub at {where} is unreachable ({_detail(exc)})")
    if isinstance(exc, gexc.Unauthenticated | gexc.PermissionDenied):
        return ConnectError(
            f"{doing}: Pub/Sub at {where} refused the credentials ({_detail(exc)}); check the credentials "
            "and that they have the Pub/Sub Editor role on the project"
        )
    if isinstance(exc, auth_exc.DefaultCredentialsError):
        return ConnectError(
            f"{doing}: no Google Cloud credentials found for {where} ({exc}). Set credentials_file=PATH in "
            "the URL or GOOGLE_APPLICATION_CREDENTIALS, run `gcloud auth application-default login`, or "
            "point at an emulator with emulator_host=HOST:PORT / PUBSUB_EMULATOR_HOST"
        )
    if isinstance(exc, auth_exc.GoogleAuthError):
        return ConnectError(f"{doing}: authenticating to {where} failed ({type(exc).__name__}: {exc})")
    if isinstance(exc, gexc.NotFound):
        return default(f"{doing}: not found at {where} ({_detail(exc)}); does the project exist?")
    if isinstance(exc, gexc.InvalidArgument):
        return default(f"{doing}: Pub/Sub at {where} rejected the request ({_detail(exc)})")
    return default(f"{doing}: {_detail(exc)}")
