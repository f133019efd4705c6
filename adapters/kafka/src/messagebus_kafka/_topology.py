"""Logical destinations -> Kafka topics and consumer groups; topic creation on demand.

Mapping (all names pass :func:`kafka_name`):

- topic ``T`` and queue ``Q``: Kafka topic ``T`` / ``Q``
- subscription of group ``G`` to ``T``: consumer group ``T.G``; retries go to ``T.G.retry``
- queue ``Q``: the fixed consumer group ``messagebus.queue.Q``; retries go to ``Q.retry``
- dead letters: the queues ``T.G.dlq`` / ``Q.dlq`` (named by the core), i.e. Kafka topics
- pattern ``P`` (``orders.*``, ``orders.#``) of group ``G``: a regex subscription over topic
  names (:func:`pattern_regex`) in the group ``P'.G``, where ``P'`` spells ``*`` and ``#`` as
  ``_star_`` and ``_hash_``; retries go to ``P'.G.retry``, dead letters to ``P'.G.dlq``
- a request's reply queue (``<service>.replies.<12 hex>``, the core's ``is_reply_queue``): a queue
  read by its one owner, which assigns itself every partition (no group join)
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass

from aiokafka import errors as kerr
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.protocol.admin import DeleteGroupsRequest

from messagebus import TopologyError
from messagebus.transports import REPLY_QUEUE_PATTERN, Destination, DestinationKind, sanitize_name

from ._errors import errors
from ._options import KafkaOptions

__all__ = ["SubscriptionNames", "TopicAdmin", "kafka_name", "pattern_regex", "physical_names"]

logger = logging.getLogger("messagebus.kafka")

#: Kafka's limit on topic names.
MAX_TOPIC_LENGTH = 249
_ALLOWED = r"A-Za-z0-9._-"
QUEUE_GROUP_PREFIX = "messagebus.queue."
#: Topics a pattern never matches: retry topics, dead-letter queues, reply queues.
_INTERNAL = rf"(?!.*\.(?:retry|dlq)$)(?!{REPLY_QUEUE_PATTERN}$)(?!\.)"


def pattern_regex(pattern: str, retry_topic: str) -> str:
    """The regex of Kafka topic names a subscription to ``pattern`` reads: the topics matching
    it (``*`` one dot-separated segment, ``#`` any number, as
    :func:`~messagebus.transports.matches_pattern`) except retry topics, dead-letter queues
    and reply queues (names ending in ``.retry``, ``.dlq``, ``.replies.<12 hex>``), plus the
    group's own ``retry_topic``. Pure."""
    # Each segment after the first needs a dot before it, unless every segment before it
    # matched nothing (``#``): ``(?:^|\.)`` is that dot, or the start of the name.
    pieces = {"*": r"(?:^|\.)[^.]+", "#": r"(?:(?:^|\.)[^.]+)*"}
    body = "".join(pieces.get(s) or r"(?:^|\.)" + re.escape(s) for s in pattern.split("."))
    return f"(?:{re.escape(retry_topic)}|{_INTERNAL}{body})$"


def kafka_name(logical: str) -> str:
    """A legal Kafka topic / group name for ``logical`` (249 chars of ``[a-zA-Z0-9._-]``).

    Names that had to change or be cut get a hash suffix, so distinct logical names stay
    distinct. ``.`` and ``..`` (illegal in Kafka) are mapped too. Pure.
    """
    name = logical + "_" if logical in (".", "..") else logical
    return sanitize_name(name, max_length=MAX_TOPIC_LENGTH, allowed=_ALLOWED, replacement="_")


@dataclass(frozen=True, slots=True)
class SubscriptionNames:
    """Physical names used by one subscription (``pattern``: the topic regex of a pattern
    subscription, whose ``topic`` is then its group's base name)."""

    topic: str
    group_id: str
    retry_topic: str
    pattern: str | None = None


def subscription_names(source: Destination) -> SubscriptionNames:
    """The Kafka topic, consumer group and retry topic of a subscription or queue."""
    if source.kind is DestinationKind.QUEUE or not source.group:
        base = source.name
        return SubscriptionNames(kafka_name(base), kafka_name(QUEUE_GROUP_PREFIX + base), kafka_name(base + ".retry"))
    if source.is_pattern:
        base = source.dead_letter_queue.removesuffix(".dlq")
        retry = kafka_name(base + ".retry")
        return SubscriptionNames(kafka_name(base), kafka_name(base), retry, pattern_regex(source.name, retry))
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
    roles = {
        "group": names.group_id,
        "retry": names.retry_topic,
        "dead_letter": kafka_name(destination.dead_letter_queue),
    }
    return {"pattern" if names.pattern else "topic": names.pattern or names.topic, **roles}


class TopicAdmin:
    """Creates topics on demand, once per process and transport.

    Not thread-safe (one event loop). ``ensure`` is idempotent and cheap once a topic is
    known; creation requests go one at a time, so concurrent calls for one topic send one.
    """

    def __init__(self, admin: AIOKafkaAdminClient, *, partitions: int, replication_factor: int) -> None:
        self.admin = admin
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
                response = await self.admin.create_topics(new)
            except kerr.KafkaError as exc:
                raise errors.map(exc, TopologyError, f"cannot create Kafka topics {', '.join(missing)}") from exc
            for topic, code, *message in getattr(response, "topic_errors", []):
                if code not in (0, kerr.TopicAlreadyExistsError.errno):
                    error = kerr.for_code(code)(message[0] if message and message[0] else "")
                    raise errors.map(error, TopologyError, f"cannot create Kafka topic {topic!r}") from error
            self.known.update(missing)
            logger.debug("kafka topics ensured: %s", missing)

    async def delete(self, topics: list[str], group: str) -> None:
        """Delete ``topics`` (missing ones are fine), then consumer group ``group`` where the
        broker allows (a refusal is logged). Raises :class:`TopologyError`."""
        self.known.difference_update(topics)
        try:
            response = await self.admin.delete_topics(topics)
        except kerr.KafkaError as exc:
            raise errors.map(exc, TopologyError, f"cannot delete Kafka topics {', '.join(topics)}") from exc
        for topic, code, *_ in response.topic_error_codes:
            if code not in (0, kerr.UnknownTopicOrPartitionError.errno):
                error = kerr.for_code(code)()
                raise errors.map(error, TopologyError, f"cannot delete Kafka topic {topic!r}") from error
        try:  # aiokafka's admin has no DeleteGroups call: its request, to the group's coordinator
            node = await self.admin.find_coordinator(group)
            answer = await self.admin._send_request(DeleteGroupsRequest([group]), node)
            codes = [code for _, code in answer.results if code not in (0, 69)]  # 69: GROUP_ID_NOT_FOUND
            if codes:
                raise kerr.for_code(codes[0])()
        except (kerr.KafkaError, OSError) as exc:
            logger.info("Kafka consumer group %s not deleted: %r", group, exc)
