"""RabbitMQ: messagebus vs raw aio-pika (and FastStream, when available), same workload, one run.

    python -m benchmarks.bench_rabbitmq                  # full run
    python -m benchmarks.bench_rabbitmq --quick          # smoke run, a few seconds
    python -m benchmarks.bench_rabbitmq --faststream-python /tmp/fs-venv/bin/python

Workloads (small JSON messages, persistent, on the broker of --url):

- consume: a queue pre-filled with messages; prefetch 100; per message JSON decode, a
  counting handler, ack. Raw = an aio-pika queue iterator loop. Timing starts at the first
  message handled and ends at the last.
- publish: sequential confirmed publishes (each awaited before the next).
- publish_many: batches of 1,000; raw aio-pika gathers the confirms of a batch.

FastStream runs in its own virtualenv (it is not a dependency of this project): pass its
python with ``--faststream-python``; the script runs the FastStream consume loop there.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import aio_pika

from benchmarks._common import Count, Row, machine, table, versions, write
from messagebus import Bus

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"


def payload(i: int) -> dict[str, Any]:
    return {"id": i, "name": "widget", "price": 9.99}


async def fill(url: str, queue: str, n: int) -> None:
    """Fill ``queue`` with ``n`` messages written by messagebus (same bytes for every consumer)."""
    bus = Bus.from_url(url, service="bench")
    async with bus:
        for start in range(0, n, 1000):
            await bus.send_many(queue, [payload(i) for i in range(start, min(start + 1000, n))])


async def delete(url: str, *queues: str) -> None:
    conn = await aio_pika.connect(url)
    async with conn:
        ch = await conn.channel()
        for q in queues:
            await ch.queue_delete(q)


# -- consume ---------------------------------------------------------------------------------


async def raw_consume(url: str, n: int) -> Row:
    queue = f"bench.raw.{uuid.uuid4().hex[:8]}"
    await fill(url, queue, n)
    count = Count(n)

    def handler(data: dict[str, Any]) -> None:
        count.hit()

    conn = await aio_pika.connect(url)
    async with conn:
        ch = await conn.channel()
        await ch.set_qos(prefetch_count=100)
        q = await ch.declare_queue(queue, durable=True)
        async with q.iterator() as it:
            async for message in it:
                handler(json.loads(message.body))
                await message.ack()
                if count.n >= n:
                    break
    await delete(url, queue)
    return Row(
        "aio-pika raw consume loop (prefetch 100)",
        n,
        count.last - count.first,
        cpu(count.cpu_last - count.cpu_first, n),
    )


async def bus_consume(url: str, n: int, concurrency: int) -> Row:
    queue = f"bench.bus.{uuid.uuid4().hex[:8]}"
    await fill(url, queue, n)
    count = Count(n)
    sep = "&" if "?" in url else "?"
    bus = Bus.from_url(f"{url}{sep}prefetch=100", service="bench")

    @bus.consume(queue, concurrency=concurrency)
    async def handle(data: dict[str, Any]) -> None:
        count.hit()

    async with bus:
        await count.done.wait()
    await delete(url, queue)
    return Row(
        f"messagebus consume (prefetch 100, concurrency {concurrency})",
        n,
        count.last - count.first,
        cpu(count.cpu_last - count.cpu_first, n),
    )


FASTSTREAM_SCRIPT = r"""
import asyncio, json, sys, time
from faststream import FastStream
from faststream.rabbit import Channel, RabbitBroker, RabbitQueue
url, queue, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
broker = RabbitBroker(url, default_channel=Channel(prefetch_count=100), logger=None)
state = {"n": 0, "first": 0.0, "last": 0.0, "cpu_first": 0.0, "cpu_last": 0.0}
done = asyncio.Event()

@broker.subscriber(RabbitQueue(queue, durable=True))
async def handle(data: dict) -> None:
    if state["n"] == 0:
        state["first"] = time.perf_counter()
        state["cpu_first"] = time.process_time()
    state["n"] += 1
    if state["n"] >= n:
        state["last"] = time.perf_counter()
        state["cpu_last"] = time.process_time()
        done.set()

async def main():
    async with broker:
        await broker.start()
        await asyncio.wait_for(done.wait(), 600)
    import importlib.metadata as md
    print(json.dumps({
        "seconds": state["last"] - state["first"],
        "cpu": state["cpu_last"] - state["cpu_first"],
        "version": md.version("faststream"),
    }))

asyncio.run(main())
"""


async def faststream_consume(url: str, n: int, python: str) -> Row | None:
    queue = f"bench.fs.{uuid.uuid4().hex[:8]}"
    await fill(url, queue, n)
    try:
        proc = await asyncio.create_subprocess_exec(
            python,
            "-c",
            FASTSTREAM_SCRIPT,
            url,
            queue,
            str(n),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        out, err = await proc.communicate()
        if proc.returncode != 0:
            print(f"FastStream run failed: {err.decode(errors='replace')[-2000:]}", file=sys.stderr)
            return None
        result = json.loads(out.decode().strip().splitlines()[-1])
        seconds, version, cpu_seconds = result["seconds"], result["version"], result["cpu"]
    finally:
        await delete(url, queue)
    return Row(f"FastStream {version} consume (prefetch 100)", n, seconds, cpu(cpu_seconds, n))


# -- publish ---------------------------------------------------------------------------------


def ce_headers() -> dict[str, str]:
    """The CloudEvents headers messagebus puts on each message (AMQP binding), for a raw
    baseline that carries the same bytes."""
    return {
        "cloudEvents:id": uuid.uuid4().hex,
        "cloudEvents:source": "bench",
        "cloudEvents:type": "dict",
        "cloudEvents:specversion": "1.0",
        "cloudEvents:time": datetime.now(UTC).isoformat(),
    }


def raw_message(i: int, same_headers: bool) -> aio_pika.Message:
    return aio_pika.Message(
        json.dumps(payload(i)).encode(),
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        content_type="application/json",
        headers=ce_headers() if same_headers else None,  # type: ignore[arg-type]
    )


def raw_label(same_headers: bool) -> str:
    return " (same CloudEvents headers, mandatory)" if same_headers else " (no headers)"


async def raw_publish(url: str, n: int, same_headers: bool = False) -> Row:
    queue = f"bench.rawpub.{uuid.uuid4().hex[:8]}"
    conn = await aio_pika.connect(url)
    async with conn:
        ch = await conn.channel(publisher_confirms=True)
        await ch.declare_queue(queue, durable=True)
        ex = ch.default_exchange
        start, cpu_start = time.perf_counter(), time.process_time()
        for i in range(n):
            await ex.publish(raw_message(i, same_headers), routing_key=queue, mandatory=same_headers)
        end, cpu_end = time.perf_counter(), time.process_time()
        await ch.queue_delete(queue)
    name = "aio-pika raw publish, sequential confirms" + raw_label(same_headers)
    return Row(name, n, end - start, cpu(cpu_end - cpu_start, n))


async def bus_publish(url: str, n: int) -> Row:
    queue = f"bench.buspub.{uuid.uuid4().hex[:8]}"
    bus = Bus.from_url(url, service="bench")
    async with bus:
        await bus.send(queue, payload(-1))  # declares the queue, as the raw run declares it first
        start, cpu_start = time.perf_counter(), time.process_time()
        for i in range(n):
            await bus.send(queue, payload(i))
        end, cpu_end = time.perf_counter(), time.process_time()
    await delete(url, queue)
    return Row("messagebus send, sequential", n, end - start, cpu(cpu_end - cpu_start, n))


async def raw_publish_many(url: str, n: int, batch: int = 1000, same_headers: bool = False) -> Row:
    queue = f"bench.rawmany.{uuid.uuid4().hex[:8]}"
    conn = await aio_pika.connect(url)
    async with conn:
        ch = await conn.channel(publisher_confirms=True)
        await ch.declare_queue(queue, durable=True)
        ex = ch.default_exchange
        start, cpu_start = time.perf_counter(), time.process_time()
        for s in range(0, n, batch):
            await asyncio.gather(
                *(
                    ex.publish(raw_message(i, same_headers), routing_key=queue, mandatory=same_headers)
                    for i in range(s, min(s + batch, n))
                )
            )
        end, cpu_end = time.perf_counter(), time.process_time()
        await ch.queue_delete(queue)
    name = f"aio-pika raw publish, gathered confirms (batches of {batch:,})" + raw_label(same_headers)
    return Row(name, n, end - start, cpu(cpu_end - cpu_start, n))


async def bus_publish_many(url: str, n: int, batch: int = 1000) -> Row:
    queue = f"bench.busmany.{uuid.uuid4().hex[:8]}"
    bus = Bus.from_url(url, service="bench")
    async with bus:
        await bus.send(queue, payload(-1))
        start, cpu_start = time.perf_counter(), time.process_time()
        for s in range(0, n, batch):
            await bus.send_many(queue, [payload(i) for i in range(s, min(s + batch, n))])
        end, cpu_end = time.perf_counter(), time.process_time()
    await delete(url, queue)
    return Row(f"messagebus send_many (batches of {batch:,})", n, end - start, cpu(cpu_end - cpu_start, n))


def cpu(seconds: float, n: int) -> str:
    """The client's CPU time per message, carried in the row's note until the rounds are merged."""
    return f"{seconds / n * 1e6:.1f}"


#: Median client CPU microseconds per message, by row name (filled by :func:`rounds`).
CPU_US: dict[str, float] = {}


def ratio(a: Row, b: Row) -> str:
    """``a``'s throughput as a share of ``b``'s, and the same for client CPU efficiency."""
    text = f"{a.rate / b.rate * 100:.0f}%"
    if a.name in CPU_US and b.name in CPU_US:
        text += f" (client CPU per message {CPU_US[a.name] / CPU_US[b.name] * 100:.0f}%)"
    return text


Runner = Callable[[], Awaitable[Row]]


async def rounds(contenders: list[Runner], count: int) -> list[Row]:
    """Run every contender ``count`` times, interleaved (the starting one rotates each round, so
    a noisy neighbour hits everyone alike); report each one's median rate with its range."""
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
        CPU_US[first.name] = cpu_us
        note = f"client CPU {cpu_us:.0f} us/msg"
        if count > 1:
            note += f"; median of {count} rounds, range {rates[0]:,.0f}-{rates[-1]:,.0f} msg/s"
        out.append(Row(first.name, first.messages, first.messages / median, note, cpu=cpu_us * first.messages / 1e6))
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small counts, one round: a smoke run of a few seconds")
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds per workload (default 5, quick 1)")
    parser.add_argument("--faststream-python", help="python of a virtualenv with faststream[rabbit] installed")
    parser.add_argument("--only", choices=["consume", "publish", "many"], help="run one workload (profiling)")
    args = parser.parse_args()
    url = args.url
    n_consume, n_publish, n_many = (2_000, 300, 2_000) if args.quick else (10_000, 2_000, 10_000)
    count = args.rounds or (1 if args.quick else 5)

    consume: list[Row] = []
    publish: list[Row] = []
    many: list[Row] = []
    if args.only in (None, "consume"):
        contenders: list[Runner] = [
            lambda: raw_consume(url, n_consume),
            lambda: bus_consume(url, n_consume, 1),
            lambda: bus_consume(url, n_consume, 100),
        ]
        fs = args.faststream_python
        if fs:

            async def fs_run() -> Row:
                row = await faststream_consume(url, n_consume, fs)
                if row is None:
                    raise SystemExit("FastStream run failed")
                return row

            contenders.append(fs_run)
        consume = await rounds(contenders, count)
    if args.only in (None, "publish"):
        publish = await rounds(
            [
                lambda: raw_publish(url, n_publish),
                lambda: bus_publish(url, n_publish),
                lambda: raw_publish(url, n_publish, same_headers=True),
            ],
            count,
        )
    if args.only in (None, "many"):
        many = await rounds(
            [
                lambda: raw_publish_many(url, n_many),
                lambda: bus_publish_many(url, n_many),
                lambda: raw_publish_many(url, n_many, same_headers=True),
            ],
            count,
        )

    command = "python -m benchmarks.bench_rabbitmq" + (" --quick" if args.quick else "")
    if args.faststream_python:
        command += " --faststream-python <venv with faststream[rabbit]>/bin/python"
    parts = [
        "## RabbitMQ (messagebus-rabbitmq vs aio-pika)",
        "",
        f"Machine: {machine()}",
        "",
        f"Versions: {versions('messagebus-sdk', 'messagebus-rabbitmq', 'aio-pika', 'aiormq')}; "
        f"RabbitMQ at {url.split('@')[-1]}",
        "",
        f"Command: `{command}`",
        "",
        "Notes:",
        "",
        "- Every consumer reads messages written by messagebus (same bytes). Raw consume = an aio-pika queue",
        "  iterator doing `json.loads` + handler + `ack` one message at a time; messagebus decodes into `dict`,",
        "  runs the handler and acks (concurrency 1 is the same sequential work; 100 runs handlers concurrently).",
        "- Publish baselines: bare raw aio-pika messages carry no headers; the second raw baseline carries the same",
        "  five `cloudEvents:*` headers messagebus writes on every message and is `mandatory`, like messagebus's",
        "  queue sends. The header table is most of the difference between bare raw and messagebus.",
        "- Shared 2-core machine (other workers' brokers, tests and benchmarks ran at the same time): contenders",
        "  run interleaved, medians of the rounds are shown with their range; client CPU per message",
        "  (`msg per CPU s`) is the steadier measure.",
        "- FastStream runs in its own virtualenv (not a project dependency), prefetch 100 via",
        "  `Channel(prefetch_count=100)`, its per-message logging off (`logger=None`).",
        "",
    ]
    summary = []
    if consume:
        parts += ["### consume", "", table(consume, consume[0].name), ""]
        summary.append(
            f"- consume: messagebus {ratio(consume[1], consume[0])} of the raw aio-pika loop (target >= 90%)"
        )
    if publish:
        parts += ["### sequential confirmed publish", "", table(publish, publish[0].name), ""]
        summary.append(
            f"- sequential publish: messagebus {ratio(publish[1], publish[0])} of bare raw (target >= 95%); "
            f"{ratio(publish[1], publish[2])} of raw carrying the same headers"
        )
    if many:
        parts += ["### pipelined publish", "", table(many, many[0].name), ""]
        summary.append(
            f"- publish_many: messagebus {ratio(many[1], many[0])} of bare raw gathered confirms (target >= 90%); "
            f"{ratio(many[1], many[2])} of raw carrying the same headers"
        )
    parts += ["### ratios", "", *summary, ""]
    name = "rabbitmq-quick" if args.quick else "rabbitmq"
    if args.only:
        name += f"-{args.only}"  # a partial run never overwrites the full table
    write(name, "\n".join(parts))


if __name__ == "__main__":
    asyncio.run(main())
