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
    "BrokerAdmin",
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
    - ``history``: ``subscribe`` honours :attr:`Destination.start_from` when it creates a
      group (``"earliest"``: every retained message of the topic; a time: those from it on,
      or from somewhat earlier: the bus skips deliveries stamped before it). Without it the
      bus raises :class:`UnsupportedFeature` at registration for any ``start_from`` but latest.
    - ``history_reason``: why not, named in that error.
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
    history: bool = False
    history_reason: str = "its adapter does not read retained messages"


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
class BrokerAdmin(Protocol):
    """Optional capability (every transport of this repository has it): what the operator's
    tools ask of the broker. ``Bus.peek_dead_letters``/``replay_dead_letters``/
    ``purge_dead_letters``, ``messagebus dlq``, ``tail`` and ``monitor`` use it; reading and
    removing messages is done by the core through :meth:`Transport.subscribe` (a dead-letter
    queue is a queue), so an adapter only answers what a consumer cannot.

    Used from the transport's event loop, like the rest of it; every method may be called
    concurrently with publishing and consuming. Errors are mapped like ``publish``'s
    (:class:`TransportError` subclasses, the native error chained).
    """

    async def dead_letter_queues(self) -> list[str]:
        """The logical names (``<topic>.<group>.dlq``, ``<queue>.dlq``) of the dead-letter
        queues that exist on the broker, sorted. A broker name that cannot be mapped back to a
        logical one (cut and hashed) is left out. Read-only."""
        ...

    async def depth(self, source: Destination) -> int | None:
        """How many messages of ``source`` (a queue, or a topic's group) are stored and not
        yet taken by a consumer: RabbitMQ's ready count, SQS's approximate visible count,
        Kafka's lag behind the group's committed offsets, Redis's group lag, NATS's pending
        count. ``0`` when the queue or group does not exist; ``None`` when the broker does not
        tell (the adapter README says where). Read-only, never creates anything."""
        ...

    async def publish_to_group(self, source: Destination, messages: Sequence[OutgoingMessage]) -> None:
        """Store ``messages`` for the one group ``source`` of a topic (``source.group`` set)
        and for no other group: its queue, its retry topic or subject, whatever the adapter's
        redelivery already uses; or, for a queue ``source``, in that queue. A replayed dead
        letter goes back this way. Each message is delivered as a first attempt
        (``attempt == 1``) with its headers, key and body as given, and is never dropped as a
        duplicate of the message it copies (a broker de-duplicating by message id, such as
        JetStream's ``Nats-Msg-Id`` or SQS FIFO's deduplication id, must get a fresh one);
        ``message.destination`` is the topic (or the queue) and is otherwise ignored. Returns
        once the broker confirmed every message, like :meth:`Transport.publish`, and raises
        like it. Creates the group's queue if it does not exist yet."""
        ...

    async def delete_group(self, source: Destination) -> None:
        """Delete a topic group's subscription (``source.group`` set): its queue, consumer
        group or subscription, with its retry and dead-letter parts, so that a throwaway
        group (``messagebus tail``) leaves nothing behind. Idempotent: a group that does not
        exist is not an error. Never touches another group."""
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
        comes only when ``capabilities.wildcards``. A group this call creates starts at
        ``source.start_from`` (only when ``capabilities.history``; ``None``: the latest); for a
        group that existed it is ignored, said by ``messagebus._history.log_ignored``. Raises
        :class:`TopologyError` when the declaration conflicts with what exists."""
        ...


TransportFactory = Callable[[TransportURL], Transport]
