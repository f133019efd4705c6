"""Consuming: ``basic.consume`` callbacks submit deliveries to the worker pool of
:class:`~messagebus.transports.ConsumerBase` (push-based: no fetch loop), and the AMQP
primitives behind them (ack, retry through a delay bucket, requeue)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence
from typing import Any, cast

import aio_pika
import aiormq
from aiormq.abc import DeliveredMessage
from pamqp.commands import Basic

from messagebus import ConsumeError
from messagebus.transports import AttributeValue, ConsumerBase, Delivery, DeliveryHandler, Destination
from messagebus.transports import headers as h

from ._codec import attempt_of, decode_headers
from ._connection import CLOSE_TIMEOUT, close_quietly
from ._publishing import TOPIC, Publisher
from ._telemetry import delivery_attributes
from ._topology import physical_name, queue_name

__all__ = ["LazyIncomingMessage", "RabbitMQConsumer"]

logger = logging.getLogger("messagebus.rabbitmq")
_KEY = h.KEY


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
        await self.publisher.topology.subscription(raw, self.source)
        channel = await raw.channel(publisher_confirms=False)
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
