"""OpenTelemetry messaging attributes of the Redis transport (semantic conventions)."""

from __future__ import annotations

from messagebus.transports import AttributeValue

__all__ = ["MESSAGING_SYSTEM", "delivery_attributes"]

#: ``messaging.system`` of this transport.
MESSAGING_SYSTEM = "redis"


def delivery_attributes(stream: str, entry_id: str, consumer: str, size: int) -> dict[str, AttributeValue]:
    """Attributes of one received stream entry: its id, the stream it was read from (the main
    stream or the group's retry stream), the Redis consumer name and the body size."""
    return {
        "messaging.message.id": entry_id,
        "messaging.redis.stream": stream,
        "messaging.client.id": consumer,
        "messaging.message.body.size": size,
    }
