"""Kafka transport for messagebus (aiokafka): ``MESSAGEBUS_URL=kafka://host:9092``.

Installed as the ``kafka`` entry point of the ``messagebus.transports`` group; the bus finds
it by URL scheme. See the package README for URL options and the topology mapping.
"""

from ._options import KafkaOptions
from ._topology import physical_names
from ._transport import KafkaTransport

__all__ = ["KafkaOptions", "KafkaTransport", "physical_names"]
