"""RabbitMQ interop on the real broker: the CloudEvents Python SDK reads what messagebus
publishes and messagebus reads what the SDK writes (binary mode with either AMQP prefix and
with ``ce-``, structured mode); FastStream publishes into messagebus subscribers and consumes
what messagebus publishes; a plain message gets the broker's id and time. Each exchange
counts lost, duplicated and unexpected messages, and nothing valid is dead-lettered."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aio_pika
import pytest
from cloudevents.core.bindings import amqp as ce_amqp
from cloudevents.core.bindings import rabbitmq as ce_rabbitmq
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from messagebus_rabbitmq import physical_names
from pydantic import BaseModel

from messagebus import Bus, Envelope, Retry
from messagebus.testing import Collector
from messagebus.transports import Destination, DestinationKind

faststream_rabbit = pytest.importorskip("faststream.rabbit", reason="FastStream (faststream[rabbit]) is not installed")

TIMEOUT = 30.0
WHEN = datetime(2024, 5, 1, 10, 0, 0, tzinfo=UTC)


class Order(BaseModel):
    n: int
    item: str


def ce_event(n: int, **attributes: Any) -> CloudEvent:
    return CloudEvent(
        {"id": f"ce-{n}", "source": "/foreign", "type": "shop.Order", "time": WHEN, **attributes},
        {"n": n, "item": "tea"},
    )


@contextlib.asynccontextmanager
async def amqp_channel(
    url: str, *, queues: tuple[str, ...] = (), exchanges: tuple[str, ...] = ()
) -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    """A raw aio-pika channel (the foreign client); deletes ``queues`` and ``exchanges`` after."""
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        yield channel
    finally:
        with contextlib.suppress(Exception):
            cleanup = await connection.channel()
            for queue in queues:
                await cleanup.queue_delete(queue)
            for exchange in exchanges:
                await cleanup.exchange_delete(exchange)
        await connection.close()


def amqp_message(body: bytes, properties: dict[str, Any], headers: dict[str, Any]) -> aio_pika.Message:
    """An SDK ``AMQPMessage``'s parts as the aio-pika message a foreign producer sends."""
    return aio_pika.Message(body, content_type=properties.get("content-type"), headers=headers)


def tally(ids: list[str], expected: set[str]) -> tuple[set[str], dict[str, int], set[str]]:
    """Jepsen's three: lost, duplicated and unexpected ids."""
    counts = Counter(ids)
    return expected - set(counts), {i: c for i, c in counts.items() if c > 1}, set(counts) - expected


async def test_cloudevents_sdk_reads_what_messagebus_publishes(rabbitmq_url: str, name: str) -> None:
    """Catches messagebus writing the AMQP binding in a form the SDK does not read (the
    ``cloudEvents:`` prefix, ``datacontenttype`` in the table instead of the ``content_type``
    property, mixed separators): a foreign consumer bound to the topic exchange gets every
    event with id, source, type, time, content type and data intact, once each."""
    exchange = physical_names(Destination(DestinationKind.TOPIC, name))["exchange"]
    bus = Bus.from_url(rabbitmq_url, service="billing")
    async with amqp_channel(rabbitmq_url, exchanges=(exchange,)) as channel:
        await channel.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        queue = await channel.declare_queue(exclusive=True)
        await queue.bind(exchange, "#")
        async with bus:
            for n in range(10):
                await bus.publish(name, Order(n=n, item="tea"), key=f"k{n}", headers={"x-tenant": "acme"})
        events: list[tuple[CloudEvent, aio_pika.abc.AbstractIncomingMessage]] = []
        async with asyncio.timeout(TIMEOUT), queue.iterator() as stream:
            async for message in stream:
                await message.ack()
                wire = ce_amqp.AMQPMessage(
                    properties={"content-type": message.content_type},
                    application_properties=dict(message.headers),
                    application_data=message.body,
                )
                events.append((ce_amqp.from_amqp(wire, JSONFormat()), message))
                if len(events) == 10:
                    break
    for event, message in events:
        assert event.get_specversion() == "1.0"
        assert event.get_id() == message.message_id and event.get_id()
        assert event.get_source() == "billing"
        assert event.get_type() == f"{Order.__module__}.Order"
        assert event.get_datacontenttype() == "application/json"
        assert isinstance(event.get_time(), datetime)
        names = [k for k in message.headers if k.lower().startswith("cloudevents")]
        assert names and all(k.startswith("cloudEvents_") for k in names), f"one separator, the preferred: {names}"
    lost, duplicated, unexpected = tally(
        [f"{e.get_data()['n']}" for e, _ in events],
        {str(n) for n in range(10)},
    )
    assert not (lost or duplicated or unexpected), (lost, duplicated, unexpected)


async def test_messagebus_reads_every_form_the_cloudevents_sdk_writes(rabbitmq_url: str, name: str) -> None:
    """Catches the bugs of issue 16 on AMQP: ``cloudEvents_`` attributes (the SDK's
    ``to_binary``) read as plain headers with id/type/source empty; the SDK's integer
    (milliseconds) ``time`` lost; structured mode dead-lettered as undecodable. Binary mode
    with ``cloudEvents_``, ``cloudEvents:`` and ``ce-`` names and structured mode each reach
    a typed handler with the event's id, type, source, time and data, once; nothing is
    dead-lettered."""
    queue = physical_names(Destination(DestinationKind.QUEUE, name))["queue"]
    dlq = physical_names(Destination(DestinationKind.QUEUE, name))["dead_letter"]
    got: Collector[tuple[Order, Envelope]] = Collector(TIMEOUT)
    dead: Collector[Envelope] = Collector(TIMEOUT)
    bus = Bus.from_url(rabbitmq_url, service="shop")

    @bus.consume(name)
    async def handle(order: Order, envelope: Envelope) -> None:
        got.add((order, envelope))

    @bus.consume(f"{name}.dlq")
    async def dead_letters(envelope: Envelope) -> None:
        dead.add(envelope)

    fmt = JSONFormat()
    json_type = {"datacontenttype": "application/json"}
    binary = ce_amqp.to_binary(ce_event(1, **json_type), fmt)
    colon = ce_amqp.to_binary(ce_event(2), fmt)  # no datacontenttype: JSON, as the format says
    structured = ce_amqp.to_structured(ce_event(3, **json_type), fmt)
    eventing = ce_rabbitmq.to_binary(ce_event(4, **json_type), fmt)  # the RabbitMQ eventing spec: ce- headers
    colon_headers = {k.replace("cloudEvents_", "cloudEvents:"): v for k, v in colon.application_properties.items()}
    messages = [
        amqp_message(binary.application_data, binary.properties, binary.application_properties),
        amqp_message(colon.application_data, colon.properties, colon_headers),
        amqp_message(structured.application_data, structured.properties, {}),
        aio_pika.Message(eventing.body, content_type=eventing.content_type, headers=dict(eventing.headers)),
    ]
    async with amqp_channel(rabbitmq_url, queues=(queue, dlq)) as channel, bus:
        for message in messages:
            await channel.default_exchange.publish(message, routing_key=queue)
        await got.wait_for(4)
    assert not dead.items, [e.wire_headers.get("dlq-error-message") for e in dead.items]
    by_id = {env.id: (order, env) for order, env in got.items}
    lost, duplicated, unexpected = tally([env.id for _, env in got.items], {"ce-1", "ce-2", "ce-3", "ce-4"})
    assert not (lost or duplicated or unexpected), (lost, duplicated, unexpected)
    for n in range(1, 5):
        order, env = by_id[f"ce-{n}"]
        assert order == Order(n=n, item="tea")
        assert (env.type, env.source) == ("shop.Order", "/foreign")
        assert env.timestamp == WHEN, f"form {n}: {env.wire_headers.get('ce-time')!r}"
        assert env.content_type.startswith("application/json")
        assert env.headers == {}, f"form {n}: binding names leaked into the user headers {env.headers}"


async def test_plain_message_gets_the_brokers_id_and_time_across_a_retry(rabbitmq_url: str, name: str) -> None:
    """Catches ``Envelope.id == ''`` for a foreign message with an AMQP ``message_id`` (what
    FastStream and Spring set) and the ``timestamp`` property ignored, and the stand-in id
    changing on the retry copy: both attempts see the broker's id and time."""
    queue = physical_names(Destination(DestinationKind.QUEUE, name))["queue"]
    seen: Collector[tuple[int, str, datetime | None]] = Collector(TIMEOUT)
    bus = Bus.from_url(rabbitmq_url, service="shop")

    @bus.consume(name, retry=Retry(max_attempts=2, initial_delay=0.01, jitter=0))
    async def handle(order: Order, envelope: Envelope) -> None:
        seen.add((envelope.attempt, envelope.id, envelope.timestamp))
        if envelope.attempt == 1:
            raise RuntimeError("transient")

    async with amqp_channel(rabbitmq_url, queues=(queue,)) as channel, bus:
        await channel.default_exchange.publish(
            aio_pika.Message(
                b'{"n": 1, "item": "tea"}', content_type="application/json", message_id="m-1", timestamp=WHEN
            ),
            routing_key=queue,
        )
        await seen.wait_for(2)
    assert seen.items == [(1, "m-1", WHEN), (2, "m-1", WHEN)]


async def test_faststream_publishes_into_messagebus_subscribers(rabbitmq_url: str, name: str) -> None:
    """Catches a FastStream producer that cannot reach a messagebus subscription or queue as
    documented in docs/interop.md (the exchange declared another way fails with
    PRECONDITION_FAILED; a message without CloudEvents attributes dead-lettered): 20 to the
    topic and 20 to the queue, each handled once, typed, none dead-lettered."""
    from faststream.rabbit import ExchangeType, RabbitBroker, RabbitExchange, RabbitQueue

    topic_names = physical_names(Destination(DestinationKind.TOPIC, name, "billing"))
    queue_names = physical_names(Destination(DestinationKind.QUEUE, f"{name}.q"))
    got: Collector[str] = Collector(TIMEOUT)
    dead: Collector[Envelope] = Collector(TIMEOUT)
    bus = Bus.from_url(rabbitmq_url, service="billing")

    @bus.subscribe(name, group="billing")
    async def on_event(order: Order, envelope: Envelope) -> None:
        assert envelope.content_type == "application/json"
        got.add(f"t{order.n}")

    @bus.consume(f"{name}.q")
    async def on_command(order: Order) -> None:
        got.add(f"q{order.n}")

    @bus.consume(f"{name}.billing.dlq")
    async def dead_events(envelope: Envelope) -> None:
        dead.add(envelope)

    @bus.consume(f"{name}.q.dlq")
    async def dead_commands(envelope: Envelope) -> None:
        dead.add(envelope)

    queues = (topic_names["queue"], topic_names["dead_letter"], queue_names["queue"], queue_names["dead_letter"])
    broker = RabbitBroker(rabbitmq_url, logger=None)
    exchange = RabbitExchange(topic_names["exchange"], type=ExchangeType.TOPIC, durable=True)
    command_queue = RabbitQueue(queue_names["queue"], durable=True)
    async with amqp_channel(rabbitmq_url, queues=queues, exchanges=(topic_names["exchange"],)), bus:
        async with broker:
            await broker.start()
            for n in range(20):
                await broker.publish({"n": n, "item": "tea"}, exchange=exchange, routing_key=f"order-{n}", persist=True)
                await broker.publish({"n": n, "item": "tea"}, queue=command_queue, persist=True)
        await got.wait_for(40)
    expected = {f"{p}{n}" for p in "tq" for n in range(20)}
    lost, duplicated, unexpected = tally(got.items, expected)
    assert not (lost or duplicated or unexpected), (lost, duplicated, unexpected)
    assert not dead.items


async def test_faststream_consumes_what_messagebus_publishes(rabbitmq_url: str, name: str) -> None:
    """Catches messagebus messages a FastStream consumer cannot decode or identify (no
    ``content_type``, no ``message_id``): a FastStream subscriber bound to the topic exchange
    gets 20 published events as dicts, each once, with the CloudEvents id as its message id."""
    from faststream.rabbit import ExchangeType, RabbitBroker, RabbitExchange, RabbitMessage, RabbitQueue

    exchange_name = physical_names(Destination(DestinationKind.TOPIC, name))["exchange"]
    foreign_queue = f"{exchange_name}.faststream"
    got: Collector[tuple[int, str | None, str | None]] = Collector(TIMEOUT)
    broker = RabbitBroker(rabbitmq_url, logger=None)

    @broker.subscriber(
        RabbitQueue(foreign_queue, durable=True, routing_key="#"),
        RabbitExchange(exchange_name, type=ExchangeType.TOPIC, durable=True),
    )
    async def on_event(body: dict[str, Any], message: RabbitMessage) -> None:
        got.add((body["n"], message.message_id, message.headers.get("cloudEvents_id")))

    bus = Bus.from_url(rabbitmq_url, service="shop")
    async with amqp_channel(rabbitmq_url, queues=(foreign_queue,), exchanges=(exchange_name,)), broker:
        await broker.start()
        async with bus:
            for n in range(20):
                await bus.publish(name, Order(n=n, item="tea"))
            await got.wait_for(20)
    lost, duplicated, unexpected = tally([str(n) for n, _, _ in got.items], {str(n) for n in range(20)})
    assert not (lost or duplicated or unexpected), (lost, duplicated, unexpected)
    assert all(message_id and message_id == ce_id for _, message_id, ce_id in got.items)
