"""Request/reply on any transport: the caller's reply queue and the correlation of replies.

A request is an ordinary message sent to a queue, with ``messagebus-reply-to`` (the caller's
reply queue), and ``messagebus-reply-by`` (when the caller stops waiting). The responder's
handler returns the reply; the bus sends it to the reply queue with
``messagebus-correlation-id`` set to the request's id. A responder that fails for good (its
message dead-lettered) sends an error reply instead, so the caller fails fast.

The reply queue is one per bus instance (``<service>.replies.<random>``), made on the first
request and consumed through the transport's own contract, so request/reply works on every
transport; it is deleted on stop where the transport can (:class:`DeleteQueue`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time
from collections.abc import Mapping

from . import _headers as h
from ._destination import Destination, DestinationKind
from ._errors import LifecycleError, MessageBusError
from ._message import Envelope, delivered_envelope
from ._transport import Consumer, DeleteQueue, DeliveryLike, ReadyConsumer, Transport

__all__ = ["REPLY_CONCURRENCY", "REPLY_QUEUE_PATTERN", "Replies", "is_reply_queue", "past_reply_by", "reply_by"]

logger = logging.getLogger("messagebus")

#: Reply deliveries in flight on the reply queue (each only completes a future and acks).
REPLY_CONCURRENCY = 16
#: What a bus's reply queue is called (a regex over logical names): ``<service>.replies.<12 hex>``.
REPLY_QUEUE_PATTERN = r".+\.replies\.[0-9a-f]{12}"
_REPLY_QUEUE = re.compile(REPLY_QUEUE_PATTERN)


def is_reply_queue(name: str) -> bool:
    """Whether logical queue ``name`` is a bus's reply queue: one consumer, its owner, so a
    transport may skip what competing consumers need (Kafka: a group join). Pure."""
    return _REPLY_QUEUE.fullmatch(name) is not None


def reply_by(timeout: float) -> str:
    """The ``messagebus-reply-by`` value for a caller waiting ``timeout`` seconds from now."""
    return str(int((time.time() + timeout) * 1000))


def past_reply_by(headers: Mapping[str, str]) -> bool:
    """Whether the caller of the request with ``headers`` has stopped waiting for a reply."""
    raw = headers.get(h.REPLY_BY)
    if not raw:
        return False
    try:
        return int(raw) / 1000 < time.time()
    except ValueError:
        return False


class Replies:
    """The caller side of request/reply for one bus: its reply queue and the requests that
    wait on it. Not thread-safe: use it from the bus's event loop."""

    def __init__(self, transport: Transport, service: str) -> None:
        self._transport = transport
        self.queue = f"{service}.replies.{os.urandom(6).hex()}"
        self._pending: dict[str, asyncio.Future[Envelope]] = {}
        self._consumer: Consumer | None = None
        self._opening: asyncio.Task[Consumer] | None = None
        self._closed = False

    @property
    def is_open(self) -> bool:
        """Whether the reply queue is consumed (no :meth:`open` needed)."""
        return self._consumer is not None

    async def open(self) -> None:
        """Make and consume the reply queue (once; concurrent callers share the one attempt),
        and wait until it receives. Raises :class:`LifecycleError` once closed, transport
        errors as the transport raises them (a later call tries again)."""
        if self._consumer is not None:
            return
        if self._closed:
            raise LifecycleError("the bus is stopping: no new requests")
        opening = self._opening
        if opening is None or (opening.done() and (opening.cancelled() or opening.exception() is not None)):
            opening = self._opening = asyncio.ensure_future(self._subscribe())
        consumer = await asyncio.shield(opening)
        if self._consumer is None:
            self._consumer = consumer

    async def _subscribe(self) -> Consumer:
        source = Destination(DestinationKind.QUEUE, self.queue)
        consumer = await self._transport.subscribe(source, self._on_reply, concurrency=REPLY_CONCURRENCY)
        if isinstance(consumer, ReadyConsumer):
            await consumer.ready()
        return consumer

    def expect(self, correlation_id: str) -> asyncio.Future[Envelope]:
        """A future completed with the reply to the request ``correlation_id``."""
        future: asyncio.Future[Envelope] = asyncio.get_running_loop().create_future()
        self._pending[correlation_id] = future
        return future

    def forget(self, correlation_id: str) -> None:
        """Stop waiting for ``correlation_id`` (answered, timed out or cancelled)."""
        self._pending.pop(correlation_id, None)

    async def _on_reply(self, delivery: DeliveryLike) -> None:
        headers = delivery.headers
        future = self._pending.pop(headers.get(h.CORRELATION_ID, ""), None)
        if future is not None and not future.done():
            future.set_result(
                delivered_envelope(
                    delivery.body,
                    headers,
                    self.queue,
                    None,
                    delivery.key,
                    delivery.attempt,
                    self._transport.messaging_system,
                    delivery,
                )
            )
        elif future is None:
            logger.debug("reply %s came after its request gave up; dropped", headers.get(h.CE_ID))
        try:
            await delivery.ack()
        except MessageBusError:
            logger.warning("ack of a reply failed; it may come again (and is then dropped)", exc_info=True)

    async def close(self, grace: float) -> None:
        """Stop the reply consumer, fail the requests still waiting with
        :class:`LifecycleError`, and delete the reply queue where the transport can.
        Idempotent; never raises but ``CancelledError``."""
        self._closed = True
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(LifecycleError("the bus stopped before the reply came"))
        opening, self._opening = self._opening, None
        if opening is not None and not opening.done():
            opening.cancel()
            with contextlib.suppress(BaseException):
                await opening
        elif opening is not None and self._consumer is None and not opening.cancelled() and opening.exception() is None:
            self._consumer = opening.result()
        consumer, self._consumer = self._consumer, None
        if consumer is None:
            return
        try:
            await consumer.stop(grace)
        except Exception:
            logger.warning("stopping the reply consumer failed", exc_info=True)
        if isinstance(self._transport, DeleteQueue):
            try:
                await self._transport.delete_queue(self.queue)
            except Exception:
                logger.warning("deleting reply queue %s failed; it is left on the broker", self.queue, exc_info=True)
