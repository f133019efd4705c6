"""What the operator's tools ask of SQS/SNS (:class:`~messagebus.transports.BrokerAdmin`):
the dead-letter queues that exist, a queue's depth, a message for one group only, and a
group's removal. The boto3 calls block: they run on the connection's thread pool."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from messagebus import InvalidDestination, TopologyError
from messagebus.transports import Destination, DestinationKind, OutgoingMessage, dead_letter_name, validate_name

from ._connection import Connection
from ._errors import errors, is_missing
from ._publishing import Publisher
from ._topology import logical_dead_letter, logical_queue, physical_names, queue_name

__all__ = ["dead_letter_queues", "delete_group", "depth", "publish_to_group"]


def _checked(source: Destination, *, queue: bool) -> Destination:
    """``source`` without its filter; raises :class:`InvalidDestination` unless it is a
    topic's group (or, with ``queue``, a queue) with legal names."""
    if not (source.group if source.kind is DestinationKind.TOPIC else queue):
        allowed = "a queue or a topic's group" if queue else "a topic's group"
        raise InvalidDestination(f"{source} is not {allowed}: give Destination(TOPIC, topic, group)")
    validate_name(source.name, source.kind.value)
    validate_name(source.group or source.name, "group")
    return Destination(source.kind, source.name, source.group)


async def dead_letter_queues(conn: Connection) -> list[str]:
    """See :meth:`SqsTransport.dead_letter_queues`."""
    o = conn.options

    def listed() -> list[str]:
        prefix = {"QueueNamePrefix": o.queue_prefix} if o.queue_prefix else {}
        try:
            pages = conn.sqs.get_paginator("list_queues").paginate(**prefix)
            names = [url.rsplit("/", 1)[-1] for page in pages for url in page.get("QueueUrls", [])]
        except Exception as exc:
            raise errors.map(exc, TopologyError, "listing the SQS queues") from exc
        logical = (logical_dead_letter(n, prefix=o.queue_prefix, fifo=o.fifo) for n in names)
        return sorted({name for name in logical if name is not None})

    return await conn.run(listed)


async def depth(conn: Connection, source: Destination) -> int:
    """See :meth:`SqsTransport.depth`."""
    o = conn.options
    name = queue_name(logical_queue(_checked(source, queue=True)), prefix=o.queue_prefix, fifo=o.fifo)

    def visible() -> int:
        # get_queue_url, unlike the topology's create_queue, never makes the queue it names.
        try:
            url = conn.sqs.get_queue_url(QueueName=name)["QueueUrl"]
            attributes = conn.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])
        except Exception as exc:
            if is_missing(exc):
                return 0
            raise errors.map(exc, TopologyError, f"reading the depth of SQS queue {name!r}") from exc
        return int(attributes["Attributes"]["ApproximateNumberOfMessages"])

    return await conn.run(visible)


async def publish_to_group(publisher: Publisher, source: Destination, messages: Sequence[OutgoingMessage]) -> None:
    """See :meth:`SqsTransport.publish_to_group`."""
    target = _checked(source, queue=True)
    # SNS's raw delivery puts a topic message in the group's queue as this body and these
    # attributes: sent there directly, only this group gets it, and its consumer reads it alike.
    await publisher.publish([replace(m, destination=target) for m in messages], replay=True)


async def delete_group(conn: Connection, source: Destination) -> None:
    """See :meth:`SqsTransport.delete_group`."""
    group = _checked(source, queue=False)
    topology = conn.require()
    names = physical_names(group, conn.options)
    await conn.run(_unsubscribe, conn.sqs, conn.sns, names)
    for logical in (logical_queue(group), dead_letter_name(group.name, group.group)):
        await conn.run(topology.delete_queue, logical)


def _unsubscribe(sqs: Any, sns: Any, names: dict[str, str]) -> None:
    """Remove the SNS subscription of the group's queue (``names``: its physical names); a
    missing queue, topic or subscription is no error."""
    try:
        url = sqs.get_queue_url(QueueName=names["queue"])["QueueUrl"]
        queue_arn = str(sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"])
        # The topic is in the queue's partition, region and account: asking SNS for its ARN
        # (CreateTopic) would make a topic that is not there.
        topic_arn = ":".join([*queue_arn.split(":")[:5], names["topic"]]).replace(":sqs:", ":sns:", 1)
        for page in sns.get_paginator("list_subscriptions_by_topic").paginate(TopicArn=topic_arn):
            for sub in page.get("Subscriptions", []):
                if sub.get("Endpoint") == queue_arn and sub.get("SubscriptionArn", "").startswith("arn:"):
                    sns.unsubscribe(SubscriptionArn=sub["SubscriptionArn"])
    except Exception as exc:
        if not is_missing(exc):
            raise errors.map(exc, TopologyError, f"unsubscribing SQS queue {names['queue']!r}") from exc
