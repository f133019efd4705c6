"""History in the Bus-level kit: a new group started from the earliest retained message or
from a time, live groups untouched, ``start_from`` ignored for a group that exists, and
:class:`~messagebus.UnsupportedFeature` where the transport keeps no history.

Mixed into :class:`~messagebus.testing.conformance.TransportConformance`. History tests use
:attr:`ConformanceTarget.history_url` (a broker's history opt-in: RabbitMQ streams, Pub/Sub
topic retention). Each test waits on events with the target's timeout; none measures speed.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from .. import Bus, Envelope, UnsupportedFeature
from ._collect import Collector
from ._target import ConformanceTarget

__all__ = ["HistoryTests"]

BusFactory = Callable[..., Bus]


def _name(prefix: str) -> str:
    return f"conf.{prefix}.{uuid.uuid4().hex[:10]}"


def _history(target: ConformanceTarget) -> str:
    url = target.history_url or target.url
    capabilities = target.make_transport(url).capabilities
    if not capabilities.history:
        pytest.skip(f"no history: {capabilities.history_reason}")
    return url


def _recorder(into: Collector[tuple[int, str]]) -> Callable[..., Any]:
    async def handle(event: dict[str, Any], envelope: Envelope) -> None:
        into.add((int(event["n"]), envelope.id))

    return handle


def _assert_exactly(got: Collector[tuple[int, str]], expected: list[int], what: str) -> None:
    numbers = [n for n, _ in got.items]
    lost = sorted(set(expected) - set(numbers))
    unexpected = sorted(set(numbers) - set(expected))
    duplicated = sorted(n for n in set(numbers) if numbers.count(n) > 1)
    assert not (lost or unexpected or duplicated), (
        f"{what}: lost {lost}, unexpected {unexpected}, duplicated {duplicated}"
    )


def _producer_and_live_group(
    buses: BusFactory, url: str, topic: str, timeout: float
) -> tuple[Bus, Bus, Collector[tuple[int, str]]]:
    """A producer, and a bus with the group ``live`` on ``topic`` recording what it gets (a
    group that exists all along: the history must never be handed to it again)."""
    live: Collector[tuple[int, str]] = Collector(timeout)
    first = buses("live", url=url)
    first.subscribe(topic, group="live")(_recorder(live))
    return buses("producer", url=url), first, live


async def _publish(bus: Bus, topic: str, numbers: range) -> None:
    # One key: the transports that keep order keep it for history too (a projection needs it).
    await bus.publish_many(topic, [{"n": n} for n in numbers], key="history")


class HistoryTests:
    """``subscribe(..., start_from=...)`` on the target's broker."""

    async def test_history_earliest_replays_retained_messages_to_a_new_group_only(
        self, target: ConformanceTarget, buses: BusFactory
    ) -> None:
        """Bug caught: a new group with start_from="earliest" that starts at the latest
        message (history lost), gets a retained message twice or out of order, misses what is
        published after it started, or a live group that is handed the history again."""
        url = _history(target)
        topic = _name("hist")
        n = target.count(20)
        rebuilt: Collector[tuple[int, str]] = Collector(target.timeout)
        producer, first, live = _producer_and_live_group(buses, url, topic, target.timeout)
        async with producer, first:
            await _publish(producer, topic, range(n))
            await live.wait_for(n)
            late = buses("rebuild", url=url)
            late.subscribe(topic, group="rebuild", start_from="earliest")(_recorder(rebuilt))
            async with late:
                await rebuilt.wait_for(n)
                await _publish(producer, topic, range(n, n + 5))
                await rebuilt.wait_for(n + 5)
                await live.wait_for(n + 5)
                # A last message each group must see: whatever came twice has arrived by then.
                await _publish(producer, topic, range(n + 5, n + 6))
                await rebuilt.wait_for(n + 6)
                await live.wait_for(n + 6)
        _assert_exactly(rebuilt, list(range(n + 6)), "the new group from earliest")
        _assert_exactly(live, list(range(n + 6)), "the live group")
        if target.make_transport(url).capabilities.ordering:
            numbers = [k for k, _ in rebuilt.items]
            assert numbers == sorted(numbers), f"history out of publish order: {numbers}"

    async def test_history_from_a_time_starts_at_that_time(self, target: ConformanceTarget, buses: BusFactory) -> None:
        """Bug caught: a start time ignored (the group gets everything or only what comes
        after it started) or cut at the wrong message: only messages published at or after
        the time reach the new group, each once."""
        url = _history(target)
        topic = _name("histtime")
        before, after = range(10), range(10, 20)
        since: Collector[tuple[int, str]] = Collector(target.timeout)
        producer, first, live = _producer_and_live_group(buses, url, topic, target.timeout)
        async with producer, first:
            await _publish(producer, topic, before)
            await live.wait_for(len(before))
            cut = datetime.now(UTC)
            await _publish(producer, topic, after)
            await live.wait_for(len(before) + len(after))
            late = buses("since", url=url)
            late.subscribe(topic, group="since", start_from=cut)(_recorder(since))
            async with late:
                await since.wait_for(len(after))
                await _publish(producer, topic, range(20, 21))
                await since.wait_for(len(after) + 1)
        _assert_exactly(since, list(range(10, 21)), f"the group started at {cut.isoformat()}")

    async def test_history_start_is_ignored_for_a_group_that_exists(
        self, target: ConformanceTarget, buses: BusFactory, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Bug caught: start_from applied to a group that already exists (its consumers
        rewound: everything handled again), or ignored silently (no log line saying so)."""
        url = _history(target)
        topic = _name("histexists")
        got: Collector[tuple[int, str]] = Collector(target.timeout)
        producer, first, live = _producer_and_live_group(buses, url, topic, target.timeout)
        async with producer, first:
            await _publish(producer, topic, range(5))  # before the group exists: never its own
            await live.wait_for(5)
            made = buses("made", url=url)
            made.subscribe(topic, group="existing")(_recorder(got))
            async with made:
                await _publish(producer, topic, range(5, 8))
                await got.wait_for(3)
            await _publish(producer, topic, range(8, 10))  # while it is stopped: its backlog
            again = buses("again", url=url)
            again.subscribe(topic, group="existing", start_from="earliest")(_recorder(got))
            with caplog.at_level(logging.INFO, logger="messagebus"):
                async with again:
                    await got.wait_for(5)
                    await _publish(producer, topic, range(10, 11))
                    await got.wait_for(6)
        _assert_exactly(got, list(range(5, 11)), "an existing group given start_from='earliest'")
        assert "start_from=earliest ignored" in caplog.text, "no log line said start_from was ignored"

    async def test_history_unsupported_says_why_at_registration(
        self, target: ConformanceTarget, buses: BusFactory
    ) -> None:
        """Bug caught: a transport without history that accepts start_from and silently
        starts at the latest message (the caller believes it rebuilt from history). Checked
        on the target's plain URL (without a history opt-in)."""
        if target.capabilities.history:
            pytest.skip("the transport keeps history without an opt-in")
        bus = buses("svc")
        with pytest.raises(UnsupportedFeature) as raised:
            bus.subscribe(_name("nohist"), start_from="earliest")(_recorder(Collector()))
        assert target.capabilities.history_reason in str(raised.value)
        assert "start_from='latest'" in str(raised.value)
        bus.subscribe(_name("nohist"), start_from="latest")(_recorder(Collector()))

    async def test_history_replay_helper_rebuilds_without_touching_live_groups(
        self, target: ConformanceTarget, buses: BusFactory
    ) -> None:
        """Bug caught: Bus.replay that misses or repeats a retained message, returns before
        it has read what was retained when it began, hands anything to a live group, or
        leaves its throwaway group behind (the broker keeps feeding it)."""
        url = _history(target)
        topic = _name("histreplay")
        n = target.count(20)
        seen: list[int] = []
        producer, first, live = _producer_and_live_group(buses, url, topic, target.timeout)

        async def project(event: dict[str, Any]) -> None:
            seen.append(int(event["n"]))

        async with producer, first:
            await _publish(producer, topic, range(n))
            await live.wait_for(n)
            replayer = buses("replayer", url=url)
            async with replayer:
                count = await asyncio.wait_for(replayer.replay(topic, project), target.timeout * 2)
            assert count == n and sorted(seen) == list(range(n)), f"replayed {count}: {sorted(seen)}"
            await _publish(producer, topic, range(n, n + 1))
            await live.wait_for(n + 1)
        _assert_exactly(live, list(range(n + 1)), "the live group during a replay")
