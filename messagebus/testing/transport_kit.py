"""The transport-level conformance kit: the contract of :mod:`messagebus.transports`, no Bus.

The Bus-level kit (:mod:`messagebus.testing.conformance`) sees a transport through the bus's
serialization, retry policy and settling. This layer calls the transport directly, the way
the bus does, and checks each promise of :class:`~messagebus.transports.Transport`,
:class:`~messagebus.transports.Consumer` and :class:`~messagebus.transports.Delivery`:

- ``publish`` returns only once the message is stored: a consumer that subscribes after the
  producer closed still gets it, and a group that subscribes after it returned never does;
- ``subscribe`` runs at most ``concurrency`` handler calls at once, and reaches that many;
- per-key order (when ``capabilities.ordering``): in publish order, never two calls of one
  key at once, even with handlers of random duration;
- ``ack`` settles for good: nothing comes back after close and resubscribe;
- ``retry(delay, headers)`` redelivers with ``attempt + 1`` and the extra headers, once;
- a delivery never settled (its handler was cancelled by the stop grace) is redelivered;
- ``Consumer.stop(grace)`` lets a running handler finish and settle; it is idempotent, and so
  is ``Transport.close``.

An adapter runs it next to the Bus-level kit, with the same ``target`` fixture::

    from messagebus.testing.conformance import ConformanceTarget
    from messagebus.testing.transport_kit import TransportKit

    class TestRabbitMQTransportKit(TransportKit):
        @pytest.fixture
        def target(self, rabbitmq_url: str) -> ConformanceTarget:
            return ConformanceTarget(url=rabbitmq_url)
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest

from .. import _headers as h
from .._destination import Destination, DestinationKind
from .._errors import ConfigurationError, InvalidDestination
from .._message import OutgoingMessage
from .._transport import Consumer, Transport
from .._transport import DeliveryLike as Delivery
from ._collect import Collector, PeakGate
from ._target import ConformanceTarget

__all__ = ["ConformanceTarget", "TransportKit"]


@dataclass(frozen=True)
class Seen:
    """One delivery as a kit handler saw it."""

    n: int
    attempt: int
    key: str | None
    headers: Mapping[str, str]


def _name(prefix: str) -> str:
    return f"kit.{prefix}.{uuid.uuid4().hex[:10]}"


def _queue(name: str) -> Destination:
    return Destination(DestinationKind.QUEUE, name)


def _topic(name: str, group: str | None = None) -> Destination:
    return Destination(DestinationKind.TOPIC, name, group)


def message(
    destination: Destination, n: int, *, key: str | None = None, headers: Mapping[str, str] | None = None
) -> OutgoingMessage:
    """An encoded message as the bus would hand it to ``publish``: a JSON body ``{"n": n}``
    and the CloudEvents headers every transport expects."""
    wire = {
        h.CE_ID: os.urandom(16).hex(),
        h.CE_SOURCE: "transport-kit",
        h.CE_TYPE: "KitItem",
        h.CE_SPECVERSION: "1.0",
        h.CE_TIME: datetime.now(UTC).isoformat(),
        h.CE_CONTENT_TYPE: "application/json",
        **(headers or {}),
    }
    return OutgoingMessage(destination, json.dumps({"n": n}).encode(), wire, key)


def _seen(delivery: Delivery) -> Seen:
    n = json.loads(delivery.body)["n"]
    return Seen(int(n), delivery.attempt, delivery.key, dict(delivery.headers))


@dataclass
class _Open:
    transports: list[Transport] = field(default_factory=list)
    consumers: list[Consumer] = field(default_factory=list)


TransportFactory = Callable[[], Awaitable[Transport]]


def _acking(got: Collector[Seen]) -> Callable[[Delivery], Awaitable[None]]:
    async def handle(delivery: Delivery) -> None:
        got.add(_seen(delivery))
        await delivery.ack()

    return handle


class TransportKit:
    """The transport-level kit; subclass it and define a ``target`` fixture."""

    pytestmark = [pytest.mark.asyncio]

    @pytest.fixture
    def target(self) -> ConformanceTarget:
        """Override in the subclass: the transport under test."""
        raise NotImplementedError("define a 'target' fixture returning ConformanceTarget")

    @pytest.fixture
    async def transports(self, target: ConformanceTarget) -> AsyncIterator[TransportFactory]:
        """``await transports()``: a new connected transport; all are closed after the test."""
        opened = _Open()

        async def make() -> Transport:
            transport = target.make_transport()
            opened.transports.append(transport)
            await transport.connect()
            return transport

        yield make
        for transport in reversed(opened.transports):
            await transport.close()

    # -- publish ------------------------------------------------------------------------------

    async def test_publish_returns_after_the_message_is_stored(
        self, target: ConformanceTarget, transports: TransportFactory
    ) -> None:
        """Catches a publish that returns before the broker stored the message (a local
        buffer flushed later, lost when the producer closes): a consumer subscribing only
        after the producer's transport closed must get every message, each once."""
        queue = _queue(_name("stored"))
        n = target.count(20, minimum=5)
        producer = await transports()
        await producer.publish([message(queue, i) for i in range(n)])
        await producer.close()
        got: Collector[Seen] = Collector(target.timeout)
        consumer = await transports()
        await consumer.subscribe(queue, _acking(got), concurrency=4)
        await got.wait_until(lambda items: {s.n for s in items} >= set(range(n)), f"all {n} published messages")
        assert sorted(s.n for s in got.items) == list(range(n)), "lost, duplicated or unexpected messages"

    async def test_publish_reaches_the_groups_subscribed_at_that_time(
        self, target: ConformanceTarget, transports: TransportFactory
    ) -> None:
        """Catches a publish that returns before the message is stored in the topic's groups:
        a group that subscribes after ``publish`` returned must not get it (it was not
        subscribed then), a group subscribed before must."""
        if not target.capabilities.consumer_groups:
            pytest.skip("transport has no consumer groups")
        topic = _name("groups")
        early: Collector[Seen] = Collector(target.timeout)
        late: Collector[Seen] = Collector(target.timeout)
        transport = await transports()
        await transport.subscribe(_topic(topic, "early"), _acking(early), concurrency=1)
        await transport.publish([message(_topic(topic), 1)])
        await transport.subscribe(_topic(topic, "late"), _acking(late), concurrency=1)
        await transport.publish([message(_topic(topic), 2)])
        await early.wait_until(lambda items: {s.n for s in items} >= {1, 2}, "both messages in the early group")
        await late.wait_until(lambda items: 2 in {s.n for s in items}, "the second message in the late group")
        assert sorted(s.n for s in early.items) == [1, 2]
        assert [s.n for s in late.items] == [2], (
            "a group that subscribed after publish() returned got the earlier message: it was not stored yet"
        )

    # -- subscribe ----------------------------------------------------------------------------

    async def test_concurrency_is_bounded_and_reached(
        self, target: ConformanceTarget, transports: TransportFactory
    ) -> None:
        """Catches a consumer that runs more handler calls at once than ``concurrency``, or
        fewer (a prefetch or pool smaller than asked): the peak must equal ``concurrency``."""
        concurrency = 4
        queue = _queue(_name("concurrency"))
        n = concurrency * 3
        gate = PeakGate(concurrency, target.timeout)
        got: Collector[Seen] = Collector(target.timeout)

        async def handle(delivery: Delivery) -> None:
            await gate.hold()
            got.add(_seen(delivery))
            await delivery.ack()

        transport = await transports()
        await transport.publish([message(queue, i) for i in range(n)])
        await transport.subscribe(queue, handle, concurrency=concurrency)
        await got.wait_for(n, timeout=target.timeout * 2)
        assert gate.peak == concurrency, f"peak concurrency {gate.peak}, asked for {concurrency}"
        assert sorted(s.n for s in got.items) == list(range(n))

    async def test_per_key_order_with_random_handler_delays(
        self, target: ConformanceTarget, transports: TransportFactory
    ) -> None:
        """Catches a transport that ignores keys when dispatching (messages of one key run in
        parallel or overtake each other): handlers of random duration, each key's messages
        must run one at a time in publish order."""
        if not target.capabilities.ordering:
            pytest.skip("transport does not declare per-key ordering")
        queue = _queue(_name("order"))
        keys = [f"key-{k}" for k in range(4)]
        per_key = target.count(20)
        rng = random.Random(7)
        delays = [rng.uniform(0, 0.004) for _ in range(per_key * len(keys))]
        running: set[str] = set()
        overlaps: list[str] = []
        got: Collector[Seen] = Collector(target.timeout)

        async def handle(delivery: Delivery) -> None:
            seen = _seen(delivery)
            key = delivery.key or ""
            if key in running:
                overlaps.append(f"{key} #{seen.n}")
            running.add(key)
            try:
                await asyncio.sleep(delays[seen.n % len(delays)])  # handler work of random length
            finally:
                running.discard(key)
            got.add(seen)
            await delivery.ack()

        transport = await transports()
        await transport.subscribe(queue, handle, concurrency=4)
        await transport.publish(
            [message(queue, i * len(keys) + k, key=key) for i in range(per_key) for k, key in enumerate(keys)]
        )
        await got.wait_for(per_key * len(keys))
        assert not overlaps, f"one key ran twice at once: {overlaps[:5]}"
        for k, key in enumerate(keys):
            order = [s.n for s in got.items if s.key == key]
            assert order == [i * len(keys) + k for i in range(per_key)], f"{key} out of order: {order}"

    # -- settling -----------------------------------------------------------------------------

    async def test_ack_settles_for_good(self, target: ConformanceTarget, transports: TransportFactory) -> None:
        """Catches an ack that does not reach the broker (or a broker that re-delivers acked
        messages after a reconnect): after close and resubscribe only a new marker arrives."""
        queue = _queue(_name("ack"))
        n = target.count(10, minimum=5)
        got: Collector[Seen] = Collector(target.timeout)
        first = await transports()
        consumer = await first.subscribe(queue, _acking(got), concurrency=2)
        await first.publish([message(queue, i) for i in range(n)])
        await got.wait_for(n)
        await consumer.stop(target.timeout)
        await first.close()
        again: Collector[Seen] = Collector(target.timeout)
        second = await transports()
        await second.subscribe(queue, _acking(again), concurrency=2)
        await second.publish([message(queue, 1000)])
        await again.wait_until(lambda items: 1000 in {s.n for s in items}, "the marker")
        assert [s.n for s in again.items] == [1000], "acked messages came back after close and resubscribe"
        assert sorted(s.n for s in got.items) == list(range(n))

    async def test_retry_redelivers_with_attempt_and_headers(
        self, target: ConformanceTarget, transports: TransportFactory
    ) -> None:
        """Catches a dropped redelivery (``retry`` that acks and forgets), a redelivery
        without ``attempt + 1`` or without the extra headers, and one that comes back twice."""
        queue = _queue(_name("retry"))
        got: Collector[Seen] = Collector(target.timeout)
        extra = {"x-kit-retry": "yes ✓", "x-kit-note": "second try"}

        async def handle(delivery: Delivery) -> None:
            seen = _seen(delivery)
            got.add(seen)
            if seen.n == 1 and delivery.attempt == 1:
                await delivery.retry(0.0, extra)
            else:
                await delivery.ack()

        transport = await transports()
        await transport.subscribe(queue, handle, concurrency=2)
        await transport.publish([message(queue, 1)])
        await got.wait_until(lambda items: any(s.attempt == 2 for s in items), "the redelivery (attempt 2)")
        await transport.publish([message(queue, 2)])
        await got.wait_until(lambda items: 2 in {s.n for s in items}, "the marker sent after the redelivery")
        redelivered = [s for s in got.items if s.n == 1]
        assert [s.attempt for s in redelivered] == [1, 2], f"attempts seen: {[s.attempt for s in redelivered]}"
        for name, value in extra.items():
            assert redelivered[1].headers.get(name) == value, f"retry header {name} not carried to the redelivery"

    async def test_unsettled_delivery_is_redelivered(
        self, target: ConformanceTarget, transports: TransportFactory
    ) -> None:
        """Catches a transport that acks on receipt (before the handler returned): a handler
        cancelled by the stop grace never settled its delivery, so it must come back."""
        queue = _queue(_name("unsettled"))
        started = asyncio.Event()

        async def hangs(delivery: Delivery) -> None:
            started.set()
            await asyncio.Event().wait()

        transport = await transports()
        consumer = await transport.subscribe(queue, hangs, concurrency=1)
        await transport.publish([message(queue, 1)])
        await asyncio.wait_for(started.wait(), target.timeout)
        await consumer.stop(0.05)
        again: Collector[Seen] = Collector(target.timeout)
        await transport.subscribe(queue, _acking(again), concurrency=1)
        assert [s.n for s in await again.wait_for(1)] == [1]

    # -- lifecycle ----------------------------------------------------------------------------

    async def test_stop_lets_a_running_handler_finish(
        self, target: ConformanceTarget, transports: TransportFactory
    ) -> None:
        """Catches ``stop(grace)`` that cancels running handlers at once (or returns while one
        still runs): the handler is released only well into the stop, then acks; stop waits
        for it, and the message does not come back."""
        queue = _queue(_name("stop"))
        started = asyncio.Event()
        release = asyncio.Event()
        outcome: list[str] = []

        async def slow(delivery: Delivery) -> None:
            started.set()
            try:
                await release.wait()
            except asyncio.CancelledError:
                outcome.append("cancelled")
                raise
            await delivery.ack()
            outcome.append("acked")

        transport = await transports()
        consumer = await transport.subscribe(queue, slow, concurrency=1)
        await transport.publish([message(queue, 1)])
        await asyncio.wait_for(started.wait(), target.timeout)
        stopping = asyncio.ensure_future(consumer.stop(target.timeout))
        # Nothing to wait for but time: stop() must not return while the handler still runs.
        done, _ = await asyncio.wait({stopping}, timeout=min(1.0, target.timeout / 4))
        assert not done, f"stop() returned while a handler was still running (handler: {outcome or 'running'})"
        assert outcome == [], f"the running handler was {outcome[0]} before it was released"
        release.set()
        await asyncio.wait_for(stopping, target.timeout)
        assert outcome == ["acked"]
        await consumer.stop(target.timeout)  # idempotent
        again: Collector[Seen] = Collector(target.timeout)
        await transport.subscribe(queue, _acking(again), concurrency=1)
        await transport.publish([message(queue, 2)])
        await again.wait_until(lambda items: 2 in {s.n for s in items}, "the marker")
        assert [s.n for s in again.items] == [2], "the message acked during stop() was redelivered"

    async def test_subscribe_refuses_bad_arguments_and_starts_nothing(
        self, target: ConformanceTarget, transports: TransportFactory
    ) -> None:
        """Catches the subscribe guards drifting between adapters: a concurrency that is not an
        int >= 1 must raise ``ConfigurationError`` and a topic without a group
        ``InvalidDestination`` (not a broker error, a hang, or a consumer that started anyway:
        the queue's message must still reach the one valid consumer)."""
        transport = await transports()
        queue = _queue(_name("guards"))
        for bad in (0, -1, True, 1.5):
            with pytest.raises(ConfigurationError, match="concurrency"):
                await transport.subscribe(queue, _acking(Collector(target.timeout)), concurrency=bad)  # type: ignore[arg-type]
        with pytest.raises(InvalidDestination, match="group"):
            await transport.subscribe(_topic(_name("guards")), _acking(Collector(target.timeout)), concurrency=1)
        got: Collector[Seen] = Collector(target.timeout)
        await transport.subscribe(queue, _acking(got), concurrency=1)
        await transport.publish([message(queue, 1)])
        await got.wait_for(1)

    async def test_close_is_idempotent(self, target: ConformanceTarget, transports: TransportFactory) -> None:
        """Catches a ``close`` that raises when called twice, or with consumers running, or on
        a transport that never subscribed; and a ``connect`` that is not idempotent."""
        idle = await transports()
        await idle.connect()
        await idle.close()
        await idle.close()
        busy = await transports()
        got: Collector[Seen] = Collector(target.timeout)
        queue = _queue(_name("close"))
        consumer = await busy.subscribe(queue, _acking(got), concurrency=2)
        await busy.publish([message(queue, 1)])
        await got.wait_for(1)
        await busy.close()
        await busy.close()
        await consumer.stop(0.1)
