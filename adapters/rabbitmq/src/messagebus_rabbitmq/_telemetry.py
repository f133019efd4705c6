"""OpenTelemetry messaging attributes for RabbitMQ deliveries (semantic conventions)."""

from __future__ import annotations

from typing import cast

from aiormq.abc import DeliveredMessage
from pamqp.commands import Basic

from messagebus.transports import AttributeValue

__all__ = ["MESSAGING_SYSTEM", "delivery_attributes"]

#: ``messaging.system`` for RabbitMQ.
MESSAGING_SYSTEM = "rabbitmq"


def delivery_attributes(message: DeliveredMessage, queue: str) -> dict[str, AttributeValue]:
    """Attributes of one received message: routing key, delivery tag, exchange, queue, size,
    message id and redelivery flag (``messaging.rabbitmq.*`` and generic ``messaging.*``)."""
    delivery = cast(Basic.Deliver, message.delivery)
    attrs: dict[str, AttributeValue] = {
        "messaging.rabbitmq.destination.routing_key": delivery.routing_key or "",
        "messaging.rabbitmq.message.delivery_tag": int(delivery.delivery_tag or 0),
        "messaging.destination.name": delivery.exchange or "",
        "messaging.rabbitmq.queue.name": queue,
        "messaging.message.body.size": len(message.body),
        "messaging.rabbitmq.message.redelivered": bool(delivery.redelivered),
    }
    props = message.header.properties
    if props.message_id:
        attrs["messaging.message.id"] = props.message_id
    if props.correlation_id:
        attrs["messaging.message.conversation_id"] = props.correlation_id
    return attrs
