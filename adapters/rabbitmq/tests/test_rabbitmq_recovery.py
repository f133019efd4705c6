"""Objects deleted behind the transport's back are re-declared; nothing sent is lost."""

from __future__ import annotations

import asyncio

from messagebus_rabbitmq import RabbitMQTransport, bucket_for, retry_exchange
from rmq_helpers import Inbox, group, message, queue, topic

from messagebus.transports import Delivery, TransportURL


async def test_queue_deleted_after_declaration_is_redeclared_on_send(rabbitmq_url: str, name: str, admin) -> None:
    admin.cleanup_later(queues=(name,))
    t = RabbitMQTransport.from_url(TransportURL.parse(rabbitmq_url))
    await t.connect()
    try:
        await t.publish([message(queue(name), 1)])
        ch = await admin.conn.channel()
        await ch.queue_delete(name)
        # The transport still believes the queue exists: the mandatory publish comes back
        # unroutable, the queue is declared again and the message sent again.
        await t.publish([message(queue(name), 2)])
        assert await admin.queue_info(name) == (1, 0)
    finally:
        await t.close()


async def test_topic_exchange_deleted_is_redeclared_on_publish(rabbitmq_url: str, name: str, admin) -> None:
    admin.cleanup_later(exchanges=(name,))
    t = RabbitMQTransport.from_url(TransportURL.parse(rabbitmq_url))
    await t.connect()
    try:
        await t.publish([message(topic(name), 1)])
        ch = await admin.conn.channel()
        await ch.exchange_delete(name)
        await t.publish([message(topic(name), 2), message(topic(name), 3)])
        assert await admin.exchange_exists(name)
    finally:
        await t.close()


async def test_consumer_survives_its_queue_being_deleted(rabbitmq_url: str, name: str, admin) -> None:
    qname = f"{name}.g"
    admin.cleanup_later(queues=(qname,), exchanges=(name,))
    t = RabbitMQTransport.from_url(TransportURL.parse(rabbitmq_url))
    await t.connect()
    try:
        inbox = Inbox()
        consumer = await t.subscribe(group(name, "g"), inbox, concurrency=1)
        await t.publish([message(topic(name), 1)])
        await inbox.wait_for(1)
        ch = await admin.conn.channel()
        await ch.queue_delete(qname)  # the broker cancels our consumer
        await admin.wait_consumers({qname: 1})  # re-declared and consumed again
        await t.publish([message(topic(name), 2)])
        await inbox.wait_numbers({1, 2})
        assert consumer.restarts >= 1
        await consumer.stop(1)
    finally:
        await t.close()


async def test_deleted_retry_bucket_is_redeclared(rabbitmq_url: str, name: str, admin) -> None:
    admin.cleanup_later(queues=(name,))
    delay = 0.04
    bucket = retry_exchange(bucket_for(delay))
    t = RabbitMQTransport.from_url(TransportURL.parse(rabbitmq_url))
    await t.connect()
    attempts: list[int] = []
    done = asyncio.Event()

    async def handler(delivery: Delivery) -> None:
        attempts.append(delivery.attempt)
        if delivery.attempt == 1:
            await delivery.retry(delay, {})
        elif delivery.attempt == 2:
            # Someone deletes the bucket behind our back: the next retry comes back unroutable,
            # the bucket is declared again and the retry published again.
            ch = await admin.conn.channel()
            await ch.queue_delete(bucket)
            await ch.exchange_delete(bucket)
            await delivery.retry(delay, {})
        else:
            await delivery.ack()
            done.set()

    consumer = await t.subscribe(queue(name), handler, concurrency=1)
    try:
        await t.publish([message(queue(name), 1)])
        await asyncio.wait_for(done.wait(), 20)
        assert attempts == [1, 2, 3]
        assert await admin.queue_exists(bucket)
    finally:
        await consumer.stop(1)
        await t.close()
