"""Structured logging: every record about a message names it, and never holds its payload."""

import logging
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import BaseModel

from messagebus import Bus, Envelope, Retry
from messagebus.testing import Collector, wait_idle

BusFactory = Callable[..., Bus]

SECRET = "4111-1111-1111-1111"
FIELDS = ("messaging_message_id", "messaging_destination", "messaging_group", "messaging_attempt")


class Card(BaseModel):
    number: str
    amount: int


def rendered(record: logging.LogRecord) -> str:
    """The record as a handler would write it, traceback included."""
    return logging.Formatter("%(message)s").format(record)


async def test_records_about_a_message_carry_its_fields_and_no_payload(
    bus_factory: BusFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="messagebus")
    seen: Collector[Envelope] = Collector(10)
    dead: Collector[str] = Collector(10)
    consumer = bus_factory("billing", retry=Retry(max_attempts=2, initial_delay=0.0, jitter=0.0))

    @consumer.subscribe("payments")
    async def charge(card: Card, envelope: Envelope) -> None:
        seen.add(envelope)
        raise RuntimeError("gateway unavailable")

    @consumer.consume("payments.billing.dlq")
    async def parked(body: bytes, envelope: Envelope) -> None:
        dead.add(envelope.headers["dlq-error-type"])

    producer = bus_factory("shop")
    async with consumer, producer:
        await producer.publish("payments", Card(number=SECRET, amount=1), headers={"x-tenant": "t1"})
        # undecodable for Card: dead-lettered at once, with a DecodeError logged
        await producer.publish("payments", {"number": SECRET, "amount": "not a number"})
        await dead.wait_for(2)
        await wait_idle(producer)

    # Records about the bus itself (its stop line) name the Bus, not a message.
    records = [r for r in caplog.records if r.name.startswith("messagebus") and not r.getMessage().startswith("Bus(")]
    assert len(records) >= 3, [r.getMessage() for r in records]  # a retry warning and two dead-letter errors
    ids = {e.id for e in seen.items}
    for record in records:
        for field in FIELDS:
            assert hasattr(record, field), f"{field} missing from {record.getMessage()!r}"
        assert record.messaging_destination == "payments"
        assert record.messaging_group == "billing"
        assert record.messaging_message_id
        assert SECRET not in rendered(record), f"payload leaked into the log: {rendered(record)!r}"
        # Catches 'messagebus: messagebus: ...' under a '%(name)s: %(message)s' format: the
        # logger name already says where a record comes from.
        assert not record.getMessage().startswith("messagebus"), record.getMessage()
    retry = [r for r in records if r.levelno == logging.WARNING]
    assert [r.messaging_attempt for r in retry] == [1]
    assert retry[0].messaging_message_id in ids
    dead_letters = sorted((r for r in records if r.levelno == logging.ERROR), key=lambda r: r.messaging_attempt)
    assert [r.messaging_attempt for r in dead_letters] == [1, 2]
    assert sorted(dead.items) == sorted(["builtins.RuntimeError", _decode_error_type()])


def _decode_error_type() -> str:
    from messagebus import DecodeError
    from messagebus._dead_letter import error_type_name

    return error_type_name(DecodeError("x"))


async def test_log_fields_are_usable_by_a_structured_formatter(
    bus_factory: BusFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="messagebus")
    got: Collector[Envelope] = Collector(10)
    consumer = bus_factory("worker", retry=Retry(max_attempts=2, initial_delay=0.0, jitter=0.0))

    @consumer.consume("jobs")
    async def work(job: dict[str, Any], envelope: Envelope) -> None:
        if envelope.attempt == 1:
            raise ValueError("try again")
        got.add(envelope)

    async with consumer:
        await consumer.send("jobs", {"token": SECRET})
        [envelope] = await got.wait_for(1)
        await wait_idle(consumer)

    [record] = [r for r in caplog.records if r.name.startswith("messagebus")]
    structured = {field: getattr(record, field) for field in FIELDS}
    assert structured == {
        "messaging_message_id": envelope.id,
        "messaging_destination": "jobs",
        "messaging_group": None,
        "messaging_attempt": 1,
    }
    assert SECRET not in rendered(record)


async def test_a_failing_settle_callback_is_logged_with_the_message_fields(
    bus_factory: BusFactory, caplog: pytest.LogCaptureFixture
) -> None:
    from messagebus import Handler
    from messagebus._settle import Settlement, on_settled

    caplog.set_level(logging.ERROR, logger="messagebus")
    got: Collector[Envelope] = Collector(10)

    def broken_observer(handler: Handler) -> Handler:
        async def observed(envelope: Envelope) -> None:
            def callback(settlement: Settlement) -> None:
                raise RuntimeError("observer bug")

            assert on_settled(envelope, callback)
            await handler(envelope)

        return observed

    consumer = bus_factory("worker", middleware=[broken_observer])

    @consumer.consume("jobs")
    async def work(job: dict[str, Any], envelope: Envelope) -> None:
        got.add(envelope)

    async with consumer:
        await consumer.send("jobs", {"token": SECRET})
        [envelope] = await got.wait_for(1)
        await wait_idle(consumer)

    [record] = [r for r in caplog.records if r.name.startswith("messagebus")]
    assert "settle callback failed" in record.getMessage()
    assert record.messaging_message_id == envelope.id
    assert record.messaging_destination == "jobs"
    assert SECRET not in rendered(record)


async def test_stop_logs_one_info_line_with_finished_and_cancelled_handler_calls(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Bug caught (issue 18): a stop that says nothing about the work it cut short: the INFO
    line must count the handler calls that finished within the grace and those cancelled."""
    import asyncio

    from messagebus.transports.memory import MemoryBroker, MemoryTransport

    caplog.set_level(logging.INFO, logger="messagebus")
    bus = Bus(MemoryTransport(MemoryBroker.named("stop-log")), service="stopper")
    started: Collector[int] = Collector(5.0)
    gate = asyncio.Event()

    @bus.consume("stop-log-jobs", concurrency=3)
    async def work(job: dict[str, Any]) -> None:
        started.add(job["n"])
        if job["n"] == 0:
            await asyncio.Event().wait()  # never finishes: cancelled by the grace timeout
        await gate.wait()

    async with bus:
        for n in range(3):
            await bus.send("stop-log-jobs", {"n": n})
        await started.wait_for(3)
        # The quick calls finish once their consumer is stopping, inside the grace.
        stopping: asyncio.Event = bus._consumers[0].stopping  # type: ignore[attr-defined]

        async def open_gate() -> None:
            await stopping.wait()
            gate.set()

        opener = asyncio.create_task(open_gate())
        await bus.stop(grace=0.2)
        await opener
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO and "stopped" in r.getMessage()]
    assert len(lines) == 1, lines
    assert "of 3 handler call(s) running at stop, 2 finished within the 0.2s grace and 1 were cancelled" in lines[0]
