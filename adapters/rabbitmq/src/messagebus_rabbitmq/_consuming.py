"""Consuming: ``basic.consume`` callbacks submit deliveries to the worker pool of
:class:`~messagebus.transports.ConsumerBase` (push-based: no fetch loop), and the AMQP
primitives behind them (ack, retry through a delay bucket, requeue)."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Literal, cast

import aio_pika
import aiormq
from aiormq.abc import DeliveredMessage
from pamqp.commands import Basic

from messagebus import ConsumeError, UnsupportedFeature
from messagebus.transports import AttributeValue, ConsumerBase, Delivery, DeliveryHandler, Destination, log_ignored
from messagebus.transports import headers as h

from ._codec import attempt_of, decode_headers
from ._connection import CLOSE_TIMEOUT, close_quietly, open_channel
from ._publishing import TOPIC, Publisher
from ._telemetry import delivery_attributes
from ._topology import physical_name, queue_name, side_name

__all__ = ["LazyIncomingMessage", "RabbitMQConsumer"]

logger = logging.getLogger("messagebus.rabbitmq")
_KEY = h.KEY
#: Header of a fence: an empty message a group's creator puts in a history stream to know
#: where it has read up to. Never copied; history readers skip it.
FENCE = "messagebus-history-fence"


async def _exists(raw: aiormq.abc.AbstractConnection, queue: str, lock: Any = None) -> bool:
    """Whether ``queue`` exists (passive declare on a throwaway channel: a miss closes it); with
    ``lock``, whether this connection could declare ``queue`` exclusive on that channel."""
    channel = lock or await open_channel(raw, confirms=False)
    try:
        await channel.queue_declare(queue, passive=lock is None, exclusive=lock is not None)
        return True
    except (aiormq.exceptions.ChannelNotFoundEntity, aiormq.exceptions.ChannelLockedResource):
        return False
    finally:
        await close_quietly(channel if lock is None else None)


class LazyIncomingMessage(aio_pika.IncomingMessage):
    """An :class:`aio_pika.IncomingMessage` that fills itself in on first use.

    Building an ``IncomingMessage`` copies and converts every AMQP property (about a tenth of
    the per-message cost of consuming); most handlers never look at ``Envelope.raw``, so the
    work is deferred until an attribute is first read. It then behaves exactly like the
    aio-pika class (it is one). Do not settle it yourself: the bus does.
    """

    def __init__(self, message: DeliveredMessage, no_ack: bool = False) -> None:
        # Deliberately not calling the parent __init__ now: __getattr__ does it on first use.
        object.__setattr__(self, "_lazy_source", (message, no_ack))

    @property
    def materialized(self) -> bool:
        """True once the message was filled in (something read it)."""
        return "_lazy_source" not in self.__dict__

    def __getattr__(self, name: str) -> Any:
        # Only reached for attributes not set yet, i.e. before the real __init__ ran.
        source = self.__dict__.pop("_lazy_source", None)
        if source is None:
            raise AttributeError(name)
        aio_pika.IncomingMessage.__init__(self, *source)
        return getattr(self, name)


def _settled_natively(delivery: Delivery) -> bool:
    # A message nobody touched through Envelope.raw cannot have been settled through aio-pika.
    return delivery.raw_built and bool(delivery.raw.materialized and delivery.raw.processed)


class _Copier:
    """Copies a history stream, from a position, into a group's queue (default exchange,
    headers and properties kept, confirmed), in stream order, up to each fence it puts in."""

    def __init__(self, channel: aiormq.abc.AbstractChannel, stream: str, queue: str, timeout: float) -> None:
        self.channel, self.stream, self.queue, self.timeout = channel, stream, queue, timeout
        self.inbox, self.held = asyncio.Queue[DeliveredMessage](), list[DeliveredMessage]()
        self.window: set[str] | None = None  # ids copied from now on (set by the caller)

    async def begin(self, offset: object) -> None:
        await self.channel.basic_qos(prefetch_count=1000)  # a stream takes no consumer without it
        # Queued before any await (aiormq runs a task per delivery): the stream's order is kept.
        take, args = self.inbox.put_nowait, {"x-stream-offset": offset}
        await self.channel.basic_consume(self.stream, take, arguments=args)  # type: ignore[arg-type]

    async def fence(self) -> None:
        """Put a fence in the stream and copy every message before it (fences skipped)."""
        fence, fences = uuid.uuid4().hex, list[object]()
        marked = Basic.Properties(headers={FENCE: fence})
        await self.channel.basic_publish(b"", routing_key=self.stream, properties=marked)
        while fence not in fences:
            if not self.held:
                self.held.append(await asyncio.wait_for(self.inbox.get(), self.timeout))
            while not self.inbox.empty() and len(self.held) < 500:
                self.held.append(self.inbox.get_nowait())
            fences = [(m.header.properties.headers or {}).get(FENCE) for m in self.held]
            end = fences.index(fence) + 1 if fence in fences else len(self.held)
            batch, self.held = self.held[:end], self.held[end:]  # what follows the fence waits
            await asyncio.gather(*(self._copy(m) for m, f in zip(batch, fences, strict=False) if f is None))
            await self.channel.basic_ack(cast(int, cast(Basic.Deliver, batch[-1].delivery).delivery_tag), multiple=True)

    def _copy(self, message: DeliveredMessage) -> Any:
        props = copy.copy(message.header.properties)  # the stream's own offset header is not the message's
        props.headers = {k: v for k, v in (props.headers or {}).items() if k != "x-stream-offset"}
        if self.window is not None and props.message_id:
            self.window.add(props.message_id)
        return self.channel.basic_publish(message.body, routing_key=self.queue, properties=props, mandatory=True)


class RabbitMQConsumer(ConsumerBase):
    """A running subscription: one channel with ``basic.consume`` on one queue, prefetch =
    the ``prefetch`` option, else the concurrency. After a lost channel or connection it
    consumes again on a new channel (queue re-declared) through :meth:`Connection.restore`.

    Deliveries' ``native`` is the aiormq ``DeliveredMessage``; ``raw`` an
    :class:`aio_pika.IncomingMessage` built on first access.
    """

    def __init__(self, publisher: Publisher, source: Destination, handler: DeliveryHandler, concurrency: int) -> None:
        self.queue = queue_name(source)
        self.prefetch = publisher.conn.options.prefetch or concurrency
        super().__init__(handler, concurrency, name=self.queue, capacity=self.prefetch, log=logger)
        self.publisher = publisher
        self.conn = publisher.conn
        self.source = source
        self._channel: aiormq.abc.AbstractChannel | None = None
        self._tag: str | None = None
        #: How many times consuming was restored after a lost channel or connection.
        self.restarts = 0
        #: Ids of the messages copied after the binding (False: not delivered yet): one of
        #: them may also have been routed to the queue, and its second delivery is dropped.
        self.twins: dict[str, bool] = {}
        #: Where a group this subscribe creates starts (applied once, by :meth:`_position`).
        self.history = source.start_from if publisher.topology.history is not None else None

    def describe(self) -> str:
        return f"queue {self.queue!r}"

    async def begin(self) -> None:
        """Start the workers, declare the queue and consume (waiting out a reconnect up to
        ``connect_timeout``). Raises :class:`TopologyError` for a conflicting declaration,
        :class:`ConnectError` when the broker stays unreachable (the consumer is stopped)."""
        self.start()
        try:
            await self.conn.restore(self._open, self.describe(), self.stopping, self.conn.options.connect_timeout)
        except BaseException:
            await self.stop(0)
            raise

    async def _open(self, raw: aiormq.abc.AbstractConnection) -> None:
        if self.history is not None:
            await self._position(raw, self.history)
            self.history = None
        await self.publisher.topology.subscription(raw, self.source)
        channel = await open_channel(raw, confirms=False)
        try:
            await channel.basic_qos(prefetch_count=self.prefetch)
            ok = await channel.basic_consume(self.queue, self._on_message, no_ack=False)
        except BaseException:
            await close_quietly(channel)
            raise
        self._channel = channel
        self._tag = ok.consumer_tag
        channel.closing.add_done_callback(lambda _f: self._on_channel_closed(channel))
        channel.on_consumer_cancel_callbacks.add(self._on_broker_cancel)

    async def _position(self, raw: aiormq.abc.AbstractConnection, start: Literal["earliest"] | datetime) -> None:
        """Create the group's queue filled from the topic's history stream, or log that
        ``start_from`` is ignored when the group exists. Under a lock (an exclusive queue:
        one creator per group); a durable marker queue exists until the copy is complete, so
        a creator that died mid-copy is finished by the next (again from the start: a
        duplicate, never a loss). See the README's "History" for the order of the steps."""
        src, queue, topology = self.source, self.queue, self.publisher.topology
        if src.is_pattern:
            raise UnsupportedFeature(f"start_from needs one topic on RabbitMQ, not the pattern {src.name!r}")
        lock, marker = side_name("history-lock", queue), side_name("history-copy", queue)
        # Another creator may hold the lock; the broker tells no one when it is free: poll.
        while not await _exists(raw, lock, channel := await open_channel(raw, confirms=True)):  # noqa: ASYNC110
            await asyncio.sleep(0.2)
        try:
            if await _exists(raw, queue) and not await _exists(raw, marker):
                return log_ignored(src, "rabbitmq")
            topology.exchanges.discard(exchange := physical_name(src.name))  # its stream may be gone
            await topology.exchange(raw, exchange)
            await channel.queue_declare(marker, durable=True)
            await topology.queue(raw, queue)
            copier = _Copier(channel, side_name("history", exchange), queue, self.conn.options.publish_timeout)
            await copier.begin("first" if isinstance(start, str) else start - timedelta(seconds=60))
            # ^ a time seek starts a minute early: the stream seeks by the broker's clock (by
            # chunk), the core cuts by the producer's ce-time.
            await copier.fence()  # everything retained
            await copier.fence()  # what came meanwhile: this copy is short, the window after it too
            # Bound: a message routed from now on reaches the queue itself. One routed between
            # the last fence and the binding is in the stream only: the next fence copies it,
            # and a message published in that instant is copied too (a rare duplicate).
            await topology.subscription(raw, src)
            copier.window = set()
            await copier.fence()
            self.twins = dict.fromkeys(copier.window, False)
            await channel.queue_delete(marker)
        finally:
            with contextlib.suppress(Exception):
                await channel.queue_delete(lock)
            await close_quietly(channel)

    async def _on_message(self, message: DeliveredMessage) -> None:
        if self.stopping.is_set():
            return  # the channel's close hands it back to the queue
        headers = decode_headers(message.header.properties)
        deliver = cast(Basic.Deliver, message.delivery)
        topic = (headers.get(TOPIC) or deliver.routing_key or "") if self.source.is_pattern else None
        if topic is not None and TOPIC not in headers and physical_name(topic) != deliver.exchange:
            # From a publisher before wildcards (its routing key is the message key): not ours.
            await message.channel.basic_ack(cast(int, deliver.delivery_tag))
            return
        attempt = attempt_of(headers, bool(deliver.redelivered))
        if (mid := headers.get(h.CE_ID, "")) in self.twins and attempt == 1:
            if self.twins[mid]:  # its twin (copied or routed) came first: this one is a duplicate
                return await message.channel.basic_ack(cast(int, deliver.delivery_tag))
            self.twins[mid] = True
        self.pool.submit_nowait(Delivery(self, message, message.body, headers, headers.get(_KEY), attempt, topic=topic))

    def pool_handler(self, handler: DeliveryHandler) -> DeliveryHandler:
        """Skips a delivery whose channel died before its handler ran (it comes again)."""

        async def live(delivery: Any) -> None:
            if not delivery.native.channel.is_closed:
                await handler(delivery)

        return live

    def _on_broker_cancel(self, _frame: Any) -> None:
        # The queue was deleted (or its node went away): close this channel; the close
        # restores consuming, which declares the queue again.
        channel = self._channel
        if channel is not None and not channel.is_closed and not self.stopping.is_set():
            self.spawn(close_quietly(channel), name=f"close-{self.queue}")

    def _on_channel_closed(self, channel: aiormq.abc.AbstractChannel) -> None:
        # A channel closes once: one restore at a time; stop cancels it (a loop task).
        if channel is self._channel and not self.stopping.is_set() and not self.conn.closed:
            self.spawn(self._restore_consuming(), name=f"restore-{self.queue}", loop=True)

    async def _restore_consuming(self) -> None:
        if await self.conn.restore(self._open, self.describe(), self.stopping):
            self.restarts += 1
            logger.info("consumer of RabbitMQ queue %r restored", self.queue)

    def _live_channel(self, delivery: Delivery, what: str) -> aiormq.abc.AbstractChannel:
        channel: aiormq.abc.AbstractChannel = delivery.native.channel
        if channel.is_closed:
            raise ConsumeError(
                f"cannot {what} a message from {self.describe()}: its channel closed; RabbitMQ redelivers it"
            )
        return channel

    def settle_ack(self, delivery: Delivery) -> Any:
        """``basic.ack`` on the channel the message came on (unless settled through ``raw``)."""
        if _settled_natively(delivery):
            return None
        return self._live_channel(delivery, "ack").basic_ack(delivery.native.delivery.delivery_tag, wait=False)

    async def settle_redeliver(self, delivery: Delivery, delay: float, headers: Mapping[str, str]) -> None:
        """Publish a copy with ``attempt + 1`` and ``headers`` to this queue only, through the
        delay bucket of ``delay`` (other messages are not held back), then ack the original:
        confirmed before acked, so a crash in between gives a duplicate, never a loss."""
        self._live_channel(delivery, "retry")  # else RabbitMQ already put it back: a copy would duplicate it
        await self.publisher.republish(self.queue, delivery, delay, headers)
        pending = self.settle_ack(delivery)
        if pending is not None:
            await pending

    async def release(self, deliveries: Sequence[Delivery]) -> None:
        """``basic.nack`` with requeue; a message whose channel closed is already back."""
        for delivery in deliveries:
            channel = delivery.native.channel
            if channel.is_closed or _settled_natively(delivery):
                continue
            with contextlib.suppress(Exception):
                await channel.basic_nack(delivery.native.delivery.delivery_tag, requeue=True, wait=False)

    def raw_of(self, delivery: Delivery) -> LazyIncomingMessage:
        """The :class:`aio_pika.IncomingMessage` of a delivery (filled in on first use)."""
        return LazyIncomingMessage(delivery.native, no_ack=False)

    def attributes_of(self, delivery: Delivery) -> Mapping[str, AttributeValue]:
        """``messaging.rabbitmq.*`` attributes: routing key, delivery tag, queue, size ..."""
        return delivery_attributes(delivery.native, self.queue)

    async def stop_fetching(self) -> None:
        """``basic.cancel``, bounded in time."""
        channel, tag = self._channel, self._tag
        if channel is not None and tag is not None and not channel.is_closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(channel.basic_cancel(tag), CLOSE_TIMEOUT)

    async def close(self) -> None:
        """Close the channel (what it still holds goes back to the queue)."""
        await close_quietly(self._channel)
