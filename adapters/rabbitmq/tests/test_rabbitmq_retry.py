"""Retries through delay buckets: redelivered to the same group only, never early, and a
long delay never holds back a short one (no head-of-line blocking)."""

from __future__ import annotations

import asyncio
import time

from messagebus_rabbitmq import RabbitMQTransport, bucket_for, retry_exchange
from rmq_helpers import Inbox, group, message, number, queue, topic

from messagebus.transports import Delivery, TransportURL


async def test_long_delay_does_not_block_short_delay(rabbitmq_url: str, name: str, admin) -> None:
    admin.cleanup_later(queues=(name,))
    t = RabbitMQTransport.from_url(TransportURL.parse(rabbitmq_url))
    await t.connect()
    back: list[tuple[int, int, float]] = []
    changed = asyncio.Event()
    sent_at: dict[int, float] = {}

    async def handler(delivery: Delivery) -> None:
        n = number(delivery)
        if delivery.attempt == 1:
            delay = 120.0 if n == 1 else 0.2  # message 1 waits two minutes, message 2 a moment
            sent_at[n] = time.monotonic()
            await delivery.retry(delay, {})
            return
        back.append((n, delivery.attempt, time.monotonic() - sent_at[n]))
        await delivery.ack()
        changed.set()

    consumer = await t.subscribe(queue(name), handler, concurrency=1)
    try:
        await t.publish([message(queue(name), 1)])
        await t.publish([message(queue(name), 2)])
        async with asyncio.timeout(20):
            while not back:
                changed.clear()
                await changed.wait()
        [(n, attempt, waited)] = back
        assert (n, attempt) == (2, 2), "the short retry came back while the long one still waits"
        assert waited >= 0.2 * 0.9
        # The long-delayed copy is parked in its bucket queue (a different queue), not lost.
        bucket = retry_exchange(bucket_for(120.0))
        admin.cleanup_later(queues=(bucket,), exchanges=(bucket,))
        assert (await admin.queue_info(bucket))[0] >= 1
    finally:
        await consumer.stop(1)
        await t.close()


async def test_retry_goes_back_to_this_group_only(rabbitmq_url: str, name: str, admin) -> None:
    admin.cleanup_later(queues=(f"{name}.a", f"{name}.b"), exchanges=(name,))
    t = RabbitMQTransport.from_url(TransportURL.parse(rabbitmq_url))
    await t.connect()
    a_attempts: list[int] = []
    a_done = asyncio.Event()

    async def group_a(delivery: Delivery) -> None:
        a_attempts.append(delivery.attempt)
        if delivery.attempt < 3:
            await delivery.retry(0.0 if delivery.attempt == 1 else 0.05, {"x-note": str(delivery.attempt)})
        else:
            assert delivery.headers["x-note"] == "2"
            await delivery.ack()
            a_done.set()

    b = Inbox()
    ca = await t.subscribe(group(name, "a"), group_a, concurrency=1)
    cb = await t.subscribe(group(name, "b"), b, concurrency=1)
    try:
        await t.publish([message(topic(name), 7, key="k1")])
        await asyncio.wait_for(a_done.wait(), 20)
        assert a_attempts == [1, 2, 3]
        await b.wait_for(1)
        # b saw the message once; a's retries went only to a's queue.
        assert await admin.queue_info(f"{name}.b") == (0, 1)
        assert [d.attempt for d in b.items] == [1]
        assert b.items[0].key == "k1"
    finally:
        await ca.stop(1)
        await cb.stop(1)
        await t.close()
