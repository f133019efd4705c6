"""KafkaTransport: the messagebus transport contract on aiokafka, delegating to the
connection, publishing and consuming modules."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Self

from messagebus import InvalidURL
from messagebus.transports import Capabilities, DeliveryHandler, Destination, OutgoingMessage, TransportURL

from ._connection import Connection
from ._consuming import KafkaConsumer
from ._options import KafkaOptions, load_options
from ._publishing import HEADER_ROOM, Publisher
from ._telemetry import MESSAGING_SYSTEM

__all__ = ["KafkaTransport"]


class KafkaTransport:
    """A Kafka connection for one :class:`~messagebus.Bus`, built on aiokafka.

    Use from one event loop; ``publish`` may be called from many tasks at once.
    ``connect``/``close`` are idempotent; ``publish``/``subscribe`` before ``connect``
    raise :class:`LifecycleError`. Errors are mapped to the messagebus error tree with the
    aiokafka error chained; the password never appears in messages or reprs.
    ``Delivery.attempt`` counts retries only: a record the group gets again because it was
    never committed (a crash, a rebalance, a cancelled handler) keeps its attempt.
    """

    messaging_system: str = MESSAGING_SYSTEM

    def __init__(self, url: TransportURL, options: KafkaOptions | None = None) -> None:
        """Prefer :meth:`from_url`, which also validates the URL; ``options`` default to the
        URL's (raises :class:`InvalidOption`)."""
        self._url = url
        self._options = options if options is not None else load_options(url)
        self.capabilities = Capabilities(
            ordering=True,
            native_delay=True,
            persistence=True,
            consumer_groups=True,
            max_message_size=self._options.max_request_size - HEADER_ROOM,
            network=True,
        )
        self._connection = Connection(url, self._options)
        self._publisher = Publisher(self._connection)
        self._consumers: set[KafkaConsumer] = set()

    @classmethod
    def from_url(cls, url: TransportURL | str) -> Self:
        """Build a transport from ``kafka://[user:password@]host[:port][,host2[:port]...][?options]``.

        Validates without I/O. Raises :class:`InvalidURL` (wrong scheme, no host, a path) or
        :class:`InvalidOption` (unknown/ill-typed/conflicting option, listing valid ones).
        """
        parsed = url if isinstance(url, TransportURL) else TransportURL.parse(url)
        if parsed.scheme != "kafka":
            raise InvalidURL(f"the Kafka transport handles kafka:// URLs, got {parsed.render()!r}")
        if not parsed.hosts or any(not h for h, _ in parsed.hosts):
            raise InvalidURL(
                f"kafka URL {parsed.render()!r} names no bootstrap server; "
                "expected kafka://host:9092 or kafka://host1:9092,host2:9092"
            )
        if parsed.path not in ("", "/"):
            raise InvalidURL(f"kafka URL {parsed.render()!r} has a path; Kafka URLs have none (kafka://host:9092)")
        return cls(parsed, load_options(parsed))

    @property
    def options(self) -> KafkaOptions:
        """The validated options (read-only)."""
        return self._options

    @property
    def bootstrap_servers(self) -> list[str]:
        """``host:port`` of every bootstrap server from the URL."""
        return list(self._connection.servers)

    def __repr__(self) -> str:
        return f"KafkaTransport({self._url.render()!r})"

    async def connect(self) -> None:
        """Connect the producer and the admin client, trying for ``connect_timeout`` seconds."""
        await self._connection.open()

    async def close(self) -> None:
        """Stop every consumer (no grace: unsettled messages stay uncommitted), flush the
        producer and close every connection. Idempotent."""
        for consumer in list(self._consumers):
            await consumer.stop(0)
        await self._connection.close()

    async def publish(self, messages: Sequence[OutgoingMessage]) -> None:
        """The contract's ``publish``: confirmed with ``acks=all``; every size (body, key and
        headers against ``max_request_size``) checked before anything is sent; topics created
        on demand."""
        await self._publisher.publish(messages)

    async def subscribe(self, source: Destination, handler: DeliveryHandler, *, concurrency: int) -> KafkaConsumer:
        """The contract's ``subscribe``: one consumer in the source's Kafka group. A topic
        group seen for the first time starts at the topic's end as of this call (messages
        published after it returns are delivered although the join takes seconds); a queue's
        group starts at the earliest message. Raises ``ValueError`` for a concurrency below 1,
        :class:`TopologyError`, :class:`ConnectError`, :class:`LifecycleError`."""
        _, topics = self._connection.require()
        consumer = KafkaConsumer(self._publisher, source, handler, concurrency, self._consumers.discard)
        await topics.ensure({consumer.names.topic, consumer.names.retry_topic})
        await consumer.start_consuming()
        self._consumers.add(consumer)
        return consumer
