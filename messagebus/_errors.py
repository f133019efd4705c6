"""The one exception tree of messagebus.

Every error the SDK raises derives from :class:`MessageBusError`; native broker-client
errors are translated by the adapters and chained (``raise ... from native``), so
``except MessageBusError`` catches everything and ``__cause__`` keeps the details::

    MessageBusError
    ├── ConfigurationError          bad URL, option or argument; raised before any I/O
    │   ├── InvalidURL              the URL cannot be parsed
    │   ├── InvalidOption           unknown or ill-typed query option (lists valid ones)
    │   ├── TransportNotFound       no transport for the URL scheme (names the package)
    │   ├── InvalidDestination      empty or illegal topic / queue / group name
    │   ├── InvalidHeaders          headers that are not ``str -> str`` or use a reserved name
    │   └── InvalidHandler          a handler that is not ``async def`` or has bad parameters
    ├── LifecycleError              an operation in the wrong bus state (publish before start ...)
    ├── UnsupportedFeature          the transport cannot do what was asked
    ├── RequestTimeout              no reply to ``Bus.request`` in time (also a TimeoutError)
    ├── RequestFailed               the responder failed for good (its error type is named)
    ├── TransportError              the broker or the connection to it failed
    │   ├── ConnectError            cannot connect / authenticate / reach the broker
    │   ├── PublishError            the broker did not confirm a publish
    │   │   └── MessageTooLarge     the message exceeds the transport's size limit
    │   ├── TopologyError           declaring a queue/topic/subscription failed (conflict ...)
    │   └── ConsumeError            fetching or settling messages failed
    └── SerializationError
        ├── EncodeError             the payload cannot be encoded
        └── DecodeError             the body does not decode into the handler's type

Messages never include passwords: URLs in messages are always redacted.
"""

from __future__ import annotations

__all__ = [
    "ConfigurationError",
    "ConnectError",
    "ConsumeError",
    "DecodeError",
    "EncodeError",
    "InvalidDestination",
    "InvalidHandler",
    "InvalidHeaders",
    "InvalidOption",
    "InvalidURL",
    "LifecycleError",
    "MessageBusError",
    "MessageTooLarge",
    "PublishError",
    "RequestFailed",
    "RequestTimeout",
    "SerializationError",
    "TopologyError",
    "TransportError",
    "TransportNotFound",
    "UnsupportedFeature",
]


class MessageBusError(Exception):
    """Root of every error raised by messagebus and its adapters."""


class ConfigurationError(MessageBusError, ValueError):
    """A URL, option or argument is wrong. Raised before any I/O happens."""


class InvalidURL(ConfigurationError):
    """The transport URL cannot be parsed or lacks a required part."""


class InvalidOption(ConfigurationError):
    """A URL query option is unknown or has a value of the wrong type."""


class TransportNotFound(ConfigurationError):
    """No installed transport handles the URL scheme; the message names what to install."""


class InvalidDestination(ConfigurationError):
    """A topic, queue or group name is empty or uses characters that are not allowed."""


class InvalidHeaders(ConfigurationError):
    """Headers are not a ``str -> str`` mapping, or use a name reserved by messagebus."""


class InvalidHandler(ConfigurationError):
    """A handler is not an ``async def`` function or its parameters cannot be served."""


class LifecycleError(MessageBusError, RuntimeError):
    """An operation was called in a bus state that does not allow it."""


class UnsupportedFeature(MessageBusError):
    """The transport does not support the requested feature."""


class RequestTimeout(MessageBusError, TimeoutError):
    """``Bus.request`` got no reply within its timeout (no responder, or one too slow)."""


class RequestFailed(MessageBusError):
    """The responder's handler failed for good (dead-lettered) instead of replying.

    ``error_type`` is the qualified class name of what it raised (``builtins.ValueError``,
    ``messagebus.DecodeError`` ...), ``error_message`` its message; the exception itself
    stays in the responder's process.
    """

    def __init__(self, message: str, *, error_type: str = "", error_message: str = "") -> None:
        super().__init__(message)
        self.error_type = error_type
        self.error_message = error_message


class TransportError(MessageBusError):
    """The broker, or the connection to it, failed. ``__cause__`` holds the native error."""


class ConnectError(TransportError):
    """Connecting or authenticating to the broker failed."""


class PublishError(TransportError):
    """A publish was not confirmed by the broker; the message may not have been stored."""


class MessageTooLarge(PublishError, ValueError):
    """The encoded message is larger than the transport allows. Nothing was sent."""


class TopologyError(TransportError):
    """Declaring broker topology (queues, topics, subscriptions) failed."""


class ConsumeError(TransportError):
    """Fetching, acknowledging or redelivering messages failed."""


class SerializationError(MessageBusError, ValueError):
    """Encoding a payload or decoding a message body failed."""


class EncodeError(SerializationError, TypeError):
    """The payload cannot be encoded by the serializer."""


class DecodeError(SerializationError):
    """The message body cannot be decoded into the handler's declared type."""


# Errors are documented and caught as messagebus.X; show them so in tracebacks and headers.
for _name in __all__:
    globals()[_name].__module__ = "messagebus"
del _name
