"""Messaging patterns (issue 17): request/reply, batch handlers, delayed delivery, one run.

    python -m benchmarks.bench_patterns                 # full: 15 s per request case, 5 s delays too
    python -m benchmarks.bench_patterns --quick         # CI: a few seconds per case
    python -m benchmarks.bench_patterns request batch   # only some sections (request, batch, delay)
    python -m benchmarks.bench_patterns --brokers memory,rabbitmq
    python -m benchmarks.bench_patterns --profile 10    # cProfile of the RabbitMQ request path, 10 s each
    python -m benchmarks.bench_patterns --faststream-python /tmp/fs/bin/python

Brokers: RabbitMQ, Redis and NATS on the machine's servers (127.0.0.1); Kafka (Tansu, memory
storage), moto (SQS) and the Pub/Sub emulator started here as the other benchmarks do.

Request/reply: callers loop ``request -> reply`` for a fixed time after a warm-up, 1 and 32 at
once; each round trip's time is a sample; round trips/s = samples / elapsed. The responder
returns a small JSON object. Contenders, each with a caller and a responder connection:

- messagebus ``bus.request(queue, payload, reply_type=dict)`` against ``bus.consume(queue)``
  (concurrency 32): request and reply are confirmed sends, the reply goes to the caller bus's
  reply queue (``<service>.replies.<hex>``, one per bus, made on the first request and consumed
  through the transport's normal contract);
- raw aio-pika with RabbitMQ direct reply-to (``amq.rabbitmq.reply-to``, consumed no-ack on the
  caller's channel, correlation id in the AMQP property): with publisher confirms and a
  persistent request on a durable queue (the baseline), and without confirms (the floor: the
  fastest raw way); and raw with messagebus's reply design (a durable reply queue per caller,
  persistent replies acked after use), which separates the cost of the design from the code's;
- FastStream's ``RabbitBroker.request`` (direct reply-to; its producer takes a lock per
  request, so concurrent callers are served one at a time) against a FastStream subscriber
  returning the reply, in the same run (a child process: ``--faststream-python``, default this
  python when it has FastStream);
- raw aiokafka: a request topic and a reply topic, the correlation id in a header; the
  responder's consumer (a group) produces the reply (acks=all) and commits, the caller's
  consumer (assigned the reply partition, no group) completes the waiting future. Every Kafka
  consumer, raw and messagebus, has ``fetch_max_wait_ms=5``: Tansu answers a held fetch only
  after half its remaining wait (see the latency section), which would otherwise dominate.

The first request is timed on its own (the reply queue or the reply-to consumer is made then).

Batch consume: a queue pre-filled with the same messages (written by messagebus), consumed by
``bus.consume(queue, batch=100)`` with a ``list[dict]`` handler and by a single-message handler
(concurrency 1 both; RabbitMQ ``?prefetch=100`` both); from the first message handled to the
last; the handler only counts, or awaits 1 ms per call (one database write per call).

Delay accuracy: N messages sent one by one over a fifth of the delay with ``delay=`` 1 s (and
5 s in full mode), on every broker; lateness = when the handler ran minus the due time in the message
(``messagebus-deliver-at``, epoch ms, written by the sender): how late after the due time each
is handled.

Full runs (no ``--quick``, every section and broker) write ``results/patterns.md``, with the
load average before and after each section (the machine may be shared) and, for RabbitMQ, the
request path's own time per area under cProfile (messagebus next to raw aio-pika).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import functools
import io
import json
import os
import pstats
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from benchmarks._common import Count, latency_ms, machine, versions, write
from messagebus import Bus, Envelope

RABBIT = "amqp://guest:guest@127.0.0.1:5672/"
REDIS = "redis://127.0.0.1:6379/0"
NATS = "nats://127.0.0.1:4222"
BROKERS = ["memory", "rabbitmq", "kafka", "sqs", "pubsub", "redis", "nats"]
SECTIONS = ["request", "batch", "delay"]
CALLERS = (1, 32)
KAFKA_FETCH = "fetch_max_wait_ms=5"
DELIVER_AT = "messagebus-deliver-at"


@dataclass
class Mode:
    """How long each case runs: ``--quick`` (CI, a few seconds a case) or full."""

    quick: bool
    seconds: float = field(init=False)  # timed part of each request/reply case
    warmup: float = field(init=False)
    batch_n: int = field(init=False)
    delay_n: int = field(init=False)
    delays: tuple[float, ...] = field(init=False)
    rounds: int = field(init=False)  # request/reply: the timed seconds are split in rounds
    callers: tuple[int, ...] = CALLERS

    def __post_init__(self) -> None:
        self.seconds = 2.0 if self.quick else 15.0
        self.rounds = 1 if self.quick else 3
        self.warmup = 0.5 if self.quick else 1.0
        self.batch_n = 5_000 if self.quick else 50_000
        self.delay_n = 50 if self.quick else 500
        self.delays = (1.0,) if self.quick else (1.0, 5.0)


def sep(url: str) -> str:
    return "&" if "?" in url else "?"


# -- request/reply: the driver ----------------------------------------------------------------

Call = Callable[[int], Awaitable[None]]


@dataclass
class Window:
    """One timed window of one case: each round trip's seconds, and the process's CPU."""

    samples: list[float]
    seconds: float
    cpu: float


async def drive(
    call: Call, callers: int, warmup: float, seconds: float, profiler: cProfile.Profile | None = None
) -> Window:
    """``callers`` tasks each loop ``call(i)`` (i unique); the first ``warmup`` seconds are
    not counted, then ``seconds`` are (``profiler``, if given, runs for those only)."""
    counter = iter(range(1 << 40))
    samples: list[float] = []
    loop = asyncio.get_running_loop()
    measure_from = loop.time() + warmup
    stop_at = measure_from + seconds

    async def caller() -> None:
        while True:
            t0 = time.perf_counter()
            if loop.time() >= stop_at:
                return
            await call(next(counter))
            if loop.time() >= measure_from:
                samples.append(time.perf_counter() - t0)

    cpu: list[float] = []
    loop.call_at(measure_from, lambda: cpu.append(time.process_time()))
    if profiler is not None:
        loop.call_at(measure_from, profiler.enable)
    await asyncio.gather(*(caller() for _ in range(callers)))
    if profiler is not None:
        profiler.disable()
    return Window(samples, seconds, time.process_time() - cpu[0])


@dataclass
class RR:
    """One request/reply case (a contender, a number of callers): its windows pooled."""

    trips: int
    seconds: float
    p50: float
    p99: float
    cpu_us: float  # CPU of the process (caller and responder) per round trip

    @property
    def rate(self) -> float:
        return self.trips / self.seconds

    @classmethod
    def pool(cls, windows: list[Window]) -> RR:
        samples = [s for w in windows for s in w.samples]
        p50, p99 = latency_ms(samples)
        cpu_us = sum(w.cpu for w in windows) / len(samples) * 1e6
        return cls(len(samples), sum(w.seconds for w in windows), p50, p99, cpu_us)


@dataclass
class Contender:
    """A request/reply contender's figures: first request (ms) and one RR per caller count."""

    name: str
    first_ms: float
    cases: dict[int, RR]
    note: str = ""


@dataclass
class Ready:
    """A contender set up and past its first request: that request's ms and the call."""

    first_ms: float
    call: Call


Setup = Callable[[], contextlib.AbstractAsyncContextManager[Ready]]


async def timed_first(call: Call, first: Callable[[], Awaitable[None]] | None = None) -> Ready:
    """Run the first request (after ``first``, what the caller makes on its first request),
    timing both together."""
    t0 = time.perf_counter()
    if first is not None:
        await first()
    await call(-1)
    return Ready((time.perf_counter() - t0) * 1000, call)


async def compare(entries: list[tuple[str, str, Setup]], mode: Mode) -> list[Contender]:
    """Set every contender up (timing its first request), then run the cases in
    ``mode.rounds`` rounds, the contenders interleaved (their order reversed every other
    round) so that a change of load on a shared machine falls on all of them alike."""
    async with contextlib.AsyncExitStack() as stack:
        ready = [await stack.enter_async_context(setup()) for _, _, setup in entries]
        windows: list[dict[int, list[Window]]] = [{c: [] for c in mode.callers} for _ in entries]
        per_round = mode.seconds / mode.rounds
        for r in range(mode.rounds):
            order = list(range(len(entries)))
            for i in order if r % 2 == 0 else reversed(order):
                for c in mode.callers:
                    windows[i][c].append(await drive(ready[i].call, c, mode.warmup, per_round))
    return [
        Contender(name, r.first_ms, {c: RR.pool(w) for c, w in win.items()}, note)
        for (name, note, _), r, win in zip(entries, ready, windows, strict=True)
    ]


# -- request/reply: messagebus ----------------------------------------------------------------


@contextlib.asynccontextmanager
async def bus_contender(url: str) -> AsyncIterator[Ready]:
    """messagebus: a responder bus consuming a queue (concurrency 32, replies ``{"i": i}``)
    and a caller bus calling ``request`` on it, each with its own connection."""
    queue = f"rr.{uuid.uuid4().hex[:8]}"
    responder = Bus.from_url(url, service="responder")

    @responder.consume(queue, concurrency=32)
    async def answer(data: dict[str, Any]) -> dict[str, Any]:
        return {"i": data["i"]}

    caller = Bus.from_url(url, service="caller")

    async def call(i: int) -> None:
        reply = await caller.request(queue, {"i": i}, reply_type=dict, timeout=30)
        if reply["i"] != i:
            raise AssertionError(f"request {i} got the reply to {reply['i']}")

    async with responder, caller:
        yield await timed_first(call)
    await drop_queue(url, queue)


# -- request/reply: raw aio-pika ------------------------------------------------------------

#: The raw aio-pika variants: name, note.
RAW_RABBIT = {
    "direct": (
        "raw aio-pika, direct reply-to, confirms, persistent request (baseline)",
        "the guarantees of messagebus's request; reply over direct reply-to",
    ),
    "floor": ("raw aio-pika, direct reply-to, no confirms, transient (floor)", "the fastest raw way"),
    "queue": (
        "raw aio-pika, per-caller durable reply queue, confirms, persistent both ways",
        "messagebus's reply design done raw: separates the design's cost from the code's",
    ),
}


@contextlib.asynccontextmanager
async def raw_rabbitmq_contender(url: str, style: str) -> AsyncIterator[Ready]:
    """Raw aio-pika request/reply in ``style`` (a key of :data:`RAW_RABBIT`): a responder
    connection (prefetch 32, replies then acks) and a caller connection."""
    import aio_pika

    confirm = style != "floor"
    queue_name = f"rr.raw.{uuid.uuid4().hex[:8]}"
    server = await aio_pika.connect(url)
    client = await aio_pika.connect(url)
    reply_name = "amq.rabbitmq.reply-to"
    try:
        s_channel = await server.channel(publisher_confirms=confirm)
        await s_channel.set_qos(prefetch_count=32)
        queue = await s_channel.declare_queue(queue_name, durable=confirm, auto_delete=True)
        mode_ = aio_pika.DeliveryMode.PERSISTENT if confirm else aio_pika.DeliveryMode.NOT_PERSISTENT

        async def on_request(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            reply = json.dumps({"i": json.loads(message.body)["i"]}).encode()
            await s_channel.default_exchange.publish(
                aio_pika.Message(
                    reply, correlation_id=message.correlation_id, content_type="application/json", delivery_mode=mode_
                ),
                routing_key=message.reply_to or "",
                mandatory=False,  # as messagebus's replies: the caller may be gone on purpose
            )
            await message.ack()

        await queue.consume(on_request)
        c_channel = await client.channel(publisher_confirms=confirm)
        pending: dict[str, asyncio.Future[bytes]] = {}

        async def on_reply(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            future = pending.pop(message.correlation_id or "", None)
            if future is not None and not future.done():
                future.set_result(message.body)
            if style == "queue":
                await message.ack()

        async def first() -> None:
            nonlocal reply_name
            if style == "queue":
                r_channel = await client.channel()
                await r_channel.set_qos(prefetch_count=32)
                replies = await r_channel.declare_queue(f"rr.raw.replies.{uuid.uuid4().hex[:8]}", durable=True)
                reply_name = replies.name
                await replies.consume(on_reply)
            else:
                reply_to = await c_channel.declare_queue(reply_name, passive=True)
                await reply_to.consume(on_reply, no_ack=True)

        loop = asyncio.get_running_loop()

        async def call(i: int) -> None:
            cid = uuid.uuid4().hex
            future = pending[cid] = loop.create_future()
            try:
                await c_channel.default_exchange.publish(
                    aio_pika.Message(
                        json.dumps({"i": i}).encode(),
                        correlation_id=cid,
                        reply_to=reply_name,
                        delivery_mode=mode_,
                        content_type="application/json",
                    ),
                    routing_key=queue_name,
                )
                body = await asyncio.wait_for(future, 30)
            finally:
                pending.pop(cid, None)
            if json.loads(body)["i"] != i:
                raise AssertionError("crossed replies")

        yield await timed_first(call, first)
    finally:
        await client.close()
        if reply_name.startswith("rr.raw.replies."):
            await s_channel.queue_delete(reply_name)
        await server.close()


# -- request/reply: FastStream (child process) ------------------------------------------------

FASTSTREAM_SCRIPT = r"""
import asyncio, json, sys, time
from importlib import metadata as md
from faststream.rabbit import RabbitBroker, RabbitQueue
url, queue, seconds, warmup, callers = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
broker = RabbitBroker(url, logger=None)

@broker.subscriber(RabbitQueue(queue, auto_delete=True))
async def answer(data: dict) -> dict:
    return {"i": data["i"]}

async def drive(n_callers):
    counter = iter(range(1 << 40))
    samples = []
    loop = asyncio.get_running_loop()
    measure_from = loop.time() + warmup
    stop_at = measure_from + seconds
    cpu = []
    loop.call_at(measure_from, lambda: cpu.append(time.process_time()))
    async def caller():
        while True:
            t0 = time.perf_counter()
            if loop.time() >= stop_at:
                return
            i = next(counter)
            reply = await (await broker.request({"i": i}, queue, timeout=30)).decode()
            if reply["i"] != i:
                raise AssertionError("crossed replies")
            if loop.time() >= measure_from:
                samples.append(time.perf_counter() - t0)
    await asyncio.gather(*(caller() for _ in range(n_callers)))
    return {"samples": samples, "cpu": time.process_time() - cpu[0]}

async def main():
    async with broker:
        await broker.start()
        t0 = time.perf_counter()
        await (await broker.request({"i": -1}, queue, timeout=30)).decode()
        first = time.perf_counter() - t0
        cases = {c: await drive(int(c)) for c in callers.split(",")}
    print(json.dumps({"first": first, "cases": cases, "version": md.version("faststream")}))

asyncio.run(main())
"""


def faststream_python(given: str | None) -> str | None:
    """The python to run FastStream with: ``--faststream-python``, else this one if it has
    FastStream's RabbitMQ extra (the ``bench`` nox session installs it), else none."""
    if given:
        return given
    try:
        import faststream.rabbit  # noqa: F401
    except ImportError:
        return None
    return sys.executable


async def faststream_request(url: str, mode: Mode, python: str) -> Contender | None:
    queue = f"rr.fs.{uuid.uuid4().hex[:8]}"
    args = [url, queue, str(mode.seconds), str(mode.warmup), ",".join(map(str, mode.callers))]
    proc = await asyncio.create_subprocess_exec(
        python, "-c", FASTSTREAM_SCRIPT, *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        print(f"FastStream run failed: {err.decode(errors='replace')[-2000:]}", file=sys.stderr)
        return None
    result = json.loads(out.decode().strip().splitlines()[-1])
    cases = {}
    for c in mode.callers:
        case = result["cases"][str(c)]
        cases[c] = RR.pool([Window(case["samples"], mode.seconds, case["cpu"])])
    return Contender(
        f"FastStream {result['version']} `broker.request` (direct reply-to)",
        result["first"] * 1000,
        cases,
        "one request at a time (a lock in its producer)",
    )


# -- request/reply: raw aiokafka ---------------------------------------------------------------


def kafka_servers(url: str) -> str:
    return url.split("://", 1)[1].split("?", 1)[0]


@contextlib.asynccontextmanager
async def raw_kafka_contender(url: str) -> AsyncIterator[Ready]:
    """Raw aiokafka request/reply: a request topic consumed by a responder group that
    produces each reply (acks=all) and commits; a reply topic made on the first request, its
    partition assigned to the caller's consumer (no group), read from its end."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    servers = kafka_servers(url)
    base = f"rr.raw.{uuid.uuid4().hex[:8]}"
    requests, replies = f"{base}.requests", f"{base}.replies"
    admin = AIOKafkaAdminClient(bootstrap_servers=servers)
    await admin.start()
    await admin.create_topics([NewTopic(requests, 1, 1)])
    await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=servers, acks="all", linger_ms=0)
    server = AIOKafkaConsumer(
        requests,
        bootstrap_servers=servers,
        group_id=requests,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=5,
    )
    client = AIOKafkaConsumer(bootstrap_servers=servers, enable_auto_commit=False, fetch_max_wait_ms=5)
    await producer.start()
    await server.start()
    await client.start()
    pending: dict[bytes, asyncio.Future[bytes]] = {}
    tasks: set[asyncio.Future[Any]] = set()
    loop = asyncio.get_running_loop()

    async def serve() -> None:
        while True:
            batch = await server.getmany(timeout_ms=500)
            for tp, records in batch.items():
                sends = []
                for record in records:
                    cid = dict(record.headers).get("correlation-id", b"")
                    reply = json.dumps({"i": json.loads(record.value)["i"]}).encode()
                    sends.append(await producer.send(replies, reply, headers=[("correlation-id", cid)]))
                await asyncio.gather(*sends)
                await server.commit({tp: records[-1].offset + 1})

    async def listen() -> None:
        while True:
            batch = await client.getmany(timeout_ms=500)
            for records in batch.values():
                for record in records:
                    future = pending.pop(dict(record.headers).get("correlation-id", b""), None)
                    if future is not None and not future.done():
                        future.set_result(record.value)

    async def first() -> None:
        # The caller's reply topic and its consumer: made on the first request.
        admin = AIOKafkaAdminClient(bootstrap_servers=servers)
        await admin.start()
        await admin.create_topics([NewTopic(replies, 1, 1)])
        await admin.close()
        tp = TopicPartition(replies, 0)
        client.assign([tp])
        await client.seek_to_end(tp)
        await client.position(tp)
        tasks.add(asyncio.ensure_future(listen()))

    async def call(i: int) -> None:
        cid = uuid.uuid4().hex.encode()
        future = pending[cid] = loop.create_future()
        try:
            await producer.send_and_wait(requests, json.dumps({"i": i}).encode(), headers=[("correlation-id", cid)])
            body = await asyncio.wait_for(future, 30)
        finally:
            pending.pop(cid, None)
        if json.loads(body)["i"] != i:
            raise AssertionError("crossed replies")

    tasks.add(asyncio.ensure_future(serve()))
    try:
        yield await timed_first(call, first)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await client.stop()
        await server.stop()
        await producer.stop()


def request_table(rows: list[Contender], baselines: dict[str, str]) -> str:
    """One line per contender and caller count; ``baselines`` maps a contender to the name of
    the raw contender its round trips are compared with."""
    by_name = {r.name: r for r in rows}
    lines = [
        "| contender | first request ms | callers | round trips/s | p50 ms | p99 ms | CPU us per round trip "
        "| vs baseline (rate) | note |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        base = by_name.get(baselines.get(r.name, ""))
        for c, case in r.cases.items():
            ratio = f"{case.rate / base.cases[c].rate:.2f}x" if base else ""
            first = f"{r.first_ms:.1f}" if c == CALLERS[0] else ""
            cpu = f"{case.cpu_us:,.0f}" if case.cpu_us is not None else ""
            figures = f"{case.rate:,.0f} | {case.p50:.2f} | {case.p99:.2f} | {cpu}"
            lines.append(f"| {r.name} | {first} | {c} | {figures} | {ratio} | {r.note} |")
    return "\n".join(lines)


# -- brokers ------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def broker_url(name: str) -> AsyncIterator[str]:
    """The messagebus URL of broker ``name``, starting it (and stopping it after) where the
    other benchmarks do."""
    if name == "memory":
        yield f"memory://patterns-{uuid.uuid4().hex[:6]}"
    elif name == "rabbitmq":
        yield RABBIT
    elif name == "kafka":
        from benchmarks.bench_kafka import OPTIONS, tansu

        with tansu() as url:
            yield f"{url}?{OPTIONS}&{KAFKA_FETCH}"
    elif name == "sqs":
        from benchmarks.bench_sqs import FAKE_ENV, start_moto

        for key, value in FAKE_ENV.items():
            os.environ.setdefault(key, value)
        proc, endpoint = start_moto()
        try:
            yield f"sqs://?region=us-east-1&endpoint_url={endpoint}"
        finally:
            proc.kill()
            proc.wait()
    elif name == "pubsub":
        from benchmarks.bench_pubsub import start_emulator

        emulator, pproc = start_emulator()
        try:
            yield f"pubsub://patterns?emulator_host={emulator}"
        finally:
            os.killpg(pproc.pid, signal.SIGKILL)
            pproc.wait()
    elif name == "redis":
        from benchmarks.bench_redis import cleanup, prefixed

        prefix, url = prefixed(REDIS)
        try:
            yield url
        finally:
            await cleanup(REDIS, prefix)
    elif name == "nats":
        yield NATS
    else:
        raise SystemExit(f"unknown broker {name!r}: one of {BROKERS}")


async def request_section(brokers: list[str], mode: Mode, fs_python: str | None) -> str:
    rows: list[Contender] = []
    baselines: dict[str, str] = {}
    if "memory" in brokers:
        async with broker_url("memory") as url:
            entry = ("messagebus memory:// `bus.request`", "in-process, no baseline", lambda: bus_contender(url))
            rows += await compare([entry], mode)
    if "rabbitmq" in brokers:
        entries: list[tuple[str, str, Setup]] = [
            (*RAW_RABBIT[style], functools.partial(raw_rabbitmq_contender, RABBIT, style))
            for style in ("direct", "floor", "queue")
        ]
        entries.append(
            (
                "messagebus amqp:// `bus.request`",
                "per-bus durable reply queue, persistent reply",
                functools.partial(bus_contender, RABBIT),
            )
        )
        found = await compare(entries, mode)
        rows += found
        for row in found[1:]:
            baselines[row.name] = found[0].name
        if fs_python:
            fs = await faststream_request(RABBIT, mode, fs_python)
            if fs is not None:
                rows.append(fs)
                baselines[fs.name] = found[0].name
    if "kafka" in brokers:
        async with broker_url("kafka") as url:
            found = await compare(
                [
                    (
                        "raw aiokafka, request topic + reply topic (baseline)",
                        "acks=all both ways, commit after the reply",
                        functools.partial(raw_kafka_contender, url),
                    ),
                    (
                        "messagebus kafka:// `bus.request`",
                        "per-bus reply topic",
                        functools.partial(bus_contender, url),
                    ),
                ],
                mode,
            )
            rows += found
            baselines[found[1].name] = found[0].name
    return request_table(rows, baselines)


# -- batch consume ----------------------------------------------------------------------------


async def fill_with(bus: Bus, queue: str, n: int) -> None:
    """Send ``n`` small JSON messages to ``queue`` in confirmed batches of 1,000."""
    for start in range(0, n, 1000):
        await bus.send_many(queue, [{"id": i, "name": "widget"} for i in range(start, min(start + 1000, n))])


async def consume(url: str, queue: str, n: int, batch: int | None, io: float) -> float:
    """Messages/s consuming ``n`` messages of ``queue``, from first handled to last; each
    handler call awaits ``io`` seconds (a stand-in for a database write per call)."""
    count = Count(n)
    bus = Bus.from_url(url, service="batch")
    if batch is None:

        @bus.consume(queue)
        async def one(data: dict[str, Any]) -> None:
            if io:
                await asyncio.sleep(io)
            count.hit()

    else:

        @bus.consume(queue, batch=batch, batch_timeout=0.05)
        async def many(items: list[dict[str, Any]]) -> None:
            if io:
                await asyncio.sleep(io)
            for _ in items:
                count.hit()

    async with bus:
        await asyncio.wait_for(count.done.wait(), 600)
    return n / (count.last - count.first)


async def batch_section(brokers: list[str], mode: Mode) -> str:
    lines = [
        "| broker | handler work per call | messages | single handler msg/s | `batch=100` handler msg/s "
        "| batch vs single |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name in brokers:
        if name not in ("memory", "rabbitmq", "kafka"):
            continue
        async with broker_url(name) as url:
            if name == "rabbitmq":
                url += f"{sep(url)}prefetch=100"  # as bench_rabbitmq: else prefetch = concurrency (1)
            io_n = max(2_000, mode.batch_n // 10)
            for io, n, work in ((0.0, mode.batch_n, "none (count)"), (0.001, io_n, "1 ms awaited I/O")):
                rates: dict[int | None, float] = {}
                for batch in (None, 100):
                    queue = f"batch.{uuid.uuid4().hex[:8]}"
                    if name == "memory":
                        # One in-process broker: fill through a bus that stays up while the
                        # consumer bus (a second client of the same memory:// broker) drains it.
                        filler = Bus.from_url(url, service="fill")
                        async with filler:
                            await fill_with(filler, queue, n)
                            rates[batch] = await consume(url, queue, n, batch, io)
                    else:
                        filler = Bus.from_url(url, service="fill")
                        async with filler:
                            await fill_with(filler, queue, n)
                        rates[batch] = await consume(url, queue, n, batch, io)
                        await drop_queue(url, queue)
                single, batched = rates[None], rates[100]
                lines.append(f"| {name} | {work} | {n:,} | {single:,.0f} | {batched:,.0f} | {batched / single:.2f}x |")
    return "\n".join(lines)


async def drop_queue(url: str, queue: str) -> None:
    if url.startswith("amqp"):
        from benchmarks.bench_rabbitmq import delete

        await delete(url, queue)


# -- delay accuracy -----------------------------------------------------------------------------


async def delay_lateness(url: str, n: int, delay: float) -> tuple[float, float, float]:
    """p50, p99 and max ms between each message's due time and its handler call."""
    queue = f"delay.{uuid.uuid4().hex[:8]}"
    late: list[float] = []
    done = asyncio.Event()
    bus = Bus.from_url(url, service="delay")

    @bus.consume(queue, concurrency=32)
    async def handle(data: dict[str, Any], envelope: Envelope) -> None:
        late.append(time.time() - int(envelope.wire_headers[DELIVER_AT]) / 1000)
        if len(late) >= n:
            done.set()

    async with bus:
        # Spread over about a fifth of the delay, so that they fall due one by one.
        gap = delay / 5 / n
        for i in range(n):
            await bus.send(queue, {"i": i}, delay=delay)
            await asyncio.sleep(gap)
        await asyncio.wait_for(done.wait(), delay * 3 + 120)
    await drop_queue(url, queue)
    p50, p99 = latency_ms(late)
    return p50, p99, max(late) * 1000


async def delay_section(brokers: list[str], mode: Mode) -> str:
    lines = [
        "| broker | delay s | messages | late p50 ms | late p99 ms | late max ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in brokers:
        async with broker_url(name) as url:
            for delay in mode.delays:
                try:
                    p50, p99, worst = await delay_lateness(url, mode.delay_n, delay)
                except Exception as exc:  # one broker's failure must not lose the others' figures
                    print(f"delay on {name} failed: {exc!r}", file=sys.stderr)
                    lines.append(f"| {name} | {delay:g} | {mode.delay_n} | failed: {type(exc).__name__} | | |")
                    continue
                lines.append(f"| {name} | {delay:g} | {mode.delay_n} | {p50:.1f} | {p99:.1f} | {worst:.1f} |")
    return "\n".join(lines)


# -- profile --------------------------------------------------------------------------------------


#: Where a profiled function lives, by the first path fragment that matches its file.
AREAS = [
    ("messagebus_rabbitmq", "messagebus RabbitMQ adapter"),
    ("messagebus_kafka", "messagebus Kafka adapter"),
    ("aiokafka", "aiokafka"),
    ("messagebus/", "messagebus core"),
    ("aio_pika", "aio-pika"),
    ("aiormq", "aiormq"),
    ("pamqp", "pamqp (AMQP frames)"),
    ("asyncio", "asyncio"),
    ("json", "json"),
    ("pydantic", "pydantic"),
    ("uuid", "uuid"),
    ("opentelemetry", "opentelemetry"),
]


def by_area(stats: pstats.Stats, areas_of: list[tuple[str, str]] = AREAS) -> dict[str, float]:
    """Seconds of own time (tottime) per area of ``areas_of`` (path fragment, label; first
    match wins; "other": the rest, e.g. builtins such as the selector's poll)."""
    areas: dict[str, float] = {}
    raw: dict[tuple[str, int, str], tuple[int, int, float, float, object]] = stats.stats  # type: ignore[attr-defined]
    for (filename, _, function), (_, _, own, _, _) in raw.items():
        where = next((label for fragment, label in areas_of if fragment in filename), None)
        if where is None:
            where = "select/epoll (waiting)" if "poll" in function else "other (builtins, stdlib)"
        areas[where] = areas.get(where, 0.0) + own
    return areas


def socket_writes(stats: pstats.Stats) -> int:
    """How many times the profiled code called ``socket.send``."""
    raw: dict[tuple[str, int, str], tuple[int, int, float, float, object]] = stats.stats  # type: ignore[attr-defined]
    return sum(v[1] for (_, _, function), v in raw.items() if "'send' of '_socket.socket'" in function)


async def profile_request(seconds: float) -> tuple[str, str]:
    """cProfile of one caller's sequential requests for ``seconds`` through messagebus and
    through raw aio-pika (confirms; direct reply-to, and messagebus's reply design) on
    RabbitMQ, caller and responder both in this process: own time per area and per round
    trip (a markdown table), and the top functions of each. cProfile slows Python code down
    (about 2x here): compare the columns, not with the unprofiled figures."""
    runs: list[tuple[str, Setup]] = [
        ("messagebus amqp://", functools.partial(bus_contender, RABBIT)),
        ("raw aio-pika, direct reply-to", functools.partial(raw_rabbitmq_contender, RABBIT, "direct")),
        ("raw aio-pika, durable reply queue", functools.partial(raw_rabbitmq_contender, RABBIT, "queue")),
    ]
    results: list[tuple[str, int, dict[str, float], str]] = []
    writes: list[int] = []
    for name, setup in runs:
        profiler = cProfile.Profile()
        async with setup() as ready:
            window = await drive(ready.call, 1, 1.0, seconds, profiler)
        trips = len(window.samples)
        stream = io.StringIO()
        stats = pstats.Stats(profiler, stream=stream)
        stats.sort_stats("tottime").print_stats(30)
        results.append((name, trips, by_area(stats), stream.getvalue()))
        writes.append(socket_writes(stats))
    areas = sorted({a for _, _, per, _ in results for a in per}, key=lambda a: -results[0][2].get(a, 0.0))
    lines = [
        "| area (own time) | " + " | ".join(f"{name}: us per round trip" for name, *_ in results) + " |",
        "|---|" + "---:|" * len(results),
    ]
    for area in areas:
        cells = " | ".join(f"{per.get(area, 0.0) / trips * 1e6:,.0f}" for _, trips, per, _ in results)
        lines.append(f"| {area} | {cells} |")
    totals = " | ".join(
        f"{sum(v for k, v in per.items() if 'waiting' not in k) / trips * 1e6:,.0f}" for _, trips, per, _ in results
    )
    lines.append(f"| **total CPU (without waiting)** | {totals} |")
    cells = " | ".join(f"{w / r[1]:.1f}" for w, r in zip(writes, results, strict=True))
    lines.append(f"| socket writes per round trip | {cells} |")
    trips_line = ", ".join(f"{name}: {trips} round trips" for name, trips, _, _ in results)
    tops = "\n\n".join(f"#### {name}\n\n```\n{top}\n```" for name, _, _, top in results)
    return f"{trips_line} (1 caller, {seconds:g} s each, under cProfile).\n\n" + "\n".join(lines) + "\n", tops


# -- main ---------------------------------------------------------------------------------------


async def section(run: Awaitable[str]) -> str:
    """The section's table, or the error that stopped it (the other sections still run)."""
    try:
        return await run
    except Exception as exc:
        print(f"section failed: {exc!r}", file=sys.stderr)
        return f"(failed: {type(exc).__name__}: {exc})"


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (1 min) / {five:.1f} (5 min) on {os.cpu_count()} cores"


async def amain(args: argparse.Namespace) -> str:
    mode = Mode(args.quick)
    brokers = args.brokers.split(",") if args.brokers else BROKERS
    sections = args.sections or SECTIONS
    fs = faststream_python(args.faststream_python)
    if args.profile:
        summary, tops = await profile_request(args.profile)
        return f"{summary}\n{tops}"
    parts = []
    if "request" in sections:
        load_before = load()
        table = await section(request_section(brokers, mode, fs))
        parts.append(
            "### Request/reply\n\n"
            f"Callers loop request -> reply for {mode.seconds:g} s after a {mode.warmup:g} s warm-up; "
            "caller and responder in this process (each with its own connection), so the CPU column "
            "is both sides' per round trip. The vs-baseline column divides round trips/s by the raw "
            "client's with the same callers (RabbitMQ: raw aio-pika with direct reply-to, confirms and "
            "a persistent request; Kafka: raw aiokafka request + reply topics). First request: the "
            "caller's reply queue / reply topic / reply-to consumer is made then. Every Kafka consumer "
            f"has `{KAFKA_FETCH}` (Tansu). Load before: {load_before}; after: {load()}.\n\n{table}\n"
        )
        if "rabbitmq" in brokers and not mode.quick:
            summary, _ = await profile_request(10.0)
            parts.append(
                "### Where the time goes: the RabbitMQ request path under cProfile\n\n"
                "One caller, caller and responder in one process; own time per area per round trip "
                "(`python -m benchmarks.bench_patterns --profile 10` prints the top functions too). "
                f"{summary}"
            )
    if "batch" in sections:
        load_before = load()
        table = await section(batch_section(brokers, mode))
        parts.append(
            "### Batch consume\n\n"
            "The same pre-filled queue (written by messagebus) drained by a single-message handler "
            "(concurrency 1) and by a `batch=100` (`batch_timeout=0.05`, concurrency 1: one batch in "
            "flight) `list[dict]` handler; first handled to last. RabbitMQ with `?prefetch=100` for "
            "both (as in the RabbitMQ section; else the single handler's prefetch is 1). The handler "
            "either only counts or awaits 1 ms per call (a stand-in for one database write per call, "
            f"where batching pays). Load before: {load_before}; after: {load()}.\n\n{table}\n"
        )
    if "delay" in sections:
        load_before = load()
        table = await section(delay_section(brokers, mode))
        parts.append(
            "### Delay accuracy\n\n"
            f"{mode.delay_n} messages sent one by one over a fifth of the delay, each with `delay=`, "
            "to a queue consumed with concurrency 32; lateness = handler call time minus the due time "
            f"the sender wrote (`{DELIVER_AT}`, ms). No raw baseline: the raw clients have no common "
            f"delayed delivery. Load before: {load_before}; after: {load()}.\n\n{table}\n"
        )
    return "\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("sections", nargs="*", help=f"default: all of {SECTIONS}")
    parser.add_argument("--quick", action="store_true", help="CI mode: a few seconds per case")
    parser.add_argument("--brokers", help=f"comma-separated, default all of {','.join(BROKERS)}")
    parser.add_argument("--faststream-python", help="python of a virtualenv with faststream[rabbit] installed")
    parser.add_argument("--profile", type=float, metavar="SECONDS", help="profile the RabbitMQ request path instead")
    args = parser.parse_args()
    unknown = set(args.sections) - set(SECTIONS) or set(args.brokers.split(",") if args.brokers else []) - set(BROKERS)
    if unknown:
        parser.error(f"unknown {sorted(unknown)}: sections are {SECTIONS}, brokers {BROKERS}")
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    text = asyncio.run(amain(args))
    print(text)
    if args.quick or args.profile or args.sections or args.brokers:
        return  # only full runs of everything are written to results/
    command = "python -m benchmarks.bench_patterns"
    if args.faststream_python:
        command += " --faststream-python <venv with faststream[rabbit]>/bin/python"
    write(
        "patterns",
        f"## Messaging patterns: request/reply, batch handlers, delayed delivery\n\n"
        f"{machine()}; started {started}, full mode. "
        f"{versions('aio-pika', 'aiokafka', 'faststream', 'boto3', 'google-cloud-pubsub', 'redis', 'nats-py')}. "
        f"`{command}`.\n\n{text}",
    )


if __name__ == "__main__":
    main()
