"""The consumer of one SQS queue: a long-poll fetch loop, and a lease loop that keeps what it
holds hidden. An ack deletes (``DeleteMessageBatch``), a redelivery sets the visibility to the
delay, a hand-back to 0 (``ChangeMessageVisibilityBatch``). ``attempt`` is SQS's
``ApproximateReceiveCount``: broker redeliveries count."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

from messagebus import ConsumeError, DecodeError
from messagebus.transports import AttributeValue, ConsumerBase, Delivery, DeliveryHandler, Destination, DestinationKind

from ._codec import decode_message
from ._connection import Connection, Entry, Poller
from ._errors import errors, is_missing
from ._telemetry import consume_attributes

__all__ = ["SqsConsumer"]

logger = logging.getLogger("messagebus.sqs")

_MAX_VISIBILITY = 43_200
#: Retry headers remembered for redeliveries (per consumer; the oldest are forgotten first).
_MAX_REMEMBERED = 10_000


class SqsConsumer(ConsumerBase):
    """Polls one SQS queue; at most ``concurrency`` handler calls and ``prefetch`` more
    messages held. Every held message, and every acked one until SQS confirmed its delete,
    has its visibility extended, so no other consumer gets it meanwhile."""

    def __init__(self, conn: Connection, source: Destination, handler: DeliveryHandler, concurrency: int) -> None:
        options = conn.options
        super().__init__(handler, concurrency, name=str(source), capacity=concurrency + options.prefetch, log=logger)
        self.source = source
        self.queue_url = ""
        self.topic_arn: str | None = None
        self._conn = conn
        self._vt = options.visibility_timeout
        # The operator's tools read a dead-letter queue holding what they read and hand it all
        # back at stop; a poll still in flight then would take it again (a receive counted, the
        # messages hidden until its own hand-back, or the visibility timeout after an exit).
        # So its polls are short and its stop waits for the last one before handing back.
        self._dead_letters = source.kind is DestinationKind.QUEUE and source.name.endswith(".dlq")
        self._wait = min(options.wait_time, 1) if self._dead_letters else options.wait_time
        # Deliveries whose visibility the lease loop extends -> when it runs out: those held,
        # and acked ones until SQS confirmed the delete (a slow delete must not let another
        # consumer get the message meanwhile). An extension in flight is in ``_extending``.
        self._leased: dict[Delivery, float] = {}
        self._extending: dict[Delivery, asyncio.Future[Entry]] = {}
        self._remembered: OrderedDict[str, Mapping[str, str]] = OrderedDict()
        self._poller: Poller | None = None
        self._redeclaring: asyncio.Task[bool] | None = None

    async def declare(self, *, fresh: bool = False) -> None:
        """Declare the queue (for a group also the topic, the queue policy and the raw
        subscription with the SNS filter policy of ``source.filter``); ``fresh``: again,
        though cached. Raises :class:`TopologyError`."""
        conn, source = self._conn, self.source
        if source.group:
            declare = conn.require().subscription_queue
            self.queue_url, self.topic_arn = await conn.run(
                declare, source.name, source.group, fresh=fresh, pairs=source.filter
            )
        else:
            self.queue_url = await conn.run(conn.require().queue_url, source.name, fresh=fresh)
        self._deleter = conn.batcher("delete", self.queue_url)
        self._visibility = conn.batcher("visibility", self.queue_url)

    def start(self) -> None:
        """Start the workers, the poll thread, the fetch loop and the lease loop."""
        super().start()
        self._poller = Poller(self._conn.sqs, self.name)
        fetching = self.fetch_loop(
            self._fetch,
            describe_error=lambda exc: str(errors.map(exc, ConsumeError, f"receiving from {self.queue_url}")),
        )
        self.spawn(fetching, name=f"sqs-poll-{self.name}", loop=True)
        self.spawn(self._lease_loop(), name=f"sqs-visibility-{self.name}", loop=True)

    def describe(self) -> str:
        """The queue, for messages."""
        return f"SQS queue {self.queue_url}"

    def attributes_of(self, delivery: Delivery) -> Mapping[str, AttributeValue]:
        """Queue URL, topic ARN, SQS message id, FIFO group."""
        return consume_attributes(self.queue_url, delivery.native, self.topic_arn)

    # -- receiving ---------------------------------------------------------------------------

    async def _fetch(self, room: int) -> list[Delivery]:
        assert self._poller is not None
        try:
            # stop() cancels this loop mid-poll without waiting for the poll: the poller
            # hands back whatever that poll receives.
            messages = await self._poller.receive(
                QueueUrl=self.queue_url,
                MaxNumberOfMessages=min(10, room),
                WaitTimeSeconds=self._wait,
                VisibilityTimeout=self._vt,
                MessageAttributeNames=["All"],
                MessageSystemAttributeNames=["All"],
            )
        except Exception as exc:
            redeclaring = self._queue_missing(exc)
            if redeclaring is not None:
                await asyncio.shield(redeclaring)  # then the back-off: a new queue may not answer yet
            raise
        deadline = time.monotonic() + self._vt
        return [self._delivery(m, deadline) for m in messages]

    def _delivery(self, message: dict[str, Any], deadline: float) -> Delivery:
        try:
            body, headers, key = decode_message(message)
        except DecodeError as exc:
            # Deliver what arrived so the bus dead-letters it, instead of looping on it here.
            logger.warning("message %s: %s", message.get("MessageId"), exc)
            body, headers, key = str(message.get("Body", "")).encode(), {}, None
        if self._remembered:
            extra = self._remembered.pop(str(message.get("MessageId", "")), None)
            if extra:
                headers = {**headers, **extra}
        count = (message.get("Attributes") or {}).get("ApproximateReceiveCount", "1")
        attempt = max(1, int(count)) if str(count).isdigit() else 1
        delivery = Delivery(self, message, body, headers, key, attempt, str(message["ReceiptHandle"]))
        self._leased[delivery] = deadline
        return delivery

    # -- settling ----------------------------------------------------------------------------

    def settle_ack(self, delivery: Delivery) -> None:
        """Queue the delete (sent with other acks of the queue within 5 ms, or at once with 10
        queued), so the handler's slot is free at once. A refused delete is logged and the
        message comes back after its visibility timeout: at least once, never lost."""
        fut = self._deleter.add({"ReceiptHandle": delivery.token})
        fut.add_done_callback(functools.partial(self._deleted, delivery))

    def _deleted(self, delivery: Delivery, fut: asyncio.Future[Entry]) -> None:
        self._leased.pop(delivery, None)
        exc = None if fut.cancelled() else fut.exception()
        if exc is not None and self._queue_missing(exc) is None:
            logger.warning("ack failed, the message will be redelivered: %s", exc)

    async def settle_redeliver(self, delivery: Delivery, delay: float, headers: Mapping[str, str]) -> None:
        """Make the message visible again after ``delay`` (whole seconds, rounded up, at most
        12 hours); ``headers`` are added to that redelivery when this consumer receives it."""
        message_id = str(delivery.native.get("MessageId", ""))
        if headers:
            self._remembered[message_id] = dict(headers)
            while len(self._remembered) > _MAX_REMEMBERED:
                self._remembered.popitem(last=False)
        seconds = min(_MAX_VISIBILITY, max(0, math.ceil(delay)))
        try:
            await self._set_visibility(delivery, seconds)
        except BaseException:
            self._remembered.pop(message_id, None)
            raise

    async def release(self, deliveries: Sequence[Delivery]) -> None:
        """Make the messages visible again at once (visibility 0); at the stop of a
        dead-letter queue's consumer, once its last poll returned (at most a second)."""
        if self._dead_letters and self.stopping.is_set() and self._poller is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poller.idle(), self._wait + 5.0)
        results = await asyncio.gather(*(self._set_visibility(d, 0) for d in deliveries), return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed and self._queue_missing(failed[0]) is None:
            msg = "could not make %d unsettled messages of %s visible again (%s): back after the visibility timeout"
            logger.warning(msg, len(failed), self.source, failed[0])

    async def _set_visibility(self, delivery: Delivery, seconds: int) -> Entry:
        self._leased.pop(delivery, None)
        extending = self._extending.get(delivery)
        if extending is not None:
            # It could land after this change and undo it (a retry delay overwritten, a
            # released message hidden again): wait for it first.
            with contextlib.suppress(Exception):
                await asyncio.shield(extending)
        return await self._visibility.add({"ReceiptHandle": delivery.token, "VisibilityTimeout": seconds})

    # -- the lease loop ----------------------------------------------------------------------

    async def _lease_loop(self) -> None:
        vt = self._vt
        while True:
            await asyncio.sleep(max(0.25, vt / 4))
            now = time.monotonic()
            for delivery in [d for d, deadline in self._leased.items() if deadline - now < vt / 2]:
                self._leased[delivery] = now + vt
                fut = self._extending[delivery] = self._visibility.add(
                    {"ReceiptHandle": delivery.token, "VisibilityTimeout": vt}
                )
                fut.add_done_callback(functools.partial(self._extended, delivery))

    def _extended(self, delivery: Delivery, fut: asyncio.Future[Entry]) -> None:
        # Not awaited by the lease loop, so a slow endpoint never delays the next round. A
        # message settled meanwhile (deleted, released) may refuse the extension: fine.
        if self._extending.get(delivery) is fut:
            del self._extending[delivery]
        exc = None if fut.cancelled() else fut.exception()
        if exc is not None and self._queue_missing(exc) is None and not delivery.settled:
            logger.warning("extending the visibility of a message of %s failed: %s", self.source, exc)

    # -- stopping ----------------------------------------------------------------------------

    async def close(self) -> None:
        """After the hand-back: send every queued settle."""
        await self._deleter.drain()
        await self._visibility.drain()
        if self._poller is not None:
            self._poller.close()

    # -- a queue that vanished ---------------------------------------------------------------

    def _queue_missing(self, exc: BaseException | None) -> asyncio.Task[bool] | None:
        """If ``exc`` says this consumer's queue (or topic) is gone, start declaring it again
        (one re-declaration at a time) and return that task; else ``None``."""
        if not is_missing(exc) or self.stopped:
            return None
        if self.redeclaring is None:
            logger.warning("the queue of %s is gone (%s); declaring it again", self.source, exc)
        return self.redeclare()

    @property
    def redeclaring(self) -> asyncio.Task[bool] | None:
        """The re-declaration of this consumer's queue in progress, if any."""
        task = self._redeclaring
        return task if task is not None and not task.done() else None

    def redeclare(self) -> asyncio.Task[bool]:
        """Declare this consumer's queue (for a group also the topic, the queue policy and the
        raw subscription) again; a call while one runs returns that one. The messages that
        were in the queue are gone; receipt handles of messages held from it are void, so
        their settles fail and are only logged. The task never raises."""
        task = self.redeclaring
        if task is None:
            task = self._redeclaring = self.spawn(self._redeclare(), name=f"sqs-redeclare-{self.name}")
        return task

    async def _redeclare(self) -> bool:
        try:
            await self.declare(fresh=True)
        except Exception as exc:
            err = errors.map(exc, ConsumeError, f"declaring the queue of {self.source} again")
            logger.warning("%s; trying again on the next receive", err)
            return False
        return True
