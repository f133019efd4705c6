"""The dead-letter tools' own rules (docs/operating.md), on memory://. What every broker must
show is in the kit (messagebus/testing/_dead_letters_kit.py); the commands in test_cli_ops.py."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from messagebus import (
    Bus,
    ConfigurationError,
    Envelope,
    LifecycleError,
    PublishError,
    Reject,
    Retry,
    UnsupportedFeature,
)
from messagebus._headers import DLQ_DESTINATION, DLQ_GROUP, DLQ_REPLAYED
from messagebus._ops_cli import render
from messagebus.transports import Destination, DestinationKind, OutgoingMessage
from messagebus.transports.memory import MemoryBroker, MemoryTransport


def _broker() -> MemoryBroker:
    return MemoryBroker.named(f"dlq-{uuid.uuid4().hex[:8]}")


async def test_a_dead_letter_whose_headers_name_another_source_is_left_in_place() -> None:
    """Bug caught: a replay that follows spoofed or foreign dlq-* headers into a group whose
    dead-letter queue this is not (anyone who can write to a DLQ could then feed any group)."""
    broker = _broker()
    bus = Bus(MemoryTransport(broker), service="ops")
    async with bus:
        dlq = Destination(DestinationKind.QUEUE, "orders.created.billing.dlq")
        spoofed = {DLQ_DESTINATION: "payments.refund", DLQ_GROUP: "billing", "ce-id": "x1"}
        foreign = {"ce-id": "x2"}
        await bus.transport.publish([OutgoingMessage(dlq, b"{}", spoofed), OutgoingMessage(dlq, b"{}", foreign)])
        assert await bus.replay_dead_letters(dlq.name) == 0
        assert broker.pending("payments.refund", "billing") == 0
        assert {e.id for e in await bus.peek_dead_letters(dlq.name)} == {"x1", "x2"}


async def test_replay_reaches_a_group_that_is_not_running_and_a_second_failure_keeps_dlq_replayed() -> None:
    """Bug caught: a replay lost because its group was stopped at the time, and a replayed
    message that fails again losing the record that it was replayed once."""
    broker = _broker()
    topic = "orders.created"
    failures: list[Envelope] = []

    def service() -> Bus:
        bus = Bus(MemoryTransport(broker), service="billing", retry=Retry(max_attempts=1))

        @bus.subscribe(topic, group="billing")
        async def bill(order: dict[str, Any], envelope: Envelope) -> None:
            failures.append(envelope)
            raise Reject("still broken")

        return bus

    async with service() as bus:
        await bus.publish(topic, {"n": 1})
        await broker.wait_idle()
        assert broker.pending("orders.created.billing.dlq") == 1
    ops = Bus(MemoryTransport(broker), service="ops")
    async with ops:
        assert await ops.replay_dead_letters("orders.created.billing.dlq") == 1
        assert broker.pending(topic, "billing") == 1, "the replay was not stored for the stopped group"
    async with service():
        await broker.wait_idle()
        assert broker.pending("orders.created.billing.dlq") == 1
    async with ops_bus(broker) as ops:
        [again] = await ops.peek_dead_letters("orders.created.billing.dlq")
    assert again.wire_headers[DLQ_REPLAYED], "dlq-replayed dropped by the second dead-lettering"
    assert [e.attempt for e in failures] == [1, 1]


def ops_bus(broker: MemoryBroker) -> Bus:
    return Bus(MemoryTransport(broker), service="ops")


async def test_bad_names_limits_and_states_are_refused_at_the_edge() -> None:
    """Bug caught: a typo replaying or purging a live queue, a limit of 0 or -1 taken as
    'all', and dead-letter calls on a bus that is not running reaching the transport."""
    bus = ops_bus(_broker())
    with pytest.raises(LifecycleError, match="start"):
        await bus.peek_dead_letters("a.dlq")
    async with bus:
        for call in (bus.peek_dead_letters, bus.replay_dead_letters, bus.purge_dead_letters):
            with pytest.raises(ConfigurationError, match=r"ending in '\.dlq'"):
                await call("orders.created.billing")
        for limit in (0, -1, True, "3"):
            with pytest.raises(ConfigurationError, match="limit"):
                await bus.peek_dead_letters("a.dlq", limit)  # type: ignore[arg-type]
        with pytest.raises(ConfigurationError, match="wait"):
            await bus.purge_dead_letters("a.dlq", wait=0)


class _NoAdmin:
    """A transport that only moves messages (no BrokerAdmin)."""

    def __init__(self, inner: MemoryTransport) -> None:
        self._inner = inner
        self.capabilities = inner.capabilities
        self.messaging_system = inner.messaging_system
        self.connect = inner.connect
        self.close = inner.close
        self.publish = inner.publish
        self.subscribe = inner.subscribe


async def test_a_transport_without_broker_admin_gets_a_clear_error() -> None:
    """Bug caught: an AttributeError from deep inside when a third-party transport has no
    BrokerAdmin, instead of an error naming what it lacks."""
    async with Bus(_NoAdmin(MemoryTransport(_broker())), service="ops") as bus:  # type: ignore[arg-type]
        with pytest.raises(UnsupportedFeature, match="BrokerAdmin"):
            await bus.dead_letter_queues()


def test_show_cuts_long_bodies_unless_full_and_escapes_control_characters() -> None:
    """Bug caught: a 10 MB dead letter flooding the terminal, and a payload's escape sequence
    written raw to it."""
    body = ("x" * 10_000).encode()
    envelope = Envelope(body, {"ce-id": "1", "ce-type": "t", "note": "\x1b]0;owned\x07"}, "q.dlq", None, None, 1)
    short = render(envelope)
    assert "10000 bytes in all; --full shows everything" in short and len(short) < 5_000
    assert "x" * 10_000 in render(envelope, full=True)
    assert "\x1b" not in short and "\x07" not in short and "\\x1b]0;owned\\x07" in short


class _FailingReplay(MemoryTransport):
    """Refuses the third replay, like a broker that did not confirm it."""

    replays = 0

    async def publish_to_group(self, source: Destination, messages: Any) -> None:
        self.replays += 1
        if self.replays == 3:
            raise PublishError("not confirmed (test)")
        await super().publish_to_group(source, messages)


async def test_a_replay_that_is_not_confirmed_keeps_its_dead_letter() -> None:
    """Bug caught: a dead letter removed before (or although) its replay was confirmed: the
    one whose replay failed, and those not reached yet, must still be in the queue."""
    broker = _broker()
    queue = "jobs"
    failing = Bus(MemoryTransport(broker), service="w", retry=Retry(max_attempts=1))

    @failing.consume(queue)
    async def refuse(job: dict[str, Any]) -> None:
        raise Reject("no")

    async with failing:
        for n in range(5):
            await failing.send(queue, {"n": n})
        await broker.wait_idle()
        assert broker.pending("jobs.dlq") == 5
    async with Bus(_FailingReplay(broker), service="ops") as ops:
        with pytest.raises(PublishError, match="not confirmed"):
            await ops.replay_dead_letters("jobs.dlq")
        replayed = broker.pending(queue)
        kept = len(await ops.peek_dead_letters("jobs.dlq"))
    assert kept == 5 - replayed, f"{replayed} replayed but {kept} kept of 5: dead letters lost"
    assert replayed == 2
