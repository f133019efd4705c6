"""Topology: exchanges, queues, bindings, retry buckets and DLQs exist with the right arguments."""

from __future__ import annotations

import asyncio

import aiormq
import pytest
from messagebus_rabbitmq import (
    RETRY_BUCKETS_MS,
    RabbitMQTransport,
    bucket_for,
    physical_name,
    physical_names,
    queue_name,
    retry_exchange,
)
from rmq_helpers import Inbox, group, message, queue, topic

from messagebus import Bus, Envelope, Reject, TopologyError
from messagebus.transports import TransportURL


def transport(url: str) -> RabbitMQTransport:
    return RabbitMQTransport.from_url(TransportURL.parse(url))


async def first_message(admin, qname: str) -> aiormq.abc.DeliveredMessage:  # type: ignore[no-untyped-def]
    """The first message of ``qname``, by a bounded blocking read (basic_consume), no sleeping."""
    ch = await admin.conn.channel()
    got: asyncio.Future[aiormq.abc.DeliveredMessage] = asyncio.get_running_loop().create_future()

    async def on_message(msg: aiormq.abc.DeliveredMessage) -> None:
        if not got.done():
            got.set_result(msg)

    await ch.queue_declare(qname, durable=True)  # exists already, or is created the same way
    await ch.basic_consume(qname, on_message, no_ack=True)
    return await asyncio.wait_for(got, 20)


async def test_subscription_declares_exchange_durable_queue_and_binding(rabbitmq_url: str, name: str, admin) -> None:
    admin.cleanup_later(queues=(f"{name}.billing",), exchanges=(name,))
    t = transport(rabbitmq_url)
    await t.connect()
    try:
        inbox = Inbox()
        consumer = await t.subscribe(group(name, "billing"), inbox, concurrency=2)
        assert await admin.exchange_exists(name)
        # Passive declares with the expected properties: an active declare with the same
        # properties succeeds only if durable/type match what we declared.
        ch = await admin.conn.channel()
        await ch.exchange_declare(name, exchange_type="topic", durable=True)
        ok = await ch.queue_declare(f"{name}.billing", durable=True)
        assert ok.consumer_count == 1
        with pytest.raises(aiormq.exceptions.ChannelPreconditionFailed):
            await ch.queue_declare(f"{name}.billing", durable=False)
        # The binding: a message published to the exchange with any routing key lands in the
        # queue; ours carry the topic name (pattern subscriptions match it on TOPICS).
        await t.publish([message(topic(name), 1, key="a.b.c")])
        ch2 = await admin.conn.channel()
        await ch2.basic_publish(b'{"n": 2}', exchange=name, routing_key="any.key")
        await inbox.wait_for(2)
        assert inbox.items[0].messaging_attributes["messaging.rabbitmq.destination.routing_key"] == name
        await consumer.stop(1)
    finally:
        await t.close()


async def test_queue_send_creates_durable_queue_before_any_consumer(rabbitmq_url: str, name: str, admin) -> None:
    admin.cleanup_later(queues=(name,))
    t = transport(rabbitmq_url)
    await t.connect()
    try:
        assert not await admin.queue_exists(name)
        await t.publish([message(queue(name), i) for i in range(3)])
        assert await admin.queue_info(name) == (3, 0)
        ch = await admin.conn.channel()
        await ch.queue_declare(name, durable=True)  # same properties: no conflict
        got = await ch.basic_get(name, no_ack=True)
        props = got.header.properties
        assert props.delivery_mode == 2, "messages must be persistent"
        assert props.content_type == "application/json"
        assert props.headers is not None and "cloudEvents_id" in props.headers
        assert props.message_id == props.headers["cloudEvents_id"]
    finally:
        await t.close()


async def test_dead_letter_queue_is_created_on_first_dead_letter(rabbitmq_url: str, name: str, admin) -> None:
    dlq = f"{name}.billing.dlq"
    admin.cleanup_later(queues=(f"{name}.billing", dlq), exchanges=(name,))
    bus = Bus.from_url(rabbitmq_url, service="billing")

    @bus.subscribe(name)
    async def handle(item: dict[str, int]) -> None:
        raise Reject("no")

    async with bus:
        assert not await admin.queue_exists(dlq)
        await bus.publish(name, {"n": 1})
        msg = await first_message(admin, dlq)
        assert msg.header.properties.headers is not None
        assert msg.header.properties.headers["dlq-error-type"] == "messagebus.Reject"
        assert msg.header.properties.delivery_mode == 2


async def test_retry_bucket_queue_arguments(rabbitmq_url: str, name: str, admin) -> None:
    admin.cleanup_later(queues=(name,))
    t = transport(rabbitmq_url)
    await t.connect()
    try:
        attempts: list[int] = []
        done = asyncio.Event()

        async def handler(delivery) -> None:  # type: ignore[no-untyped-def]
            attempts.append(delivery.attempt)
            if delivery.attempt == 1:
                await delivery.retry(0.05, {"x-why": "again"})
            else:
                assert delivery.headers["x-why"] == "again"
                await delivery.ack()
                done.set()

        consumer = await t.subscribe(queue(name), handler, concurrency=1)
        await t.publish([message(queue(name), 1)])
        await asyncio.wait_for(done.wait(), 20)
        assert attempts == [1, 2]
        bucket = retry_exchange(bucket_for(0.05))
        ch = await admin.conn.channel()
        # Equivalent declarations succeed, so the bucket has exactly these properties.
        await ch.exchange_declare(bucket, exchange_type="fanout", durable=True)
        await ch.queue_declare(
            bucket, durable=True, arguments={"x-message-ttl": bucket_for(0.05), "x-dead-letter-exchange": ""}
        )
        await consumer.stop(1)
    finally:
        await t.close()


def test_bucket_rounding_never_early_and_bounded() -> None:
    assert bucket_for(0) == 0
    assert bucket_for(0.004) == 0
    for delay in (0.01, 0.05, 0.3, 0.6, 1.0, 2.7, 45.0, 3600.0):
        ms = bucket_for(delay)
        assert ms >= delay * 1000 * 0.98
        assert ms <= delay * 1000 * 1.34
    assert bucket_for(10**9) == RETRY_BUCKETS_MS[-1]
    assert list(RETRY_BUCKETS_MS) == sorted(set(RETRY_BUCKETS_MS))


def test_bucket_for_a_held_delay_rounds_down() -> None:
    """Catches holds rounded up like retries: a 3.1 s delay would come 0.9 s late (bucket
    4 s) where rounding down (3 s) lets the bus hold the last 0.1 s again."""
    assert bucket_for(0.004, down=True) == 0
    assert bucket_for(0.007, down=True) == 10  # the smallest bucket: at most 5 ms late
    for delay in (0.01, 0.05, 0.3, 0.6, 1.0, 2.7, 3.1, 7.0, 45.0, 3600.0):
        ms = bucket_for(delay, down=True)
        assert delay * 1000 * 0.75 <= ms <= delay * 1000
    assert bucket_for(10**9, down=True) == RETRY_BUCKETS_MS[-1]


def test_names_fit_rabbitmq_limits() -> None:
    long_topic = "t" * 200
    long_group = "g" * 200
    q = queue_name(group(long_topic, long_group))
    assert len(q.encode()) <= 255
    assert q != queue_name(group(long_topic, "g" * 199 + "h"))
    assert physical_name("orders.created") == "orders.created"
    assert not physical_name("amq.orders").startswith("amq.")
    assert physical_name("amq.orders") != physical_name("amq.orders2")


async def test_existing_queue_with_other_arguments_is_explained(rabbitmq_url: str, name: str, admin) -> None:
    admin.cleanup_later(queues=(name,))
    ch = await admin.conn.channel()
    await ch.queue_declare(name, durable=True, arguments={"x-max-length": 10})
    t = transport(rabbitmq_url)
    await t.connect()
    try:
        with pytest.raises(TopologyError) as info:
            await t.subscribe(queue(name), Inbox(), concurrency=1)
        text = str(info.value)
        assert name in text and "x-max-length" in text and "already exists" in text
        assert isinstance(info.value.__cause__, aiormq.exceptions.ChannelPreconditionFailed)
        # The transport still works after the failed declaration.
        other = f"{name}.ok"
        admin.cleanup_later(queues=(other,))
        await t.publish([message(queue(other), 1)])
        assert await admin.queue_info(other) == (1, 0)
    finally:
        await t.close()


async def test_existing_non_durable_queue_is_explained_by_bus(rabbitmq_url: str, name: str, admin) -> None:
    admin.cleanup_later(queues=(name,))
    ch = await admin.conn.channel()
    await ch.queue_declare(name, durable=False)
    bus = Bus.from_url(rabbitmq_url, service="svc")

    @bus.consume(name)
    async def handle(envelope: Envelope) -> None: ...

    with pytest.raises(TopologyError, match="durable"):
        await bus.start()
    await bus.stop()


async def test_physical_names_are_the_objects_declared_and_dead_lettered_to(
    rabbitmq_url: str, name: str, admin
) -> None:
    """Catches physical_names naming other objects than the transport declares, consumes and
    dead-letters to (an operator or a tool reading them would look at the wrong queue)."""
    names = physical_names(group(name, "billing"))
    assert names == {"exchange": name, "queue": f"{name}.billing", "dead_letter": f"{name}.billing.dlq"}
    assert physical_names(topic(name)) == {"exchange": name}
    assert physical_names(queue(name)) == {"queue": name, "dead_letter": f"{name}.dlq"}
    long = group("t" * 200, "g" * 200)
    assert physical_names(long)["queue"] == queue_name(long)
    assert all(len(n.encode()) <= 255 for n in physical_names(long).values())
    admin.cleanup_later(queues=(names["queue"], names["dead_letter"]), exchanges=(name,))
    bus = Bus.from_url(rabbitmq_url, service="billing")

    @bus.subscribe(name)
    async def handle(item: dict[str, int]) -> None:
        raise Reject("no")

    async with bus:
        await admin.wait_consumers({names["queue"]: 1})
        assert await admin.exchange_exists(names["exchange"])
        await bus.publish(name, {"n": 1})
        await first_message(admin, names["dead_letter"])
