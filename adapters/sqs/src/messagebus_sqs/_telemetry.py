"""OpenTelemetry attribute values of the SQS/SNS transport (semantic conventions)."""

from __future__ import annotations

from typing import Any

from messagebus.transports import AttributeValue, Destination

from ._topology import Topology, is_topic

__all__ = ["SNS_SYSTEM", "SQS_SYSTEM", "consume_attributes", "publish_attributes"]

SQS_SYSTEM = "aws_sqs"
SNS_SYSTEM = "aws.sns"


def publish_attributes(destination: Destination, topology: Topology | None) -> dict[str, AttributeValue]:
    """Attributes of a publish span for ``destination`` (names from ``topology``'s cache):
    ``messaging.system`` is SNS for topics, SQS for queues."""
    topic = is_topic(destination)
    attrs: dict[str, AttributeValue] = {"messaging.system": SNS_SYSTEM if topic else SQS_SYSTEM}
    names = None if topology is None else topology.topics if topic else topology.queues
    known = None if names is None else names.get(destination.name)
    if known:
        attrs["aws.sns.topic.arn" if topic else "aws.sqs.queue.url"] = known
    return attrs


def consume_attributes(queue_url: str, message: dict[str, Any], topic_arn: str | None) -> dict[str, AttributeValue]:
    """Attributes of a process span for one received SQS message."""
    attrs: dict[str, AttributeValue] = {"aws.sqs.queue.url": queue_url}
    if topic_arn:
        attrs["aws.sns.topic.arn"] = topic_arn
    native_id = message.get("MessageId")
    if native_id:
        # The broker's own id; the tracing middleware then reports the CloudEvents id as
        # cloudevents.event_id.
        attrs["messaging.message.id"] = str(native_id)
    group = (message.get("Attributes") or {}).get("MessageGroupId")
    if group:
        attrs["messaging.aws_sqs.message.group_id"] = str(group)
    return attrs
