"""BrokerAdmin on RabbitMQ (issue 18): dead-letter queues listed by the management API,
depth by passive declares, replay to one group, deletion of a group. On the shared broker,
whose management plugin is enabled (a private node may not have it)."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from messagebus_rabbitmq import RabbitMQTransport, physical_name
from messagebus_rabbitmq._topology import filter_exchange
from rmq_helpers import Inbox, group, message, number, queue, topic

from messagebus import Bus, Envelope, InvalidDestination, InvalidOption, Reject, TransportError
from messagebus.testing import free_port
from messagebus.transports import BrokerAdmin, Delivery, Destination, DestinationKind, TransportURL
from messagebus.transports import headers as h


async def stored(t: RabbitMQTransport, source: Destination) -> None:
    """Create ``source``'s queue (and binding) by subscribing once, then stop consuming."""
    consumer = await t.subscribe(source, Inbox(), concurrency=1)
    await consumer.stop(1.0)


def test_transport_is_a_broker_admin(rabbitmq_url: str) -> None:
    """Bug caught: one of the four methods missing or misnamed, so the dead-letter tools,
    tail and monitor find no BrokerAdmin on a RabbitMQ transport."""
    assert isinstance(RabbitMQTransport.from_url(rabbitmq_url), BrokerAdmin)


async def test_dead_letter_queue_of_a_failing_handler_is_listed(
    rabbitmq_url: str, transport: RabbitMQTransport, name: str, admin
) -> None:
    """Bug caught: DLQs not found on the broker (wrong vhost path, names not mapped back to
    logical ones, ordinary queues listed as DLQs) or a hashed name listed as if logical."""
    dlq = f"{name}.billing.dlq"
    long = physical_name(f"{'x' * 200}.{name}.{'g' * 60}.dlq")  # cut and hashed: no logical name
    reserved = f"amq.{name}"  # RabbitMQ reserves amq.*: its physical name is moved aside
    admin.cleanup_later(queues=(f"{name}.billing", dlq, long, physical_name(f"{reserved}.dlq")), exchanges=(name,))
    bus = Bus.from_url(rabbitmq_url, service="billing")

    dead_lettered = asyncio.Event()

    @bus.subscribe(name)
    async def handle(item: dict[str, int], envelope: Envelope) -> None:
        envelope.on_settled(lambda _settlement: dead_lettered.set())  # after the confirmed DLQ publish
        raise Reject("no")

    async with bus:
        assert dlq not in await transport.dead_letter_queues()
        await bus.publish(name, {"n": 1})
        await asyncio.wait_for(dead_lettered.wait(), 20)
    await transport.publish([message(queue(f"{reserved}.dlq"), 1)])
    ch = await admin.conn.channel()
    await ch.queue_declare(long, durable=True)
    names = await transport.dead_letter_queues()
    assert names == sorted(names)
    assert {dlq, f"{reserved}.dlq"} <= set(names)
    assert f"{name}.billing" not in names  # the group's own queue is no DLQ
    assert long not in names and not any(n.startswith("x" * 200) for n in names)


async def test_depth_counts_stored_messages_and_creates_nothing(transport: RabbitMQTransport, name: str, admin) -> None:
    """Bug caught: depth reading the wrong queue (the topic's instead of the group's), counting
    nothing, declaring a queue it asks about, or failing for a missing queue instead of 0."""
    q, g = queue(f"{name}.q"), group(name, "billing")
    admin.cleanup_later(queues=(q.name, f"{name}.billing"), exchanges=(name,))
    await transport.publish([message(q, n) for n in range(3)])
    await stored(transport, g)
    await transport.publish([message(topic(name), n) for n in range(2)])
    assert await transport.depth(q) == 3
    assert await transport.depth(g) == 2
    missing_q, missing_g = queue(f"{name}.nothing"), group(name, "nobody")
    assert await transport.depth(missing_q) == 0
    assert await transport.depth(missing_g) == 0
    assert not await admin.queue_exists(f"{name}.nothing")
    assert not await admin.queue_exists(f"{name}.nobody")
    with pytest.raises(InvalidDestination, match="no group"):
        await transport.depth(topic(name))


async def test_depth_counts_ready_messages_only(transport: RabbitMQTransport, name: str, admin) -> None:
    """Bug caught: depth counting a message a consumer holds unacknowledged, or a retry
    waiting in a delay bucket, as still stored in the queue (the README says neither is)."""
    q = queue(name)
    admin.cleanup_later(queues=(name,))
    held, retried = Inbox(ack=False), asyncio.Event()

    async def retry_first(delivery: Delivery) -> None:
        if delivery.attempt == 1:  # later attempts (none: the bucket holds it 60 s) stay unacked
            await delivery.retry(60.0, {})
            retried.set()

    consumer = await transport.subscribe(q, retry_first, concurrency=1)
    await transport.publish([message(q, 1)])
    await asyncio.wait_for(retried.wait(), 20)
    await consumer.stop(1.0)
    await transport.publish([message(q, n) for n in (2, 3)])
    consumer = await transport.subscribe(q, held, concurrency=1)  # prefetch 1: holds one, unacked
    try:
        await held.wait_for(1)
        assert await transport.depth(q) == 1
    finally:
        await consumer.stop(1.0)


async def test_publish_to_group_reaches_only_that_group_as_a_first_attempt(
    transport: RabbitMQTransport, name: str, admin
) -> None:
    """Bug caught: a replay published to the topic (every group gets it again), a retry count
    kept from the dead letter, or body, key or headers lost on the way."""
    billing, audit = group(name, "billing"), group(name, "audit")
    admin.cleanup_later(queues=(f"{name}.billing", f"{name}.audit"), exchanges=(name,))
    got_billing, got_audit = Inbox(), Inbox()
    consumers = [
        await transport.subscribe(billing, got_billing, concurrency=1),
        await transport.subscribe(audit, got_audit, concurrency=1),
    ]
    try:
        replay = message(topic(name), 7, key="k-1", headers={"x-tenant": "acme", h.ATTEMPT: "3"})
        await transport.publish_to_group(billing, [replay])
        (delivery,) = await got_billing.wait_for(1)
        assert (number(delivery), delivery.key, delivery.attempt) == (7, "k-1", 1)
        assert delivery.body == replay.body
        assert delivery.headers["x-tenant"] == "acme" and delivery.headers["ce-id"] == replay.headers["ce-id"]
        # Confirmed before this one was published: audit would have got the replay first.
        await transport.publish([message(topic(name), 8)])
        await got_audit.wait_for(1)
        assert got_audit.numbers() == [8]
    finally:
        for consumer in consumers:
            await consumer.stop(1.0)
    with pytest.raises(InvalidDestination, match="no group"):
        await transport.publish_to_group(topic(name), [message(topic(name), 9)])


async def test_publish_to_group_is_stored_until_its_consumer_runs(
    transport: RabbitMQTransport, name: str, admin
) -> None:
    """Bug caught: a replay lost when the group's consumer is not running (or its queue does
    not exist yet: it must be declared, not the message dropped as unroutable)."""
    billing = group(name, "billing")
    admin.cleanup_later(queues=(f"{name}.billing",), exchanges=(name,))
    await transport.publish_to_group(billing, [message(topic(name), n) for n in (1, 2)])
    assert await transport.depth(billing) == 2
    inbox = Inbox()
    consumer = await transport.subscribe(billing, inbox, concurrency=1)
    try:
        await inbox.wait_numbers({1, 2})
        assert [d.attempt for d in inbox.items] == [1, 1]
    finally:
        await consumer.stop(1.0)


async def test_publish_to_a_pattern_group_keeps_the_topic(transport: RabbitMQTransport, name: str, admin) -> None:
    """Bug caught: a replay to a pattern subscription dropped by its consumer (which takes a
    message without ``messagebus-topic`` from the default exchange for a foreign one)."""
    pattern = Destination(DestinationKind.TOPIC, f"{name}.*", "billing")
    admin.cleanup_later(queues=(physical_name(f"{name}.*.billing"),))
    inbox = Inbox()
    consumer = await transport.subscribe(pattern, inbox, concurrency=1)
    try:
        await transport.publish_to_group(pattern, [message(topic(f"{name}.orders"), 5)])
        (delivery,) = await inbox.wait_for(1)
        assert (number(delivery), delivery.topic, delivery.attempt) == (5, f"{name}.orders", 1)
    finally:
        await consumer.stop(1.0)


async def test_delete_group_removes_its_queues_and_nothing_of_another_group(
    transport: RabbitMQTransport, name: str, admin
) -> None:
    """Bug caught: delete_group leaving the group's queue, DLQ or filter exchange behind,
    deleting another group's queue, or failing the second time."""
    tail = Destination(DestinationKind.TOPIC, name, "tail", (("x-kind", "a"),))
    billing = group(name, "billing")
    admin.cleanup_later(queues=(f"{name}.billing", f"{name}.billing.dlq"), exchanges=(name,))
    await stored(transport, tail)
    await stored(transport, billing)
    await transport.publish([message(topic(name), n, headers={"x-kind": "a"}) for n in range(2)])
    await transport.publish([message(queue(d.dead_letter_queue), 0) for d in (tail, billing)])
    assert await transport.depth(tail) == 2
    assert {tail.dead_letter_queue, billing.dead_letter_queue} <= set(await transport.dead_letter_queues())
    await transport.delete_group(tail)
    assert await transport.depth(tail) == 0
    assert not await admin.queue_exists(f"{name}.tail")
    assert not await admin.exchange_exists(filter_exchange(tail))
    names = await transport.dead_letter_queues()
    assert tail.dead_letter_queue not in names and billing.dead_letter_queue in names
    assert await transport.depth(billing) == 2
    await transport.delete_group(tail)  # idempotent
    with pytest.raises(InvalidDestination):
        await transport.delete_group(topic(name))


async def test_unreachable_management_api_names_the_plugin_and_the_option(rabbitmq_url: str, name: str) -> None:
    """Bug caught: an unreachable management API surfacing as a bare urllib error (or the
    password in the message) instead of saying which plugin and option to fix, or taking
    the AMQP-only operations down with it."""
    nowhere = f"management_url=http://127.0.0.1:{free_port()}"
    url = f"amqp://alice:pa55-secret@127.0.0.1:5672/?{nowhere}"
    with pytest.raises(TransportError) as caught:
        await RabbitMQTransport.from_url(url).dead_letter_queues()
    text = str(caught.value)
    assert "rabbitmq_management" in text and "management_url" in text and "pa55-secret" not in text
    t = RabbitMQTransport.from_url(f"{rabbitmq_url}{'&' if '?' in rabbitmq_url else '?'}{nowhere}")
    await t.connect()
    try:
        billing = group(name, "billing")  # AMQP only: no management API needed
        await t.publish_to_group(billing, [message(topic(name), 1)])
        assert await t.depth(billing) == 1
        await t.delete_group(billing)
        assert await t.depth(billing) == 0
        with pytest.raises(TransportError, match="rabbitmq_management"):
            await t.dead_letter_queues()
    finally:
        await t.close()


async def test_management_api_is_reached_without_the_environment_proxy(
    transport: RabbitMQTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bug caught: the queue listing sent through an ``http_proxy`` of the environment (which
    the AMQP connection never uses), failing or leaking the credentials to the proxy."""
    for variable in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(variable, raising=False)
    for variable in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.setenv(variable, f"http://127.0.0.1:{free_port()}")
    assert isinstance(await transport.dead_letter_queues(), list)


async def test_refused_credentials_say_what_the_user_needs(rabbitmq_url: str) -> None:
    """Bug caught: a 401 from the management API reported without the user and tag it needs,
    or with the password in it."""
    parsed = TransportURL.parse(rabbitmq_url)
    wrong = f"amqp://{parsed.username or 'guest'}:{uuid.uuid4().hex}@{parsed.host}:{parsed.port or 5672}/"
    with pytest.raises(TransportError, match=r"HTTP 401.*management or monitoring") as caught:
        await RabbitMQTransport.from_url(wrong).dead_letter_queues()
    assert TransportURL.parse(wrong).password not in str(caught.value)


def test_management_url_option() -> None:
    """Bug caught: a default management address on the wrong port/scheme, or credentials
    accepted in management_url (where URL rendering would print them) and echoed back."""
    assert RabbitMQTransport.from_url("amqp://u:p@rabbit:5672/").admin.management_url == "http://rabbit:15672"
    assert RabbitMQTransport.from_url("amqps://u:p@rabbit/").admin.management_url == "https://rabbit:15671"
    assert RabbitMQTransport.from_url("amqp://u:p@[::1]/").admin.management_url == "http://[::1]:15672"
    assert RabbitMQTransport.from_url("amqp://u:p@first:5673,second/").admin.management_url == "http://first:15672"
    given = RabbitMQTransport.from_url("amqp://u:p@rabbit/?management_url=https://mgmt:443/")
    assert given.admin.management_url == "https://mgmt:443"
    with pytest.raises(InvalidOption, match="no credentials") as caught:
        RabbitMQTransport.from_url("amqp://u:p@rabbit/?management_url=http://admin:hunter2@mgmt:15672")
    assert "hunter2" not in str(caught.value)
    with pytest.raises(InvalidOption, match="management_url"):
        RabbitMQTransport.from_url("amqp://u:p@rabbit/?management_url=mgmt:15672")
