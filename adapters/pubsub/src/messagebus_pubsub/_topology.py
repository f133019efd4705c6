"""Logical names -> Pub/Sub resources (see the README's topology table), and idempotent,
cached declarations. Pub/Sub ids are 3-255 characters of ``[A-Za-z0-9-_.~+%]``, start with a
letter and not with ``goog``; other names get a prefix and a hash (:func:`resource_id`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any

from google.api_core import exceptions as gexc
from google.protobuf import duration_pb2
from google.pubsub_v1 import PublisherAsyncClient, SubscriberAsyncClient
from google.pubsub_v1.types import ExpirationPolicy, Subscription, Topic

from messagebus import MessageBusError, TopologyError
from messagebus.transports import (
    Destination,
    DestinationKind,
    Position,
    dead_letter_name,
    log_ignored,
    sanitize_name,
    validate_name,
)

from ._codec import native_filter
from ._errors import errors, transient_retry
from ._options import MAX_RETENTION, PubSubOptions
from ._telemetry import MESSAGING_SYSTEM

__all__ = ["RETRY_SUFFIX", "Names", "Topology", "names_for", "owned_names", "physical_names", "resource_id"]

RETRY_SUFFIX = "~retry"
_ALLOWED = r"A-Za-z0-9._~+%-"
_MAX = 255
# A seek by time goes this much earlier: Pub/Sub's publish time is its own clock, ``ce-time``
# the producer's (the bus skips what is stamped before the start, so earlier is harmless).
_CLOCK_SKEW = timedelta(seconds=10)


def resource_id(name: str) -> str:
    """The Pub/Sub topic/subscription id for a logical name. Pure, deterministic.

    Names that are legal Pub/Sub ids are kept as they are. Others (too short, not starting
    with a letter, starting with ``goog``, too long) become ``mb-<name>-<hash>`` (cut to fit)
    so two logical names never share one id.
    """
    out = sanitize_name(name, max_length=_MAX, allowed=_ALLOWED)
    if len(out) >= 3 and out[0].isascii() and out[0].isalpha() and not out.lower().startswith("goog"):
        return out
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"mb-{out[: _MAX - 12]}-{digest}"


class Names:
    """Resource paths of one destination: its topic, and (for consumers) its subscriptions,
    the Pub/Sub filter of its subscription ('' for none), whether that one has message
    ordering (``None``: the ``ordering`` option) and whether the topic keeps history (a
    logical topic's does with ``topic_retention``; a queue's and a retry topic's never)."""

    __slots__ = ("filter", "ordered", "retained", "retry_subscription", "retry_topic", "subscription", "topic")

    def __init__(
        self,
        project: str,
        topic: str,
        subscription: str | None,
        filter: str = "",
        ordered: bool | None = None,
        retained: bool = False,
    ) -> None:
        self.filter = filter
        self.ordered = ordered
        self.retained = retained
        self.topic = f"projects/{project}/topics/{resource_id(topic)}"
        self.subscription: str | None = None
        self.retry_topic: str | None = None
        self.retry_subscription: str | None = None
        if subscription is not None:
            self.subscription = f"projects/{project}/subscriptions/{resource_id(subscription)}"
            retry = resource_id(subscription + RETRY_SUFFIX)
            self.retry_topic = f"projects/{project}/topics/{retry}"
            self.retry_subscription = f"projects/{project}/subscriptions/{retry}"


@functools.lru_cache(maxsize=4096)
def names_for(project: str, destination: Destination) -> Names:
    """Paths for ``destination``: a queue has its own subscription; a topic with a group has
    ``topic.group``, with the native filter of ``destination.filter`` (a queue's filter is
    matched by the bus only: its subscription is made by its first send, before any
    consumer says what it wants); a topic without a group (publishing) has none. A
    dead-letter queue (``*.dlq``) is unordered: the dead-letter tools hold a message
    unsettled while they look at the next, which message ordering would withhold. Raises
    :class:`InvalidDestination` for an illegal name (cached once valid)."""
    validate_name(destination.name, destination.kind.value)
    if destination.group is not None:
        validate_name(destination.group, "group")
    if destination.kind is DestinationKind.QUEUE:
        return Names(
            project, destination.name, destination.name, ordered=False if destination.name.endswith(".dlq") else None
        )
    if destination.group:
        group = f"{destination.name}.{destination.group}"
        return Names(project, destination.name, group, native_filter(destination.filter), retained=True)
    return Names(project, destination.name, None, retained=True)


def owned_names(project: str, source: Destination) -> tuple[Names, Names]:
    """Paths of a queue or a topic's group and of its dead-letter queue. Raises
    :class:`InvalidDestination`."""
    names = names_for(project, source)
    dead_letter = dead_letter_name(source.name, source.group)
    return names, Names(project, dead_letter, dead_letter)


def physical_names(destination: Destination, options: PubSubOptions | None = None) -> dict[str, str]:
    """Role -> Pub/Sub resource id for ``destination``: ``topic``, and for a queue or a
    topic's group also ``subscription``, ``retry_topic``/``retry_subscription`` (one id) and
    ``dead_letter`` (the topic and subscription of its dead-letter queue). Pure; ``options``
    change nothing on Pub/Sub. Raises :class:`InvalidDestination` for an illegal name."""
    names = names_for("_", destination)
    roles = {
        "topic": names.topic,
        "subscription": names.subscription,
        "retry_topic": names.retry_topic,
        "retry_subscription": names.retry_subscription,
    }
    out = {role: path.rsplit("/", 1)[-1] for role, path in roles.items() if path}
    if names.subscription:
        out["dead_letter"] = resource_id(dead_letter_name(destination.name, destination.group))
    return out


class Topology:
    """Creates topics and subscriptions once per transport, deduplicating concurrent calls.

    Used from the transport's event loop only. Creation is idempotent (an existing resource is
    accepted after checking it is compatible) so several processes may declare the same names.
    """

    def __init__(
        self,
        publisher: PublisherAsyncClient,
        subscriber: SubscriberAsyncClient,
        options: PubSubOptions,
        where: str,
        emulated: bool = False,
    ) -> None:
        self._publisher = publisher
        self._subscriber = subscriber
        self._options = options
        self._where = where
        self._emulated = emulated
        self._done: set[str] = set()
        self._sub_topics: dict[str, tuple[str, str]] = {}  # subscription -> (topic, filter)
        self._pending: dict[str, asyncio.Task[None]] = {}

    def forget_all(self) -> None:
        """Drop the whole cache (the broker lost its state, e.g. an emulator restarted)."""
        self._done.clear()
        self._sub_topics.clear()

    def forget(self, path: str) -> None:
        """Drop ``path`` from the cache (it was deleted behind our back); the next use
        declares it again."""
        self._done.discard(path)
        self._sub_topics.pop(path, None)

    async def ensure_topic(self, path: str, retained: bool = False) -> None:
        """Create topic ``path`` unless it exists; a ``retained`` one keeps its messages for
        ``topic_retention`` (an existing one's shorter retention is raised to it, never lowered:
        another service may want more). Raises TopologyError / ConnectError."""
        retention = self._options.topic_retention if retained else None
        await self._once(path, lambda: self._create_topic(path, retention))

    async def ensure_subscription(
        self,
        path: str,
        topic: str,
        *,
        ordered: bool | None = None,
        filter: str = "",
        retained: bool = False,
        source: Destination | None = None,
    ) -> None:
        """Create subscription ``path`` on ``topic`` with Pub/Sub filter ``filter`` (declaring
        the topic first) unless it exists; an existing one must be attached to ``topic`` and
        have that filter (Pub/Sub cannot change it). One this call creates is sought to
        ``source.start_from``; for one that exists that is ignored and logged. Raises TopologyError."""
        known = self._sub_topics.get(path)
        if known is not None and known != (topic, filter):
            raise _clash(path, known[0], topic) if known[0] != topic else _refilter(path, known[1], filter)
        await self.ensure_topic(topic, retained)
        want_order = self._options.ordering if ordered is None else ordered
        if path in self._done and source is not None:
            log_ignored(source, MESSAGING_SYSTEM)
        retains = retained and self._options.topic_retention is not None
        await self._once(path, lambda: self._create_subscription(path, topic, want_order, filter, source, retains))
        self._sub_topics[path] = (topic, filter)

    async def ensure_consumer(self, names: Names, source: Destination | None = None) -> None:
        """Declare everything a consumer reads: its subscription (sought to
        ``source.start_from`` if this creates it) and its retry topic/subscription."""
        assert names.subscription is not None and names.retry_topic and names.retry_subscription
        await asyncio.gather(
            self.ensure_subscription(
                names.subscription,
                names.topic,
                ordered=names.ordered,
                filter=names.filter,
                retained=names.retained,
                source=source,
            ),
            # Retries are re-published out of order anyway; an unordered subscription keeps a
            # long-delayed retry from holding back the next retry with the same key.
            self.ensure_subscription(names.retry_subscription, names.retry_topic, ordered=False),
        )

    async def _once(self, path: str, create: Callable[[], Coroutine[Any, Any, None]]) -> None:
        # Concurrent declarations of one path share one creation; a failed one is not cached.
        if path in self._done:
            return
        task = self._pending.get(path)
        if task is None:
            task = self._pending[path] = asyncio.ensure_future(create())
            task.add_done_callback(lambda t: self._created(path, t))
        await asyncio.shield(task)

    def _created(self, path: str, task: asyncio.Task[None]) -> None:
        del self._pending[path]
        if not task.cancelled() and task.exception() is None:
            self._done.add(path)

    async def delete(self, *names: Names, shared: str | None = None) -> None:
        """Delete the subscriptions, then the topics of ``names`` (deleting a topic leaves
        its subscriptions behind) except topic ``shared`` (a group's topic, which other groups
        read); one already gone is fine. Raises TopologyError."""
        subscriptions = [p for n in names for p in (n.subscription, n.retry_subscription) if p]
        topics = [p for n in names for p in (n.topic, n.retry_topic) if p and p != shared]
        for field, fn, paths in (
            ("subscription", self._subscriber.delete_subscription, subscriptions),
            ("topic", self._publisher.delete_topic, topics),
        ):
            await asyncio.gather(*(self._delete(field, fn, path) for path in paths))

    async def _delete(self, field: str, fn: Callable[..., Awaitable[Any]], path: str) -> None:
        with contextlib.suppress(gexc.NotFound):
            await self.call(f"delete {field} {path}", fn, {field: path}, gexc.NotFound)
        self.forget(path)

    async def call(
        self, what: str, fn: Callable[..., Awaitable[Any]], request: Any, keep: type[Exception] = gexc.AlreadyExists
    ) -> Any:
        """``fn(request)`` with the transient retry, for up to ``connect_timeout``. Raises
        ``keep`` as it is (the caller handles it), anything else as :class:`TopologyError` /
        :class:`ConnectError` saying it could not ``what``."""
        try:
            timeout = self._options.connect_timeout
            return await fn(request=request, retry=transient_retry(timeout), timeout=timeout)
        except keep:
            raise
        except Exception as exc:
            raise errors.map(exc, TopologyError, f"cannot {what} at {self._where}") from exc

    async def _create_topic(self, path: str, retention: int | None) -> None:
        kept = {"message_retention_duration": duration_pb2.Duration(seconds=retention)} if retention else {}
        try:
            await self.call(f"create topic {path}", self._publisher.create_topic, Topic(name=path, **kept))
            return
        except gexc.AlreadyExists:
            if not retention:
                return
        existing = await self.call(f"read topic {path}", self._publisher.get_topic, {"topic": path})
        if existing.message_retention_duration.total_seconds() < retention:
            request = {"topic": Topic(name=path, **kept), "update_mask": {"paths": ["message_retention_duration"]}}
            await self.call(f"set the retention of topic {path}", self._publisher.update_topic, request)

    def _start(self, start: Position, created: datetime, retains: bool, ordered: bool) -> datetime | None:
        # Where a subscription just created must be sought to, if anywhere.
        if start == "earliest":
            return created - timedelta(seconds=MAX_RETENTION)  # Pub/Sub's longest: all it keeps
        if start is not None:
            return start - _CLOCK_SKEW
        # The emulator (not Pub/Sub) hands a new subscription its topic's retained messages; it
        # cannot seek an ordered one (501), so that one gets them (the README says so).
        return created if self._emulated and retains and not ordered else None

    async def _seek(self, path: str, moment: datetime) -> None:
        try:
            what = f"seek subscription {path} to {moment.isoformat()}"
            await self.call(what, self._subscriber.seek, {"subscription": path, "time": moment})
        except MessageBusError:
            # Kept, it would start at the latest and the next subscribe would ignore start_from.
            with contextlib.suppress(MessageBusError):
                await self._delete("subscription", self._subscriber.delete_subscription, path)
            raise

    async def _create_subscription(
        self, path: str, topic: str, ordered: bool, filter: str, source: Destination | None, retains: bool
    ) -> None:
        created = datetime.now(UTC)
        sub = Subscription(
            name=path,
            topic=topic,
            filter=filter,
            ack_deadline_seconds=self._options.ack_deadline,
            enable_message_ordering=ordered,
            # Durable like a queue: never expire for inactivity (Pub/Sub's default is 31 days).
            expiration_policy=ExpirationPolicy(),
            message_retention_duration=duration_pb2.Duration(seconds=7 * 24 * 3600),
        )
        try:
            await self.call(f"create subscription {path}", self._subscriber.create_subscription, sub)
        except gexc.AlreadyExists:
            if source is not None:
                log_ignored(source, MESSAGING_SYSTEM)
        else:
            moment = self._start(source.start_from if source is not None else None, created, retains, ordered)
            if moment is not None:
                await self._seek(path, moment)
            return
        existing = await self.call(
            f"read subscription {path}", self._subscriber.get_subscription, {"subscription": path}
        )
        if existing.topic != topic:
            raise _clash(path, existing.topic, topic)
        if ordered and not existing.enable_message_ordering:
            raise TopologyError(
                f"subscription {path} exists without message ordering, but ordering=true; Pub/Sub cannot "
                "change this on an existing subscription: delete it, or use ordering=false"
            )
        if existing.filter != filter:
            raise _refilter(path, existing.filter, filter)


def _refilter(path: str, existing: str, wanted: str) -> TopologyError:
    return TopologyError(
        f"subscription {path} exists with filter {existing!r}, but this subscription wants {wanted!r}; Pub/Sub "
        "cannot change a subscription's filter: subscribe with a new group name, or delete the subscription "
        "(and the messages waiting in it) and start again"
    )


def _clash(path: str, existing: str, wanted: str) -> TopologyError:
    return TopologyError(
        f"subscription {path} already exists on topic {existing!r}, not on {wanted!r}: a queue and a topic's "
        "group map to the same Pub/Sub subscription name (queue 'a.b' and topic 'a' group 'b'); rename one of them"
    )
