"""History's own rules (docs/history.md) on memory://: the start argument, the exact cut by
time, memory's retained log, and ``Bus.replay``. What every broker must show is in the kit
(messagebus/testing/_history_kit.py)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from messagebus import Bus, ConfigurationError, Envelope, InvalidOption, TransportURL, UnsupportedFeature
from messagebus._clock import ManualClock
from messagebus._headers import CE_ID, CE_TIME
from messagebus._history import parse_position, position
from messagebus.testing import Collector
from messagebus.transports import Destination, DestinationKind, OutgoingMessage
from messagebus.transports.memory import MemoryBroker, MemoryTransport


def _broker() -> MemoryBroker:
    return MemoryBroker.named(f"hist-{uuid.uuid4().hex[:8]}")


def test_start_from_accepts_latest_earliest_and_aware_times_only() -> None:
    """Bug caught: a naive datetime read in the local zone (a start hours off), or a typo
    like 'earlist' taken as latest, instead of a clear error naming what is allowed."""
    assert position("latest", "t") is None
    assert position("earliest", "t") == "earliest"
    at = datetime(2026, 1, 1, 12, tzinfo=UTC)
    assert position(at.astimezone(timezone_plus_two()), "t") == at
    with pytest.raises(ConfigurationError, match="naive datetime"):
        position(datetime(2026, 1, 1), "orders")
    with pytest.raises(ConfigurationError, match="'latest', 'earliest' or a timezone-aware datetime"):
        position("earlist", "orders")
    bus = Bus.from_url("memory://", service="svc")
    with pytest.raises(ConfigurationError, match="start_from for orders"):
        bus.subscribe("orders", start_from="yesterday")  # type: ignore[arg-type]


def timezone_plus_two() -> Any:
    from datetime import timezone

    return timezone(timedelta(hours=2))


def test_command_line_start_takes_iso_times_and_spans_back_from_now() -> None:
    """Bug caught: `messagebus replay --from 2h` or an ISO time without a zone refused or
    misread (a zone-less time must be UTC, not the machine's zone)."""
    assert parse_position("earliest") == "earliest"
    assert parse_position("latest") is None
    assert parse_position("2026-11-29T08:00:00") == datetime(2026, 11, 29, 8, tzinfo=UTC)
    assert parse_position("2026-11-29T10:00:00+02:00") == datetime(2026, 11, 29, 8, tzinfo=UTC)
    two_hours = parse_position("2h")
    assert isinstance(two_hours, datetime)
    assert abs((datetime.now(UTC) - two_hours) - timedelta(hours=2)) < timedelta(minutes=1)
    with pytest.raises(ConfigurationError, match="span back from now"):
        parse_position("two hours")


def test_one_group_gets_one_handler_whatever_its_start() -> None:
    """Bug caught: a second handler for the same group slipping past the duplicate check
    because its start_from differs (two handlers would compete for the group's messages)."""
    bus = Bus.from_url("memory://", service="svc")

    @bus.subscribe("orders", group="g")
    async def first(event: dict[str, Any]) -> None: ...

    with pytest.raises(ConfigurationError, match="already has a handler"):

        @bus.subscribe("orders", group="g", start_from="earliest")
        async def second(event: dict[str, Any]) -> None: ...


async def test_a_message_stamped_before_the_start_time_is_skipped_even_if_the_broker_hands_it_over() -> None:
    """Bug caught: a group started at a time that handles older messages because its broker
    seeks coarsely (by chunk, by second, by record time): the bus must cut by ce-time."""
    broker = _broker()
    topic = "ledger"
    cut = datetime.now(UTC)
    got: Collector[str] = Collector(10)
    producer = Bus(MemoryTransport(broker), service="producer")
    consumer = Bus(MemoryTransport(broker), service="consumer")

    @consumer.subscribe(topic, start_from=cut)
    async def handle(event: dict[str, Any], envelope: Envelope) -> None:
        got.add(envelope.id)

    dest = Destination(DestinationKind.TOPIC, topic)
    old = (cut - timedelta(seconds=5)).isoformat()
    async with producer:
        # Stored after the cut, stamped before it: what a coarse seek hands over.
        await producer.transport.publish([OutgoingMessage(dest, b"{}", {CE_ID: "old", CE_TIME: old})])
        await producer.publish(topic, {"n": 1})
        async with consumer:
            await got.wait_for(1)
            await producer.transport.publish([OutgoingMessage(dest, b"{}", {CE_ID: "new"})])
            await got.wait_for(2)
            await broker.wait_idle()
    assert "old" not in got.items and "new" in got.items and len(got.items) == 2, got.items


async def test_memory_retains_the_newest_messages_up_to_its_history_size() -> None:
    """Bug caught: an unbounded retained log (memory grows with every message ever
    published) or one that drops the newest instead of the oldest."""
    name = f"hist-{uuid.uuid4().hex[:8]}"
    got: Collector[int] = Collector(10)
    producer = Bus.from_url(f"memory://{name}?history=3", service="producer")
    late = Bus.from_url(f"memory://{name}", service="late")

    @late.subscribe("t", start_from="earliest")
    async def handle(event: dict[str, Any]) -> None:
        got.add(int(event["n"]))

    async with producer:
        await producer.publish_many("t", [{"n": n} for n in range(10)])
        async with late:
            await got.wait_for(3)
            await MemoryBroker.named(name).wait_idle()
    assert got.items == [7, 8, 9]


async def test_memory_keeps_nothing_with_history_zero_and_drops_messages_past_their_age() -> None:
    """Bug caught: history=0 still retaining (memory spent on a broker told to keep
    nothing), or history_age ignored (a new group replays messages past their age)."""
    name = f"hist-{uuid.uuid4().hex[:8]}"
    clock = ManualClock()
    broker = MemoryBroker.named(name, clock=clock)
    MemoryTransport.from_url(TransportURL.parse(f"memory://{name}?history=0"))
    transport = MemoryTransport(broker)
    await transport.connect()
    dest = Destination(DestinationKind.TOPIC, "t")
    await transport.publish([OutgoingMessage(dest, b"{}", {CE_ID: "a"})])
    assert broker.retained(Destination(DestinationKind.TOPIC, "t", "g", (), "earliest")) == []
    MemoryTransport.from_url(TransportURL.parse(f"memory://{name}?history=10&history_age=60"))
    await transport.publish([OutgoingMessage(dest, b"{}", {CE_ID: "b"})])
    clock.advance(30)
    await transport.publish([OutgoingMessage(dest, b"{}", {CE_ID: "c"})])
    clock.advance(31)
    kept = broker.retained(Destination(DestinationKind.TOPIC, "t", "g", (), "earliest"))
    assert [s.headers[CE_ID] for s in kept] == ["c"]
    with pytest.raises(InvalidOption, match="history"):
        Bus.from_url(f"memory://{name}?history=-1", service="x")


async def test_replay_runs_a_typed_handler_over_history_and_deletes_its_throwaway_group() -> None:
    """Bug caught: Bus.replay leaving its throwaway group on the broker (fed forever),
    deleting a group the caller named (the projection cannot go on live), or ending before
    the history is read."""
    broker = _broker()
    bus = Bus(MemoryTransport(broker), service="projector")
    seen: list[int] = []

    async def project(event: dict[str, Any]) -> None:
        seen.append(int(event["n"]))

    async with bus:
        await bus.publish_many("accounts", [{"n": n} for n in range(50)])
        assert await bus.replay("accounts", project) == 50
        assert seen == list(range(50))
        await bus.publish("accounts", {"n": 50})
        assert [g for g in broker._topics.get("accounts", {})] == []  # the throwaway group is gone
        assert await bus.replay("accounts", project, group="projection-v2") == 51
        await bus.publish("accounts", {"n": 51})
        assert await bus.queue_depth("accounts", "projection-v2") == 1  # kept: it goes on live


async def test_replay_refuses_latest_and_transports_without_history() -> None:
    """Bug caught: replay(start_from='latest') waiting for nothing, or a replay on a broker
    without history that silently reads only new messages."""
    bus = Bus.from_url("memory://", service="svc")
    async with bus:
        with pytest.raises(ConfigurationError, match="replay needs start_from"):
            await bus.replay("t", _ignore, start_from="latest")
    no_history = MemoryTransport(_broker())
    no_history.capabilities = type(no_history.capabilities)(history=False, history_reason="kept nothing")
    other = Bus(no_history, service="svc")
    async with other:
        with pytest.raises(UnsupportedFeature, match="kept nothing"):
            await other.replay("t", _ignore)
        with pytest.raises(UnsupportedFeature, match="start_from='latest'"):
            other.subscribe("t", start_from="earliest")(_ignore)


async def _ignore(event: dict[str, Any]) -> None:
    await asyncio.sleep(0)
