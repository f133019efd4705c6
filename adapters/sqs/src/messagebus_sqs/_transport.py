"""SqsTransport: the messagebus transport contract on AWS SQS and SNS (boto3)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from messagebus import ConfigurationError, TopologyError
from messagebus.transports import (
    AttributeValue,
    Capabilities,
    Consumer,
    DeliveryHandler,
    Destination,
    DestinationKind,
    OutgoingMessage,
    TransportURL,
)

from ._codec import MAX_BODY_SIZE
from ._connection import Connection
from ._consuming import SqsConsumer
from ._options import SqsOptions, options_from_url
from ._publishing import Publisher
from ._telemetry import SQS_SYSTEM, publish_attributes

__all__ = ["SqsTransport"]


class SqsTransport:
    """Transport for ``sqs://`` URLs: SNS topics fanning out to one SQS queue per group, and
    plain SQS queues for work queues (see the adapter README for the full mapping).

    Use from one event loop; ``publish`` may be called concurrently (concurrent calls share
    batches). :meth:`connect` and :meth:`close` are idempotent; ``publish`` and ``subscribe``
    before ``connect`` raise :class:`LifecycleError`. Credentials come from the normal AWS
    chain and are never logged or put in an error message. ``Delivery.attempt`` is SQS's
    ``ApproximateReceiveCount``: broker redeliveries count.
    """

    messaging_system: str = SQS_SYSTEM

    def __init__(self, url: TransportURL, options: SqsOptions | None = None) -> None:
        """Build an unconnected transport (no I/O). ``options`` default to those of ``url``
        (see :meth:`from_url` for the errors)."""
        self.url = url
        self.options = options = options or options_from_url(url)
        self.capabilities = Capabilities(
            ordering=options.fifo,
            native_delay=True,
            persistence=True,
            consumer_groups=True,
            max_message_size=MAX_BODY_SIZE,
            network=True,
        )
        self._conn = Connection(options)
        self._consumers: set[SqsConsumer] = set()
        self._publisher = Publisher(self._conn, self._consumers)

    @classmethod
    def from_url(cls, url: TransportURL | str) -> SqsTransport:
        """Build a transport from ``sqs://?region=...&endpoint_url=...``.

        Validates every option without network I/O. Raises :class:`InvalidURL`,
        :class:`InvalidOption` (listing the valid options) or :class:`ConfigurationError`
        (no region in the URL nor in the AWS configuration).
        """
        return cls(TransportURL.parse(url) if isinstance(url, str) else url)

    def __repr__(self) -> str:
        o = self.options
        return f"SqsTransport(region={o.region!r}, endpoint={o.endpoint_url or 'aws'!r}, fifo={o.fifo})"

    @property
    def sqs_client(self) -> Any:
        """The boto3 SQS client (thread-safe; blocking: call it from a thread). ``None`` until
        :meth:`connect`. For advanced use and tests; the transport does not need you to."""
        return self._conn.sqs

    @property
    def sns_client(self) -> Any:
        """The boto3 SNS client, like :attr:`sqs_client`."""
        return self._conn.sns

    async def connect(self) -> None:
        """Create the boto3 clients and prove the endpoint answers and accepts the credentials
        (one ``ListQueues`` call). Idempotent. Raises :class:`ConnectError` saying what to fix."""
        await self._conn.open()

    async def close(self) -> None:
        """Stop every consumer at once, send pending settles, wait for long polls still running
        (at most ``wait_time``; what they received is made visible again), release the threads
        and clients. Idempotent."""
        for consumer in list(self._consumers):
            await consumer.stop(0.0)
        await self._conn.close()

    def publish_attributes(self, destination: Destination) -> dict[str, AttributeValue]:
        """Telemetry attributes of publishing to ``destination``: ``messaging.system`` is
        ``aws.sns`` for topics, ``aws_sqs`` for queues; the topic ARN / queue URL once known."""
        return publish_attributes(destination, self._conn.topology)

    async def publish(self, messages: Sequence[OutgoingMessage]) -> None:
        """Send topic messages with ``PublishBatch``, queue messages with ``SendMessageBatch``
        (concurrent calls share batches of 10), declaring them on first use; return once each
        is confirmed. Before sending anything, raises :class:`MessageTooLarge` (body over
        :data:`MAX_BODY_SIZE`, or over 256 KiB with its attributes) and
        :class:`UnsupportedFeature` (a key on a standard destination with ``strict_keys``)."""
        await self._publisher.publish(messages)

    async def subscribe(self, source: Destination, handler: DeliveryHandler, *, concurrency: int) -> Consumer:
        """Declare the queue of ``source`` (for a group: subscribed to the SNS topic with raw
        delivery) and poll it; ``prefetch`` messages are received ahead of the handlers. Raises
        :class:`TopologyError` if declaring fails, :class:`ConfigurationError` for
        ``concurrency < 1``."""
        self._conn.require()
        if concurrency < 1:
            raise ConfigurationError(f"concurrency must be >= 1, got {concurrency}")
        if source.kind is DestinationKind.TOPIC and not source.group:
            raise TopologyError(f"subscribing to topic {source.name!r} needs a group")
        consumer = SqsConsumer(self._conn, source, handler, concurrency, self._consumers.discard)
        await consumer.declare()
        self._consumers.add(consumer)
        consumer.start()
        return consumer
