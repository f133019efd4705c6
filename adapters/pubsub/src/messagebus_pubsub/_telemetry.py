"""OpenTelemetry messaging attributes for Pub/Sub deliveries (semantic conventions)."""

from __future__ import annotations

from typing import Any

from messagebus.transports import AttributeValue

__all__ = ["MESSAGING_SYSTEM", "delivery_attributes"]

MESSAGING_SYSTEM = "gcp_pubsub"


def delivery_attributes(received: Any, subscription: str, attempt: int) -> dict[str, AttributeValue]:
    """Attributes of one protobuf ``ReceivedMessage`` for the ``process`` span and metrics."""
    message = received.message
    attrs: dict[str, AttributeValue] = {
        "messaging.destination.subscription.name": subscription,
        "messaging.message.id": message.message_id,
        "messaging.gcp_pubsub.message.ack_id": received.ack_id,
        "messaging.message.body.size": len(message.data),
        "messaging.gcp_pubsub.message.delivery_attempt": attempt,
    }
    if message.ordering_key:
        attrs["messaging.gcp_pubsub.message.ordering_key"] = message.ordering_key
    return attrs
