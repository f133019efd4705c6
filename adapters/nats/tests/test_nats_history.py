"""History of new groups (``start_from``) on the shared nats-server, counting messages.

A topic stream keeps a message only while some group still has to ack it (interest
retention), so each test first makes a ``keeper`` group that acks nothing: what is published
then stays in the stream for the new group to find, or not, according to ``start_from``.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from messagebus_nats import NatsTransport

from messagebus import InvalidOption
from messagebus.transports import Delivery, Destination, DestinationKind, OutgoingMessage

TIMEOUT = 30.0


def out(dest: Destination, body: bytes) -> OutgoingMessage:
    return OutgoingMessage(dest, body, {"ce-id": uuid.uuid4().hex}, None)


async def history(
    url: str, start_from: str | None, old: int = 10, new: int = 10, made_with: str | None = None
) -> tuple[int, int, int, int]:
    """Publish ``old`` messages, then subscribe a new group (``start_from``; made first with
    ``made_with`` if given) and publish ``new``; returns (old handled, new lost, duplicated,
    unexpected) once every new one came. With concurrency 1 in stream order, an old message
    handed to the group comes first."""
    name = f"hist{uuid.uuid4().hex[:8]}"
    topic = Destination(DestinationKind.TOPIC, name)
    writer = NatsTransport.from_url(url)
    await writer.connect()
    reader: NatsTransport | None = None
    handled: list[bytes] = []
    arrived = asyncio.Event()

    async def handle(delivery: Delivery) -> None:
        handled.append(delivery.body)
        await delivery.ack()
        arrived.set()

    async def keep(delivery: Delivery) -> None:
        pass  # settles nothing, so the stream keeps every message for the new group

    olds = [f"old-{i}".encode() for i in range(old)]
    news = [f"new-{i}".encode() for i in range(new)]
    try:
        keeper = await writer.subscribe(Destination(DestinationKind.TOPIC, name, "keeper"), keep, concurrency=1)
        await keeper.stop(0)
        await writer.publish([out(topic, body) for body in olds])
        if start_from == "cut":  # a time after every old message was stored, before any new one
            start_from = str(int(time.time() * 1000) + 1)
            # The wall clock must pass the cut (no event tells that): a condition, not a guessed delay.
            while time.time() * 1000 < int(start_from) + 1:  # noqa: ASYNC110
                await asyncio.sleep(0.001)
        if made_with is not None:
            first = NatsTransport.from_url(f"{url}&start_from={made_with}")
            await first.connect()
            try:
                made = await first.subscribe(Destination(DestinationKind.TOPIC, name, "late"), keep, concurrency=1)
                await made.stop(0)
            finally:
                await first.close()
        reader = NatsTransport.from_url(url + (f"&start_from={start_from}" if start_from else ""))
        await reader.connect()
        consumer = await reader.subscribe(Destination(DestinationKind.TOPIC, name, "late"), handle, concurrency=1)
        await writer.publish([out(topic, body) for body in news])
        while not set(news) <= set(handled):
            arrived.clear()
            await asyncio.wait_for(arrived.wait(), TIMEOUT)
        await consumer.stop(5)
    finally:
        await writer.close()
        if reader is not None:
            await reader.close()
    expected = set(olds) | set(news)
    return (
        sum(body in olds for body in handled),
        len(set(news) - set(handled)),
        len([b for b in handled if b in expected]) - len(set(handled) & expected),
        len([b for b in handled if b not in expected]),
    )


async def test_earliest_gets_what_was_published_before_the_group_existed(nats_url: str) -> None:
    """Catches ``start_from=earliest`` not reaching the consumer config (deliver policy new):
    the 10 messages stored before the group was made would not be handled."""
    assert await history(nats_url, "earliest") == (10, 0, 0, 0)


async def test_a_time_gets_only_what_came_after_it(nats_url: str) -> None:
    """Catches a ``start_from`` time ignored (nothing old, but also taken as ``earliest``) or
    read in the wrong unit (a time far off: the new messages never come, or the old ones do)."""
    assert await history(nats_url, "cut") == (0, 0, 0, 0)


async def test_the_default_gets_none_of_the_old_ones(nats_url: str) -> None:
    """Catches a default that replays history: a new group handed the 10 old messages."""
    assert await history(nats_url, None) == (0, 0, 0, 0)


async def test_an_existing_group_keeps_its_start_when_start_from_changes(nats_url: str) -> None:
    """Catches a group made with the default and subscribed again with ``earliest`` failing
    (JetStream cannot change a durable's deliver policy: TopologyError) or replaying history."""
    assert await history(nats_url, "earliest", made_with="now") == (0, 0, 0, 0)


@pytest.mark.parametrize("value", ["yesterday", "-5", "2026-01-01", "1700000000000-0", ""])
def test_a_bad_start_from_is_refused_before_any_io(nats_url: str, value: str) -> None:
    """Catches a bad ``start_from`` accepted (and then failing on the server, or replaying
    everything): the error names the option and what is allowed."""
    with pytest.raises(InvalidOption, match="start_from"):
        NatsTransport.from_url(f"{nats_url}&start_from={value}")
