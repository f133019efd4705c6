"""messagebus-rabbitmq: the RabbitMQ transport of messagebus (``amqp://`` and ``amqps://``).

Installed, it is found by URL scheme: ``Bus.from_url("amqp://guest:guest@localhost:5672/")``.
See the package README for the URL options, the topology it declares and its guarantees.
"""

from ._codec import CE_AMQP_PREFIX
from ._options import RabbitMQOptions
from ._topology import RETRY_BUCKETS_MS, bucket_for, physical_name, queue_name, retry_exchange
from ._transport import RabbitMQConsumer, RabbitMQDelivery, RabbitMQTransport

__all__ = [
    "CE_AMQP_PREFIX",
    "RETRY_BUCKETS_MS",
    "RabbitMQConsumer",
    "RabbitMQDelivery",
    "RabbitMQOptions",
    "RabbitMQTransport",
    "bucket_for",
    "physical_name",
    "queue_name",
    "retry_exchange",
]
