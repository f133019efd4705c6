"""RabbitMQTransport: the messagebus transport contract on RabbitMQ (aio-pika / aiormq)."""

from __future__ import annotations

import weakref
from collections.abc import Sequence

from messagebus.transports import Capabilities, DeliveryHandler, Destination, OutgoingMessage, TransportURL

from ._connection import Connection
from ._consuming import RabbitMQConsumer
from ._options import RabbitMQOptions, parse_url
from ._publishing import Publisher
from ._telemetry import MESSAGING_SYSTEM
from ._topology import Topology

__all__ = ["RabbitMQTransport"]


class RabbitMQTransport:
    """The messagebus transport for ``amqp://`` and ``amqps://`` URLs.

    The :class:`~messagebus.transports.Transport` contract on one supervised connection,
    from one event loop (not thread-safe). ``Delivery.attempt`` counts retries and broker
    redeliveries (a message redelivered after a lost connection or a crash comes with
    ``attempt + 1``). The password never appears in a message or log line.
    """

    messaging_system = MESSAGING_SYSTEM

    def __init__(self, url: TransportURL, options: RabbitMQOptions | None = None) -> None:
        """Validate ``url`` and its query options, no I/O; ``options`` given replace the
        URL's. Raises :class:`InvalidURL` or :class:`InvalidOption`."""
        in_url = parse_url(url)  # validated even when options are given
        parsed = in_url if options is None else options
        self.url = url
        self.options = parsed
        self.capabilities = Capabilities(
            ordering=True,
            # No partitions: competing consumers of one queue each take messages of any key.
            ordering_across_instances=False,
            native_delay=True,
            persistence=True,
            consumer_groups=True,
            max_message_size=parsed.max_message_size,
            network=True,
        )
        self._conn = Connection(url, parsed)
        self._topology = Topology()
        self._publisher = Publisher(self._conn, self._topology)
        self._consumers: weakref.WeakSet[RabbitMQConsumer] = weakref.WeakSet()

    @classmethod
    def from_url(cls, url: TransportURL | str) -> RabbitMQTransport:
        """Build a transport from ``amqp://user:password@host:port/vhost?option=value``.

        Validates the scheme, host and every query option without any network I/O. Raises
        :class:`InvalidURL` or :class:`InvalidOption` (listing the valid options).
        """
        return cls(TransportURL.parse(url) if isinstance(url, str) else url)

    def __repr__(self) -> str:
        return f"RabbitMQTransport({self.url.render()!r})"

    @property
    def vhost(self) -> str:
        """The virtual host (the URL path; ``/`` when empty)."""
        return self._conn.vhost

    @property
    def connected(self) -> bool:
        """True while the connection is open (False while reconnecting)."""
        return self._conn.ready

    async def connect(self) -> None:
        """Open the connection (see :class:`Connection`): ``connect_retries`` more tries with
        back-off for an unreachable broker, none for wrong credentials, vhost or TLS."""
        await self._conn.connect()

    async def close(self) -> None:
        """Stop every consumer (unsettled deliveries go back to their queue), then close the
        channels and the connection. Idempotent; never raises for a connection already gone."""
        if self._conn.closed:
            return
        for consumer in list(self._consumers):
            await consumer.stop(0)
        await self._topology.close()
        await self._publisher.close()
        await self._conn.close()

    async def publish(self, messages: Sequence[OutgoingMessage]) -> None:
        """Publish persistent messages, pipelined, and return once RabbitMQ confirmed each.

        Topic messages go to the topic's exchange (no group bound is not an error); queue
        messages are published ``mandatory`` to their durable queue, declared on first use
        (re-declared and sent again when returned unroutable). Messages cut off by a lost
        connection are sent again after the reconnect, within ``publish_timeout``. Raises
        :class:`MessageTooLarge` before sending anything when a body exceeds
        ``max_message_size`` or headers and key exceed the broker's ``frame_max``;
        :class:`PublishError` when confirms are missing after ``publish_timeout`` or the
        broker refused a message; :class:`TopologyError` when a declaration conflicts.
        """
        await self._publisher.publish(messages)

    async def subscribe(self, source: Destination, handler: DeliveryHandler, *, concurrency: int) -> RabbitMQConsumer:
        """Declare ``source`` and consume it (prefetch = the ``prefetch`` option, else
        ``concurrency``). Raises ``ValueError`` for a concurrency below 1,
        :class:`TopologyError` when the queue exists with other arguments."""
        consumer = RabbitMQConsumer(self._publisher, source, handler, concurrency)
        await consumer.begin()
        self._consumers.add(consumer)
        return consumer
