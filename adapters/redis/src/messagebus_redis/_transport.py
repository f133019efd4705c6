"""RedisTransport: the messagebus transport contract on Redis Streams (redis-py asyncio)."""

from __future__ import annotations

from collections.abc import Sequence

from messagebus.transports import (
    Capabilities,
    Consumer,
    DeliveryHandler,
    Destination,
    OutgoingMessage,
    TransportBase,
    TransportURL,
)

from . import _admin
from ._connection import Connection
from ._consuming import RedisConsumer
from ._options import RedisOptions, load_options
from ._publishing import Publisher
from ._telemetry import MESSAGING_SYSTEM
from ._topology import declare, delete_queue

__all__ = ["RedisTransport"]


class RedisTransport(
    TransportBase[RedisOptions, Connection, Publisher],
    schemes=("redis", "rediss", "redis+cluster", "redis+sentinel"),
    system=MESSAGING_SYSTEM,
):
    """A Redis connection for one :class:`~messagebus.Bus`; URLs
    ``redis[s]://[[user]:password@]host[:port][/db][?options]``,
    ``redis+cluster://host:port[,host:port...][?options]`` and
    ``redis+sentinel://host:26379[,host...]/master_name[/db][?options]``.

    The lifecycle of :class:`~messagebus.transports.TransportBase`. ``publish`` returns once
    Redis replied to every XADD (stored in memory; on disk as the server's ``appendfsync``
    says: see the README); a publish cut by a lost connection is sent again until
    ``publish_timeout``, so it may be stored twice, never lost. ``Delivery.attempt`` counts
    retries and broker redeliveries: a hand-back at stop and an entry claimed from a consumer
    that held it past ``visibility_timeout`` each count one more.
    """

    def build(self) -> tuple[Capabilities, Connection, Publisher]:
        """Capabilities, the connection pool and the publisher."""
        capabilities = Capabilities(
            ordering=True,  # one consumer runs a key's messages one at a time, in stream order
            # Consumers of one group each take entries of any key: no order between them.
            ordering_across_instances=False,
            native_delay=True,  # a delayed retry waits in a sorted set, holding nothing back
            persistence=True,  # as durable as the server's AOF/RDB settings (README)
            consumer_groups=True,
            max_message_size=self.options.max_message_size,
            network=True,
            history=True,  # a new group is created at an entry id (README: trimming bounds it)
            wildcards_reason=(
                "each Redis topic is a stream of its own (mb:t:{topic}) and a consumer group reads one "
                "stream; Redis has no group across streams, and this adapter does not scan for matching "
                "streams"
            ),
        )
        connection = Connection(self.url, self._db, self.options)
        return capabilities, connection, Publisher(connection)

    @classmethod
    def load_options(cls, url: TransportURL) -> RedisOptions:
        """Raises :class:`InvalidURL` (several hosts, a path that is not a database number) or
        :class:`InvalidOption` (listing the valid options)."""
        return load_options(url)[1]

    @property
    def _db(self) -> int:
        return load_options(self.url)[0]

    async def teardown(self) -> None:
        """After the consumers stopped: finish publishes in flight, then close the client."""
        await self.publisher.drain()
        await self.connection.close()

    async def delete_queue(self, name: str) -> None:
        """Delete queue ``name`` (a reply queue): its stream with its group and every message,
        its retry stream and due set, and the same of ``name.dlq``. Idempotent. Raises
        :class:`LifecycleError` before ``connect``, :class:`TopologyError` or
        :class:`ConnectError` when Redis refuses or is unreachable."""
        await delete_queue(self.connection.require(), name, self.options.prefix)

    async def dead_letter_queues(self) -> list[str]:
        """The logical names of the dead-letter streams under this transport's ``prefix``,
        sorted (``SCAN`` of every master). Raises :class:`LifecycleError` before ``connect``,
        :class:`TopologyError` or :class:`ConnectError`."""
        return await _admin.dead_letter_queues(self.connection.require(), self.options.prefix)

    async def depth(self, source: Destination) -> int:
        """Entries of ``source`` (a queue or a topic's group) not yet delivered: the consumer
        group's lag on its stream and retry stream, plus delayed retries. ``0`` for a missing
        queue or group; never creates anything. Raises :class:`InvalidDestination` (a topic
        without a group), :class:`LifecycleError`, :class:`TopologyError` or :class:`ConnectError`."""
        return await _admin.depth(self.connection.require(), source, self.options.prefix)

    async def publish_to_group(self, source: Destination, messages: Sequence[OutgoingMessage]) -> None:
        """Add ``messages`` as first attempts to the retry stream of the one group ``source``
        (declared first if missing), or to the stream of the queue ``source``; confirmed and
        raising like :meth:`publish`. Raises :class:`InvalidDestination` for a topic without
        a group."""
        names = _admin.group_names(source, self.options.prefix, "publish_to_group", queue=True)
        if not names.queue:
            await declare(self.connection.require(), names, self.options.start_from, source.start_from)
        await self.publisher.publish(messages, to=names.stream if names.queue else names.retry)

    async def delete_group(self, source: Destination) -> None:
        """Destroy the consumer group ``source`` on its topic's stream and delete its retry
        stream, delayed retries and dead-letter queue; the stream and other groups stay.
        Idempotent. Raises :class:`InvalidDestination` (not a topic's group),
        :class:`LifecycleError`, :class:`TopologyError` or :class:`ConnectError`."""
        await _admin.delete_group(self.connection.require(), source, self.options.prefix)

    async def open_consumer(self, source: Destination, handler: DeliveryHandler, concurrency: int) -> Consumer:
        """One Redis consumer in the source's group, on its stream and retry stream."""
        consumer = RedisConsumer(self.connection, source, handler, concurrency)
        await consumer.start_consuming()
        return consumer
