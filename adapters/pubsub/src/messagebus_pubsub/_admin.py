"""The optional ``BrokerAdmin`` operations on Pub/Sub (see the README, "Operating it").

Dead-letter queues are found among the project's subscriptions; ``depth`` can only tell
whether a subscription exists, since Pub/Sub reports a backlog through Cloud Monitoring
alone; a replay goes to the group's retry topic, which only that group's retry subscription
reads; deleting a group removes its subscription, its retry lane and its dead-letter queue.
"""

from __future__ import annotations

from collections.abc import Sequence

from google.api_core import exceptions as gexc

from messagebus import InvalidDestination, TopologyError
from messagebus.transports import Destination, DestinationKind, OutgoingMessage, validate_name

from ._codec import check_size, retry_attributes
from ._connection import Connection
from ._errors import errors
from ._publishing import Publisher
from ._topology import Names, names_for, owned_names

__all__ = ["dead_letter_queues", "delete_group", "depth", "publish_to_group"]

_DLQ_SUFFIX = ".dlq"


def _names(project: str, source: Destination, what: str, *, queue: bool = False) -> Names:
    # A topic without a group (or a queue, where not allowed) has no subscription of its own.
    names = names_for(project, source)
    if (source.kind is DestinationKind.TOPIC and source.group) or (queue and source.kind is DestinationKind.QUEUE):
        return names
    allowed = "a queue or a topic with a group" if queue else "a topic with a group"
    raise InvalidDestination(f"{what} takes {allowed}; got {source.kind.value} {source.name!r} without one")


async def dead_letter_queues(conn: Connection) -> list[str]:
    """See :meth:`PubSubTransport.dead_letter_queues`."""
    clients = conn.require()
    what = f"list the subscriptions of project {conn.project}"
    request = {"project": f"projects/{conn.project}", "page_size": 1000}
    try:
        pages = await clients.topology.call(what, clients.subscriber.list_subscriptions, request)
        found = [(s.name.rsplit("/", 1)[-1], s.topic.rsplit("/", 1)[-1]) async for s in pages]
    except Exception as exc:
        raise errors.map(exc, TopologyError, f"cannot {what} at {conn.where}") from exc
    # A dead-letter queue is a queue: a subscription on the topic of its own name. An id that
    # is not a logical name (``mb-...-<hash>``, a foreign ``a+b.dlq``) cannot be mapped back;
    # a legal logical name is its own id (Pub/Sub refuses the names ``resource_id`` changes).
    return sorted(sub for sub, topic in found if sub == topic and sub.endswith(_DLQ_SUFFIX) and _logical(sub))


def _logical(resource: str) -> bool:
    try:
        validate_name(resource)
    except InvalidDestination:
        return False
    return True


async def depth(conn: Connection, source: Destination) -> int | None:
    """See :meth:`PubSubTransport.depth`."""
    names = _names(conn.project, source, "depth", queue=True)
    clients = conn.require()
    for path in (names.subscription, names.retry_subscription):
        try:
            await clients.topology.call(
                f"read subscription {path}", clients.subscriber.get_subscription, {"subscription": path}, gexc.NotFound
            )
        except gexc.NotFound:
            continue
        return None
    return 0


async def publish_to_group(
    conn: Connection, publisher: Publisher, source: Destination, messages: Sequence[OutgoingMessage]
) -> None:
    """See :meth:`PubSubTransport.publish_to_group`."""
    names = _names(conn.project, source, "publish_to_group", queue=True)
    topic, subscription = names.retry_topic, names.retry_subscription
    assert topic is not None and subscription is not None
    items = []
    for message in messages:
        # What the consumer's retry lane reads: attempt 1, due now, the key as an attribute.
        attributes = retry_attributes(message.headers, {}, 1, 0.0, message.key)
        check_size(topic, message.body, attributes, "")
        items.append((topic, message.body, attributes, ""))
    if items:
        await conn.require().topology.ensure_subscription(subscription, topic, ordered=False)
        await publisher.confirm(items)


async def delete_group(conn: Connection, source: Destination) -> None:
    """See :meth:`PubSubTransport.delete_group`."""
    _names(conn.project, source, "delete_group")
    names, dead_letters = owned_names(conn.project, source)
    await conn.require().topology.delete(names, dead_letters, shared=names.topic)
