"""KafkaTransport: the messagebus transport contract on aiokafka."""

from __future__ import annotations

from messagebus import InvalidURL
from messagebus.transports import Capabilities, Consumer, DeliveryHandler, Destination, TransportBase, TransportURL

from ._connection import Connection
from ._consuming import KafkaConsumer
from ._options import KafkaOptions, load_options
from ._publishing import HEADER_ROOM, Publisher
from ._telemetry import MESSAGING_SYSTEM
from ._topology import QUEUE_GROUP_PREFIX, kafka_name

__all__ = ["KafkaTransport"]


class KafkaTransport(TransportBase[KafkaOptions, Connection, Publisher], schemes=("kafka",), system=MESSAGING_SYSTEM):
    """A Kafka connection for one :class:`~messagebus.Bus`, built on aiokafka; URLs
    ``kafka://[user:password@]host[:port][,host2[:port]...][?options]``.

    The lifecycle of :class:`~messagebus.transports.TransportBase`. ``publish`` is confirmed
    with ``acks=all``, every size (body, key and headers against ``max_request_size``)
    checked before anything is sent, topics created on demand. A topic group seen for the
    first time starts at the topic's end as of ``subscribe``; a queue's group at the earliest
    message. ``Delivery.attempt`` counts retries only: a record the group gets again because
    it was never committed (a crash, a rebalance, a cancelled handler) keeps its attempt.
    Pattern subscriptions (``orders.*``, ``orders.#``) see new matching topics within
    ``metadata_max_age_ms`` plus a group rebalance; :meth:`delete_queue` removes a queue.
    """

    def build(self) -> tuple[Capabilities, Connection, Publisher]:
        """Capabilities (every guarantee; the largest body fits ``max_request_size``), the
        connection and the publisher."""
        connection = Connection(self.url, self.options)
        return (
            Capabilities(max_message_size=self.options.max_request_size - HEADER_ROOM, wildcards=True),
            connection,
            Publisher(connection),
        )

    @classmethod
    def load_options(cls, url: TransportURL) -> KafkaOptions:
        """Raises :class:`InvalidURL` for no bootstrap server or a path."""
        if not url.hosts or any(not h for h, _ in url.hosts):
            raise InvalidURL(
                f"kafka URL {url.render()!r} names no bootstrap server; "
                "expected kafka://host:9092 or kafka://host1:9092,host2:9092"
            )
        if url.path not in ("", "/"):
            raise InvalidURL(f"kafka URL {url.render()!r} has a path; Kafka URLs have none (kafka://host:9092)")
        return load_options(url)

    @property
    def bootstrap_servers(self) -> list[str]:
        """``host:port`` of every bootstrap server from the URL."""
        return list(self.connection.servers)

    async def open_consumer(self, source: Destination, handler: DeliveryHandler, concurrency: int) -> Consumer:
        """One consumer in the source's Kafka group, on the main and retry topics."""
        _, topics = self.connection.require()
        consumer = KafkaConsumer(self.publisher, source, handler, concurrency)
        names = consumer.names
        await topics.ensure({names.retry_topic} if names.pattern else {names.topic, names.retry_topic})
        await consumer.start_consuming()
        return consumer

    async def delete_queue(self, name: str) -> None:
        """Delete the topics of logical queue ``name`` (its retry topic, its dead-letter
        queue and that one's retry topic, where made) and its consumer group where the broker
        allows. Idempotent; raises :class:`TopologyError` when Kafka refuses a deletion."""
        _, topics = self.connection.require()
        physical = [kafka_name(name + suffix) for suffix in ("", ".retry", ".dlq", ".dlq.retry")]
        await topics.delete(physical, kafka_name(QUEUE_GROUP_PREFIX + name))
