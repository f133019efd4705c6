"""The transport contract: what an adapter implements so the bus runs on its broker.

The bus does everything broker-neutral (serialization, middleware, retry policy, dead
letters, tracing); a transport only moves bytes: it publishes confirmed messages, delivers
them to a handler with bounded concurrency, and settles each delivery (ack, or redeliver
after a delay). Adapters import only ``messagebus`` and ``messagebus.transports``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from ._config import TransportURL
from ._destination import Destination
from ._message import AttributeValue, OutgoingMessage

__all__ = [
    "Capabilities",
    "Consumer",
    "Delivery",
    "DeliveryHandler",
    "Transport",
    "TransportFactory",
]


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a transport guarantees; the conformance kit gates its tests on these.

    - ``ordering``: messages with the same key reach one group in publish order.
    - ``native_delay``: a delayed redelivery does not hold back other messages.
    - ``persistence``: messages survive a broker restart.
    - ``consumer_groups``: a topic can feed several independent groups.
    - ``max_message_size``: largest encoded body in bytes (``None``: no limit known).
    - ``network``: the broker is reached over TCP (reconnect tests run through a proxy).
    """

    ordering: bool = True
    native_delay: bool = True
    persistence: bool = True
    consumer_groups: bool = True
    max_message_size: int | None = None
    network: bool = True


@runtime_checkable
class Delivery(Protocol):
    """One received message, owned by the handler call it was given to.

    ``headers`` are the logical headers (CloudEvents under ``ce-`` names). ``attempt`` is 1 on
    the first delivery. Exactly one settle call (:meth:`ack` or :meth:`retry`) is made per
    delivery, on the event loop that received it; a delivery that is never settled (its
    handler was cancelled, its consumer stopped) must be redelivered by the transport.
    """

    @property
    def body(self) -> bytes:
        """The encoded payload."""
        ...

    @property
    def headers(self) -> Mapping[str, str]:
        """Logical headers of the message."""
        ...

    @property
    def key(self) -> str | None:
        """The ordering key, if the producer gave one."""
        ...

    @property
    def attempt(self) -> int:
        """Delivery attempt, starting at 1."""
        ...

    @property
    def raw(self) -> Any:
        """The native message object of the broker client."""
        ...

    @property
    def messaging_attributes(self) -> Mapping[str, AttributeValue]:
        """Transport-specific telemetry attributes (partition, offset, routing key ...)."""
        ...

    async def ack(self) -> None:
        """Settle as done: the broker forgets the message. Raises :class:`ConsumeError`."""
        ...

    async def retry(self, delay: float, headers: Mapping[str, str]) -> None:
        """Redeliver to the same consumer group after ``delay`` seconds with ``attempt + 1``.

        ``headers`` are extra headers to carry to the redelivery when the transport
        re-publishes (it may ignore them when it redelivers natively). The redelivery must not
        hold back other messages when ``capabilities.native_delay`` is true. Raises
        :class:`ConsumeError`.
        """
        ...


DeliveryHandler = Callable[[Delivery], Awaitable[None]]


@runtime_checkable
class Consumer(Protocol):
    """A running subscription of a transport, returned by :meth:`Transport.subscribe`."""

    async def stop(self, grace: float) -> None:
        """Stop fetching; wait up to ``grace`` seconds for in-flight handler calls; cancel the
        rest. Every delivery not settled by then is left for redelivery. Idempotent."""
        ...


@runtime_checkable
class Transport(Protocol):
    """A broker connection. One per :class:`~messagebus.Bus`; used from one event loop.

    ``connect`` and ``close`` are idempotent. Errors are mapped to the messagebus error tree
    with the native error chained; passwords never appear in messages.

    A transport may also define ``publish_attributes(destination) -> Mapping[str,
    AttributeValue]``: telemetry attributes of publishing there, put on the ``send`` span
    (it may override ``messaging.system``, as SNS topics of the SQS transport do).
    """

    capabilities: Capabilities
    #: OpenTelemetry ``messaging.system`` value (``rabbitmq``, ``kafka``, ``aws_sqs`` ...).
    messaging_system: str

    async def connect(self) -> None:
        """Open the connection. Raises :class:`ConnectError` after a bounded retry."""
        ...

    async def close(self) -> None:
        """Close the connection and release every resource. Idempotent."""
        ...

    async def publish(self, messages: Sequence[OutgoingMessage]) -> None:
        """Publish and return once the broker confirmed every message.

        Topic messages go to every group subscribed at that time; queue messages are kept
        until a consumer takes them (the queue is created if needed). Raises
        :class:`MessageTooLarge` before sending anything too big, :class:`PublishError` when a
        message was not confirmed.
        """
        ...

    async def subscribe(self, source: Destination, handler: DeliveryHandler, *, concurrency: int) -> Consumer:
        """Declare ``source`` (the group's queue/subscription, or the queue) and start
        delivering to ``handler`` with at most ``concurrency`` calls in flight, keeping
        per-key order when ``capabilities.ordering``. Messages are settled by the handler.
        Raises :class:`TopologyError` when the declaration conflicts with what exists."""
        ...


TransportFactory = Callable[[TransportURL], Transport]
