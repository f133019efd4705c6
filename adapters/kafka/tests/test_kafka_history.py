"""History on Kafka: a new group positioned at ``start_from`` on every partition, depth of a
history group, an existing group left where it is, and start times Tansu answers oddly."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from messagebus_kafka import KafkaTransport
from test_kafka_admin import eventually
from test_kafka_transport import TIMEOUT, Collector, msg, topic

from messagebus import Bus, ConfigurationError
from messagebus.transports import Destination

PARTITIONS = 3  # the adapter's default: every test spreads its records over all of them


async def publish(transport: KafkaTransport, name: str, bodies: list[str]) -> None:
    # Keys k0..k5 land on every one of the 3 partitions (checked by each test's partition count).
    await transport.publish([msg(topic(name), b.encode(), key=f"k{i % 6}") for i, b in enumerate(bodies)])


async def consume(transport: KafkaTransport, source: Destination, got: Collector, expected: int) -> None:
    consumer = await transport.subscribe(source, got, concurrency=4)
    try:
        await asyncio.wait_for(consumer.ready(), TIMEOUT)
        await got.wait_for(lambda: len(got.items) >= expected)
    finally:
        await consumer.stop(5)


def partitions_of(got: Collector) -> set[int]:
    return {d.native.partition for d in got.items}


def assert_exactly(got: Collector, expected: list[str]) -> None:
    bodies = [b.decode() for b in got.bodies]
    lost, unexpected = sorted(set(expected) - set(bodies)), sorted(set(bodies) - set(expected))
    duplicated = sorted(b for b in set(bodies) if bodies.count(b) > 1)
    assert not (lost or unexpected or duplicated), f"lost {lost}, unexpected {unexpected}, duplicated {duplicated}"


async def test_earliest_reads_every_partition_from_its_start_and_depth_counts_it(
    transport: KafkaTransport, unique: str
) -> None:
    """Bug caught: an "earliest" group that starts at the end (or on only some partitions),
    misses what is published after subscribe returns, or whose depth is 0 before its first
    commit (Bus.replay would end before reading anything)."""
    history = [f"h{i}" for i in range(12)]
    await publish(transport, unique, history)
    source = replace(topic(unique, "rebuild"), start_from="earliest")
    assert await transport.depth(source) == len(history)
    assert await transport.depth(topic(unique, "rebuild")) == 0  # a latest group: no history
    got = Collector()
    consumer = await transport.subscribe(source, got, concurrency=4)
    try:
        await publish(transport, unique, ["live"])
        await got.wait_for(lambda: len(got.items) >= len(history) + 1)
        await publish(transport, unique, ["last"])  # whatever came twice has arrived by then
        await got.wait_for(lambda: b"last" in got.bodies)
        await eventually(lambda: _depth_is(transport, source, 0))
    finally:
        await consumer.stop(5)
    assert_exactly(got, [*history, "live", "last"])
    assert partitions_of(got) == set(range(PARTITIONS))


async def _depth_is(transport: KafkaTransport, source: Destination, n: int) -> bool:
    return await transport.depth(source) == n


async def test_a_time_seeks_every_partition_to_its_first_record_at_or_after_it(
    transport: KafkaTransport, unique: str
) -> None:
    """Bug caught: a start time applied to one partition only, rounded to the wrong unit
    (seconds for milliseconds), or ignored: the group gets exactly the records stamped at or
    after it, on every partition, then what is published after subscribe."""
    before, after = [f"b{i}" for i in range(6)], [f"a{i}" for i in range(6)]
    await publish(transport, unique, before)
    # The producer stamps records with this machine's clock in whole milliseconds: a cut on the
    # next millisecond boundary is after every record so far and at or before every next one.
    cut_ms = int(time.time() * 1000) + 1
    while time.time() * 1000 < cut_ms:  # noqa: ASYNC110 (waits for the clock, at most 1 ms)
        await asyncio.sleep(0.001)
    await publish(transport, unique, after)
    since = Collector()
    cut = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=cut_ms)
    consumer = await transport.subscribe(replace(topic(unique, "since"), start_from=cut), since, concurrency=4)
    try:
        await since.wait_for(lambda: len(since.items) >= len(after))
        await publish(transport, unique, ["last"])
        await since.wait_for(lambda: b"last" in since.bodies)
    finally:
        await consumer.stop(5)
    assert_exactly(since, [*after, "last"])
    assert partitions_of(since) == set(range(PARTITIONS))


async def test_a_time_after_every_record_starts_at_the_end(transport: KafkaTransport, unique: str) -> None:
    """Bug caught: a start time with no record at or after it read as offset 0 (Tansu answers
    it with offset 0 and timestamp -1): the group would get the whole history instead of
    what is published from now on, and its depth would not fall to 0 once it joined."""
    await publish(transport, unique, [f"h{i}" for i in range(6)])
    source = replace(topic(unique, "future"), start_from=datetime.now(UTC) + timedelta(days=1))
    assert await transport.depth(source) == 6  # before its first commit: an upper bound
    got = Collector()
    consumer = await transport.subscribe(source, got, concurrency=4)
    try:
        await asyncio.wait_for(consumer.ready(), TIMEOUT)
        assert await transport.depth(source) == 0  # it committed its start, the end, on joining
        await publish(transport, unique, [f"n{i}" for i in range(6)])
        await got.wait_for(lambda: len(got.items) >= 6)
        await publish(transport, unique, ["last"])
        await got.wait_for(lambda: b"last" in got.bodies)
    finally:
        await consumer.stop(5)
    assert_exactly(got, [*(f"n{i}" for i in range(6)), "last"])


async def test_a_group_with_commits_ignores_start_from_and_says_so_once(
    transport: KafkaTransport, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Bug caught: start_from applied to a group that has committed offsets (rewound: every
    record handled again), on some partitions only, or ignored without the log line (or
    with one per partition)."""
    await publish(transport, unique, [f"old{i}" for i in range(6)])
    got = Collector()
    consumer = await transport.subscribe(topic(unique, "g"), got, concurrency=4)
    await asyncio.wait_for(consumer.ready(), TIMEOUT)
    await publish(transport, unique, [f"m{i}" for i in range(6)])
    await got.wait_for(lambda: len(got.items) >= 6)
    await consumer.stop(5)
    await publish(transport, unique, [f"w{i}" for i in range(6)])  # its backlog while stopped
    with caplog.at_level(logging.INFO, logger="messagebus"):
        await consume(transport, replace(topic(unique, "g"), start_from="earliest"), got, 12)
        await publish(transport, unique, ["last"])
        await consume(transport, replace(topic(unique, "g"), start_from="earliest"), got, 13)
    assert_exactly(got, [*(f"m{i}" for i in range(6)), *(f"w{i}" for i in range(6)), "last"])
    ignored = [r for r in caplog.records if "start_from=earliest ignored" in r.getMessage()]
    assert len(ignored) == 2, [r.getMessage() for r in ignored]  # once per subscribe


@pytest.mark.parametrize(
    ("start_from", "says"),
    [
        (datetime(2026, 1, 1), "naive datetime"),
        ("yesterday", "'latest', 'earliest' or a timezone-aware datetime"),
        (0, "'latest', 'earliest' or a timezone-aware datetime"),
    ],
)
def test_bad_start_from_is_refused_at_registration(kafka_url: str, start_from: object, says: str) -> None:
    """Bug caught: a Kafka bus taking a start it cannot mean (a naive time: whose clock?; a
    string or a number) and starting the group somewhere else instead of saying so."""
    bus = Bus.from_url(kafka_url, service="svc")
    with pytest.raises(ConfigurationError, match="start_from") as raised:
        bus.subscribe("orders", start_from=start_from)(_noop)  # type: ignore[arg-type]
    assert says in str(raised.value)


async def _noop(item: dict[str, int]) -> None:
    pass
