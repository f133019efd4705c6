"""Issue 18 on Pub/Sub: the ``BrokerAdmin`` operations (dead-letter queues listed, depth,
a replay to one group, a group deleted) against the emulator."""

from __future__ import annotations

import asyncio

import pytest
from google.api_core import exceptions as gexc
from messagebus_pubsub import PubSubTransport, resource_id
from pubsub_helpers import PROJECT, Admin, Inbox, out

from messagebus import Bus, InvalidDestination, Reject
from messagebus._consumer import UnorderedHandler
from messagebus.testing._collect import Collector
from messagebus.transports import (
    BrokerAdmin,
    Delivery,
    DeliveryLike,
    Destination,
    DestinationKind,
)

TOPIC, QUEUE = DestinationKind.TOPIC, DestinationKind.QUEUE


async def stored(admin: Admin, *subscriptions: str) -> list[bytes]:
    """Bodies a pull finds in ``subscriptions`` (logical names) now; none are acked."""

    async def pull(subscription: str) -> list[bytes]:
        path = f"projects/{PROJECT}/subscriptions/{resource_id(subscription)}"
        try:
            # The emulator answers at once with what it has, an empty pull shortly before this.
            response = await admin.subscriber.pull(request={"subscription": path, "max_messages": 100}, timeout=1.5)
        except gexc.DeadlineExceeded:
            return []
        return [m.message.data for m in response.received_messages]

    return [body for bodies in await asyncio.gather(*map(pull, subscriptions)) for body in bodies]


async def test_a_failing_handlers_dead_letter_queue_is_listed(
    pubsub_url: str, transport: PubSubTransport, admin: Admin, name: str
) -> None:
    """Bug caught: dead-letter queues not found among the project's subscriptions (the
    operator's ``messagebus dlq`` shows nothing), a group named ``dlq`` or a retry
    subscription taken for one, or an id that is no logical name listed (every later
    ``peek`` of it fails)."""
    assert isinstance(transport, BrokerAdmin)
    topic = f"{name}.orders"
    bus = Bus.from_url(pubsub_url, service="billing")

    @bus.subscribe(topic, group="billing")
    async def refuse(item: dict[str, int]) -> None:
        raise Reject("bad order")

    # Read as the core reads it (a queue), which also makes its retry lane `...dlq~retry`.
    dead = Inbox()
    dead_consumer = await transport.subscribe(Destination(QUEUE, f"{topic}.billing.dlq"), dead, concurrency=1)
    # Not a dead-letter queue: a group named "dlq" (subscription `T.dlq` on topic T).
    other = await transport.subscribe(Destination(TOPIC, topic, "dlq"), Inbox(), concurrency=1)
    await other.stop(1)
    # Made by another tool: a legal Pub/Sub id that is no logical name ('+').
    foreign = f"{name}.a+b.dlq"
    await admin.publisher.create_topic(name=f"projects/{PROJECT}/topics/{foreign}")
    await admin.subscriber.create_subscription(
        name=f"projects/{PROJECT}/subscriptions/{foreign}", topic=f"projects/{PROJECT}/topics/{foreign}"
    )
    async with bus:
        await bus.publish(topic, {"n": 1})
        await dead.got.wait_for(1)
    await dead_consumer.stop(1)
    # Made after it, named before it: listed sorted. A plain queue is no dead-letter queue.
    await transport.publish([out(Destination(QUEUE, f"{name}.jobs.dlq"), b"d"), out(Destination(QUEUE, name), b"q")])
    listed = await transport.dead_letter_queues()
    assert [q for q in listed if q.startswith(name)] == [f"{name}.jobs.dlq", f"{topic}.billing.dlq"]
    assert listed == sorted(listed)
    await admin.subscriber.delete_subscription(subscription=f"projects/{PROJECT}/subscriptions/{foreign}")
    await admin.publisher.delete_topic(topic=f"projects/{PROJECT}/topics/{foreign}")


class Holder(UnorderedHandler):
    """Like the dead-letter tools' look: records each delivery and holds it unsettled."""

    def __init__(self) -> None:
        self.got: Collector[Delivery] = Collector(15.0)
        self.release = asyncio.Event()

    async def __call__(self, delivery: DeliveryLike) -> None:
        assert isinstance(delivery, Delivery)
        self.got.add(delivery)
        await self.release.wait()


async def test_a_held_dead_letter_does_not_hide_the_next_of_its_key(transport: PubSubTransport, name: str) -> None:
    """Bug caught: a dead-letter queue's subscription made with message ordering, so Pub/Sub
    withholds the next dead letter of a key while the tools hold the one before it unsettled
    (``peek`` shows one message of each key; a replay by id never finds the second)."""
    dlq = Destination(QUEUE, f"{name}.orders.billing.dlq")
    await transport.publish([out(dlq, b"first", "k1")])
    holder = Holder()
    consumer = await transport.subscribe(dlq, holder, concurrency=10)
    await holder.got.wait_for(1)
    await transport.publish([out(dlq, b"second", "k1")])
    try:
        assert [d.body for d in await holder.got.wait_for(2)] == [b"first", b"second"]
        assert [d.key for d in holder.got.items] == ["k1", "k1"]
    finally:
        await consumer.stop(0)
    await transport.delete_queue(dlq.name)


async def test_depth_is_zero_for_what_does_not_exist_and_none_otherwise(
    transport: PubSubTransport, admin: Admin, name: str
) -> None:
    """Bug caught: a queue or group holding messages reported as empty (``0``: the monitor
    would show a full queue as drained) when Pub/Sub cannot count them, a missing one not
    reported as ``0``, asking creating the subscription, and a topic without a group
    accepted (it has no subscription to count)."""
    queue = Destination(QUEUE, f"{name}.jobs")
    group = Destination(TOPIC, f"{name}.orders", "billing")
    await transport.publish([out(queue, f"m{i}".encode()) for i in range(3)])
    consumer = await transport.subscribe(group, Inbox(), concurrency=1)
    await consumer.stop(1)
    await transport.publish([out(Destination(TOPIC, group.name), f"m{i}".encode()) for i in range(3)])
    assert await transport.depth(queue) is None
    assert await transport.depth(group) is None
    # A group that only ever got a replay: its messages wait in its retry subscription.
    replayed = Destination(TOPIC, group.name, "audit")
    await transport.publish_to_group(replayed, [out(group, b"r")])
    assert await transport.depth(replayed) is None
    before = await admin.resources(name)
    assert await transport.depth(Destination(QUEUE, f"{name}.missing")) == 0
    assert await transport.depth(Destination(TOPIC, group.name, "missing")) == 0
    assert await admin.resources(name) == before
    with pytest.raises(InvalidDestination, match="without one"):
        await transport.depth(Destination(TOPIC, group.name))
    await transport.delete_queue(queue.name)
    assert await transport.depth(queue) == 0


async def test_publish_to_group_reaches_only_that_group_as_a_first_attempt(
    transport: PubSubTransport, admin: Admin, name: str
) -> None:
    """Bug caught: a replayed dead letter published to the topic (every group handles it
    again), delivered as a retry (attempt 2: one attempt fewer before it dead-letters
    again), without its key or headers, or lost when the group's consumer is not running
    (or the group was never subscribed: nothing stores it)."""
    topic = Destination(TOPIC, f"{name}.orders")
    target, bystander = Destination(TOPIC, topic.name, "billing"), Destination(TOPIC, topic.name, "audit")
    watching = Inbox()
    other = await transport.subscribe(bystander, watching, concurrency=1)
    replay = [out(topic, b"one", "k1", **{"x-tenant": "acme"}), out(topic, b"two", None, **{"x-tenant": "acme"})]
    sent_ids = {m.headers["ce-id"] for m in replay}
    # The target group was never subscribed, and no consumer of it runs.
    await transport.publish_to_group(target, replay)
    await transport.publish([out(topic, b"after")])
    await watching.got.wait_for(1)
    inbox = Inbox()
    consumer = await transport.subscribe(target, inbox, concurrency=1)
    got = {d.body: d for d in await inbox.got.wait_for(2)}
    await consumer.stop(1)
    await other.stop(1)
    assert set(got) == {b"one", b"two"}, "the group subscribed after 'after': only the replay reaches it"
    assert [got[b"one"].attempt, got[b"two"].attempt] == [1, 1]
    assert (got[b"one"].key, got[b"two"].key) == ("k1", None)
    assert {d.headers["ce-id"] for d in got.values()} == sent_ids
    assert all(d.headers["x-tenant"] == "acme" for d in got.values())
    assert not any(k.startswith("messagebus-") for d in got.values() for k in d.headers)
    assert [d.body for d in watching.got.items] == [b"after"]
    assert await stored(admin, f"{bystander.name}.audit", f"{bystander.name}.audit~retry") == []
    lane = await admin.subscriber.get_subscription(
        subscription=f"projects/{PROJECT}/subscriptions/{resource_id(f'{target.name}.billing~retry')}"
    )
    assert not lane.enable_message_ordering  # so a replay leaves its key's order, like a retry
    with pytest.raises(InvalidDestination, match="a queue or a topic with a group"):
        await transport.publish_to_group(topic, replay)


async def test_publish_to_group_of_a_queue_reaches_its_consumer_as_a_first_attempt(
    transport: PubSubTransport, name: str
) -> None:
    """Bug caught: a queue's dead letters that cannot be replayed (refused as no group), or
    replayed as a retry (attempt 2) or without their key and headers."""
    queue = Destination(QUEUE, f"{name}.jobs")
    await transport.publish_to_group(queue, [out(queue, b"job", "k1", **{"x-tenant": "acme"})])
    inbox = Inbox()
    consumer = await transport.subscribe(queue, inbox, concurrency=1)
    [delivery] = await inbox.got.wait_for(1)
    await consumer.stop(1)
    assert (delivery.body, delivery.attempt, delivery.key) == (b"job", 1, "k1")
    assert delivery.headers["x-tenant"] == "acme"
    await transport.delete_queue(queue.name)


async def test_delete_group_removes_its_lanes_and_dead_letters_only(
    transport: PubSubTransport, admin: Admin, name: str
) -> None:
    """Bug caught: a deleted group's retry lane or dead-letter queue left behind (``tail``
    leaving litter that never expires), the shared topic deleted with it (every other group
    detached), another group's subscription or waiting messages touched, a second delete
    failing, and a topic without a group accepted (it would name the topic itself)."""
    topic = Destination(TOPIC, f"{name}.orders")
    gone, kept = Destination(TOPIC, topic.name, "tail"), Destination(TOPIC, topic.name, "billing")
    for group in (gone, kept):
        consumer = await transport.subscribe(group, Inbox(), concurrency=1)
        await consumer.stop(1)
        await transport.publish([out(Destination(QUEUE, group.dead_letter_queue), b"dead")])
        await transport.publish_to_group(group, [out(topic, b"replayed")])
    await transport.publish([out(topic, b"waiting")])
    dlq_consumer = await transport.subscribe(Destination(QUEUE, gone.dead_letter_queue), Inbox(), concurrency=1)
    await dlq_consumer.stop(1)  # its retry lane exists too now

    await transport.delete_group(gone)

    prefix = f"{topic.name}."
    assert await admin.resources(f"{prefix}tail") == []
    # Topic and subscription ids are listed together: a pair per queue and retry lane.
    kept_ids = ("billing", "billing~retry", "billing~retry", "billing.dlq", "billing.dlq")
    assert await admin.resources(topic.name) == sorted([topic.name, *(prefix + i for i in kept_ids)])
    assert await transport.depth(gone) == 0
    listed = await transport.dead_letter_queues()
    assert kept.dead_letter_queue in listed
    assert gone.dead_letter_queue not in listed
    await transport.delete_group(gone)
    await transport.delete_group(Destination(TOPIC, f"{name}.never", "made"))
    inbox = Inbox()
    consumer = await transport.subscribe(kept, inbox, concurrency=1)
    assert sorted(d.body for d in await inbox.got.wait_for(2)) == [b"replayed", b"waiting"]
    await consumer.stop(1)
    with pytest.raises(InvalidDestination, match="a topic with a group"):
        await transport.delete_group(topic)
    await transport.delete_group(kept)
    assert await admin.resources(topic.name) == [topic.name]
