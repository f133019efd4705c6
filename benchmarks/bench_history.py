"""History (issue 20): how fast a NEW group reads a topic's retained history, against the raw client.

    python -m benchmarks.bench_history                   # full: 20,000 messages, 3 rounds
    python -m benchmarks.bench_history --quick           # CI: 200 messages, 1 round (seconds)
    python -m benchmarks.bench_history --brokers memory,redis
    python -m benchmarks.bench_history --profile memory  # cProfile of the messagebus paths (one broker)
    python -m benchmarks.bench_history --brokers nats --concurrency 32  # messagebus with 32 slots

Brokers: memory:// (``history=N``, no raw baseline), Redis and NATS (``retention=limits``) on
the machine's servers, Kafka (Tansu, memory storage) started here as the other benchmarks do,
RabbitMQ (``history=1h``: each topic's history in a RabbitMQ stream) only when the adapter
declares ``Capabilities.history`` for that URL.

N small JSON messages are published once to a fresh topic (``publish_many``; nothing
subscribed). Then, each round, in alternating order, three readers each read all N from the
start in a group of their own:

- messagebus ``subscribe``: a new bus with ``@bus.subscribe(topic, start_from="earliest")``
  and a counting handler (concurrency 1); timed from ``bus.start()`` (the group is created
  there) to the N-th message handled; time to first message from the same point;
- messagebus ``replay``: ``await bus.replay(topic, handler)`` on a started bus, from the call
  to its return (it also waits until the group's depth reads 0 twice, polled every 0.1 s, then
  stops the consumer and deletes the group), and from the call to the N-th message handled;
- the raw client, from connecting to the N-th message, decoding each body as JSON and acking:
  redis-py (XGROUP CREATE at 0, XREADGROUP COUNT 1000, one XACK per read), nats-py (a JetStream
  pull consumer, deliver policy all, fetch 1000, an ack per message), aiokafka (a new group,
  ``auto_offset_reset="earliest"``, getmany 1,000, a commit per batch), aio-pika (the
  history stream consumed with ``x-stream-offset=first``, prefetch 1,000, an ack per message;
  messagebus's fences skipped).

Full runs (no ``--quick``, every broker, no ``--profile``) write ``results/history.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import json
import logging
import pstats
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from benchmarks._common import RESULTS, machine, versions, write
from benchmarks.bench_operating import names
from benchmarks.bench_patterns import AREAS, KAFKA_FETCH, NATS, RABBIT, REDIS, by_area, load
from messagebus import Bus
from messagebus.transports import BrokerAdmin, Destination, DestinationKind

BROKERS = ["memory", "redis", "nats", "kafka", "rabbitmq"]
#: Handler calls at once for the messagebus readers (``--concurrency``; the default 1 is sequential like raw).
CONCURRENCY = [1]
RABBIT_HISTORY = f"{RABBIT}?history=1h"
NATS_HISTORY = f"{NATS}?retention=limits"
#: The heading of the hand-written analysis in results/history.md, kept across runs.
ANALYSIS = "### Analysis"
HIST_AREAS = [
    ("messagebus/transports/memory", "messagebus memory:// transport"),
    ("messagebus_redis", "messagebus Redis adapter"),
    ("messagebus_nats", "messagebus NATS adapter"),
    ("site-packages/redis/", "redis-py"),
    ("site-packages/nats/", "nats-py"),
    ("messagebus/_settle", "messagebus core: _settle (Settler)"),
    ("messagebus/_handler", "messagebus core: _handler (decode)"),
    ("messagebus/_consumer", "messagebus core: _consumer"),
    ("messagebus/_replay", "messagebus core: _replay"),
    *AREAS,
]


@dataclass
class Mode:
    """Sizes: ``--quick`` (CI, seconds) or full."""

    quick: bool
    n: int = field(init=False)
    rounds: int = field(init=False)

    def __post_init__(self) -> None:
        self.n = 200 if self.quick else 20_000
        self.rounds = 1 if self.quick else 3


@dataclass
class Read:
    """One reader's read of the whole history: seconds to the N-th message (and to return,
    for ``replay``), time to the first message, CPU seconds of this process."""

    messages: int
    seconds: float
    first: float
    cpu: float
    returned: float | None = None

    @property
    def rate(self) -> float:
        return self.messages / self.seconds

    @property
    def flow(self) -> float:
        """msg/s from the first message to the last: the read without the group's setup."""
        return (self.messages - 1) / (self.seconds - self.first) if self.seconds > self.first else float("inf")


class Tally:
    """Counts what a reader handled; ``done`` at ``target``; first and last times."""

    def __init__(self, target: int, t0: float) -> None:
        self.n = 0
        self.target = target
        self.t0 = t0
        self.first = 0.0
        self.last = 0.0
        self.done = asyncio.Event()

    def hit(self, k: int = 1) -> None:
        if self.n == 0:
            self.first = time.perf_counter()
        self.n += k
        if self.n >= self.target and not self.done.is_set():
            self.last = time.perf_counter()
            self.done.set()

    def read(self, c0: float) -> Read:
        if self.n != self.target:
            raise AssertionError(f"read {self.n} of {self.target} messages (lost or duplicated)")
        return Read(self.n, self.last - self.t0, self.first - self.t0, time.process_time() - c0)


def topic_dest(topic: str, group: str | None = None) -> Destination:
    return Destination(DestinationKind.TOPIC, topic, group)


# -- messagebus ----------------------------------------------------------------------------------


async def bus_subscribe(url: str, topic: str, n: int, profiler: cProfile.Profile | None = None) -> Read:
    """A new bus subscribing a new group at ``earliest``: ``start()`` to the N-th message."""
    group = f"g{uuid.uuid4().hex[:8]}"
    bus = Bus.from_url(url, service=group, stats_interval=None)
    tally = Tally(n, 0.0)

    @bus.subscribe(topic, group=group, start_from="earliest", concurrency=CONCURRENCY[0])
    async def handle(data: dict[str, Any]) -> None:
        tally.hit()

    c0 = time.process_time()
    tally.t0 = time.perf_counter()
    if profiler is not None:
        profiler.enable()
    await bus.start()
    try:
        await asyncio.wait_for(tally.done.wait(), 600)
        if profiler is not None:
            profiler.disable()
        read = tally.read(c0)
    finally:
        await bus.stop()
    # Deleted once its consumer has stopped (a queue deleted under a consumer makes the broker cancel it).
    async with Bus.from_url(url, service="history-cleaner", stats_interval=None) as cleaner:
        transport = cleaner.transport
        assert isinstance(transport, BrokerAdmin)
        await transport.delete_group(topic_dest(topic, group))
    return read


async def bus_replay(url: str, topic: str, n: int, profiler: cProfile.Profile | None = None) -> Read:
    """``bus.replay(topic, handler)`` on a started bus: the call to its return."""
    bus = Bus.from_url(url, service="replayer", stats_interval=None)
    async with bus:
        tally = Tally(n, time.perf_counter())

        async def handle(data: dict[str, Any]) -> None:
            tally.hit()

        c0 = time.process_time()
        if profiler is not None:
            profiler.enable()
        handled = await bus.replay(topic, handle, concurrency=CONCURRENCY[0])
        if profiler is not None:
            profiler.disable()
        returned = time.perf_counter() - tally.t0
        read = tally.read(c0)
    if handled != n:
        raise AssertionError(f"replay returned {handled}, the handler saw {n}")
    read.returned = returned
    return read


# -- raw clients -----------------------------------------------------------------------------------


async def raw_redis(url: str, topic: str, n: int) -> Read:
    """redis-py: XGROUP CREATE at 0, XREADGROUP COUNT 1000, bodies decoded, one XACK per read."""
    import redis.asyncio as aredis

    stream = names(url, topic_dest(topic))["stream"]
    group = f"raw{uuid.uuid4().hex[:8]}"
    c0, t0 = time.process_time(), time.perf_counter()
    tally = Tally(n, t0)
    client = aredis.Redis.from_url(REDIS)
    try:
        await client.xgroup_create(stream, group, id="0")
        while not tally.done.is_set():
            # redis-py types the reply as a union of RESP2 and RESP3 shapes; this client speaks RESP2.
            got: Any = await client.xreadgroup(group, "c", {stream: ">"}, count=1000, block=1000)
            for _, entries in got:
                for _, fields in entries:
                    json.loads(fields[b"messagebus-body"])
                await client.xack(stream, group, *[entry_id for entry_id, _ in entries])
                tally.hit(len(entries))
        read = tally.read(c0)
        await client.xgroup_destroy(stream, group)
    finally:
        await client.aclose()
    return read


async def raw_nats(url: str, topic: str, n: int) -> Read:
    """nats-py: a JetStream pull consumer with deliver policy all, fetch 1000, ack each."""
    import nats
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    physical = names(url, topic_dest(topic))
    c0, t0 = time.process_time(), time.perf_counter()
    tally = Tally(n, t0)
    nc = await nats.connect(NATS)
    try:
        js = nc.jetstream()
        durable = f"raw{uuid.uuid4().hex[:8]}"
        config = ConsumerConfig(deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.EXPLICIT)
        sub = await js.pull_subscribe(physical["subject"], durable=durable, stream=physical["stream"], config=config)
        while not tally.done.is_set():
            for msg in await sub.fetch(1000, timeout=5):
                json.loads(msg.data)
                await msg.ack()
                tally.hit()
        read = tally.read(c0)
        await js.delete_consumer(physical["stream"], durable)
    finally:
        await nc.close()
    return read


async def raw_kafka(url: str, topic: str, n: int) -> Read:
    """aiokafka: a new group from the earliest offset, getmany 1,000, a commit per batch."""
    from aiokafka import AIOKafkaConsumer

    bootstrap = url.split("://", 1)[1].split("?", 1)[0]
    c0, t0 = time.process_time(), time.perf_counter()
    tally = Tally(n, t0)
    consumer = AIOKafkaConsumer(
        names(url, topic_dest(topic))["topic"],
        bootstrap_servers=bootstrap,
        group_id=f"raw{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        fetch_max_wait_ms=5,
        session_timeout_ms=6000,
        heartbeat_interval_ms=500,
        rebalance_timeout_ms=2000,
    )
    await consumer.start()
    try:
        while not tally.done.is_set():
            batches = await consumer.getmany(timeout_ms=1000, max_records=1000)
            for records in batches.values():
                for record in records:
                    json.loads(record.value or b"")
                tally.hit(len(records))
            if batches:
                await consumer.commit()
        return tally.read(c0)
    finally:
        await consumer.stop()


async def raw_rabbitmq(url: str, topic: str, n: int) -> Read:
    """aio-pika: the topic's history stream from ``first``, prefetch 1,000, ack each (fences skipped)."""
    import aio_pika

    stream = history_stream(url, topic)
    c0, t0 = time.process_time(), time.perf_counter()
    tally = Tally(n, t0)
    conn = await aio_pika.connect(RABBIT)
    async with conn:
        channel = await conn.channel()
        await channel.set_qos(prefetch_count=1000)
        queue = await channel.declare_queue(stream, passive=True)

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            await message.ack()
            if "messagebus-history-fence" in (message.headers or {}):
                return
            json.loads(message.body)
            tally.hit()

        tag = await queue.consume(on_message, arguments={"x-stream-offset": "first"})
        await asyncio.wait_for(tally.done.wait(), 600)
        read = tally.read(c0)
        await queue.cancel(tag)
    return read


def history_stream(url: str, topic: str) -> str:
    """The RabbitMQ stream keeping ``topic``'s history (README: ``messagebus:history:<exchange>``)."""
    from messagebus_rabbitmq._topology import side_name

    return side_name("history", names(url, topic_dest(topic))["exchange"])


Reader = Callable[[str, str, int], Awaitable[Read]]
RAW: dict[str, tuple[str, Reader]] = {
    "redis": ("raw redis-py: XGROUP CREATE 0, XREADGROUP 1000, XACK per read", raw_redis),
    "nats": ("raw nats-py: pull consumer, deliver all, fetch 1000, ack each", raw_nats),
    "kafka": ("raw aiokafka: new group, earliest, getmany 1000, commit per batch", raw_kafka),
    "rabbitmq": ("raw aio-pika: stream, x-stream-offset=first, prefetch 1000, ack each", raw_rabbitmq),
}


# -- brokers -----------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def history_url(broker: str, n: int) -> AsyncIterator[str]:
    """The messagebus URL of ``broker`` with its history opt-in, started and cleaned where needed."""
    if broker == "memory":
        yield f"memory://history-{uuid.uuid4().hex[:6]}?history={n}"
    elif broker == "redis":
        from benchmarks.bench_redis import cleanup, prefixed

        prefix, url = prefixed(REDIS)
        try:
            yield url
        finally:
            await cleanup(REDIS, prefix)
    elif broker == "nats":
        yield NATS_HISTORY
    elif broker == "kafka":
        from benchmarks.bench_kafka import OPTIONS, tansu

        with tansu() as url:
            yield f"{url}?{OPTIONS}&{KAFKA_FETCH}"
    elif broker == "rabbitmq":
        yield RABBIT_HISTORY
    else:
        raise SystemExit(f"unknown broker {broker!r}: one of {BROKERS}")


def rabbitmq_has_history() -> bool:
    return bool(Bus.from_url(RABBIT_HISTORY).transport.capabilities.history)


async def drop_topic(broker: str, url: str, topic: str) -> None:
    """Remove what the topic left on a shared broker (NATS stream, RabbitMQ exchange and stream)."""
    if broker == "nats":
        import nats

        nc = await nats.connect(NATS)
        try:
            await nc.jetstream().delete_stream(names(url, topic_dest(topic))["stream"])
        finally:
            await nc.close()
    elif broker == "rabbitmq":
        import aio_pika

        exchange = names(url, topic_dest(topic))["exchange"]
        conn = await aio_pika.connect(RABBIT)
        async with conn:
            channel = await conn.channel()
            await channel.queue_delete(history_stream(url, topic))
            await channel.exchange_delete(exchange)


async def publish(url: str, topic: str, n: int) -> float:
    """Publish ``n`` small JSON messages to ``topic`` (batches of 1,000); seconds taken."""
    async with Bus.from_url(url, service="history-writer", stats_interval=None) as bus:
        t0 = time.perf_counter()
        for start in range(0, n, 1000):
            await bus.publish_many(topic, [{"id": i, "name": "widget"} for i in range(start, min(start + 1000, n))])
        return time.perf_counter() - t0


@dataclass
class Result:
    broker: str
    n: int
    publish_s: float
    runs: dict[str, list[Read]]
    labels: dict[str, str]


async def run_broker(broker: str, mode: Mode) -> Result:
    async with history_url(broker, mode.n) as url:
        topic = f"hist.{uuid.uuid4().hex[:8]}"
        try:
            publish_s = await publish(url, topic, mode.n)
            readers: dict[str, tuple[str, Reader]] = {
                "subscribe": ('messagebus `subscribe(start_from="earliest")`', bus_subscribe),
                "replay": ("messagebus `bus.replay(topic, handler)`", bus_replay),
            }
            if broker in RAW:
                readers["raw"] = RAW[broker]
            runs: dict[str, list[Read]] = {key: [] for key in readers}
            keys = list(readers)
            for r in range(mode.rounds):
                for key in keys if r % 2 == 0 else keys[::-1]:
                    # Bounded: a hang fails this broker's figures, not the whole run.
                    runs[key].append(await asyncio.wait_for(readers[key][1](url, topic, mode.n), 300))
        finally:
            await drop_topic(broker, url, topic)
    return Result(broker, mode.n, publish_s, runs, {k: v[0] for k, v in readers.items()})


def median_read(reads: list[Read]) -> Read:
    return sorted(reads, key=lambda r: r.seconds)[len(reads) // 2]


def results_table(results: list[Result]) -> str:
    lines = [
        "| broker | reader | messages | rounds | msg/s (median) | range msg/s | first message ms (median) "
        "| msg/s first to last "
        "| replay returned s | CPU us per message | vs raw |",
        "|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for res in results:
        raw = median_read(res.runs["raw"]).rate if "raw" in res.runs else None
        for key, reads in res.runs.items():
            m = median_read(reads)
            rates = [r.rate for r in reads]
            first = statistics.median(r.first for r in reads) * 1000
            returned = (
                statistics.median(r.returned for r in reads if r.returned is not None) if key == "replay" else None
            )
            ratio = f"{m.rate / raw:.2f}x" if raw and key != "raw" else ""
            # A span under 10 ms (everything in one read, or a tiny quick run) is not worth dividing by.
            flow = f"{m.flow:,.0f}" if m.seconds - m.first > 0.01 else "<10 ms"
            lines.append(
                f"| {res.broker} | {res.labels[key]} | {res.n:,} | {len(reads)} | {m.rate:,.0f} "
                f"| {min(rates):,.0f}-{max(rates):,.0f} | {first:,.1f} | {flow} "
                f"| {'' if returned is None else f'{returned:.2f}'} | {m.cpu / m.messages * 1e6:,.1f} | {ratio} |"
            )
    return "\n".join(lines)


async def profile(broker: str, n: int) -> str:
    """cProfile of both messagebus paths reading ``n`` messages of history on ``broker``."""
    out = []
    async with history_url(broker, n) as url:
        topic = f"hist.{uuid.uuid4().hex[:8]}"
        await publish(url, topic, n)
        for label, reader in (("subscribe", bus_subscribe), ("replay", bus_replay)):
            profiler = cProfile.Profile()
            try:
                read = await reader(url, topic, n, profiler)
            finally:
                if label == "replay":
                    await drop_topic(broker, url, topic)
            per = by_area(pstats.Stats(profiler), HIST_AREAS)
            total = sum(per.values())
            rows = [
                f"| {area} | {sec / n * 1e6:.2f} | {sec / total:.0%} |"
                for area, sec in sorted(per.items(), key=lambda a: -a[1])
            ]
            stream = io.StringIO()
            pstats.Stats(profiler, stream=stream).sort_stats("tottime").print_stats(15)
            out.append(
                f"#### {broker} {label}: {n:,} messages under cProfile, {read.seconds:.2f} s to the last"
                + (f", {read.returned:.2f} s to return" if read.returned is not None else "")
                + "\n\n| area (own time) | us per message | share |\n|---|---:|---:|\n"
                + "\n".join(rows)
                + f"\n\n```\n{stream.getvalue()}\n```"
            )
    return "\n\n".join(out)


async def amain(args: argparse.Namespace) -> str:
    mode = Mode(args.quick)
    if args.messages:
        mode.n = args.messages
    CONCURRENCY[0] = args.concurrency
    if args.profile:
        return await profile(args.profile, mode.n)
    brokers = args.brokers.split(",") if args.brokers else list(BROKERS)
    skipped = ""
    if "rabbitmq" in brokers and not rabbitmq_has_history():
        brokers.remove("rabbitmq")
        skipped = f" RabbitMQ skipped: `{RABBIT_HISTORY}` does not declare `Capabilities.history`."
    load_before = load()
    results = []
    for broker in brokers:
        try:
            results.append(await run_broker(broker, mode))
        except Exception as exc:  # one broker's failure must not lose the others' figures
            print(f"history on {broker} failed: {exc!r}", file=sys.stderr)
            if args.strict:
                raise
    published = ", ".join(f"{r.broker} {r.n / r.publish_s:,.0f} msg/s" for r in results)
    return (
        "### Reading a topic's history in a new group\n\n"
        f"{mode.n:,} messages published once to a fresh topic (`publish_many`: {published}), then "
        f"read in full by a new group, {mode.rounds} rounds, readers alternating. msg/s: to the "
        "N-th message handled, from `bus.start()` (subscribe), the `replay` call, or the raw "
        "client's connect; first message: from the same point; first to last: the read without the "
        "group's setup. `replay` returned: the call to its "
        "return (caught-up check, consumer stop, group deletion). CPU: this process. "
        f"Load before: {load_before}; after: {load()}.{skipped}\n\n{results_table(results)}\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="CI mode: 200 messages, 1 round")
    parser.add_argument("--brokers", help=f"comma-separated, default all of {','.join(BROKERS)}")
    parser.add_argument("--messages", type=int, help="messages of history (default 20,000; --quick 200)")
    parser.add_argument("--profile", choices=BROKERS, help="cProfile the messagebus paths on this broker")
    parser.add_argument("--concurrency", type=int, default=1, help="messagebus readers' concurrency (experiment)")
    parser.add_argument("--strict", action="store_true", help="a broker's failure fails the run")
    args = parser.parse_args()
    unknown = set(args.brokers.split(",") if args.brokers else []) - set(BROKERS)
    if unknown:
        parser.error(f"unknown brokers {sorted(unknown)}: one of {BROKERS}")
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    uptime = subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    logging.getLogger("messagebus").setLevel(logging.WARNING)
    text = asyncio.run(amain(args))
    print(text)
    if args.quick or args.profile or args.brokers or args.messages or args.concurrency != 1:
        return  # only full runs of every broker are written to results/
    previous = RESULTS / "history.md"
    kept = previous.read_text().partition(ANALYSIS)[2] if previous.exists() else ""
    write(
        "history",
        "## History: a new group reading a topic's retained messages\n\n"
        f"{machine()}; started {started}, full mode. "
        f"{versions('redis', 'nats-py', 'aiokafka', 'aio-pika')}. `python -m benchmarks.bench_history`. "
        f"`uptime` at the start: `{uptime}` (a shared machine: other helpers' test runs; the figures "
        f"are indicative).\n\n{text}" + (f"\n{ANALYSIS}{kept}" if kept else ""),
    )


if __name__ == "__main__":
    main()
