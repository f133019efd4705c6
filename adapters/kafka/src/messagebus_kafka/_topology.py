"""Logical destinations -> Kafka topics and consumer groups; topic creation on demand.

Mapping (all names pass :func:`kafka_name`):

- topic ``T`` and queue ``Q``: Kafka topic ``T`` / ``Q``
- subscription of group ``G`` to ``T``: consumer group ``T.G``; retries go to ``T.G.retry``
- queue ``Q``: the fixed consumer group ``messagebus.queue.Q``; retries go to ``Q.retry``
- dead letters: the queues ``T.G.dlq`` / ``Q.dlq`` (named by the core), i.e. Kafka topics
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from aiokafka import errors as kerr
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from messagebus import TopologyError
from messagebus.transports import Destination, DestinationKind, dead_letter_name, sanitize_name

from ._errors import errors
from ._options import KafkaOptions

__all__ = ["MAX_TOPIC_LENGTH", "SubscriptionNames", "TopicAdmin", "kafka_name", "physical_names", "subscription_names"]

logger = logging.getLogger("messagebus.kafka")

#: Kafka's limit on topic names.
MAX_TOPIC_LENGTH = 249
_ALLOWED = r"A-Za-z0-9._-"
QUEUE_GROUP_PREFIX = "messagebus.queue."


def kafka_name(logical: str) -> str:
    """A legal Kafka topic / group name for ``logical`` (249 chars of ``[a-zA-Z0-9._-]``).

    Names that had to change or be cut get a hash suffix, so distinct logical names stay
    distinct. ``.`` and ``..`` (illegal in Kafka) are mapped too. Pure.
    """
    if logical in (".", ".."):
        return sanitize_name(logical + "_", max_length=MAX_TOPIC_LENGTH, allowed=_ALLOWED, replacement="_")
    return sanitize_name(logical, max_length=MAX_TOPIC_LENGTH, allowed=_ALLOWED, replacement="_")


@dataclass(frozen=True, slots=True)
class SubscriptionNames:
    """Physical names used by one subscription."""

    topic: str
    group_id: str
    retry_topic: str


def subscription_names(source: Destination) -> SubscriptionNames:
    """The Kafka topic, consumer group and retry topic of a subscription or queue."""
    if source.kind is DestinationKind.QUEUE or not source.group:
        base = source.name
        return SubscriptionNames(kafka_name(base), kafka_name(QUEUE_GROUP_PREFIX + base), kafka_name(base + ".retry"))
    base = f"{source.name}.{source.group}"
    return SubscriptionNames(kafka_name(source.name), kafka_name(base), kafka_name(base + ".retry"))


def physical_names(destination: Destination, options: KafkaOptions | None = None) -> dict[str, str]:
    """Role -> Kafka name for ``destination``: ``topic`` always; for a queue or a topic with a
    group also ``group`` (the consumer group id), ``retry`` (its retry topic) and
    ``dead_letter`` (the topic the core dead-letters to). Names do not depend on
    ``options``. Pure."""
    if destination.kind is DestinationKind.TOPIC and not destination.group:
        return {"topic": kafka_name(destination.name)}
    names = subscription_names(destination)
    dead_letter = kafka_name(dead_letter_name(destination.name, destination.group))
    return {"topic": names.topic, "group": names.group_id, "retry": names.retry_topic, "dead_letter": dead_letter}


class TopicAdmin:
    """Creates topics on demand, once per process and transport.

    Not thread-safe (one event loop). ``ensure`` is idempotent and cheap once a topic is
    known; creation requests go one at a time, so concurrent calls for one topic send one.
    """

    def __init__(self, admin: AIOKafkaAdminClient, *, partitions: int, replication_factor: int) -> None:
        self._admin = admin
        self._partitions = partitions
        self._replication = replication_factor
        self._lock = asyncio.Lock()
        #: Topics known to exist (read it for the fast path; never modify it).
        self.known: set[str] = set()

    async def ensure(self, topics: set[str]) -> None:
        """Make sure every topic in ``topics`` exists. Raises :class:`TopologyError`."""
        if topics <= self.known:
            return
        async with self._lock:
            missing = [t for t in topics if t not in self.known]  # again: others may have made them
            if not missing:
                return
            new = [NewTopic(t, self._partitions, self._replication) for t in missing]
            try:
                response = await self._admin.create_topics(new)
            except kerr.KafkaError as exc:
                raise errors.map(exc, TopologyError, f"cannot create Kafka topics {', '.join(missing)}") from exc
            for topic, code, *message in getattr(response, "topic_errors", []):
                if code not in (0, kerr.TopicAlreadyExistsError.errno):
                    error = kerr.for_code(code)(message[0] if message and message[0] else "")
                    raise errors.map(error, TopologyError, f"cannot create Kafka topic {topic!r}") from error
            self.known.update(missing)
            logger.debug("kafka topics ensured: %s", missing)
