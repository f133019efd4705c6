"""The Kafka transport through the Transport contract, against a real broker."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from messagebus_kafka import KafkaTransport

from messagebus.transports import Delivery, Destination, DestinationKind, OutgoingMessage

TIMEOUT = 30.0


def topic(name: str, group: str | None = None) -> Destination:
    return Destination(DestinationKind.TOPIC, name, group)


def queue(name: str) -> Destination:
    return Destination(DestinationKind.QUEUE, name)


def msg(dest: Destination, body: bytes, key: str | None = None, **headers: str) -> OutgoingMessage:
    return OutgoingMessage(Destination(dest.kind, dest.name), body, {"ce-id": body.decode(), **headers}, key)


class Collector:
    """A handler that records deliveries and settles them with a policy."""

    def __init__(self, policy: Callable[[Delivery], Awaitable[None]] | None = None) -> None:
        self.items: list[Delivery] = []
        self.changed = asyncio.Event()
        self._policy = policy

    async def __call__(self, delivery: Delivery) -> None:
        self.items.append(delivery)
        self.changed.set()
        if self._policy is not None:
            await self._policy(delivery)
        else:
            await delivery.ack()

    @property
    def bodies(self) -> list[bytes]:
        return [d.body for d in self.items]

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = TIMEOUT) -> None:
        async def loop() -> None:
            while not predicate():
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(loop(), timeout)


async def test_topic_round_trip_with_headers_key_and_attributes(transport: KafkaTransport, unique: str) -> None:
    dest = topic(unique, "g1")
    got = Collector()
    consumer = await transport.subscribe(dest, got, concurrency=1)
    user_headers = {f"h{i}": f"v{i}" for i in range(40)}
    await transport.publish([msg(dest, b"one", key="k1", **user_headers)])
    await got.wait_for(lambda: len(got.items) == 1)
    d = got.items[0]
    assert d.body == b"one"
    assert d.key == "k1"
    assert d.attempt == 1
    assert d.headers["ce-id"] == "one"
    assert all(d.headers[k] == v for k, v in user_headers.items())
    assert ("ce_id", b"one") in d.raw.headers  # CloudEvents Kafka binding on the wire
    attrs = d.messaging_attributes
    assert attrs["messaging.kafka.message.key"] == "k1"
    assert attrs["messaging.kafka.consumer.group"] == f"{unique}.g1"
    assert attrs["messaging.kafka.offset"] == d.raw.offset
    assert attrs["messaging.destination.partition.id"] == str(d.raw.partition)
    await consumer.stop(5)


async def test_queue_keeps_messages_sent_before_consumer(transport: KafkaTransport, unique: str) -> None:
    q = queue(unique)
    await transport.publish([msg(q, f"m{i}".encode()) for i in range(20)])
    got = Collector()
    consumer = await transport.subscribe(q, got, concurrency=4)
    await got.wait_for(lambda: len(got.items) >= 20)
    assert sorted(got.bodies) == sorted(f"m{i}".encode() for i in range(20))
    await consumer.stop(5)


async def test_new_group_starts_at_subscribe_time_then_resumes(transport: KafkaTransport, unique: str) -> None:
    dest = topic(unique, "g")
    await transport.publish([msg(dest, b"before")])  # no group yet: nobody gets it
    got = Collector()
    consumer = await transport.subscribe(dest, got, concurrency=1)
    await transport.publish([msg(dest, b"after1")])
    await got.wait_for(lambda: len(got.items) == 1)
    await consumer.stop(5)
    await transport.publish([msg(dest, b"while-down")])
    got2 = Collector()
    consumer = await transport.subscribe(dest, got2, concurrency=1)
    await got2.wait_for(lambda: len(got2.items) == 1)
    assert got.bodies + got2.bodies == [b"after1", b"while-down"]
    await consumer.stop(5)


async def test_retry_redelivers_with_attempt_and_headers(transport: KafkaTransport, unique: str) -> None:
    dest = topic(unique, "g")

    async def policy(d: Delivery) -> None:
        if d.body == b"r1" and d.attempt < 3:
            await d.retry(0.2, {"messagebus-first-failure": "x"})
        else:
            await d.ack()

    got = Collector(policy)
    consumer = await transport.subscribe(dest, got, concurrency=2)
    await transport.publish([msg(dest, b"r1", key="a"), msg(dest, b"ok", key="b")])
    await got.wait_for(lambda: [d.attempt for d in got.items if d.body == b"r1"] == [1, 2, 3])
    retried = [d for d in got.items if d.body == b"r1"]
    assert retried[-1].headers["messagebus-first-failure"] == "x"
    assert retried[-1].headers["ce-id"] == "r1"
    assert [d.body for d in got.items].count(b"ok") == 1
    await consumer.stop(5)


async def test_unsettled_message_is_redelivered_after_stop(transport: KafkaTransport, unique: str) -> None:
    q = queue(unique)
    await transport.publish([msg(q, f"m{i}".encode(), key="k") for i in range(3)])
    started = asyncio.Event()

    async def hang_on_m1(d: Delivery) -> None:
        if d.body == b"m1":
            started.set()
            await asyncio.Event().wait()  # until cancelled by stop
        await d.ack()

    first = Collector(hang_on_m1)
    consumer = await transport.subscribe(q, first, concurrency=1)
    await asyncio.wait_for(started.wait(), TIMEOUT)
    await consumer.stop(0.1)
    second = Collector()
    consumer = await transport.subscribe(q, second, concurrency=1)
    await second.wait_for(lambda: len(second.items) >= 2)
    assert second.bodies == [b"m1", b"m2"]
    await consumer.stop(5)


async def test_a_delayed_retry_does_not_hold_back_later_messages(transport: KafkaTransport, unique: str) -> None:
    dest = topic(unique, "g")

    async def delay_first(d: Delivery) -> None:
        if d.body == b"slow" and d.attempt == 1:
            await d.retry(2.0, {})
        else:
            await d.ack()

    got = Collector(delay_first)
    consumer = await transport.subscribe(dest, got, concurrency=1)
    await transport.publish([msg(dest, b"slow", key="k")])
    await got.wait_for(lambda: len(got.items) == 1)
    await transport.publish([msg(dest, f"fast{i}".encode(), key="k") for i in range(5)])
    await got.wait_for(lambda: [d.attempt for d in got.items if d.body == b"slow"] == [1, 2])
    order = [(d.body, d.attempt) for d in got.items]
    # The same key and partition: the five later messages ran while the retry waited.
    assert order.index((b"slow", 2)) > max(order.index((f"fast{i}".encode(), 1)) for i in range(5))
    await consumer.stop(5)


async def test_a_retry_waiting_for_its_due_time_survives_a_stop(transport: KafkaTransport, unique: str) -> None:
    dest = topic(unique, "g")
    scheduled = asyncio.Event()

    async def retry_later(d: Delivery) -> None:
        if d.attempt == 1:
            await d.retry(1.0, {"x-why": "later"})
            scheduled.set()
        else:
            await d.ack()

    first = Collector(retry_later)
    consumer = await transport.subscribe(dest, first, concurrency=2)
    await transport.publish([msg(dest, b"r")])
    await asyncio.wait_for(scheduled.wait(), TIMEOUT)
    await consumer.stop(5)  # the retry record may be fetched and held, but never settled
    second = Collector()
    consumer = await transport.subscribe(dest, second, concurrency=2)
    await second.wait_for(lambda: len(second.items) >= 1)
    assert [(d.body, d.attempt, d.headers.get("x-why")) for d in second.items] == [(b"r", 2, "later")]
    await consumer.stop(5)


async def test_bulk_publish_puts_each_key_where_a_single_send_puts_it(kafka_url: str, unique: str) -> None:
    # A publish of many messages fills record batches itself; a publish of one uses the
    # producer's send. Both must pick the same partition for a key, or per-key order breaks.
    t = KafkaTransport.from_url(kafka_url + ("&" if "?" in kafka_url else "?") + "partitions=4")
    await t.connect()
    try:
        q = queue(unique)
        keys = [f"key-{k}" for k in range(12)]
        await t.publish([msg(q, f"{k}:bulk-{i}".encode(), key=k) for i in range(5) for k in keys])
        for k in keys:
            await t.publish([msg(q, f"{k}:single".encode(), key=k)])
        got = Collector()
        consumer = await t.subscribe(q, got, concurrency=1)
        await got.wait_for(lambda: len(got.items) >= 6 * len(keys))
        assert len(got.items) == 6 * len(keys)
        for k in keys:
            mine = [d for d in got.items if d.key == k]
            assert {d.raw.partition for d in mine} == {mine[0].raw.partition}, f"{k} is split across partitions"
            assert [d.body.split(b":")[1] for d in mine] == [*(f"bulk-{i}".encode() for i in range(5)), b"single"]
        assert len({d.raw.partition for d in got.items}) > 1, "12 keys all hashed to one of 4 partitions?"
        await consumer.stop(5)
    finally:
        await t.close()


async def test_bulk_publish_of_keyless_messages_moves_on_when_a_batch_is_full(kafka_url: str, unique: str) -> None:
    # Small batches: 300 keyless messages fill many, which go to the partitions in turn;
    # every message arrives exactly once.
    options = "partitions=3&max_batch_size=2048"
    t = KafkaTransport.from_url(kafka_url + ("&" if "?" in kafka_url else "?") + options)
    await t.connect()
    try:
        q = queue(unique)
        await t.publish([msg(q, f"m{i:03d}".encode()) for i in range(300)])
        got = Collector()
        consumer = await t.subscribe(q, got, concurrency=4)
        await got.wait_for(lambda: len(got.items) >= 300)
        assert sorted(got.bodies) == [f"m{i:03d}".encode() for i in range(300)]
        assert {d.raw.partition for d in got.items} == {0, 1, 2}
        await consumer.stop(5)
    finally:
        await t.close()
