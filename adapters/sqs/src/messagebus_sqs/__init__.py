"""messagebus-sqs: the AWS SQS/SNS transport of messagebus (scheme ``sqs``).

``Bus.from_url("sqs://?region=eu-west-1")``: topics are SNS topics, each subscription group an
SQS queue subscribed with raw delivery, work queues and dead-letter queues plain SQS queues;
``fifo=true`` makes everything FIFO with ordering by key. See the README for every option.
"""

from ._codec import MAX_BODY_SIZE, MAX_WIRE_SIZE
from ._options import SqsOptions
from ._topology import physical_names, queue_name, topic_name
from ._transport import SqsTransport

__all__ = ["MAX_BODY_SIZE", "MAX_WIRE_SIZE", "SqsOptions", "SqsTransport", "physical_names", "queue_name", "topic_name"]
