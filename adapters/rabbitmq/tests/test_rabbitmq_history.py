"""History (``start_from``) on RabbitMQ: the opt-in ``history=<max age>`` URL option, each
topic's stream, a new group filled from it (earliest, from a time) without losing what is
published meanwhile, one creator per group, and a copy a dead creator left unfinished."""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiormq
import pytest
from messagebus_rabbitmq import RabbitMQTransport, physical_name, queue_name
from messagebus_rabbitmq._topology import Topology, side_name
from rmq_helpers import DEFAULT_URL

from messagebus import Bus, Envelope, InvalidOption, TopologyError, UnsupportedFeature
from messagebus.testing import Collector
from messagebus.transports import Destination, DestinationKind, TransportURL

_BROKER = os.environ.get("MESSAGEBUS_TEST_RABBITMQ_URL", DEFAULT_URL)


@pytest.fixture(autouse=True)
def _delete_history_streams() -> Iterator[None]:
    """Delete the history streams a test declared: they outlive it."""
    names: set[str] = set()
    original = Topology.exchange

    async def exchange(self: Topology, connection: Any, name: str) -> None:
        if self.history is not None:
            names.add(side_name("history", name))
        await original(self, connection, name)

    Topology.exchange = exchange  # type: ignore[method-assign]
    try:
        yield
    finally:
        Topology.exchange = original  # type: ignore[method-assign]

    async def delete() -> None:
        conn = await aiormq.connect(_BROKER)
        try:
            for name in names:
                ch = await conn.channel()
                with contextlib.suppress(aiormq.exceptions.AMQPError):
                    await ch.queue_delete(name)
                    await ch.close()
        finally:
            await conn.close()

    if names:  # a sync fixture: its teardown runs outside the test's event loop
        with contextlib.suppress(OSError, aiormq.exceptions.AMQPError):
            asyncio.run(delete())


def _url(rabbitmq_url: str, history: str = "1h") -> str:
    return f"{rabbitmq_url}{'&' if '?' in rabbitmq_url else '?'}history={history}"


@pytest.fixture
async def buses(rabbitmq_url: str) -> AsyncIterator[Any]:
    made: list[Bus] = []

    def make(service: str = "svc", url: str | None = None) -> Bus:
        bus = Bus.from_url(url or _url(rabbitmq_url), service=service)
        made.append(bus)
        return bus

    yield make
    for bus in reversed(made):
        with contextlib.suppress(Exception):
            await asyncio.wait_for(bus.stop(grace=5), 60)


def _recorder(into: Collector[int]) -> Any:
    async def handle(event: dict[str, Any], envelope: Envelope) -> None:
        into.add(int(event["n"]))

    return handle


def _check(got: Collector[int], expected: range | list[int], what: str) -> None:
    items = list(got.items)
    lost = sorted(set(expected) - set(items))
    unexpected = sorted(set(items) - set(expected))
    duplicated = sorted(n for n in set(items) if items.count(n) > 1)
    assert not (lost or unexpected or duplicated), (
        f"{what}: lost {lost}, unexpected {unexpected}, duplicated {duplicated}"
    )


def test_history_option_parsing(rabbitmq_url: str) -> None:
    """Bug caught: a bad history value accepted (the broker refuses the stream at the first
    publish, far from the URL), a valid one refused, or history claimed without the opt-in
    (start_from silently starting at the latest message)."""
    plain = RabbitMQTransport.from_url(TransportURL.parse(rabbitmq_url)).capabilities
    assert not plain.history and "history=<max age, e.g. 7D>" in plain.history_reason
    for good in ("7D", "12h", "30m", "90s", "1Y", "6M"):
        assert RabbitMQTransport.from_url(TransportURL.parse(_url(rabbitmq_url, good))).capabilities.history
    for bad in ("7", "D", "0D", "7 days", "-1h", "7d", "1.5h"):
        with pytest.raises(InvalidOption, match=r"'history'.*unit Y, M, D, h, m or s"):
            RabbitMQTransport.from_url(TransportURL.parse(_url(rabbitmq_url, bad)))


async def _stream_exists(topic: str) -> bool:
    conn = await aiormq.connect(_BROKER)
    try:
        ch = await conn.channel()
        await ch.queue_declare(side_name("history", physical_name(topic)), passive=True)
        return True
    except aiormq.exceptions.ChannelNotFoundEntity:
        return False
    finally:
        await conn.close()


async def test_stream_is_declared_by_the_first_publish(buses: Any, rabbitmq_url: str) -> None:
    """Bug caught: the stream declared only when a history group subscribes, so what was
    published before is not history; or declared without the opt-in."""
    topic, plain = f"t.hist.{uuid.uuid4().hex[:8]}", f"t.hist.{uuid.uuid4().hex[:8]}"
    async with buses("producer") as producer, buses("plain", url=rabbitmq_url) as other:
        assert not await _stream_exists(topic)
        await producer.publish(topic, {"n": 0})
        assert await _stream_exists(topic)
        await other.publish(plain, {"n": 0})
        assert not await _stream_exists(plain)
        got: Collector[int] = Collector(30)
        late = buses("late")
        late.subscribe(topic, group="late", start_from="earliest")(_recorder(got))
        async with late:
            await got.wait_for(1)
            await producer.publish(topic, {"n": 1})
            await got.wait_for(2)
        _check(got, range(2), "a group created after the first publish")


async def test_no_loss_while_publishing_during_the_group_creation(buses: Any) -> None:
    """Bug caught: messages published while a new group copies the history and binds its
    queue fall between the two (lost), or are copied and also routed live (duplicated)."""
    topic, n = f"t.hist.{uuid.uuid4().hex[:8]}", 2000
    got: Collector[int] = Collector(60)
    async with buses("producer") as producer:
        await producer.publish_many(topic, [{"n": i} for i in range(200)], key="k")
        late = buses("late")
        late.subscribe(topic, group="late", start_from="earliest")(_recorder(got))

        async def publish_meanwhile() -> None:
            for start in range(200, n, 20):
                await producer.publish_many(topic, [{"n": i} for i in range(start, start + 20)], key="k")

        task = asyncio.create_task(publish_meanwhile())
        async with late:  # created (history copied, queue bound) while the publisher publishes
            assert not task.done(), "the publisher finished before the group was created: raise n"
            await task
            await producer.publish(topic, {"n": n}, key="k")  # a last one: what came twice is in
            with contextlib.suppress(AssertionError):  # a timeout: _check names what is missing
                await got.wait_until(lambda items: len(set(items)) > n)
    _check(got, range(n + 1), "a group created while the topic is busy")


async def test_two_instances_creating_one_group_copy_the_history_once(buses: Any) -> None:
    """Bug caught: two instances of a new group starting together both see no queue and
    both copy the history into it (every retained message handled twice)."""
    topic, n = f"t.hist.{uuid.uuid4().hex[:8]}", 50
    got: Collector[int] = Collector(30)
    async with buses("producer") as producer:
        await producer.publish_many(topic, [{"n": i} for i in range(n)], key="k")
        pair = [buses(f"instance{i}") for i in range(2)]
        for bus in pair:
            bus.subscribe(topic, group="g", start_from="earliest")(_recorder(got))
        await asyncio.gather(*(bus.start() for bus in pair))
        await producer.publish(topic, {"n": n}, key="k")  # the last: whatever came twice is in
        await got.wait_until(lambda items: n in items)
        await got.wait_for(n + 1)
    _check(got, range(n + 1), "two instances creating one group")


async def test_a_copy_left_unfinished_is_finished_by_the_next_subscriber(buses: Any, admin: Any) -> None:
    """Bug caught: a creator that died mid-copy (queue made, copy marker still there) leaves
    the group without its history: the next subscriber takes the queue for an existing group."""
    topic, n = f"t.hist.{uuid.uuid4().hex[:8]}", 10
    queue = queue_name(Destination(DestinationKind.TOPIC, topic, group="g"))
    marker = side_name("history-copy", queue)
    admin.cleanup_later(queues=(marker,))
    got: Collector[int] = Collector(30)
    async with buses("producer") as producer:
        await producer.publish_many(topic, [{"n": i} for i in range(n)], key="k")
        ch = await admin.conn.channel()
        await ch.queue_declare(queue, durable=True)  # what the dead creator left: queue and marker
        await ch.queue_declare(marker, durable=True)
        late = buses("restarted")
        late.subscribe(topic, group="g", start_from="earliest")(_recorder(got))
        async with late:
            await got.wait_for(n)
            await producer.publish(topic, {"n": n}, key="k")
            await got.wait_for(n + 1)
        assert not await admin.queue_exists(marker), "the copy marker outlived a finished copy"
    _check(got, range(n + 1), "a group whose creator died mid-copy")


async def test_pattern_with_start_from_is_refused(buses: Any) -> None:
    """Bug caught: a pattern subscription given start_from silently starting at the latest
    message (a pattern has no one topic stream to read)."""
    bus = buses("svc")
    bus.subscribe(f"t.hist.{uuid.uuid4().hex[:8]}.*", group="g", start_from="earliest")(_recorder(Collector()))
    with pytest.raises(UnsupportedFeature, match="not the pattern"):
        await bus.start()


async def test_another_history_age_for_a_topic_is_a_clear_error(buses: Any, rabbitmq_url: str) -> None:
    """Bug caught: a publisher whose history age differs from the topic's stream failing
    with a bare broker error (or changing the stream): the error names the stream and ages."""
    topic = f"t.hist.{uuid.uuid4().hex[:8]}"
    async with buses("a") as first, buses("b", url=_url(rabbitmq_url, "2h")) as second:
        await first.publish(topic, {"n": 0})
        with pytest.raises(TopologyError, match=r"history stream .*x-max-age.*received '2h' but current is '1h'"):
            await second.publish(topic, {"n": 1})
