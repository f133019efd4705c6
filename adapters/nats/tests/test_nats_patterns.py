"""Issue 17 on NATS JetStream: reply queues deleted on stop (``delete_queue``), subscription
patterns (a durable per matching topic stream, made by the publisher of a new topic before its
first message), ``delay=`` (holds back nothing, not an attempt, kept across a consumer
restart), header filters at the client. Against the shared nats-server, each test on names of
its own under the session's prefix."""

from __future__ import annotations

import asyncio
import time
import uuid

import nats
from messagebus_nats import NatsTransport, physical_names
from messagebus_nats._options import NatsOptions
from messagebus_nats._topology import pattern_durable, stream_name
from nats.js import JetStreamContext
from nats_helpers import TIMEOUT, prefix_of, until

from messagebus import Bus, Envelope, Retry
from messagebus.testing import Collector
from messagebus.transports import Destination, DestinationKind, OutgoingMessage

QUEUE, TOPIC = DestinationKind.QUEUE, DestinationKind.TOPIC


def names(url: str, kind: DestinationKind, name: str, group: str | None = None) -> dict[str, str]:
    options = NatsOptions.model_validate({"prefix": prefix_of(url)})
    return physical_names(Destination(kind, name, group), options)


async def streams(js: JetStreamContext, prefix: str) -> set[str]:
    return {i.config.name for i in await js.streams_info() if i.config.name and i.config.name.startswith(prefix)}


def fresh(what: str) -> str:
    return f"{what}.{uuid.uuid4().hex[:8]}"


async def test_a_bus_that_made_requests_leaves_no_reply_stream_after_stop(nats_url: str, js: JetStreamContext) -> None:
    """Catches a reply queue's stream left on the server by every stopped bus (no
    ``delete_queue``, or one deleting another stream): none is left after stop, and the
    service's own queue is untouched."""
    queue = fresh("double")
    server, client = (Bus.from_url(nats_url, service=s) for s in ("calc", fresh("caller")))

    @server.consume(queue)
    async def double(n: int) -> int:
        return n * 2

    prefix = prefix_of(nats_url)
    async with server:
        before = await streams(js, prefix)
        async with client:
            assert await client.request(queue, 21, reply_type=int, timeout=TIMEOUT) == 42
            made = await streams(js, prefix) - before
            assert any("replies" in s for s in made), f"no reply stream was made: {made}"
        left = await streams(js, prefix)
    assert made & left == set()
    assert names(nats_url, QUEUE, queue)["stream"] in left


async def test_delete_queue_removes_the_queue_and_its_dead_letters_only_and_is_idempotent(
    nats_url: str, js: JetStreamContext
) -> None:
    """Catches ``delete_queue`` leaving the dead-letter stream, deleting a neighbour
    (``jobs2``), raising on a second call, or a publish after it failing on a stream it
    still believes exists."""
    jobs = fresh("jobs")
    transport = NatsTransport.from_url(nats_url)
    await transport.connect()
    try:
        for name in (jobs, f"{jobs}.dlq", f"{jobs}2"):
            await transport.publish([OutgoingMessage(Destination(QUEUE, name), b"x", {}, None)])
        await transport.delete_queue(jobs)
        await transport.delete_queue(jobs)
        left = await streams(js, prefix_of(nats_url))
        assert left & {names(nats_url, QUEUE, jobs)["stream"], names(nats_url, QUEUE, f"{jobs}.dlq")["stream"]} == set()
        assert names(nats_url, QUEUE, f"{jobs}2")["stream"] in left
        await transport.publish([OutgoingMessage(Destination(QUEUE, jobs), b"again", {}, None)])
    finally:
        await transport.close()


async def test_a_new_topic_keeps_its_first_message_for_a_pattern_group_before_it_is_listed(
    nats_url: str, js: JetStreamContext
) -> None:
    """Catches the first messages of a topic made after a pattern subscription started being
    dropped (interest retention keeps nothing nobody has a durable for): another process's
    first publish makes the pattern's durable, which holds the message until the subscriber
    lists the topic; the handler sees the real topic."""
    base = fresh("orders")
    slow = f"{nats_url}&pattern_interval=1"
    bus, sender = Bus.from_url(slow, service="audit"), Bus.from_url(nats_url, service="shop")
    got: Collector[tuple[str, int]] = Collector(TIMEOUT)

    @bus.subscribe(f"{base}.*", group="audit")
    async def audit(data: dict[str, int], envelope: Envelope) -> None:
        got.add((envelope.destination, data["n"]))

    async with bus, sender:
        await sender.publish(f"{base}.created", {"n": 1})
        stream = names(nats_url, TOPIC, f"{base}.created")["stream"]
        durable = pattern_durable(Destination(TOPIC, f"{base}.*", "audit"))
        info = await js.consumer_info(stream, durable)  # made by the sender, before its publish
        assert info.config.durable_name == durable
        await got.wait_for(1)
    assert got.items == [(f"{base}.created", 1)]


async def test_a_pattern_group_competes_per_topic_keeps_other_groups_and_dead_letters_to_its_own_queue(
    nats_url: str, js: JetStreamContext
) -> None:
    """Catches a pattern group whose instances each get every message (a durable per
    instance), a plain group of the same name sharing its durable (taking its messages), and
    a pattern's failures dead-lettered to a topic's queue instead of ``<pattern>.<group>.dlq``."""
    base = fresh("pay")
    url = f"{nats_url}&pattern_interval=0.2"
    first, second = (Bus.from_url(url, service="audit", retry=Retry(max_attempts=2, initial_delay=0.1)) for _ in "12")
    plain = Bus.from_url(url, service="audit")
    handled: Collector[int] = Collector(TIMEOUT)
    direct: Collector[int] = Collector(TIMEOUT)
    failed = asyncio.Event()

    for bus in (first, second):

        @bus.subscribe(f"{base}.#", group="audit")
        async def audit(data: dict[str, int]) -> None:
            if data["n"] < 0:
                failed.set()
                raise ValueError("poison")
            handled.add(data["n"])

    @plain.subscribe(f"{base}.eu", group="audit")
    async def same_name(data: dict[str, int]) -> None:
        direct.add(data["n"])

    async with first, second, plain:
        for n in range(20):
            await first.publish(f"{base}.eu" if n % 2 else f"{base}.us.west", {"n": n})
        await first.publish(f"{base}.eu", {"n": -1})
        await handled.wait_for(20)
        await direct.wait_for(11)
        dlq = stream_name(Destination(TOPIC, f"{base}.#", "audit").dead_letter_queue, prefix_of(nats_url))
        await until(lambda: _count(js, dlq, 1), f"the dead letter in {dlq}")
    assert sorted(handled.items) == list(range(20))
    assert sorted(direct.items) == [-1, *range(1, 20, 2)]


async def _count(js: JetStreamContext, stream: str, n: int) -> bool:
    try:
        return (await js.stream_info(stream)).state.messages >= n
    except nats.js.errors.NotFoundError:
        return False


async def test_a_delayed_message_is_held_without_holding_back_others_and_survives_a_restart(
    nats_url: str, js: JetStreamContext
) -> None:
    """Catches a delayed message handled early, one that blocks the single worker, one
    counted as an attempt (attempt 2 when due), and one lost when the consumer holding it
    stops (kept in memory only): a new consumer handles it once, attempt 1."""
    queue = fresh("later")
    stream = names(nats_url, QUEUE, queue)["stream"]
    sender = Bus.from_url(nats_url, service="s")
    got: Collector[tuple[int, int, float]] = Collector(TIMEOUT)

    def consumer() -> Bus:
        bus = Bus.from_url(nats_url, service="c")

        @bus.consume(queue, concurrency=1)
        async def handle(data: dict[str, int], envelope: Envelope) -> None:
            got.add((data["n"], envelope.attempt, time.time()))

        return bus

    async with sender:
        await sender.send(queue, {"n": 1}, delay=3)
        due = time.time() + 3
        async with consumer():
            await sender.send(queue, {"n": 2})
            await got.wait_for(1)
            # Held: the original acked, its copy (with the hold count) in the stream.
            await until(lambda: _last_seq(js, stream, 3), "the held copy")
        assert [n for n, _, _ in got.items] == [2]
        async with consumer():
            await got.wait_for(2)
    assert [(n, attempt) for n, attempt, _ in got.items] == [(2, 1), (1, 1)]
    assert got.items[1][2] >= due - 0.01, "handled before it was due"


async def _last_seq(js: JetStreamContext, stream: str, seq: int) -> bool:
    return (await js.stream_info(stream)).state.last_seq >= seq


async def test_a_filter_handles_matching_messages_and_acks_the_rest(nats_url: str, js: JetStreamContext) -> None:
    """Catches the client-side filter handling non-matching messages, or leaving them unacked
    (redelivered after ack_wait forever): only ``region=eu`` is handled, nothing stays pending."""
    topic = fresh("orders")
    bus = Bus.from_url(nats_url, service="f")
    got: Collector[str] = Collector(TIMEOUT)

    @bus.subscribe(topic, group="eu", filter={"region": "eu"})
    async def handle(item: dict[str, str]) -> None:
        got.add(item["id"])

    async with bus:
        for i, region in enumerate(("us", "eu", "us", "eu", "apac")):
            await bus.publish(topic, {"id": str(i)}, headers={"region": region})
        await bus.publish(topic, {"id": "last"}, headers={"region": "eu"})
        await got.wait_for(3)
        n = names(nats_url, TOPIC, topic, "eu")

        async def settled() -> bool:
            info = await js.consumer_info(n["stream"], n["consumer"])
            return bool(info.num_ack_pending == 0 and info.num_pending == 0)

        await until(settled, "every message settled")
    assert got.items == ["1", "3", "last"]


async def test_two_groups_retrying_one_message_each_get_their_retry(nats_url: str) -> None:
    """Catches the retry copies of two groups of one topic sharing a message id (JetStream's
    duplicate window drops the second group's copy: that group loses the message)."""
    topic = fresh("twice")
    bus = Bus.from_url(nats_url, service="g", retry=Retry(max_attempts=3, initial_delay=0.1, jitter=0))
    got: Collector[tuple[str, int]] = Collector(TIMEOUT)

    for group in ("a", "b"):

        @bus.subscribe(topic, group=group)
        async def handle(data: dict[str, int], envelope: Envelope, group: str = group) -> None:
            got.add((group, envelope.attempt))
            if envelope.attempt == 1:
                raise RuntimeError("fails once")

    async with bus:
        await bus.publish(topic, {"n": 1})
        await got.wait_for(4)
    assert sorted(got.items) == [("a", 1), ("a", 2), ("b", 1), ("b", 2)]


async def test_hash_matches_zero_segments_and_star_exactly_one(nats_url: str) -> None:
    """Catches ``#`` listed as NATS ``>`` alone (which needs one token at least: ``base.#``
    would miss topic ``base``, ``base.*.#`` topic ``base.a``) and ``*`` matching deeper
    topics, for topics existing before the subscription started (found by the first listing)
    and made after (by the rescan)."""
    base = fresh("zero")
    sender = Bus.from_url(nats_url, service="s")
    bus = Bus.from_url(f"{nats_url}&pattern_interval=0.2", service="z")
    deep: Collector[str] = Collector(TIMEOUT)
    one: Collector[str] = Collector(TIMEOUT)
    mid: Collector[str] = Collector(TIMEOUT)

    @bus.subscribe(f"{base}.*.#", group="mid")
    async def on_mid(data: dict[str, int], envelope: Envelope) -> None:
        mid.add(envelope.destination)

    @bus.subscribe(f"{base}.#", group="deep")
    async def on_deep(data: dict[str, int], envelope: Envelope) -> None:
        deep.add(envelope.destination)

    @bus.subscribe(f"{base}.*", group="one")
    async def on_one(data: dict[str, int], envelope: Envelope) -> None:
        one.add(envelope.destination)

    keeper = Bus.from_url(nats_url, service="k")  # makes the streams before the patterns start
    for topic in (base, f"{base}.a"):
        keeper.subscribe(topic, group="keeper")(_ignore)
    async with sender, keeper, bus:
        for topic in (base, f"{base}.a", f"{base}.a.b", f"{fresh('other')}.a"):
            await sender.publish(topic, {"n": 1})
        await deep.wait_for(3)
        await one.wait_for(1)
        await sender.publish(f"{base}.last", {"n": 2})
        await one.wait_for(2)
        await deep.wait_for(4)
        await mid.wait_for(3)
    assert sorted(mid.items) == sorted([f"{base}.a", f"{base}.a.b", f"{base}.last"])
    assert sorted(deep.items) == sorted([base, f"{base}.a", f"{base}.a.b", f"{base}.last"])
    assert sorted(one.items) == [f"{base}.a", f"{base}.last"]


async def _ignore(data: dict[str, int]) -> None:
    return None
