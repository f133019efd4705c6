"""KafkaTransport: the messagebus transport contract on aiokafka."""

from __future__ import annotations

from collections.abc import Sequence

from messagebus import InvalidURL, OutgoingMessage
from messagebus.transports import Capabilities, Consumer, DeliveryHandler, Destination, TransportBase, TransportURL

from . import _admin
from ._connection import Connection
from ._consuming import KafkaConsumer
from ._options import KafkaOptions, load_options
from ._publishing import HEADER_ROOM, Publisher
from ._telemetry import MESSAGING_SYSTEM

__all__ = ["KafkaTransport"]


class KafkaTransport(TransportBase[KafkaOptions, Connection, Publisher], schemes=("kafka",), system=MESSAGING_SYSTEM):
    """A Kafka connection for one :class:`~messagebus.Bus`, built on aiokafka; URLs
    ``kafka://[user:password@]host[:port][,host2[:port]...][?options]``.

    The lifecycle of :class:`~messagebus.transports.TransportBase`. ``publish`` is confirmed
    with ``acks=all``, every size (body, key and headers against ``max_request_size``)
    checked before anything is sent, topics created on demand. A topic group seen for the
    first time starts at the topic's end as of ``subscribe`` (or at ``start_from``: the first
    retained offset, or the first record stamped at or after a time); a queue's group at the
    earliest message. ``Delivery.attempt`` counts retries only: a record the group gets again because
    it was never committed (a crash, a rebalance, a cancelled handler) keeps its attempt.
    Pattern subscriptions (``orders.*``, ``orders.#``) see new matching topics within
    ``metadata_max_age_ms`` plus a group rebalance; :meth:`delete_queue` removes a queue.
    Implements :class:`~messagebus.transports.BrokerAdmin` (dead letters, depth as lag).
    """

    def build(self) -> tuple[Capabilities, Connection, Publisher]:
        """Capabilities (every guarantee; the largest body fits ``max_request_size``), the
        connection and the publisher."""
        connection = Connection(self.url, self.options)
        return (
            Capabilities(max_message_size=self.options.max_request_size - HEADER_ROOM, wildcards=True, history=True),
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
        await _admin.delete_queue(self.connection, name)

    # -- BrokerAdmin ----------------------------------------------------------------------

    async def dead_letter_queues(self) -> list[str]:
        """The topics whose name is a logical dead-letter queue (``<topic>.<group>.dlq``,
        ``<queue>.dlq``; a cut and hashed name is left out), sorted. Read-only. Raises
        :class:`TopologyError` when listing fails, :class:`LifecycleError` before ``connect``."""
        return await _admin.dead_letter_queues(self.connection)

    async def depth(self, source: Destination) -> int:
        """The lag of ``source`` (a queue, or a topic's group; a pattern group's summed over
        its topics): end offset minus the group's committed offset, over every partition of
        the topic and of the group's retry topic (held and in-flight records count). A
        partition the group never committed counts from its first offset for a queue and for
        a retry topic, and 0 for a topic group's topic (a new group starts at the end) unless
        ``source.start_from`` is set: then from the topic's first offset (for a time, an upper
        bound until the group's first commit, made as it joins); 0 when nothing exists.
        Read-only, creates nothing. Raises :class:`InvalidDestination` for a topic without a
        group, :class:`TopologyError` when Kafka does not answer."""
        return await _admin.depth(self.connection, source)

    async def publish_to_group(self, source: Destination, messages: Sequence[OutgoingMessage]) -> None:
        """Write ``messages`` to the retry topic of ``source``, a topic's group or a queue
        (which only its group reads), as ``settle_redeliver`` writes retries but with attempt 1
        and a due time of now; a pattern group's copies name their topic. The retry topic is
        created if missing, and a group that has not run yet reads it from its start. Returns
        once Kafka confirmed every one; raises like :meth:`publish`,
        :class:`InvalidDestination` for a topic without a group."""
        await _admin.publish_to_group(self.publisher, source, messages)

    async def delete_group(self, source: Destination) -> None:
        """Delete the retry topic and the consumer group of group ``source``, and its
        dead-letter queue as :meth:`delete_queue` does; the topic and other groups stay.
        Idempotent. Raises :class:`InvalidDestination` for a source that is not a topic's
        group, :class:`TopologyError` when Kafka refuses a topic deletion (a refused group
        deletion is logged, as for :meth:`delete_queue`)."""
        await _admin.delete_group(self.connection, source)
