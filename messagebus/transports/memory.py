"""MemoryTransport (``memory://`` and ``memory://NAME``): a real in-process broker.

Every bus built from the same ``memory://NAME`` URL in one process shares one
:class:`MemoryBroker`, which outlives the buses like a real broker outlives its clients and
is not tied to an event loop. It shows the semantics of DESIGN section 3: fan-out per
group, competing consumers, queues that keep messages until consumed, at-least-once with
redelivery of anything not acked, delayed redelivery on the broker's clock, per-key order
and a maximum message size. The conformance kit holds it to the same tests as the brokers.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from threading import get_ident
from typing import Any, ClassVar

from pydantic import Field

from .._clock import Clock, SystemClock
from .._config import TransportOptions, TransportURL, parse_options
from .._consumer import ConsumerBase, check_concurrency
from .._delivery import Delivery
from .._destination import Destination, DestinationKind, dead_letter_name, matches_pattern
from .._errors import ConnectError, InvalidDestination, LifecycleError, MessageTooLarge
from .._history import log_ignored
from .._message import OutgoingMessage
from .._transport import Capabilities, Consumer, DeliveryHandler

__all__ = ["MemoryBroker", "MemoryOptions", "MemoryTransport"]

DEFAULT_MAX_MESSAGE_SIZE = 1024 * 1024
DEFAULT_HISTORY = 1000


class MemoryOptions(TransportOptions):
    """Query options of ``memory://NAME?...``.

    - ``max_message_size``: largest body in bytes (default 1 MiB, like a modest broker).
    - ``history``: messages the broker retains per topic for groups created with
      ``start_from`` (default 1,000; 0 keeps none). The oldest go first.
    - ``history_age``: seconds a retained message is kept (default: no limit).

    The history options apply to the broker behind the URL's name (the last bus built sets them).
    """

    max_message_size: int = Field(DEFAULT_MAX_MESSAGE_SIZE, ge=1)
    history: int = Field(DEFAULT_HISTORY, ge=0)
    history_age: float | None = Field(None, gt=0)


@dataclass(slots=True)
class _Stored:
    body: bytes
    headers: Mapping[str, str]
    key: str | None
    attempt: int = 1
    topic: str | None = None  # set on a pattern group's copy: the topic it was published to


class _MemQueue:
    """A queue: a work queue, or one subscription group's queue of a topic.

    Per-key order across competing consumers: while messages of a key are in flight, more
    of that key go only to the consumer holding them (its worker pool keeps their order),
    and wait while it has no credit or is leaving; the next consumer gets the key once the
    holder settled or handed back everything of it.
    """

    __slots__ = ("broker", "consumers", "delayed", "keys", "name", "ready", "rr", "unacked")

    def __init__(self, broker: MemoryBroker, name: str) -> None:
        self.broker = broker
        self.name = name
        self.ready: deque[_Stored] = deque()
        self.delayed: list[tuple[float, int, _Stored]] = []
        self.consumers: list[_MemConsumer] = []
        self.unacked = 0
        self.rr = 0
        #: key -> [consumer holding its in-flight messages, how many]
        self.keys: dict[str, list[Any]] = {}

    def put(self, stored: _Stored) -> None:
        # Called with the broker lock held.
        if not self.ready and self.consumers and self._offer(stored):
            return
        self.ready.append(stored)

    def _offer(self, stored: _Stored) -> bool:
        key = stored.key
        if key is not None:
            held = self.keys.get(key)
            if held is not None:
                holder: _MemConsumer = held[0]
                if holder.credit > 0 and holder in self.consumers:
                    holder.dispatch(stored)
                    return True
                return False
        consumers = self.consumers
        n = len(consumers)
        if n == 1:
            consumer = consumers[0]
            if consumer.credit > 0:
                consumer.dispatch(stored)
                return True
            return False
        for i in range(n):
            consumer = consumers[(self.rr + i) % n]
            if consumer.credit > 0:
                self.rr = (self.rr + i + 1) % n
                consumer.dispatch(stored)
                return True
        return False

    def pump(self) -> None:
        """Hand ready messages to consumers with credit. Broker lock held."""
        ready = self.ready
        consumers = self.consumers
        if not ready or not consumers:
            return
        keys = self.keys
        if len(consumers) == 1 and (not keys or all(held[0] is consumers[0] for held in keys.values())):
            consumer = consumers[0]
            while ready and consumer.credit > 0:
                consumer.dispatch(ready.popleft())
            return
        # A message whose key is held by a busy or leaving consumer waits; others pass it.
        i = 0
        while i < len(ready) and any(c.credit > 0 for c in consumers):
            if self._offer(ready[i]):
                del ready[i]
            else:
                i += 1

    def hold_key(self, key: str, consumer: _MemConsumer) -> None:
        held = self.keys.get(key)
        if held is None:
            self.keys[key] = [consumer, 1]
        else:
            held[1] += 1

    def free_key(self, key: str) -> None:
        held = self.keys.get(key)
        if held is not None:
            held[1] -= 1
            if held[1] <= 0:
                del self.keys[key]


class _MemConsumer(ConsumerBase):
    """One subscriber of a queue, with ``credit`` = how many more messages it may hold.

    Its deliveries' ``native`` is the broker's stored message. Broker primitives: an ack
    forgets the message, a redelivery stores a copy with ``attempt + 1`` on the broker
    clock, a hand-back puts messages back at the head of the queue with ``attempt + 1``.
    """

    def __init__(self, queue: _MemQueue, handler: DeliveryHandler, concurrency: int, ordered: bool) -> None:
        super().__init__(handler, concurrency, name=queue.name, ordered=ordered)
        self.queue = queue
        self.credit = concurrency
        self.loop = asyncio.get_running_loop()
        self.thread = get_ident()

    def describe(self) -> str:
        """The queue, for messages."""
        return f"memory queue {self.queue.name!r}"

    def dispatch(self, stored: _Stored) -> None:
        # Broker lock held: account now, hand over on the consumer's own loop.
        self.credit -= 1
        self.queue.unacked += 1
        if stored.key is not None:
            self.queue.hold_key(stored.key, self)
        delivery = Delivery(self, stored, stored.body, stored.headers, stored.key, stored.attempt, topic=stored.topic)
        # Same thread as the consumer's loop: hand over directly; else through its loop.
        if get_ident() == self.thread:
            self.pool.submit_nowait(delivery)
        else:
            self.loop.call_soon_threadsafe(self.pool.submit_nowait, delivery)

    def settle_ack(self, delivery: Delivery) -> None:
        """Forget the message."""
        self._returned_one(delivery.key)

    def settle_redeliver(self, delivery: Delivery, delay: float, headers: Mapping[str, str]) -> None:
        """Store a copy with ``attempt + 1`` and ``headers`` added, due after ``delay`` seconds."""
        old: _Stored = delivery.native
        again = _Stored(
            old.body, {**old.headers, **headers} if headers else old.headers, old.key, old.attempt + 1, old.topic
        )
        queue = self.queue
        queue.broker.schedule(queue, again, delay)
        self._returned_one(delivery.key)

    def release(self, deliveries: Sequence[Delivery]) -> None:
        """Put the messages back at the head of the queue, in order, as redeliveries."""
        queue = self.queue
        with queue.broker.lock:
            for d in reversed(deliveries):
                s: _Stored = d.native
                queue.ready.appendleft(_Stored(s.body, s.headers, s.key, s.attempt + 1, s.topic))
            self._returned(deliveries)

    def _returned_one(self, key: str | None) -> None:
        # The hot path of every ack: one message back, no loop.
        queue = self.queue
        with queue.broker.lock:
            if key is not None:
                queue.free_key(key)
            self.credit += 1
            queue.unacked -= 1
            queue.pump()

    def _returned(self, deliveries: Sequence[Delivery]) -> None:
        queue = self.queue
        with queue.broker.lock:
            for delivery in deliveries:
                if delivery.key is not None:
                    queue.free_key(delivery.key)
            n = len(deliveries)
            self.credit += n
            queue.unacked -= n
            queue.pump()

    async def stop_fetching(self) -> None:
        """Detach from the queue: it hands this consumer nothing more."""
        with self.queue.broker.lock:
            if self in self.queue.consumers:
                self.queue.consumers.remove(self)


class MemoryBroker:
    """An in-process broker. Thread-safe; shared by name across buses, loops and threads.

    ``MemoryBroker.named("x")`` returns the broker behind ``memory://x`` (``""`` is the
    default broker of ``memory://``). Use :meth:`reset` between tests and :meth:`wait_idle`
    to wait until every message has been handled.
    """

    _registry: ClassVar[dict[str, MemoryBroker]] = {}
    _registry_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, name: str = "", *, clock: Clock | None = None) -> None:
        self.name = name
        self.clock: Clock = clock or SystemClock()
        self.lock = threading.RLock()
        self._topics: dict[str, dict[str, _MemQueue]] = {}
        #: pattern subscriptions: pattern -> group -> queue (a message to each matching topic)
        self._patterns: dict[str, dict[str, _MemQueue]] = {}
        self._queues: dict[str, _MemQueue] = {}
        self._delayed: list[tuple[float, int, _MemQueue, _Stored]] = []
        self._seq = itertools.count()
        #: per topic: (sequence, wall-clock seconds, broker-clock seconds, message), oldest first
        self._history: dict[str, deque[tuple[int, float, float, _Stored]]] = {}
        self.history_size = DEFAULT_HISTORY
        self.history_age: float | None = None

    @classmethod
    def named(cls, name: str = "", *, clock: Clock | None = None) -> MemoryBroker:
        """The process-wide broker called ``name``, created on first use.

        ``clock`` applies when the broker is created, or replaces the clock of an idle one.
        """
        with cls._registry_lock:
            broker = cls._registry.get(name)
            if broker is None:
                broker = cls._registry[name] = cls(name, clock=clock)
            elif clock is not None:
                broker.clock = clock
            return broker

    # -- producing -------------------------------------------------------------------------

    def publish(self, messages: Sequence[OutgoingMessage]) -> None:
        """Store messages: a topic copies each to every group; a queue keeps it until taken."""
        with self.lock:
            self._release_due()
            last: Destination | None = None
            queues: list[_MemQueue] = []
            matching: list[_MemQueue] = []
            for message in messages:
                dest = message.destination
                if dest is not last:  # a batch goes to one destination: look it up once
                    last = dest
                    if dest.kind is DestinationKind.TOPIC:
                        queues = list(self._topics.get(dest.name, {}).values())
                        matching = self._matching(dest.name) if self._patterns else []
                    else:
                        queues, matching = [self._queue(dest.name)], []
                stored = _Stored(message.body, message.headers, message.key)
                if dest.kind is DestinationKind.TOPIC and self.history_size:
                    self._retain(dest.name, stored)
                for queue in queues:
                    queue.put(stored)
                if matching:
                    copy = _Stored(message.body, message.headers, message.key, topic=dest.name)
                    for queue in matching:
                        queue.put(copy)

    def _retain(self, topic: str, stored: _Stored) -> None:
        log = self._history.get(topic)
        if log is None:
            log = self._history[topic] = deque(maxlen=self.history_size)
        log.append((next(self._seq), time.time(), self.clock.now(), stored))

    def retained(self, source: Destination) -> list[_Stored]:
        """The messages a group created at ``source.start_from`` starts with, oldest first:
        what the topic (or each topic a pattern matches) retains, from the start time on."""
        with self.lock:
            oldest = self.clock.now() - self.history_age if self.history_age is not None else None
            since = source.start_from.timestamp() if isinstance(source.start_from, datetime) else None
            picked: list[tuple[int, _Stored]] = []
            for topic, log in self._history.items():
                if not (matches_pattern(source.name, topic) if source.is_pattern else topic == source.name):
                    continue
                while log and oldest is not None and log[0][2] < oldest:
                    log.popleft()
                for seq, wall, _, stored in log:
                    if since is None or wall >= since:
                        copy = (
                            _Stored(stored.body, stored.headers, stored.key, topic=topic)
                            if source.is_pattern
                            else stored
                        )
                        picked.append((seq, copy))
            return [stored for _, stored in sorted(picked, key=lambda pair: pair[0])]

    def set_history(self, size: int, age: float | None) -> None:
        """Retain up to ``size`` messages per topic (0: none), each for ``age`` seconds of the
        broker clock (``None``: no limit). Thread-safe."""
        with self.lock:
            self.history_size, self.history_age = size, age
            for topic, log in list(self._history.items()):
                self._history[topic] = deque(log, maxlen=size) if size else deque(maxlen=0)

    def _matching(self, topic: str) -> list[_MemQueue]:
        return [
            queue
            for pattern, groups in self._patterns.items()
            if matches_pattern(pattern, topic)
            for queue in groups.values()
        ]

    def schedule(self, queue: _MemQueue, stored: _Stored, delay: float) -> None:
        """Put ``stored`` back on ``queue`` after ``delay`` seconds of the broker clock."""
        with self.lock:
            if delay <= 0:
                queue.put(stored)
                return
            heapq.heappush(self._delayed, (self.clock.now() + delay, next(self._seq), queue, stored))
        self.clock.call_later(delay, self.release_due)

    def release_due(self) -> None:
        """Move every delayed message that is due back to its queue. Thread-safe."""
        with self.lock:
            self._release_due()

    def _release_due(self) -> None:
        delayed = self._delayed
        if not delayed:
            return
        now = self.clock.now()
        while delayed and delayed[0][0] <= now:
            _, _, queue, stored = heapq.heappop(delayed)
            queue.put(stored)

    # -- topology --------------------------------------------------------------------------

    def _queue(self, name: str) -> _MemQueue:
        queue = self._queues.get(name)
        if queue is None:
            queue = self._queues[name] = _MemQueue(self, name)
        return queue

    def declare(self, source: Destination) -> _MemQueue:
        """The queue behind ``source``, created if needed: a group starts empty, or with the
        retained messages from its ``start_from`` (copied under the lock, so no message
        published meanwhile is missed or doubled); an existing group ignores ``start_from``."""
        with self.lock:
            if source.kind is DestinationKind.QUEUE:
                return self._queue(source.name)
            groups = (self._patterns if source.is_pattern else self._topics).setdefault(source.name, {})
            group = source.group or ""
            queue = groups.get(group)
            if queue is not None:
                log_ignored(source, "memory")
                return queue
            queue = groups[group] = _MemQueue(self, f"{source.name}.{group}")
            if source.start_from is not None:
                for stored in self.retained(source):
                    queue.put(stored)
            return queue

    def attach(self, queue: _MemQueue, consumer: _MemConsumer) -> None:
        """Add a consumer and hand it what is waiting."""
        with self.lock:
            self._release_due()
            queue.consumers.append(consumer)
            queue.pump()

    # -- inspection for tests ----------------------------------------------------------------

    def pending(self, queue: str, group: str | None = None) -> int:
        """Messages waiting (ready or delayed, not in flight) in a queue or a topic's group."""
        with self.lock:
            topics = self._patterns if "*" in queue or "#" in queue else self._topics
            q = topics.get(queue, {}).get(group or "") if group is not None else self._queues.get(queue)
            if q is None:
                return 0
            return len(q.ready) + sum(1 for d in self._delayed if d[2] is q)

    def is_idle(self, *, include_delayed: bool = True) -> bool:
        """True when no message is in flight, none waits for a live consumer and (with
        ``include_delayed`` and a real clock) no redelivery is scheduled."""
        with self.lock:
            self._release_due()
            for queue in self._all_queues():
                if queue.unacked or (queue.ready and queue.consumers):
                    return False
            if include_delayed and isinstance(self.clock, SystemClock):
                return not any(q.consumers for _, _, q, _ in self._delayed)
            return True

    async def wait_idle(self, timeout: float = 10.0) -> None:
        """Wait until :meth:`is_idle` holds (checked every millisecond), or raise
        :class:`TimeoutError` after ``timeout`` seconds saying what is still busy."""
        deadline = time.monotonic() + timeout
        while not self.is_idle():
            if time.monotonic() > deadline:
                raise TimeoutError(f"memory broker {self.name!r} still busy after {timeout}s: {self._busy()}")
            await asyncio.sleep(0.001)

    def _busy(self) -> str:
        with self.lock:
            parts = [
                f"{q.name}: {q.unacked} in flight, {len(q.ready)} ready"
                for q in self._all_queues()
                if q.unacked or (q.ready and q.consumers)
            ]
            if self._delayed:
                parts.append(f"{len(self._delayed)} delayed")
            return "; ".join(parts) or "idle"

    def _all_queues(self) -> list[_MemQueue]:
        out = list(self._queues.values())
        for groups in (*self._topics.values(), *self._patterns.values()):
            out.extend(groups.values())
        return out

    def queue_names(self) -> list[str]:
        """The work queues that exist (for tests: a reply queue is gone after its bus stops)."""
        with self.lock:
            return sorted(self._queues)

    def delete_queue(self, name: str) -> None:
        """Drop work queue ``name`` and its dead-letter queue with every message in them."""
        with self.lock:
            for gone in (self._queues.pop(name, None), self._queues.pop(dead_letter_name(name, None), None)):
                if gone is not None:
                    self._delayed = [d for d in self._delayed if d[2] is not gone]
                    heapq.heapify(self._delayed)

    def put_to_group(self, source: Destination, messages: Sequence[OutgoingMessage]) -> None:
        """Store ``messages`` in the queue of group ``source`` only, or in queue ``source``
        (created if needed)."""
        queue = self.declare(source)
        with self.lock:
            topic = None
            for message in messages:
                if source.is_pattern:  # the copy names the topic it was published to
                    topic = message.destination.name
                queue.put(_Stored(message.body, dict(message.headers), message.key, topic=topic))

    def delete_group(self, source: Destination) -> None:
        """Drop the queue of group ``source`` and its dead-letter queue with their messages."""
        with self.lock:
            groups = (self._patterns if source.is_pattern else self._topics).get(source.name, {})
            for gone in (groups.pop(source.group or "", None), self._queues.pop(source.dead_letter_queue, None)):
                if gone is not None:
                    gone.consumers.clear()
                    self._delayed = [d for d in self._delayed if d[2] is not gone]
                    heapq.heapify(self._delayed)

    def reset(self) -> None:
        """Drop every topic, queue and message (for tests). Live consumers keep running but
        are detached from the dropped queues."""
        with self.lock:
            self._topics.clear()
            self._patterns.clear()
            self._queues.clear()
            self._delayed.clear()
            self._history.clear()


class MemoryTransport:
    """The transport for ``memory://NAME``: a client of the shared :class:`MemoryBroker`.

    Behaves like a networked transport: it must be connected before use, publishes are
    "confirmed" when stored, and closing it hands every unsettled delivery back.
    """

    messaging_system = "memory"

    def __init__(self, broker: MemoryBroker | None = None, *, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        self.broker = broker or MemoryBroker.named("")
        self.capabilities = Capabilities(
            ordering=True,
            native_delay=True,
            persistence=False,
            consumer_groups=True,
            max_message_size=max_message_size,
            network=False,
            wildcards=True,
            history=True,
        )
        self._max = max_message_size
        self._connected = False
        self._consumers: list[_MemConsumer] = []

    @classmethod
    def from_url(cls, url: TransportURL) -> MemoryTransport:
        """Build from ``memory://NAME?max_message_size=N&history=N&history_age=S`` (see
        :class:`MemoryOptions`). Raises :class:`InvalidOption`."""
        options = parse_options(url, MemoryOptions)
        name = url.host or url.path.strip("/")
        broker = MemoryBroker.named(name)
        if "history" in url.query or "history_age" in url.query:
            broker.set_history(options.history, options.history_age)
        return cls(broker, max_message_size=options.max_message_size)

    async def connect(self) -> None:
        """Mark connected. Idempotent."""
        self._connected = True

    async def close(self) -> None:
        """Stop every consumer at once (unsettled deliveries are requeued). Idempotent."""
        self._connected = False
        consumers, self._consumers = self._consumers, []
        for consumer in consumers:
            await consumer.stop(0)

    async def publish(self, messages: Sequence[OutgoingMessage]) -> None:
        """Store the messages. Raises :class:`MessageTooLarge` before storing any if one is
        too big, :class:`ConnectError` when the transport is not connected."""
        if not self._connected:
            raise ConnectError("memory transport is not connected")
        limit = self._max
        for message in messages:
            if len(message.body) > limit:
                raise MessageTooLarge(
                    f"message to {message.destination.name!r} is {len(message.body)} bytes; "
                    f"memory:// allows at most {limit} (set ?max_message_size=N)"
                )
        self.broker.publish(messages)

    async def delete_queue(self, name: str) -> None:
        """Drop work queue ``name`` (a reply queue) and every message in it. Idempotent."""
        self.broker.delete_queue(name)

    async def dead_letter_queues(self) -> list[str]:
        """The work queues whose names end in ``.dlq``, sorted (:class:`BrokerAdmin`)."""
        return [name for name in self.broker.queue_names() if name.endswith(".dlq")]

    async def depth(self, source: Destination) -> int:
        """Messages ready or waiting for a delayed redelivery in the queue or group (not
        those in flight); 0 for one that does not exist (:class:`BrokerAdmin`)."""
        return self.broker.pending(source.name, source.group if source.kind is DestinationKind.TOPIC else None)

    async def publish_to_group(self, source: Destination, messages: Sequence[OutgoingMessage]) -> None:
        """Store the messages in group ``source``'s queue only, as first attempts
        (:class:`BrokerAdmin`). Raises :class:`ConnectError` when not connected."""
        if not self._connected:
            raise ConnectError("memory transport is not connected")
        self.broker.put_to_group(source, messages)

    async def delete_group(self, source: Destination) -> None:
        """Drop group ``source``'s queue and dead-letter queue; its consumers get nothing
        more. Idempotent (:class:`BrokerAdmin`)."""
        self.broker.delete_group(source)

    async def subscribe(self, source: Destination, handler: DeliveryHandler, *, concurrency: int) -> Consumer:
        """Attach a consumer with ``concurrency`` workers to the source's queue (a pattern
        source gets the messages of every matching topic, ``Delivery.topic`` naming it)."""
        if not self._connected:
            raise LifecycleError("memory transport is not connected")
        check_concurrency(concurrency, f"{source.name!r}")
        if source.kind is DestinationKind.TOPIC and not source.group:
            raise InvalidDestination(f"subscribing to topic {source.name!r} needs a group")
        queue = self.broker.declare(source)
        consumer = _MemConsumer(queue, handler, concurrency, ordered=True)
        consumer.start()
        self._consumers.append(consumer)
        self.broker.attach(queue, consumer)
        return consumer
