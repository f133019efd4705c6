"""What the operator's tools ask of Kafka (:class:`~messagebus.transports.BrokerAdmin`): the
dead-letter topics, a group's lag, a replay into one group's retry topic, deleting a group.

Reading sends Metadata that never auto-creates a topic, ListOffsets and an empty Fetch (for
the high watermark) to each partition's leader, and OffsetFetch naming the partitions (Tansu
closes the connection on a whole-group OffsetFetch); it creates nothing, not even a consumer.
"""

from __future__ import annotations

import re
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from aiokafka import errors as kerr
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.protocol.metadata import MetadataRequest
from aiokafka.protocol.offset import OffsetRequest
from aiokafka.structs import TopicPartition

from messagebus import InvalidDestination, TopologyError
from messagebus.transports import Destination, DestinationKind, OutgoingMessage, headers

from ._codec import DUE, TOPIC
from ._connection import Connection
from ._errors import errors
from ._publishing import Publisher
from ._topology import QUEUE_GROUP_PREFIX, SubscriptionNames, kafka_name, subscription_names

__all__ = ["dead_letter_queues", "delete_group", "delete_queue", "depth", "end_offsets", "publish_to_group"]

_Leaders = dict[int, list[TopicPartition]]
#: A topic that is a dead-letter queue: a logical name ending in ``.dlq`` (a cut and hashed
#: name ends in its hash instead, so it cannot be mapped back and is left out).
_DLQ = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,195}\.dlq")


def _names(source: Destination, what: str, *, queue: bool = True) -> SubscriptionNames:
    if not source.group if source.kind is DestinationKind.TOPIC else not queue:
        allowed = "a queue or a topic's group" if queue else "a topic's group"
        raise InvalidDestination(f"{what} needs {allowed}, got the {source.kind} {source}")
    return subscription_names(source)


async def dead_letter_queues(connection: Connection) -> list[str]:
    """See :meth:`KafkaTransport.dead_letter_queues`."""
    try:
        names = await connection.require()[1].admin.list_topics()
    except kerr.KafkaError as exc:
        raise errors.map(exc, TopologyError, "cannot list the Kafka topics") from exc
    return sorted(name for name in names if _DLQ.fullmatch(name))


async def depth(connection: Connection, source: Destination) -> int:
    """See :meth:`KafkaTransport.depth`."""
    names = _names(source, "depth")
    admin = connection.require()[1].admin
    try:
        wanted = [names.topic, names.retry_topic]
        if names.pattern is not None:  # its regex matches its retry topic too
            wanted = [t for t in await admin.list_topics() if re.match(names.pattern, t)]
        leaders = await _leaders(admin, wanted)
        ends = await _ends(admin, leaders)
        starts = await _ask(admin, leaders, lambda t: OffsetRequest(-1, 0, t), lambda tp: (tp.partition, -2), 1)
        committed = await admin.list_consumer_group_offsets(names.group_id, partitions=list(ends))
    except kerr.KafkaError as exc:
        raise errors.map(exc, TopologyError, f"cannot read the lag of Kafka group {names.group_id!r}") from exc
    total = 0
    for tp, end in ends.items():
        done = committed[tp].offset if tp in committed else -1
        fresh = done < 0 and source.kind is DestinationKind.TOPIC and tp.topic != names.retry_topic
        if fresh and source.start_from is None:
            continue  # a topic group without a commit starts at the topic's end, not its history
        total += max(end - max(done, starts[tp]), 0)
    return total


async def end_offsets(connection: Connection, topics: list[str]) -> dict[TopicPartition, int]:
    """The true end (high watermark) of every partition of those of ``topics`` that exist.
    Raises ``KafkaError``."""
    admin = connection.require()[1].admin
    return await _ends(admin, await _leaders(admin, topics))


async def _ends(admin: AIOKafkaAdminClient, leaders: _Leaders) -> dict[TopicPartition, int]:
    listed = await _ask(admin, leaders, lambda t: OffsetRequest(-1, 0, t), lambda tp: (tp.partition, -1), 1)
    # Tansu answers ListOffsets "latest" with its last batch's base offset + 1: a Fetch
    # from there reads the true end, the high watermark (no records at all on Kafka).
    # Its max_wait is 1 ms: Tansu answers a 0 ms Fetch with no partition at all.
    return await _ask(
        admin, leaders, lambda t: FetchRequest(1, 0, 1, 0, t), lambda tp: (tp.partition, listed[tp], 1), 0
    )


async def _leaders(admin: AIOKafkaAdminClient, topics: list[str]) -> _Leaders:
    """The partitions of those of ``topics`` that exist, by leader."""
    response = await admin._send_request(MetadataRequest(topics, allow_auto_topic_creation=False))
    leaders: _Leaders = defaultdict(list)
    for topic in response.to_object()["topics"]:
        code = topic["error_code"]
        if code not in (0, kerr.UnknownTopicOrPartitionError.errno):
            raise kerr.for_code(code)(topic["topic"])
        for p in topic["partitions"]:
            leaders[p["leader"]].append(TopicPartition(topic["topic"], p["partition"]))
    return leaders


async def _ask(
    admin: AIOKafkaAdminClient, leaders: _Leaders, request: Callable[[Any], Any], entry: Callable[..., Any], field: int
) -> dict[TopicPartition, int]:
    """Send each leader ``request`` for its partitions (``entry`` each); every partition's
    ``field`` after partition and error code: ListOffsets' offset, Fetch's high watermark."""
    answers: dict[TopicPartition, int] = {}
    for node, tps in leaders.items():
        by_topic: dict[str, list[Any]] = defaultdict(list)
        for tp in tps:
            by_topic[tp.topic].append(entry(tp))
        response = await admin._send_request(request(list(by_topic.items())), node)
        for topic, partitions in response.topics:
            for partition, code, *fields in partitions:
                if code:
                    raise kerr.for_code(code)(f"{topic}[{partition}]")
                answers[TopicPartition(topic, partition)] = fields[field]
    return answers


async def publish_to_group(publisher: Publisher, source: Destination, messages: Sequence[OutgoingMessage]) -> None:
    """See :meth:`KafkaTransport.publish_to_group`."""
    names = _names(source, "publish_to_group")
    retry = Destination(DestinationKind.QUEUE, names.retry_topic)  # a Kafka name is its own kafka_name
    now = {headers.ATTEMPT: "1", DUE: str(int(time.time() * 1000))}
    tagged = [{**m.headers, **now, **({TOPIC: m.destination.name} if names.pattern else {})} for m in messages]
    await publisher.publish([OutgoingMessage(retry, m.body, h, m.key) for m, h in zip(messages, tagged, strict=True)])


async def delete_queue(connection: Connection, name: str) -> None:
    """See :meth:`KafkaTransport.delete_queue`."""
    physical = [kafka_name(name + suffix) for suffix in ("", ".retry", ".dlq", ".dlq.retry")]
    await connection.require()[1].delete(physical, kafka_name(QUEUE_GROUP_PREFIX + name))


async def delete_group(connection: Connection, source: Destination) -> None:
    """See :meth:`KafkaTransport.delete_group`."""
    names = _names(source, "delete_group", queue=False)
    await connection.require()[1].delete([names.retry_topic], names.group_id)
    await delete_queue(connection, source.dead_letter_queue)
