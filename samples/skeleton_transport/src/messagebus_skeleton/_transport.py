"""SkeletonTransport: the four members of the contract, each a few lines over the modules
that do the work (connection, publishing, consuming, topology)."""

from __future__ import annotations

from collections.abc import Sequence

from messagebus import LifecycleError, TopologyError
from messagebus.transports import (
    Capabilities,
    Consumer,
    DeliveryHandler,
    Destination,
    OutgoingMessage,
    TransportURL,
)

from ._connection import Connection
from ._consuming import SkeletonConsumer
from ._errors import ERRORS
from ._options import SkeletonOptions, parse_url
from ._publishing import Publisher
from ._telemetry import MESSAGING_SYSTEM
from ._topology import declare

__all__ = ["SkeletonTransport"]


class SkeletonTransport:
    """The messagebus transport for ``skeleton:///path/to/broker.db`` (a SQLite file that
    any number of processes share).

    One instance holds one connection and is used from one event loop; it is not thread-safe.
    ``connect`` and ``close`` are idempotent; ``publish`` and ``subscribe`` before ``connect``
    or after ``close`` raise :class:`LifecycleError`. ``publish`` may be called concurrently;
    a batch is stored in one transaction (all or nothing, stronger than the contract asks).
    ``attempt`` counts every receive of a message, broker redeliveries included.
    """

    messaging_system = MESSAGING_SYSTEM

    def __init__(self, url: TransportURL, options: SkeletonOptions | None = None) -> None:
        """Validate ``url`` (and parse its options unless ``options`` are given); no I/O.
        Raises :class:`InvalidURL` or :class:`InvalidOption`."""
        path, parsed = parse_url(url)
        self.url = url
        self.options = options or parsed
        self.capabilities = Capabilities(
            ordering=True,  # the oldest message of a key is the only one of it that can be received
            native_delay=True,  # a redelivery's delay is its visibility time: nothing waits behind it
            persistence=True,  # a committed row survives any process
            consumer_groups=True,
            max_message_size=self.options.max_message_size,
            network=False,  # a local file: no connection a proxy could cut
        )
        self._conn = Connection(path, self.options)
        self._publisher = Publisher(self._conn)
        self._consumers: list[SkeletonConsumer] = []

    @classmethod
    def from_url(cls, url: TransportURL | str) -> SkeletonTransport:
        """Build a transport from ``skeleton:///path/to/broker.db?option=value`` (the entry
        point). Validates everything without I/O; raises :class:`InvalidURL` or
        :class:`InvalidOption` (listing the valid options)."""
        return cls(TransportURL.parse(url) if isinstance(url, str) else url)

    async def connect(self) -> None:
        """Open the database. Idempotent. Raises :class:`ConnectError`."""
        await self._conn.open()

    async def close(self) -> None:
        """Stop every consumer at once (their unsettled messages become visible again), then
        close the database. Idempotent."""
        consumers, self._consumers = self._consumers, []
        for consumer in consumers:
            await consumer.stop(0)
        await self._publisher.drain()
        await self._conn.close()

    async def publish(self, messages: Sequence[OutgoingMessage]) -> None:
        """Store the messages; return once they are committed. Raises
        :class:`MessageTooLarge` before storing any if one is too big, :class:`LifecycleError`
        when not connected, :class:`PublishError` when the database refused the batch (then
        nothing of it was stored). Calls made together are committed together."""
        await self._publisher.publish(messages)
        for consumer in self._consumers:
            consumer.wake()

    async def subscribe(self, source: Destination, handler: DeliveryHandler, *, concurrency: int) -> Consumer:
        """Subscribe ``source``'s group (a topic) and start polling its queue with at most
        ``concurrency`` handler calls in flight. Raises :class:`LifecycleError` when not
        connected, :class:`TopologyError` when the database refused the subscription."""
        if not self._conn.is_open:
            raise LifecycleError("the skeleton transport is not connected; call connect() first")
        try:
            queue = await self._conn.run(declare, source)
        except Exception as exc:
            raise ERRORS.map(exc, TopologyError, f"subscribing {source}") from exc
        consumer = SkeletonConsumer(self._conn, queue, handler, concurrency, self._forget)
        self._consumers.append(consumer)
        consumer.start()
        return consumer

    def _forget(self, consumer: SkeletonConsumer) -> None:
        if consumer in self._consumers:
            self._consumers.remove(consumer)
