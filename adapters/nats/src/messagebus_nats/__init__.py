"""NATS JetStream transport for messagebus (nats-py): ``MESSAGEBUS_URL=nats://host:4222``.

Installed as the ``nats`` and ``nats+tls`` entry points of the ``messagebus.transports``
group; the bus finds it by URL scheme. See the package README for URL options and the
topology mapping.
"""

from ._options import NatsOptions
from ._topology import physical_names
from ._transport import NatsTransport

__all__ = ["NatsOptions", "NatsTransport", "physical_names"]
