"""OpenTelemetry messaging attributes for NATS (semantic conventions: ``messaging.system`` nats)."""

from __future__ import annotations

from typing import Any

from messagebus.transports import AttributeValue

__all__ = ["MESSAGING_SYSTEM", "delivery_attributes"]

MESSAGING_SYSTEM = "nats"


def delivery_attributes(msg: Any, names: Any) -> dict[str, AttributeValue]:
    """Attributes of one received JetStream message for the ``process`` span and metrics."""
    meta = msg.metadata
    # The bus sets the logical destination and group; these name the JetStream objects.
    return {
        "messaging.nats.subject": names.subject,
        "messaging.nats.stream": meta.stream,
        "messaging.nats.consumer": names.consumer,
        "messaging.nats.stream.sequence": meta.sequence.stream,
        "messaging.nats.delivered": meta.num_delivered,
    }
