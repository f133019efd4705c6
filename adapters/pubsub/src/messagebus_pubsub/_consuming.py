"""The Pub/Sub consumer: unary pull loops on a subscription and its retry subscription,
batched acks and ack-deadline changes, lease extension, flow control. Why unary pull, and why
a stop lets a pending pull finish: see the README (the emulator's streaming pull).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from google.api_core import exceptions as gexc
from google.pubsub_v1 import PullResponse, ReceivedMessage

from messagebus import ConsumeError, MessageBusError
from messagebus.transports import (
    AttributeValue,
    Backoff,
    Batcher,
    ConsumerBase,
    Delivery,
    DeliveryHandler,
    describe_error,
)
from messagebus.transports import headers as h

from ._codec import INTERNAL_HEADERS, check_size, decode_message, read_retry, retry_attributes
from ._connection import Connection
from ._errors import errors, transient_retry
from ._publishing import Publisher
from ._telemetry import delivery_attributes
from ._topology import Names

__all__ = ["PubSubConsumer"]

logger = logging.getLogger("messagebus.pubsub")

# A retry due within this many seconds waits on the event loop (ack deadlines are whole
# seconds); a later one goes back to Pub/Sub with its ack deadline set to the delay.
_LOCAL_HOLD = 2.0
_MAX_ACK_DEADLINE = 600
# Seconds one Pull may wait for messages: its gRPC deadline, which the server knows and
# answers before. A stop lets a pending pull run out rather than cancel it (see the README),
# so this bounds stop(). Measured on the emulator, an empty pull returns about 0.94 s before
# its deadline: 2 s made stop() wait up to 1.06 s, 1.5 s waits up to 0.56 s, and 1 s or less
# returns at once (a busy loop of empty pulls).
_PULL_WAIT = 1.5
_MAX_BYTES = 100 * 1024 * 1024
# Ack ids per Acknowledge / ModifyAckDeadline request.
_MAX_ACK_IDS = 2500
# Leases are extended for at most this many seconds; then Pub/Sub redelivers.
_MAX_LEASE = 3600.0
# A held retry older than this is re-published: Pub/Sub drops messages older than the retry
# subscription's retention (7 days), and a delay may be longer.
_REFRESH_AGE = 24 * 3600.0
# Seconds a stopping consumer waits for its last acks and hand-backs to be confirmed.
_CLOSE_WAIT = 10.0

#: A settle request: an ack id and the new ack deadline in seconds (``None``: acknowledge).
Settle = tuple[str, int | None]


def _identity(message: Any) -> str:
    """A message's id and publish time: the emulator numbers messages from 1 again after a
    restart, and a redelivery keeps both."""
    published = message.publish_time
    return f"{message.message_id}@{published.seconds}.{published.nanos:09d}"


class _Lane:
    """One subscription a consumer reads, the batcher of its settles (each result: whether
    Pub/Sub confirmed it) and, on the emulator, the keyless messages whose ack it confirmed."""

    __slots__ = ("acked", "batcher", "name", "path", "pull", "pulling", "retried")

    def __init__(self, path: str, retried: bool, call: Callable[[_Lane, list[Settle]], Any]) -> None:
        self.path = path
        self.name = path.rsplit("/", 1)[-1]
        self.retried = retried
        self.pulling = False
        self.pull: asyncio.Task[Any] | None = None
        self.batcher: Batcher[Settle, bool] = Batcher(
            lambda entries: call(self, entries), max_entries=_MAX_ACK_IDS, map_error=lambda exc: exc
        )
        # Message identity -> when its ack was confirmed, oldest first (dicts keep insertion order).
        self.acked: dict[str, float] = {}

    def remember(self, identity: str, keep: float) -> None:
        """Record a confirmed ack; forget those older than ``keep`` seconds."""
        now = time.monotonic()
        acked = self.acked
        acked.pop(identity, None)
        acked[identity] = now
        while True:
            oldest = next(iter(acked))
            if acked[oldest] > now - keep:
                return
            del acked[oldest]

    def failed(self, exc: Exception) -> str:
        return f"pulling from {self.path} failed ({describe_error(exc)})"


class PubSubConsumer(ConsumerBase):
    """A running subscription (the contract's ``Consumer``). A delivery's ``native`` is the
    protobuf ``ReceivedMessage``, ``raw`` its :class:`google.pubsub_v1.ReceivedMessage`
    wrapper and ``token`` the lane (subscription) it came on.

    Flow control: at most ``max_messages`` (default ``concurrency + 100``) and 100 MiB are
    leased at once, and a message counts until Pub/Sub confirmed its ack, so a connection
    fault can redeliver at most ``max_messages`` handled messages; leases are extended every
    third of the ack deadline while messages are queued, held or handled (up to an hour).
    Acks are sent right after the handler settled, batched per loop turn; a failed ack or
    ack-deadline change is retried on transient errors for up to the ack deadline (after
    that the lease has run out and Pub/Sub redelivers anyway).

    On Google's emulator only, a redelivered message without an ordering key whose ack the
    emulator already confirmed (within two ack deadlines; same message id and publish time)
    is acked again without calling the handler: the emulator redelivers acked keyless
    messages when a lease lost with a connection runs out (see the README, Reconnect).
    """

    def __init__(
        self,
        connection: Connection,
        publisher: Publisher,
        names: Names,
        handler: DeliveryHandler,
        concurrency: int,
    ) -> None:
        options = connection.options
        assert names.subscription is not None and names.retry_subscription is not None
        super().__init__(
            handler,
            concurrency,
            name=names.subscription.rsplit("/", 1)[-1],
            ordered=options.ordering,
            capacity=options.max_messages or concurrency + 100,
            log=logger,
        )
        self._conn = connection
        self._publisher = publisher
        self._names = names
        self._deadline = options.ack_deadline
        self._dedupe = connection.emulator_host is not None
        self._keep = 2.0 * options.ack_deadline
        self._lanes = (
            _Lane(names.subscription, False, self._settle),
            _Lane(names.retry_subscription, True, self._settle),
        )
        # Leased and not yet settled, by ack id: (delivery, leased since).
        self._leased: dict[str, tuple[Delivery, float]] = {}
        self._bytes = 0
        # Acks sent and not yet answered: they count against flow control.
        self._acking = 0
        self._room = asyncio.Event()
        self.closed = False

    def start(self) -> None:
        """Start the workers, both pull loops and the lease keeper. Never blocks."""
        super().start()
        for lane in self._lanes:
            pull = self.fetch_loop(
                functools.partial(self._pull, lane), describe_error=lane.failed, backoff=Backoff(0.2)
            )
            lane.pull = self.spawn(pull, name=f"pubsub-pull-{lane.name}", loop=True)
        self.spawn(self._keep_leases(), name=f"pubsub-lease-{self.name}", loop=True)

    async def _pull(self, lane: _Lane, room: int) -> list[Delivery]:
        # ``room`` free workers, less the held messages and the acks Pub/Sub has not confirmed.
        while not self.stopping.is_set() and (
            self._bytes >= _MAX_BYTES or (self._acking and min(room, self.pool.free) - self.held - self._acking <= 0)
        ):
            self._room.clear()
            await self._room.wait()
        if self.stopping.is_set():
            return []
        want = max(1, min(room, self.pool.free, 1000) - self.held - self._acking)
        clients = self._conn.require()
        lane.pulling = True
        try:
            # A short long-poll: the server answers as soon as messages are there.
            response = await clients.subscriber.pull(
                request={"subscription": lane.path, "max_messages": want},
                timeout=_PULL_WAIT,
                retry=None,
            )
        except gexc.DeadlineExceeded:
            return []
        except gexc.NotFound:
            # Deleted behind our back: declare it again, then retry after the back-off.
            clients.topology.forget(lane.path)
            try:
                await clients.topology.ensure_consumer(self._names)
            except MessageBusError as exc:
                self.log.warning("declaring %s again failed: %s", lane.path, exc)
            raise
        finally:
            lane.pulling = False
        return self._arrive(lane, PullResponse.pb(response).received_messages)

    def _arrive(self, lane: _Lane, received: Sequence[Any]) -> list[Delivery]:
        ready: list[Delivery] = []
        now = time.monotonic()
        for message in received:
            if self._dedupe and not message.message.ordering_key and _identity(message.message) in lane.acked:
                # The emulator's redelivery of a keyless message already acked (see the class).
                lane.batcher.add((message.ack_id, None))
                continue
            wire = decode_message(message.message)
            attempt, remaining = 1, 0.0
            if lane.retried:
                attempt, due = read_retry(wire)
                remaining = due - time.time()
                if remaining > _LOCAL_HOLD and time.time() - message.message.publish_time.seconds > _REFRESH_AGE:
                    self.spawn(self._refresh(lane, message), name=f"pubsub-refresh-{self.name}")
                    continue
                if remaining > _LOCAL_HOLD:
                    # Back to Pub/Sub until shortly before it is due: it holds no flow-control
                    # slot and no worker meanwhile, and other messages flow past it.
                    seconds = min(_MAX_ACK_DEADLINE, max(1, int(remaining - 1.0)))
                    lane.batcher.add((message.ack_id, seconds))
                    continue
            key = message.message.ordering_key or wire.get(h.KEY) or None
            headers = {k: v for k, v in wire.items() if k not in INTERNAL_HEADERS}
            delivery = Delivery(self, message, message.message.data, headers, key, attempt, lane)
            self._leased[message.ack_id] = (delivery, now)
            self._bytes += len(delivery.body)
            if remaining > 0:
                self.hold(delivery, remaining)
            else:
                ready.append(delivery)
        return ready

    def describe(self) -> str:
        return f"Pub/Sub subscription {self.name!r}"

    def raw_of(self, delivery: Delivery) -> ReceivedMessage:
        """The :class:`google.pubsub_v1.ReceivedMessage` wrapper (``ack_id``, ``message``)."""
        raw: ReceivedMessage = ReceivedMessage.wrap(delivery.native)
        return raw

    def attributes_of(self, delivery: Delivery) -> dict[str, AttributeValue]:
        return delivery_attributes(delivery.native, delivery.token.name, delivery.attempt)

    def settle_ack(self, delivery: Delivery) -> None:
        """Queue the ack (sent with the others of this loop turn). Raises
        :class:`ConsumeError` once the consumer is closed: Pub/Sub redelivers the message."""
        if self.closed:
            raise ConsumeError(f"the consumer of {self.describe()} is stopped; Pub/Sub will redeliver the message")
        self._ack(delivery)

    async def settle_redeliver(self, delivery: Delivery, delay: float, headers: Any) -> None:
        """Re-publish to this consumer's retry topic with ``attempt + 1``, due after ``delay``
        seconds, then ack the original once Pub/Sub confirmed the copy."""
        topic = self._names.retry_topic
        assert topic is not None
        attributes = retry_attributes(delivery.headers, headers, delivery.attempt + 1, delay, delivery.key)
        check_size(topic, delivery.body, attributes, "")
        await self._publisher.send(topic, delivery.body, attributes, "")
        self._ack(delivery)

    async def _refresh(self, lane: _Lane, message: Any) -> None:
        # A fresh copy of a long-held retry, then the old one acked (if publishing fails, the
        # old one comes back after its ack deadline and is refreshed then).
        assert self._names.retry_topic is not None
        await self._publisher.send(self._names.retry_topic, message.message.data, dict(message.message.attributes), "")
        lane.batcher.add((message.ack_id, None))

    async def release(self, deliveries: Sequence[Delivery]) -> None:
        """Hand back for immediate redelivery (ack deadline 0; order kept for ordering keys)."""
        pending = []
        for delivery in deliveries:
            self._forget(delivery)
            pending.append(delivery.token.batcher.add((delivery.native.ack_id, 0)))
        await asyncio.gather(*pending)

    def _ack(self, delivery: Delivery) -> None:
        self._forget(delivery)
        lane: _Lane = delivery.token
        message = delivery.native.message
        self._acking += 1
        done = lane.batcher.add((delivery.native.ack_id, None))
        done.add_done_callback(functools.partial(self._acked, lane, _identity(message), not message.ordering_key))

    def _acked(self, lane: _Lane, identity: str, keyless: bool, done: asyncio.Future[bool]) -> None:
        self._acking -= 1
        self._room.set()
        if self._dedupe and keyless and not done.cancelled() and done.exception() is None and done.result():
            lane.remember(identity, self._keep)

    def _forget(self, delivery: Delivery) -> None:
        if self._leased.pop(delivery.native.ack_id, None) is not None:
            self._bytes -= len(delivery.body)
            if self._bytes < _MAX_BYTES:
                self._room.set()

    async def _settle(self, lane: _Lane, entries: list[Settle]) -> list[bool]:
        # One Acknowledge, and one ModifyAckDeadline per deadline.
        groups: dict[int | None, list[str]] = {}
        for ack_id, seconds in entries:
            groups.setdefault(seconds, []).append(ack_id)
        calls = list(groups.items())
        outcomes = await asyncio.gather(*(self._send_settle(lane, seconds, ack_ids) for seconds, ack_ids in calls))
        confirmed = {seconds: ok for (seconds, _), ok in zip(calls, outcomes, strict=True)}
        return [confirmed[seconds] for _, seconds in entries]

    async def _send_settle(self, lane: _Lane, seconds: int | None, ack_ids: list[str]) -> bool:
        request: dict[str, Any] = {"subscription": lane.path, "ack_ids": ack_ids}
        # Retried through a reconnect for as long as the leases can still be live: an ack
        # given up early means the message is handled again.
        retry = transient_retry(float(self._deadline))
        try:
            subscriber = self._conn.require().subscriber
            if seconds is None:
                await subscriber.acknowledge(request=request, retry=retry, timeout=10.0)
            else:
                request["ack_deadline_seconds"] = seconds
                await subscriber.modify_ack_deadline(request=request, retry=retry, timeout=10.0)
        except Exception as exc:
            # At least once: these messages come back after their ack deadline.
            what = "acking" if seconds is None else f"setting the ack deadline to {seconds}s of"
            self.log.warning("%s", errors.map(exc, ConsumeError, f"{what} {len(ack_ids)} messages on {lane.path}"))
            return False
        return True

    async def _keep_leases(self) -> None:
        while True:
            await asyncio.sleep(max(1.0, self._deadline / 3))
            cutoff = time.monotonic() - _MAX_LEASE
            pending = [
                delivery.token.batcher.add((ack_id, self._deadline))
                for ack_id, (delivery, since) in list(self._leased.items())
                if since > cutoff
            ]
            await asyncio.gather(*pending)

    async def stop_fetching(self) -> None:
        """Let pending pulls finish (what they return is handed back), wake the others."""
        self._room.set()
        busy = [lane.pull for lane in self._lanes if lane.pulling and lane.pull is not None]
        if busy:
            await asyncio.wait(busy, timeout=_PULL_WAIT + 0.5)

    async def close(self) -> None:
        """Hand back whatever is still leased and unsettled, send pending acks, detach. Waits
        at most 10 s for Pub/Sub to confirm them (a stop during an outage must end): what is
        not confirmed by then is redelivered after its ack deadline."""
        try:
            await asyncio.wait_for(self._settle_all(), _CLOSE_WAIT)
        except TimeoutError:
            self.log.warning(
                "acks and hand-backs of %s were not confirmed within %.0f s; Pub/Sub redelivers those messages "
                "after their ack deadline",
                self.describe(),
                _CLOSE_WAIT,
            )
        self.closed = True

    async def _settle_all(self) -> None:
        leftover = [d for d, _ in self._leased.values() if not d.settled]
        for delivery in leftover:
            delivery.settled = True
        if leftover:
            await self.release(leftover)
        for lane in self._lanes:
            await lane.batcher.drain()
