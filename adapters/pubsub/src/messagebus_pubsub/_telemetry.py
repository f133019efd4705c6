"""OpenTelemetry messaging attributes for Pub/Sub deliveries (semantic conventions)."""

from __future__ import annotations

from messagebus.transports import AttributeValue

__all__ = ["MESSAGING_SYSTEM", "delivery_attributes"]

#: ``messaging.system`` for Google Cloud Pub/Sub.
MESSAGING_SYSTEM = "gcp_pubsub"


def delivery_attributes(
    *, subscription: str, message_id: str, ack_id: str, ordering_key: str, body_size: int, attempt: int
) -> dict[str, AttributeValue]:
    """Attributes of one received message: subscription, native message id, ack id, ordering
    key (only when set), body size and delivery attempt. Pure."""
    attrs: dict[str, AttributeValue] = {
        "messaging.destination.subscription.name": subscription,
        "messaging.message.id": message_id,
        "messaging.gcp_pubsub.message.ack_id": ack_id,
        "messaging.message.body.size": body_size,
        "messaging.gcp_pubsub.message.delivery_attempt": attempt,
    }
    if ordering_key:
        attrs["messaging.gcp_pubsub.message.ordering_key"] = ordering_key
    return attrs
