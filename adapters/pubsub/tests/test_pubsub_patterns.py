"""Issue 17 on Pub/Sub: native subscription filters, reply queues deleted on stop, no
wildcards, and ``delay=`` through the held redelivery (long delays included)."""

from __future__ import annotations

import time
import uuid

import pytest
from messagebus_pubsub import PubSubTransport, _consuming, resource_id
from messagebus_pubsub._codec import native_filter
from pubsub_helpers import Admin, out

from messagebus import Bus, Envelope, InvalidDestination, TopologyError, UnsupportedFeature
from messagebus.testing._collect import Collector
from messagebus.transports import Delivery, Destination, DestinationKind

# -- native filters ---------------------------------------------------------------------------


def test_native_filter_escapes_names_and_values_and_keeps_packed_messages() -> None:
    """Bug caught: a quote, backslash or newline in a header value (or a dotted header name)
    breaking the filter expression; a filtered header that cannot be a real attribute (a
    value over 1024 bytes, a name Pub/Sub reserves) dropping every message; a message whose
    headers were packed (the filtered one maybe among them) dropped by the broker."""
    assert native_filter(()) == ""
    assert native_filter((("region", "eu"), ("tier", "1"))) == (
        '(attributes."region" = "eu" AND attributes."tier" = "1") OR attributes:"messagebus-packed-0"'
    )
    assert native_filter((("a.b", 'say "hi"\\\n'),)) == (
        '(attributes."a.b" = "say \\"hi\\"\\\\\\n") OR attributes:"messagebus-packed-0"'
    )
    # Never real attributes: left to the bus, so the broker lets every message through.
    assert native_filter((("big", "x" * 1025), ("googthing", "1"), ("timeout", "5"))) == ""
    # Pub/Sub's 256-byte limit: pairs that do not fit are left to the bus.
    wide = native_filter(tuple((f"h{i}", "v" * 40) for i in range(10)))
    assert 0 < len(wide.encode()) <= 256
    assert wide.count(" AND ") < 9


async def test_group_subscription_is_created_with_the_native_filter(
    transport: PubSubTransport, admin: Admin, name: str
) -> None:
    """Bug caught: a filter never given to Pub/Sub (every message still leased and paid for)
    or given to the retry subscription too (the bus's retries have no region header)."""
    source = Destination(DestinationKind.TOPIC, name, "eu", (("region", 'e"u'), ("x.tier", "1")))

    async def ack(delivery: Delivery) -> None:
        await delivery.ack()

    consumer = await transport.subscribe(source, ack, concurrency=1)
    await consumer.stop(1)
    assert await admin.filter_of(f"{name}.eu") == (
        '(attributes."region" = "e\\"u" AND attributes."x.tier" = "1") OR attributes:"messagebus-packed-0"'
    )
    assert await admin.filter_of(f"{name}.eu~retry") == ""


async def test_filter_is_native_so_non_matching_messages_never_reach_the_subscription(
    transport: PubSubTransport, name: str
) -> None:
    """Bug caught: a filter matched only client-side (every message still leased and paid
    for), a filter whose escaping Pub/Sub reads differently (matching messages dropped), and
    a message whose headers were packed dropped though its filtered header matches.

    Only on real Pub/Sub: Google's emulator (0.8.20) stores a subscription's filter but does
    not apply it (it lists ``filter`` among its unsupported subscription fields)."""
    if transport.emulator_host:
        pytest.skip("the Pub/Sub emulator stores subscription filters but does not apply them")
    value = 'e"u\\ \u00e9'  # a quote, a backslash and a non-ASCII letter, each escaped
    topic = Destination(DestinationKind.TOPIC, f"{name}.orders")
    source = Destination(DestinationKind.TOPIC, topic.name, "eu", (("region", value), ("x.tier", "1")))
    got: Collector[bytes] = Collector(30.0)

    async def handler(delivery: Delivery) -> None:
        got.add(delivery.body)
        await delivery.ack()

    consumer = await transport.subscribe(source, handler, concurrency=4)
    many = {f"h{i:03d}": "v" for i in range(120)}  # over 90 headers: some are packed
    tier = {"x.tier": "1"}
    messages = [out(topic, f"m{i}".encode(), "k", region=value if i % 2 == 0 else "us", **tier) for i in range(8)]
    messages += [
        out(topic, b"packed-match", "k", **many, region=value, **tier),
        out(topic, b"wrong-tier", "k", region=value, **{"x.tier": "2"}),
        out(topic, b"last", "k", region=value, **tier),
    ]
    await transport.publish(messages)
    # One ordering key: once "last" arrived, every earlier message was decided.
    await got.wait_until(lambda items: b"last" in items, "the last matching message")
    assert sorted(got.items) == sorted([b"m0", b"m2", b"m4", b"m6", b"packed-match", b"last"])
    await consumer.stop(1)


async def test_a_different_filter_on_an_existing_subscription_is_a_topology_error_at_start(
    pubsub_url: str, admin: Admin, name: str
) -> None:
    """Bug caught: a changed filter silently ignored (Pub/Sub keeps the old one forever), or
    an error that does not say which subscription, which filters, and what to do."""
    topic = f"{name}.paid"
    first = Bus.from_url(pubsub_url, service="billing")

    @first.subscribe(topic, group="eu", filter={"region": "eu"})
    async def eu(item: dict[str, int]) -> None: ...

    async with first:
        pass
    again = Bus.from_url(pubsub_url, service="billing")

    @again.subscribe(topic, group="eu", filter={"region": "us"})
    async def us(item: dict[str, int]) -> None: ...

    with pytest.raises(TopologyError) as refused:
        await again.start()
    await again.stop()
    text = str(refused.value)
    assert f"{resource_id(topic + '.eu')}" in text
    assert '(attributes."region" = "eu")' in text and '(attributes."region" = "us")' in text
    assert "new group name" in text and "delete the subscription" in text
    assert "eu" in await admin.filter_of(f"{topic}.eu"), "the existing filter is left alone"


async def test_unfiltered_group_keeps_no_filter_and_same_filter_restarts(
    transport: PubSubTransport, admin: Admin, name: str
) -> None:
    """Bug caught: a group without filter made with one (or refused), and a restart with the
    same filter refused as a conflict."""
    plain = Destination(DestinationKind.TOPIC, name, "all")
    filtered = Destination(DestinationKind.TOPIC, name, "eu", (("region", "eu"),))

    async def ack(delivery: Delivery) -> None:
        await delivery.ack()

    for source in (plain, filtered):
        consumer = await transport.subscribe(source, ack, concurrency=1)
        await consumer.stop(1)
    assert await admin.filter_of(f"{name}.all") == ""
    # The same transport, whose declarations are cached, refuses the change too.
    with pytest.raises(TopologyError, match="filter"):
        await transport.subscribe(
            Destination(DestinationKind.TOPIC, name, "eu", (("region", "us"),)), ack, concurrency=1
        )
    other = PubSubTransport.from_url(transport.url)  # a fresh process: no cached declarations
    await other.connect()
    try:
        consumer = await other.subscribe(filtered, ack, concurrency=1)
        await consumer.stop(1)
        now_filtered = Destination(DestinationKind.TOPIC, name, "all", (("region", "eu"),))
        with pytest.raises(TopologyError, match="filter"):
            await other.subscribe(now_filtered, ack, concurrency=1)
    finally:
        await other.close()


# -- reply queues, delete_queue, wildcards --------------------------------------------------------


async def test_reply_queue_is_deleted_when_the_bus_stops(pubsub_url: str, admin: Admin, name: str) -> None:
    """Bug caught: every Bus that ever made a request leaving its reply topic, subscription
    and retry topic/subscription behind on Pub/Sub (they never expire)."""
    service = f"shop-{uuid.uuid4().hex[:8]}"
    responder = Bus.from_url(pubsub_url, service="pricing")
    caller = Bus.from_url(pubsub_url, service=service)

    @responder.consume(f"{name}.price")
    async def price(item: dict[str, int]) -> dict[str, int]:
        return {"n": item["n"] * 2}

    async with responder:
        async with caller:
            reply = await caller.request(f"{name}.price", {"n": 21}, reply_type=dict[str, int], timeout=30)
            assert reply == {"n": 42}
            made = await admin.resources(f"{service}.replies.")
            assert len(made) == 4, f"reply topic, subscription, retry topic and subscription: {made}"
        assert await admin.resources(f"{service}.replies.") == []


async def test_delete_queue_removes_queue_and_dead_letters_and_is_idempotent(
    transport: PubSubTransport, admin: Admin, name: str
) -> None:
    """Bug caught: the dead-letter queue (or a retry subscription) left behind, a second
    delete failing on what the first removed, a later send to the deleted queue failing
    on stale cached declarations, and a bad name reaching Pub/Sub."""
    queue = Destination(DestinationKind.QUEUE, f"{name}.jobs")
    inbox: Collector[bytes] = Collector(30.0)

    async def handler(delivery: Delivery) -> None:
        inbox.add(delivery.body)
        await delivery.ack()

    consumer = await transport.subscribe(queue, handler, concurrency=1)
    await transport.publish([out(queue, b"a"), out(Destination(DestinationKind.QUEUE, f"{name}.jobs.dlq"), b"d")])
    await inbox.wait_for(1)
    await consumer.stop(1)
    assert len(await admin.resources(f"{name}.jobs")) == 6
    await transport.delete_queue(f"{name}.jobs")
    assert await admin.resources(f"{name}.jobs") == []
    await transport.delete_queue(f"{name}.jobs")
    await transport.delete_queue(f"{name}.never-made")
    # Declared again on use: the cache forgot what was deleted.
    await transport.publish([out(queue, b"b")])
    consumer = await transport.subscribe(queue, handler, concurrency=1)
    await inbox.wait_for(2)
    await consumer.stop(1)
    await transport.delete_queue(f"{name}.jobs")
    with pytest.raises(InvalidDestination):
        await transport.delete_queue("bad name!")


async def test_wildcards_are_refused_at_registration_with_the_reason(pubsub_url: str) -> None:
    """Bug caught: a pattern accepted and then subscribing to a topic literally named
    ``orders.*`` (which never gets a message)."""
    bus = Bus.from_url(pubsub_url, service="audit")
    with pytest.raises(UnsupportedFeature, match="Pub/Sub topics are separate"):
        bus.subscribe("orders.*", group="all")


# -- delay= --------------------------------------------------------------------------------------


async def test_delay_longer_than_the_max_ack_deadline_is_held_again_until_due(
    pubsub_url: str, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bug caught: a delay longer than Pub/Sub's longest ack deadline (600 s; 2 s here)
    handled when the first deadline runs out (early), or lost; a held message holding back
    the next message of its key; a hold counted as a failed attempt."""
    monkeypatch.setattr(_consuming, "_MAX_ACK_DEADLINE", 2)
    got: Collector[tuple[str, float, int]] = Collector(60.0)
    bus = Bus.from_url(pubsub_url, service="svc")

    @bus.consume(f"{name}.later")
    async def later(item: dict[str, str], envelope: Envelope) -> None:
        got.add((item["id"], time.time(), envelope.attempt))

    delay = 7.0
    async with bus:
        sent = time.time()
        await bus.send(f"{name}.later", {"id": "delayed"}, key="k", delay=delay)
        await bus.send(f"{name}.later", {"id": "now"}, key="k")
        await got.wait_for(1)
        assert got.items[0][0] == "now", "the delayed message held back the next one of its key"
        await got.wait_for(2)
    (_, handled, attempt) = got.items[1]
    assert handled >= sent + delay - 0.002, f"handled {sent + delay - handled:.3f}s early"
    assert attempt == 1


async def test_delay_beyond_the_retention_goes_on_in_a_fresh_copy(
    pubsub_url: str, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bug caught: a delay longer than Pub/Sub keeps an unacked message (7 days) silently
    lost, or refreshed without acking the old copy (handled again and again). Here the
    refresh age is 1 s, so held messages are re-published on their redeliveries; each must
    still be handled once, when due. A second message due after the old copy's ack deadline
    (10 s) would have come back is the barrier for duplicates."""
    monkeypatch.setattr(_consuming, "_MAX_ACK_DEADLINE", 2)
    monkeypatch.setattr(_consuming, "_REFRESH_AGE", 1.0)
    got: Collector[tuple[str, float, int]] = Collector(60.0)
    bus = Bus.from_url(pubsub_url, service="svc")

    @bus.consume(f"{name}.later")
    async def later(item: dict[str, str], envelope: Envelope) -> None:
        got.add((item["id"], time.time(), envelope.attempt))

    async with bus:
        sent = time.time()
        await bus.send(f"{name}.later", {"id": "6s"}, delay=6.0)
        await bus.send(f"{name}.later", {"id": "14s"}, delay=14.0)
        await got.wait_until(lambda items: any(i[0] == "14s" for i in items), "the 14 s message")
    assert [i[0] for i in got.items] == ["6s", "14s"], "each handled exactly once"
    for (_, handled, attempt), delay in zip(got.items, (6.0, 14.0), strict=True):
        assert handled >= sent + delay - 0.002
        assert attempt == 1
