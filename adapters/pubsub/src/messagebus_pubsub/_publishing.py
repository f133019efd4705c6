"""Publishing: encode, declare on first use, batch per topic (the core ``Batcher``) into
``Publish`` calls of the asyncio client, and wait for Pub/Sub's message ids.

Messages with an ordering key go in order: a batch holding one is in flight alone per topic
(``Batcher(sequential=True)``), so Pub/Sub receives a key's messages in ``publish`` order.
Transient errors are retried until ``publish_timeout``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from google.api_core import exceptions as gexc
from google.pubsub_v1.types import PublishRequest, PublishResponse

from messagebus import PublishError
from messagebus.transports import Batcher, DestinationKind, OutgoingMessage

from ._codec import MAX_REQUEST, check_size, encode_attributes, raw_message
from ._connection import Connection
from ._errors import errors, transient_retry
from ._topology import Names, names_for

__all__ = ["Publisher"]

_RAW_REQUEST = PublishRequest.pb()


class Publisher:
    """Publishes through the clients of ``connection``; may be called concurrently."""

    def __init__(self, connection: Connection) -> None:
        self._conn = connection
        self._batchers: dict[str, Batcher[object, str]] = {}

    async def publish(self, messages: Sequence[OutgoingMessage]) -> None:
        """See :meth:`PubSubTransport.publish`."""
        if not messages:
            return
        topology = self._conn.require().topology
        project, ordering = self._conn.project, self._conn.options.ordering
        items: list[tuple[str, bytes, dict[str, str], str]] = []
        queues: dict[str, Names] = {}
        topics: set[str] = set()
        for message in messages:
            names = names_for(project, message.destination)
            attributes, ordering_key = encode_attributes(message.headers, message.key, ordering)
            check_size(names.topic, message.body, attributes, ordering_key)
            items.append((names.topic, message.body, attributes, ordering_key))
            if message.destination.kind is DestinationKind.QUEUE:
                queues[names.topic] = names
            else:
                topics.add(names.topic)
        # A queue's subscription exists from its first send, so the message waits for a consumer.
        await asyncio.gather(
            *(
                topology.ensure_subscription(n.subscription, n.topic, ordered=n.ordered)
                for n in queues.values()
                if n.subscription
            ),
            *(topology.ensure_topic(t, retained=True) for t in topics - queues.keys()),
        )
        await self.confirm(items)

    async def confirm(self, items: Sequence[tuple[str, bytes, dict[str, str], str]]) -> None:
        """Send checked messages (topic, data, attributes, ordering key) to existing topics and
        wait for every message id. Raises :class:`PublishError` / :class:`ConnectError`."""
        timeout = self._conn.options.publish_timeout
        try:
            await asyncio.wait_for(asyncio.gather(*(self.send(*item) for item in items)), timeout)
        except TimeoutError:
            raise PublishError(
                f"Pub/Sub at {self._conn.where} did not confirm {len(items)} messages within publish_timeout={timeout}s"
            ) from None

    def send(self, topic: str, data: bytes, attributes: dict[str, str], ordering_key: str) -> asyncio.Future[str]:
        """Queue one checked message for ``topic``; the future gives its message id or fails
        with :class:`PublishError` / :class:`ConnectError`."""
        batcher = self._batchers.get(topic)
        if batcher is None:
            opts = self._conn.options
            batcher = self._batchers[topic] = Batcher(
                lambda batch: self._call(topic, batch),
                max_entries=opts.batch_max_messages,
                max_bytes=MAX_REQUEST - 64 * 1024,
                linger=opts.batch_max_latency,
                sequential=True,
                map_error=lambda exc: errors.map(exc, PublishError, f"publishing to {topic} at {self._conn.where}"),
            )
        message = raw_message(data, attributes, ordering_key)
        return batcher.add(message, message.ByteSize(), ordered=bool(ordering_key))

    async def _call(self, topic: str, batch: list[object]) -> Sequence[str]:
        clients = self._conn.require()
        timeout = self._conn.options.publish_timeout
        request = PublishRequest.wrap(_RAW_REQUEST(topic=topic, messages=batch))
        try:
            response = await clients.publisher.publish(request=request, retry=transient_retry(timeout), timeout=timeout)
        except gexc.NotFound:
            # The topic is gone (deleted, or an emulator restarted and lost everything):
            # declare it, and a queue's subscription, again on the next publish.
            clients.topology.forget_all()
            raise
        return list(PublishResponse.pb(response).message_ids)
