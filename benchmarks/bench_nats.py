"""NATS JetStream: messagebus vs raw nats-py, same workload, one run.

    python -m benchmarks.bench_nats                  # full run
    python -m benchmarks.bench_nats --quick          # smoke run, a few seconds

Workloads (small JSON messages, file storage, on the server of --url):

- consume: a work-queue stream pre-filled by messagebus (same bytes for everyone); per message
  JSON decode, a counting handler, ack. Raw = a nats-py pull subscription fetching 100 at a
  time. Timing starts at the first message handled and ends at the last.
- publish_many: batches of 1,000; raw nats-py ``publish_async`` for the batch, then every ack.
- latency: one message at a time, publish until the handler has it (the handler is waiting
  on an empty stream); p50 and p99. Raw = ``js.publish`` and a ``fetch(1)`` loop.

FastStream (``faststream[nats]``, in this process) does the same work through its NatsBroker:
consume with a durable pull subscriber (batch 100, acked after the handler) from a queue filled
by raw nats-py with the same JSON bodies and FastStream's ``content-type: application/json``;
publish as 1,000 concurrent ``broker.publish`` calls per batch (its NATS broker has no batch
publish), each awaiting JetStream's ack.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import nats
from nats.js.api import RetentionPolicy, StreamConfig

from benchmarks._common import Count, Row, latency_ms, machine, table, versions, write
from messagebus import Bus

DEFAULT_URL = "nats://127.0.0.1:4222"


def payload(i: int) -> dict[str, Any]:
    return {"id": i, "name": "widget", "price": 9.99}


def server(url: str) -> str:
    return url.split("?")[0]


async def fill(url: str, queue: str, n: int) -> None:
    bus = Bus.from_url(url, service="bench")
    async with bus:
        for start in range(0, n, 1000):
            await bus.send_many(queue, [payload(i) for i in range(start, min(start + 1000, n))])


async def delete(url: str, *streams: str) -> None:
    nc = await nats.connect(server(url))
    try:
        for stream in streams:
            with contextlib.suppress(Exception):
                await nc.jetstream().delete_stream(stream)
    finally:
        await nc.close()


def cpu(seconds: float, n: int) -> str:
    return f"{seconds / n * 1e6:.1f}"


# -- consume ---------------------------------------------------------------------------------


async def raw_consume(url: str, n: int) -> Row:
    queue = f"bench-raw-{uuid.uuid4().hex[:8]}"
    await fill(url, queue, n)
    count = Count(n)
    nc = await nats.connect(server(url))
    try:
        js = nc.jetstream()
        psub = await js.pull_subscribe(queue, durable="raw", stream=queue)
        while count.n < n:
            for msg in await psub.fetch(100, timeout=5):
                json.loads(msg.data)
                count.hit()
                await msg.ack()
    finally:
        await nc.close()
    await delete(url, queue)
    return Row(
        "nats-py raw pull loop (fetch 100)", n, count.last - count.first, cpu(count.cpu_last - count.cpu_first, n)
    )


async def bus_consume(url: str, n: int, concurrency: int) -> Row:
    queue = f"bench-bus-{uuid.uuid4().hex[:8]}"
    await fill(url, queue, n)
    count = Count(n)
    bus = Bus.from_url(url, service="bench")

    @bus.consume(queue, concurrency=concurrency)
    async def handle(data: dict[str, Any]) -> None:
        count.hit()

    async with bus:
        await count.done.wait()
    await delete(url, queue)
    row = f"messagebus consume (concurrency {concurrency})"
    return Row(row, n, count.last - count.first, cpu(count.cpu_last - count.cpu_first, n))


async def faststream_consume(url: str, n: int) -> Row:
    from faststream.nats import JStream, NatsBroker, PullSub

    queue = f"bench-fs-{uuid.uuid4().hex[:8]}"
    nc = await nats.connect(server(url))
    try:
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name=queue, subjects=[queue], retention=RetentionPolicy.WORK_QUEUE))
        headers = {"content-type": "application/json"}
        for s in range(0, n, 1000):
            await asyncio.gather(
                *[
                    await js.publish_async(queue, json.dumps(payload(i)).encode(), headers=headers)
                    for i in range(s, min(s + 1000, n))
                ]
            )
    finally:
        await nc.close()
    count = Count(n)
    broker = NatsBroker(server(url), logger=None)

    @broker.subscriber(queue, stream=JStream(queue, declare=False), durable="fs", pull_sub=PullSub(batch_size=100))
    async def handle(data: dict[str, Any]) -> None:
        count.hit()

    async with broker:
        await broker.start()
        await count.done.wait()
    await delete(url, queue)
    return Row(
        f"FastStream {fs_version()} consume (pull, batch 100)",
        n,
        count.last - count.first,
        cpu(count.cpu_last - count.cpu_first, n),
    )


def fs_version() -> str:
    import importlib.metadata

    return importlib.metadata.version("faststream")


# -- publish_many ----------------------------------------------------------------------------


def ce_headers() -> dict[str, str]:
    """The CloudEvents headers messagebus puts on each message, for a raw run carrying them."""
    return {
        "ce-id": uuid.uuid4().hex,
        "ce-source": "bench",
        "ce-type": "dict",
        "ce-specversion": "1.0",
        "ce-time": datetime.now(UTC).isoformat(),
        "Nats-Msg-Id": uuid.uuid4().hex,
    }


async def raw_publish_many(url: str, n: int, batch: int = 1000, same_headers: bool = False) -> Row:
    stream = f"bench-rawmany-{uuid.uuid4().hex[:8]}"
    nc = await nats.connect(server(url))
    try:
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name=stream, subjects=[stream], retention=RetentionPolicy.WORK_QUEUE))
        start, cpu_start = time.perf_counter(), time.process_time()
        for s in range(0, n, batch):
            futures = [
                await js.publish_async(
                    stream, json.dumps(payload(i)).encode(), headers=ce_headers() if same_headers else None
                )
                for i in range(s, min(s + batch, n))
            ]
            await asyncio.gather(*futures)
        end, cpu_end = time.perf_counter(), time.process_time()
        await js.delete_stream(stream)
    finally:
        await nc.close()
    name = f"nats-py raw publish_async + acks (batches of {batch:,})" + (
        " (same CloudEvents headers)" if same_headers else " (no headers)"
    )
    return Row(name, n, end - start, cpu(cpu_end - cpu_start, n))


async def bus_publish_many(url: str, n: int, batch: int = 1000) -> Row:
    queue = f"bench-busmany-{uuid.uuid4().hex[:8]}"
    bus = Bus.from_url(url, service="bench")
    async with bus:
        await bus.send(queue, payload(-1))  # creates the stream, as the raw run creates it first
        start, cpu_start = time.perf_counter(), time.process_time()
        for s in range(0, n, batch):
            await bus.send_many(queue, [payload(i) for i in range(s, min(s + batch, n))])
        end, cpu_end = time.perf_counter(), time.process_time()
    await delete(url, queue)
    return Row(f"messagebus send_many (batches of {batch:,})", n, end - start, cpu(cpu_end - cpu_start, n))


async def faststream_publish_many(url: str, n: int, batch: int = 1000) -> Row:
    from faststream.nats import NatsBroker

    queue = f"bench-fsmany-{uuid.uuid4().hex[:8]}"
    nc = await nats.connect(server(url))
    try:
        await nc.jetstream().add_stream(
            StreamConfig(name=queue, subjects=[queue], retention=RetentionPolicy.WORK_QUEUE)
        )
    finally:
        await nc.close()
    async with NatsBroker(server(url), logger=None) as broker:
        start, cpu_start = time.perf_counter(), time.process_time()
        for s in range(0, n, batch):
            await asyncio.gather(
                *(broker.publish(payload(i), queue, stream=queue) for i in range(s, min(s + batch, n)))
            )
        end, cpu_end = time.perf_counter(), time.process_time()
    await delete(url, queue)
    name = f"FastStream {fs_version()} publish ({batch:,} concurrent per batch)"
    return Row(name, n, end - start, cpu(cpu_end - cpu_start, n))


# -- latency ---------------------------------------------------------------------------------


async def raw_latency(url: str, n: int) -> tuple[float, float]:
    stream = f"bench-rawlat-{uuid.uuid4().hex[:8]}"
    nc = await nats.connect(server(url))
    samples: list[float] = []
    try:
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name=stream, subjects=[stream], retention=RetentionPolicy.WORK_QUEUE))
        psub = await js.pull_subscribe(stream, durable="raw", stream=stream)
        got = asyncio.Queue[float]()

        async def consume() -> None:
            while True:
                try:
                    msgs = await psub.fetch(1, timeout=5)
                except TimeoutError:
                    continue
                for msg in msgs:
                    json.loads(msg.data)
                    await msg.ack()
                    got.put_nowait(time.perf_counter())

        task = asyncio.create_task(consume())
        for i in range(n):
            start = time.perf_counter()
            await js.publish(stream, json.dumps(payload(i)).encode())
            samples.append(await got.get() - start)
        task.cancel()
        await js.delete_stream(stream)
    finally:
        await nc.close()
    return latency_ms(samples)


async def bus_latency(url: str, n: int) -> tuple[float, float]:
    queue = f"bench-buslat-{uuid.uuid4().hex[:8]}"
    got = asyncio.Queue[float]()
    samples: list[float] = []
    bus = Bus.from_url(url, service="bench")

    @bus.consume(queue, concurrency=1)
    async def handle(data: dict[str, Any]) -> None:
        got.put_nowait(time.perf_counter())

    async with bus:
        for i in range(n):
            start = time.perf_counter()
            await bus.send(queue, payload(i))
            samples.append(await got.get() - start)
    await delete(url, queue)
    return latency_ms(samples)


async def rounds(contenders: list[Any], count: int) -> list[Row]:
    """Each contender ``count`` times, interleaved; each one's median rate."""
    results: list[list[Row]] = [[] for _ in contenders]
    for r in range(count):
        for k in range(len(contenders)):
            i = (k + r) % len(contenders)
            results[i].append(await contenders[i]())
    out = []
    for rows in results:
        rates = sorted(row.rate for row in rows)
        median = statistics.median(rates)
        cpu_us = statistics.median(float(row.note) for row in rows)
        first = rows[0]
        note = f"client CPU {cpu_us:.0f} us/msg" + (f"; median of {count}" if count > 1 else "")
        out.append(Row(first.name, first.messages, first.messages / median, note, cpu=cpu_us * first.messages / 1e6))
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small counts, one round")
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3, quick 1)")
    args = parser.parse_args()
    url = args.url
    n_consume, n_many, n_latency = (3_000, 3_000, 200) if args.quick else (20_000, 20_000, 1_000)
    count = args.rounds or (1 if args.quick else 3)

    consume = await rounds(
        [
            lambda: raw_consume(url, n_consume),
            lambda: bus_consume(url, n_consume, 1),
            lambda: bus_consume(url, n_consume, 100),
            lambda: faststream_consume(url, n_consume),
        ],
        count,
    )
    many = await rounds(
        [
            lambda: raw_publish_many(url, n_many),
            lambda: bus_publish_many(url, n_many),
            lambda: raw_publish_many(url, n_many, same_headers=True),
            lambda: faststream_publish_many(url, n_many),
        ],
        count,
    )
    raw_p50, raw_p99 = await raw_latency(url, n_latency)
    bus_p50, bus_p99 = await bus_latency(url, n_latency)

    best_bus = max(consume[1:3], key=lambda r: r.rate)
    command = "python -m benchmarks.bench_nats" + (" --quick" if args.quick else "")
    parts = [
        "## NATS JetStream (messagebus-nats vs nats-py)",
        "",
        f"Machine: {machine()}",
        "",
        f"Versions: {versions('messagebus-sdk', 'messagebus-nats', 'nats-py', 'faststream')}; "
        f"nats-server 2.9.10 at {server(url)}",
        "",
        f"Command: `{command}`" + (" (short mode: small counts, one round)" if args.quick else ""),
        "",
        "Notes:",
        "",
        "- Every consumer reads the same bytes (written by messagebus). Raw consume = a nats-py pull subscription",
        "  fetching 100 at a time, `json.loads` + handler + `ack` one message at a time; messagebus decodes into",
        "  `dict`, runs the handler and acks (concurrency 1 asks for one message per free worker).",
        "- publish_many: bare raw messages carry no headers; the second raw baseline carries the CloudEvents",
        "  headers and the `Nats-Msg-Id` messagebus writes.",
        "- FastStream runs in this process: consume = a durable pull subscriber (batch 100, ack after the",
        "  handler, its own `content-type: application/json` on the same JSON bodies, filled by raw nats-py);",
        "  publish = 1,000 concurrent `broker.publish` per batch (no batch publish for NATS), each awaiting its ack.",
        "- Shared 2-core machine: other sessions' brokers and tests ran at the same time.",
        "",
        "### consume",
        "",
        table(consume, consume[0].name),
        "",
        "### pipelined publish",
        "",
        table(many, many[0].name),
        "",
        "### one-at-a-time latency (publish until the handler has it)",
        "",
        "| client | messages | p50 ms | p99 ms |",
        "|---|---:|---:|---:|",
        f"| nats-py raw (js.publish, fetch(1) loop) | {n_latency} | {raw_p50:.2f} | {raw_p99:.2f} |",
        f"| messagebus (send, consume concurrency 1) | {n_latency} | {bus_p50:.2f} | {bus_p99:.2f} |",
        "",
        "### ratios",
        "",
        f"- consume: messagebus ({best_bus.name}) {best_bus.rate / consume[0].rate * 100:.0f}% of the raw loop "
        f"(target >= 90%); concurrency 1: {consume[1].rate / consume[0].rate * 100:.0f}%",
        f"- publish_many: messagebus {many[1].rate / many[0].rate * 100:.0f}% of bare raw (target >= 90%); "
        f"{many[1].rate / many[2].rate * 100:.0f}% of raw carrying the same headers",
        f"- FastStream, same run: consume {consume[3].rate:,.0f} msg/s (messagebus best "
        f"{best_bus.rate / consume[3].rate:.2f}x it), publish {many[3].rate:,.0f} msg/s (messagebus "
        f"{many[1].rate / many[3].rate:.2f}x it)",
        "- Watermill publishes (published benchmark figures) ~51k msg/s and subscribes ~35k msg/s on NATS",
        f"  JetStream on a 16-CPU machine; on this 2-core machine messagebus publishes {many[1].rate:,.0f} and",
        f"  consumes {best_bus.rate:,.0f} msg/s (not the same hardware, message size or settings: context only).",
        "",
    ]
    write("nats", "\n".join(parts))


if __name__ == "__main__":
    asyncio.run(main())
