"""History of new groups (the URL option ``start_from`` and a subscription's own
``Destination.start_from``) on the shared nats-server, counting messages.

A topic stream keeps a message only while some group still has to ack it (interest
retention), so each test first makes a ``keeper`` group that acks nothing: what is published
then stays in the stream for the new group to find, or not, according to ``start_from``.
With ``retention=limits`` a stream keeps messages every group acked (the history of new groups).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from messagebus_nats import NatsTransport

from messagebus import InvalidOption, TopologyError
from messagebus._history import Position
from messagebus.transports import Delivery, Destination, DestinationKind, OutgoingMessage

TIMEOUT = 30.0


async def _ack(delivery: Delivery) -> None:
    await delivery.ack()


def out(dest: Destination, body: bytes) -> OutgoingMessage:
    return OutgoingMessage(dest, body, {"ce-id": uuid.uuid4().hex}, None)


async def history(
    url: str,
    start_from: str | None,
    old: int = 10,
    new: int = 10,
    made_with: str | None = None,
    position: Position | str = None,
) -> tuple[int, int, int, int]:
    """Publish ``old`` messages, then subscribe a new group (URL option ``start_from``, its
    own ``position``; ``"cut"`` for either: a time after the old ones; made first with
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
        if "cut" in (start_from, position):  # a time after every old message was stored, before any new one
            cut = int(time.time() * 1000) + 1
            # The wall clock must pass the cut (no event tells that): a condition, not a guessed delay.
            while time.time() * 1000 < cut + 1:  # noqa: ASYNC110
                await asyncio.sleep(0.001)
            start_from = str(cut) if start_from == "cut" else start_from
            position = datetime.fromtimestamp(cut / 1000, UTC) if position == "cut" else position
        assert position != "cut"
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
        late = Destination(DestinationKind.TOPIC, name, "late", start_from=position)
        consumer = await reader.subscribe(late, handle, concurrency=1)
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


@pytest.mark.parametrize(("option", "position", "old"), [("now", "earliest", 10), ("earliest", "cut", 0)])
async def test_a_subscriptions_start_from_overrides_the_url_option(
    nats_url: str, option: str, position: str, old: int
) -> None:
    """Bug caught: ``Destination.start_from`` not reaching the durable's deliver policy (the
    URL option wins: history lost with ``earliest``, everything replayed for a time), or a
    time read in the wrong unit; nothing lost, doubled or unexpected."""
    assert await history(nats_url, option, position=position) == (old, 0, 0, 0)


async def test_an_existing_durable_ignores_a_subscriptions_start_from_and_says_so(
    nats_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Bug caught: a subscription's ``start_from`` applied to a durable that exists (JetStream
    refuses the change: TopologyError, or history replayed) or ignored without the log line."""
    with caplog.at_level(logging.INFO, logger="messagebus"):
        assert await history(nats_url, None, made_with="now", position="earliest") == (0, 0, 0, 0)
    assert "nats group 'late'" in caplog.text and "start_from=earliest ignored" in caplog.text


async def test_limits_retention_keeps_history_and_a_fresh_groups_depth_counts_it(nats_url: str) -> None:
    """Bug caught: ``retention=limits``/``max_age``/``max_msgs`` not reaching the topic
    stream (interest drops what no group owes: no history), ``history`` claimed without it,
    pattern subscriptions that look for interest streams only (they would find no topic), a
    stream of the other retention silently used,
    or a fresh history group whose depth does not count what it will read (a replay would
    end at once)."""
    assert not NatsTransport.from_url(nats_url).capabilities.history
    transport = NatsTransport.from_url(f"{nats_url}&retention=limits&max_age=600&max_msgs=5")
    assert transport.capabilities.history
    topic = Destination(DestinationKind.TOPIC, f"lim{uuid.uuid4().hex[:8]}")
    await transport.connect()
    try:
        await transport.publish([out(topic, str(i).encode()) for i in range(7)])  # no group owes them
        js, topology = transport.connection.require()
        fresh = Destination(DestinationKind.TOPIC, topic.name, "fresh", start_from="earliest")
        names = transport.publisher.names(fresh)
        config = (await js.stream_info(names.stream)).config
        assert (config.retention, config.max_age, config.max_msgs) == ("limits", 600, 5)
        assert not await topology.ensure_consumer(names, "earliest")
        assert await transport.depth(fresh) == 5
        assert list(await topology.matching(topic.name)) == [topic.name]  # what a pattern subscription lists
        plain = NatsTransport.from_url(nats_url)
        await plain.connect()
        try:
            # A bus with the default retention publishes to the limits stream as it is.
            await plain.publish([out(topic, b"x")])
            assert (await js.stream_info(names.stream)).state.messages == 5  # still max_msgs, kept
            # The other way round: a stream made with interest retention keeps no history.
            other = Destination(DestinationKind.TOPIC, f"int{uuid.uuid4().hex[:8]}")
            await plain.publish([out(other, b"y")])
            with pytest.raises(TopologyError, match=r"interest retention .* keeps no history"):
                await transport.subscribe(replace(other, group="g", start_from="earliest"), _ack, concurrency=1)
        finally:
            await plain.close()
    finally:
        await transport.close()


async def test_a_pattern_group_starts_at_its_start_from_once(nats_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """Bug caught: a pattern group's ``start_from`` not reaching its registry record (its
    durables start at now: history lost), or applied again when the group is recorded
    already (the log line missing); nothing lost, doubled or unexpected."""
    base = f"pat{uuid.uuid4().hex[:8]}"
    transport = NatsTransport.from_url(f"{nats_url}&retention=limits&max_age=600")
    handled: list[bytes] = []
    arrived = asyncio.Event()

    async def handle(delivery: Delivery) -> None:
        handled.append(delivery.body)
        await delivery.ack()
        arrived.set()

    await transport.connect()
    try:
        await transport.publish([out(Destination(DestinationKind.TOPIC, f"{base}.{t}"), t.encode()) for t in "ab"])
        pattern = Destination(DestinationKind.TOPIC, f"{base}.*", "audit", start_from="earliest")
        consumer = await transport.subscribe(pattern, handle, concurrency=1)
        while len(handled) < 2:
            arrived.clear()
            await asyncio.wait_for(arrived.wait(), TIMEOUT)
        await consumer.stop(5)
        with caplog.at_level(logging.INFO, logger="messagebus"):
            await (await transport.subscribe(pattern, handle, concurrency=1)).stop(5)
    finally:
        await transport.close()
    assert sorted(handled) == [b"a", b"b"]
    assert "start_from=earliest ignored" in caplog.text
