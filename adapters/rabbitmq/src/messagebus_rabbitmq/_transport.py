"""RabbitMQTransport: the messagebus transport contract on RabbitMQ (aio-pika / aiormq)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from urllib.parse import urlsplit

from messagebus import InvalidOption, InvalidURL
from messagebus.transports import (
    Capabilities,
    Consumer,
    DeliveryHandler,
    Destination,
    OutgoingMessage,
    TransportBase,
    TransportURL,
    dead_letter_name,
    parse_options,
)

from ._admin import Admin
from ._connection import Connection
from ._consuming import RabbitMQConsumer
from ._options import RabbitMQOptions
from ._publishing import Publisher
from ._telemetry import MESSAGING_SYSTEM
from ._topology import physical_name

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
    with ``attempt + 1``). With ``history=<max age>`` in the URL each topic's messages are
    kept in a RabbitMQ stream and ``subscribe`` honours ``source.start_from`` for a group it
    creates (see the README's "History"); without it ``capabilities.history`` is false.
    """

    def build(self) -> tuple[Capabilities, Connection, Publisher]:
        """Capabilities, the supervised connection and the confirming publisher."""
        capabilities = Capabilities(
            # No partitions: competing consumers of one queue each take messages of any key.
            ordering_across_instances=False,
            wildcards=True,
            max_message_size=self.options.max_message_size,
            history=self.options.history is not None,
            history_reason=(
                "RabbitMQ queues drop a message once consumed; add history=<max age, e.g. 7D> to the URL "
                "to keep each topic's history in a RabbitMQ stream"
            ),
        )
        connection = Connection(self.url, self.options)
        publisher = Publisher(connection)
        self.admin = Admin(publisher)
        return capabilities, connection, publisher

    @classmethod
    def load_options(cls, url: TransportURL) -> RabbitMQOptions:
        """Raises :class:`InvalidURL` for no host, :class:`InvalidOption` for TLS options on
        an ``amqp://`` URL, a ``keyfile`` without ``certfile`` or a ``management_url`` with
        credentials in it (never echoed)."""
        management = urlsplit(url.query.get("management_url", "http://h"))
        if management.scheme not in ("http", "https") or not management.hostname or "@" in management.netloc:
            # Never echoed: URL rendering redacts the URL's own password, not one in an option.
            hidden = dataclasses.replace(url, query={**url.query, "management_url": "***"}).render()
            raise InvalidOption(f"option 'management_url' in {hidden!r}: expected http(s)://host:port, no credentials")
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
        queues = (physical_name(name), physical_name(dead_letter_name(name, None)))
        await self.admin.delete(f"RabbitMQ queue {name!r}", queues)

    async def dead_letter_queues(self) -> list[str]:
        """The logical dead-letter queues of the vhost, sorted, listed by the management HTTP
        API (``GET /api/queues/<vhost>``; AMQP cannot list queues), which needs the plugin
        ``rabbitmq_management`` at ``management_url`` (default ``http://<host>:15672``,
        ``https://<host>:15671`` for ``amqps://``) and a user tagged ``management`` or
        ``monitoring``; the URL's credentials are sent. Raises :class:`TransportError`
        naming the plugin and the option when the API cannot be reached or refuses."""
        return await self.admin.dead_letter_queues()

    async def depth(self, source: Destination) -> int:
        """The ready count of the queue of ``source`` (a queue or a topic's group) by a passive
        declare on a throwaway channel (messages delivered and not yet acked are not counted);
        0 when the queue does not exist. Creates nothing. Raises :class:`InvalidDestination`
        for a topic without a group, a :class:`TransportError` when the broker cannot be
        reached within ``connect_timeout``."""
        return await self.admin.depth(source)

    async def publish_to_group(self, source: Destination, messages: Sequence[OutgoingMessage]) -> None:
        """Send ``messages`` to the queue of group ``source`` only (default exchange, routing
        key: the queue; ``mandatory`` and confirmed), declaring the queue when missing, as a
        first attempt (a ``messagebus-attempt`` header is dropped). Raises like
        :meth:`publish`, and :class:`InvalidDestination` for a topic without a group. A pattern
        group's copy carries its topic (``message.destination``) in ``messagebus-topic``."""
        await self.admin.publish_to_group(source, messages)

    async def delete_group(self, source: Destination) -> None:
        """Delete the queue of group ``source`` and its dead-letter queue; its filter exchange,
        if any, goes with the queue (auto-delete). The delay buckets are shared: they hold no
        object of one group. Idempotent. Given a queue, deletes it and its dead-letter queue.
        Raises :class:`InvalidDestination` for a topic without a group, :class:`TopologyError`
        when RabbitMQ refuses or cannot be reached."""
        await self.admin.delete_group(source)

    async def open_consumer(self, source: Destination, handler: DeliveryHandler, concurrency: int) -> Consumer:
        """Declare ``source`` and consume it on a channel of its own."""
        consumer = RabbitMQConsumer(self.publisher, source, handler, concurrency)
        await consumer.begin()
        return consumer
