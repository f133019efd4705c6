"""Redis Streams: messagebus vs a raw redis-py (redis.asyncio) loop, same workload, one run.

    python -m benchmarks.bench_redis                  # full run
    python -m benchmarks.bench_redis --quick          # smoke run, well under a minute
    python -m benchmarks.bench_redis --faststream-python /tmp/fs-venv/bin/python

Workloads (small JSON messages, on the server of --url, keys under a fresh prefix):

- consume: a queue stream pre-filled by messagebus (same bytes for everyone); per message
  JSON decode, a counting handler, ack. Raw = one consumer of the group doing XREADGROUP
  COUNT 100 BLOCK, ``json.loads`` + handler per entry, then one XACK + XDEL of the read
  (messagebus deletes what a queue acked too). Timing starts at the first message handled.
- publish_many: batches of 1,000. Raw = one pipeline of XADDs per batch carrying the same
  fields messagebus writes (five CloudEvents headers, content type, body).
- latency: one message in flight, publish -> handler, p50/p99 (raw: XADD, then a blocked
  XREADGROUP of another task receives it and XACKs).

FastStream runs in its own virtualenv (not a dependency of this project): pass its python
with ``--faststream-python``; it consumes a stream with a consumer group there.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as aredis

from benchmarks._common import Count, Row, latency_ms, machine, table, versions, write
from messagebus import Bus

DEFAULT_URL = "redis://127.0.0.1:6379/0"
Runner = Callable[[], Awaitable[Row]]


def payload(i: int) -> dict[str, Any]:
    return {"id": i, "name": "widget", "price": 9.99}


def prefixed(url: str) -> tuple[str, str]:
    """A fresh key prefix and the URL carrying it."""
    prefix = f"bench-{uuid.uuid4().hex[:8]}:"
    return prefix, f"{url}{'&' if '?' in url else '?'}prefix={prefix}"


async def cleanup(url: str, prefix: str) -> None:
    client = aredis.Redis.from_url(url)
    keys = [k async for k in client.scan_iter(match=f"{prefix}*", count=1000)]
    if keys:
        await client.delete(*keys)
    await client.aclose()


async def fill(url: str, queue: str, n: int) -> None:
    async with Bus.from_url(url, service="bench") as bus:
        for start in range(0, n, 1000):
            await bus.send_many(queue, [payload(i) for i in range(start, min(start + 1000, n))])


def cpu(seconds: float, n: int) -> str:
    return f"{seconds / n * 1e6:.1f}"


# -- consume ---------------------------------------------------------------------------------


async def raw_consume(url: str, n: int) -> Row:
    prefix, purl = prefixed(url)
    await fill(purl, "q", n)
    stream, count = f"{prefix}q:{{q}}", Count(n)
    client = aredis.Redis.from_url(url)
    await client.xgroup_create(stream, "raw", id="0")
    while count.n < n:
        read = await client.xreadgroup("raw", "c1", {stream: ">"}, count=100, block=1000)
        ids = []
        for _, entries in read or []:
            for entry_id, fields in entries:
                json.loads(fields[b"messagebus-body"])
                count.hit()
                ids.append(entry_id)
        if ids:
            pipe = client.pipeline(transaction=False)
            pipe.xack(stream, "raw", *ids)
            pipe.xdel(stream, *ids)
            await pipe.execute()
    await client.aclose()
    await cleanup(url, prefix)
    return Row(
        "redis-py raw XREADGROUP loop (COUNT 100)",
        n,
        count.last - count.first,
        cpu(count.cpu_last - count.cpu_first, n),
    )


async def bus_consume(url: str, n: int, concurrency: int) -> Row:
    prefix, purl = prefixed(url)
    await fill(purl, "q", n)
    count = Count(n)
    bus = Bus.from_url(purl, service="bench")

    @bus.consume("q", concurrency=concurrency)
    async def handle(data: dict[str, Any]) -> None:
        count.hit()

    async with bus:
        await count.done.wait()
    await cleanup(url, prefix)
    return Row(
        f"messagebus consume (concurrency {concurrency})",
        n,
        count.last - count.first,
        cpu(count.cpu_last - count.cpu_first, n),
    )


FASTSTREAM_SCRIPT = r"""
import asyncio, json, sys, time
from faststream.redis import RedisBroker, StreamSub
url, stream, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
broker = RedisBroker(url, logger=None)
state = {"n": 0, "first": 0.0, "last": 0.0, "cpu_first": 0.0, "cpu_last": 0.0}
done = asyncio.Event()

@broker.subscriber(stream=StreamSub(stream, group="fs", consumer="c1", max_records=100, last_id="0"))
async def handle(data: dict) -> None:
    if state["n"] == 0:
        state["first"], state["cpu_first"] = time.perf_counter(), time.process_time()
    state["n"] += 1
    if state["n"] >= n:
        state["last"], state["cpu_last"] = time.perf_counter(), time.process_time()
        done.set()

async def main():
    async with broker:
        await broker.start()
        await asyncio.wait_for(done.wait(), 600)
    import importlib.metadata as md
    print(json.dumps({"seconds": state["last"] - state["first"], "cpu": state["cpu_last"] - state["cpu_first"],
                      "version": md.version("faststream")}))

asyncio.run(main())
"""


async def faststream_consume(url: str, n: int, python: str) -> Row:
    """FastStream's own stream format (a JSON envelope in one field), filled by its publisher."""
    stream = f"bench-fs-{uuid.uuid4().hex[:8]}"
    fill_script = (
        "import asyncio, sys\nfrom faststream.redis import RedisBroker\n"
        "async def main():\n    async with RedisBroker(sys.argv[1]) as b:\n"
        "        for i in range(int(sys.argv[3])):\n"
        "            await b.publish({'id': i, 'name': 'widget', 'price': 9.99}, stream=sys.argv[2])\n"
        "asyncio.run(main())\n"
    )
    filling = await asyncio.create_subprocess_exec(python, "-c", fill_script, url, stream, str(n))
    if await filling.wait() != 0:
        raise SystemExit("FastStream fill failed")
    proc = await asyncio.create_subprocess_exec(
        python, "-c", FASTSTREAM_SCRIPT, url, stream, str(n), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = await proc.communicate()
    client = aredis.Redis.from_url(url)
    await client.delete(stream)
    await client.aclose()
    if proc.returncode != 0:
        raise SystemExit(f"FastStream run failed: {err.decode(errors='replace')[-2000:]}")
    result = json.loads(out.decode().strip().splitlines()[-1])
    return Row(
        f"FastStream {result['version']} consume (group, max_records 100)", n, result["seconds"], cpu(result["cpu"], n)
    )


# -- publish_many ----------------------------------------------------------------------------


def raw_fields(i: int) -> dict[str, str | bytes]:
    """The fields messagebus writes for one message, for a raw baseline carrying the same bytes."""
    return {
        "ce-id": uuid.uuid4().hex,
        "ce-source": "bench",
        "ce-type": "dict",
        "ce-specversion": "1.0",
        "ce-time": datetime.now(UTC).isoformat(),
        "ce-datacontenttype": "application/json",
        "messagebus-body": json.dumps(payload(i)).encode(),
    }


async def raw_publish_many(url: str, n: int, batch: int = 1000) -> Row:
    prefix, _ = prefixed(url)
    client = aredis.Redis.from_url(url)
    stream = f"{prefix}q:{{many}}"
    start, cpu_start = time.perf_counter(), time.process_time()
    for s in range(0, n, batch):
        pipe = client.pipeline(transaction=False)
        for i in range(s, min(s + batch, n)):
            pipe.xadd(stream, raw_fields(i))  # type: ignore[arg-type]
        await pipe.execute()
    end, cpu_end = time.perf_counter(), time.process_time()
    await client.aclose()
    await cleanup(url, prefix)
    return Row(
        f"redis-py raw pipelined XADD (batches of {batch:,}, same fields)", n, end - start, cpu(cpu_end - cpu_start, n)
    )


async def bus_publish_many(url: str, n: int, batch: int = 1000) -> Row:
    prefix, purl = prefixed(url)
    async with Bus.from_url(purl, service="bench") as bus:
        await bus.send("many", payload(-1))  # connects and warms up, as the raw run's first call does
        start, cpu_start = time.perf_counter(), time.process_time()
        for s in range(0, n, batch):
            await bus.send_many("many", [payload(i) for i in range(s, min(s + batch, n))])
        end, cpu_end = time.perf_counter(), time.process_time()
    await cleanup(url, prefix)
    return Row(f"messagebus send_many (batches of {batch:,})", n, end - start, cpu(cpu_end - cpu_start, n))


# -- latency ---------------------------------------------------------------------------------


async def measure(n: int, one: Callable[[int], Awaitable[None]]) -> tuple[float, float]:
    samples = []
    for i in range(n + 20):  # 20 warm-up round trips
        start = time.perf_counter()
        await one(i)
        if i >= 20:
            samples.append(time.perf_counter() - start)
    return latency_ms(samples)


async def bus_latency(url: str, n: int) -> tuple[float, float]:
    prefix, purl = prefixed(url)
    arrived: asyncio.Queue[int] = asyncio.Queue()
    bus = Bus.from_url(purl, service="latency")

    @bus.consume("lat")
    async def handle(data: dict[str, Any]) -> None:
        arrived.put_nowait(data["i"])

    async def one(i: int) -> None:
        await bus.send("lat", {"i": i})
        while await asyncio.wait_for(arrived.get(), 30) != i:
            pass

    async with bus:
        result = await measure(n, one)
    await cleanup(url, prefix)
    return result


async def raw_latency(url: str, n: int) -> tuple[float, float]:
    prefix, _ = prefixed(url)
    stream = f"{prefix}q:{{lat}}"
    publisher, reader = aredis.Redis.from_url(url), aredis.Redis.from_url(url)
    await publisher.xgroup_create(stream, "raw", id="$", mkstream=True)
    arrived: asyncio.Queue[int] = asyncio.Queue()
    stop = asyncio.Event()

    async def consume() -> None:
        while not stop.is_set():
            for _, entries in await reader.xreadgroup("raw", "c1", {stream: ">"}, count=1, block=100) or []:
                for entry_id, fields in entries:
                    arrived.put_nowait(json.loads(fields[b"messagebus-body"])["i"])
                    await reader.xack(stream, "raw", entry_id)

    async def one(i: int) -> None:
        await publisher.xadd(stream, {"messagebus-body": json.dumps({"i": i})})
        while await asyncio.wait_for(arrived.get(), 30) != i:
            pass

    task = asyncio.create_task(consume())
    try:
        return await measure(n, one)
    finally:
        stop.set()  # the loop ends within one block (100 ms)
        await task
        await publisher.aclose()
        await reader.aclose()
        await cleanup(url, prefix)


# -- run -------------------------------------------------------------------------------------


CPU_US: dict[str, float] = {}


async def rounds(contenders: list[Runner], count: int) -> list[Row]:
    """Every contender ``count`` times, interleaved; each one's median rate with its range."""
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
        CPU_US[rows[0].name] = cpu_us
        note = f"client CPU {cpu_us:.0f} us/msg"
        if count > 1:
            note += f"; median of {count} rounds, range {rates[0]:,.0f}-{rates[-1]:,.0f} msg/s"
        first = rows[0]
        out.append(Row(first.name, first.messages, first.messages / median, note, cpu=cpu_us * first.messages / 1e6))
    return out


def ratio(a: Row, b: Row) -> str:
    text = f"{a.rate / b.rate * 100:.0f}%"
    if a.name in CPU_US and b.name in CPU_US:
        text += f" (client CPU per message {CPU_US[a.name] / CPU_US[b.name] * 100:.0f}%)"
    return text


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small counts, one round")
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds per workload (default 5, quick 1)")
    parser.add_argument("--faststream-python", help="python of a virtualenv with faststream[redis] installed")
    args = parser.parse_args()
    url = args.url
    n_consume, n_many, n_latency = (5_000, 5_000, 300) if args.quick else (20_000, 20_000, 2_000)
    count = args.rounds or (1 if args.quick else 5)

    contenders: list[Runner] = [
        lambda: raw_consume(url, n_consume),
        lambda: bus_consume(url, n_consume, 1),
        lambda: bus_consume(url, n_consume, 100),
    ]
    if args.faststream_python:
        fs = args.faststream_python
        contenders.append(lambda: faststream_consume(url, n_consume, fs))
    consume = await rounds(contenders, count)
    many = await rounds([lambda: raw_publish_many(url, n_many), lambda: bus_publish_many(url, n_many)], count)
    raw_p50, raw_p99 = await raw_latency(url, n_latency)
    bus_p50, bus_p99 = await bus_latency(url, n_latency)

    command = "python -m benchmarks.bench_redis" + (" --quick" if args.quick else "")
    if args.faststream_python:
        command += " --faststream-python <venv with faststream[redis]>/bin/python"
    parts = [
        "## Redis Streams (messagebus-redis vs redis-py)",
        "",
        f"Machine: {machine()}",
        "",
        f"Versions: {versions('messagebus-sdk', 'messagebus-redis', 'redis')}; Redis at {url.split('@')[-1]}",
        "",
        f"Command: `{command}`",
        "",
        "Notes:",
        "",
        "- Every consumer but FastStream's reads entries written by messagebus (same bytes). Raw consume = one",
        "  XREADGROUP COUNT 100 loop, `json.loads` + handler per entry, one XACK + XDEL per read; messagebus",
        "  decodes into `dict`, runs the handler and acks each message (acks of one loop turn share a pipeline).",
        "- Raw publish_many pipelines XADDs carrying the same fields messagebus writes (CloudEvents headers, body).",
        "- Shared 2-core machine (other workers' servers, tests and benchmarks ran at the same time): medians of",
        "  interleaved rounds; client CPU per message is the steadier measure.",
        "",
        "### consume",
        "",
        table(consume, consume[0].name),
        "",
        "### publish_many",
        "",
        table(many, many[0].name),
        "",
        "### latency, one message in flight (publish -> handler)",
        "",
        "| client | messages | p50 ms | p99 ms |",
        "|---|---:|---:|---:|",
        f"| redis-py raw (XADD; blocked XREADGROUP, XACK) | {n_latency:,} | {raw_p50:.2f} | {raw_p99:.2f} |",
        f"| messagebus send -> handler | {n_latency:,} | {bus_p50:.2f} | {bus_p99:.2f} |",
        "",
        "### ratios",
        "",
        f"- consume: messagebus (concurrency 1) {ratio(consume[1], consume[0])}, (concurrency 100) "
        f"{ratio(consume[2], consume[0])} of the raw redis-py loop (target >= 90%)",
        f"- publish_many: messagebus {ratio(many[1], many[0])} of raw pipelined XADD (target >= 90%)",
        f"- latency p50: messagebus {bus_p50 / raw_p50:.2f}x raw",
        "",
    ]
    write("redis-quick" if args.quick else "redis", "\n".join(parts))


if __name__ == "__main__":
    asyncio.run(main())
