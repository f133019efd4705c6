"""What a transport adapter needs: the contract, helpers, and the built-in memory transport.

Adapter authors import from here and from :mod:`messagebus`; nothing else is public.
"""

from .._config import TransportOptions, TransportURL, parse_options
from .._destination import Destination, DestinationKind, dead_letter_name, sanitize_name, validate_name
from .._dispatch import WorkerPool
from .._headers import from_wire, to_wire
from .._message import AttributeValue, OutgoingMessage
from .._transport import Capabilities, Consumer, Delivery, DeliveryHandler, Transport, TransportFactory
from . import headers

__all__ = [
    "AttributeValue",
    "Capabilities",
    "Consumer",
    "Delivery",
    "DeliveryHandler",
    "Destination",
    "DestinationKind",
    "OutgoingMessage",
    "Transport",
    "TransportFactory",
    "TransportOptions",
    "TransportURL",
    "WorkerPool",
    "dead_letter_name",
    "from_wire",
    "headers",
    "parse_options",
    "sanitize_name",
    "to_wire",
    "validate_name",
]
