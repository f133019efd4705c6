"""Topology: logical names to SQS/SNS names (see the README's table), and idempotent
declaration of topics, queues, queue policies and raw subscriptions. The declarations block;
the connection runs them on its thread pool."""

from __future__ import annotations

import hashlib
import json
import threading
from typing import Any

from botocore.exceptions import ClientError

from messagebus import TopologyError
from messagebus.transports import Destination, DestinationKind, dead_letter_name, sanitize_name

from ._errors import error_code, errors
from ._options import SqsOptions

__all__ = ["RETENTION_SECONDS", "Topology", "is_topic", "logical_queue", "physical_names", "queue_name", "topic_name"]

#: Messages are kept as long as SQS allows (14 days), not the 4-day default.
RETENTION_SECONDS = 1_209_600
_FIFO = ".fifo"


def queue_name(logical: str, *, prefix: str = "", fifo: bool = False) -> str:
    """Physical SQS queue name for a logical queue (or ``topic.group``) name. Pure."""
    return _physical(logical, prefix, fifo, 80)


def topic_name(logical: str, *, prefix: str = "", fifo: bool = False) -> str:
    """Physical SNS topic name for a logical topic name. Pure."""
    return _physical(logical, prefix, fifo, 256)


def _physical(logical: str, prefix: str, fifo: bool, max_length: int) -> str:
    suffix = _FIFO if fifo else ""
    return prefix + sanitize_name(logical, max_length=max_length - len(prefix) - len(suffix)) + suffix


def is_topic(destination: Destination) -> bool:
    """True when publishing to ``destination`` goes to an SNS topic (a topic, no group)."""
    return destination.kind is DestinationKind.TOPIC and destination.group is None


def logical_queue(destination: Destination) -> str:
    """The logical queue name a destination is consumed from (``topic.group`` or the queue)."""
    topic = destination.kind is DestinationKind.TOPIC
    return f"{destination.name}.{destination.group}" if topic else destination.name


def physical_names(destination: Destination, options: SqsOptions | None = None) -> dict[str, str]:
    """Role -> physical AWS name of ``destination`` under ``options`` (default options). A topic
    gives ``topic`` (the SNS topic); a subscription also, and a queue only, ``queue`` (the SQS
    queue it is consumed from) and ``dead_letter`` (the SQS queue its dead letters go to).
    There is no retry queue: a retry is a visibility change. Pure."""
    o = options or SqsOptions()
    names: dict[str, str] = {}
    if destination.kind is DestinationKind.TOPIC:
        names["topic"] = topic_name(destination.name, prefix=o.topic_prefix, fifo=o.fifo)
        if not destination.group:
            return names
    names["queue"] = queue_name(logical_queue(destination), prefix=o.queue_prefix, fifo=o.fifo)
    dead_letter = dead_letter_name(destination.name, destination.group)
    names["dead_letter"] = queue_name(dead_letter, prefix=o.queue_prefix, fifo=o.fifo)
    return names


class Topology:
    """Declares and caches topics, queues and subscriptions. Thread-safe (called from the pool).

    Every declaration is idempotent on AWS, so concurrent first uses of one name are fine;
    the caches (:attr:`queues`: logical name -> URL, :attr:`topics`: -> ARN; read-only for
    others) only save requests.
    """

    def __init__(self, sqs: Any, sns: Any, *, queue_prefix: str, topic_prefix: str, fifo: bool) -> None:
        self._sqs = sqs
        self._sns = sns
        self._queue_prefix = queue_prefix
        self._topic_prefix = topic_prefix
        self.fifo = fifo
        self._lock = threading.Lock()
        self.queues: dict[str, str] = {}
        self.topics: dict[str, str] = {}
        self._subscribed: set[tuple[str, str]] = set()

    def queue_url(self, logical: str, *, fresh: bool = False) -> str:
        """Create (if needed) the queue for ``logical`` and return its URL; ``fresh`` declares it
        again even if cached (it was found missing). Raises TopologyError."""
        if fresh:
            with self._lock:
                self.queues.pop(logical, None)
                self._subscribed = {s for s in self._subscribed if f"{s[0]}.{s[1]}" != logical}
        url = self.queues.get(logical)
        if url is not None:
            return url
        name = queue_name(logical, prefix=self._queue_prefix, fifo=self.fifo)
        attributes = {"MessageRetentionPeriod": str(RETENTION_SECONDS)}
        if self.fifo:
            attributes["FifoQueue"] = "true"
        try:
            try:
                url = str(self._sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"])
            except ClientError as exc:
                # The queue exists with other attributes (made by an operator or an older
                # version): use it as it is rather than fail.
                if error_code(exc) not in ("QueueAlreadyExists", "QueueNameExists"):
                    raise
                url = str(self._sqs.get_queue_url(QueueName=name)["QueueUrl"])
        except Exception as exc:
            raise errors.map(exc, TopologyError, f"declaring SQS queue {name!r} (for {logical!r})") from exc
        with self._lock:
            self.queues[logical] = url
        return url

    def topic_arn(self, logical: str, *, fresh: bool = False) -> str:
        """Create (if needed) the SNS topic for ``logical`` and return its ARN; ``fresh`` declares
        it (and later its subscriptions) again even if cached. Raises TopologyError."""
        if fresh:
            with self._lock:
                self.topics.pop(logical, None)
                self._subscribed = {s for s in self._subscribed if s[0] != logical}
        arn = self.topics.get(logical)
        if arn is not None:
            return arn
        name = topic_name(logical, prefix=self._topic_prefix, fifo=self.fifo)
        attributes = {"FifoTopic": "true", "ContentBasedDeduplication": "false"} if self.fifo else {}
        try:
            arn = str(self._sns.create_topic(Name=name, Attributes=attributes)["TopicArn"])
        except Exception as exc:
            raise errors.map(exc, TopologyError, f"declaring SNS topic {name!r} (for {logical!r})") from exc
        with self._lock:
            self.topics[logical] = arn
        return arn

    def subscription_queue(self, topic: str, group: str, *, fresh: bool = False) -> tuple[str, str]:
        """Declare the group's queue, allow the topic to send to it, subscribe it with raw
        delivery (``fresh``: all of it again). Returns ``(queue_url, topic_arn)``. Idempotent;
        raises TopologyError."""
        arn = self.topic_arn(topic, fresh=fresh)
        url = self.queue_url(f"{topic}.{group}", fresh=fresh)
        if (topic, group) in self._subscribed:
            return url, arn
        what = f"subscribing the queue of group {group!r} to topic {topic!r}"
        try:
            attrs = self._sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn", "Policy"])["Attributes"]
            queue_arn = str(attrs["QueueArn"])
            policy = _merge_policy(attrs.get("Policy"), queue_arn, arn)
            if policy is not None:
                self._sqs.set_queue_attributes(QueueUrl=url, Attributes={"Policy": policy})
            self._subscribe(arn, queue_arn)
        except Exception as exc:
            raise errors.map(exc, TopologyError, what) from exc
        with self._lock:
            self._subscribed.add((topic, group))
        return url, arn

    def _subscribe(self, topic_arn: str, queue_arn: str) -> None:
        try:
            self._sns.subscribe(
                TopicArn=topic_arn,
                Protocol="sqs",
                Endpoint=queue_arn,
                Attributes={"RawMessageDelivery": "true"},
                ReturnSubscriptionArn=True,
            )
            return
        except ClientError as exc:
            if error_code(exc) != "InvalidParameter":
                raise
            conflict = exc
        # A subscription exists with other attributes: make it raw instead of failing, since a
        # non-raw subscription would wrap every body in an SNS JSON envelope.
        paginator = self._sns.get_paginator("list_subscriptions_by_topic")
        for page in paginator.paginate(TopicArn=topic_arn):
            for sub in page.get("Subscriptions", []):
                if sub.get("Endpoint") == queue_arn and sub.get("Protocol") == "sqs":
                    self._sns.set_subscription_attributes(
                        SubscriptionArn=sub["SubscriptionArn"],
                        AttributeName="RawMessageDelivery",
                        AttributeValue="true",
                    )
                    return
        raise conflict


def _merge_policy(existing: str | None, queue_arn: str, topic_arn: str) -> str | None:
    """The queue policy with a statement allowing ``topic_arn`` to send, or ``None`` if present."""
    sid = "messagebus-" + hashlib.sha256(topic_arn.encode()).hexdigest()[:16]
    policy: dict[str, Any]
    try:
        policy = json.loads(existing) if existing else {}
    except ValueError:
        policy = {}
    if not isinstance(policy, dict):
        policy = {}
    statements = policy.get("Statement")
    if not isinstance(statements, list):
        statements = [statements] if isinstance(statements, dict) else []
    if any(isinstance(s, dict) and s.get("Sid") == sid for s in statements):
        return None
    statements.append(
        {
            "Sid": sid,
            "Effect": "Allow",
            "Principal": {"Service": "sns.amazonaws.com"},
            "Action": "sqs:SendMessage",
            "Resource": queue_arn,
            "Condition": {"ArnEquals": {"aws:SourceArn": topic_arn}},
        }
    )
    policy.setdefault("Version", "2012-10-17")
    policy["Statement"] = statements
    return json.dumps(policy)
