"""PubSubTransport: the messagebus transport contract on google-cloud-pubsub, delegating to
the connection, publishing, consuming and topology modules."""

from __future__ import annotations

from collections.abc import Sequence

from messagebus import ConfigurationError, InvalidDestination
from messagebus.transports import (
    Capabilities,
    DeliveryHandler,
    Destination,
    DestinationKind,
    OutgoingMessage,
    TransportURL,
    parse_options,
)

from ._codec import MAX_BODY
from ._connection import Connection
from ._consuming import PubSubConsumer
from ._options import PubSubOptions, emulator_of, project_of
from ._publishing import Publisher
from ._telemetry import MESSAGING_SYSTEM
from ._topology import names_for

__all__ = ["PubSubTransport"]


class PubSubTransport:
    """Google Cloud Pub/Sub transport (``pubsub://PROJECT?option=...``).

    ``options`` replace the URL's query when given. The constructor validates the URL and
    options without I/O (:class:`InvalidURL`, :class:`InvalidOption`). One instance per bus,
    used from one event loop; ``connect`` and ``close`` are idempotent, ``publish`` may be
    called concurrently, and ``publish``/``subscribe`` before ``connect`` raise
    :class:`LifecycleError`. ``Delivery.attempt`` counts ``retry`` calls only: a redelivery
    by Pub/Sub itself (an expired lease, a hand-back at stop) keeps the attempt it had.
    Every native error is mapped to the messagebus error tree with the original chained.
    """

    messaging_system: str = MESSAGING_SYSTEM

    def __init__(self, url: TransportURL, options: PubSubOptions | None = None) -> None:
        project = project_of(url)
        self.url = url
        self.options = options if options is not None else parse_options(url, PubSubOptions)
        self._conn = Connection(project, emulator_of(self.options, url), self.options)
        self._publisher = Publisher(self._conn)
        self._consumers: set[PubSubConsumer] = set()
        self.capabilities = Capabilities(
            ordering=self.options.ordering,
            # Not shown to hold: on the emulator, when an instance leaves its group, the next
            # message of a key reached another instance before the one it had taken
            # (docs/faults.md, finding 6). Order within one instance holds.
            ordering_across_instances=False,
            native_delay=True,
            # Pub/Sub stores messages durably; the emulator keeps them in memory only.
            persistence=self._conn.emulator_host is None,
            consumer_groups=True,
            max_message_size=MAX_BODY,
            network=True,
        )

    @classmethod
    def from_url(cls, url: TransportURL | str) -> PubSubTransport:
        """Build a transport from a ``pubsub://`` URL (options from its query), without I/O."""
        return cls(url if isinstance(url, TransportURL) else TransportURL.parse(url))

    def __repr__(self) -> str:
        return f"PubSubTransport({self.url.render()!r})"

    @property
    def project(self) -> str:
        """The Google Cloud project id (the URL's host)."""
        return self._conn.project

    @property
    def emulator_host(self) -> str | None:
        """The emulator address in use, or ``None`` for the real service."""
        return self._conn.emulator_host

    async def connect(self) -> None:
        """Open the clients and check the API answers within ``connect_timeout``. Raises
        :class:`ConnectError` or :class:`ConfigurationError` (unusable ``credentials_file``)."""
        await self._conn.open()

    async def close(self) -> None:
        """Stop every consumer still running (no grace) and close the channels. Idempotent."""
        for consumer in list(self._consumers):
            await consumer.stop(0.0)
        await self._conn.close()

    async def publish(self, messages: Sequence[OutgoingMessage]) -> None:
        """Publish and return once Pub/Sub confirmed every message (a message id each); not
        atomic. Topics are created on first use, a queue's subscription on its first send.
        Raises :class:`MessageTooLarge` before sending anything, :class:`PublishError` when a
        message was refused or not confirmed within ``publish_timeout``."""
        await self._publisher.publish(messages)

    async def subscribe(self, source: Destination, handler: DeliveryHandler, *, concurrency: int) -> PubSubConsumer:
        """Declare the subscription (``topic.group`` or the queue's) and its retry topic and
        subscription, then deliver to ``handler`` with at most ``concurrency`` calls in flight
        and per-key order. Raises :class:`TopologyError`, :class:`ConnectError`,
        :class:`InvalidDestination` (a topic without a group, an illegal name) or
        :class:`ConfigurationError` (a concurrency below 1)."""
        clients = self._conn.require()
        if not isinstance(concurrency, int) or concurrency < 1:
            raise ConfigurationError(f"concurrency must be an int >= 1, got {concurrency!r}")
        if source.kind is DestinationKind.TOPIC and not source.group:
            raise InvalidDestination(f"subscribing to topic {source.name!r} needs a group name")
        names = names_for(self._conn.project, source)
        await clients.topology.ensure_consumer(names)
        consumer = PubSubConsumer(self._conn, self._publisher, names, handler, concurrency, self._consumers.discard)
        consumer.start()
        self._consumers.add(consumer)
        return consumer
