"""Logical names -> RabbitMQ objects, and the idempotent declarations behind them.

Mapping (DESIGN section 3):

- topic ``T``           -> durable topic exchange ``T``
- group ``G`` of ``T``  -> durable queue ``T.G`` bound to exchange ``T`` with binding key ``#``
- queue ``Q``           -> durable queue ``Q`` (published through the default exchange)
- dead letters          -> the durable queues ``T.G.dlq`` / ``Q.dlq`` (plain queues)
- retry after ``d``     -> a shared delay bucket: fanout exchange + queue ``messagebus.retry.<ms>ms``
  with a queue-level ``x-message-ttl`` and ``x-dead-letter-exchange=""``: a retried message is
  published to the bucket with the source queue's name as routing key, waits out the bucket's
  TTL, and is dead-lettered through the default exchange straight back to its source queue.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import functools
import hashlib
from typing import Any

import aiormq
import aiormq.exceptions
from pamqp.common import FieldValue

from messagebus import TopologyError
from messagebus.transports import Destination, DestinationKind, sanitize_name

from ._errors import explain_channel_error

__all__ = [
    "RETRY_BUCKETS_MS",
    "Topology",
    "bucket_for",
    "physical_name",
    "queue_name",
    "retry_exchange",
]

#: RabbitMQ's limit for exchange and queue names (bytes; our names are ASCII).
MAX_NAME = 255
_ALLOWED = r"A-Za-z0-9._\-"


def _make_buckets() -> tuple[int, ...]:
    # 10 steps per decade (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8): a delay is rounded up by at
    # most a third, and a busy service uses only a handful of buckets.
    steps = (10, 12, 15, 20, 25, 30, 40, 50, 60, 80)
    out: list[int] = []
    scale = 1
    while True:
        for s in steps:
            ms = s * scale
            if ms > 7 * 24 * 3600 * 1000:
                return tuple(out)
            out.append(ms)
        scale *= 10


#: Delay buckets in milliseconds, 10 ms to 7 days.
RETRY_BUCKETS_MS = _make_buckets()
_RETRY_PREFIX = "messagebus.retry."


def bucket_for(delay: float) -> int:
    """The delay bucket (ms) used for a retry ``delay`` in seconds; 0 means redeliver now.

    Rounds up (a retry never comes back early) to the next of 10 steps per decade; delays
    under 5 ms are immediate and delays over 7 days are capped at 7 days.
    """
    ms = delay * 1000.0
    if ms < 5.0:
        return 0
    i = bisect.bisect_left(RETRY_BUCKETS_MS, int(ms * 0.98))  # 2 % slack absorbs float noise
    return RETRY_BUCKETS_MS[min(i, len(RETRY_BUCKETS_MS) - 1)]


def retry_exchange(bucket_ms: int) -> str:
    """Name of the exchange (and of its queue) of one delay bucket."""
    return f"{_RETRY_PREFIX}{bucket_ms}ms"


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
    return sanitize_name(logical, max_length=MAX_NAME, allowed=_ALLOWED)


def queue_name(source: Destination) -> str:
    """The physical queue consumed for ``source`` (``T.G`` for a subscription, ``Q`` for a queue)."""
    if source.kind is DestinationKind.TOPIC:
        return physical_name(f"{source.name}.{source.group}")
    return physical_name(source.name)


class Topology:
    """What this transport declared, so every object is declared once per process.

    Declarations run one at a time on a dedicated channel (a failed declaration closes its
    channel; the publishing channel must never pay for that). Not thread-safe.
    """

    def __init__(self) -> None:
        self.exchanges: set[str] = set()
        self.queues: set[str] = set()
        self.buckets: set[int] = set()
        self._lock = asyncio.Lock()
        self._channel: aiormq.abc.AbstractChannel | None = None

    def forget(self, exchange: str, routing_key: str) -> None:
        """Drop cached declarations behind a publish that came back unroutable or hit a
        missing exchange, so the next attempt declares them again."""
        if exchange == "":
            self.queues.discard(routing_key)
        elif exchange.startswith(_RETRY_PREFIX):
            self.buckets.discard(int(exchange[len(_RETRY_PREFIX) : -2]))
        else:
            self.exchanges.discard(exchange)

    def reset_channel(self) -> None:
        """Forget the declaring channel (after its connection was lost)."""
        self._channel = None

    async def _chan(self, connection: aiormq.abc.AbstractConnection) -> aiormq.abc.AbstractChannel:
        ch = self._channel
        if ch is None or ch.is_closed or ch.connection is not connection:
            ch = self._channel = await connection.channel(publisher_confirms=False)
        return ch

    async def _run(self, connection: aiormq.abc.AbstractConnection, what: str, op: Any) -> Any:
        ch = await self._chan(connection)
        try:
            return await op(ch)
        except (aiormq.exceptions.ChannelPreconditionFailed, aiormq.exceptions.ChannelAccessRefused) as exc:
            self._channel = None
            raise TopologyError(explain_channel_error(exc, what)) from exc
        except aiormq.exceptions.ChannelClosed as exc:
            self._channel = None
            if isinstance(exc, aiormq.exceptions.ChannelNotFoundEntity):
                raise TopologyError(explain_channel_error(exc, what)) from exc
            raise

    async def exchange(self, connection: aiormq.abc.AbstractConnection, name: str) -> None:
        """Declare the durable topic exchange ``name`` (once). Raises :class:`TopologyError`."""
        if name in self.exchanges:
            return
        async with self._lock:
            if name in self.exchanges:
                return
            await self._run(
                connection,
                f"topic exchange {name!r} (type topic, durable)",
                lambda ch: ch.exchange_declare(exchange=name, exchange_type="topic", durable=True),
            )
            self.exchanges.add(name)

    async def queue(self, connection: aiormq.abc.AbstractConnection, name: str) -> None:
        """Declare the durable queue ``name`` without arguments (once)."""
        if name in self.queues:
            return
        async with self._lock:
            if name in self.queues:
                return
            await self._run(
                connection,
                f"queue {name!r} (durable, no arguments)",
                lambda ch: ch.queue_declare(queue=name, durable=True),
            )
            self.queues.add(name)

    async def subscription(self, connection: aiormq.abc.AbstractConnection, source: Destination) -> str:
        """Declare what consuming ``source`` needs; return the physical queue name.

        A subscription declares its topic exchange, its group queue and the ``#`` binding,
        always (a binding may have been removed by an operator), so this is safe to call again
        after a reconnect.
        """
        qname = queue_name(source)
        if source.kind is DestinationKind.QUEUE:
            self.queues.discard(qname)
            await self.queue(connection, qname)
            return qname
        exchange = physical_name(source.name)
        self.exchanges.discard(exchange)
        self.queues.discard(qname)
        await self.exchange(connection, exchange)
        await self.queue(connection, qname)
        async with self._lock:
            await self._run(
                connection,
                f"binding of queue {qname!r} to exchange {exchange!r}",
                lambda ch: ch.queue_bind(queue=qname, exchange=exchange, routing_key="#"),
            )
        return qname

    async def bucket(self, connection: aiormq.abc.AbstractConnection, bucket_ms: int) -> str:
        """Declare the delay bucket ``bucket_ms`` (once); return its exchange name."""
        name = retry_exchange(bucket_ms)
        if bucket_ms in self.buckets:
            return name
        async with self._lock:
            if bucket_ms in self.buckets:
                return name
            args: dict[str, FieldValue] = {"x-message-ttl": bucket_ms, "x-dead-letter-exchange": ""}

            async def declare(ch: aiormq.abc.AbstractChannel) -> None:
                await ch.exchange_declare(exchange=name, exchange_type="fanout", durable=True)
                await ch.queue_declare(queue=name, durable=True, arguments=args)
                await ch.queue_bind(queue=name, exchange=name, routing_key="")

            await self._run(connection, f"retry queue {name!r} (durable, arguments {args})", declare)
            self.buckets.add(bucket_ms)
        return name

    async def close(self) -> None:
        """Close the declaring channel, if open."""
        ch, self._channel = self._channel, None
        if ch is not None and not ch.is_closed:
            with contextlib.suppress(Exception):  # a channel on a dying connection: nothing to save
                await ch.close()
