"""messagebus: one async API for pub/sub and work queues over many brokers."""

from ._errors import *  # noqa: F403
