"""BrokerAdmin on SQS/SNS (issue 18): dead-letter queues listed, depth, publishing to one
group, deleting a group; against moto's server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
from messagebus_sqs import SqsTransport, queue_name
from messagebus_sqs._topology import logical_dead_letter
from sqs_helpers import make_url, message, queue, topic_arns

from messagebus import Bus, InvalidDestination, Retry
from messagebus.transports import BrokerAdmin, Delivery, Destination, DestinationKind

TIMEOUT = 30.0
TOPIC = Destination(DestinationKind.TOPIC, "orders.created")


def group(name: str, topic: str = TOPIC.name) -> Destination:
    return Destination(DestinationKind.TOPIC, topic, name)


async def declare_group(transport: SqsTransport, source: Destination) -> None:
    """The group's queue and raw subscription, as its consumer makes them, with no consumer
    (one stopped would leave a poll that may take a message and count a receive)."""
    assert source.group is not None
    topology = transport.connection.require()
    await transport.connection.run(topology.subscription_queue, source.name, source.group)


async def wait_depth(transport: SqsTransport, source: Destination, n: int) -> None:
    """Wait until ``source`` holds ``n`` messages: SNS may deliver to the queues after
    ``publish`` returned, and the bus dead-letters after the handler returned. A count kept
    by the broker sends no event to wait on, hence the poll."""
    async with asyncio.timeout(TIMEOUT):
        while await transport.depth(source) != n:  # noqa: ASYNC110
            await asyncio.sleep(0.05)


def queue_names(sqs: Any, prefix: str) -> list[str]:
    return sorted(u.rsplit("/", 1)[1] for u in sqs.list_queues(QueueNamePrefix=prefix).get("QueueUrls", []))


@pytest.fixture
async def fifo_transport(moto_endpoint: str, prefix: str) -> AsyncIterator[SqsTransport]:
    t = SqsTransport.from_url(make_url(moto_endpoint, prefix, fifo=True))
    await t.connect()
    try:
        yield t
    finally:
        await t.close()


def test_dead_letter_names_are_read_back_exactly_or_not_at_all() -> None:
    """Bug caught: a physical name read back as the wrong logical name (a ``-`` of the
    logical name taken for a ``.``), a work queue or another prefix's or kind's queue read as
    a dead-letter queue, or an endless search on a name with many dashes."""
    for logical in ("orders.created.billing.dlq", "a-b.c_d.dlq", "x.dlq", "a-dlq-b.g.dlq", "a.b-c.d-e-f.g.dlq"):
        for fifo in (False, True):
            physical = queue_name(logical, prefix="p-", fifo=fifo)
            assert logical_dead_letter(physical, prefix="p-", fifo=fifo) == logical
            assert logical_dead_letter(physical, prefix="q-", fifo=fifo) is None
            assert logical_dead_letter(physical, prefix="p-", fifo=not fifo) is None
    for not_listed in ("jobs", "orders.billing", "jobs-dlq", "x" * 80 + ".dlq", "-".join("abcdefghijklmn") + ".dlq"):
        assert logical_dead_letter(queue_name(not_listed, prefix="p-"), prefix="p-") is None


async def test_the_dead_letter_queues_of_failing_handlers_are_listed_by_logical_name(
    sqs_url: str, moto_endpoint: str, prefix: str
) -> None:
    """Bug caught: dead-letter queues not found (hashed physical names not mapped back to
    ``<topic>.<group>.dlq`` / ``<queue>.dlq``), other queues (a group's, a work queue, one
    merely named ``...-dlq``) or another prefix's dead-letter queues listed, or no sorting."""
    bus = Bus.from_url(sqs_url, service="billing", retry=Retry(max_attempts=1))

    @bus.subscribe(TOPIC.name)
    async def on_order(body: dict[str, int]) -> None:
        raise ValueError("boom")

    @bus.consume("jobs")
    async def on_job(body: dict[str, int]) -> None:
        raise ValueError("boom")

    other = SqsTransport.from_url(make_url(moto_endpoint, "x" + prefix))
    async with bus:
        transport = bus.transport
        assert isinstance(transport, SqsTransport) and isinstance(transport, BrokerAdmin)
        await transport.publish([message(queue("jobs-dlq"), b"{}")])  # a queue, not a dead-letter queue
        await other.connect()
        await other.publish([message(queue("elsewhere.dlq"), b"{}")])
        await bus.publish(TOPIC.name, {"n": 1})
        await bus.send("jobs", {"n": 2})
        await wait_depth(transport, queue("orders.created.billing.dlq"), 1)
        await wait_depth(transport, queue("jobs.dlq"), 1)
        assert await transport.dead_letter_queues() == ["jobs.dlq", "orders.created.billing.dlq"]
        assert await other.dead_letter_queues() == ["elsewhere.dlq"]
    await other.close()


async def test_depth_counts_a_queue_and_a_group_and_a_missing_one_is_0_and_not_created(
    transport: SqsTransport, raw_clients: tuple[Any, Any], prefix: str
) -> None:
    """Bug caught: depth read from the wrong queue (the topic's, another group's), counting
    nothing, or asking for a missing queue creating it (an empty queue left per query)."""
    sqs, sns = raw_clients
    assert await transport.depth(queue("never")) == 0
    assert await transport.depth(group("nobody")) == 0
    assert queue_names(sqs, prefix) == []
    assert [arn for arn in topic_arns(sns) if prefix in arn] == []
    await declare_group(transport, group("g1"))
    await declare_group(transport, group("g2"))
    await transport.publish([message(TOPIC, b"t%d" % i) for i in range(3)])
    await transport.publish([message(queue("work"), b"w%d" % i) for i in range(4)])
    await wait_depth(transport, group("g1"), 3)
    await wait_depth(transport, group("g2"), 3)
    assert await transport.depth(queue("work")) == 4
    with pytest.raises(InvalidDestination, match="a queue or a topic's group"):
        await transport.depth(TOPIC)


@pytest.mark.parametrize("fifo", [False, True], ids=["standard", "fifo"])
async def test_publish_to_group_reaches_only_that_group_as_a_first_attempt_even_while_stopped(
    transport: SqsTransport, fifo_transport: SqsTransport, fifo: bool
) -> None:
    """Bug caught: a replay published to the topic (every group gets it again), a message
    lost while the group's consumer is not running, arriving as a later attempt, with its
    body, key or headers changed, or (FIFO) dropped as a duplicate of the same message id
    within SQS's five-minute deduplication window."""
    t = fifo_transport if fifo else transport
    target, bystander = group("g1"), group("g2")
    await declare_group(t, target)
    await declare_group(t, bystander)
    sent = message(TOPIC, b"\x00binary\xff", {"region": "eu", "x-trace": "1"}, key="k1")
    await t.publish_to_group(target, [sent])
    await t.publish_to_group(target, [sent])  # a second replay of the same message
    assert await t.depth(target) == 2
    assert await t.depth(bystander) == 0

    got: list[Delivery] = []
    both = asyncio.Event()

    async def handle(delivery: Delivery) -> None:
        got.append(delivery)
        await delivery.ack()
        if len(got) == 2:
            both.set()

    consumer = await t.subscribe(target, handle, concurrency=1)
    try:
        async with asyncio.timeout(TIMEOUT):
            await both.wait()
    finally:
        await consumer.stop(1.0)
    for delivery in got:
        assert delivery.attempt == 1
        assert delivery.body == sent.body and delivery.key == "k1"
        assert {k: delivery.headers[k] for k in sent.headers} == sent.headers
    assert await t.depth(bystander) == 0
    # A group that was never declared gets its queue (the next subscribe subscribes it).
    await t.publish_to_group(group("new"), [sent])
    assert await t.depth(group("new")) == 1
    # A queue's dead letter goes back to its queue the same way.
    await t.publish_to_group(queue("jobs"), [replace(sent, destination=queue("jobs"))] * 2)
    assert await t.depth(queue("jobs")) == 2


async def test_delete_group_removes_its_queue_subscription_and_dead_letters_only(
    transport: SqsTransport, raw_clients: tuple[Any, Any], prefix: str
) -> None:
    """Bug caught: a deleted group's subscription left on the topic (SNS keeps sending to a
    missing queue), its queue or dead-letter queue left behind, another group's queue or the
    topic touched, a second delete (or one of a group never made) raising or creating a
    topic, or the transport's cache still believing the group subscribed (a later subscribe
    of the same group in this process would then never receive)."""
    sqs, sns = raw_clients
    gone, kept = group("g1"), group("g2")
    await declare_group(transport, gone)
    await declare_group(transport, kept)
    await transport.publish([message(TOPIC, b"a"), message(TOPIC, b"b")])
    await transport.publish([message(queue(d.dead_letter_queue), b"dead") for d in (gone, kept)])
    await wait_depth(transport, gone, 2)
    await wait_depth(transport, kept, 2)
    topics_before = topic_arns(sns)

    await transport.delete_group(gone)
    await transport.delete_group(gone)
    await transport.delete_group(group("never", topic="no.such.topic"))

    assert await transport.depth(gone) == 0
    assert await transport.dead_letter_queues() == ["orders.created.g2.dlq"]
    assert await transport.depth(kept) == 2
    assert topic_arns(sns) == topics_before
    [topic_arn] = [arn for arn in topics_before if prefix in arn]
    subscriptions = sns.list_subscriptions_by_topic(TopicArn=topic_arn)["Subscriptions"]
    assert [s["Endpoint"].rsplit(":", 1)[1] for s in subscriptions] == [
        n for n in queue_names(sqs, prefix) if "g2" in n and "dlq" not in n
    ]
    # The same transport subscribes the group again: a new queue and a new subscription.
    await declare_group(transport, gone)
    await transport.publish([message(TOPIC, b"c")])
    await wait_depth(transport, gone, 1)
    await wait_depth(transport, kept, 3)


async def test_admin_refuses_what_is_not_a_group(transport: SqsTransport) -> None:
    """Bug caught: publish_to_group to a bare topic (every group), or delete_group of a
    topic or a queue, reaching AWS instead of a clear error."""
    with pytest.raises(InvalidDestination, match="a queue or a topic's group"):
        await transport.publish_to_group(TOPIC, [message(TOPIC, b"x")])
    for bad in (TOPIC, queue("jobs")):
        with pytest.raises(InvalidDestination, match="is not a topic's group"):
            await transport.delete_group(bad)


async def test_a_look_at_a_dead_letter_queue_leaves_every_message_for_the_next_look(
    moto_endpoint: str, prefix: str
) -> None:
    """Bug caught: the consumer of a dead-letter queue (what peek reads with) stopping with a
    long poll still in flight, which takes what the stop just handed back: the next look
    finds the queue empty (depth 0) and every message counts one receive more."""
    t = SqsTransport.from_url(make_url(moto_endpoint, prefix, wait_time=20))
    await t.connect()
    waits: list[int] = []
    polling = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_poll(params: dict[str, Any], **_: Any) -> None:  # on the poll thread
        waits.append(params["WaitTimeSeconds"])
        loop.call_soon_threadsafe(polling.set)

    t.sqs_client.meta.events.register("provide-client-params.sqs.ReceiveMessage", on_poll)
    dlq = queue("jobs.dlq")
    looks: list[list[Delivery]] = [[], []]
    forever = asyncio.Event()  # never set: what a look reads stays unsettled
    try:
        await t.publish([message(dlq, b"dead%d" % i) for i in range(3)])
        for seen in looks:
            all_held = asyncio.Event()

            async def hold(delivery: Delivery, seen: list[Delivery] = seen, all_held: asyncio.Event = all_held) -> None:
                seen.append(delivery)
                if len(seen) == 3:
                    all_held.set()
                await forever.wait()

            consumer = await t.subscribe(dlq, hold, concurrency=10)
            async with asyncio.timeout(TIMEOUT):
                await all_held.wait()
                assert await t.depth(dlq) == 0, "messages held by a consumer are not counted"
                polling.clear()
                await polling.wait()  # the next poll is in flight: the one a stop must not leave
            await consumer.stop(0.0)
            assert await t.depth(dlq) == 3
    finally:
        await t.close()
    assert [d.attempt for d in looks[1]] == [2, 2, 2]
    assert set(waits) == {1}, "a dead-letter queue's polls are short, so its stop can wait for the last one"
