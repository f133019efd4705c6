"""Issue 17 on Kafka: pattern subscriptions, reply queues (no group join, deleted on stop),
delayed records on the retry topic. The generic behaviour is in the conformance kit; these
are the Kafka-specific parts."""

from __future__ import annotations

import asyncio
import itertools
import re
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from messagebus_kafka import KafkaTransport, physical_names
from messagebus_kafka._topology import pattern_regex
from test_kafka_transport import Collector, msg, queue, topic

from messagebus import Bus
from messagebus.transports import Delivery, Destination, DestinationKind, matches_pattern

TIMEOUT = 30.0


async def topic_names(kafka_url: str) -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=KafkaTransport.from_url(kafka_url).bootstrap_servers)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


def test_pattern_regex_matches_like_the_core_and_skips_internal_topics() -> None:
    """Bug caught: a regex that disagrees with matches_pattern (``#`` matching nothing, ``*``
    spanning two segments), or a ``orders.#`` group reading retry topics, dead letters or
    other buses' reply queues (each message would come twice, or replies would be stolen)."""
    names = ["a", "b", "c"]
    for n in range(1, 5):
        for pattern in map(".".join, itertools.product(["a", "*", "#"], repeat=n)):
            regex = re.compile(pattern_regex(pattern, "own.retry"))
            for m in range(1, 5):
                for name in map(".".join, itertools.product(names, repeat=m)):
                    assert bool(regex.match(name)) == matches_pattern(pattern, name), (pattern, name)
    source = Destination(DestinationKind.TOPIC, "orders.#", "g")
    regex = re.compile(physical_names(source)["pattern"])
    assert physical_names(source)["dead_letter"] == "orders._hash_.g.dlq"
    for internal in ("orders.eu.billing.retry", "orders._hash_.g.dlq", "orders.svc.replies.0123456789ab"):
        assert not regex.match(internal), internal
    assert regex.match("orders._hash_.g.retry")  # the group's own retry topic
    assert regex.match("orders") and regex.match("orders.eu.paid")


async def test_pattern_picks_up_a_topic_created_after_start(transport: KafkaTransport, unique: str) -> None:
    """Bug caught: the pattern evaluated once at subscribe (or on aiokafka's 5-minute metadata
    refresh), so a topic made later is never read; or deliveries naming the pattern instead of
    the real topic."""
    got = Collector()
    consumer = await transport.subscribe(topic(f"{unique}.*", "g"), got, concurrency=1)
    await asyncio.wait_for(consumer.ready(), TIMEOUT)  # type: ignore[attr-defined]
    later = topic(f"{unique}.created-later")
    await transport.publish([msg(later, b"new")])  # the publish makes the topic
    await got.wait_for(lambda: len(got.items) == 1, timeout=TIMEOUT)
    assert got.items[0].body == b"new"
    assert got.items[0].topic == f"{unique}.created-later"
    await consumer.stop(5)


async def test_retry_of_a_pattern_delivery_keeps_the_real_topic(transport: KafkaTransport, unique: str) -> None:
    """Bug caught: the retried record (read from the group's retry topic) delivered with the
    retry topic or no topic, so Envelope.destination is wrong on attempt 2; or the adapter's
    topic header leaking into the message's headers."""
    await transport.publish([msg(topic(f"{unique}.eu"), b"warm-up")])  # exists before subscribe

    async def retry_once(d: Delivery) -> None:
        await (d.retry(0.1, {}) if d.attempt == 1 else d.ack())

    got = Collector(retry_once)
    consumer = await transport.subscribe(topic(f"{unique}.*", "g"), got, concurrency=2)
    await asyncio.wait_for(consumer.ready(), TIMEOUT)  # type: ignore[attr-defined]
    await transport.publish([msg(topic(f"{unique}.eu"), b"m")])
    await got.wait_for(lambda: [d.attempt for d in got.items] == [1, 2])
    assert [d.topic for d in got.items] == [f"{unique}.eu", f"{unique}.eu"]
    assert got.items[1].raw.topic == f"{unique}._star_.g.retry"
    assert "messagebus-topic" not in dict(got.items[1].headers)
    await consumer.stop(5)


async def test_reply_queue_is_assigned_at_once_and_acks_commit(transport: KafkaTransport, unique: str) -> None:
    """Bug caught: the reply queue's consumer joining a group (the first request waits for
    the join, seconds on some brokers), or manual assignment losing ack = commit (a new
    consumer of the queue would get the acked reply again)."""
    reply_queue = queue(f"{unique}.replies.0123456789ab")
    got = Collector()
    consumer = await transport.subscribe(reply_queue, got, concurrency=1)
    assert consumer.assignment  # type: ignore[attr-defined]  # no join to wait for
    await transport.publish([msg(reply_queue, b"first")])
    await got.wait_for(lambda: len(got.items) == 1)
    await consumer.stop(5)
    again = Collector()
    consumer = await transport.subscribe(reply_queue, again, concurrency=1)
    await transport.publish([msg(reply_queue, b"second")])
    await again.wait_for(lambda: len(again.items) >= 1)
    assert again.bodies[0] == b"second"
    await consumer.stop(5)


async def test_reply_topic_is_deleted_when_the_bus_stops(kafka_url: str, unique: str) -> None:
    """Bug caught: delete_queue missing or deleting the wrong names, so every bus that ever
    made a request leaves a topic (and its retry topic) behind on the cluster."""
    server = Bus.from_url(kafka_url, service="server")

    @server.consume(f"{unique}.rpc")
    async def answer(n: int) -> int:
        return n + 1

    client = Bus.from_url(kafka_url, service=unique)
    await server.start()
    await client.start()
    try:
        assert await client.request(f"{unique}.rpc", 41, reply_type=int, timeout=TIMEOUT) == 42
    finally:
        await client.stop()
        await server.stop()
    leftovers = {t for t in await topic_names(kafka_url) if t.startswith(f"{unique}.replies.")}
    assert leftovers == set()
    transport = KafkaTransport.from_url(kafka_url)
    await transport.connect()
    try:
        await transport.delete_queue(f"{unique}.replies.0123456789ab")  # never made: no error
    finally:
        await transport.close()


async def test_long_delay_does_not_hold_back_a_shorter_one_behind_it(transport: KafkaTransport, unique: str) -> None:
    """Bug caught: the retry partition paused while its first record waits, so a 1-second
    retry (or delay=) behind a 10-minute one in the same retry partition waits 10 minutes."""
    delays = {b"long": 600.0, b"short": 0.5}
    long_held = asyncio.Event()

    async def delay_once(d: Delivery) -> None:
        if d.body == b"short" and d.attempt == 1:
            # The long one's retry record is fetched and held before the short one is written.
            await asyncio.wait_for(long_held.wait(), TIMEOUT)
        await (d.retry(delays[d.body], {}) if d.attempt == 1 else d.ack())

    got = Collector(delay_once)
    q = queue(unique)
    consumer: Any = await transport.subscribe(q, got, concurrency=2)
    hold = consumer._hold

    def spy(delivery: Delivery, due_ms: float) -> None:
        hold(delivery, due_ms)
        long_held.set()

    consumer._hold = spy
    # One key: one main partition, so one retry partition, long first.
    await transport.publish([msg(q, b"long", key="k"), msg(q, b"short", key="k")])
    await got.wait_for(lambda: any(d.attempt == 2 for d in got.items))
    assert [(d.body, d.attempt) for d in got.items] == [(b"long", 1), (b"short", 1), (b"short", 2)]
    await consumer.stop(5)
