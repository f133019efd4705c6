"""Objects deleted behind the transport's back are re-declared; nothing sent is lost."""

from __future__ import annotations

from messagebus_rabbitmq import RabbitMQTransport
from rmq_helpers import Inbox, group, message, queue, topic

from messagebus.transports import TransportURL


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
