"""The transport contract: what an adapter implements so the bus runs on its broker.

The bus does everything broker-neutral (serialization, middleware, retry policy, dead
letters, tracing); a transport only moves bytes. It implements four members of
:class:`Transport` (``connect``, ``close``, ``publish``, ``subscribe``) and declares its
:class:`Capabilities`; its consumers hand the bus concrete :class:`Delivery` objects and
supply the broker primitives behind them (:class:`DeliverySource`: ack, redeliver after a
delay, hand back). Shared consumer machinery is in :class:`ConsumerBase`. Optional
capabilities are declared protocols (:class:`PublishAttributes`), never ``getattr`` hooks.
Adapters import only ``messagebus`` and ``messagebus.transports``.
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
    "DeleteQueue",
    "DeliveryHandler",
    "DeliveryLike",
    "PublishAttributes",
    "ReadyConsumer",
    "Transport",
    "TransportFactory",
]


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a transport guarantees; the conformance kit gates its tests on these.

    - ``ordering``: messages with the same key reach one group in publish order.
    - ``ordering_across_instances``: that order also holds while several instances of the
      group compete and while instances join or leave (partitions, message groups, key
      affinity); ``False`` where it holds within one consumer instance only (RabbitMQ).
    - ``native_delay``: a delayed redelivery does not hold back other messages.
    - ``persistence``: messages survive a broker restart.
    - ``consumer_groups``: a topic can feed several independent groups.
    - ``max_message_size``: largest encoded body in bytes (``None``: no limit known).
    - ``network``: the broker is reached over TCP (reconnect tests run through a proxy).
    - ``wildcards``: ``subscribe`` takes a pattern source (``orders.*``, ``orders.#``; see
      :attr:`Destination.is_pattern`) and delivers the messages of every matching topic,
      also of topics made after it started (within the time the adapter's README states).
      Without it the bus raises :class:`UnsupportedFeature` at registration.
    - ``wildcards_reason``: why not, named in that error (``"SNS topics are separate ..."``).
    """

    ordering: bool = True
    ordering_across_instances: bool = True
    native_delay: bool = True
    persistence: bool = True
    consumer_groups: bool = True
    max_message_size: int | None = None
    network: bool = True
    wildcards: bool = False
    wildcards_reason: str = "its adapter does not map subscription patterns"


@runtime_checkable
class DeliveryLike(Protocol):
    """What the bus reads of a delivery: the concrete :class:`Delivery` has it all.

    Adapters hand the bus :class:`Delivery` objects; this protocol types the bus's side
    (worker pool, settler) so that an adapter still on its own delivery class type-checks
    while it moves over. One received message, owned by the handler call it was given to.

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
    def topic(self) -> str | None:
        """The topic a pattern subscription's message was published to (``None``: the
        subscribed name)."""
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


DeliveryHandler = Callable[[DeliveryLike], Awaitable[None]]


@runtime_checkable
class Consumer(Protocol):
    """A running subscription of a transport, returned by :meth:`Transport.subscribe`."""

    async def stop(self, grace: float) -> None:
        """Stop fetching; wait up to ``grace`` seconds for in-flight handler calls; cancel the
        rest. Every delivery not settled by then is left for redelivery. Idempotent."""
        ...


@runtime_checkable
class ReadyConsumer(Protocol):
    """Optional capability of a :class:`Consumer`: it can tell when it receives messages
    (a Kafka group joined and its partitions assigned). ``Bus.start`` waits for it, bounded
    by ``ready_timeout``; consumers without it count as ready when ``subscribe`` returns."""

    async def ready(self) -> None:
        """Return once the consumer receives messages. Cancellable; never raises otherwise;
        may be awaited any number of times."""
        ...


@runtime_checkable
class PublishAttributes(Protocol):
    """Optional capability: telemetry attributes of publishing to a destination."""

    def publish_attributes(self, destination: Destination) -> Mapping[str, AttributeValue]:
        """Attributes put on the ``send`` span of a publish to ``destination``; they may
        override ``messaging.system`` (SNS topics of the SQS transport do). Pure, cheap
        (called per publish call), thread-safe."""
        ...


@runtime_checkable
class DeleteQueue(Protocol):
    """Optional capability: delete a queue the bus made for itself (a request's reply queue)."""

    async def delete_queue(self, name: str) -> None:
        """Delete logical queue ``name`` and every message in it (and its dead-letter queue
        if one was made). Idempotent: a queue that does not exist is not an error. Raises
        :class:`TransportError` when the broker refuses."""
        ...


@runtime_checkable
class Transport(Protocol):
    """A broker connection. One per :class:`~messagebus.Bus`; used from one event loop and
    not thread-safe.

    ``connect`` and ``close`` are idempotent; ``publish`` and ``subscribe`` before
    ``connect`` (or after ``close``) raise :class:`LifecycleError` or :class:`ConnectError`.
    ``publish`` may be called concurrently from many tasks. Errors are mapped to the
    messagebus error tree with the native error chained; passwords never appear in messages.

    ``Delivery.attempt`` is 1 on the first delivery and grows by one per ``retry``; whether
    a redelivery by the broker itself (after a crash, a lost connection or a cancelled
    handler) also counts is stated in each adapter's README (memory, RabbitMQ and SQS count
    it; Kafka does not, since an uncommitted offset carries no count).
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
        until a consumer takes them (the queue is created if needed). A batch is not atomic:
        when it raises, any prefix of it may have been stored (a retry may duplicate those).
        Messages of one key keep their order within a batch. Raises
        :class:`MessageTooLarge` or :class:`InvalidHeaders` before sending anything too big,
        :class:`PublishError` when a message was not confirmed, :class:`ConnectError` when the
        broker cannot be reached.
        """
        ...

    async def subscribe(self, source: Destination, handler: DeliveryHandler, *, concurrency: int) -> Consumer:
        """Declare ``source`` (the group's queue/subscription, or the queue) and start
        delivering to ``handler`` with at most ``concurrency`` calls in flight, keeping
        per-key order when ``capabilities.ordering``. Messages are settled by the handler.
        ``source.filter`` (header equalities) may be matched by the broker where it can
        (the bus matches it again, so an adapter may ignore it); a pattern ``source.name``
        comes only when ``capabilities.wildcards``. Raises :class:`TopologyError` when the
        declaration conflicts with what exists."""
        ...


TransportFactory = Callable[[TransportURL], Transport]
