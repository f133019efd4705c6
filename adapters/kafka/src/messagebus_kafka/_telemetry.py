"""OpenTelemetry messaging attributes for Kafka (semantic conventions, ``messaging.kafka.*``)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from messagebus.transports import AttributeValue

__all__ = ["MESSAGING_SYSTEM", "DeliveryAttributes", "delivery_attributes"]

MESSAGING_SYSTEM = "kafka"


def delivery_attributes(record: Any, group_id: str) -> dict[str, AttributeValue]:
    """Attributes of one consumed ``ConsumerRecord`` for the ``process`` span and metrics."""
    attrs: dict[str, AttributeValue] = {
        "messaging.kafka.offset": record.offset,
        "messaging.destination.partition.id": str(record.partition),
        # The Kafka group id (``<topic>.<group>``); the bus sets messaging.consumer.group.name
        # to the logical group itself.
        "messaging.kafka.consumer.group": group_id,
        "messaging.kafka.destination.topic": record.topic,
    }
    if record.key is not None:
        attrs["messaging.kafka.message.key"] = record.key.decode("utf-8", "replace")
    return attrs


class DeliveryAttributes(Mapping[str, AttributeValue]):
    """:func:`delivery_attributes` of one record, built on first use: only tracing and
    metrics with an OpenTelemetry SDK read them, so without one no dict is built per record.
    Read-only; not thread-safe (one belongs to one delivery)."""

    __slots__ = ("_attrs", "_group_id", "_record")

    def __init__(self, record: Any, group_id: str) -> None:
        self._record = record
        self._group_id = group_id
        self._attrs: dict[str, AttributeValue] | None = None

    def _all(self) -> dict[str, AttributeValue]:
        attrs = self._attrs
        if attrs is None:
            attrs = self._attrs = delivery_attributes(self._record, self._group_id)
        return attrs

    def __getitem__(self, key: str) -> AttributeValue:
        return self._all()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())
