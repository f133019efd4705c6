"""aio-pika / aiormq errors -> the messagebus error tree: the one table of this adapter
(:func:`error_map`). Raise sites say what they were doing; the table, what each error means."""

from __future__ import annotations

import ssl
from collections.abc import Callable

import aiormq.exceptions as amqp

from messagebus import ConnectError, MessageBusError, TopologyError
from messagebus.transports import ErrorMap

__all__ = ["CONFLICTS", "ERRORS", "REFUSED", "RETRYABLE", "error_map", "is_transient_connect_error"]

Rule = Callable[[BaseException, str, type[MessageBusError]], MessageBusError]

#: Errors after which a connection attempt is worth repeating (the broker may come back).
_TRANSIENT = (amqp.AMQPConnectionError, OSError, TimeoutError, EOFError)
#: Errors after which a publish is repeated on a fresh channel or connection (at least once):
#: a nack by the broker (an internal error), a lost channel or connection, a timeout.
#: aio-pika and aiormq raise RuntimeError for some "connection closed" states.
RETRYABLE = (
    amqp.DeliveryError,
    amqp.ChannelClosed,
    amqp.AMQPConnectionError,
    ConnectionError,
    TimeoutError,
    RuntimeError,
)
#: Connection-level errors by which the broker refuses what the client sent (a frame it
#: cannot take, a malformed one): sending the same message again would only close the next
#: connection too, and every channel and consumer on it with it.
REFUSED = (
    amqp.ConnectionFrameError,
    amqp.ConnectionSyntaxError,
    amqp.ConnectionCommandInvalid,
    amqp.ConnectionUnexpectedFrame,
)
#: Declaration errors that trying again will not fix.
CONFLICTS = (amqp.ChannelPreconditionFailed, amqp.ChannelAccessRefused, amqp.ChannelNotFoundEntity)


def _is_tls_error(exc: BaseException) -> bool:
    """True for a TLS failure, also when aiormq wrapped it in an ``AMQPConnectionError``."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ssl.SSLError | ssl.CertificateError) or (
            isinstance(current, amqp.AMQPConnectionError) and "[SSL" in str(current)
        ):
            return True
        current = current.__cause__ or current.__context__
    return False


def _vhost_refused(exc: BaseException) -> bool:
    return isinstance(exc, amqp.ConnectionNotAllowed) or (
        isinstance(exc, amqp.InvalidFrameError) and "Connection.Close" in str(exc)
    )


def is_transient_connect_error(exc: BaseException) -> bool:
    """True when retrying the connection may help (refused, reset, timeout), False for a
    problem that will not go away by itself (credentials, vhost, TLS verification)."""
    if isinstance(exc, amqp.ProbableAuthenticationError | amqp.ConnectionNotAllowed | amqp.InvalidFrameError):
        return False
    return (
        isinstance(exc, _TRANSIENT) and not isinstance(exc, amqp.IncompatibleProtocolError) and not _is_tls_error(exc)
    )


def _says(template: str, kind: type[MessageBusError], **context: str) -> Rule:
    """A rule target: ``template`` with ``{what}``, ``{exc}`` (the native message),
    ``{reason}`` (a channel error's reply text) and ``context`` filled in."""

    def build(exc: BaseException, what: str, _default: type[MessageBusError]) -> MessageBusError:
        text = str(exc) or type(exc).__name__
        return kind(template.format(what=what, exc=text, reason=str(exc.args[0]) if exc.args else text, **context))

    return build


def _unreachable(exc: BaseException, what: str, default: type[MessageBusError]) -> MessageBusError:
    hint = "; is the broker running and reachable?" if default is ConnectError else ""
    return default(f"{what}: {exc or type(exc).__name__}{hint}")


def error_map(user: str = "guest", vhost: str = "/") -> ErrorMap:
    """The table, with the user and virtual host of a connection for its messages."""
    declare = "cannot declare {what}: "
    return ErrorMap(
        (
            amqp.ProbableAuthenticationError,
            _says(
                "{what}: the broker refused the credentials of user {user!r} (ACCESS_REFUSED); check the user name "
                "and password in the URL",
                ConnectError,
                user=user,
            ),
        ),
        (
            _vhost_refused,
            _says(
                "{what}: the broker refused to open virtual host {vhost!r} for user {user!r} (NOT_ALLOWED): it does "
                "not exist or the user has no permission on it (rabbitmqctl list_vhosts / list_user_permissions); "
                "the vhost is the URL path, '/' is written %2F",
                ConnectError,
                user=user,
                vhost=vhost,
            ),
        ),
        (
            _is_tls_error,
            _says("{what}: TLS handshake failed: {exc}; check cafile/certfile/keyfile/verify", ConnectError),
        ),
        (
            (amqp.IncompatibleProtocolError, amqp.InvalidFrameError),
            _says("{what}: the server does not speak AMQP 0-9-1 as expected: {exc}", ConnectError),
        ),
        (
            amqp.ChannelPreconditionFailed,
            _says(
                declare + "it already exists on the broker with other properties ({reason}). messagebus will not "
                "change an existing queue or exchange; delete it (e.g. rabbitmqctl delete_queue NAME) or make it "
                "match, or use another name",
                TopologyError,
            ),
        ),
        (
            amqp.ChannelAccessRefused,
            _says(
                declare + "the broker refused access ({reason}); check the user's configure permission", TopologyError
            ),
        ),
        (amqp.ChannelNotFoundEntity, _says(declare + "a referenced object does not exist ({reason})", TopologyError)),
        (_TRANSIENT, _unreachable),
    )


#: The table for errors with no connection in view (declarations, publishing).
ERRORS = error_map()
