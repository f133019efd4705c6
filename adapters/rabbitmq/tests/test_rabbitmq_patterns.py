"""RabbitMQ specifics of issue 17's patterns: the reply queue deleted on stop, wildcard
bindings on the shared topic exchange, filters as headers-exchange bindings (replaced when
the filter changes), and a pattern subscription's retries staying in its own queue."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import aiormq
import pytest
from messagebus_rabbitmq import RabbitMQTransport, physical_names, queue_name, retry_exchange
from messagebus_rabbitmq._topology import TOPICS, filter_exchange
from rmq_helpers import Inbox, message, number, queue, topic

from messagebus import Bus, LifecycleError, TransportError
from messagebus.transports import Delivery, Destination, DestinationKind, TransportURL
from messagebus.transports import headers as h


@dataclass
class Job:
    n: int


def transport(url: str) -> RabbitMQTransport:
    return RabbitMQTransport.from_url(TransportURL.parse(url))


def sub(name: str, group: str, **filter: str) -> Destination:
    return Destination(DestinationKind.TOPIC, name, group, tuple(sorted(filter.items())))


async def test_reply_queue_is_deleted_on_stop_and_a_late_reply_does_not_bring_it_back(
    rabbitmq_url: str, name: str, admin
) -> None:
    """Catches a reply queue left behind on the broker by every stopped requester (no
    delete_queue, or one that misses the queue), and a late reply re-creating it (the
    publisher declares a queue it sends to on first use) or failing the responder."""
    admin.cleanup_later(queues=(name,))
    caller = Bus.from_url(rabbitmq_url, service="caller")
    responder = Bus.from_url(rabbitmq_url, service="responder")

    @responder.consume(name)
    async def double(job: Job) -> Job:
        return Job(n=job.n * 2)

    async with responder:
        async with caller:
            assert (await caller.request(name, Job(n=21), reply_type=Job, timeout=20)) == Job(n=42)
            replies = caller._replies.queue  # type: ignore[union-attr]
            assert await admin.queue_exists(replies)
        admin.cleanup_later(queues=(replies,))  # only if the test fails
        assert not await admin.queue_exists(replies)
        assert not await admin.queue_exists(f"{replies}.dlq")
        # A reply that comes after the requester stopped: confirmed, dropped, nothing made.
        late = message(queue(replies), 1, headers={h.CORRELATION_ID: "gone"})
        await responder.transport.publish([late])
        assert not await admin.queue_exists(replies)


async def test_delete_queue_removes_queue_and_dead_letters_and_is_idempotent(
    rabbitmq_url: str, name: str, admin
) -> None:
    """Catches delete_queue leaving the dead-letter queue, raising for a missing queue, or
    keeping the queue in the declared cache (a later send would then go nowhere)."""
    admin.cleanup_later(queues=(name, f"{name}.dlq"))
    t = transport(rabbitmq_url)
    await t.connect()
    try:
        await t.publish([message(queue(name), 1), message(queue(f"{name}.dlq"), 2)])
        await t.delete_queue(name)
        assert not await admin.queue_exists(name)
        assert not await admin.queue_exists(f"{name}.dlq")
        await t.delete_queue(name)
        await t.publish([message(queue(name), 3)])
        assert await admin.queue_info(name) == (1, 0)
    finally:
        await t.close()


async def test_pattern_gets_topics_made_later_with_their_names_and_retries_stay_in_its_queue(
    rabbitmq_url: str, name: str, admin
) -> None:
    """Catches a pattern bound to nothing (or by the message key), topics created after the
    subscription missed, Delivery.topic not naming the real topic (also after a retry), a
    ``*`` matching two segments, and a retry re-published to the topic (a copy for every
    group) instead of to the pattern's queue only."""
    pattern = sub(f"{name}.*", "audit")
    other = sub(f"{name}.a", "billing")
    qnames = (queue_name(pattern), queue_name(other))
    assert physical_names(pattern)["dead_letter"] == f"{name}._star_.audit.dlq"  # the core's dead-letter queue
    admin.cleanup_later(queues=qnames, exchanges=(f"{name}.a", f"{name}.b", f"{name}.a.x"))
    t = transport(rabbitmq_url)
    await t.connect()
    retried: list[Delivery] = []
    inbox = Inbox()

    async def audit(delivery: Delivery) -> None:
        if number(delivery) == 1 and delivery.attempt == 1:
            retried.append(delivery)
            await delivery.retry(0.01, {})
            return
        await inbox(delivery)

    try:
        await t.subscribe(pattern, audit, concurrency=4)
        billing = Inbox()
        await t.subscribe(other, billing, concurrency=4)
        # f"{name}.b" and f"{name}.a.x" never existed before this publish.
        await t.publish([message(topic(f"{name}.a"), 1, key="k1"), message(topic(f"{name}.a.x"), 2)])
        await t.publish([message(topic(f"{name}.b"), 3, key=f"{name}.zz")])
        await inbox.wait_numbers({1, 3})
        by_number = {number(d): d for d in inbox.items}
        assert set(by_number) == {1, 3}  # 2 is two segments deep: not for "*"
        assert by_number[1].topic == f"{name}.a" and by_number[1].attempt == 2
        assert by_number[3].topic == f"{name}.b"
        assert retried and retried[0].topic == f"{name}.a"
        await billing.wait_for(1)
        assert billing.numbers() == [1] and billing.items[0].topic is None
        assert await admin.queue_info(qnames[1]) == (0, 1)  # the retry did not reach billing
    finally:
        await t.close()


async def test_message_of_a_publisher_before_wildcards_is_not_taken_for_another_topic(
    rabbitmq_url: str, name: str, admin
) -> None:
    """Catches a pattern delivering a message whose routing key is its key (an older
    publisher's) under a wrong topic: the key matches the pattern, its topic does not."""
    pattern = sub(f"{name}.*", "audit")
    admin.cleanup_later(queues=(queue_name(pattern),), exchanges=(f"{name}.x",))
    t = transport(rabbitmq_url)
    await t.connect()
    try:
        inbox = Inbox()
        await t.subscribe(pattern, inbox, concurrency=1)
        await t.publish([message(topic(f"{name}.x"), 0)])  # declares the exchange and its binding
        await inbox.wait_for(1)
        ch = await admin.conn.channel()
        await ch.basic_publish(b'{"n": 1}', exchange=f"{name}.x", routing_key=f"{name}.key")
        await t.publish([message(topic(f"{name}.x"), 2)])
        await inbox.wait_numbers({0, 2})
        assert inbox.numbers() == [0, 2]
    finally:
        await t.close()


async def test_filter_binds_through_a_headers_exchange_and_follows_filter_changes(
    rabbitmq_url: str, name: str, admin
) -> None:
    """Catches a filtered group's queue still bound to its topic exchange with ``#`` (it
    would get every message), and an old filter's binding surviving a new deployment
    (``eu`` messages still routed after the filter became ``us``, or after it was removed:
    nothing routed)."""
    plain, eu, us = sub(name, "g"), sub(name, "g", region="eu"), sub(name, "g", region="us")
    qname = queue_name(plain)
    assert physical_names(eu)["filter"] == filter_exchange(eu)
    assert len(filter_exchange(sub("t" * 200, "g" * 200, a="b")).encode()) <= 255
    admin.cleanup_later(queues=(qname,), exchanges=(name, filter_exchange(eu)))
    t = transport(rabbitmq_url)
    await t.connect()

    async def routed(source: Destination) -> tuple[int, int]:
        """Declare ``source``, stop consuming, publish one eu, one us, one unlabelled
        message; how many reached the queue."""
        consumer = await t.subscribe(source, Inbox(), concurrency=1)
        await consumer.stop(1)
        ch = await admin.conn.channel()
        await ch.queue_purge(qname)
        regions = ({"region": "eu"}, {"region": "us", "other": "1"}, {})
        await t.publish([message(topic(name), i, headers=r) for i, r in enumerate(regions)])
        return await admin.queue_info(qname)

    try:
        assert await routed(plain) == (3, 0)
        assert await routed(eu) == (1, 0)
        assert await routed(eu) == (1, 0)  # same filter again: nothing replaced
        assert await routed(us) == (1, 0)
        assert await routed(plain) == (3, 0)
        assert not await admin.exchange_exists(filter_exchange(eu))
    finally:
        await t.close()


async def test_filtered_pattern_subscription(rabbitmq_url: str, name: str, admin) -> None:
    """Catches a filter on a pattern subscription bound to the topic exchange rather than
    to the shared one by the pattern (it would get nothing, or everything), and a filter
    exchange outliving its queue (it would go on taking every message of its source)."""
    source = sub(f"{name}.#", "g", region="eu")
    admin.cleanup_later(queues=(queue_name(source),), exchanges=(f"{name}.a.b", filter_exchange(source)))
    t = transport(rabbitmq_url)
    await t.connect()
    try:
        consumer = await t.subscribe(source, Inbox(), concurrency=1)
        await consumer.stop(1)
        await t.publish(
            [
                message(topic(f"{name}.a.b"), 1, headers={"region": "eu"}),
                message(topic(f"{name}.a.b"), 2, headers={"region": "us"}),
                message(topic(f"{name}x"), 3, headers={"region": "eu"}),
            ]
        )
        assert await admin.queue_info(queue_name(source)) == (1, 0)
        ch = await admin.conn.channel()
        await ch.queue_delete(queue_name(source))  # the group is removed: no filter exchange left over
        assert not await admin.exchange_exists(filter_exchange(source))
    finally:
        await t.close()


async def test_topic_exchange_forwards_to_the_shared_one(rabbitmq_url: str, name: str, admin) -> None:
    """Catches a topic exchange declared without its binding to TOPICS (pattern
    subscriptions would miss its messages) and TOPICS not being a durable topic exchange."""
    admin.cleanup_later(exchanges=(name,))
    t = transport(rabbitmq_url)
    await t.connect()
    try:
        await t.publish([message(topic(name), 1)])
        ch = await admin.conn.channel()
        await ch.exchange_declare(TOPICS, exchange_type="topic", durable=True)
        probe = await ch.queue_declare("", exclusive=True)
        assert probe.queue is not None
        await ch.queue_bind(probe.queue, TOPICS, routing_key=name)
        await t.publish([message(topic(name), 2)])
        got = await ch.basic_get(probe.queue, no_ack=True)
        assert isinstance(got, aiormq.abc.DeliveredMessage) and got.delivery.routing_key == name
    finally:
        await t.close()


async def test_delayed_send_is_held_and_never_handled_early(rabbitmq_url: str, name: str, admin) -> None:
    """Catches a delayed message handled before it is due on RabbitMQ (a delay bucket that
    rounds down, or a hold that is not re-published) or holding back an undelayed one."""
    admin.cleanup_later(queues=(name,))
    bus = Bus.from_url(rabbitmq_url, service="delays")
    handled: dict[int, float] = {}
    done = asyncio.Event()

    @bus.consume(name)
    async def handle(job: Job) -> None:
        handled[job.n] = time.time()
        if len(handled) == 2:
            done.set()

    async with bus:
        due = time.time() + 1.5 - 0.001  # the header's due time (whole milliseconds, cut) is at least this
        await bus.send(name, Job(n=1), delay=1.5)
        await bus.send(name, Job(n=2))
        await asyncio.wait_for(done.wait(), 20)
    assert handled[1] >= due
    assert handled[2] < handled[1]


async def test_a_held_delayed_message_waits_in_the_bucket_below_its_remaining_delay(
    rabbitmq_url: str, name: str, admin
) -> None:
    """Catches holds rounded up like retries (0.31 s held in the 400 ms bucket: up to a
    third late) instead of down (300 ms; the bus holds the rest again): the bucket it went
    through is named in the broker's ``x-death`` header."""
    admin.cleanup_later(queues=(name,))
    t = transport(rabbitmq_url)
    await t.connect()
    inbox = Inbox()

    async def hold_once(delivery: Delivery) -> None:
        if delivery.attempt == 1:
            await delivery.retry(0.31, {h.HELD: "1"})
        else:
            await inbox(delivery)

    try:
        await t.publish([message(queue(name), 1)])
        await t.subscribe(queue(name), hold_once, concurrency=1)
        (back,) = await inbox.wait_for(1)
        assert back.headers[h.HELD] == "1"
        assert [d["queue"] for d in back.raw.headers["x-death"]] == [retry_exchange(300)]
    finally:
        await t.close()


async def test_delete_queue_refused_by_the_broker_raises_a_transport_error(rabbitmq_url: str, name: str, admin) -> None:
    """Catches a refusal (here RESOURCE_LOCKED: another connection's exclusive queue)
    escaping as a raw aiormq exception instead of a messagebus TransportError, and a
    closed transport's delete_queue not raising LifecycleError."""
    ch = await admin.conn.channel()
    await ch.queue_declare(name, exclusive=True)
    t = transport(rabbitmq_url)
    await t.connect()
    try:
        with pytest.raises(TransportError, match=name):
            await t.delete_queue(name)
        await t.delete_queue(f"{name}.other")  # the topology channel is usable again
    finally:
        await t.close()
    with pytest.raises(LifecycleError):
        await t.delete_queue(name)
