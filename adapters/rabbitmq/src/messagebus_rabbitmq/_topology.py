"""Logical names -> RabbitMQ objects (see the README's topology table), and the idempotent
declarations behind them. Every topic exchange forwards all it gets (routing key: the
logical topic name) to the shared topic exchange :data:`TOPICS`, where pattern
subscriptions bind. A filtered subscription's queue is bound through a headers exchange of
its own (:func:`filter_exchange`) instead of to its topic exchange. A retry waits in a
shared delay bucket (a fanout exchange and a queue with ``x-message-ttl`` and
``x-dead-letter-exchange=""``), published with the source queue as routing key, so it is
dead-lettered straight back to that queue when due."""

from __future__ import annotations

import asyncio
import bisect
import functools
import hashlib
from collections.abc import Awaitable, Callable
from typing import Any, cast

import aiormq.exceptions
from pamqp.common import FieldValue

from messagebus import TopologyError
from messagebus.transports import Destination, DestinationKind, sanitize_name

from ._connection import open_channel
from ._errors import CONFLICTS, ERRORS
from ._options import RabbitMQOptions

__all__ = [
    "RETRY_BUCKETS_MS",
    "TOPICS",
    "Topology",
    "bucket_for",
    "filter_exchange",
    "logical_name",
    "physical_name",
    "physical_names",
    "queue_name",
    "retry_exchange",
    "side_name",
]

_Step = Callable[[aiormq.Channel], Awaitable[Any]]
_exchange_declare = aiormq.Channel.exchange_declare
_queue_declare = aiormq.Channel.queue_declare
_queue_bind = aiormq.Channel.queue_bind
_exchange_bind = aiormq.Channel.exchange_bind
#: The shared topic exchange every topic exchange is bound to with ``#``: pattern queues bind
#: here. The colon keeps it (and the filter exchanges) apart from every logical topic name.
TOPICS = "messagebus:topics"
_declare_topics = functools.partial(_exchange_declare, exchange=TOPICS, exchange_type="topic", durable=True)
_filter_exchange = functools.partial(_exchange_declare, exchange_type="headers", durable=True, auto_delete=True)
#: RabbitMQ's limit for exchange and queue names (bytes; our names are ASCII).
MAX_NAME = 255
#: Delay buckets in milliseconds, 10 ms to 7 days: 10 steps per decade (1, 1.2, 1.5, 2, 2.5,
#: 3, 4, 5, 6, 8), so a delay is rounded up by at most a third and a busy service uses only a
#: handful of buckets.
RETRY_BUCKETS_MS = tuple(
    ms
    for scale in (1, 10, 100, 1000, 10**4, 10**5, 10**6, 10**7)
    for ms in (s * scale for s in (10, 12, 15, 20, 25, 30, 40, 50, 60, 80))
    if ms <= 7 * 24 * 3600 * 1000
)


def bucket_for(delay: float, down: bool = False) -> int:
    """The delay bucket (ms) used for a retry ``delay`` in seconds; 0 means redeliver now.

    Rounds up (a retry never comes back early) to the next of 10 steps per decade; with
    ``down`` (holding a delayed message, which the bus holds again for what is left) to the
    step below, at least 10 ms. Delays under 5 ms are immediate and delays over 7 days are
    capped at 7 days.
    """
    ms = delay * 1000.0
    if ms < 5.0:
        return 0
    i = bisect.bisect_right(RETRY_BUCKETS_MS, ms) - 1 if down else bisect.bisect_left(RETRY_BUCKETS_MS, int(ms * 0.98))
    return RETRY_BUCKETS_MS[min(max(i, 0), len(RETRY_BUCKETS_MS) - 1)]


def retry_exchange(bucket_ms: int) -> str:
    """Name of the exchange (and of its queue) of one delay bucket."""
    return f"messagebus.retry.{bucket_ms}ms"


@functools.lru_cache(maxsize=4096)
def physical_name(logical: str) -> str:
    """Map a logical name to a legal RabbitMQ name (<= 255 bytes, not ``amq.*``).

    Deterministic and cached (it runs on every publish); a name that had to change carries
    a hash of the original so two logical names never share a physical one.
    """
    if logical[:4].lower() == "amq.":
        # ``amq.`` is reserved by the broker (ACCESS_REFUSED): move it out of the way.
        digest = hashlib.sha256(logical.encode()).hexdigest()[:8]
        return f"mb-{digest}-{logical}"[:MAX_NAME]
    return sanitize_name(logical, max_length=MAX_NAME, allowed=r"A-Za-z0-9._\-")


def logical_name(physical: str) -> str | None:
    """The logical name that :func:`physical_name` maps to ``physical``, or ``None`` when
    there is none it can tell (a name cut and hashed)."""
    candidates = (physical[12:], physical) if physical.startswith("mb-") else (physical,)
    return next((c for c in candidates if physical_name(c) == physical), None)


def filter_exchange(source: Destination) -> str:
    """The headers exchange between a filtered subscription's source exchange and its queue."""
    return sanitize_name(f"messagebus:filter:{queue_name(source)}", max_length=MAX_NAME, allowed=r"A-Za-z0-9._:\-")


def side_name(kind: str, name: str) -> str:
    """The name of a helper object of kind ``kind`` for the exchange or queue ``name``
    (``messagebus:<kind>:<name>``: the colon keeps it apart from every logical name)."""
    return sanitize_name(f"messagebus:{kind}:{name}", max_length=MAX_NAME, allowed=r"A-Za-z0-9._:\-")


def queue_name(source: Destination) -> str:
    """The physical queue consumed for ``source`` (``T.G`` for a subscription, ``Q`` for a queue)."""
    if source.kind is DestinationKind.TOPIC:
        return physical_name(f"{source.name}.{source.group}")
    return physical_name(source.name)


def physical_names(destination: Destination, options: RabbitMQOptions | None = None) -> dict[str, str]:
    """The RabbitMQ objects behind ``destination``, by role: ``exchange`` (a topic's topic
    exchange), ``queue`` (the queue consumed: ``T.G`` or ``Q``), ``dead_letter`` (its
    dead-letter queue) and for a filtered subscription ``filter`` (its headers exchange). A
    topic without a group names its exchange only. Retries go through
    the shared delay buckets (:func:`retry_exchange`), which belong to no one destination.
    ``options`` change no name on this broker. Pure."""
    names: dict[str, str] = {}
    if destination.kind is DestinationKind.TOPIC:
        names["exchange"] = physical_name(destination.name)
        if destination.group is None:
            return names
    names["queue"] = queue_name(destination)
    names["dead_letter"] = physical_name(destination.dead_letter_queue)
    if destination.filter:
        names["filter"] = filter_exchange(destination)
    return names


class Topology:
    """What this transport declared, so each object is declared once per process.

    Declarations run one at a time on a channel of their own: a failed declaration closes
    its channel, and the publishing channel must never pay for that. Not thread-safe.
    """

    def __init__(self) -> None:
        self.exchanges: set[str] = set()  # topic exchanges and delay buckets
        self.queues: set[str] = set()
        self._lock = asyncio.Lock()
        self._channel: aiormq.Channel | None = None
        #: Arguments of each topic's history stream (``None``: no history kept).
        self.history: dict[str, FieldValue] | None = None

    def forget(self, exchange: str, routing_key: str) -> None:
        """Drop the cached declaration behind a publish that came back unroutable or hit a
        missing exchange, so the next attempt declares it again."""
        if exchange:
            self.exchanges.discard(exchange)
        else:
            self.queues.discard(routing_key)

    async def _declare(
        self, connection: aiormq.abc.AbstractConnection, known: set[str], key: str, what: str, *steps: _Step
    ) -> None:
        if key in known:
            return
        async with self._lock:
            if key in known:
                return
            ch = self._channel
            if ch is None or ch.is_closed or ch.connection is not connection:
                ch = self._channel = cast(aiormq.Channel, await open_channel(connection, confirms=False))
            try:
                for step in steps:
                    await step(ch)
            except CONFLICTS as exc:
                self._channel = None  # a failed declaration closes its channel
                raise ERRORS.map(exc, TopologyError, what) from exc
            except aiormq.exceptions.ChannelClosed:
                self._channel = None
                raise  # the channel or connection went away: the caller tries again
            known.add(key)

    async def exchange(self, connection: aiormq.abc.AbstractConnection, name: str) -> None:
        """Declare the durable topic exchange ``name`` (once), the shared :data:`TOPICS` and
        the ``#`` binding of ``name`` to it; with history on, also its history stream
        ``side_name("history", name)`` (a stream queue bound with ``#``: it keeps the topic's
        messages from the first on). Raises :class:`TopologyError`."""
        p = functools.partial
        declare = p(_exchange_declare, exchange=name, exchange_type="topic", durable=True)
        bind = p(_exchange_bind, destination=TOPICS, source=name, routing_key="#")
        steps: tuple[_Step, ...] = (declare, _declare_topics, bind) if name != TOPICS else (_declare_topics,)
        what = f"topic exchange {name!r} (type topic, durable) bound to {TOPICS!r}"
        if self.history is not None and name != TOPICS:
            stream = side_name("history", name)
            declare_stream = p(_queue_declare, queue=stream, durable=True, arguments=self.history)
            steps += (declare_stream, p(_queue_bind, queue=stream, exchange=name, routing_key="#"))
            what += f" and its history stream {stream!r} (arguments {self.history})"
        await self._declare(connection, self.exchanges, name, what, *steps)

    async def queue(self, connection: aiormq.abc.AbstractConnection, name: str) -> None:
        """Declare the durable queue ``name`` without arguments (once). Raises :class:`TopologyError`."""
        step = functools.partial(_queue_declare, queue=name, durable=True)
        await self._declare(connection, self.queues, name, f"queue {name!r} (durable, no arguments)", step)

    async def subscription(self, connection: aiormq.abc.AbstractConnection, source: Destination) -> str:
        """Declare what consuming ``source`` needs, always (an operator may have removed a
        queue or binding), so it is safe to call again after a reconnect; return the queue.
        A subscription gets its topic exchange, its group queue and the ``#`` binding (a
        pattern: :data:`TOPICS` and a binding keyed by the pattern); a filter goes through
        :meth:`_filter`."""
        qname = queue_name(source)
        self.queues.discard(qname)
        if source.kind is DestinationKind.QUEUE:
            await self.queue(connection, qname)
            return qname
        exchange, key = (TOPICS, source.name) if source.is_pattern else (physical_name(source.name), "#")
        self.exchanges.discard(exchange)
        await self.exchange(connection, exchange)
        await self.queue(connection, qname)
        await self._filter(connection, source, qname, exchange, key)
        return qname

    async def _run(self, connection: aiormq.abc.AbstractConnection, what: str, *steps: _Step) -> None:
        await self._declare(connection, set(), "", what, *steps)

    async def _filter(
        self, connection: aiormq.abc.AbstractConnection, source: Destination, qname: str, exchange: str, key: str
    ) -> None:
        """Bind ``qname`` to ``exchange`` by ``key``; or, filtered, through the headers
        exchange :func:`filter_exchange` (``x-match=all-with-x``; auto-deleted with the
        queue's binding), left unbound from ``exchange``. That exchange carries the filter's
        hash (as its alternate exchange, the one argument RabbitMQ compares): one declared
        for another filter is replaced, the queue bound to everything meanwhile (nothing is
        lost; the bus filters too)."""
        p = functools.partial
        hx = filter_exchange(source)
        bind_all = p(_queue_bind, queue=qname, exchange=exchange, routing_key=key)
        drop = p(aiormq.Channel.exchange_delete, exchange=hx)
        if not source.filter:
            return await self._run(connection, f"binding of queue {qname!r} to exchange {exchange!r}", bind_all, drop)
        digest = hashlib.sha256(repr(source.filter).encode()).hexdigest()[:16]
        args: dict[str, FieldValue] = {"alternate-exchange": f"messagebus:filter-hash:{digest}"}
        declare = p(_filter_exchange, exchange=hx, arguments=args)
        what = f"filter {dict(source.filter)} of queue {qname!r} (headers exchange {hx!r})"
        try:
            await self._run(connection, what, declare)
        except TopologyError:  # made for another filter: replaced, the queue bound to all meanwhile
            await self._run(connection, what, bind_all, drop, declare)
        match: dict[str, FieldValue] = {"x-match": "all-with-x", **dict(source.filter)}
        via = p(_exchange_bind, destination=hx, source=exchange, routing_key=key)
        unbind = p(aiormq.Channel.queue_unbind, queue=qname, exchange=exchange, routing_key=key)
        return await self._run(connection, what, via, p(_queue_bind, queue=qname, exchange=hx, arguments=match), unbind)

    async def delete(self, connection: aiormq.abc.AbstractConnection, queues: tuple[str, ...]) -> None:
        """Delete physical ``queues`` (missing ones are no error); a filter exchange goes with
        its queue (auto-delete). Raises :class:`TopologyError` when the broker refuses."""
        self.queues.difference_update(queues)
        steps = [functools.partial(aiormq.Channel.queue_delete, queue=q) for q in queues]
        await self._run(connection, f"deletion of queue(s) {', '.join(map(repr, queues))}", *steps)

    async def bucket(self, connection: aiormq.abc.AbstractConnection, bucket_ms: int) -> None:
        """Declare the delay bucket ``bucket_ms`` (once): exchange and queue :func:`retry_exchange`."""
        name = retry_exchange(bucket_ms)
        args: dict[str, FieldValue] = {"x-message-ttl": bucket_ms, "x-dead-letter-exchange": ""}
        p, what = functools.partial, f"retry queue {name!r} (durable, arguments {args})"
        declare = p(_exchange_declare, exchange=name, exchange_type="fanout", durable=True)
        queue = p(_queue_declare, queue=name, durable=True, arguments=args)
        bind = p(_queue_bind, queue=name, exchange=name)  # routing key "": the fanout ignores it
        await self._declare(connection, self.exchanges, name, what, declare, queue, bind)
