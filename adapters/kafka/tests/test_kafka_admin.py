"""BrokerAdmin on Kafka: dead-letter topics, lag, a replay into one group, deleting a group."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from messagebus_kafka import KafkaTransport
from test_kafka_transport import TIMEOUT, Collector, msg, queue, topic

from messagebus import Bus, InvalidDestination, Retry
from messagebus.transports import BrokerAdmin, Delivery, Destination, OutgoingMessage


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = TIMEOUT) -> None:
    """Poll a broker-side condition (the broker has no event for it) until it holds."""

    async def loop() -> None:
        while not await check():  # noqa: ASYNC110 (the broker has no event for it)
            await asyncio.sleep(0.05)

    await asyncio.wait_for(loop(), timeout)


async def topics_of(transport: KafkaTransport) -> set[str]:
    return set(await transport.connection.require()[1].admin.list_topics())


async def joined_then_stopped(transport: KafkaTransport, source: Destination) -> None:
    """Subscribe ``source`` until its group has joined (committing its start offsets), then stop."""
    consumer = await transport.subscribe(source, Collector(), concurrency=1)
    await asyncio.wait_for(consumer.ready(), TIMEOUT)
    await consumer.stop(5)


async def test_a_failing_handlers_dead_letter_queue_is_listed(
    transport: KafkaTransport, kafka_url: str, unique: str
) -> None:
    """Bug caught: dead_letter_queues missing the DLQ topic the core wrote, or listing topics
    that are not dead-letter queues (the topic, the group's retry topic)."""
    assert isinstance(transport, BrokerAdmin)
    bus = Bus.from_url(kafka_url, service="svc", retry=Retry(max_attempts=1))
    failed = asyncio.Event()

    @bus.subscribe(unique, group="g")
    async def handle(item: dict[str, int]) -> None:
        failed.set()
        raise RuntimeError("handler bug")

    async with bus:
        await bus.publish(unique, {"n": 1})
        await asyncio.wait_for(failed.wait(), TIMEOUT)
        await eventually(lambda: _listed(transport, f"{unique}.g.dlq"))
    listed = await transport.dead_letter_queues()
    assert listed == sorted(listed)
    assert unique not in listed and f"{unique}.g.retry" not in listed
    assert {unique, f"{unique}.g.retry"} <= await topics_of(transport)


async def _listed(transport: KafkaTransport, name: str) -> bool:
    return name in await transport.dead_letter_queues()


async def test_depth_of_a_queue_is_its_lag_and_asking_creates_nothing(transport: KafkaTransport, unique: str) -> None:
    """Bug caught: depth creating the queue it was asked about (Metadata auto-creation), not
    counting a queue nobody consumed yet (its group starts at the beginning) or its retry
    topic, or ignoring the group's committed offsets; a replay into a queue lost or not
    delivered as a first attempt."""
    q = queue(unique)
    assert await transport.depth(q) == 0
    assert not {unique, f"{unique}.retry"} & await topics_of(transport)
    await transport.publish([msg(q, f"m{i}".encode()) for i in range(5)])
    assert await transport.depth(q) == 5
    replay = OutgoingMessage(q, b"replayed", {"ce-id": "replayed", "messagebus-attempt": "3"}, "k")
    await transport.publish_to_group(q, [replay])
    assert await transport.depth(q) == 6
    got = Collector()
    consumer = await transport.subscribe(q, got, concurrency=4)
    await got.wait_for(lambda: len(got.items) == 6)
    assert [(d.attempt, d.key) for d in got.items if d.body == b"replayed"] == [(1, "k")]
    await consumer.stop(5)  # commits what was acked
    assert await transport.depth(q) == 0
    await transport.publish([msg(q, f"n{i}".encode()) for i in range(3)])
    assert await transport.depth(q) == 3


async def test_depth_of_a_group_counts_from_its_commits(transport: KafkaTransport, unique: str) -> None:
    """Bug caught: a topic group's depth counting the topic's history before the group
    existed (a new group starts at the end), or a missing group or topic not being 0."""
    assert await transport.depth(topic(unique, "g")) == 0
    assert unique not in await topics_of(transport)
    await transport.publish([msg(topic(unique), b"history")])
    await joined_then_stopped(transport, topic(unique, "g"))
    await transport.publish([msg(topic(unique), f"m{i}".encode()) for i in range(4)])
    assert await transport.depth(topic(unique, "g")) == 4
    assert await transport.depth(topic(unique, "never")) == 0


async def test_depth_of_a_pattern_group_and_a_replay_into_it(transport: KafkaTransport, unique: str) -> None:
    """Bug caught: a pattern group's depth not summed over the topics its regex matches (and
    its retry topic), or a replay into a pattern group losing the topic it names."""
    await transport.publish([msg(topic(f"{unique}.a"), b"old"), msg(topic(f"{unique}.b"), b"old")])
    source = topic(f"{unique}.*", "g")
    await joined_then_stopped(transport, source)
    await transport.publish([msg(topic(f"{unique}.a"), b"a1"), msg(topic(f"{unique}.b"), b"b1")])
    await transport.publish([msg(topic(f"{unique}.b"), b"b2"), msg(topic(unique), b"not matched")])
    assert await transport.depth(source) == 3
    await transport.publish_to_group(source, [msg(topic(f"{unique}.b"), b"replayed")])
    assert await transport.depth(source) == 4
    got = Collector()
    consumer = await transport.subscribe(source, got, concurrency=1)
    await got.wait_for(lambda: b"replayed" in got.bodies)
    await consumer.stop(5)
    assert [(d.topic, d.attempt) for d in got.items if d.body == b"replayed"] == [(f"{unique}.b", 1)]


async def test_publish_to_group_reaches_only_that_group_as_a_first_attempt(
    transport: KafkaTransport, unique: str
) -> None:
    """Bug caught: a replay going to the topic (every group gets it) instead of the group's
    retry topic, arriving as attempt 2 (the retry topic's default) or with the dead letter's
    attempt, losing key or headers, or lost when the group's consumer was not running."""
    a, b = topic(unique, "a"), topic(unique, "b")
    got_b = Collector()
    consumer_b = await transport.subscribe(b, got_b, concurrency=1)
    await joined_then_stopped(transport, a)
    headers = {"ce-id": "replayed", "h": "v", "messagebus-attempt": "4"}
    await transport.publish_to_group(a, [OutgoingMessage(topic(unique), b"r1", headers, "k1")])
    assert await transport.depth(a) == 1  # stored while the group's consumer is down
    assert await transport.depth(b) == 0
    got_a = Collector()
    consumer_a = await transport.subscribe(a, got_a, concurrency=1)
    await got_a.wait_for(lambda: len(got_a.items) == 1)
    await transport.publish_to_group(a, [OutgoingMessage(topic(unique), b"r2", {"ce-id": "r2"}, "k1")])
    await transport.publish([msg(topic(unique), b"after", key="k1")])  # same key: after the replays in b
    await got_a.wait_for(lambda: sorted(got_a.bodies) == [b"after", b"r1", b"r2"])
    await got_b.wait_for(lambda: bool(got_b.items))
    assert got_b.bodies == [b"after"]
    replayed = [d for d in got_a.items if d.body != b"after"]
    assert [(d.attempt, d.key) for d in replayed] == [(1, "k1"), (1, "k1")]
    assert replayed[0].headers["h"] == "v" and replayed[0].headers["ce-id"] == "replayed"
    assert "messagebus-attempt" not in replayed[0].headers
    await consumer_a.stop(5)
    await consumer_b.stop(5)
    assert await transport.depth(a) == 0


async def test_delete_group_removes_only_that_group(transport: KafkaTransport, unique: str) -> None:
    """Bug caught: delete_group leaving the group's committed offsets, retry topic or
    dead-letter queue behind, failing on a second call, or touching another group."""
    a, b = topic(unique, "a"), topic(unique, "b")
    await joined_then_stopped(transport, a)
    await joined_then_stopped(transport, b)
    await transport.publish([msg(topic(unique), f"m{i}".encode()) for i in range(3)])
    await transport.publish([msg(queue(f"{unique}.a.dlq"), b"dead a"), msg(queue(f"{unique}.b.dlq"), b"dead b")])
    await transport.publish_to_group(a, [OutgoingMessage(topic(unique), b"r", {"ce-id": "r"})])
    await transport.publish_to_group(queue(f"{unique}.a.dlq"), [msg(queue(f"{unique}.a.dlq"), b"dead again")])
    assert await transport.depth(a) == 4
    await transport.delete_group(a)
    assert await transport.depth(a) == 0
    assert f"{unique}.a.dlq" not in await transport.dead_letter_queues()
    left = await topics_of(transport)
    assert not {f"{unique}.a.retry", f"{unique}.a.dlq", f"{unique}.a.dlq.retry"} & left
    assert {unique, f"{unique}.b.dlq"} <= left
    await transport.delete_group(a)  # idempotent
    await transport.delete_group(topic(unique, "never"))
    assert f"{unique}.b.dlq" in await transport.dead_letter_queues()
    assert await transport.depth(b) == 3
    assert await transport.depth(queue(f"{unique}.b.dlq")) == 1


async def test_a_dead_letter_queue_reader_hands_back_without_undoing_a_later_ack(kafka_url: str, unique: str) -> None:
    """Bug caught: a tool that holds one dead letter and takes the next one of its partition
    (a replay by id) getting the taken one back, because the group's commit cannot pass the
    held record; or the held one lost by the hand-back."""
    t = KafkaTransport.from_url(kafka_url + "&partitions=1")  # both records in one partition
    await t.connect()
    try:
        dlq = queue(f"{unique}.g.dlq")
        await t.publish([msg(dlq, b"held"), msg(dlq, b"taken")])  # keyless: no per-key lane
        forever = asyncio.Event()

        async def hold_or_take(d: Delivery) -> None:
            if d.body == b"taken":
                await d.ack()
            else:
                await forever.wait()

        got = Collector(hold_or_take)
        consumer = await t.subscribe(dlq, got, concurrency=2)
        await got.wait_for(lambda: len(got.items) == 2)
        await consumer.stop(0.0)  # cancels the held one: handed back
        assert await t.depth(dlq) == 1
        again = Collector()
        consumer = await t.subscribe(dlq, again, concurrency=2)
        await again.wait_for(lambda: len(again.items) == 1)
        await consumer.stop(5)
        assert [(d.body, d.attempt) for d in again.items] == [(b"held", 2)]
        assert await t.depth(dlq) == 0
    finally:
        await t.close()


async def test_admin_calls_refuse_a_topic_without_a_group(transport: KafkaTransport, unique: str) -> None:
    """Bug caught: a group-less topic taken for a queue (depth and publish_to_group reading
    or writing the queue of the same name), or delete_group deleting a queue's parts,
    instead of a clear error naming what is allowed."""
    with pytest.raises(InvalidDestination, match="needs a queue or a topic's group, got the topic"):
        await transport.publish_to_group(topic(unique), [msg(topic(unique), b"x")])
    with pytest.raises(InvalidDestination, match="needs a queue or a topic's group, got the topic"):
        await transport.depth(topic(unique))
    with pytest.raises(InvalidDestination, match="delete_group needs a topic's group, got the queue"):
        await transport.delete_group(queue(unique))
    assert unique not in await topics_of(transport)
