"""OpenTelemetry messaging attributes for Kafka (semantic conventions, ``messaging.kafka.*``)."""

from __future__ import annotations

from typing import Any

from messagebus.transports import AttributeValue

__all__ = ["MESSAGING_SYSTEM", "delivery_attributes"]

MESSAGING_SYSTEM = "kafka"


def delivery_attributes(record: Any, group_id: str) -> dict[str, AttributeValue]:
    """Attributes of one consumed ``ConsumerRecord`` for the ``process`` span and metrics."""
    attrs: dict[str, AttributeValue] = {"messaging.kafka.offset": record.offset}
    attrs["messaging.destination.partition.id"] = str(record.partition)
    # The Kafka group id (``<topic>.<group>``); the bus sets messaging.consumer.group.name
    # to the logical group itself.
    attrs["messaging.kafka.consumer.group"] = group_id
    attrs["messaging.kafka.destination.topic"] = record.topic
    if record.key is not None:
        attrs["messaging.kafka.message.key"] = record.key.decode("utf-8", "replace")
    return attrs
