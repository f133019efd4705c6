"""OpenTelemetry attribute values of the skeleton transport (messaging semantic conventions)."""

from __future__ import annotations

from messagebus.transports import AttributeValue

from ._codec import SkeletonMessage

__all__ = ["MESSAGING_SYSTEM", "delivery_attributes"]

#: ``messaging.system`` of this transport.
MESSAGING_SYSTEM = "skeleton"


def delivery_attributes(message: SkeletonMessage, size: int) -> dict[str, AttributeValue]:
    """Attributes of one received message: the broker's message id, the queue, the body size
    and how many times it was received."""
    return {
        "messaging.message.id": str(message.id),
        "messaging.destination.subscription.name": message.queue,
        "messaging.message.body.size": size,
        "messaging.skeleton.deliveries": message.deliveries,
    }
