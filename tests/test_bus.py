"""Bus behaviour on memory://: bad input, lifecycle, decoding, middleware, settling."""

import asyncio
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from pydantic import BaseModel
from typing_extensions import TypedDict

from messagebus import (
    Bus,
    BusState,
    ConfigurationError,
    EncodeError,
    Envelope,
    InvalidDestination,
    InvalidHandler,
    InvalidHeaders,
    LifecycleError,
    ManualClock,
    Nack,
    OutgoingMessage,
    PublishFn,
    Retry,
)
from messagebus.middleware import HandlerTimeout, timeout
from messagebus.testing import Collector, MemoryBroker, wait_idle
from messagebus.transports.memory import MemoryTransport

BusFactory = Callable[..., Bus]


class Order(BaseModel):
    id: int
    total: float = 0.0


@dataclasses.dataclass
class Shipment:
    order_id: int
    address: str


class Email(TypedDict):
    to: str
    subject: str


# -- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["", "has space", ".dot-first", "slash/name", "x" * 201, "ümlaut"])
def test_illegal_destination_names(bus_factory: BusFactory, name: str) -> None:
    bus = bus_factory()
    with pytest.raises(InvalidDestination, match="name"):
        bus.subscribe(name)


async def test_illegal_name_on_publish(bus_factory: BusFactory) -> None:
    bus = bus_factory()
    async with bus:
        with pytest.raises(InvalidDestination, match="illegal topic name"):
            await bus.publish("a b", {})
        with pytest.raises(InvalidDestination, match="must not be empty"):
            await bus.send("", {})


def test_handler_must_be_async(bus_factory: BusFactory) -> None:
    bus = bus_factory()

    def sync_handler(order: Order) -> None: ...

    with pytest.raises(InvalidHandler, match="must be an 'async def'"):
        bus.subscribe("orders")(sync_handler)


def test_handler_needs_a_parameter(bus_factory: BusFactory) -> None:
    bus = bus_factory()

    async def nothing() -> None: ...

    with pytest.raises(InvalidHandler, match="takes no parameters"):
        bus.subscribe("orders")(nothing)


def test_handler_with_extra_required_parameters(bus_factory: BusFactory) -> None:
    bus = bus_factory()

    async def too_many(order: Order, envelope: Envelope, db: object) -> None: ...

    with pytest.raises(InvalidHandler, match="extra required parameters"):
        bus.subscribe("orders")(too_many)


def test_duplicate_registration(bus_factory: BusFactory) -> None:
    bus = bus_factory()

    async def a(order: Order) -> None: ...

    bus.subscribe("orders")(a)
    with pytest.raises(ConfigurationError, match="already has a handler"):
        bus.subscribe("orders")(a)
    bus.subscribe("orders", group="audit")(a)  # another group is fine


@pytest.mark.parametrize("concurrency", [0, -1, 1.5])
def test_bad_concurrency(bus_factory: BusFactory, concurrency: Any) -> None:
    with pytest.raises(ConfigurationError, match="concurrency"):
        bus_factory().consume("q", concurrency=concurrency)


def test_bad_retry_policy() -> None:
    with pytest.raises(ConfigurationError, match="max_attempts must be an int >= 1"):
        Retry(max_attempts=0)
    with pytest.raises(ConfigurationError, match="jitter"):
        Retry(jitter=2)


async def test_unencodable_payload(bus_factory: BusFactory) -> None:
    bus = bus_factory()
    async with bus:
        with pytest.raises(EncodeError, match="cannot encode a object payload as JSON"):
            await bus.publish("orders", object())


@pytest.mark.parametrize(
    ("headers", "match"),
    [
        ({"n": 1}, "header 'n' has a int value"),
        ({1: "x"}, "header names must be non-empty str"),
        (["a"], "headers must be a mapping"),
        ({"ce-id": "x"}, "reserved prefix"),
    ],
)
async def test_bad_headers(bus_factory: BusFactory, headers: Any, match: str) -> None:
    bus = bus_factory()
    async with bus:
        with pytest.raises(InvalidHeaders, match=match):
            await bus.publish("orders", {}, headers=headers)


async def test_bad_key(bus_factory: BusFactory) -> None:
    bus = bus_factory()
    async with bus:
        with pytest.raises(ConfigurationError, match="key must be a str"):
            await bus.publish("orders", {}, key=42)  # type: ignore[arg-type]


# -- lifecycle ----------------------------------------------------------------------------


async def test_lifecycle_misuse(bus_factory: BusFactory) -> None:
    bus = bus_factory()
    with pytest.raises(LifecycleError, match=r"call 'await bus.start\(\)'"):
        await bus.publish("orders", {})
    await bus.start()
    assert bus.state is BusState.RUNNING
    with pytest.raises(LifecycleError, match="new bus"):
        await bus.start()
    with pytest.raises(LifecycleError, match="before start"):
        bus.consume("late")
    await bus.stop()
    await bus.stop()  # idempotent
    assert bus.state is BusState.STOPPED
    with pytest.raises(LifecycleError, match="stopped; create a new Bus"):
        await bus.send("orders", {})
    with pytest.raises(LifecycleError, match="new bus"):
        await bus.start()


async def test_stop_on_a_new_bus_is_a_no_op(bus_factory: BusFactory) -> None:
    bus = bus_factory()
    await bus.stop()
    assert bus.state is BusState.NEW


async def test_handlers_can_publish_while_the_bus_stops(bus_factory: BusFactory) -> None:
    bus = bus_factory()
    started = asyncio.Event()
    release = asyncio.Event()
    emitted: Collector[int] = Collector(5)

    @bus.consume("in")
    async def relay(n: int) -> None:
        started.set()
        await release.wait()
        await bus.send("out", n + 1)

    listener = bus_factory("listener")
    listener.consume("out")(emitted_handler(emitted))
    async with listener:
        await bus.start()
        await bus.send("in", 1)
        await started.wait()
        stopping = asyncio.create_task(bus.stop(grace=5))
        await asyncio.sleep(0)
        release.set()
        await stopping
        assert await emitted.wait_for(1) == [2]


def emitted_handler(col: Collector[int]) -> Any:
    async def handle(n: int) -> None:
        col.add(n)

    return handle


# -- decoding -----------------------------------------------------------------------------


async def test_decodes_by_annotation(bus_factory: BusFactory) -> None:
    bus = bus_factory()
    got: Collector[Any] = Collector(5)

    @bus.consume("models")
    async def model(order: Order) -> None:
        got.add(order)

    @bus.consume("dataclasses")
    async def dc(shipment: Shipment) -> None:
        got.add(shipment)

    @bus.consume("typeddicts")
    async def td(email: Email) -> None:
        got.add(email)

    @bus.consume("lists")
    async def lists(items: list[int]) -> None:
        got.add(items)

    @bus.consume("text")
    async def text(body: str) -> None:
        got.add(body)

    @bus.consume("untyped")
    async def untyped(body, envelope):  # type: ignore[no-untyped-def]
        got.add((body, envelope.destination))

    @bus.consume("envelope-only")
    async def env_only(envelope: Envelope) -> None:
        got.add(envelope.body)

    async with bus:
        await bus.send("models", Order(id=1, total=9.5))
        await bus.send("dataclasses", Shipment(order_id=2, address="Main St"))
        await bus.send("typeddicts", Email(to="a@b.c", subject="hi"))
        await bus.send("lists", [1, 2, 3])
        await bus.send("text", "hello")
        await bus.send("untyped", {"a": 1})
        await bus.send("envelope-only", b"raw")
        await got.wait_for(7)
    assert Order(id=1, total=9.5) in got.items
    assert Shipment(order_id=2, address="Main St") in got.items
    assert {"to": "a@b.c", "subject": "hi"} in got.items
    assert [1, 2, 3] in got.items
    assert "hello" in got.items
    assert ({"a": 1}, "untyped") in got.items
    assert b"raw" in got.items


async def test_undecodable_body_is_dead_lettered_not_retried(bus_factory: BusFactory) -> None:
    bus = bus_factory()
    calls: list[Order] = []
    dead: Collector[Envelope] = Collector(5)

    @bus.consume("orders")
    async def handle(order: Order) -> None:
        calls.append(order)

    @bus.consume("orders.dlq")
    async def dlq(envelope: Envelope) -> None:
        dead.add(envelope)

    async with bus:
        await bus.send("orders", {"id": "not-an-int"})
        [env] = await dead.wait_for(1)
        await wait_idle(bus)
    assert calls == []
    assert "does not decode into Order" in env.wire_headers["dlq-error-message"]
    assert "id" in env.wire_headers["dlq-error-message"]
    assert env.wire_headers["dlq-attempts"] == "1"


# -- middleware ---------------------------------------------------------------------------


async def test_middleware_order_and_bytes(bus_factory: BusFactory) -> None:
    calls: list[str] = []

    def tag(name: str) -> Any:
        def middleware(handler: Any) -> Any:
            async def run(envelope: Envelope) -> None:
                assert isinstance(envelope.body, bytes)
                calls.append(f"{name}>")
                await handler(envelope)
                calls.append(f"<{name}")

            return run

        return middleware

    bus = bus_factory(middleware=[tag("bus")])
    done: Collector[int] = Collector(5)

    @bus.consume("q", middleware=[tag("outer"), tag("inner")])
    async def handle(n: int) -> None:
        calls.append("handler")
        done.add(n)

    async with bus:
        await bus.send("q", 1)
        await done.wait_for(1)
        await wait_idle(bus)
    assert calls == ["bus>", "outer>", "inner>", "handler", "<inner", "<outer", "<bus"]


async def test_publish_middleware_sees_encoded_messages(bus_factory: BusFactory) -> None:
    seen: list[OutgoingMessage] = []

    def stamp(publish: PublishFn) -> PublishFn:
        async def run(messages: Sequence[OutgoingMessage]) -> None:
            for m in messages:
                seen.append(m)
                m.headers["x-stamped"] = "yes"
            await publish(messages)

        return run

    bus = bus_factory(publish_middleware=[stamp])
    got: Collector[str] = Collector(5)

    @bus.consume("q")
    async def handle(n: int, envelope: Envelope) -> None:
        got.add(envelope.headers["x-stamped"])

    async with bus:
        await bus.send("q", 1)
        assert await got.wait_for(1) == ["yes"]
    assert seen[0].body == b"1"
    assert seen[0].content_type == "application/json"


async def test_timeout_middleware_ends_a_hanging_handler_and_retries(bus_factory: BusFactory) -> None:
    bus = bus_factory(retry=Retry(max_attempts=2, initial_delay=0.01, jitter=0))
    attempts: Collector[int] = Collector(5)
    dead: Collector[Envelope] = Collector(5)

    @bus.consume("q", middleware=[timeout(0.05)])
    async def hangs(n: int, envelope: Envelope) -> None:
        attempts.add(envelope.attempt)
        await asyncio.Event().wait()

    @bus.consume("q.dlq")
    async def dlq(envelope: Envelope) -> None:
        dead.add(envelope)

    async with bus:
        await bus.send("q", 1)
        [env] = await dead.wait_for(1)
    assert attempts.items == [1, 2]
    assert env.wire_headers["dlq-error-type"] == f"{HandlerTimeout.__module__}.HandlerTimeout"


# -- retry on the manual clock ------------------------------------------------------------


async def test_backoff_runs_on_the_manual_clock(bus_factory: BusFactory, manual_clock: ManualClock) -> None:
    policy = Retry(max_attempts=4, initial_delay=10, multiplier=3, max_delay=60, jitter=0)
    bus = bus_factory(retry=policy)
    attempts: Collector[tuple[int, float]] = Collector(5)
    dead: Collector[Envelope] = Collector(5)

    @bus.consume("q")
    async def fails(n: int, envelope: Envelope) -> None:
        attempts.add((envelope.attempt, manual_clock.now()))
        raise RuntimeError("down")

    @bus.consume("q.dlq")
    async def dlq(envelope: Envelope) -> None:
        dead.add(envelope)

    async with bus:
        await bus.send("q", 1)
        await attempts.wait_for(1)
        await wait_idle(bus)
        manual_clock.advance(9.9)
        await wait_idle(bus)
        assert len(attempts) == 1  # not due yet
        for expected in (2, 3, 4):
            manual_clock.advance(60)
            await attempts.wait_for(expected)
        [env] = await dead.wait_for(1)
    assert [a for a, _ in attempts.items] == [1, 2, 3, 4]
    assert env.wire_headers["dlq-attempts"] == "4"
    assert env.wire_headers["dlq-error-message"] == "down"


async def test_nack_does_not_count_as_a_failure(bus_factory: BusFactory) -> None:
    bus = bus_factory(retry=Retry(max_attempts=1))
    attempts: Collector[int] = Collector(5)

    @bus.consume("q")
    async def handle(n: int, envelope: Envelope) -> None:
        attempts.add(envelope.attempt)
        if envelope.attempt < 3:
            raise Nack()

    async with bus:
        await bus.send("q", 1)
        await attempts.wait_for(3)
        await wait_idle(bus)
    assert attempts.items == [1, 2, 3]


def test_retry_delays() -> None:
    policy = Retry(initial_delay=0.1, multiplier=2, max_delay=0.5, jitter=0)
    assert [policy.delay(a) for a in (1, 2, 3, 4)] == [0.1, 0.2, 0.4, 0.5]
    jittered = Retry(initial_delay=1, jitter=0.1)
    assert all(0.9 <= jittered.delay(1) <= 1.1 for _ in range(100))
    only_value_errors = Retry(retry_on=ValueError)
    assert only_value_errors.should_retry(ValueError(), 1)
    assert not only_value_errors.should_retry(KeyError(), 1)


# -- the memory broker --------------------------------------------------------------------


async def test_buses_with_the_same_url_share_a_broker(bus_factory: BusFactory, memory_url: str) -> None:
    consumer = bus_factory("billing")
    got: Collector[int] = Collector(5)
    consumer.subscribe("orders")(emitted_handler(got))
    producer = bus_factory("orders")
    other = Bus.from_url("memory://some-other-broker", service="x")
    async with consumer, producer, other:
        await other.publish("orders", 99)  # another broker: never arrives
        await producer.publish("orders", 1)
        assert await got.wait_for(1) == [1]
        await wait_idle(consumer)
    assert got.items == [1]


def test_broker_outlives_event_loops(memory_url: str, memory_broker: MemoryBroker) -> None:
    async def produce() -> None:
        async with Bus.from_url(memory_url, service="p") as bus:
            await bus.send("jobs", 7)

    async def consume() -> list[int]:
        got: Collector[int] = Collector(5)
        bus = Bus.from_url(memory_url, service="c")
        bus.consume("jobs")(emitted_handler(got))
        async with bus:
            return list(await got.wait_for(1))

    asyncio.run(produce())
    assert memory_broker.pending("jobs") == 1
    assert asyncio.run(consume()) == [7]


class _JoiningConsumer:
    """A memory:// consumer that says it is ready only when the test lets it (a Kafka join)."""

    def __init__(self, inner: Any, transport: "_JoiningTransport") -> None:
        self.inner = inner
        self.transport = transport

    async def ready(self) -> None:
        self.transport.asked += 1
        if self.transport.asked == 2:
            self.transport.both_asked.set()
        await self.transport.joined.wait()

    async def stop(self, grace: float) -> None:
        await self.inner.stop(grace)


class _JoiningTransport(MemoryTransport):
    def __init__(self, joined: asyncio.Event) -> None:
        super().__init__(MemoryBroker())
        self.joined = joined
        self.asked = 0
        self.both_asked = asyncio.Event()

    async def subscribe(self, source: Any, handler: Any, *, concurrency: int) -> Any:
        return _JoiningConsumer(await super().subscribe(source, handler, concurrency=concurrency), self)


async def test_start_returns_only_when_every_consumer_is_ready() -> None:
    """Bug caught: start() returning while a Kafka group is still joining, so a script that
    publishes right after start and stops soon sees nothing handled (issue 15). Both
    subscriptions are made before waiting (joins run in parallel, not one after another)."""
    joined = asyncio.Event()
    transport = _JoiningTransport(joined)
    bus = Bus(transport, service="ready")
    bus.consume("ready.a")(_noop)
    bus.consume("ready.b")(_noop)
    starting = asyncio.ensure_future(bus.start())
    await asyncio.wait_for(transport.both_asked.wait(), 5)  # both asked before either is ready
    assert not starting.done(), "start() returned before the consumers were ready"
    joined.set()
    await asyncio.wait_for(starting, 5)
    await bus.stop()


async def test_start_gives_up_waiting_after_ready_timeout_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    """Bug caught: start() hanging forever on a group that never finishes joining, or
    returning silently (the warning names the subscriptions still joining)."""
    bus = Bus(_JoiningTransport(asyncio.Event()), service="ready", ready_timeout=0.05)
    bus.consume("ready.never")(_noop)
    await asyncio.wait_for(bus.start(), 5)
    await bus.stop()
    assert any("ready.never" in r.getMessage() and "still joining" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("bad", [0, -1, True, "30"])
def test_ready_timeout_must_be_positive_seconds(bad: Any) -> None:
    """Bug caught: a ready_timeout of 0 or a string accepted, making start() never wait or
    fail later in asyncio with an unrelated error."""
    with pytest.raises(ConfigurationError, match="ready_timeout"):
        Bus(MemoryTransport(MemoryBroker()), ready_timeout=bad)


async def _noop(data: dict[str, Any]) -> None:
    return None


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "2"])
def test_concurrency_and_batch_must_be_ints_of_at_least_one(bad: object) -> None:
    """Bug caught: ``concurrency=True`` (a bool is an int) accepted as one worker, or a float
    or string count taken at registration and failing later, deep in the worker pool."""
    bus = Bus.from_url("memory://", service="svc")
    with pytest.raises(ConfigurationError, match=r"concurrency for orders \(group svc\) must be an int >= 1"):
        bus.subscribe("orders", concurrency=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"batch for orders \(group svc\) must be an int >= 1"):
        bus.subscribe("orders", batch=bad)  # type: ignore[arg-type]
