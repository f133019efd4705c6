"""The stats snapshots every bus publishes on ``messagebus.stats`` (issue 18, read by the monitor).

A "monitor" bus (stats off) subscribes to the stats topic and collects the snapshots of the
bus under test; the counts are checked in the ``stopping`` snapshot, published after the
handlers finished, so they are final. On memory:// and on RabbitMQ.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from messagebus import Bus, ConfigurationError, Envelope, Nack, OutgoingMessage, Reject, Retry, _stats
from messagebus._stats import STATS_TOPIC, STATS_TYPE
from messagebus.testing import Collector, MemoryBroker, missing_broker, wait_for_port, wait_idle
from messagebus.transports import Destination, DestinationKind, TransportURL
from messagebus.transports.memory import MemoryTransport

BusFactory = Callable[..., Bus]
Snapshot = dict[str, Any]

FAST = Retry(max_attempts=2, initial_delay=0.0, max_delay=0.0, jitter=0.0)
#: Long enough that only the start and stopping snapshots come, unless a test asks for more.
QUIET = 3600.0

HANDLER_KEYS = {
    "kind",
    "source",
    "group",
    "dead_letter_queue",
    "handled",
    "failed",
    "retried",
    "dead_lettered",
    "in_flight",
    "p50_ms",
    "p99_ms",
}
SNAPSHOT_KEYS = {"service", "instance", "time", "interval", "transport", "started", "stopping", "handlers", "published"}


def watch_stats(monitor: Bus, group: str = "monitor") -> Collector[tuple[Snapshot, Envelope]]:
    """Subscribe ``monitor`` to the stats topic; every snapshot lands in the collector."""
    seen: Collector[tuple[Snapshot, Envelope]] = Collector(15)

    @monitor.subscribe(STATS_TOPIC, group=group)
    async def on_stats(snapshot: dict[str, Any], envelope: Envelope) -> None:
        seen.add((snapshot, envelope))

    return seen


def of(seen: Collector[tuple[Snapshot, Envelope]], service: str) -> list[Snapshot]:
    return [snapshot for snapshot, _ in seen.items if snapshot["service"] == service]


def stopping_of(seen: Collector[tuple[Snapshot, Envelope]], service: str) -> Callable[[Any], bool]:
    return lambda _: any(s["stopping"] for s in of(seen, service))


def handler(snapshot: Snapshot, source: str) -> dict[str, Any]:
    entries: list[dict[str, Any]] = [h for h in snapshot["handlers"] if h["source"] == source]
    [entry] = entries
    return entry


def published(snapshot: Snapshot) -> dict[tuple[str, str], int]:
    return {(p["kind"], p["destination"]): p["messages"] for p in snapshot["published"]}


async def test_counts_match_what_happened(bus_factory: BusFactory) -> None:
    """Bug caught: counters that lie: a Nack counted as a failure, a retried failure counted
    as handled twice or not as retried, a dead letter not counted, handled counted before the
    ack, replies or the stats messages themselves counted as published, a handler missing
    from the start snapshot (the monitor would not know the service consumes it)."""
    monitor = bus_factory("monitor", stats_interval=None)
    seen = watch_stats(monitor)
    bus = bus_factory("billing", retry=FAST, stats_interval=QUIET)
    dead: Collector[str] = Collector(10)

    @bus.consume("jobs")
    async def work(job: dict[str, Any], envelope: Envelope) -> None:
        kind = job["kind"]
        if kind == "nack-once" and envelope.attempt == 1:
            raise Nack()
        if kind == "fail-once" and envelope.attempt == 1:
            raise ValueError("transient")
        if kind == "always":
            raise ValueError("for good")

    @bus.consume("jobs.dlq")
    async def parked(body: bytes, envelope: Envelope) -> None:
        dead.add(envelope.id)

    @bus.subscribe("orders", group="audit")
    async def audit(order: dict[str, Any]) -> None:
        if order["n"] == 0:
            raise Reject("no order 0")

    @bus.consume("prices")
    async def price(item: dict[str, Any]) -> dict[str, Any]:
        return {"price": 3}

    async with monitor:
        async with bus:
            jobs = [{"kind": "ok"}] * 3 + [{"kind": "fail-once"}, {"kind": "always"}, {"kind": "nack-once"}]
            for job in jobs:
                await bus.send("jobs", job)
            await bus.publish_many("orders", [{"n": 0}, {"n": 1}])
            assert await bus.request("prices", {"item": "tea"}, timeout=10) is not None
            await dead.wait_for(1)  # the "always" job
            await wait_idle(bus)
        await seen.wait_until(stopping_of(seen, "billing"), "the stopping snapshot")

    first, *_, last = of(seen, "billing")
    assert set(first) == SNAPSHOT_KEYS and all(set(h) == HANDLER_KEYS for h in first["handlers"])
    assert not first["stopping"] and last["stopping"]
    assert first["transport"] == "memory" and first["interval"] == QUIET
    assert first["instance"] == last["instance"] and last["started"] == first["started"] <= last["time"]
    assert {(h["kind"], h["source"], h["group"]) for h in first["handlers"]} == {
        ("consume", "jobs", None),
        ("consume", "jobs.dlq", None),
        ("subscribe", "orders", "audit"),
        ("consume", "prices", None),
    }
    assert handler(first, "orders")["dead_letter_queue"] == "orders.audit.dlq"
    jobs_stats = handler(last, "jobs")
    assert {k: jobs_stats[k] for k in ("handled", "failed", "retried", "dead_lettered", "in_flight")} == {
        "handled": 5,  # 3 ok, fail-once and nack-once on their second attempt
        "failed": 3,  # fail-once once, always twice; the Nack is no failure
        "retried": 3,  # fail-once, always's first attempt, the Nack
        "dead_lettered": 1,
        "in_flight": 0,
    }
    assert jobs_stats["dead_letter_queue"] == "jobs.dlq"
    assert 0 <= jobs_stats["p50_ms"] <= jobs_stats["p99_ms"]
    orders = handler(last, "orders")
    assert (orders["handled"], orders["failed"], orders["retried"], orders["dead_lettered"]) == (1, 1, 0, 1)
    assert handler(last, "jobs.dlq")["handled"] == 1
    assert handler(last, "prices")["handled"] == 1
    assert published(last) == {
        ("queue", "jobs"): 6,
        ("topic", "orders"): 2,
        ("queue", "prices"): 1,
        ("queue", "jobs.dlq"): 1,
        ("queue", "orders.audit.dlq"): 1,
    }


async def test_stats_message_is_a_json_cloudevent(bus_factory: BusFactory) -> None:
    """Bug caught: a snapshot the monitor cannot pick out or decode (another CloudEvents type,
    no JSON content type, the app's service missing as source), or one snapshot per start
    missing (the monitor would learn of a service only an interval later)."""
    monitor = bus_factory("monitor", stats_interval=None)
    seen = watch_stats(monitor)
    bus = bus_factory("quiet", stats_interval=QUIET)
    async with monitor:
        async with bus:
            await seen.wait_until(lambda _: bool(of(seen, "quiet")), "the start snapshot")
        await seen.wait_until(stopping_of(seen, "quiet"), "the stopping snapshot")
    assert [s["stopping"] for s in of(seen, "quiet")] == [False, True]
    _, envelope = seen.items[0]
    assert envelope.type == STATS_TYPE
    assert envelope.content_type == "application/json"
    assert envelope.source == "quiet"
    snapshot = of(seen, "quiet")[0]
    host, pid, tail = snapshot["instance"].rsplit("-", 2)
    assert host and pid == str(os.getpid()) and len(tail) == 4
    assert snapshot["handlers"] == [] and snapshot["published"] == []


async def test_in_flight_and_periodic_snapshots(bus_factory: BusFactory) -> None:
    """Bug caught: in_flight not counting a handler that is still running (the monitor's
    "stuck" view), never coming back to 0, or snapshots only at start and stop; p50/p99
    taken over all time instead of the last interval (null once nothing ran)."""
    monitor = bus_factory("monitor", stats_interval=None)
    seen = watch_stats(monitor)
    bus = bus_factory("slowpoke", stats_interval=0.02)
    release = asyncio.Event()
    started = asyncio.Event()

    @bus.subscribe("work", concurrency=2)
    async def block(item: dict[str, Any]) -> None:
        started.set()
        await asyncio.wait_for(release.wait(), 10)

    def blocked(_: Any) -> bool:
        return any(handler(s, "work")["in_flight"] == 1 for s in of(seen, "slowpoke"))

    async with monitor:
        async with bus:
            await bus.publish("work", {"n": 1})
            await asyncio.wait_for(started.wait(), 10)
            await seen.wait_until(blocked, "a snapshot with the handler in flight")
            release.set()
            await wait_idle(bus)
            mark = len(of(seen, "slowpoke"))
            # Two more snapshots: the second covers an interval in which no handler ran.
            await seen.wait_until(lambda _: len(of(seen, "slowpoke")) >= mark + 2, "two more snapshots")
        await seen.wait_until(stopping_of(seen, "slowpoke"), "the stopping snapshot")
    snapshots = of(seen, "slowpoke")
    timed = [handler(s, "work")["p50_ms"] for s in snapshots if handler(s, "work")["p50_ms"] is not None]
    assert len(timed) == 1, "the one handler call is timed in exactly one interval"
    last = handler(snapshots[-1], "work")
    assert (last["in_flight"], last["handled"], last["p99_ms"]) == (0, 1, None)


async def test_no_stats_when_interval_is_none(bus_factory: BusFactory) -> None:
    """Bug caught: stats_interval=None still publishing (a service that opted out shows up,
    or pays for stats) at start, while running or at stop."""
    monitor = bus_factory("monitor", stats_interval=None)
    seen = watch_stats(monitor)
    bus = bus_factory("silent", stats_interval=None)
    loud = bus_factory("loud", stats_interval=QUIET)

    @bus.consume("silent.jobs")
    async def work(job: dict[str, Any]) -> None:
        return None

    async with monitor:
        async with bus:
            await bus.send("silent.jobs", {"n": 1})
            await wait_idle(bus)
        # A bus with stats after the silent one stopped: its stopping snapshot comes after
        # anything the silent one published.
        async with loud:
            pass
        await seen.wait_until(stopping_of(seen, "loud"), "the loud bus's stopping snapshot")
        await wait_idle(monitor)
    assert of(seen, "silent") == []


@pytest.mark.parametrize("bad", [0, -1.5, True, "10", float("nan"), float("inf")])
def test_stats_interval_must_be_positive_seconds_or_none(bad: Any) -> None:
    """Bug caught: a stats_interval of 0 (a busy loop), a string or a bool accepted, failing
    later inside the stats task where nobody sees it."""
    with pytest.raises(ConfigurationError, match=r"stats_interval must be .* or None"):
        Bus.from_url("memory://", stats_interval=bad)


class StatsFailTransport(MemoryTransport):
    """memory:// whose publishes to the stats topic raise (or hang: ``hang``); counts them."""

    def __init__(self, broker: MemoryBroker, *, hang: bool = False) -> None:
        super().__init__(broker)
        self.hang = hang
        self.tries = 0
        self.tried_thrice = asyncio.Event()

    async def publish(self, messages: Sequence[OutgoingMessage]) -> None:
        if messages[0].destination.name == STATS_TOPIC:
            self.tries += 1
            if self.tries >= 3:
                self.tried_thrice.set()
            if self.hang:
                await asyncio.Event().wait()
            raise RuntimeError("stats publish broke")
        await super().publish(messages)


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if STATS_TOPIC in record.getMessage():
            self.records.append(record)


@pytest.fixture
def stats_logs() -> Any:
    records = Records()
    logger = logging.getLogger("messagebus")
    level = logger.level
    logger.addHandler(records)
    logger.setLevel(logging.DEBUG)
    yield records
    logger.removeHandler(records)
    logger.setLevel(level)


async def test_failing_stats_publish_does_not_hurt_the_app(memory_broker: MemoryBroker, stats_logs: Records) -> None:
    """Bug caught: a broken stats publish raising into start() or stop(), ending the stats
    loop (no more tries), or logging a warning every interval (log spam while a broker
    refuses the stats topic)."""
    transport = StatsFailTransport(memory_broker)
    bus = Bus(transport, service="robust", stats_interval=0.01)
    got: Collector[int] = Collector(10)

    @bus.consume("robust.jobs")
    async def work(job: dict[str, Any]) -> None:
        got.add(job["n"])

    await bus.start()
    await bus.send("robust.jobs", {"n": 1})
    assert await got.wait_for(1) == [1]
    await asyncio.wait_for(transport.tried_thrice.wait(), 10)
    await asyncio.wait_for(bus.stop(), 10)
    warnings = [r for r in stats_logs.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "stats publish broke" in warnings[0].getMessage()
    assert len(stats_logs.records) == transport.tries  # the rest at DEBUG, the stopping one included


async def test_hanging_stats_publish_does_not_hold_up_stop(
    memory_broker: MemoryBroker, monkeypatch: pytest.MonkeyPatch, stats_logs: Records
) -> None:
    """Bug caught: stop() waiting for ever on a stopping snapshot the broker never confirms."""
    monkeypatch.setattr(_stats, "STOP_TIMEOUT", 0.05)
    transport = StatsFailTransport(memory_broker, hang=True)
    bus = Bus(transport, service="stuck", stats_interval=QUIET)
    await bus.start()
    await asyncio.wait_for(bus.stop(), 10)
    assert transport.tries == 2  # the start snapshot (cancelled by stop) and the stopping one
    assert [r.levelno for r in stats_logs.records] == [logging.WARNING]


@pytest.fixture(scope="module")
def rabbitmq_url() -> str:
    pytest.importorskip("messagebus_rabbitmq")
    url = os.environ.get("MESSAGEBUS_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")
    parsed = TransportURL.parse(url)
    host, port = parsed.host or "127.0.0.1", parsed.port or 5672
    if not wait_for_port(host, port, timeout=5.0):
        missing_broker("RabbitMQ", f"nothing listens on {host}:{port} (set MESSAGEBUS_TEST_RABBITMQ_URL)")
    return url


async def _delete_queues(url: str, destinations: Sequence[Destination]) -> None:
    import aio_pika
    from messagebus_rabbitmq import physical_names

    connection = await aio_pika.connect_robust(url)
    async with connection:
        channel = await connection.channel()
        for destination in destinations:
            names = physical_names(destination)
            for role in ("queue", "dead_letter"):
                with contextlib.suppress(Exception):
                    await channel.queue_delete(names[role])


async def test_stats_on_rabbitmq(rabbitmq_url: str) -> None:
    """Bug caught: stats that only work on memory:// (a snapshot a real broker refuses, does
    not route to a subscriber of the stats topic, or routes without its JSON content type),
    or counts that differ on a broker whose redeliveries go through delay queues."""
    suffix = uuid.uuid4().hex[:10]
    service, queue, group = f"stats-{suffix}", f"stats.jobs.{suffix}", f"monitor-{suffix}"
    monitor = Bus.from_url(rabbitmq_url, service="monitor", stats_interval=None)
    seen = watch_stats(monitor, group)
    bus = Bus.from_url(rabbitmq_url, service=service, retry=FAST, stats_interval=QUIET)
    done: Collector[int] = Collector(30)

    @bus.consume(queue)
    async def work(job: dict[str, Any], envelope: Envelope) -> None:
        if job["n"] == 0 and envelope.attempt == 1:
            raise ValueError("transient")
        if job["n"] == 1 and envelope.attempt == 1:
            raise Nack()
        done.add(job["n"])

    try:
        async with monitor:
            async with bus:
                await bus.send_many(queue, [{"n": n} for n in range(5)])
                await done.wait_for(5)
            await seen.wait_until(stopping_of(seen, service), "the stopping snapshot")
    finally:
        await _delete_queues(
            rabbitmq_url,
            [Destination(DestinationKind.TOPIC, STATS_TOPIC, group), Destination(DestinationKind.QUEUE, queue)],
        )
    first, last = of(seen, service)[0], of(seen, service)[-1]
    assert (first["stopping"], last["stopping"], last["transport"]) == (False, True, "rabbitmq")
    stats = handler(last, queue)
    assert (stats["handled"], stats["failed"], stats["retried"], stats["dead_lettered"]) == (5, 1, 2, 0)
    assert published(last) == {("queue", queue): 5}
    envelope = next(e for s, e in seen.items if s["service"] == service)
    assert envelope.type == STATS_TYPE and envelope.content_type == "application/json"


class _CancelSwallowingTransport(MemoryTransport):
    """A stats publish that hangs and, when cancelled, raises a PublishError instead (as a
    broker client that turns every failure of a send into its own error does)."""

    entered: asyncio.Event

    async def publish(self, messages: Sequence[OutgoingMessage]) -> None:
        if messages[0].destination.name != STATS_TOPIC:
            await super().publish(messages)
            return
        self.entered.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            from messagebus import PublishError

            raise PublishError("cancelled (test)") from None


async def test_stop_returns_when_the_stats_publish_swallows_its_cancel() -> None:
    """Bug caught: stop() waiting for the stats task after cancelling it while the transport
    turned the cancel into an error: the loop went on sleeping and publishing, and stop (and
    with it `async with bus`) never returned (seen on NATS in CI)."""
    transport = _CancelSwallowingTransport(MemoryBroker.named(f"swallow-{uuid.uuid4().hex[:8]}"))
    transport.entered = asyncio.Event()
    bus = Bus(transport, service="svc", stats_interval=0.05)
    await bus.start()
    await asyncio.wait_for(transport.entered.wait(), 5)
    await asyncio.wait_for(bus.stop(grace=1), 15)
