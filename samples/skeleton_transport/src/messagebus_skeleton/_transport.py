"""SkeletonTransport: the contract on the core's TransportBase; the modules beside it do the
work (connection, publishing, consuming, topology)."""

from __future__ import annotations

from collections.abc import Sequence

from messagebus import LifecycleError, PublishError, TopologyError, TransportError
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
from ._consuming import SkeletonConsumer
from ._errors import ERRORS
from ._options import SCHEME, SkeletonOptions, parse_url
from ._publishing import Publisher, check_sizes
from ._telemetry import MESSAGING_SYSTEM
from ._topology import declare

__all__ = ["SkeletonTransport"]


class SkeletonTransport(
    TransportBase[SkeletonOptions, Connection, Publisher], schemes=(SCHEME,), system=MESSAGING_SYSTEM
):
    """The messagebus transport for ``skeleton:///path/to/broker.db`` (a SQLite file that
    any number of processes share).

    The lifecycle of :class:`~messagebus.transports.TransportBase` (one event loop, not
    thread-safe; ``connect``/``close`` idempotent). A publish batch is stored in one
    transaction (all or nothing, stronger than the contract asks); calls made together are
    committed together. ``attempt`` counts every receive of a message, broker redeliveries
    included.
    """

    def build(self) -> tuple[Capabilities, Connection, Publisher]:
        """Capabilities (a local file: no network), the database connection, the publisher."""
        capabilities = Capabilities(
            ordering=True,  # the oldest message of a key is the only one of it that can be received
            native_delay=True,  # a redelivery's delay is its visibility time: nothing waits behind it
            persistence=True,  # a committed row survives any process
            consumer_groups=True,
            max_message_size=self.options.max_message_size,
            network=False,  # a local file: no connection a proxy could cut
        )
        connection = Connection(parse_url(self.url)[0], self.options)
        return capabilities, connection, Publisher(connection)

    @classmethod
    def load_options(cls, url: TransportURL) -> SkeletonOptions:
        """Raises :class:`InvalidURL` for a host, credentials or no file path."""
        return parse_url(url)[1]

    async def teardown(self) -> None:
        """Wait for publishes being committed, then close the database."""
        await self.publisher.drain()
        await self.connection.close()

    async def publish(self, messages: Sequence[OutgoingMessage]) -> None:
        """Store the messages and wake this process's consumers (others poll)."""
        await super().publish(messages)
        self._wake_consumers()

    def _wake_consumers(self) -> None:
        for consumer in list(self.consumers):
            if isinstance(consumer, SkeletonConsumer):
                consumer.wake()

    # -- BrokerAdmin: the SQL is in _admin; these map its errors ------------------------------

    async def dead_letter_queues(self) -> list[str]:
        """The ``*.dlq`` queues that hold messages, sorted (an emptied one is gone: a queue
        exists while it has rows). Raises :class:`LifecycleError` when not connected,
        :class:`TransportError` when the database refuses."""
        try:
            return await self.connection.run(_admin.dead_letter_queues)
        except Exception as exc:
            raise ERRORS.map(exc, TransportError, "listing the dead-letter queues") from exc

    async def depth(self, source: Destination) -> int:
        """Messages of a queue or a topic's group that no consumer holds (delayed retries
        included); 0 when it does not exist. Read-only. Raises :class:`InvalidDestination`
        for a topic without a group, else like :meth:`dead_letter_queues`."""
        _admin.check_source(source, "depth")
        try:
            return await self.connection.run(_admin.depth, source)
        except Exception as exc:
            raise ERRORS.map(exc, TransportError, f"reading the depth of {source}") from exc

    async def publish_to_group(self, source: Destination, messages: Sequence[OutgoingMessage]) -> None:
        """Store ``messages`` as first attempts in the queue of group ``source`` (subscribed
        first if it is not) or of the queue ``source``, and no other; committed before this
        returns. Raises :class:`InvalidDestination` for a topic without a group,
        :class:`MessageTooLarge` (nothing stored), :class:`LifecycleError` or :class:`PublishError`."""
        _admin.check_source(source, "publish_to_group")
        check_sizes(messages, self.options.max_message_size)
        try:
            await self.connection.run(_admin.store_for_group, source, messages)
        except Exception as exc:
            raise ERRORS.map(exc, PublishError, f"publishing to {source}") from exc
        self._wake_consumers()

    async def delete_group(self, source: Destination) -> None:
        """Unsubscribe group ``source`` and delete its messages and dead letters; other
        groups keep theirs. Idempotent. Raises :class:`InvalidDestination` unless ``source``
        is a topic's group, :class:`LifecycleError` or :class:`TopologyError`."""
        _admin.check_source(source, "delete_group", queue=False)
        try:
            await self.connection.run(_admin.delete_group, source)
        except Exception as exc:
            raise ERRORS.map(exc, TopologyError, f"deleting the group {source}") from exc

    async def open_consumer(self, source: Destination, handler: DeliveryHandler, concurrency: int) -> Consumer:
        """Subscribe ``source``'s group (a topic) and start polling its queue. Raises
        :class:`LifecycleError` when not connected, :class:`TopologyError` when the database
        refused the subscription."""
        if not self.connection.is_open:
            raise LifecycleError("the skeleton transport is not connected; call connect() first")
        try:
            queue = await self.connection.run(declare, source)
        except Exception as exc:
            raise ERRORS.map(exc, TopologyError, f"subscribing {source}") from exc
        consumer = SkeletonConsumer(self.connection, queue, handler, concurrency)
        consumer.start()
        return consumer
