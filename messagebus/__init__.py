"""messagebus: one async API for publish/subscribe and work queues over RabbitMQ, Kafka,
AWS SQS/SNS, Google Cloud Pub/Sub and an in-memory transport, chosen by URL.

Quick start::

    from messagebus import Bus

    bus = Bus.from_url("memory://", service="billing")

    @bus.subscribe("orders.created")
    async def bill(order: OrderCreated) -> None: ...

    async with bus:
        await bus.publish("orders.created", OrderCreated(id=42))
"""

from ._bus import Bus, BusState
from ._clock import ManualClock
from ._config import TransportURL
from ._dead_letters import QueueDepth
from ._destination import Destination, DestinationKind
from ._errors import (
    ConfigurationError,
    ConnectError,
    ConsumeError,
    DecodeError,
    EncodeError,
    InvalidDestination,
    InvalidHandler,
    InvalidHeaders,
    InvalidOption,
    InvalidURL,
    LifecycleError,
    MessageBusError,
    MessageTooLarge,
    PublishError,
    RequestFailed,
    RequestTimeout,
    SerializationError,
    TopologyError,
    TransportError,
    TransportNotFound,
    UnsupportedFeature,
)
from ._history import StartFrom
from ._message import Envelope, OutgoingMessage
from ._middleware import Handler, Middleware, PublishFn, PublishMiddleware
from ._retry import Retry
from ._signals import Nack, Reject

__version__ = "0.1.0"

__all__ = [
    "Bus",
    "BusState",
    "ConfigurationError",
    "ConnectError",
    "ConsumeError",
    "DecodeError",
    "Destination",
    "DestinationKind",
    "EncodeError",
    "Envelope",
    "Handler",
    "InvalidDestination",
    "InvalidHandler",
    "InvalidHeaders",
    "InvalidOption",
    "InvalidURL",
    "LifecycleError",
    "ManualClock",
    "MessageBusError",
    "MessageTooLarge",
    "Middleware",
    "Nack",
    "OutgoingMessage",
    "PublishError",
    "PublishFn",
    "PublishMiddleware",
    "QueueDepth",
    "Reject",
    "RequestFailed",
    "RequestTimeout",
    "Retry",
    "SerializationError",
    "StartFrom",
    "TopologyError",
    "TransportError",
    "TransportNotFound",
    "TransportURL",
    "UnsupportedFeature",
]
