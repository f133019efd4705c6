"""Google Cloud Pub/Sub transport for messagebus: ``MESSAGEBUS_URL=pubsub://my-project``.

Installed as the ``pubsub`` entry point of the ``messagebus.transports`` group; the bus finds
it by URL scheme. See the package README for options, topology and guarantees.
"""

from ._options import PubSubOptions
from ._topology import physical_names, resource_id
from ._transport import PubSubTransport

__all__ = ["PubSubOptions", "PubSubTransport", "physical_names", "resource_id"]
