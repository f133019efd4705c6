"""RabbitMQTransport: the messagebus transport contract on RabbitMQ (aio-pika / aiormq)."""

from __future__ import annotations

import aiormq.exceptions

from messagebus import InvalidOption, InvalidURL, TopologyError
from messagebus.transports import (
    Capabilities,
    Consumer,
    DeliveryHandler,
    Destination,
    TransportBase,
    TransportURL,
    parse_options,
)

from ._connection import Connection
from ._consuming import RabbitMQConsumer
from ._errors import ERRORS
from ._options import RabbitMQOptions
from ._publishing import Publisher
from ._telemetry import MESSAGING_SYSTEM

__all__ = ["RabbitMQTransport"]


class RabbitMQTransport(
    TransportBase[RabbitMQOptions, Connection, Publisher], schemes=("amqp", "amqps"), system=MESSAGING_SYSTEM
):
    """The messagebus transport for ``amqp://user:password@host:port/vhost?option=value``
    and ``amqps://`` URLs, on one supervised connection.

    The lifecycle of :class:`~messagebus.transports.TransportBase`. ``publish`` sends
    persistent messages, pipelined, and returns once RabbitMQ confirmed each: topic messages
    go to the topic's exchange (no group bound is not an error); queue messages are
    published ``mandatory`` to their durable queue, declared on first use (re-declared and
    sent again when returned unroutable). Messages cut off by a lost connection are sent
    again after the reconnect, within ``publish_timeout``. It raises
    :class:`MessageTooLarge` before sending anything when a body exceeds
    ``max_message_size`` or headers and key exceed the broker's ``frame_max``;
    :class:`PublishError` when confirms are missing after ``publish_timeout`` or the broker
    refused a message. ``subscribe`` declares the source and consumes it with prefetch = the
    ``prefetch`` option, else the concurrency. ``Delivery.attempt`` counts retries and
    broker redeliveries (a message redelivered after a lost connection or a crash comes
    with ``attempt + 1``).
    """

    def build(self) -> tuple[Capabilities, Connection, Publisher]:
        """Capabilities, the supervised connection and the confirming publisher."""
        capabilities = Capabilities(
            # No partitions: competing consumers of one queue each take messages of any key.
            ordering_across_instances=False,
            wildcards=True,
            max_message_size=self.options.max_message_size,
        )
        connection = Connection(self.url, self.options)
        return capabilities, connection, Publisher(connection)

    @classmethod
    def load_options(cls, url: TransportURL) -> RabbitMQOptions:
        """Raises :class:`InvalidURL` for no host, :class:`InvalidOption` for TLS options on
        an ``amqp://`` URL or a ``keyfile`` without ``certfile``."""
        where = url.render()
        if not url.hosts:
            raise InvalidURL(f"transport URL {where!r} names no host; expected amqp://user:password@host:5672/vhost")
        tls_given = [name for name in ("cafile", "certfile", "keyfile", "verify") if name in url.query]
        if url.scheme == "amqp" and tls_given:
            raise InvalidOption(
                f"option(s) {', '.join(tls_given)} in {where!r} only apply to TLS connections; use an amqps:// URL"
            )
        options = parse_options(url, RabbitMQOptions)
        if options.keyfile is not None and options.certfile is None:
            raise InvalidOption(
                f"option 'keyfile' is given without 'certfile' in {where!r}; a client key needs its "
                "certificate (certfile=...)"
            )
        return options

    @property
    def vhost(self) -> str:
        """The virtual host (the URL path; ``/`` when empty)."""
        return self.connection.vhost

    @property
    def connected(self) -> bool:
        """True while the connection is open (False while reconnecting)."""
        return self.connection.ready

    async def delete_queue(self, name: str) -> None:
        """Delete logical queue ``name`` and its dead-letter queue (see
        :class:`~messagebus.transports.DeleteQueue`); raises :class:`TopologyError` when
        RabbitMQ refuses, :class:`LifecycleError` when closed, a :class:`TransportError`
        (by the adapter's error map) when the connection fails or stays down past
        ``connect_timeout``."""
        try:
            raw = await self.connection.wait_ready(self.options.connect_timeout)
            await self.publisher.topology.delete(raw, name)
        except (aiormq.exceptions.AMQPError, TimeoutError) as exc:
            raise ERRORS.map(exc, TopologyError, f"cannot delete RabbitMQ queue {name!r}") from exc

    async def open_consumer(self, source: Destination, handler: DeliveryHandler, concurrency: int) -> Consumer:
        """Declare ``source`` and consume it on a channel of its own."""
        consumer = RabbitMQConsumer(self.publisher, source, handler, concurrency)
        await consumer.begin()
        return consumer
