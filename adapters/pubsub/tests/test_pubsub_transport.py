"""Pub/Sub specifics against the emulator: topology, retries, ordering keys, bad input,
reconnect through a TCP proxy, and an event loop that never blocks."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import pytest
from google.api_core import exceptions as gexc
from messagebus_pubsub import PubSubTransport, resource_id
from pubsub_helpers import PROJECT, Admin, Inbox, out, url_for

from messagebus import (
    Bus,
    ConfigurationError,
    ConnectError,
    Envelope,
    InvalidDestination,
    LifecycleError,
    MessageTooLarge,
    Nack,
    PublishError,
)
from messagebus.testing import TcpProxy, free_port
from messagebus.testing._collect import Collector
from messagebus.transports import Delivery, Destination, DestinationKind, TransportURL


def transport_for(url: str) -> PubSubTransport:
    return PubSubTransport.from_url(TransportURL.parse(url))


# -- topology -------------------------------------------------------------------------------


async def test_topology_subscription_per_group_queue_and_retry(
    transport: PubSubTransport, admin: Admin, name: str
) -> None:
    topic = Destination(DestinationKind.TOPIC, f"{name}.orders", "billing")
    queue = Destination(DestinationKind.QUEUE, f"{name}.emails")
    consumer = await transport.subscribe(topic, Inbox(), concurrency=1)
    # A queue's subscription exists from the first send: the message waits for a consumer.
    await transport.publish([out(queue, b"early")])
    assert await admin.subscription_topic(f"{name}.orders.billing") == f"{name}.orders"
    assert await admin.subscription_topic(f"{name}.orders.billing~retry") == f"{name}.orders.billing~retry"
    assert await admin.subscription_topic(f"{name}.emails") == f"{name}.emails"
    inbox = Inbox()
    queue_consumer = await transport.subscribe(queue, inbox, concurrency=1)
    [delivery] = await inbox.got.wait_for(1)
    assert delivery.body == b"early"
    assert delivery.attempt == 1
    assert delivery.raw.message.message_id
    attrs = delivery.messaging_attributes
    assert attrs["messaging.destination.subscription.name"] == f"{name}.emails"
    assert attrs["messaging.gcp_pubsub.message.ack_id"]
    await consumer.stop(1)
    await queue_consumer.stop(1)


async def test_queue_name_that_clashes_with_a_group_subscription_is_a_topology_error(
    transport: PubSubTransport, name: str
) -> None:
    from messagebus import TopologyError

    consumer = await transport.subscribe(Destination(DestinationKind.TOPIC, name, "g1"), Inbox(), concurrency=1)
    with pytest.raises(TopologyError, match="already exists on topic"):
        await transport.publish([out(Destination(DestinationKind.QUEUE, f"{name}.g1"), b"x")])
    await consumer.stop(1)


async def test_long_and_odd_names_are_mapped_and_work(transport: PubSubTransport, name: str) -> None:
    queue = Destination(DestinationKind.QUEUE, f"{name}-" + "q" * 180)
    inbox = Inbox()
    consumer = await transport.subscribe(queue, inbox, concurrency=1)
    await transport.publish([out(queue, b"long")])
    [delivery] = await inbox.got.wait_for(1)
    assert delivery.body == b"long"
    await consumer.stop(1)


# -- retries --------------------------------------------------------------------------------


async def test_retry_reaches_only_the_failing_group_with_attempt_and_delay(pubsub_url: str, name: str) -> None:
    topic = f"{name}.paid"
    failing: Collector[tuple[int, float]] = Collector(30.0)
    other: Collector[int] = Collector(30.0)
    a = Bus.from_url(pubsub_url, service="billing")
    b = Bus.from_url(pubsub_url, service="audit")

    @a.subscribe(topic)
    async def flaky(item: dict[str, int], envelope: Envelope) -> None:
        failing.add((envelope.attempt, time.monotonic()))
        if envelope.attempt == 1:
            # Longer than the local hold: the retry goes back to Pub/Sub via its ack deadline.
            raise Nack(delay=3.0)

    @b.subscribe(topic)
    async def steady(item: dict[str, int], envelope: Envelope) -> None:
        other.add(envelope.attempt)

    async with a, b:
        await a.publish(topic, {"n": 1})
        seen = await failing.wait_for(2)
        await other.wait_for(1)
    assert [attempt for attempt, _ in seen] == [1, 2]
    assert seen[1][1] - seen[0][1] >= 3.0 * 0.9  # never before its delay (a lower bound only)
    assert other.items == [1], "the other group must not see the retry"


async def test_retry_headers_travel_with_the_redelivery(transport: PubSubTransport, name: str) -> None:
    queue = Destination(DestinationKind.QUEUE, name)
    got: Collector[Delivery] = Collector(30.0)

    async def handler(delivery: Delivery) -> None:
        got.add(delivery)
        if delivery.attempt == 1:
            await delivery.retry(0.05, {"messagebus-first-failure": "2026-01-01T00:00:00+00:00"})
        else:
            await delivery.ack()

    consumer = await transport.subscribe(queue, handler, concurrency=2)
    await transport.publish([out(queue, b"r", key="k1", **{"x-tenant": "acme"})])
    first, second = await got.wait_for(2)
    assert (first.attempt, second.attempt) == (1, 2)
    assert second.headers["x-tenant"] == "acme"
    assert second.headers["messagebus-first-failure"] == "2026-01-01T00:00:00+00:00"
    assert second.key == "k1"
    assert "messagebus-not-before" not in second.headers
    await consumer.stop(1)


# -- ordering keys --------------------------------------------------------------------------


async def test_ordering_keys_keep_order_per_key_across_batches(transport: PubSubTransport, name: str) -> None:
    topic = Destination(DestinationKind.TOPIC, name)
    got: Collector[tuple[str, int]] = Collector(30.0)

    async def handler(delivery: Delivery) -> None:
        await asyncio.sleep(0)
        assert delivery.key is not None
        got.add((delivery.key, int(delivery.body)))
        await delivery.ack()

    consumer = await transport.subscribe(Destination(DestinationKind.TOPIC, name, "g"), handler, concurrency=8)
    keys = [f"k{i}" for i in range(5)]
    n = 40
    await transport.publish([out(topic, str(i).encode(), key=k) for i in range(n) for k in keys])
    await got.wait_for(n * len(keys))
    for k in keys:
        assert [i for key, i in got.items if key == k] == list(range(n)), f"{k} out of order"
    await consumer.stop(1)


async def test_failed_ordered_publish_resumes_the_key(transport: PubSubTransport, admin: Admin, name: str) -> None:
    topic = Destination(DestinationKind.TOPIC, name)
    await transport.publish([out(topic, b"1", key="order-1")])
    # Delete the topic behind the transport's back: the next ordered publish fails, which
    # pauses the ordering key inside the client.
    await admin.publisher.delete_topic(topic=f"projects/{PROJECT}/topics/{resource_id(name)}")
    with pytest.raises(PublishError, match="not found") as info:
        await transport.publish([out(topic, b"2", key="order-1")])
    assert isinstance(info.value.__cause__, gexc.NotFound)
    # The key was resumed and the topic is declared again: publishing with it works.
    await transport.publish([out(topic, b"3", key="order-1")])


# -- connection faults ----------------------------------------------------------------------


async def test_lease_lost_with_a_connection_brings_back_no_acked_message(
    transport: PubSubTransport, admin: Admin, name: str
) -> None:
    """Catches acked messages handled again when a lease lost with a connection runs out (a
    cut gave 100-800 duplicates). A pull whose response a cut lost leaves messages leased
    that the consumer never saw; when that lease runs out, the emulator (ordered
    subscription, messages without an ordering key) redelivers every keyless message
    delivered after them, acknowledged ones included. Here a raw pull takes message 0 and
    never acks it; 1-20 are handled and acked; after the ack deadline (10 s) 0 comes back
    with copies of 1-20, which must not reach the handler again."""
    queue = Destination(DestinationKind.QUEUE, name)
    inbox = Inbox()
    await transport.publish([out(queue, b"0")])  # declares the queue's subscription too
    subscription = f"projects/{PROJECT}/subscriptions/{resource_id(name)}"
    lost = await admin.subscriber.pull(request={"subscription": subscription, "max_messages": 1}, timeout=10)
    assert [m.message.data for m in lost.received_messages] == [b"0"]
    consumer = await transport.subscribe(queue, inbox, concurrency=4)
    try:
        await transport.publish([out(queue, str(i).encode()) for i in range(1, 21)])
        await inbox.got.wait_until(lambda got: any(d.body == b"0" for d in got), "the lost message back")
        # The copies came back with message 0: once a message sent after them was handled,
        # they were handled too, or dropped.
        await transport.publish([out(queue, b"21")])
        await inbox.got.wait_until(lambda got: any(d.body == b"21" for d in got), "the last message")
    finally:
        await consumer.stop(1)
    handled = Counter(int(d.body) for d in inbox.got.items)
    assert set(handled) == set(range(22))
    twice = sorted(n for n, count in handled.items() if count > 1)
    assert not twice, f"acked messages handled again after the lost lease ran out: {twice}"


# -- bad input ------------------------------------------------------------------------------


async def test_unreachable_emulator_fails_fast_with_connect_error() -> None:
    t = transport_for(url_for(f"127.0.0.1:{free_port()}", connect_timeout="1"))
    with pytest.raises(ConnectError, match="unreachable") as info:
        await asyncio.wait_for(t.connect(), 15)
    assert info.value.__cause__ is not None
    with pytest.raises(LifecycleError, match="connect"):
        await t.publish([out(Destination(DestinationKind.QUEUE, "q-x"), b"x")])
    await t.close()


async def test_missing_credentials_outside_the_emulator(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("PUBSUB_EMULATOR_HOST", raising=False)
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path))
    monkeypatch.setenv("NO_GCE_CHECK", "True")
    t = transport_for("pubsub://my-project?connect_timeout=5")
    with pytest.raises(ConnectError, match="no Google Cloud credentials") as info:
        await t.connect()
    assert "credentials_file" in str(info.value) and "emulator_host" in str(info.value)


async def test_unreadable_credentials_file_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("PUBSUB_EMULATOR_HOST", raising=False)
    t = transport_for(f"pubsub://my-project?credentials_file={tmp_path}/missing.json")
    with pytest.raises(ConfigurationError, match=r"missing\.json"):
        await t.connect()


async def test_message_over_10_mb_is_refused_before_anything_is_sent(transport: PubSubTransport, name: str) -> None:
    queue = Destination(DestinationKind.QUEUE, name)
    inbox = Inbox()
    consumer = await transport.subscribe(queue, inbox, concurrency=1)
    with pytest.raises(MessageTooLarge, match="larger than"):
        await transport.publish([out(queue, b"small-first"), out(queue, b"x" * (10 * 1024 * 1024))])
    await transport.publish([out(queue, b"after")])
    [delivery] = await inbox.got.wait_for(1)
    assert delivery.body == b"after", "nothing of the refused batch may have been sent"
    await consumer.stop(1)


async def test_large_message_near_the_limit_round_trips(transport: PubSubTransport, name: str) -> None:
    queue = Destination(DestinationKind.QUEUE, name)
    inbox = Inbox()
    consumer = await transport.subscribe(queue, inbox, concurrency=1)
    body = b"y" * transport.capabilities.max_message_size  # type: ignore[operator]
    await transport.publish([out(queue, body)])
    [delivery] = await inbox.got.wait_for(1)
    assert delivery.body == body
    await consumer.stop(1)


async def test_illegal_names_and_arguments(transport: PubSubTransport) -> None:
    with pytest.raises(InvalidDestination):
        await transport.publish([out(Destination(DestinationKind.QUEUE, "bad name!"), b"x")])
    with pytest.raises(InvalidDestination):
        await transport.subscribe(Destination(DestinationKind.TOPIC, "t-ok", "bad/group"), Inbox(), concurrency=1)
    with pytest.raises(InvalidDestination, match="group"):
        await transport.subscribe(Destination(DestinationKind.TOPIC, "t-ok"), Inbox(), concurrency=1)
    with pytest.raises(ConfigurationError, match="concurrency"):
        await transport.subscribe(Destination(DestinationKind.QUEUE, "q-ok"), Inbox(), concurrency=0)


async def test_headers_pubsub_cannot_carry_natively_round_trip(transport: PubSubTransport, name: str) -> None:
    queue = Destination(DestinationKind.QUEUE, name)
    inbox = Inbox()
    consumer = await transport.subscribe(queue, inbox, concurrency=1)
    headers = {"x-long": "é" * 3000, "googler": "yes", "timeout": "5", "data": "d"}
    await transport.publish([out(queue, b"h", **headers)])
    [delivery] = await inbox.got.wait_for(1)
    for k, v in headers.items():
        assert delivery.headers[k] == v
    await consumer.stop(1)


# -- reconnect and the event loop -------------------------------------------------------------


@pytest.mark.faults
async def test_publish_waits_out_a_refused_connection_then_confirms(pubsub_emulator: str, name: str) -> None:
    host, _, port = pubsub_emulator.rpartition(":")
    with TcpProxy((host, int(port))) as proxy:
        t = transport_for(url_for(f"{proxy.host}:{proxy.port}"))
        await t.connect()
        queue = Destination(DestinationKind.QUEUE, name)
        inbox = Inbox()
        consumer = await t.subscribe(queue, inbox, concurrency=2)
        await t.publish([out(queue, b"before")])
        await inbox.got.wait_for(1)
        proxy.refuse()
        sending = asyncio.create_task(t.publish([out(queue, b"during")]))
        done, _ = await asyncio.wait({sending}, timeout=1.0)
        assert not done, "a publish cannot be confirmed while the broker is unreachable"
        proxy.accept()
        await asyncio.wait_for(sending, 30)
        await inbox.got.wait_until(
            lambda items: any(d.body == b"during" for d in items), "the message sent in the outage"
        )
        assert proxy.connections_total >= 2
        await consumer.stop(1)
        await t.close()


async def test_event_loop_keeps_ticking_while_1000_messages_flow(transport: PubSubTransport, name: str) -> None:
    queue = Destination(DestinationKind.QUEUE, name)
    ticks = 0
    stop = asyncio.Event()

    async def heartbeat() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0.001)

    seen: Collector[int] = Collector(60.0)

    async def handler(delivery: Delivery) -> None:
        await asyncio.sleep(0)  # a handler that awaits, as real ones do
        seen.add(ticks)
        await delivery.ack()

    beat = asyncio.create_task(heartbeat())
    consumer = await transport.subscribe(queue, handler, concurrency=8)
    publish_ticks = ticks
    await transport.publish([out(queue, str(i).encode()) for i in range(1000)])
    assert ticks > publish_ticks, "the heartbeat must tick while a publish awaits its confirmation"
    samples = await seen.wait_for(1000)
    stop.set()
    await beat
    await consumer.stop(1)
    # The heartbeat advanced throughout the flow: every tenth of the messages saw new ticks.
    tenths = [samples[i * 100 : (i + 1) * 100] for i in range(10)]
    advanced = sum(1 for chunk in tenths if chunk[-1] > chunk[0])
    assert advanced >= 8, f"the loop stalled while messages flowed: {[(c[0], c[-1]) for c in tenths]}"


async def test_credentials_file_of_an_unsupported_type_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("PUBSUB_EMULATOR_HOST", raising=False)
    path = tmp_path / "external.json"
    path.write_text('{"type": "external_account"}')
    t = transport_for(f"pubsub://my-project?credentials_file={path}")
    with pytest.raises(ConfigurationError, match="service_account"):
        await t.connect()
