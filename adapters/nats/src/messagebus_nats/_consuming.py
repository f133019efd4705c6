"""The consumer of one durable pull consumer and the broker primitives of its deliveries.

Pull requests on a private inbox never ask for more than the worker pool has room for, so
at most ``concurrency`` messages are delivered and unacked at once (plus retries held until
due). ack: ``+ACK``, with ``+WPI`` every third of ``ack_wait`` while a handler runs or a
retry is held. A retry with headers (the bus always gives some) publishes a confirmed copy
with them, ``attempt + 1``, the due time and this consumer's name, then acks the original;
other groups of a topic ack such a copy unhandled (JetStream 2.9 has no delayed publish).
A retry without headers is ``-NAK`` with the delay; a hand-back ``-NAK`` now. ``attempt``
is the copy's ``messagebus-attempt`` (1 for an original) plus JetStream's redeliveries.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from messagebus.transports import (
    AttributeValue,
    ConsumerBase,
    Delivery,
    DeliveryHandler,
    DeliveryLike,
    Destination,
    describe_error,
    headers,
)

from ._codec import DUE, FOR, MSG_ID, decode_headers, encode_headers, unpack
from ._connection import Connection, quietly
from ._publishing import Publisher
from ._telemetry import delivery_attributes
from ._topology import Names, pattern_durable

__all__ = ["NatsConsumer", "PatternConsumer"]

logger = logging.getLogger("messagebus.nats")


class NatsConsumer(ConsumerBase):
    """One running subscription on a durable pull consumer. Not thread-safe (one loop)."""

    def __init__(
        self,
        conn: Connection,
        publisher: Publisher,
        source: Destination,
        handler: DeliveryHandler,
        concurrency: int,
        names: Names | None = None,
        topic: str | None = None,
    ) -> None:
        """``names`` and ``topic`` for one topic of a pattern subscription (its deliveries
        name ``topic``); otherwise the names of ``source``."""
        self.names: Names = names or publisher.names(source)
        self._topic = topic
        super().__init__(handler, concurrency, name=f"{self.names.stream}/{self.names.consumer}", log=logger)
        self._conn = conn
        self._publisher = publisher
        self._options = conn.options
        self._next = f"$JS.API.CONSUMER.MSG.NEXT.{self.names.stream}.{self.names.consumer}"
        self._inbox = ""
        self._seq = 0
        self._open: dict[str, list[float]] = {}  # reply subject -> [credits left, deadline]
        self._asked = 0
        self._wake = asyncio.Event()
        self._unsettled: dict[Delivery, None] = {}
        self._sub: Subscription | None = None
        self._forget_listener = conn.on_reconnect(self._reconnected)

    async def start_consuming(self) -> None:
        """Subscribe the private inbox and start the workers, the pull and keep-alive loops."""
        client = self._conn.client
        assert client is not None
        self._inbox = client.new_inbox()
        self._sub = await client.subscribe(f"{self._inbox}.*", cb=self._on_message)
        self.start()
        self.spawn(self._pull_loop(), name=f"nats-pull-{self.name}", loop=True)
        self.spawn(self._keep_alive(), name=f"nats-wpi-{self.name}", loop=True)

    # -- DeliverySource ---------------------------------------------------------------------

    def describe(self) -> str:
        """The stream and durable consumer, for messages."""
        return f"NATS stream {self.names.stream!r} consumer {self.names.consumer!r}"

    def settle_ack(self, delivery: Delivery) -> Any:
        """``+ACK``."""
        self._unsettled.pop(delivery, None)
        return delivery.native.ack()

    async def settle_redeliver(self, delivery: Delivery, delay: float, extra: Mapping[str, str]) -> None:
        """A confirmed copy carrying ``extra`` (then ``+ACK``), or ``-NAK`` with the delay when
        there are no headers to carry."""
        msg: Msg = delivery.native
        if not extra:
            self._unsettled.pop(delivery, None)
            await msg.nak(delay=delay or None)
            return
        due = math.ceil((time.time() + delay) * 1000) if delay > 0 else 0  # whole ms, never early
        await self._copy(delivery, extra, delivery.attempt + 1, due)

    async def _copy(self, delivery: Delivery, extra: Mapping[str, str], attempt: int, due: int) -> None:
        # A confirmed copy for this consumer only (attempt, due time), then +ACK of the original.
        msg: Msg = delivery.native
        wire = dict(msg.headers or {})
        wire |= encode_headers(extra)
        wire[headers.ATTEMPT] = str(attempt)
        # Not a duplicate of the original, nor of another group's copy of the same attempt.
        wire[MSG_ID] = f"{wire.get(MSG_ID) or msg.reply}:{self.names.consumer}:{attempt}"
        wire[FOR] = self.names.consumer
        if due:
            wire[DUE] = str(due)
        await self._publisher.send([(self.names, msg.data, wire)])
        self._unsettled.pop(delivery, None)
        await msg.ack()

    async def release(self, deliveries: Sequence[Delivery]) -> None:
        """``-NAK`` each now; one still held until its due time is copied unchanged instead
        (then acked), so that holding it counts no redelivery. One the server already took
        back (a dropped connection) is redelivered after ``ack_wait`` anyway, so failures are
        only logged."""
        now = time.time() * 1000
        back = []
        for delivery in deliveries:
            self._unsettled.pop(delivery, None)
            due = _due(delivery.native.headers)
            if due > now:
                back.append(quietly(self._copy(delivery, {}, delivery.attempt, due)))
            else:
                back.append(quietly(delivery.native.nak()))
        await asyncio.gather(*back)
        self._wake.set()

    def attributes_of(self, delivery: Delivery) -> Mapping[str, AttributeValue]:
        """Telemetry attributes of a delivery."""
        return delivery_attributes(delivery.native, self.names)

    # -- the pool's handler -----------------------------------------------------------------

    def pool_handler(self, handler: DeliveryHandler) -> DeliveryHandler:
        """The pool runs :meth:`_run`: the bus's handler, then a wake-up of the pull loop."""
        return self._run

    async def _run(self, delivery: Any) -> None:
        try:
            await self.handler(delivery)
        finally:
            # The worker frees its slot right after this returns: ask for more then.
            self._wake.set()

    # -- receiving --------------------------------------------------------------------------

    def _reconnected(self) -> None:
        # Requests made before a server restart are gone: forget their credits, ask again.
        self._open.clear()
        self._asked = 0
        self._wake.set()

    async def _pull_loop(self) -> None:
        client = self._conn.client
        assert client is not None
        pool, stopping, wake = self.pool, self.stopping, self._wake
        expires = self._options.pull_expires
        low = max(1, pool.concurrency // 4)  # no requests for one message while many are asked for
        loop = asyncio.get_running_loop()
        while not stopping.is_set():
            now = loop.time()
            for reply, (credits, deadline) in list(self._open.items()):
                if deadline <= now:  # expired on the server: its end status may have been lost
                    del self._open[reply]
                    self._asked -= int(credits)
            room = pool.free - self._asked
            if room > 0 and (self._asked == 0 or room >= low):
                self._seq += 1
                reply = f"{self._inbox}.{self._seq}"
                request = json.dumps({"batch": room, "expires": int(expires * 1e9)}).encode()
                self._open[reply] = [room, now + expires + 1.0]
                self._asked += room
                try:
                    await client.publish(self._next, request, reply=reply)
                except Exception as exc:
                    self._open.pop(reply, None)
                    self._asked -= room
                    self.log.warning("asking %s for messages failed (%s)", self.describe(), describe_error(exc))
                    await _wait(stopping, 1.0)
                    continue
            wake.clear()
            await _wait(wake, expires + 1.0)

    async def _on_message(self, msg: Msg) -> None:
        hdrs = msg.headers
        status = hdrs.get("Status") if hdrs else None
        if status is not None:
            # On the request's own reply subject: 404/408/409 end it, 100 is a heartbeat.
            entry = self._open.pop(msg.subject, None) if status != "100" else None
            if entry is not None:
                self._asked -= int(entry[0])
                self._wake.set()
            return
        # Messages carry their own subject; the server fills requests first come, first served.
        for reply, entry in self._open.items():
            self._asked -= 1
            entry[0] -= 1
            if entry[0] <= 0:
                del self._open[reply]
            break
        if self.stopping.is_set():
            due = _due(hdrs)
            if due > time.time() * 1000 and hdrs is not None and hdrs.get(FOR) == self.names.consumer:
                # Our own held copy, back through a pull still open: pass it on, not counted.
                held = self._delivery(msg, hdrs)
                await quietly(self._copy(held, {}, held.attempt, due))
            else:
                await quietly(msg.nak())
            return
        if hdrs is not None:
            owner = hdrs.get(FOR)
            if owner is not None and owner != self.names.consumer:
                await quietly(msg.ack())  # another group's retry copy
                self._wake.set()
                return
        try:
            delivery = self._delivery(msg, hdrs)
        except Exception:  # nats-py would hand it to error_cb only: say it here
            self.log.exception("a message of %s could not be read; JetStream redelivers it", self.describe())
            return
        self._unsettled[delivery] = None
        wait = _due(hdrs) / 1000 - time.time()
        if wait > 0:
            self.hold(delivery, wait)
            self._wake.set()  # held retries take no worker: ask for more
        elif not self.submit_nowait(delivery):
            self.spawn(self.submit(delivery), name=f"submit-{self.name}")

    def _delivery(self, msg: Msg, hdrs: Mapping[str, str] | None) -> Delivery:
        redeliveries = msg.metadata.num_delivered - 1
        if not hdrs:
            return Delivery(self, msg, msg.data, {}, None, 1 + redeliveries, topic=self._topic)
        hdrs, body = unpack(hdrs, msg.data)
        assert hdrs is not None
        first = hdrs.get(headers.ATTEMPT)
        attempt = (int(first) if first and first.isdigit() else 1) + redeliveries
        return Delivery(self, msg, body, decode_headers(hdrs), hdrs.get(headers.KEY), attempt, topic=self._topic)

    async def _keep_alive(self) -> None:
        # +WPI for every delivery in a handler or held: JetStream restarts its ack_wait.
        every = self._options.ack_wait / 3
        while not await _wait(self.stopping, every):
            pending = [d.native.in_progress() for d in list(self._unsettled) if not d.settled]
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)

    # -- hooks ------------------------------------------------------------------------------

    async def stop_fetching(self) -> None:
        """Wake the pull loop so that it sees the stop (its task is cancelled later)."""
        self._wake.set()

    async def close(self) -> None:
        """Drain the inbox: unsubscribe, then hand back what the server sent before it saw
        that (so no message waits out ``ack_wait`` for a consumer that is gone)."""
        self._forget_listener()
        sub, self._sub = self._sub, None
        if sub is not None:
            await quietly(asyncio.wait_for(sub.drain(), self._options.publish_timeout))  # type: ignore[no-untyped-call]


class PatternConsumer:
    """A pattern subscription: one :class:`NatsConsumer` per matching topic's stream, on the
    durable :func:`~._topology.pattern_durable` there (so the group's instances compete per
    topic and other groups are untouched). Topics are listed at start and every
    ``pattern_interval`` seconds after; a durable made meanwhile by a publisher keeps the new
    topic's messages until then. At most ``concurrency`` handler calls run at once over all
    topics. Not thread-safe (one loop)."""

    def __init__(
        self, conn: Connection, publisher: Publisher, source: Destination, handler: DeliveryHandler, concurrency: int
    ) -> None:
        self._conn, self._publisher, self._source = conn, publisher, source
        self._handler, self._concurrency = handler, concurrency
        self._limit = asyncio.Semaphore(concurrency)
        self._children: dict[str, NatsConsumer] = {}
        self._since = "now"
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Record the pattern, consume every matching topic, then list them again on a timer.
        Raises :class:`TopologyError` when the first listing or declaration fails."""
        _, topology = self._conn.require()
        self._since = await topology.register(self._source)
        await self._scan()
        self._task = asyncio.create_task(self._rescan(), name=f"nats-pattern-{self._source}")

    async def _scan(self) -> None:
        _, topology = self._conn.require()
        for topic, names in (await topology.matching(self._source.name)).items():
            if names.stream in self._children or self._stopping.is_set():
                continue
            names = Names(names.stream, names.subject, pattern_durable(self._source), False)
            await topology.ensure_consumer(names, self._since)
            child = NatsConsumer(
                self._conn, self._publisher, self._source, self._limited, self._concurrency, names, topic
            )
            await child.start_consuming()
            self._children[names.stream] = child
            logger.info("pattern %s: consuming topic %r", self._source, topic)

    async def _rescan(self) -> None:
        while not await _wait(self._stopping, self._conn.options.pattern_interval):
            try:
                await self._scan()
            except Exception as exc:
                logger.warning("listing the topics of pattern %s failed (%s)", self._source, describe_error(exc))

    async def _limited(self, delivery: DeliveryLike) -> None:
        async with self._limit:
            await self._handler(delivery)

    async def stop(self, grace: float) -> None:
        """Stop listing, then stop every topic's consumer (``grace`` as theirs). Idempotent."""
        self._stopping.set()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await asyncio.gather(*(c.stop(grace) for c in self._children.values()))


def _due(hdrs: Mapping[str, str] | None) -> int:
    """The due time (Unix ms) of a held copy; 0 for any other message."""
    due = hdrs.get(DUE) if hdrs else None
    return int(due) if due and due.isdigit() else 0


async def _wait(event: asyncio.Event, seconds: float) -> bool:
    """Wait for ``event`` at most ``seconds`` (a timer, no task); True if it was set."""
    if event.is_set():
        return True
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        return False
    return True
