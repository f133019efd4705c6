"""Issue 17 on Redis Streams: reply queues deleted on stop (``delete_queue``), subscription
patterns refused with Redis's reason, ``delay=`` held in the due set (never holding back
others, not an attempt, kept across a consumer restart), header filters at the client.
Against the shared redis-server, each test under a key prefix of its own."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio as aredis
from messagebus_redis import RedisTransport, physical_names
from messagebus_redis._options import RedisOptions
from redis_helpers import fresh_prefix, keys_of, url_for

from messagebus import Bus, Envelope, UnsupportedFeature
from messagebus.testing import Collector
from messagebus.transports import Destination, DestinationKind, OutgoingMessage

QUEUE = DestinationKind.QUEUE
TIMEOUT = 30.0


def queue_keys(name: str, prefix: str) -> dict[str, str]:
    return physical_names(Destination(QUEUE, name), RedisOptions.model_validate({"prefix": prefix}))


async def test_a_bus_that_made_requests_leaves_no_reply_stream_after_stop(redis_url: str, raw: aredis.Redis) -> None:
    """Catches a reply queue left on the server by every stopped bus (no ``delete_queue``, or
    one that deletes other keys than the reply queue's): after stop no key of the reply
    queue is left, and the service's own queue is untouched."""
    prefix = fresh_prefix()
    server, client = (Bus.from_url(url_for(redis_url, prefix), service=s) for s in ("calc", "caller"))

    @server.consume("double")
    async def double(n: int) -> int:
        return n * 2

    async with server:
        async with client:
            assert await client.request("double", 21, reply_type=int, timeout=TIMEOUT) == 42
            assert any(".replies." in k for k in await keys_of(raw, prefix)), "no reply stream was made"
        left = await keys_of(raw, prefix)
    assert [k for k in left if ".replies." in k] == []
    assert queue_keys("double", prefix)["stream"] in left


async def test_delete_queue_removes_its_keys_and_dead_letters_only_and_is_idempotent(
    redis_url: str, raw: aredis.Redis
) -> None:
    """Catches ``delete_queue`` leaving the retry stream, due set or dead-letter stream behind,
    deleting a neighbour whose name starts alike (``jobs2``), or failing on a second call."""
    prefix = fresh_prefix()
    transport = RedisTransport.from_url(url_for(redis_url, prefix))
    jobs, neighbour = queue_keys("jobs", prefix), queue_keys("jobs2", prefix)
    await transport.connect()
    try:
        for name in ("jobs", "jobs.dlq", "jobs2"):
            await transport.publish([OutgoingMessage(Destination(QUEUE, name), b"x", {}, None)])
        await raw.zadd(jobs["due"], {"held": 1})
        await raw.xadd(jobs["retry"], {"f": "v"})
        await transport.delete_queue("jobs")
        await transport.delete_queue("jobs")  # idempotent
        left = await keys_of(raw, prefix)
        assert left & {jobs["stream"], jobs["retry"], jobs["due"], jobs["dead_letter"]} == set()
        assert neighbour["stream"] in left
    finally:
        await transport.close()


async def test_a_pattern_subscription_is_refused_with_redis_reason(redis_url: str) -> None:
    """Catches a pattern accepted and then silently receiving nothing (Redis has no group
    across streams): registration raises, naming Redis and why."""
    bus = Bus.from_url(url_for(redis_url), service="p")
    with pytest.raises(UnsupportedFeature, match=r"redis.*stream of its own"):

        @bus.subscribe("orders.*", group="audit")
        async def handle(data: dict[str, str]) -> None: ...


async def test_a_delayed_message_waits_in_the_due_set_holds_back_nothing_and_is_attempt_1(
    redis_url: str, raw: aredis.Redis
) -> None:
    """Catches a delayed message handled early, one that blocks the single worker (the next,
    undelayed message waits behind it), one counted as a failed attempt (attempt 2 when due),
    and one held in memory rather than in the due set."""
    prefix = fresh_prefix()
    keys = queue_keys("work", prefix)
    got: Collector[tuple[str, int, float]] = Collector(TIMEOUT)
    bus = Bus.from_url(url_for(redis_url, prefix), service="d")

    @bus.consume("work", concurrency=1)
    async def handle(item: dict[str, str], envelope: Envelope) -> None:
        got.add((item["id"], envelope.attempt, time.time()))

    async with bus:
        await bus.send("work", {"id": "late"}, delay=2)
        due = time.time() + 2
        await bus.send("work", {"id": "now"})
        await got.wait_for(1)
        assert await raw.zcard(keys["due"]) == 1, "the held message is not in the due set"
        await got.wait_for(2)
    assert [(i, a) for i, a, _ in got.items] == [("now", 1), ("late", 1)]
    assert got.items[1][2] >= due - 0.01, "handled before it was due"


async def test_a_held_delayed_message_survives_a_consumer_restart(redis_url: str, raw: aredis.Redis) -> None:
    """Catches a delayed message lost when the consumer holding it stops (held in memory, or
    acked before it was put in the due set): a new consumer handles it, attempt 1."""
    prefix = fresh_prefix()
    keys = queue_keys("later", prefix)
    url = url_for(redis_url, prefix)
    sender = Bus.from_url(url, service="s")
    got: Collector[Envelope] = Collector(TIMEOUT)

    def consumer() -> Bus:
        bus = Bus.from_url(url, service="c")

        @bus.consume("later")
        async def handle(data: dict[str, int], envelope: Envelope) -> None:
            got.add(envelope)

        return bus

    async with sender:
        await sender.send("later", {"n": 1}, delay=3)
        first = consumer()
        async with first:
            deadline = time.monotonic() + TIMEOUT
            while await raw.zcard(keys["due"]) == 0:  # held by the first consumer
                assert time.monotonic() < deadline, "never held"
                await asyncio.sleep(0.05)
        assert len(got) == 0
        async with consumer():
            await got.wait_for(1)
    assert [e.attempt for e in got.items] == [1]


async def test_a_filter_handles_matching_messages_and_acks_the_rest(redis_url: str, raw: aredis.Redis) -> None:
    """Catches the client-side filter handling non-matching messages, or leaving them pending
    (redelivered forever): only ``region=eu`` is handled and nothing stays pending."""
    prefix = fresh_prefix()
    bus = Bus.from_url(url_for(redis_url, prefix), service="f")
    got: Collector[str] = Collector(TIMEOUT)

    @bus.subscribe("orders", group="eu", filter={"region": "eu"})
    async def handle(item: dict[str, str]) -> None:
        got.add(item["id"])

    async with bus:
        for i, region in enumerate(("us", "eu", "us", "eu", "apac")):
            await bus.publish("orders", {"id": str(i)}, headers={"region": region})
        await bus.publish("orders", {"id": "last"}, headers={"region": "eu"})
        await got.wait_for(3)
        names = physical_names(
            Destination(DestinationKind.TOPIC, "orders", "eu"), RedisOptions.model_validate({"prefix": prefix})
        )
        deadline = time.monotonic() + TIMEOUT
        while (await raw.xpending(names["stream"], names["group"]))["pending"]:
            assert time.monotonic() < deadline, "skipped messages stay pending"
            await asyncio.sleep(0.05)
    assert got.items == ["1", "3", "last"]
