"""Settling on memory://: Nack semantics, settle-path failures, and the slow-handler warning.

The same Nack semantics run on every broker in the conformance kit; these tests pin the core
logic where it is cheapest to break and watch fail.
"""

import asyncio
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest

from messagebus import Bus, ConfigurationError, Envelope, Nack, Retry
from messagebus.testing import Collector, wait_idle

BusFactory = Callable[..., Bus]

FAST = Retry(max_attempts=2, initial_delay=0.0, max_delay=0.0, jitter=0.0)


class Unprintable(Exception):
    """An exception whose ``str()`` raises, as some library exceptions do."""

    def __str__(self) -> str:
        raise RuntimeError("cannot render")


async def test_nack_then_one_failure_is_not_dead_lettered(bus_factory: BusFactory) -> None:
    """Bug caught: a Nack counted as a failure, so Nack + one error exhausted max_attempts=2."""
    done: Collector[int] = Collector(10)
    dead: Collector[str] = Collector(10)
    bus = bus_factory("svc", retry=FAST)

    @bus.consume("jobs")
    async def work(job: dict[str, Any], envelope: Envelope) -> None:
        if envelope.attempt == 1:
            raise Nack()
        if envelope.attempt == 2:
            raise ValueError("one real failure")
        done.add(envelope.attempt)

    @bus.consume("jobs.dlq")
    async def parked(body: bytes, envelope: Envelope) -> None:
        dead.add(envelope.headers["dlq-attempts"])

    async with bus:
        await bus.send("jobs", {"n": 1})
        assert await done.wait_for(1) == [3]
        await wait_idle(bus)
    assert dead.items == []


async def test_dead_letter_attempts_do_not_count_nacks(bus_factory: BusFactory) -> None:
    """Bug caught: dlq-attempts said 3 (every delivery) when only 2 deliveries failed."""
    dead: Collector[dict[str, str]] = Collector(10)
    last: list[int] = []
    bus = bus_factory("svc", retry=FAST)

    @bus.consume("jobs")
    async def work(job: dict[str, Any], envelope: Envelope) -> None:
        last.append(envelope.attempt)
        if envelope.attempt == 1:
            raise Nack()
        raise ValueError("fails for good")

    @bus.consume("jobs.dlq")
    async def parked(body: bytes, envelope: Envelope) -> None:
        dead.add(dict(envelope.headers))

    async with bus:
        await bus.send("jobs", {"n": 1})
        [headers] = await dead.wait_for(1)
        await wait_idle(bus)
    assert last == [1, 2, 3]
    assert headers["dlq-attempts"] == "2"
    assert "messagebus-nacks" not in headers  # bookkeeping is not part of the dead letter


async def test_nacks_alone_never_dead_letter(bus_factory: BusFactory) -> None:
    """Bug caught: ten Nacks with max_attempts=2 dead-lettered the message."""
    done: Collector[int] = Collector(10)
    dead: Collector[bytes] = Collector(10)
    bus = bus_factory("svc", retry=FAST)

    @bus.consume("jobs")
    async def work(job: dict[str, Any], envelope: Envelope) -> None:
        if envelope.attempt <= 10:
            raise Nack()
        done.add(envelope.attempt)

    @bus.consume("jobs.dlq")
    async def parked(body: bytes) -> None:
        dead.add(body)

    async with bus:
        await bus.send("jobs", {"n": 1})
        assert await done.wait_for(1) == [11]
        await wait_idle(bus)
    assert dead.items == []


async def test_endless_zero_delay_nack_does_not_starve_other_work(bus_factory: BusFactory) -> None:
    """Bug caught: one message nacked forever with delay 0 spun the event loop at 100% CPU;
    no other task ran and stop() never returned.

    A starved loop cannot notice its own starvation, so a watchdog thread does: if unrelated
    work on the loop makes no progress within 10 s, it lets the handler stop nacking (so the
    test can end) and the test fails.
    """
    others: Collector[int] = Collector(10)
    progressed = threading.Event()
    starved = threading.Event()
    bus = bus_factory("svc")

    @bus.consume("jobs")
    async def work(job: dict[str, Any]) -> None:
        if job["n"] < 0 and not starved.is_set():
            raise Nack()
        others.add(job["n"])

    def watchdog() -> None:
        if not progressed.wait(10):
            starved.set()

    async def ticker() -> None:  # unrelated work on the same loop
        for _ in range(20):
            await asyncio.sleep(0)
        progressed.set()

    async with bus:
        await bus.send("jobs", {"n": -1})
        await bus.send_many("jobs", [{"n": i} for i in range(50)])
        threading.Thread(target=watchdog, daemon=True).start()
        await ticker()
        await others.wait_for(50)
        assert not starved.is_set(), "a zero-delay Nack loop starved the event loop"
        await asyncio.wait_for(bus.stop(grace=1), timeout=10)


def test_bus_retry_must_be_a_retry_policy() -> None:
    """Bug caught: Bus(retry=5) was accepted and every failure then raised inside the settle
    path, wedging the consumer."""
    with pytest.raises(ConfigurationError, match=r"retry must be a messagebus\.Retry.*Retry\(max_attempts=5\)"):
        Bus.from_url("memory://", retry=5)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [0, -1, "60", True])
def test_slow_handler_warning_must_be_positive_seconds(value: object) -> None:
    """Bug caught: a nonsense threshold accepted silently (and a zero one warning on every message)."""
    with pytest.raises(ConfigurationError, match="slow_handler_warning"):
        Bus.from_url("memory://", slow_handler_warning=value)  # type: ignore[arg-type]


async def test_unprintable_exception_is_retried_then_dead_lettered(bus_factory: BusFactory) -> None:
    """Bug caught: an exception whose str() raises escaped the settle path after its retries:
    the message was never settled and the consumer's only slot stayed taken."""
    attempts: Collector[int] = Collector(10)
    after: Collector[int] = Collector(10)
    dead: Collector[dict[str, str]] = Collector(10)
    bus = bus_factory("svc", retry=FAST)

    @bus.consume("jobs")
    async def work(job: dict[str, Any], envelope: Envelope) -> None:
        if job["n"] == 0:
            attempts.add(envelope.attempt)
            raise Unprintable()
        after.add(job["n"])

    @bus.consume("jobs.dlq")
    async def parked(body: bytes, envelope: Envelope) -> None:
        dead.add(dict(envelope.headers))

    async with bus:
        await bus.send("jobs", {"n": 0})
        [headers] = await dead.wait_for(1)
        await bus.send_many("jobs", [{"n": i} for i in range(1, 11)])
        await after.wait_for(10)  # the consumer is not wedged
        await wait_idle(bus)
    assert attempts.items == [1, 2]
    assert headers["dlq-error-type"].endswith("Unprintable")
    assert "str() raised" in headers["dlq-error-message"]


async def test_a_settle_path_that_raises_does_not_wedge_the_consumer(
    bus_factory: BusFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Bug caught: an unexpected exception while settling left the delivery unsettled, so a
    concurrency-1 consumer took no further message."""

    class BrokenRetry(Retry):
        def should_retry(self, error: BaseException, attempt: int) -> bool:
            if attempt == 1:
                raise RuntimeError("policy bug")
            return False

    done: Collector[int] = Collector(10)
    bus = bus_factory("svc", retry=BrokenRetry(max_attempts=3, initial_delay=0.0, jitter=0.0))
    failed_once: set[int] = set()

    @bus.consume("jobs")
    async def work(job: dict[str, Any]) -> None:
        if job["n"] == 0 and 0 not in failed_once:
            failed_once.add(0)
            raise ValueError("first try fails")
        done.add(job["n"])

    async with bus:
        await bus.send("jobs", {"n": 0})
        await bus.send_many("jobs", [{"n": i} for i in range(1, 6)])
        # Message 0 is handed back and handled on its redelivery; the others are not blocked.
        assert sorted(await done.wait_for(6)) == [0, 1, 2, 3, 4, 5]
    assert any("settling a failed message raised" in r.getMessage() for r in caplog.records)


class SlowWarnings(logging.Handler):
    """Collects the slow-handler warnings of the ``messagebus`` logger; ``seen`` is set on the first."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []
        self.seen = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if "still running" in record.getMessage():
            self.records.append(record)
            self.seen.set()


@pytest.fixture
def slow_warnings() -> Iterator[SlowWarnings]:
    catch = SlowWarnings()
    logger = logging.getLogger("messagebus")
    logger.addHandler(catch)
    yield catch
    logger.removeHandler(catch)


async def test_slow_handler_is_logged_with_its_message(bus_factory: BusFactory, slow_warnings: SlowWarnings) -> None:
    """Bug caught: a handler hanging for ever was silent."""
    started: Collector[str] = Collector(10)
    bus = bus_factory("svc", slow_handler_warning=0.05)

    @bus.subscribe("orders")
    async def slow(order: dict[str, Any], envelope: Envelope) -> None:
        started.add(envelope.id)
        await asyncio.wait_for(slow_warnings.seen.wait(), timeout=10)  # runs until the warning came

    async with bus:
        await bus.publish("orders", {"n": 1})
        [message_id] = await started.wait_for(1)
        await asyncio.wait_for(slow_warnings.seen.wait(), timeout=10)
        await wait_idle(bus)
    [record] = slow_warnings.records
    text = record.getMessage()
    assert "orders" in text and "svc" in text and message_id in text
    assert record.messaging_message_id == message_id  # type: ignore[attr-defined]


async def test_fast_handlers_are_not_logged_as_slow(bus_factory: BusFactory, slow_warnings: SlowWarnings) -> None:
    """Bug caught: the watchdog warned about handlers that had already returned."""
    done: Collector[int] = Collector(10)
    bus = bus_factory("svc", slow_handler_warning=0.01)
    gate = asyncio.Event()

    @bus.consume("jobs", concurrency=2)
    async def work(job: dict[str, Any]) -> None:
        if job["n"] == 0:
            await asyncio.wait_for(gate.wait(), timeout=10)  # keeps the watchdog armed
        done.add(job["n"])

    async with bus:
        await bus.send_many("jobs", [{"n": i} for i in range(20)])
        await done.wait_for(19)
        await asyncio.wait_for(slow_warnings.seen.wait(), timeout=10)  # the one slow handler
        gate.set()
        await done.wait_for(20)
    assert len(slow_warnings.records) == 1, [r.getMessage() for r in slow_warnings.records]


async def test_dead_letter_copies_go_through_the_publish_middleware(bus_factory: BusFactory) -> None:
    """Bug caught: dead-letter copies were published straight to the transport, so publish
    middleware (and the send span and metric of the default telemetry) never saw them."""
    from messagebus import OutgoingMessage, PublishFn

    seen: list[str] = []

    def record(inner: PublishFn) -> PublishFn:
        async def publish(messages: Sequence[OutgoingMessage]) -> None:
            seen.extend(m.destination.name for m in messages)
            await inner(messages)

        return publish

    dead: Collector[bytes] = Collector(10)
    bus = bus_factory("svc", retry=FAST, publish_middleware=[record])

    @bus.consume("jobs")
    async def work(job: dict[str, Any]) -> None:
        raise ValueError("fails for good")

    @bus.consume("jobs.dlq")
    async def parked(body: bytes) -> None:
        dead.add(body)

    async with bus:
        await bus.send("jobs", {"n": 1})
        await dead.wait_for(1)
    assert seen == ["jobs", "jobs.dlq"]
