"""Redis-specific behaviour on the shared server: the due set, claims of a crashed consumer's
entries, guarded trimming, queues deleting what they acked, history, foreign entries."""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as aredis
from messagebus_redis import physical_names
from messagebus_redis._options import RedisOptions
from redis_helpers import fresh_prefix, url_for

from messagebus import Bus, Envelope, Retry
from messagebus.testing import Collector
from messagebus.transports import Destination, DestinationKind

QUEUE = DestinationKind.QUEUE
TOPIC = DestinationKind.TOPIC


def names(kind: DestinationKind, name: str, prefix: str, group: str | None = None) -> dict[str, str]:
    return physical_names(Destination(kind, name, group), RedisOptions.model_validate({"prefix": prefix}))


async def test_a_delayed_retry_waits_in_the_due_set_not_in_memory(redis_url: str, raw: aredis.Redis) -> None:
    """Catches a delayed retry kept in the consumer's memory (lost with the process): while it
    waits, the message is in the group's due set and no longer pending; then it comes back
    with attempt 2 and the failure headers."""
    prefix = fresh_prefix()
    keys = names(QUEUE, "jobs", prefix)
    got: Collector[Envelope] = Collector(30)
    failed = asyncio.Event()
    bus = Bus.from_url(url_for(redis_url, prefix), service="due", retry=Retry(initial_delay=1.5, jitter=0))

    @bus.consume("jobs", concurrency=1)
    async def handle(item: dict[str, int], envelope: Envelope) -> None:
        got.add(envelope)
        if envelope.attempt == 1 and item["n"] == 1:
            failed.set()
            raise RuntimeError("fails once")

    async with bus:
        await bus.send("jobs", {"n": 1})
        await asyncio.wait_for(failed.wait(), 30)
        # One worker: once the next message runs, the failed one's retry was settled.
        await bus.send("jobs", {"n": 2})
        await got.wait_for(2)
        assert await raw.zcard(keys["due"]) == 1, "the delayed retry is not in the due set"
        first_id = got.items[0].raw.id
        assert await raw.xpending_range(keys["stream"], keys["group"], first_id, first_id, 1) == []
        assert await raw.xlen(keys["retry"]) == 0, "moved to the retry stream before it was due"
        first, _, second = await got.wait_for(3)
    assert (first.attempt, second.attempt) == (1, 2)
    assert second.headers.get("messagebus-first-failure") or "messagebus-first-failure" in second.wire_headers
    assert await raw.zcard(keys["due"]) == 0


async def test_entries_a_crashed_consumer_held_are_claimed_as_a_new_attempt(redis_url: str, raw: aredis.Redis) -> None:
    """Catches entries stuck forever in a dead consumer's pending list: a consumer that read
    two entries and vanished (never acked) loses them to a live one after
    ``visibility_timeout``, each delivered with attempt 2; nothing else is handled."""
    prefix = fresh_prefix()
    keys = names(QUEUE, "work", prefix)
    url = url_for(redis_url, prefix).replace("visibility_timeout=5", "visibility_timeout=1") + "&block_time=0.5"
    producer = Bus.from_url(url, service="p")
    async with producer:
        await producer.send_many("work", [{"n": 1}, {"n": 2}])
    await raw.xgroup_create(keys["stream"], keys["group"], id="0", mkstream=True)
    read = await raw.xreadgroup(keys["group"], "ghost", {keys["stream"]: ">"}, count=10)
    assert len(read[0][1]) == 2
    got: Collector[tuple[int, int]] = Collector(30)
    bus = Bus.from_url(url, service="c")

    @bus.consume("work")
    async def handle(item: dict[str, Any], envelope: Envelope) -> None:
        got.add((item["n"], envelope.attempt))

    async with bus:
        assert sorted(await got.wait_for(2)) == [(1, 2), (2, 2)]
        await bus.send("work", {"n": 3})
        await got.wait_for(3)
    assert sorted(got.items) == [(1, 2), (2, 2), (3, 1)]


async def test_trimming_never_drops_what_a_group_has_not_read(redis_url: str, raw: aredis.Redis) -> None:
    """Catches ``maxlen`` trimming entries a lagging group still needs (a plain XADD MAXLEN
    would): with the group stopped, 300 entries stay; once it has acked them all, the next
    publish trims the stream down towards ``maxlen``, and the group lost nothing."""
    prefix = fresh_prefix()
    url = url_for(redis_url, prefix, "maxlen=10")
    stream = names(TOPIC, "ev", prefix)["stream"]
    got: Collector[int] = Collector(30)

    def consumer() -> Bus:
        bus = Bus.from_url(url, service="c")

        @bus.subscribe("ev", group="g", concurrency=8)
        async def handle(item: dict[str, int]) -> None:
            got.add(item["n"])

        return bus

    async with consumer():
        pass  # the group exists from here on, its consumer is gone
    for batch in range(3):
        async with Bus.from_url(url, service="p") as producer:  # a new publisher trims at once
            await producer.publish_many("ev", [{"n": batch * 100 + i} for i in range(100)])
    assert await raw.xlen(stream) == 300, "trimmed entries the group had not read"
    async with consumer():
        await got.wait_for(300)
    async with Bus.from_url(url, service="p") as producer:
        await producer.publish("ev", {"n": 300})
    assert await raw.xlen(stream) <= 110, "acked entries were not trimmed (approximate: whole nodes of 100)"
    assert sorted(set(got.items)) == list(range(300))


async def test_a_queue_deletes_what_it_acked(redis_url: str, raw: aredis.Redis) -> None:
    """Catches queue streams growing without bound: a queue has one group, so an acked entry
    is deleted, and a queue that handled everything holds nothing."""
    prefix = fresh_prefix()
    stream = names(QUEUE, "q", prefix)["stream"]
    got: Collector[int] = Collector(30)
    bus = Bus.from_url(url_for(redis_url, prefix), service="q")

    @bus.consume("q", concurrency=4)
    async def handle(item: dict[str, int]) -> None:
        got.add(item["n"])

    async with bus:
        await bus.send_many("q", [{"n": i} for i in range(50)])
        await got.wait_for(50)
    assert await raw.xlen(stream) == 0


async def test_start_from_earliest_reads_the_history_of_a_topic(redis_url: str) -> None:
    """Catches ``start_from`` ignored: a group created with ``earliest`` gets what the topic
    stream held before it existed; a default (``now``) group gets only what follows."""
    prefix = fresh_prefix()
    async with Bus.from_url(url_for(redis_url, prefix), service="p") as producer:
        await producer.publish("hist", {"n": 1})
    got: dict[str, Collector[int]] = {"earliest": Collector(30), "now": Collector(30)}
    bus_old = Bus.from_url(url_for(redis_url, prefix, "start_from=earliest"), service="old")
    bus_new = Bus.from_url(url_for(redis_url, prefix), service="new")

    @bus_old.subscribe("hist", group="old")
    async def old(item: dict[str, int]) -> None:
        got["earliest"].add(item["n"])

    @bus_new.subscribe("hist", group="new")
    async def new(item: dict[str, int]) -> None:
        got["now"].add(item["n"])

    async with bus_old, bus_new:
        await bus_new.publish("hist", {"n": 2})
        assert await got["earliest"].wait_for(2) == [1, 2]
        assert await got["now"].wait_for(1) == [2]


async def test_a_foreign_entry_is_delivered_and_one_without_body_dead_lettered(
    redis_url: str, raw: aredis.Redis
) -> None:
    """Catches entries written by another producer breaking the consumer: CloudEvents fields
    become the envelope, and an entry with no body field is dead-lettered, not looped."""
    prefix = fresh_prefix()
    stream = names(QUEUE, "in", prefix)["stream"]
    got: Collector[Envelope] = Collector(30)
    dead: Collector[Envelope] = Collector(30)
    bus = Bus.from_url(url_for(redis_url, prefix), service="f")

    @bus.consume("in")
    async def handle(item: dict[str, int], envelope: Envelope) -> None:
        got.add(envelope)

    @bus.consume("in.dlq")
    async def dead_letters(envelope: Envelope) -> None:
        dead.add(envelope)

    async with bus:
        fields = {"ce-id": "foreign-1", "ce-type": "Thing", "content-type": "application/json"}
        await raw.xadd(stream, {**fields, "messagebus-body": b'{"n": 1}'})
        await raw.xadd(stream, {"something": "else"})
        [envelope] = await got.wait_for(1)
        await dead.wait_for(1)
    assert (envelope.id, envelope.type) == ("foreign-1", "Thing")


async def test_the_stats_stream_keeps_only_recent_snapshots(redis_url: str, raw: aredis.Redis) -> None:
    """Bug caught: ``messagebus.stats`` growing for ever (every bus adds a snapshot every 10 s
    and nothing reads a topic stream empty on Redis without maxlen or retention), while other
    topic streams must keep what they were given."""
    from messagebus_redis._publishing import STATS_KEEP

    from messagebus.transports import STATS_TOPIC, OutgoingMessage

    prefix = fresh_prefix()
    url = url_for(redis_url, prefix)
    async with Bus.from_url(url, service="p", stats_interval=None) as bus:
        stats = Destination(TOPIC, STATS_TOPIC)
        for _ in range(STATS_KEEP * 2 // 500):
            await bus.transport.publish([OutgoingMessage(stats, b"{}", {})] * 500)
        await bus.publish_many("ev", [{"n": i} for i in range(50)])
    assert await raw.xlen(names(TOPIC, STATS_TOPIC, prefix)["stream"]) < STATS_KEEP * 1.2
    assert await raw.xlen(names(TOPIC, "ev", prefix)["stream"]) == 50
