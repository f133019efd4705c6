"""Request/reply, delay, batch and routing on memory://: what the kit cannot see from
outside (tracing, clean-up, stop, validation, metrics). The kit proves the patterns on
every transport (messagebus/testing/_patterns_kit.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta

import pytest
from opentelemetry.trace import SpanKind
from typing_extensions import TypedDict

from messagebus import (
    Bus,
    ConfigurationError,
    Envelope,
    InvalidHandler,
    LifecycleError,
    OutgoingMessage,
    PublishFn,
    Reject,
    RequestFailed,
    RequestTimeout,
    Retry,
)
from messagebus.testing import Collector
from messagebus.testing._collect import PeakGate
from messagebus.testing._otel import TelemetryCapture, capture_telemetry
from messagebus.transports.memory import MemoryBroker

BusFactory = Callable[..., Bus]


class Job(TypedDict):
    n: int


@pytest.fixture
def telemetry() -> Iterator[TelemetryCapture]:
    with capture_telemetry() as capture:
        yield capture


# -- request/reply ---------------------------------------------------------------------------


async def test_reply_is_traced_in_the_requests_trace(bus_factory: BusFactory, telemetry: TelemetryCapture) -> None:
    """Catches a reply whose send span starts a new trace (the caller could not see who answered)."""
    responder, caller = bus_factory("pricing"), bus_factory("shop")

    @responder.consume("quotes")
    async def quote(job: Job) -> Job:
        return Job(n=job["n"] + 1)

    async with responder, caller:
        assert await caller.request("quotes", Job(n=1), reply_type=Job, timeout=5) == Job(n=2)
    producers = [s for s in telemetry.spans() if s.kind is SpanKind.PRODUCER]
    request = next(s for s in producers if s.attributes and s.attributes.get("messaging.destination.name") == "quotes")
    reply = next(s for s in producers if s.name.startswith("send shop.replies."))
    assert request.context is not None and reply.context is not None
    assert reply.context.trace_id == request.context.trace_id


async def test_reply_queue_is_deleted_on_stop(bus_factory: BusFactory, memory_broker: MemoryBroker) -> None:
    """Catches a reply queue left behind by every bus that ever made a request."""
    responder, caller = bus_factory("pricing"), bus_factory("shop")

    @responder.consume("quotes")
    async def quote(job: Job) -> Job:
        return job

    async with responder, caller:
        await caller.request("quotes", Job(n=1), reply_type=Job, timeout=5)
        assert any(".replies." in q for q in memory_broker.queue_names())
    assert not [q for q in memory_broker.queue_names() if ".replies." in q]


async def test_waiting_request_fails_when_the_bus_stops(bus_factory: BusFactory) -> None:
    """Catches a request left hanging (until its timeout) by a bus that stopped under it."""
    sent = asyncio.Event()

    def note_sent(publish: PublishFn) -> PublishFn:
        async def noted(messages: Sequence[OutgoingMessage]) -> None:
            await publish(messages)
            sent.set()

        return noted

    caller = bus_factory("shop", publish_middleware=[note_sent])
    await caller.start()
    waiting = asyncio.ensure_future(caller.request("nobody-serves", Job(n=1), timeout=60))
    await asyncio.wait_for(sent.wait(), 5)
    await caller.stop()
    with pytest.raises(LifecycleError, match="stopped before the reply"):
        await asyncio.wait_for(waiting, 5)


async def test_no_reply_is_sent_after_the_caller_gave_up(bus_factory: BusFactory) -> None:
    """Catches replies sent (and queued forever) for callers that already timed out."""
    replies_sent: list[str] = []

    def count_replies(publish: PublishFn) -> PublishFn:
        async def counted(messages: Sequence[OutgoingMessage]) -> None:
            replies_sent.extend(m.destination.name for m in messages if ".replies." in m.destination.name)
            await publish(messages)

        return counted

    release = asyncio.Event()
    done: Collector[int] = Collector(5)
    responder = bus_factory("pricing", publish_middleware=[count_replies])

    @responder.consume("slow")
    async def slow(job: Job) -> Job:
        await release.wait()
        done.add(job["n"])
        return job

    caller = bus_factory("shop")
    async with responder, caller:
        with pytest.raises(RequestTimeout):
            await caller.request("slow", Job(n=1), timeout=0.2)
        release.set()
        await done.wait_for(1)
    assert replies_sent == []


async def test_request_needs_a_running_bus_and_a_positive_timeout(bus_factory: BusFactory) -> None:
    bus = bus_factory()
    with pytest.raises(LifecycleError):
        await bus.request("q", Job(n=1))
    async with bus:
        for timeout in (0, -1, True, "5"):
            with pytest.raises(ConfigurationError, match="timeout"):
                await bus.request("q", Job(n=1), timeout=timeout)  # type: ignore[call-overload]


# -- delay -------------------------------------------------------------------------------------


async def test_delay_takes_timedelta_and_applies_to_every_message_of_a_batch(bus_factory: BusFactory) -> None:
    """Catches delay= ignored by send_many/publish_many or refusing a timedelta."""
    got: Collector[tuple[int, float]] = Collector(5)
    bus = bus_factory()

    @bus.consume("later")
    async def later(job: Job) -> None:
        got.add((job["n"], asyncio.get_running_loop().time()))

    async with bus:
        loop = asyncio.get_running_loop()
        start = loop.time()
        await bus.send_many("later", [Job(n=i) for i in range(3)], delay=timedelta(milliseconds=300))
        await got.wait_for(3)
    assert all(at >= start + 0.29 for _, at in got.items), "handled before the delay"


async def test_delayed_message_survives_its_consumer_stopping(bus_factory: BusFactory) -> None:
    """Catches a held message lost when the consumer holding it stops before it is due."""
    first = bus_factory()

    @first.consume("held")
    async def never(job: Job) -> None:
        raise AssertionError("handled before its due time")

    async with first:
        await first.send("held", Job(n=1), delay=0.3)
    got: Collector[Envelope] = Collector(5)
    second = bus_factory()

    @second.consume("held")
    async def handle(envelope: Envelope) -> None:
        got.add(envelope)

    async with second:
        [envelope] = await got.wait_for(1)
    assert envelope.attempt == 1


# -- batch -------------------------------------------------------------------------------------


async def test_partial_batch_is_delivered_after_batch_timeout(bus_factory: BusFactory) -> None:
    """Catches a batch that waits forever for N messages that never come."""
    got: Collector[list[int]] = Collector(5)
    bus = bus_factory()

    @bus.consume("few", batch=100, batch_timeout=0.05)
    async def bulk(jobs: list[Job]) -> None:
        got.add([j["n"] for j in jobs])

    async with bus:
        await bus.send_many("few", [Job(n=i) for i in range(3)])
        await got.wait_until(lambda b: sum(map(len, b)) == 3, "3 messages")


async def test_batch_cut_by_stop_is_redelivered_not_acked(bus_factory: BusFactory, memory_url: str) -> None:
    """Catches a batch cancelled by stop's grace whose messages were acked (lost)."""
    started = asyncio.Event()
    first = bus_factory()

    @first.consume("cut", batch=4, batch_timeout=0.01)
    async def stuck(jobs: list[Job]) -> None:
        started.set()
        await asyncio.Event().wait()

    await first.start()
    await first.send_many("cut", [Job(n=i) for i in range(4)])
    await asyncio.wait_for(started.wait(), 5)
    await first.stop(grace=0.05)
    got: Collector[int] = Collector(5)
    second = bus_factory()

    @second.consume("cut", batch=4, batch_timeout=0.01)
    async def bulk(jobs: list[Job]) -> None:
        for job in jobs:
            got.add(job["n"])

    async with second:
        await got.wait_for(4)
    assert sorted(got.items) == [0, 1, 2, 3]


def test_batch_arguments_are_checked_at_registration(bus_factory: BusFactory) -> None:
    bus = bus_factory()

    async def one(job: Job) -> None: ...

    async def many(jobs: list[Job]) -> None: ...

    with pytest.raises(InvalidHandler, match="list\\[T\\]"):
        bus.consume("q1", batch=10)(one)
    for bad in (0, -1, True, 2.5):
        with pytest.raises(ConfigurationError, match="batch"):
            bus.consume("q2", batch=bad)(many)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="batch_timeout"):
        bus.consume("q3", batch=10, batch_timeout=0)(many)


# -- routing -----------------------------------------------------------------------------------


async def test_filtered_out_messages_are_counted(bus_factory: BusFactory, telemetry: TelemetryCapture) -> None:
    """Catches messages dropped by a filter without a trace in the metrics."""
    got: Collector[int] = Collector(5)
    bus = bus_factory()

    @bus.subscribe("orders", group="eu", filter={"region": "eu"})
    async def eu(job: Job) -> None:
        got.add(job["n"])

    async with bus:
        for i, region in enumerate(("us", "eu", "us")):
            await bus.publish("orders", Job(n=i), headers={"region": region}, key="k")
        await bus.publish("orders", Job(n=9), headers={"region": "eu"}, key="k")
        await got.wait_for(2)
    points = telemetry.metrics().get("messagebus.filtered.messages", [])
    assert sum(v for a, v in points if a.get("messaging.consumer.group.name") == "eu") == 2


async def test_pattern_retry_and_dead_letter_keep_the_real_topic(bus_factory: BusFactory) -> None:
    """Catches a retried pattern delivery that forgets which topic it came from, and a
    pattern subscription's dead letters going to an illegal or shared queue."""
    seen: Collector[tuple[str, int]] = Collector(5)
    dead: Collector[Envelope] = Collector(5)
    bus = bus_factory(retry=Retry(max_attempts=2, initial_delay=0.01, jitter=0.0))

    @bus.subscribe("shop.*", group="audit")
    async def audit(job: Job, envelope: Envelope) -> None:
        seen.add((envelope.destination, envelope.attempt))
        raise RuntimeError("audit store down")

    @bus.consume("shop._star_.audit.dlq")
    async def dlq(envelope: Envelope) -> None:
        dead.add(envelope)

    async with bus:
        await bus.publish("shop.paid", Job(n=1))
        [letter] = await dead.wait_for(1)
    assert seen.items == [("shop.paid", 1), ("shop.paid", 2)]
    assert letter.wire_headers["dlq-destination"] == "shop.*"


def test_patterns_match_like_amqp_topic_bindings() -> None:
    from messagebus.transports import matches_pattern

    cases: list[tuple[str, str, bool]] = [
        ("a.*", "a.b", True),
        ("a.*", "a", False),
        ("a.*", "a.b.c", False),
        ("a.#", "a", True),
        ("a.#", "a.b.c", True),
        ("#", "x.y", True),
        ("a.*.c", "a.b.c", True),
        ("a.#.c", "a.c", True),
        ("a.#.c", "a.b.b.c", True),
        ("a.#.c", "a.b.d", False),
        ("*.b", "ab.b", True),
        ("a.*", "ab.c", False),
    ]
    for pattern, topic, expected in cases:
        assert matches_pattern(pattern, topic) is expected, (pattern, topic)


async def test_rejected_or_undecodable_request_fails_fast(bus_factory: BusFactory) -> None:
    """Catches a caller left waiting when the responder rejects the request or cannot
    decode it (both dead-letter at once, without retries)."""
    responder, caller = bus_factory("pricing"), bus_factory("shop")

    @responder.consume("strict")
    async def strict(job: Job) -> Job:
        raise Reject("sku unknown")

    async with responder, caller:
        with pytest.raises(RequestFailed) as rejected:
            await caller.request("strict", Job(n=1), timeout=30)
        with pytest.raises(RequestFailed) as undecodable:
            await caller.request("strict", {"n": "not a number"}, timeout=30)
    assert rejected.value.error_type == "messagebus.Reject"
    assert undecodable.value.error_type == "messagebus.DecodeError"
    assert isinstance(RequestTimeout("x"), TimeoutError)


async def test_out_of_range_delays_are_refused(bus_factory: BusFactory) -> None:
    """Catches a delay in the wrong unit (milliseconds as seconds: years) or NaN accepted."""
    bus = bus_factory()
    async with bus:
        for bad in (366 * 24 * 3600, float("nan"), float("inf"), timedelta(days=-1)):
            with pytest.raises(ConfigurationError, match="delay"):
                await bus.send("q", Job(n=1), delay=bad)


async def test_each_message_of_a_batch_has_its_own_process_span(
    bus_factory: BusFactory, telemetry: TelemetryCapture
) -> None:
    """Catches a batch traced as one message (the others' traces would end at the broker)."""
    got: Collector[int] = Collector(5)
    bus = bus_factory()

    @bus.consume("traced", batch=5, batch_timeout=0.05)
    async def bulk(jobs: list[Job]) -> None:
        got.add(len(jobs))

    async with bus:
        await bus.send_many("traced", [Job(n=i) for i in range(5)])
        await got.wait_until(lambda sizes: sum(sizes) == 5, "5 messages")
    consumers = [s for s in telemetry.spans() if s.kind is SpanKind.CONSUMER]
    assert len(consumers) == 5
    assert len({s.parent.span_id for s in consumers if s.parent}) == 5


@pytest.mark.parametrize("concurrency", [1, 2])
async def test_batch_concurrency_is_the_number_of_batch_calls_at_once(
    bus_factory: BusFactory, concurrency: int
) -> None:
    """Catches batch calls running beyond ``concurrency`` (the room given to the transport
    for the next batch to fill must not become another call), or fewer than it."""
    gate = PeakGate(target=concurrency + 1, timeout=0.3)
    got: Collector[int] = Collector(10)
    bus = bus_factory()

    @bus.consume("peak", batch=2, batch_timeout=0.01, concurrency=concurrency)
    async def bulk(jobs: list[Job]) -> None:
        await gate.hold()
        for job in jobs:
            got.add(job["n"])

    async with bus:
        await bus.send_many("peak", [Job(n=i) for i in range(12)])
        await got.wait_for(12)
    assert gate.peak == concurrency
