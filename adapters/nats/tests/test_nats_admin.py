"""Issue 18 on NATS JetStream: the BrokerAdmin operations (dead-letter queues listed from the
streams, depth from a durable's pending count, a replay to one group as a copy addressed to
its durable, a group deleted with its dead letters). Against the shared nats-server, each
test on names of its own under the session's prefix."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from messagebus_nats import NatsTransport
from messagebus_nats._topology import REGISTRY, pattern_durable, stream_name
from nats.js import JetStreamContext
from nats_helpers import TIMEOUT, prefix_of, until

from messagebus import Bus, InvalidDestination, Reject
from messagebus.testing import Collector
from messagebus.transports import BrokerAdmin, Delivery, Destination, DestinationKind, OutgoingMessage

QUEUE, TOPIC = DestinationKind.QUEUE, DestinationKind.TOPIC


@pytest.fixture
async def transport(nats_url: str) -> AsyncIterator[NatsTransport]:
    transport = NatsTransport.from_url(nats_url)
    await transport.connect()
    yield transport
    await transport.close()


def fresh(what: str) -> str:
    return f"{what}{uuid.uuid4().hex[:8]}"


def out(name: str, body: bytes, headers: dict[str, str] | None = None, key: str | None = None) -> OutgoingMessage:
    kind = QUEUE if name.endswith(".dlq") else TOPIC
    return OutgoingMessage(Destination(kind, name), body, headers or {}, key)


async def layout(js: JetStreamContext, prefix: str) -> dict[str, list[str]]:
    """Stream -> its durable consumers, for the streams of ``prefix``."""
    streams = [i.config.name for i in await js.streams_info() if i.config.name and i.config.name.startswith(prefix)]
    return {s: sorted(str(c.name) for c in await js.consumers_info(s)) for s in streams}


def recorder(collector: Collector[Delivery]) -> Callable[[Delivery], Awaitable[None]]:
    async def handle(delivery: Delivery) -> None:
        await delivery.ack()
        collector.add(delivery)

    return handle


async def make_group(transport: NatsTransport, topic: str, group: str) -> None:
    """Create the group's durable and leave it with no consumer running."""
    consumer = await transport.subscribe(Destination(TOPIC, topic, group), recorder(Collector()), concurrency=1)
    await consumer.stop(0)


async def test_the_dead_letter_queues_of_failing_handlers_are_listed(nats_url: str) -> None:
    """Bug caught: dead_letter_queues listing nothing (the wrong retention filtered on), other
    queues and topics as dead letters, or names not mapped back to logical ones (stream names
    with the prefix and ``_`` instead of the logical ``<topic>.<group>.dlq``)."""
    topic, queue = fresh("orders"), fresh("jobs")
    bus = Bus.from_url(nats_url, service="billing")

    @bus.subscribe(topic, group="billing")
    async def bill(data: int) -> None:
        raise Reject("bad order")

    @bus.consume(queue)
    async def work(data: int) -> None:
        raise Reject("bad job")

    transport = NatsTransport.from_url(nats_url)
    await transport.connect()
    try:
        assert isinstance(transport, BrokerAdmin)
        async with bus:
            await bus.publish(topic, 1)
            await bus.send(queue, 2)
            wanted = {f"{topic}.billing.dlq", f"{queue}.dlq"}

            async def listed() -> bool:
                return wanted <= set(await transport.dead_letter_queues())

            await until(listed, f"{wanted} listed")
        found = await transport.dead_letter_queues()
    finally:
        await transport.close()
    assert found == sorted(found)
    assert all(name.endswith(".dlq") for name in found), found
    assert topic not in found and queue not in found


async def test_depth_counts_what_a_queue_and_a_group_store_and_creates_nothing(
    nats_url: str, transport: NatsTransport, js: JetStreamContext
) -> None:
    """Bug caught: depth counting delivered-but-unacked or all stored messages instead of
    those a group has still to take, a queue nobody consumed yet reading 0, another group's
    count, or asking about a missing queue/group creating its stream or durable."""
    topic, queue = fresh("stock"), fresh("tasks")
    await make_group(transport, topic, "a")
    await make_group(transport, topic, "b")
    await transport.publish([out(topic, b"%d" % i) for i in range(3)])
    await transport.publish([OutgoingMessage(Destination(QUEUE, queue), b"%d" % i, {}, None) for i in range(4)])
    taken: Collector[Delivery] = Collector(TIMEOUT)
    b = await transport.subscribe(Destination(TOPIC, topic, "b"), recorder(taken), concurrency=1)
    await taken.wait_for(3)
    await b.stop(0)
    assert await transport.depth(Destination(QUEUE, queue)) == 4  # no consumer yet
    assert await transport.depth(Destination(TOPIC, topic, "a")) == 3
    assert await transport.depth(Destination(TOPIC, topic, "b")) == 0
    worker = await transport.subscribe(Destination(QUEUE, queue), recorder(taken), concurrency=1)
    await taken.wait_for(7)
    await worker.stop(0)
    await transport.publish([OutgoingMessage(Destination(QUEUE, queue), b"late", {}, None)])
    assert await transport.depth(Destination(QUEUE, queue)) == 1  # the queue's durable now
    before = await layout(js, prefix_of(nats_url))
    for missing in (
        Destination(QUEUE, fresh("nothing")),
        Destination(TOPIC, fresh("nothing"), "a"),
        Destination(TOPIC, topic, "nobody"),
    ):
        assert await transport.depth(missing) == 0
    assert await layout(js, prefix_of(nats_url)) == before
    with pytest.raises(InvalidDestination):
        await transport.depth(Destination(TOPIC, topic))


async def test_depth_counts_deliveries_in_handlers_and_handed_back_and_copies_for_other_groups(
    transport: NatsTransport,
) -> None:
    """Bug caught: depth as JetStream's ``num_pending`` alone, which drops a message once
    delivered: a dead-letter queue just looked at (peek holds, then hands back with -NAK)
    would read 0 and the replay or purge after the look would do nothing. Also holds the
    README's claim that a group's depth includes the copies addressed to another group
    (retries, replays: its consumer skips them when it runs)."""
    topic, queue = fresh("parcels"), fresh("looked")
    jobs = Destination(QUEUE, queue)
    await transport.publish([OutgoingMessage(jobs, b"%d" % i, {}, None) for i in range(3)])
    held: Collector[Delivery] = Collector(TIMEOUT)
    forever = asyncio.Event()

    async def hold(delivery: Delivery) -> None:
        held.add(delivery)
        await forever.wait()

    consumer = await transport.subscribe(jobs, hold, concurrency=3)
    await held.wait_for(3)
    try:
        assert await transport.depth(jobs) == 3  # in handlers
    finally:
        await consumer.stop(0)  # hands the three back
    assert await transport.depth(jobs) == 3
    a, b = Destination(TOPIC, topic, "a"), Destination(TOPIC, topic, "b")
    await make_group(transport, topic, "b")
    await transport.publish_to_group(a, [out(topic, b"again")])
    assert (await transport.depth(a), await transport.depth(b)) == (1, 1)


async def test_publish_to_group_reaches_only_that_group_as_a_first_attempt_even_when_it_is_not_running(
    transport: NatsTransport,
) -> None:
    """Bug caught: a replay published on the topic (every group gets it again), one that
    carries the dead letter's attempt or due time, loses body, key or headers, is dropped as
    a duplicate of the original (same ce-id, so the same Nats-Msg-Id) or of the first replay,
    or is lost while the group's consumer is not running."""
    topic = fresh("refunds")
    target, other = Destination(TOPIC, topic, "target"), Destination(TOPIC, topic, "other")
    await make_group(transport, topic, "target")
    got: Collector[Delivery] = Collector(TIMEOUT)
    seen: Collector[Delivery] = Collector(TIMEOUT)
    bystander = await transport.subscribe(other, recorder(seen), concurrency=1)
    await transport.publish([out(topic, b"original", {"ce-id": "id-1"}, "k1")])
    replay = out(topic, b"replayed", {"ce-id": "id-1", "x-trace": " t 1", "messagebus-attempt": "4"}, "k1")
    await transport.publish_to_group(target, [replay])  # the target's consumer is not running
    await transport.publish_to_group(target, [replay])
    assert await transport.depth(target) == 3
    consumer = await transport.subscribe(target, recorder(got), concurrency=1)
    await got.wait_for(3)
    await transport.publish([out(topic, b"marker")])
    await seen.wait_until(lambda items: any(d.body == b"marker" for d in items), "the marker")
    await got.wait_for(4)
    await consumer.stop(0)
    await bystander.stop(0)
    assert [d.body for d in seen.items] == [b"original", b"marker"]
    assert [d.body for d in got.items] == [b"original", b"replayed", b"replayed", b"marker"]
    for delivery in got.items[1:3]:
        assert (delivery.attempt, delivery.key) == (1, "k1")
        assert delivery.headers == {"ce-id": "id-1", "x-trace": " t 1"}


async def test_publish_to_group_creates_a_missing_group_and_replays_to_a_queue(transport: NatsTransport) -> None:
    """Bug caught: a replay to a group whose durable does not exist being dropped (interest
    retention stores nothing nobody has a durable for), a queue's replay refused, dropped as
    a duplicate of the original (same ce-id) or kept at its old attempt, or a topic without
    a group accepted."""
    topic, queue = fresh("late"), fresh("work")
    group = Destination(TOPIC, topic, "new")
    await transport.publish_to_group(group, [out(topic, b"kept")])
    assert await transport.depth(group) == 1
    jobs = Destination(QUEUE, queue)
    await transport.publish([OutgoingMessage(jobs, b"original", {"ce-id": "job-1"}, None)])
    headers = {"ce-id": "job-1", "messagebus-attempt": "3"}
    await transport.publish_to_group(jobs, [OutgoingMessage(jobs, b"replayed", headers, None)])
    got: Collector[Delivery] = Collector(TIMEOUT)
    worker = await transport.subscribe(jobs, recorder(got), concurrency=1)
    await got.wait_for(2)
    await worker.stop(0)
    assert [(d.body, d.attempt) for d in got.items] == [(b"original", 1), (b"replayed", 1)]
    with pytest.raises(InvalidDestination):
        await transport.publish_to_group(Destination(TOPIC, topic), [out(topic, b"x")])


async def test_delete_group_removes_its_durable_and_dead_letters_only_and_is_idempotent(
    nats_url: str, transport: NatsTransport, js: JetStreamContext
) -> None:
    """Bug caught: delete_group leaving the durable (its messages keep piling up) or the
    dead-letter stream, deleting the topic's stream or another group's durable or dead
    letters, or raising when called again."""
    topic = fresh("mail")
    gone, kept = Destination(TOPIC, topic, "gone"), Destination(TOPIC, topic, "kept")
    await make_group(transport, topic, "gone")
    await make_group(transport, topic, "kept")
    await transport.publish([out(topic, b"1"), out(topic, b"2")])
    await transport.publish([out(gone.dead_letter_queue, b"d"), out(kept.dead_letter_queue, b"d")])
    await transport.delete_group(gone)
    await transport.delete_group(gone)
    assert await transport.depth(gone) == 0
    assert await transport.depth(kept) == 2
    queues = await transport.dead_letter_queues()
    assert gone.dead_letter_queue not in queues and kept.dead_letter_queue in queues
    stream = stream_name(topic, prefix_of(nats_url))
    assert [c.name for c in await js.consumers_info(stream)] == ["kept"]
    got: Collector[Delivery] = Collector(TIMEOUT)
    consumer = await transport.subscribe(kept, recorder(got), concurrency=1)
    await got.wait_for(2)
    await consumer.stop(0)
    assert [d.body for d in got.items] == [b"1", b"2"]


async def test_a_pattern_group_is_counted_over_its_topics_and_deleted_with_its_registry_record(
    nats_url: str, transport: NatsTransport, js: JetStreamContext
) -> None:
    """Bug caught: a pattern group (``tail`` of ``orders.*``) counted on no topic, replayed
    to the pattern instead of each message's topic (a pattern destination must be refused),
    or deleted leaving its durable on a
    topic or its registry record (a topic created later would get the durable again and
    keep messages nobody reads)."""
    base = fresh("shop")
    group = Destination(TOPIC, f"{base}.*", "tail")
    prefix = prefix_of(nats_url)
    consumer = await transport.subscribe(group, recorder(Collector()), concurrency=1)
    await consumer.stop(0)
    await transport.publish_to_group(group, [out(f"{base}.eu", b"1"), out(f"{base}.us", b"2")])
    assert await transport.depth(group) == 2
    with pytest.raises(InvalidDestination, match="own topic"):
        await transport.publish_to_group(group, [out(f"{base}.*", b"which topic?")])
    await transport.delete_group(group)
    await transport.delete_group(group)
    assert await transport.depth(group) == 0
    await transport.publish([out(f"{base}.asia", b"3")])
    durable = pattern_durable(group)
    for topic in ("eu", "us", "asia"):
        names = [c.name for c in await js.consumers_info(stream_name(f"{base}.{topic}", prefix))]
        assert durable not in names
    registry = stream_name(REGISTRY, prefix)
    info = await js.stream_info(registry, subjects_filter=f"{prefix}.{REGISTRY}.{durable}")
    assert not info.state.subjects


async def test_a_pattern_group_copy_naming_only_the_pattern_is_refused(nats_url: str) -> None:
    """Bug caught: the README's limit no longer holding as stated. JetStream keeps a pattern
    group's messages per topic stream, so a copy for a pattern group must name the topic it
    came from (the core takes it from ``dlq-topic``); one naming only the pattern (a dead
    letter stored before that header existed) must fail with InvalidDestination, never be
    published to some topic stream where the handler would see a wrong topic."""
    base = fresh("fleet")
    pattern = f"{base}.*"
    bus = Bus.from_url(f"{nats_url}&pattern_interval=0.2", service="ops")
    source = Destination(TOPIC, pattern, "ops")
    async with bus:
        admin = bus.transport
        assert isinstance(admin, BrokerAdmin)
        copy = OutgoingMessage(Destination(TOPIC, pattern), b"1", {"ce-id": "x"}, None)
        with pytest.raises(InvalidDestination, match="own topic"):
            await admin.publish_to_group(source, [copy])
