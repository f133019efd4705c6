"""Translate aio-pika / aiormq errors into the messagebus error tree (passwords redacted)."""

from __future__ import annotations

import asyncio
import ssl

import aiormq.exceptions

from messagebus import ConnectError
from messagebus.transports import TransportURL

__all__ = ["TRANSIENT", "connect_error", "explain_channel_error", "is_transient_connect_error"]

#: Errors after which a connection attempt is worth repeating (the broker may come back).
TRANSIENT: tuple[type[BaseException], ...] = (
    aiormq.exceptions.AMQPConnectionError,
    ConnectionError,
    OSError,
    asyncio.TimeoutError,
    TimeoutError,
    EOFError,
)


def is_tls_error(exc: BaseException) -> bool:
    """True for a TLS failure, also when aiormq wrapped it in an ``AMQPConnectionError``."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ssl.SSLError | ssl.CertificateError):
            return True
        if isinstance(current, aiormq.exceptions.AMQPConnectionError) and "[SSL" in str(current):
            return True
        current = current.__cause__ or current.__context__
    return False


def is_transient_connect_error(exc: BaseException) -> bool:
    """True when retrying the connection may help (refused, reset, timeout), False for a
    problem that will not go away by itself (credentials, vhost, TLS verification)."""
    if isinstance(exc, aiormq.exceptions.ProbableAuthenticationError | aiormq.exceptions.ConnectionNotAllowed):
        return False
    if is_tls_error(exc):
        return False
    if isinstance(exc, aiormq.exceptions.InvalidFrameError | aiormq.exceptions.IncompatibleProtocolError):
        return False
    return isinstance(exc, TRANSIENT)


def connect_error(exc: BaseException, url: TransportURL, vhost: str, attempts: int) -> ConnectError:
    """A :class:`ConnectError` saying what went wrong and what to check. ``url`` is rendered
    redacted; the native error is chained by the caller."""
    where = url.render()
    user = url.username or "guest"
    if isinstance(exc, aiormq.exceptions.ProbableAuthenticationError):
        return ConnectError(
            f"RabbitMQ at {where} refused the credentials of user {user!r} (ACCESS_REFUSED); "
            "check the user name and password in the URL"
        )
    if isinstance(exc, aiormq.exceptions.ConnectionNotAllowed) or (
        isinstance(exc, aiormq.exceptions.InvalidFrameError) and "Connection.Close" in str(exc)
    ):
        return ConnectError(
            f"RabbitMQ at {where} refused to open virtual host {vhost!r} for user {user!r} (NOT_ALLOWED): "
            "the virtual host does not exist or the user has no permission on it "
            "(rabbitmqctl list_vhosts / list_user_permissions); the vhost is the URL path, '/' is written %2F"
        )
    if is_tls_error(exc):
        return ConnectError(
            f"TLS handshake with RabbitMQ at {where} failed: {exc}; check cafile/certfile/keyfile/verify"
        )
    if isinstance(exc, aiormq.exceptions.IncompatibleProtocolError | aiormq.exceptions.InvalidFrameError):
        return ConnectError(f"the server at {where} does not speak AMQP 0-9-1 as expected: {exc}")
    reason = str(exc) or type(exc).__name__
    return ConnectError(
        f"cannot connect to RabbitMQ at {where} after {attempts} attempt(s): {reason}; "
        "is the broker running and reachable?"
    )


def explain_channel_error(exc: BaseException, what: str) -> str:
    """Explain a failed declaration of ``what`` (a channel-level AMQP error) in plain words."""
    text = str(exc.args[0]) if exc.args else str(exc)
    if isinstance(exc, aiormq.exceptions.ChannelPreconditionFailed):
        return (
            f"cannot declare {what}: it already exists on the broker with other properties ({text}). "
            "messagebus will not change an existing queue or exchange; delete it (e.g. "
            "rabbitmqctl delete_queue NAME) or make it match, or use another name"
        )
    if isinstance(exc, aiormq.exceptions.ChannelAccessRefused):
        return f"cannot declare {what}: the broker refused access ({text}); check the user's configure permission"
    if isinstance(exc, aiormq.exceptions.ChannelNotFoundEntity):
        return f"cannot declare {what}: a referenced object does not exist ({text})"
    return f"cannot declare {what}: {text}"
