"""PubSubTransport: the messagebus transport contract on google-cloud-pubsub."""

from __future__ import annotations

from collections.abc import Sequence

from messagebus.transports import (
    Capabilities,
    Consumer,
    DeliveryHandler,
    Destination,
    DestinationKind,
    OutgoingMessage,
    TransportBase,
    TransportURL,
)

from . import _admin
from ._codec import MAX_BODY
from ._connection import Connection
from ._consuming import PubSubConsumer
from ._options import PubSubOptions, emulator_of, project_of
from ._publishing import Publisher
from ._telemetry import MESSAGING_SYSTEM
from ._topology import names_for, owned_names

__all__ = ["PubSubTransport"]


class PubSubTransport(
    TransportBase[PubSubOptions, Connection, Publisher], schemes=("pubsub",), system=MESSAGING_SYSTEM
):
    """A Google Cloud Pub/Sub connection for one :class:`~messagebus.Bus`, on the asyncio
    clients of google-cloud-pubsub; URLs ``pubsub://PROJECT[?options]``.

    The lifecycle of :class:`~messagebus.transports.TransportBase`. ``publish`` returns once
    Pub/Sub confirmed every message (a message id each), not atomically; topics are created on
    first use, a queue's subscription on its first send; it raises :class:`MessageTooLarge`
    before sending anything and :class:`PublishError` when a message was refused or not
    confirmed within ``publish_timeout``. ``subscribe`` declares the subscription
    (``topic.group`` or the queue's) and its retry topic and subscription, and keeps per-key
    order within one instance; a topic group's ``filter`` becomes the subscription's Pub/Sub
    filter (fixed at creation: a different one later is a :class:`TopologyError`).
    ``delete_queue`` is the optional :class:`~messagebus.transports.DeleteQueue`, and the
    :class:`~messagebus.transports.BrokerAdmin` methods are here (``depth`` cannot count); patterns
    are not supported (``wildcards_reason``). ``Delivery.attempt`` counts ``retry`` calls only: a redelivery
    by Pub/Sub itself (an expired lease, a hand-back at stop) keeps the attempt it had.
    """

    def build(self) -> tuple[Capabilities, Connection, Publisher]:
        """Capabilities (persistence only on the real service), the clients, the publisher."""
        connection = Connection(project_of(self.url), emulator_of(self.options, self.url), self.options)
        emulated = connection.emulator_host is not None
        capabilities = Capabilities(
            ordering=self.options.ordering,
            # Not shown to hold: on the emulator, when an instance leaves its group, the next
            # message of a key reached another instance before the one it had taken
            # (docs/faults.md, finding 6). Order within one instance holds.
            ordering_across_instances=False,
            # Pub/Sub stores messages durably; the emulator keeps them in memory only.
            persistence=not emulated,
            max_message_size=MAX_BODY,
            wildcards_reason=(
                "Pub/Sub topics are separate: a subscription is attached to exactly one topic, and Pub/Sub "
                "has no topic hierarchy or pattern subscription (subscribe to each topic, or publish to one "
                "topic and subscribe with filter= on a header)"
            ),
            # The emulator answers Seek on a subscription with message ordering "501 Unimplemented".
            history=self.options.topic_retention is not None and not (emulated and self.options.ordering),
            history_reason=(
                "the Pub/Sub emulator cannot seek a subscription with message ordering: add ordering=false to the URL"
                if emulated and self.options.topic_retention
                else "Pub/Sub keeps a topic's messages only with topic retention: add topic_retention=7d to the URL"
            ),
        )
        return capabilities, connection, Publisher(connection)

    @classmethod
    def load_options(cls, url: TransportURL) -> PubSubOptions:
        """Raises :class:`InvalidURL` unless the URL names exactly one valid project id, with
        no port, user info or path."""
        project_of(url)
        return super().load_options(url)

    @property
    def project(self) -> str:
        """The Google Cloud project id (the URL's host)."""
        return self.connection.project

    @property
    def emulator_host(self) -> str | None:
        """The emulator address in use, or ``None`` for the real service."""
        return self.connection.emulator_host

    async def open_consumer(self, source: Destination, handler: DeliveryHandler, concurrency: int) -> Consumer:
        """Declare the source's subscription (one this creates is sought to
        ``source.start_from``; for one that exists that is logged as ignored) and its retry
        topic and subscription, then pull."""
        topology = self.connection.require().topology
        names = names_for(self.connection.project, source)
        await topology.ensure_consumer(names, source)
        consumer = PubSubConsumer(self.connection, self.publisher, names, handler, concurrency)
        consumer.start()
        return consumer

    async def delete_queue(self, name: str) -> None:
        """Delete queue ``name``: its subscription and topic, its retry subscription and
        topic, and those of its dead-letter queue ``name.dlq``, with the messages in them.
        Idempotent. Raises :class:`InvalidDestination` for an illegal name,
        :class:`TopologyError` / :class:`ConnectError` when Pub/Sub refuses or is unreachable."""
        source = Destination(DestinationKind.QUEUE, name)
        await self.connection.require().topology.delete(*owned_names(self.connection.project, source))

    async def dead_letter_queues(self) -> list[str]:
        """The logical names of the dead-letter queues in the project, sorted: subscriptions
        ending in ``.dlq`` on the topic of the same name (ids changed by :func:`resource_id`
        are left out). Read-only. Raises :class:`TopologyError` / :class:`ConnectError`."""
        return await _admin.dead_letter_queues(self.connection)

    async def depth(self, source: Destination) -> int | None:
        """``0`` when neither the subscription of ``source`` (a queue or a topic's group) nor
        its retry subscription exists, else ``None``: Pub/Sub reports a backlog only through
        Cloud Monitoring (``num_undelivered_messages``), which neither its client library nor
        the emulator offers. Creates nothing. Raises :class:`InvalidDestination` for a topic
        without a group, :class:`TopologyError` / :class:`ConnectError`."""
        return await _admin.depth(self.connection, source)

    async def publish_to_group(self, source: Destination, messages: Sequence[OutgoingMessage]) -> None:
        """Publish ``messages`` to the retry topic of group (or queue) ``source`` as attempt 1,
        due now, declaring its retry subscription first: only that group's (queue's) consumer
        reads it, and it keeps them until the consumer runs. Returns once Pub/Sub confirmed
        every message. Raises :class:`InvalidDestination` for a topic without a group,
        :class:`MessageTooLarge` before sending anything, :class:`PublishError` /
        :class:`ConnectError` like ``publish``, :class:`TopologyError` when declaring fails."""
        await _admin.publish_to_group(self.connection, self.publisher, source, messages)

    async def delete_group(self, source: Destination) -> None:
        """Delete group ``source``'s subscription, its retry topic and subscription, and its
        dead-letter queue's topics and subscriptions, with their messages; the topic and other
        groups stay. Idempotent. Stop the group's consumers first: a running one declares its
        subscription again. Raises :class:`InvalidDestination` unless ``source`` is a topic
        with a group, :class:`TopologyError` / :class:`ConnectError`."""
        await _admin.delete_group(self.connection, source)
