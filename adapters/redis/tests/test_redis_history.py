"""History of new topic groups (``Destination.start_from``) on the shared Redis server:
the per-subscription start against the URL option, an existing group, a start time at the
millisecond boundary of entry ids, and the depth of a fresh history group."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from datetime import UTC, datetime

import pytest
import redis.asyncio as aredis
from messagebus_redis import RedisTransport
from messagebus_redis._topology import declare, names_for
from redis_helpers import fresh_prefix, url_for

from messagebus._history import Position
from messagebus.transports import Delivery, Destination, DestinationKind, OutgoingMessage

TIMEOUT = 30.0


def group(topic: str, start_from: Position, name: str = "late") -> Destination:
    return Destination(DestinationKind.TOPIC, topic, name, start_from=start_from)


async def history(url: str, start_from: Position | str, *, made: bool = False) -> tuple[int, int, int, int]:
    """Publish 10 old messages, subscribe group ``late`` (``start_from``, ``"cut"``: the next
    millisecond after the old ones; made first by a plain subscribe after the old ones when ``made``), publish
    10 new; returns (old handled, new lost, duplicated, unexpected) once every new one came."""
    topic = f"hist{uuid.uuid4().hex[:8]}"
    olds, news = [f"old-{i}".encode() for i in range(10)], [f"new-{i}".encode() for i in range(10)]
    handled: list[bytes] = []
    arrived = asyncio.Event()

    async def handle(delivery: Delivery) -> None:
        handled.append(delivery.body)
        await delivery.ack()
        arrived.set()

    def out(body: bytes) -> OutgoingMessage:
        return OutgoingMessage(Destination(DestinationKind.TOPIC, topic), body, {"ce-id": uuid.uuid4().hex}, None)

    transport = RedisTransport.from_url(url)
    await transport.connect()
    try:
        await transport.publish([out(b) for b in olds])
        if made:  # after the old ones: none of them is the group's
            await (await transport.subscribe(group(topic, None), handle, concurrency=1)).stop(0)
        if start_from == "cut":
            cut = time.time_ns() // 1_000_000 + 1
            start_from = datetime.fromtimestamp(cut / 1000, UTC)
            # The wall clock must pass the cut (no event tells that): a condition, not a guessed delay.
            while time.time_ns() // 1_000_000 <= cut:  # noqa: ASYNC110
                await asyncio.sleep(0.001)
        assert start_from != "cut"
        consumer = await transport.subscribe(group(topic, start_from), handle, concurrency=1)
        await transport.publish([out(b) for b in news])
        while not set(news) <= set(handled):
            arrived.clear()
            await asyncio.wait_for(arrived.wait(), TIMEOUT)
        await consumer.stop(5)
    finally:
        await transport.close()
    expected = set(olds) | set(news)
    return (
        sum(b in olds for b in handled),
        len(set(news) - set(handled)),
        len([b for b in handled if b in expected]) - len(set(handled) & expected),
        len([b for b in handled if b not in expected]),
    )


@pytest.mark.parametrize(
    ("option", "start_from", "old"),
    [("now", "earliest", 10), ("earliest", "cut", 0), ("earliest", None, 10)],
)
async def test_a_subscriptions_start_from_overrides_the_url_option(
    redis_url: str, option: str, start_from: Position | str, old: int
) -> None:
    """Bug caught: ``source.start_from`` not reaching XGROUP CREATE (the URL option wins:
    history lost with ``earliest``, or replayed for a later time), or ``None`` not keeping
    the URL option; nothing lost, doubled or unexpected."""
    assert await history(url_for(redis_url, extra=f"start_from={option}"), start_from) == (old, 0, 0, 0)


async def test_an_existing_group_keeps_its_place_and_says_start_from_was_ignored(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Bug caught: ``start_from`` applied to a group that exists (BUSYGROUP: the group
    rewound, the old messages handled) or ignored without the log line."""
    with caplog.at_level(logging.INFO, logger="messagebus"):
        assert await history(url_for(redis_url), "earliest", made=True) == (0, 0, 0, 0)
    assert "redis group 'late'" in caplog.text and "start_from=earliest ignored" in caplog.text


async def test_a_start_time_takes_the_entries_of_its_millisecond_and_depth_counts_them(
    redis_url: str, raw: aredis.Redis
) -> None:
    """Bug caught: a time turned into the id ``<ms>-0`` (XGROUP CREATE delivers after its id,
    so the entry ``<ms>-0`` is lost: the group starts later than the time), a time read in
    the wrong unit, or a fresh history group whose depth does not count what it will read."""
    prefix = fresh_prefix()
    names = names_for(group("t", None), prefix)
    for entry in ("999-7", "1000-0", "1000-3", "1001-0"):
        await raw.xadd(names.stream, {"x": entry}, id=entry)
    since = datetime.fromtimestamp(1.0005, UTC)  # within millisecond 1000
    assert not await declare(raw, names, "now", since)
    transport = RedisTransport.from_url(url_for(redis_url, prefix))
    await transport.connect()
    try:
        assert await transport.depth(group("t", since)) == 3
    finally:
        await transport.close()
    got = await raw.xreadgroup(names.group, "c", {names.stream: ">"}, count=10)
    assert [e[0].decode() for _, entries in got for e in entries] == ["1000-0", "1000-3", "1001-0"]
