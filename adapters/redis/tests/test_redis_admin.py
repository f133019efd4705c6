"""BrokerAdmin on Redis (the shared server): the dead-letter streams listed, a queue's and a
group's depth from the consumer group's lag, a replay reaching one group through its retry
stream, and a group deleted with its retry and dead-letter keys."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import redis.asyncio as aredis
from messagebus_redis import RedisTransport, _admin, physical_names
from messagebus_redis._options import RedisOptions
from redis_helpers import fresh_prefix, keys_of, url_for

from messagebus import Bus, InvalidDestination, Retry
from messagebus.testing import Collector
from messagebus.testing.transport_kit import message
from messagebus.transports import BrokerAdmin, Delivery, Destination, DestinationKind

QUEUE = DestinationKind.QUEUE
TOPIC = DestinationKind.TOPIC
TIMEOUT = 30.0


@pytest.fixture
def prefix() -> str:
    return fresh_prefix()


@pytest.fixture
async def transport(redis_url: str, prefix: str) -> AsyncIterator[RedisTransport]:
    transport = RedisTransport.from_url(url_for(redis_url, prefix, "block_time=0.2"))
    await transport.connect()
    yield transport
    await transport.close()


def keys(destination: Destination, prefix: str) -> dict[str, str]:
    return physical_names(destination, RedisOptions.model_validate({"prefix": prefix}))


async def until(check: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not await check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


def collecting(got: Collector[Delivery]) -> Callable[[Delivery], Awaitable[None]]:
    async def handle(delivery: Delivery) -> None:
        got.add(delivery)
        await delivery.ack()

    return handle


async def read_one(transport: RedisTransport, source: Destination, target: Destination) -> None:
    """Consume ``source`` until message 0, published to ``target``, is acked, then stop: the
    group exists and has read its stream up to that entry."""
    got: Collector[Delivery] = Collector(TIMEOUT)
    consumer = await transport.subscribe(source, collecting(got), concurrency=1)
    await transport.publish([message(target, 0)])
    await got.wait_for(1)
    await consumer.stop(1.0)


def numbers(deliveries: list[Delivery]) -> list[int]:
    return [json.loads(d.body)["n"] for d in deliveries]


async def test_failing_handlers_dead_letter_queues_are_listed_and_nothing_else(
    redis_url: str, prefix: str, raw: aredis.Redis, transport: RedisTransport
) -> None:
    """Bug caught: a dead-letter stream missing from the list (a queue's or a group's), or
    other keys listed as dead letters: the queues and topics themselves, a dead-letter
    queue's retry stream, a non-stream key named like one, another prefix's."""
    assert isinstance(transport, BrokerAdmin)
    bus = Bus.from_url(url_for(redis_url, prefix), service="dlq", retry=Retry(max_attempts=1))

    @bus.consume("jobs")
    async def job(item: dict[str, int]) -> None:
        raise RuntimeError("fails for good")

    @bus.subscribe("orders", group="billing")
    async def bill(item: dict[str, int]) -> None:
        raise RuntimeError("fails for good")

    jobs_dlq = keys(Destination(QUEUE, "jobs"), prefix)["dead_letter"]
    orders_dlq = keys(Destination(TOPIC, "orders", "billing"), prefix)["dead_letter"]
    async with bus:
        await bus.send("jobs", {"n": 1})
        await bus.publish("orders", {"n": 2})

        async def both_dead() -> bool:
            return bool(await raw.xlen(jobs_dlq)) and bool(await raw.xlen(orders_dlq))

        await until(both_dead, "both messages dead-lettered")
    await raw.xadd(f"{jobs_dlq}:retry", {"f": "v"})
    await raw.set(f"{prefix}q:{{fake.dlq}}", "not a stream")
    await raw.xadd(f"{fresh_prefix()}q:{{other.dlq}}", {"f": "v"})
    assert await transport.dead_letter_queues() == ["jobs.dlq", "orders.billing.dlq"]


async def test_depth_counts_stored_messages_of_a_queue_and_a_group_and_creates_nothing(
    prefix: str, raw: aredis.Redis, transport: RedisTransport
) -> None:
    """Bug caught: depth reading 0 for a queue whose group does not exist yet (its messages
    wait for the first consumer), counting a group's delivered entries or another group's,
    or creating the stream or group it was asked about."""
    queue, topic = Destination(QUEUE, "work"), Destination(TOPIC, "ev")
    group, other = Destination(TOPIC, "ev", "g"), Destination(TOPIC, "ev", "other")
    assert await transport.depth(queue) == 0
    assert await transport.depth(group) == 0
    assert await keys_of(raw, prefix) == set(), "asking for a depth created keys"
    await transport.publish([message(queue, i) for i in range(3)])
    assert await transport.depth(queue) == 3
    await read_one(transport, group, topic)
    await transport.publish([message(topic, i) for i in range(1, 5)])
    assert await transport.depth(group) == 4
    assert await transport.depth(other) == 0, "a group that does not exist has a depth"
    assert [g["name"] for g in await raw.xinfo_groups(keys(other, prefix)["stream"])] == [b"g"]


async def test_depth_counts_when_redis_cannot_tell_the_lag(
    prefix: str, raw: aredis.Redis, transport: RedisTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bug caught: depth wrong when XINFO's lag is unknown (an entry the group has not read
    was deleted): it counts the entries after the group's position, page by page, plus the
    retries waiting in the due set."""
    monkeypatch.setattr(_admin, "_PAGE", 2)
    queue = Destination(QUEUE, "work")
    names = keys(queue, prefix)
    await read_one(transport, queue, queue)
    await transport.publish([message(queue, i) for i in range(1, 7)])
    second = (await raw.xrange(names["stream"], count=2))[1][0]
    await raw.xdel(names["stream"], second)  # a hole in what the group has not read
    [info] = await raw.xinfo_groups(names["stream"])
    assert info["lag"] is None, "Redis told the lag: this test no longer covers the count"
    assert await transport.depth(queue) == 5
    await raw.zadd(names["due"], {"a delayed retry": time.time() * 1000 + 60_000})
    assert await transport.depth(queue) == 6


async def test_publish_to_group_reaches_only_that_group_as_a_first_attempt(
    prefix: str, raw: aredis.Redis, transport: RedisTransport
) -> None:
    """Bug caught: a replay reaching every group of the topic (added to the topic's stream),
    arriving as a later attempt or without its key and headers, lost when the group's
    consumer is not running, or a group that did not exist yet missing what the topic gets
    after the replay (the replay must create it)."""
    topic = Destination(TOPIC, "ev")
    a, b, fresh = Destination(TOPIC, "ev", "a"), Destination(TOPIC, "ev", "b"), Destination(TOPIC, "ev", "new")
    got_a: Collector[Delivery] = Collector(TIMEOUT)
    got_b: Collector[Delivery] = Collector(TIMEOUT)
    await transport.subscribe(a, collecting(got_a), concurrency=1)
    consumer_b = await transport.subscribe(b, collecting(got_b), concurrency=1)
    stale = {"x-trace": "t1", "messagebus-attempt": "3"}  # a stale count must not survive
    await transport.publish_to_group(b, [message(topic, 1, key="k1", headers=stale)])
    await transport.publish([message(topic, 2)])  # a marker every group gets after the replay
    assert numbers(await got_a.wait_for(1)) == [2]
    replayed = next(d for d in await got_b.wait_for(2) if numbers([d]) == [1])
    assert (replayed.attempt, replayed.key, replayed.headers.get("x-trace")) == (1, "k1", "t1")
    assert await raw.xlen(keys(topic, prefix)["stream"]) == 1, "the replay went to the topic's stream"

    await consumer_b.stop(1.0)
    await transport.publish_to_group(b, [message(topic, 3)])
    assert await transport.depth(b) == 1
    assert await transport.depth(a) == 0
    got_b2: Collector[Delivery] = Collector(TIMEOUT)
    await transport.subscribe(b, collecting(got_b2), concurrency=1)
    [late] = await got_b2.wait_for(1)
    assert (numbers([late]), late.attempt) == ([3], 1)

    await transport.publish_to_group(fresh, [message(topic, 4)])
    await transport.publish([message(topic, 5)])
    got_new: Collector[Delivery] = Collector(TIMEOUT)
    await transport.subscribe(fresh, collecting(got_new), concurrency=1)
    assert sorted(numbers(await got_new.wait_for(2))) == [4, 5]
    assert numbers(got_a.items) == [2, 5], "another group got a replay"


async def test_delete_group_removes_its_keys_only_and_is_idempotent(
    prefix: str, raw: aredis.Redis, transport: RedisTransport
) -> None:
    """Bug caught: delete_group leaving the consumer group, its retry stream, due set or
    dead-letter queue behind, touching another group's messages or the topic's stream,
    failing on a second call or on a topic that does not exist."""
    topic = Destination(TOPIC, "ev")
    gone, kept = Destination(TOPIC, "ev", "gone"), Destination(TOPIC, "ev", "kept")
    for group in (gone, kept):
        consumer = await transport.subscribe(group, collecting(Collector(TIMEOUT)), concurrency=1)
        await consumer.stop(1.0)
    await transport.publish([message(topic, i) for i in range(3)])
    await transport.publish(
        [message(Destination(QUEUE, "ev.gone.dlq"), 9), message(Destination(QUEUE, "ev.kept.dlq"), 9)]
    )
    await transport.publish_to_group(gone, [message(topic, 7)])
    names = keys(gone, prefix)
    await raw.zadd(names["due"], {"a delayed retry": 1})
    assert await transport.depth(gone) == 5
    assert await transport.dead_letter_queues() == ["ev.gone.dlq", "ev.kept.dlq"]

    await transport.delete_group(gone)
    await transport.delete_group(gone)  # idempotent
    await transport.delete_group(Destination(TOPIC, "no-such-topic", "g"))
    assert await transport.depth(gone) == 0
    assert await transport.dead_letter_queues() == ["ev.kept.dlq"]
    assert await keys_of(raw, prefix) & {names["retry"], names["due"], names["dead_letter"]} == set()
    assert [g["name"] for g in await raw.xinfo_groups(names["stream"])] == [b"kept"]
    assert await transport.depth(kept) == 3
    got: Collector[Delivery] = Collector(TIMEOUT)
    await transport.subscribe(kept, collecting(got), concurrency=1)
    assert sorted(numbers(await got.wait_for(3))) == [0, 1, 2]


async def test_publish_to_group_of_a_queue_stores_it_in_the_queue_as_a_first_attempt(
    prefix: str, raw: aredis.Redis, transport: RedisTransport
) -> None:
    """Bug caught: a queue's replay refused or sent elsewhere than the queue (its dead
    letters could not be replayed), or keeping a stale attempt count."""
    queue = Destination(QUEUE, "jobs")
    stale = {"x-trace": "t1", "messagebus-attempt": "3"}
    await transport.publish_to_group(queue, [message(queue, 1, key="k1", headers=stale)])
    assert await transport.depth(queue) == 1
    assert await raw.xlen(keys(queue, prefix)["stream"]) == 1
    got: Collector[Delivery] = Collector(TIMEOUT)
    await transport.subscribe(queue, collecting(got), concurrency=1)
    [replayed] = await got.wait_for(1)
    assert (numbers([replayed]), replayed.attempt, replayed.key) == ([1], 1, "k1")
    assert replayed.headers.get("x-trace") == "t1"


async def test_group_operations_refuse_a_topic_without_group(transport: RedisTransport) -> None:
    """Bug caught: a bare topic taken for a group (publish_to_group or depth reading the
    keys of a group named ``messagebus``), or delete_group destroying a queue's group."""
    topic = Destination(TOPIC, "t")
    with pytest.raises(InvalidDestination, match="needs a topic and one of its groups or a queue"):
        await transport.publish_to_group(topic, [message(topic, 1)])
    with pytest.raises(InvalidDestination):
        await transport.depth(topic)
    for source in (Destination(QUEUE, "q"), topic):
        with pytest.raises(InvalidDestination, match="needs a topic and one of its groups, got"):
            await transport.delete_group(source)


async def test_a_group_deleted_under_a_running_consumer_is_declared_again(
    prefix: str, raw: aredis.Redis, transport: RedisTransport
) -> None:
    """Bug caught: a consumer left reading a destroyed group for ever (every read failing
    with NOGROUP) when delete_group runs before its consumers stop: its next read declares
    the group again and it gets what is published from then on (what the README says)."""
    group = Destination(TOPIC, "ev", "g")
    stream = keys(group, prefix)["stream"]
    got: Collector[Delivery] = Collector(TIMEOUT)
    await transport.subscribe(group, collecting(got), concurrency=1)
    await transport.delete_group(group)

    async def declared() -> bool:
        return [g["name"] for g in await raw.xinfo_groups(stream)] == [b"g"]

    await until(declared, "the running consumer declared its group again")
    await transport.publish([message(Destination(TOPIC, "ev"), 1)])
    assert numbers(await got.wait_for(1)) == [1]
