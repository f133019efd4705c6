"""NatsTransport: the messagebus transport contract on NATS JetStream (nats-py)."""

from __future__ import annotations

from collections.abc import Sequence

from messagebus.transports import (
    Capabilities,
    Consumer,
    DeliveryHandler,
    Destination,
    DestinationKind,
    OutgoingMessage,
    TransportBase,
    TransportURL,
    dead_letter_name,
    log_ignored,
)

from . import _admin
from ._connection import Connection
from ._consuming import NatsConsumer, PatternConsumer
from ._options import SCHEMES, NatsOptions, load_options
from ._publishing import Publisher
from ._telemetry import MESSAGING_SYSTEM
from ._topology import names_of, start_of

__all__ = ["NatsTransport"]


class NatsTransport(TransportBase[NatsOptions, Connection, Publisher], schemes=SCHEMES, system=MESSAGING_SYSTEM):
    """A NATS JetStream connection for one :class:`~messagebus.Bus`; URLs
    ``nats://[user:password@|token@]host[:port][,host2...][?options]`` and ``nats+tls://``.

    The lifecycle of :class:`~messagebus.transports.TransportBase`. ``publish`` returns once
    JetStream acked every message (stored in its stream); streams are created on demand.
    A new topic group starts at ``start_from`` (default: now, its first subscribe); a queue keeps
    everything until consumed. Per-key order holds within one consumer instance, not across
    competing instances of a group. ``Delivery.attempt`` counts retries and JetStream's
    redeliveries (ack_wait ran out, a hand-back at stop).
    """

    def build(self) -> tuple[Capabilities, Connection, Publisher]:
        """Capabilities (persistent with file storage), the connection and the publisher."""
        capabilities = Capabilities(
            ordering=True,
            ordering_across_instances=False,  # competing pulls of one durable take any key
            native_delay=True,  # a retry waits as a held copy or a delayed NAK: nothing queues behind it
            persistence=self.options.storage == "file",
            consumer_groups=True,
            max_message_size=self.options.max_message_size,
            network=True,
            # A new durable starts by deliver policy, but an interest stream drops what every group acked.
            history=self.options.retention == "limits",
            history_reason=(
                "its topic streams use interest retention (a message is dropped once every group acked it); "
                "add retention=limits (and max_age / max_msgs) to the URL to keep a topic's history"
            ),
            wildcards=True,  # a durable per matching topic stream, new topics within pattern_interval
        )
        connection = Connection(self.url, self.options)
        return capabilities, connection, Publisher(connection)

    @classmethod
    def load_options(cls, url: TransportURL) -> NatsOptions:
        """Raises :class:`InvalidURL` for no server or a path, :class:`InvalidOption` for bad options."""
        return load_options(url)

    async def delete_queue(self, name: str) -> None:
        """Delete queue ``name``'s stream (its durable and messages with it) and that of
        ``name.dlq``. Idempotent. Raises :class:`LifecycleError` before ``connect``,
        :class:`TopologyError` when JetStream refuses."""
        _, topology = self.connection.require()
        for queue in (name, dead_letter_name(name, None)):
            await topology.delete(names_of(Destination(DestinationKind.QUEUE, queue), self.options.prefix))

    async def open_consumer(self, source: Destination, handler: DeliveryHandler, concurrency: int) -> Consumer:
        """Declare the stream and durable pull consumer of ``source`` (a new one at
        ``source.start_from``, else the URL option's; one that exists keeps its start, said by
        ``log_ignored``), then start consuming; a pattern source gets a :class:`PatternConsumer`."""
        _, topology = self.connection.require()
        if source.is_pattern:
            pattern = PatternConsumer(self.connection, self.publisher, source, handler, concurrency)
            try:
                await pattern.start()
            except BaseException:
                await pattern.stop(0.0)
                raise
            return pattern
        consumer = NatsConsumer(self.connection, self.publisher, source, handler, concurrency)
        if await topology.ensure_consumer(consumer.names, start_of(source.start_from)):
            log_ignored(source, "nats")
        await consumer.start_consuming()
        return consumer

    # -- BrokerAdmin ----------------------------------------------------------------------------

    async def dead_letter_queues(self) -> list[str]:
        """The logical dead-letter queues of this prefix: its work-queue streams whose subject
        maps back to ``<queue>.dlq`` or ``<topic>.<group>.dlq``, sorted (a name the stream
        could not hold, cut or hashed, is left out). Read-only. Raises :class:`TopologyError`
        when listing fails, :class:`LifecycleError` before ``connect``."""
        return await _admin.dead_letter_queues(self.connection)

    async def depth(self, source: Destination) -> int:
        """The ``num_pending`` (stored, not yet delivered) of the durable consumer of
        ``source`` (a queue, or a topic's group; a pattern group's summed over its topics);
        a queue nobody consumed yet counts its stream's messages; 0 when nothing exists.
        Read-only. Raises :class:`InvalidDestination` for a topic without a group,
        :class:`TopologyError` when JetStream does not answer."""
        return await _admin.depth(self.connection, source)

    async def publish_to_group(self, source: Destination, messages: Sequence[OutgoingMessage]) -> None:
        """Store ``messages`` on the topic's stream as copies for the durable of group
        ``source`` only (every other durable acks them unhandled, like another group's
        retry), or in queue ``source``; each an attempt 1 with a fresh ``Nats-Msg-Id`` (never
        dropped as a duplicate of the original, and the same message replayed twice is
        stored twice); creates the durable if missing; returns once JetStream acked every
        one. A pattern group's copies go to each message's own topic. Raises like
        :meth:`publish`, :class:`InvalidDestination` for a topic without a group."""
        await _admin.publish_to_group(self.publisher, source, messages)

    async def delete_group(self, source: Destination) -> None:
        """Delete the durable consumer of group ``source`` (a pattern group's on every
        matching topic stream, and its registry record) and its dead-letter stream. Another
        group's durables and the messages they still have to take stay. Idempotent. Raises
        :class:`InvalidDestination` for a source that is not a topic's group,
        :class:`TopologyError` when JetStream refuses."""
        await _admin.delete_group(self.connection, source)
