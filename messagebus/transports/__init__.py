"""What a transport adapter needs: the contract, helpers, and the built-in memory transport.

Adapter authors import from here and from :mod:`messagebus`; nothing else is public.
"""

from .._backoff import Backoff
from .._batcher import BatchCall, Batcher
from .._blocking import BlockingWorker
from .._config import TransportOptions, TransportURL, parse_options
from .._consumer import ConsumerBase
from .._delivery import Delivery, DeliverySource
from .._destination import (
    Destination,
    DestinationKind,
    dead_letter_name,
    matches_pattern,
    sanitize_name,
    validate_name,
)
from .._dispatch import WorkerPool
from .._error_map import ErrorMap, ErrorRule, describe_error
from .._headers import from_wire, to_wire
from .._history import Position, log_ignored
from .._message import AttributeValue, OutgoingMessage
from .._request import REPLY_QUEUE_PATTERN, is_reply_queue
from .._stats import STATS_TOPIC
from .._transport import (
    BrokerAdmin,
    Capabilities,
    Consumer,
    DeleteQueue,
    DeliveryHandler,
    DeliveryLike,
    PublishAttributes,
    ReadyConsumer,
    Transport,
    TransportFactory,
)
from .._transport_base import TransportBase
from . import headers

__all__ = [
    "AttributeValue",
    "Backoff",
    "BatchCall",
    "Batcher",
    "BlockingWorker",
    "BrokerAdmin",
    "Capabilities",
    "Consumer",
    "ConsumerBase",
    "DeleteQueue",
    "Delivery",
    "DeliveryHandler",
    "DeliveryLike",
    "DeliverySource",
    "Destination",
    "DestinationKind",
    "ErrorMap",
    "ErrorRule",
    "OutgoingMessage",
    "Position",
    "PublishAttributes",
    "REPLY_QUEUE_PATTERN",
    "ReadyConsumer",
    "STATS_TOPIC",
    "Transport",
    "TransportBase",
    "TransportFactory",
    "TransportOptions",
    "TransportURL",
    "WorkerPool",
    "dead_letter_name",
    "describe_error",
    "from_wire",
    "headers",
    "is_reply_queue",
    "log_ignored",
    "matches_pattern",
    "parse_options",
    "sanitize_name",
    "to_wire",
    "validate_name",
]
