"""SkeletonTransport: the contract on the core's TransportBase; the modules beside it do the
work (connection, publishing, consuming, topology)."""

from __future__ import annotations

from collections.abc import Sequence

from messagebus import LifecycleError, TopologyError
from messagebus.transports import (
    Capabilities,
    Consumer,
    DeliveryHandler,
    Destination,
    OutgoingMessage,
    TransportBase,
    TransportURL,
)

from ._connection import Connection
from ._consuming import SkeletonConsumer
from ._errors import ERRORS
from ._options import SCHEME, SkeletonOptions, parse_url
from ._publishing import Publisher
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
        for consumer in list(self.consumers):
            if isinstance(consumer, SkeletonConsumer):
                consumer.wake()

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
