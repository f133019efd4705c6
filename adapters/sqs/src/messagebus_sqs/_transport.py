"""SqsTransport: the messagebus transport contract on AWS SQS and SNS (boto3)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from messagebus.transports import (
    AttributeValue,
    Capabilities,
    Consumer,
    DeliveryHandler,
    Destination,
    OutgoingMessage,
    TransportBase,
    TransportURL,
    dead_letter_name,
    validate_name,
)

from . import _admin
from ._codec import MAX_BODY_SIZE
from ._connection import Connection
from ._consuming import SqsConsumer
from ._options import SqsOptions, load_options
from ._publishing import Publisher
from ._telemetry import SQS_SYSTEM, publish_attributes

__all__ = ["SqsTransport"]


class SqsTransport(TransportBase[SqsOptions, Connection, Publisher], schemes=("sqs",), system=SQS_SYSTEM):
    """A connection to AWS SQS/SNS for one :class:`~messagebus.Bus`, built on boto3; URLs
    ``sqs://?region=...[&endpoint_url=...][&options]``: SNS topics fanning out to one SQS
    queue per group, plain SQS queues for work queues (the README has the full mapping).

    The lifecycle of :class:`~messagebus.transports.TransportBase`. ``publish`` sends topic
    messages with ``PublishBatch`` and queue messages with ``SendMessageBatch`` (concurrent
    calls share batches of 10), declaring destinations on first use, and returns once each
    is confirmed; before sending anything it raises :class:`MessageTooLarge` (a body over
    :data:`MAX_BODY_SIZE`, or over 256 KiB with its attributes) and
    :class:`UnsupportedFeature` (a key on a standard destination with ``strict_keys``).
    ``subscribe`` declares the queue (for a group: subscribed to the SNS topic with raw
    delivery) and long-polls it, ``prefetch`` messages ahead of the handlers. ``close`` also
    sends pending settles; it waits for no long poll (a poll it cuts off makes what it
    still receives visible again from its own thread). Credentials come from the normal AWS chain
    and are never logged nor put in an error message. ``Delivery.attempt`` is SQS's
    ``ApproximateReceiveCount``: broker redeliveries count.
    """

    def build(self) -> tuple[Capabilities, Connection, Publisher]:
        """Capabilities (ordered only with ``fifo``), the clients' connection, the publisher."""
        connection = Connection(self.options)
        capabilities = Capabilities(
            ordering=self.options.fifo,
            max_message_size=MAX_BODY_SIZE,
            wildcards_reason="SNS has no wildcard subscriptions: each SNS topic is a separate resource subscribed "
            "by its exact ARN, so a pattern (and topics made after it) cannot be subscribed on the broker",
            history_reason="SNS stores no message: it pushes each one to the SQS queues subscribed at that moment, "
            "so a group's queue created later has nothing to start from (SQS deletes what was consumed); keep "
            "history elsewhere (an outbox table, S3 via Firehose) or use a broker that retains topics",
        )
        return capabilities, connection, Publisher(connection, self.consumers)

    @classmethod
    def load_options(cls, url: TransportURL) -> SqsOptions:
        """Raises :class:`InvalidURL` for a host, credentials or a path, and
        :class:`ConfigurationError` when no region is named nor configured (reads only the
        local AWS configuration, no network)."""
        return load_options(url)

    @property
    def sqs_client(self) -> Any:
        """The boto3 SQS client (thread-safe; blocking: call it from a thread). ``None`` until
        :meth:`connect`. For advanced use and tests; the transport does not need you to."""
        return self.connection.sqs

    @property
    def sns_client(self) -> Any:
        """The boto3 SNS client, like :attr:`sqs_client`."""
        return self.connection.sns

    def publish_attributes(self, destination: Destination) -> dict[str, AttributeValue]:
        """Telemetry attributes of publishing to ``destination``: ``messaging.system`` is
        ``aws.sns`` for topics, ``aws_sqs`` for queues; the topic ARN / queue URL once known.
        Pure and cheap."""
        return publish_attributes(destination, self.connection.topology)

    async def open_consumer(self, source: Destination, handler: DeliveryHandler, concurrency: int) -> Consumer:
        """Declare the queue of ``source`` and start polling it."""
        consumer = SqsConsumer(self.connection, source, handler, concurrency)
        await consumer.declare()
        consumer.start()
        return consumer

    async def delete_queue(self, name: str) -> None:
        """Delete the SQS queue of logical queue ``name`` (a request's reply queue) and its
        dead-letter queue if one was made, with every message in them. Idempotent; raises
        :class:`InvalidDestination` for an illegal name and :class:`TopologyError` when AWS
        refuses."""
        validate_name(name, "queue")
        topology = self.connection.require()
        for logical in (name, dead_letter_name(name, None)):
            await self.connection.run(topology.delete_queue, logical)

    async def dead_letter_queues(self) -> list[str]:
        """The logical names of the dead-letter queues under ``queue_prefix`` (of this
        transport's kind, standard or FIFO), sorted, from ``ListQueues``; a queue name cut
        to fit, or with more than 12 ``-``/``.`` before ``.dlq``, is left out. Raises
        :class:`TopologyError` when AWS refuses."""
        return await _admin.dead_letter_queues(self.connection)

    async def depth(self, source: Destination) -> int:
        """SQS's ``ApproximateNumberOfMessages`` of the queue of ``source`` (a queue or a
        topic's group): visible messages, approximate; those held by a consumer or waiting
        out a retry delay are not counted. ``0`` for a missing queue, which is not created.
        Raises :class:`InvalidDestination` for a topic without group, :class:`TopologyError`."""
        return await _admin.depth(self.connection, source)

    async def publish_to_group(self, source: Destination, messages: Sequence[OutgoingMessage]) -> None:
        """Send ``messages`` straight to the SQS queue of ``source``, a queue or a topic's
        group (created if missing, not subscribed), as SNS's raw delivery would: no other
        group gets them. A FIFO message gets a fresh deduplication id (a replay is no
        duplicate). Raises like :meth:`publish`, and :class:`InvalidDestination` for a topic
        without group."""
        await _admin.publish_to_group(self.publisher, source, messages)

    async def delete_group(self, source: Destination) -> None:
        """Unsubscribe the group's queue from its SNS topic, then delete the queue and its
        dead-letter queue with their messages. The topic and other groups are left alone.
        Idempotent; raises :class:`InvalidDestination` for a source that is no group,
        :class:`TopologyError` when AWS refuses."""
        await _admin.delete_group(self.connection, source)
