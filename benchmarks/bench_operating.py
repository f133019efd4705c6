"""Operating tools (issue 18): dead-letter replay and peek, and what the stats publisher costs.

    python -m benchmarks.bench_operating                  # full: 2,000 dead letters, 20,000 consumed
    python -m benchmarks.bench_operating --quick          # CI: 100 dead letters, 1,000 consumed
    python -m benchmarks.bench_operating replay peek      # only some sections (replay, peek, stats)
    python -m benchmarks.bench_operating --brokers memory,rabbitmq
    python -m benchmarks.bench_operating --profile replay # cProfile of the RabbitMQ replay instead
    python -m benchmarks.bench_operating --workers 256    # replay with that many consumer slots (experiment)
    python -m benchmarks.bench_operating stats --brokers memory --messages 100000 --stats-rounds 10

Brokers: memory://, RabbitMQ, Redis and NATS on the machine's servers (127.0.0.1); Kafka
(Tansu, memory storage) started here as the other benchmarks do.

Replay: N dead letters are made by sending N messages to a queue whose consumer raises
``Reject`` (counted with ``bus.dead_letter_queues()``); that consumer's bus is stopped, then a
bus (connected, nothing else running) calls ``replay_dead_letters("<queue>.dlq")`` and the
time is taken from the call to its return: depth lookup, the DLQ consumer's start (a Kafka
group join), each dead letter published back with a confirm and acked, the consumer's stop.
The raw client does the same job on another queue's dead letters made the same way, from
opening its DLQ consumer to the last ack: aio-pika (prefetch 100, a publisher-confirmed
publish per message, then its ack), redis-py (XREADGROUP COUNT 100, the XADDs pipelined,
then one XACK), nats-py JetStream (pull fetch 100, the publishes gathered, then the acks),
aiokafka (getmany, the sends gathered with acks=all, then the commit). Both read the
physical names from the adapter's ``physical_names``. Each round makes fresh dead letters for
both; the order alternates between rounds.

Peek: ``peek_dead_letters(dlq, limit=10)`` on a DLQ of N, 20 looks; ``queue_depth`` of the
DLQ, timed on its own, is the first step of every look.

Stats: a pre-filled queue consumed by a bus with ``stats_interval=10`` (the default) and one
with ``None``, a handler that only counts, interleaved rounds; first handled to last.

Full runs (no ``--quick``, every section and broker) write ``results/operating.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import logging
import pstats
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from benchmarks._common import RESULTS, Count, latency_ms, machine, versions, write
from benchmarks.bench_patterns import AREAS, broker_url, by_area, drop_queue, fill_with, load, sep, socket_writes
from messagebus import Bus, Reject
from messagebus.transports import Destination, DestinationKind

BROKERS = ["memory", "rabbitmq", "redis", "nats", "kafka"]
SECTIONS = ["replay", "peek", "stats"]
RAW_BROKERS = {"rabbitmq", "redis", "nats", "kafka"}
PEEKS = 20
#: The heading of the hand-written analysis in results/operating.md, kept across runs.
ANALYSIS = "### Analysis"

#: Profile areas of this benchmark: the adapters it touches, before the generic ones.
OP_AREAS = [
    ("messagebus_redis", "messagebus Redis adapter"),
    ("messagebus_nats", "messagebus NATS adapter"),
    ("messagebus/_dead_letters", "messagebus core: _dead_letters"),
    ("messagebus/_stats", "messagebus core: _stats"),
    ("messagebus/_settle", "messagebus core: _settle"),
    ("site-packages/redis/", "redis-py"),
    ("site-packages/nats/", "nats-py"),
    *AREAS,
]


@dataclass
class Mode:
    """Sizes: ``--quick`` (CI, seconds) or full."""

    quick: bool
    dead: int = field(init=False)  # dead letters per replay
    rounds: int = field(init=False)  # replay rounds
    consume_n: int = field(init=False)  # messages per stats round
    stats_rounds: int = field(init=False)

    def __post_init__(self) -> None:
        self.dead = 100 if self.quick else 2_000
        self.rounds = 1 if self.quick else 3
        self.consume_n = 1_000 if self.quick else 20_000
        self.stats_rounds = 2 if self.quick else 6


def names(url: str, destination: Destination) -> dict[str, str]:
    """The adapter's ``physical_names`` of ``destination`` for ``url`` (its options: a Redis prefix)."""
    scheme = url.split("://", 1)[0]
    if scheme == "amqp":
        from messagebus_rabbitmq import physical_names

        return physical_names(destination)
    if scheme == "redis":
        from messagebus_redis import RedisOptions
        from messagebus_redis import physical_names as redis_names

        prefix = parse_qs(urlsplit(url).query).get("prefix", [""])[0]
        return redis_names(destination, RedisOptions(prefix=prefix))
    if scheme == "nats":
        from messagebus_nats import physical_names as nats_names

        return nats_names(destination)
    from messagebus_kafka import physical_names as kafka_names

    return kafka_names(destination)


def queue(name: str) -> Destination:
    return Destination(DestinationKind.QUEUE, name)


# -- dead letters --------------------------------------------------------------------------------


async def until(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    """Poll ``check`` every 50 ms until it holds; ``TimeoutError`` naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached in {timeout:g} s")
        await asyncio.sleep(0.05)


async def make_dead_letters(url: str, name: str, n: int) -> None:
    """``n`` dead letters in ``<name>.dlq``: sent to queue ``name`` whose consumer rejects
    every one, counted with ``dead_letter_queues()``; that consumer is stopped afterwards."""
    bus = Bus.from_url(url, service="dlq-maker", stats_interval=None)

    @bus.consume(name, concurrency=32)
    async def reject(data: dict[str, Any]) -> None:
        raise Reject("benchmark: every message is dead-lettered")

    dlq = f"{name}.dlq"

    async def counted() -> bool:
        return any(q.name == dlq and (q.depth or 0) >= n for q in await bus.dead_letter_queues())

    async with bus:
        await fill_with(bus, name, n)
        await until(counted, 300, f"{n} dead letters in {dlq}")


@dataclass
class Timed:
    """One timed job: messages, wall seconds, CPU seconds of this process."""

    messages: int
    seconds: float
    cpu: float

    @property
    def rate(self) -> float:
        return self.messages / self.seconds

    @property
    def cpu_us(self) -> float:
        return self.cpu / self.messages * 1e6


async def bus_replay(url: str, name: str, n: int, profiler: cProfile.Profile | None = None) -> Timed:
    """messagebus: ``replay_dead_letters`` of ``<name>.dlq`` timed from the call to its return."""
    bus = Bus.from_url(url, service="replayer", stats_interval=None)
    async with bus:
        t0, c0 = time.perf_counter(), time.process_time()
        if profiler is not None:
            profiler.enable()
        replayed = await bus.replay_dead_letters(f"{name}.dlq")
        if profiler is not None:
            profiler.disable()
        timed = Timed(replayed, time.perf_counter() - t0, time.process_time() - c0)
        back = await bus.queue_depth(name)
    if replayed != n or (back is not None and back < n):
        raise AssertionError(f"replayed {replayed} of {n}; the queue holds {back}")
    return timed


async def raw_rabbitmq(url: str, name: str, n: int) -> Timed:
    """aio-pika: consume the DLQ (prefetch 100), publish each with a confirm, then ack it."""
    import aio_pika

    dlq, target = names(url, queue(name))["dead_letter"], names(url, queue(name))["queue"]
    conn = await aio_pika.connect(url)
    async with conn:
        channel = await conn.channel(publisher_confirms=True)
        await channel.set_qos(prefetch_count=100)
        moved, done = 0, asyncio.Event()

        async def move(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            nonlocal moved
            out = aio_pika.Message(
                message.body,
                headers=message.headers,
                content_type=message.content_type,
                message_id=message.message_id,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            )
            await channel.default_exchange.publish(out, routing_key=target)
            await message.ack()
            moved += 1
            if moved >= n:
                done.set()

        t0, c0 = time.perf_counter(), time.process_time()
        source = await channel.declare_queue(dlq, passive=True)
        tag = await source.consume(move)
        await asyncio.wait_for(done.wait(), 300)
        timed = Timed(moved, time.perf_counter() - t0, time.process_time() - c0)
        await source.cancel(tag)
    return timed


async def raw_redis(url: str, name: str, n: int) -> Timed:
    """redis-py: XREADGROUP COUNT 100 on the DLQ stream, the XADDs pipelined, then one XACK."""
    import redis.asyncio as aredis

    dlq = names(url, queue(f"{name}.dlq"))["stream"]
    target = names(url, queue(name))["stream"]
    client = aredis.Redis.from_url(url.split("?", 1)[0])
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        await client.xgroup_create(dlq, "raw-replay", id="0")
        moved = 0
        while moved < n:
            read = await client.xreadgroup("raw-replay", "c1", {dlq: ">"}, count=100, block=1000)
            entries = [entry for _, batch in read or [] for entry in batch]
            if not entries:
                continue
            pipe = client.pipeline(transaction=False)
            for _, fields in entries:
                pipe.xadd(target, fields)
            await pipe.execute()  # the XADD replies are the confirms
            await client.xack(dlq, "raw-replay", *(entry_id for entry_id, _ in entries))
            moved += len(entries)
        return Timed(moved, time.perf_counter() - t0, time.process_time() - c0)
    finally:
        await client.aclose()


async def raw_nats(url: str, name: str, n: int) -> Timed:
    """nats-py JetStream: pull fetch 100 from the DLQ stream, the publishes gathered (each
    awaits its JetStream ack), then each message acked."""
    import nats

    dlq = names(url, queue(f"{name}.dlq"))
    subject = names(url, queue(name))["subject"]
    nc = await nats.connect(url.split("?", 1)[0])
    try:
        js = nc.jetstream()
        t0, c0 = time.perf_counter(), time.process_time()
        # The work-queue stream allows one consumer: messagebus's durable name, made if missing.
        psub = await js.pull_subscribe(dlq["subject"], durable="messagebus-queue", stream=dlq["stream"])
        moved = 0
        while moved < n:
            msgs = await psub.fetch(100, timeout=5)
            # A fresh Nats-Msg-Id: the original's would make JetStream drop the copy as a duplicate.
            sends = []
            for msg in msgs:
                headers = {k: v for k, v in (msg.headers or {}).items() if k != "Nats-Msg-Id"}
                headers["Nats-Msg-Id"] = uuid.uuid4().hex
                sends.append(js.publish(subject, msg.data, headers=headers))
            await asyncio.gather(*sends)
            for msg in msgs:
                await msg.ack()
            moved += len(msgs)
        return Timed(moved, time.perf_counter() - t0, time.process_time() - c0)
    finally:
        await nc.close()


async def raw_kafka(url: str, name: str, n: int) -> Timed:
    """aiokafka: a consumer group on the DLQ topic (getmany), the sends gathered (acks=all),
    then the commit of what they moved."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    from benchmarks.bench_patterns import kafka_servers

    servers = kafka_servers(url)
    dlq = names(url, queue(name))["dead_letter"]
    target = names(url, queue(name))["topic"]
    producer = AIOKafkaProducer(bootstrap_servers=servers, acks="all", linger_ms=0)
    await producer.start()
    consumer = AIOKafkaConsumer(
        dlq,
        bootstrap_servers=servers,
        group_id=f"raw-replay-{uuid.uuid4().hex[:6]}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=5,
    )
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        await consumer.start()
        moved = 0
        while moved < n:
            batch = await consumer.getmany(timeout_ms=1000, max_records=500)
            for tp, records in batch.items():
                sends = [await producer.send(target, r.value, key=r.key, headers=list(r.headers)) for r in records]
                await asyncio.gather(*sends)
                await consumer.commit({tp: records[-1].offset + 1})
                moved += len(records)
        return Timed(moved, time.perf_counter() - t0, time.process_time() - c0)
    finally:
        await consumer.stop()
        await producer.stop()


RAW: dict[str, tuple[str, Callable[[str, str, int], Awaitable[Timed]]]] = {
    "rabbitmq": ("raw aio-pika: prefetch 100, confirmed publish then ack per message", raw_rabbitmq),
    "redis": ("raw redis-py: XREADGROUP 100, pipelined XADDs, one XACK", raw_redis),
    "nats": ("raw nats-py: fetch 100, gathered JetStream publishes, acks", raw_nats),
    "kafka": ("raw aiokafka: getmany, gathered sends (acks=all), commit", raw_kafka),
}


async def cleanup(url: str, *queues: str) -> None:
    """Drop the benchmark's queues where the broker keeps them (RabbitMQ, NATS streams)."""
    for name in queues:
        await drop_queue(url, name)
        await drop_queue(url, f"{name}.dlq")
    if url.startswith("nats"):
        from benchmarks.bench_nats import delete

        streams = [names(url, queue(n))[k] for n in queues for k in ("stream", "dead_letter_stream")]
        await delete(url, *streams)


@dataclass
class ReplayResult:
    broker: str
    bus: list[Timed]
    raw: list[Timed]
    peeks: list[float] = field(default_factory=list)
    depths: list[float] = field(default_factory=list)


async def peek_looks(url: str, name: str) -> tuple[list[float], list[float]]:
    """Seconds of each of :data:`PEEKS` ``peek_dead_letters(limit=10)`` and ``queue_depth`` calls."""
    dlq = f"{name}.dlq"
    bus = Bus.from_url(url, service="peeker", stats_interval=None)
    looks: list[float] = []
    depths: list[float] = []
    async with bus:
        for _ in range(PEEKS):
            t0 = time.perf_counter()
            found = await bus.peek_dead_letters(dlq, limit=10)
            looks.append(time.perf_counter() - t0)
            if len(found) != 10:
                raise AssertionError(f"a look at {dlq} found {len(found)}, not 10")
        for _ in range(PEEKS):
            t0 = time.perf_counter()
            await bus.queue_depth(dlq)
            depths.append(time.perf_counter() - t0)
    return looks, depths


async def replay_broker(broker: str, mode: Mode, peek: bool, replay: bool) -> ReplayResult:
    """Rounds of: fresh dead letters for messagebus and for the raw client, both replayed
    (order alternating); the first round's messagebus DLQ is looked at first when ``peek``."""
    result = ReplayResult(broker, [], [])
    async with broker_url(broker) as url:
        for r in range(mode.rounds if replay else 1):
            mine, theirs = f"op.bus.{uuid.uuid4().hex[:8]}", f"op.raw.{uuid.uuid4().hex[:8]}"
            raw = RAW.get(broker) if replay else None
            try:
                await make_dead_letters(url, mine, mode.dead)
                if raw is not None:
                    await make_dead_letters(url, theirs, mode.dead)
                if peek and r == 0:
                    result.peeks, result.depths = await peek_looks(url, mine)
                if not replay:
                    continue
                jobs: list[tuple[list[Timed], Awaitable[Timed]]] = [(result.bus, bus_replay(url, mine, mode.dead))]
                if raw is not None:
                    jobs.append((result.raw, raw[1](url, theirs, mode.dead)))
                for into, job in jobs if r % 2 == 0 else reversed(jobs):
                    into.append(await job)
            finally:
                await cleanup(url, mine, theirs)
    return result


def median_timed(runs: list[Timed]) -> Timed:
    """The run of median rate (the upper median of an even count)."""
    return sorted(runs, key=lambda t: t.rate)[len(runs) // 2]


def replay_table(results: list[ReplayResult], n: int) -> str:
    lines = [
        "| broker | contender | dead letters | rounds | msg/s (median) | range msg/s | CPU us per message | vs raw |",
        "|---|---|---:|---:|---:|---|---:|---:|",
    ]
    for res in results:
        bus = median_timed(res.bus)
        raw = median_timed(res.raw) if res.raw else None
        rows = [("messagebus `replay_dead_letters`", res.bus, bus)]
        if raw is not None:
            rows.append((RAW[res.broker][0], res.raw, raw))
        for label, runs, med in rows:
            span = f"{min(t.rate for t in runs):,.0f}-{max(t.rate for t in runs):,.0f}"
            ratio = f"{bus.rate / raw.rate:.2f}x" if raw is not None and runs is res.bus else ""
            lines.append(
                f"| {res.broker} | {label} | {n:,} | {len(runs)} | {med.rate:,.0f} | {span} | {med.cpu_us:,.0f} "
                f"| {ratio} |"
            )
    return "\n".join(lines)


def peek_table(results: list[ReplayResult], n: int) -> str:
    lines = [
        "| broker | DLQ depth | looks | peek p50 ms | peek p99 ms | of which `queue_depth` p50 ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for res in results:
        if not res.peeks:
            continue
        p50, p99 = latency_ms(res.peeks)
        d50, _ = latency_ms(res.depths)
        lines.append(f"| {res.broker} | {n:,} | {len(res.peeks)} | {p50:.1f} | {p99:.1f} | {d50:.1f} |")
    return "\n".join(lines)


# -- stats cost ------------------------------------------------------------------------------------


async def stats_consume(url: str, name: str, n: int, interval: float | None) -> Timed:
    """Consume ``n`` messages of ``name`` with a counting handler on a bus with ``stats_interval``."""
    count = Count(n)
    bus = Bus.from_url(url, service="stats-bench", stats_interval=interval)

    @bus.consume(name)
    async def handle(data: dict[str, Any]) -> None:
        count.hit()

    async with bus:
        await asyncio.wait_for(count.done.wait(), 600)
    return Timed(n, count.last - count.first, count.cpu_last - count.cpu_first)


async def stats_section(brokers: list[str], mode: Mode) -> tuple[str, dict[str, dict[float | None, list[Timed]]]]:
    lines = [
        "| broker | messages | rounds | `stats_interval=10` msg/s (median) | `None` msg/s (median) | ratio "
        "| CPU us/msg 10 vs None | paired ratios (min-max) |",
        "|---|---:|---:|---:|---:|---:|---|---|",
    ]
    found: dict[str, dict[float | None, list[Timed]]] = {}
    for broker in brokers:
        if broker not in ("memory", "rabbitmq"):
            continue
        async with broker_url(broker) as url:
            if broker == "rabbitmq":
                url += f"{sep(url)}prefetch=100"  # as the other consume benchmarks
            runs: dict[float | None, list[Timed]] = {10.0: [], None: []}
            for r in range(mode.stats_rounds):
                order: list[float | None] = [10.0, None] if r % 2 == 0 else [None, 10.0]
                for interval in order:
                    name = f"stats.{uuid.uuid4().hex[:8]}"
                    filler = Bus.from_url(url, service="fill", stats_interval=None)
                    async with filler:
                        await fill_with(filler, name, mode.consume_n)
                    runs[interval].append(await stats_consume(url, name, mode.consume_n, interval))
                    await drop_queue(url, name)
            found[broker] = runs
            on, off = median_timed(runs[10.0]), median_timed(runs[None])
            pairs = [a.rate / b.rate for a, b in zip(runs[10.0], runs[None], strict=True)]
            lines.append(
                f"| {broker} | {mode.consume_n:,} | {mode.stats_rounds} | {on.rate:,.0f} | {off.rate:,.0f} "
                f"| {on.rate / off.rate:.3f} | {on.cpu_us:.1f} vs {off.cpu_us:.1f} "
                f"| {min(pairs):.3f}-{max(pairs):.3f} |"
            )
    return "\n".join(lines), found


async def profile_stats(n: int) -> str:
    """Own time per area consuming ``n`` memory:// messages with stats on and off, under cProfile."""
    per: dict[str, dict[str, float]] = {}
    for label, interval in (("stats_interval=10", 10.0), ("stats_interval=None", None)):
        async with broker_url("memory") as url:
            name = f"stats.{uuid.uuid4().hex[:8]}"
            async with Bus.from_url(url, service="fill", stats_interval=None) as filler:
                await fill_with(filler, name, n)
            profiler = cProfile.Profile()
            profiler.enable()
            await stats_consume(url, name, n, interval)
            profiler.disable()
        per[label] = by_area(pstats.Stats(profiler), OP_AREAS)
    labels = list(per)
    areas = sorted({a for p in per.values() for a in p}, key=lambda a: -per[labels[0]].get(a, 0.0))
    lines = ["| area (own time) | " + " | ".join(f"{lab}: us per message" for lab in labels) + " |"]
    lines.append("|---|" + "---:|" * len(labels))
    for area in areas:
        lines.append(f"| {area} | " + " | ".join(f"{per[lab].get(area, 0.0) / n * 1e6:.2f}" for lab in labels) + " |")
    return "\n".join(lines)


# -- profile ------------------------------------------------------------------------------------------


async def profile_replay(broker: str, n: int) -> str:
    """cProfile of one replay of ``n`` dead letters on ``broker`` by messagebus and by the raw
    client (its connection setup included): own time per area and socket writes per message,
    and each one's top functions."""
    runs: list[tuple[str, cProfile.Profile, Timed]] = []
    async with broker_url(broker) as url:
        for label in ("messagebus", "raw"):
            if label == "raw" and broker not in RAW:
                continue
            name = f"op.prof.{uuid.uuid4().hex[:8]}"
            profiler = cProfile.Profile()
            try:
                await make_dead_letters(url, name, n)
                if label == "raw":
                    profiler.enable()
                    timed = await RAW[broker][1](url, name, n)
                    profiler.disable()
                else:
                    timed = await bus_replay(url, name, n, profiler)
            finally:
                await cleanup(url, name)
            runs.append((label, profiler, timed))
    per = {label: by_area(pstats.Stats(profiler), OP_AREAS) for label, profiler, _ in runs}
    labels = list(per)
    areas = sorted({a for p in per.values() for a in p}, key=lambda a: -per[labels[0]].get(a, 0.0))
    lines = [
        f"{n:,} dead letters replayed on {broker} under cProfile (slows Python code about 2x: compare "
        "the columns, not with the unprofiled rates): "
        + ", ".join(f"{label} {timed.seconds:.2f} s" for label, _, timed in runs)
        + ".\n",
        "| area (own time) | " + " | ".join(f"{label}: us per message" for label in labels) + " |",
        "|---|" + "---:|" * len(labels),
    ]
    for area in areas:
        lines.append(f"| {area} | " + " | ".join(f"{per[lab].get(area, 0.0) / n * 1e6:,.1f}" for lab in labels) + " |")
    writes = " | ".join(f"{socket_writes(pstats.Stats(profiler)) / n:.2f}" for _, profiler, _ in runs)
    lines.append(f"| socket writes per message | {writes} |")
    tops = []
    for label, profiler, _ in runs:
        stream = io.StringIO()
        pstats.Stats(profiler, stream=stream).sort_stats("tottime").print_stats(20)
        tops.append(f"#### {label}\n\n```\n{stream.getvalue()}\n```")
    return "\n".join(lines) + "\n\n" + "\n\n".join(tops)


# -- main ---------------------------------------------------------------------------------------


async def replay_and_peek(brokers: list[str], mode: Mode, sections: list[str]) -> tuple[str, str]:
    results = []
    for broker in brokers:
        try:
            results.append(await replay_broker(broker, mode, "peek" in sections, "replay" in sections))
        except Exception as exc:  # one broker's failure must not lose the others' figures
            print(f"replay/peek on {broker} failed: {exc!r}", file=sys.stderr)
    return replay_table([r for r in results if r.bus], mode.dead), peek_table(results, mode.dead)


async def amain(args: argparse.Namespace) -> str:
    mode = Mode(args.quick)
    mode.consume_n = args.messages or mode.consume_n
    mode.stats_rounds = args.stats_rounds or mode.stats_rounds
    brokers = args.brokers.split(",") if args.brokers else BROKERS
    sections = args.sections or SECTIONS
    if args.workers:
        import messagebus._dead_letters as dead_letters

        dead_letters._WORKERS = args.workers  # an experiment: not what ships
    if args.profile == "replay":
        return await profile_replay(brokers[0] if args.brokers else "rabbitmq", mode.dead)
    if args.profile == "stats":
        return await profile_stats(mode.consume_n)
    parts = []
    if "replay" in sections or "peek" in sections:
        load_before = load()
        replay, peek = await replay_and_peek(brokers, mode, sections)
        if "replay" in sections:
            parts.append(
                "### Dead-letter replay\n\n"
                f"{mode.dead:,} dead letters (made by a consumer raising `Reject`) replayed into their "
                f"queue, {mode.rounds} rounds, messagebus and the raw client alternating, fresh dead "
                "letters each round. messagebus: `replay_dead_letters` from the call to its return (a "
                "started bus; the time includes the depth lookup, the DLQ consumer's start and stop). "
                "Raw: from opening its DLQ consumer to the last ack. Both publish each message with a "
                "broker confirm before acking it. CPU: this process. "
                f"Load before: {load_before}; after: {load()}.\n\n{replay}\n"
            )
        if "peek" in sections:
            parts.append(
                "### Dead-letter peek\n\n"
                f"`peek_dead_letters(dlq, limit=10)` {PEEKS} times on a DLQ of {mode.dead:,} (nothing "
                "removed: each look subscribes, holds 10, stops the consumer, which hands them back); "
                f"`queue_depth(dlq)` timed alone, {PEEKS} times. No raw equivalent.\n\n{peek}\n"
            )
    if "stats" in sections:
        load_before = load()
        table, _ = await stats_section(brokers, mode)
        parts.append(
            "### What the stats publisher costs\n\n"
            f"A pre-filled queue of {mode.consume_n:,} consumed by a counting handler, a bus with the "
            "default `stats_interval=10` against one with `None`, interleaved rounds (order "
            "alternating); first handled to last (a snapshot is published after start and while "
            "stopping; the per-message part is the Settler's counters and duration ring). RabbitMQ "
            f"with `?prefetch=100`. Load before: {load_before}; after: {load()}.\n\n{table}\n"
        )
    return "\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("sections", nargs="*", help=f"default: all of {SECTIONS}")
    parser.add_argument("--quick", action="store_true", help="CI mode: a few seconds per case")
    parser.add_argument("--brokers", help=f"comma-separated, default all of {','.join(BROKERS)}")
    parser.add_argument("--profile", choices=["replay", "stats"], help="cProfile one replay (first broker) or stats")
    parser.add_argument("--messages", type=int, help="messages per stats round (default 20,000; --quick 1,000)")
    parser.add_argument("--stats-rounds", type=int, help="stats rounds (default 6; --quick 2)")
    parser.add_argument("--workers", type=int, help="experiment: the replay's consumer slots (default 32)")
    args = parser.parse_args()
    unknown = set(args.sections) - set(SECTIONS) or set(args.brokers.split(",") if args.brokers else []) - set(BROKERS)
    if unknown:
        parser.error(f"unknown {sorted(unknown)}: sections are {SECTIONS}, brokers {BROKERS}")
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    uptime = subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    # One error line per dead-lettered message while making them: noise, and CPU in the way.
    logging.getLogger("messagebus").setLevel(logging.CRITICAL)
    text = asyncio.run(amain(args))
    print(text)
    if (
        args.quick
        or args.profile
        or args.sections
        or args.brokers
        or args.workers
        or args.messages
        or args.stats_rounds
    ):
        return  # only full runs of everything are written to results/
    # The hand-written analysis below the tables survives a new run (it names its run's figures).
    previous = RESULTS / "operating.md"
    kept = previous.read_text().partition(ANALYSIS)[2] if previous.exists() else ""
    write(
        "operating",
        "## Operating tools: dead-letter replay and peek, stats cost\n\n"
        f"{machine()}; started {started}, full mode. "
        f"{versions('aio-pika', 'aiokafka', 'redis', 'nats-py')}. "
        f"`python -m benchmarks.bench_operating`. `uptime` at the start: `{uptime}` (other helpers' test "
        f"runs share the machine).\n\n{text}" + (f"\n{ANALYSIS}{kept}" if kept else ""),
    )


if __name__ == "__main__":
    main()
