"""What the operator's tools ask of JetStream (:class:`~messagebus.transports.BrokerAdmin`).

Dead-letter queues are the work-queue streams of this prefix whose subject maps back to a
logical ``*.dlq`` name. Depth is a durable consumer's ``num_pending`` plus ``num_ack_pending`` (stored and
not acked by it); a queue nobody consumed yet counts its stream's messages. A replay to one
group is the path of a retry: a copy on the topic's subject addressed to the group's durable
(``messagebus-for``), which every other durable acks unhandled. Deleting a group deletes its
durable (a pattern's on every matching topic, and its registry record) and its dead-letter
stream.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Sequence
from dataclasses import replace

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from messagebus import InvalidDestination, TopologyError
from messagebus.transports import Destination, DestinationKind, OutgoingMessage, headers

from ._codec import DUE, FOR, MSG_ID
from ._connection import Connection
from ._errors import ERRORS
from ._publishing import Prepared, Publisher
from ._topology import Names, names_of, pattern_durable, start_of

__all__ = ["dead_letter_queues", "delete_group", "depth", "publish_to_group"]

#: Logical names of dead-letter queues (``<queue>.dlq``, ``<topic>.<group>.dlq``).
DEAD_LETTERS = "*.#.dlq"


def _group(source: Destination, what: str) -> None:
    if source.kind is not DestinationKind.TOPIC or not source.group:
        raise InvalidDestination(f"{what} needs a topic's group (topic and group set), got {source}")


async def _durables(conn: Connection, source: Destination) -> list[Names]:
    """The durables of ``source``: its own, or a pattern's on every matching topic stream."""
    _, topology = conn.require()
    if not source.is_pattern:
        return [names_of(source, conn.options.prefix)]
    durable = pattern_durable(source)
    return [replace(n, consumer=durable) for n in (await topology.matching(source.name)).values()]


async def dead_letter_queues(conn: Connection) -> list[str]:
    """See :meth:`NatsTransport.dead_letter_queues`."""
    _, topology = conn.require()
    return sorted(await topology.matching(DEAD_LETTERS, retention="workqueue"))


async def depth(conn: Connection, source: Destination) -> int:
    """See :meth:`NatsTransport.depth`."""
    if source.kind is DestinationKind.TOPIC and not source.group:
        raise InvalidDestination(f"depth of topic {source.name!r} needs a group (a topic stores per group)")
    js, _ = conn.require()
    total = 0
    for names in await _durables(conn, source):
        try:
            total += await _pending(js, names)
        except Exception as exc:
            what = f"cannot read the pending count of consumer {names.consumer!r} of stream {names.stream!r}"
            raise ERRORS.map(exc, TopologyError, what) from exc
    return total


async def _pending(js: JetStreamContext, names: Names) -> int:
    try:
        info = await js.consumer_info(names.stream, names.consumer)
        # A handed-back (-NAK) message counts as ack-pending like one in a handler: both are
        # needed, or a dead-letter queue just looked at (peek) would read 0.
        return (info.num_pending or 0) + (info.num_ack_pending or 0)
    except NotFoundError:
        if not names.queue:
            return 0
    try:  # a queue nobody consumed yet: everything stored waits
        return (await js.stream_info(names.stream)).state.messages
    except NotFoundError:
        return 0


async def publish_to_group(publisher: Publisher, source: Destination, messages: Sequence[OutgoingMessage]) -> None:
    """See :meth:`NatsTransport.publish_to_group`."""
    if source.kind is DestinationKind.TOPIC:
        _group(source, "publish_to_group")
    _, topology = publisher.connection.require()
    durable = pattern_durable(source) if source.is_pattern else names_of(source).consumer
    prepared: list[Prepared] = []
    for message in messages:
        name = message.destination.name if source.is_pattern else source.name
        if "*" in name or "#" in name:
            raise InvalidDestination(
                f"JetStream keeps pattern group {source}'s messages per topic: publish_to_group needs each "
                f"message's own topic as its destination, got {name!r}"
            )
        names = replace(publisher.names(Destination(source.kind, name)), consumer=durable)
        _, body, wire = publisher.prepare(message)
        for internal in (DUE, headers.ATTEMPT):
            wire.pop(internal, None)  # a first attempt, due now
        wire[FOR] = durable
        # Its own id: the original's (ce-id) would make JetStream drop a replay as a duplicate.
        wire[MSG_ID] = uuid.uuid4().hex
        prepared.append((names, body, wire))
    for names in {p[0] for p in prepared} - topology.replay_durables:
        await topology.ensure_consumer(names, start_of(source.start_from))  # kept when it is not running
        # Once per connection: a JetStream request per replayed message cost two thirds of a replay.
        topology.replay_durables.add(names)
    await publisher.send(prepared)


async def delete_group(conn: Connection, source: Destination) -> None:
    """See :meth:`NatsTransport.delete_group`."""
    _group(source, "delete_group")
    js, topology = conn.require()
    topology.replay_durables.clear()
    try:
        for names in await _durables(conn, source):
            with contextlib.suppress(NotFoundError):
                await js.delete_consumer(names.stream, names.consumer)
        if source.is_pattern:
            registry = topology.registry
            with contextlib.suppress(NotFoundError):  # new topics no longer get the durable
                await js.purge_stream(registry.stream, subject=registry.subject.replace("*", pattern_durable(source)))
    except Exception as exc:
        raise ERRORS.map(exc, TopologyError, f"cannot delete the durable consumers of group {source}") from exc
    dead_letters = Destination(DestinationKind.QUEUE, source.dead_letter_queue)
    await topology.delete(names_of(dead_letters, conn.options.prefix))
