"""Topology: logical names to SQS/SNS names (see the README's table), and idempotent
declaration of topics, queues, queue policies and raw subscriptions. The declarations block;
the connection runs them on its thread pool."""

from __future__ import annotations

import hashlib
import itertools
import json
import threading
from typing import Any

from botocore.exceptions import ClientError

from messagebus import TopologyError
from messagebus.transports import Destination, DestinationKind, dead_letter_name, sanitize_name

from ._codec import PACKED, valid_attribute
from ._errors import error_code, errors, is_missing
from ._options import SqsOptions

__all__ = ["Topology", "filter_policy", "is_topic", "logical_queue", "physical_names", "queue_name", "topic_name"]

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


def logical_dead_letter(physical: str, *, prefix: str = "", fifo: bool = False) -> str | None:
    """The logical dead-letter queue name (``<...>.dlq``) whose :func:`queue_name` under
    ``prefix``/``fifo`` is ``physical``, or ``None``: another queue, or a name cut to fit
    (its hash cannot be inverted). A logical name's only character SQS refuses is ``.``
    (made ``-`` and hashed), so each ``-`` is tried as either; beyond 12 of them (4,096
    candidates) the name is given up. Pure."""
    suffix = _FIFO if fifo else ""
    if not physical.startswith(prefix) or not physical.endswith(suffix):
        return None
    stem, dlq, digest = physical[len(prefix) : len(physical) - len(suffix)].rpartition("-dlq-")
    dashes = [i for i, c in enumerate(stem) if c == "-"]
    if not stem or not dlq or len(digest) != 8 or len(dashes) > 12:
        return None
    for dots in itertools.product("-.", repeat=len(dashes)):
        chars = list(stem)
        for i, c in zip(dashes, dots, strict=True):
            chars[i] = c
        logical = "".join(chars) + ".dlq"
        if queue_name(logical, prefix=prefix, fifo=fifo) == physical:
            return logical
    return None


def is_topic(destination: Destination) -> bool:
    """True when publishing to ``destination`` goes to an SNS topic (a topic, no group)."""
    return destination.kind is DestinationKind.TOPIC and destination.group is None


def logical_queue(destination: Destination) -> str:
    """The logical queue name a destination is consumed from (``topic.group`` or the queue)."""
    topic = destination.kind is DestinationKind.TOPIC
    return f"{destination.name}.{destination.group}" if topic else destination.name


def filter_policy(pairs: tuple[tuple[str, str], ...]) -> str:
    """The SNS filter policy (``MessageAttributes`` scope) of a subscription filter: its
    header equalities, or a message whose headers did not all fit in attributes (packed into
    :data:`PACKED`, which the bus matches itself); ``"{}"`` (none) without a filter or for one
    SNS cannot match (more than 4 headers, or a name or value SQS refuses as an attribute, so
    it is always packed). Never drops a message the filter matches. Pure."""
    if not pairs or len(pairs) > 4 or not all(valid_attribute(n, v) for n, v in pairs):
        return "{}"
    return json.dumps({"$or": [{n: [v] for n, v in pairs}, {PACKED: [{"exists": True}]}]}, sort_keys=True)


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
        self._subscribed: set[tuple[str, str, str]] = set()  # (topic, group, filter policy)

    def queue_url(self, logical: str, *, fresh: bool = False) -> str:
        """Create (if needed) the queue for ``logical`` and return its URL; ``fresh`` declares it
        again even if cached (it was found missing). Raises TopologyError."""
        if fresh:
            self._forget(logical)
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

    def _forget(self, logical: str) -> str | None:
        """Drop the cached URL of queue ``logical`` (returned) and, for a group's queue, its
        subscription, so that the next use declares both again."""
        with self._lock:
            self._subscribed = {s for s in self._subscribed if f"{s[0]}.{s[1]}" != logical}
            return self.queues.pop(logical, None)

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

    def subscription_queue(
        self, topic: str, group: str, *, fresh: bool = False, pairs: tuple[tuple[str, str], ...] = ()
    ) -> tuple[str, str]:
        """Declare the group's queue, allow the topic to send to it, subscribe it with raw
        delivery and the :func:`filter_policy` of ``pairs`` (replacing any other policy;
        none without ``pairs``), ``fresh``: all of it again. Returns ``(queue_url,
        topic_arn)``. Idempotent; raises TopologyError."""
        arn = self.topic_arn(topic, fresh=fresh)
        url = self.queue_url(f"{topic}.{group}", fresh=fresh)
        wanted = filter_policy(pairs)
        if (topic, group, wanted) in self._subscribed:
            return url, arn
        what = f"subscribing the queue of group {group!r} to topic {topic!r}"
        try:
            attrs = self._sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn", "Policy"])["Attributes"]
            queue_arn = str(attrs["QueueArn"])
            policy = _merge_policy(attrs.get("Policy"), queue_arn, arn)
            if policy is not None:
                self._sqs.set_queue_attributes(QueueUrl=url, Attributes={"Policy": policy})
            self._subscribe(arn, queue_arn, wanted)
        except Exception as exc:
            raise errors.map(exc, TopologyError, what) from exc
        with self._lock:
            self._subscribed = {s for s in self._subscribed if s[:2] != (topic, group)} | {(topic, group, wanted)}
        return url, arn

    def _subscribe(self, topic_arn: str, queue_arn: str, policy: str) -> None:
        # "{}" is SNS's "no filter policy": it replaces one a filter set before.
        attributes = {"RawMessageDelivery": "true", "FilterPolicyScope": "MessageAttributes", "FilterPolicy": policy}
        try:
            self._sns.subscribe(
                TopicArn=topic_arn,
                Protocol="sqs",
                Endpoint=queue_arn,
                Attributes=attributes,
                ReturnSubscriptionArn=True,
            )
            return
        except ClientError as exc:
            if error_code(exc) != "InvalidParameter":
                raise
            conflict = exc
        # A subscription exists with other attributes (not raw: every body would come wrapped
        # in an SNS JSON envelope; another filter): set ours instead of failing.
        for page in self._sns.get_paginator("list_subscriptions_by_topic").paginate(TopicArn=topic_arn):
            for sub in page.get("Subscriptions", []):
                if sub.get("Endpoint") == queue_arn and sub.get("Protocol") == "sqs":
                    for name, value in attributes.items():
                        self._sns.set_subscription_attributes(
                            SubscriptionArn=sub["SubscriptionArn"], AttributeName=name, AttributeValue=value
                        )
                    return
        raise conflict

    def delete_queue(self, logical: str) -> None:
        """Delete the queue of ``logical`` with its messages (and forget it, with its
        subscription if it is a group's); a missing queue is no error. Raises TopologyError."""
        url = self._forget(logical)
        name = queue_name(logical, prefix=self._queue_prefix, fifo=self.fifo)
        try:
            url = url or str(self._sqs.get_queue_url(QueueName=name)["QueueUrl"])
            self._sqs.delete_queue(QueueUrl=url)
        except Exception as exc:
            if not is_missing(exc):
                raise errors.map(exc, TopologyError, f"deleting SQS queue {name!r} (of {logical!r})") from exc


def _merge_policy(existing: str | None, queue_arn: str, topic_arn: str) -> str | None:
    """The queue policy with a statement allowing ``topic_arn`` to send, or ``None`` if present."""
    sid = "messagebus-" + hashlib.sha256(topic_arn.encode()).hexdigest()[:16]
    try:
        policy = json.loads(existing or "{}")
    except ValueError:
        policy = {}
    policy = policy if isinstance(policy, dict) else {}
    statements = policy.get("Statement")
    if not isinstance(statements, list):
        statements = [statements] if isinstance(statements, dict) else []
    if any(isinstance(s, dict) and s.get("Sid") == sid for s in statements):
        return None
    principal, condition = {"Service": "sns.amazonaws.com"}, {"ArnEquals": {"aws:SourceArn": topic_arn}}
    statement = {"Effect": "Allow", "Principal": principal, "Action": "sqs:SendMessage", "Resource": queue_arn}
    statements.append({"Sid": sid, **statement, "Condition": condition})
    policy.setdefault("Version", "2012-10-17")
    policy["Statement"] = statements
    return json.dumps(policy)
