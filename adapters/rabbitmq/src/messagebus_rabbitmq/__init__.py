"""messagebus-rabbitmq: the RabbitMQ transport of messagebus (``amqp://`` and ``amqps://``).

Installed, it is found by URL scheme: ``Bus.from_url("amqp://guest:guest@localhost:5672/")``.
See the package README for the URL options, the topology it declares and its guarantees.
"""

from ._codec import CE_AMQP_PREFIX
from ._options import RabbitMQOptions
from ._topology import RETRY_BUCKETS_MS, bucket_for, physical_name, physical_names, queue_name, retry_exchange
from ._transport import RabbitMQTransport

__all__ = [
    "CE_AMQP_PREFIX",
    "RETRY_BUCKETS_MS",
    "RabbitMQOptions",
    "RabbitMQTransport",
    "bucket_for",
    "physical_name",
    "physical_names",
    "queue_name",
    "retry_exchange",
]
