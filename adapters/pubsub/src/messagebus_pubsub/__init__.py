"""Google Cloud Pub/Sub transport for messagebus: ``MESSAGEBUS_URL=pubsub://my-project``.

Installed as the ``pubsub`` entry point of the ``messagebus.transports`` group; the bus finds
it by URL scheme. See the package README for URL options, topology and guarantees.
"""

from ._options import PubSubOptions
from ._topology import resource_id
from ._transport import PubSubConsumer, PubSubDelivery, PubSubTransport

__all__ = ["PubSubConsumer", "PubSubDelivery", "PubSubOptions", "PubSubTransport", "resource_id"]
