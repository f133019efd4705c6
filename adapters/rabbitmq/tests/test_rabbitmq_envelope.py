"""What handlers see: native message, CloudEvents on the wire, telemetry, prefetch."""

from __future__ import annotations

import asyncio
import shutil
import subprocess

import aio_pika
import pytest
from messagebus_rabbitmq import RabbitMQTransport
from rmq_helpers import Inbox, queue

from messagebus import Bus, Envelope
from messagebus.transports import TransportURL


async def test_envelope_raw_wire_headers_and_telemetry(rabbitmq_url: str, name: str, admin) -> None:
    admin.cleanup_later(queues=(name,))
    got: asyncio.Queue[Envelope] = asyncio.Queue()
    bus = Bus.from_url(rabbitmq_url, service="shop")

    @bus.consume(name)
    async def handle(item: dict[str, int], envelope: Envelope) -> None:
        await got.put(envelope)

    async with bus:
        await bus.send(name, {"n": 1}, key="order-9", headers={"x-tenant": "acme"})
        env = await asyncio.wait_for(got.get(), 20)
    assert isinstance(env.raw, aio_pika.IncomingMessage)
    wire = env.raw.headers
    # CloudEvents AMQP binding: the preferred cloudEvents_ prefix on every attribute (one
    # separator per message); datacontenttype is the content_type property.
    assert wire["cloudEvents_source"] == "shop"
    assert wire["cloudEvents_specversion"] == "1.0"
    assert not [k for k in wire if k.startswith("cloudEvents:")]
    assert "cloudEvents_datacontenttype" not in wire
    assert env.raw.content_type == "application/json"
    assert env.raw.message_id == env.id
    assert env.raw.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert env.content_type == "application/json"
    assert env.headers["x-tenant"] == "acme"
    assert not [k for k in env.headers if k.startswith(("ce-", "cloudEvents", "messagebus-"))]
    assert env.key == "order-9"
    assert env.messaging_system == "rabbitmq"
    attrs = env.messaging_attributes
    assert attrs["messaging.rabbitmq.destination.routing_key"] == name
    assert attrs["messaging.rabbitmq.queue.name"] == name
    assert isinstance(attrs["messaging.rabbitmq.message.delivery_tag"], int)
    assert attrs["messaging.message.id"] == env.id


async def test_foreign_producer_message_is_understood(rabbitmq_url: str, name: str, admin) -> None:
    admin.cleanup_later(queues=(name,))
    t = RabbitMQTransport.from_url(TransportURL.parse(rabbitmq_url))
    await t.connect()
    try:
        inbox = Inbox()
        consumer = await t.subscribe(queue(name), inbox, concurrency=1)
        conn = await aio_pika.connect(rabbitmq_url)
        async with conn:
            ch = await conn.channel()
            await ch.default_exchange.publish(
                aio_pika.Message(
                    b'{"n": 5}',
                    content_type="application/json",
                    headers={"retries": 3, "flag": True, "text": "hi", "nested": {"a": 1}},
                ),
                routing_key=name,
            )
        [d] = await inbox.wait_for(1)
        assert d.headers["ce-datacontenttype"] == "application/json"
        assert d.headers["retries"] == "3"
        assert d.headers["flag"] == "True"
        assert d.headers["text"] == "hi"
        assert "nested" not in d.headers
        assert d.attempt == 1 and d.key is None
        await consumer.stop(1)
    finally:
        await t.close()


@pytest.mark.skipif(shutil.which("rabbitmqctl") is None, reason="needs rabbitmqctl to read consumer prefetch")
@pytest.mark.parametrize(("query", "concurrency", "expected"), [("", 3, 3), ("?prefetch=50", 2, 50)])
async def test_prefetch_follows_concurrency_or_option(
    rabbitmq_url: str, name: str, admin, query: str, concurrency: int, expected: int
) -> None:
    if rabbitmq_url != "amqp://guest:guest@127.0.0.1:5672/":
        pytest.skip("rabbitmqctl inspects the local broker only")
    admin.cleanup_later(queues=(name,))
    t = RabbitMQTransport.from_url(TransportURL.parse(rabbitmq_url + query))
    await t.connect()
    try:
        consumer = await t.subscribe(queue(name), Inbox(), concurrency=concurrency)
        out = await asyncio.to_thread(
            subprocess.run,
            [
                "rabbitmqctl",
                "list_consumers",
                "-q",
                "--no-table-headers",
                "queue_name",
                "prefetch_count",
                "ack_required",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        rows = [line.split("\t") for line in out.stdout.splitlines() if line.startswith(name + "\t")]
        # rabbitmqctl prints the columns in its own order.
        assert [sorted(row[1:]) for row in rows] == [sorted([str(expected), "true"])]
        await consumer.stop(1)
    finally:
        await t.close()


@pytest.mark.skipif(shutil.which("rabbitmqctl") is None, reason="needs rabbitmqctl to read connection properties")
async def test_connection_name_and_heartbeat_reach_the_broker(rabbitmq_url: str, name: str) -> None:
    if rabbitmq_url != "amqp://guest:guest@127.0.0.1:5672/":
        pytest.skip("rabbitmqctl inspects the local broker only")
    t = RabbitMQTransport.from_url(TransportURL.parse(f"{rabbitmq_url}?connection_name={name}&heartbeat=17"))
    await t.connect()
    try:
        out = await asyncio.to_thread(
            subprocess.run,
            ["rabbitmqctl", "list_connections", "-q", "--no-table-headers", "client_properties", "timeout"],
            capture_output=True,
            text=True,
            check=True,
        )
        [line] = [line for line in out.stdout.splitlines() if f'"{name}"' in line]
        assert line.rstrip().endswith("17")
    finally:
        await t.close()
