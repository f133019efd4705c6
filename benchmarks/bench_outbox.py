"""Outbox vs direct publish, same run: throughput of "write then publish" and the added
latency (commit -> handler, vs publish call -> handler), p50/p99, one message at a time.

    python -m benchmarks.bench_outbox [--url memory://] [--dsn postgresql://...] [--quick]

Throughput: N messages, each in a transaction of its own with an order row (a service
writing an order and its event), until the consumer handled the last one; the baseline is
the same transaction committed and then ``bus.send`` (what the outbox replaces); also
``bus.send`` alone, and 100 per transaction with ``send_many`` vs ``bus.send_many``.
The consumer is a plain handler in both (the inbox row adds the consumer's own
transaction per message). Writes results/outbox.md (not with --quick).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid
from typing import Any

import asyncpg

from benchmarks._common import Count, Row, machine, table, versions, write
from messagebus import Bus, Envelope
from messagebus.outbox import Inbox, Outbox, migrate

DSN = os.environ.get("MESSAGEBUS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def run(url: str, dsn: str, n: int, samples: int) -> str:
    schema = f"bench_outbox_{uuid.uuid4().hex[:8]}"
    await migrate(dsn, schema=schema)
    pool = await asyncpg.create_pool(dsn, min_size=2, max_size=10, server_settings={"search_path": schema})
    try:
        return await _measure(url, pool, schema, n, samples)
    finally:
        await pool.close()
        conn = await asyncpg.connect(dsn)
        await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await conn.close()


async def _measure(url: str, pool: Any, schema: str, n: int, samples: int) -> str:
    tag = uuid.uuid4().hex[:6]
    names = ("direct", "commit_then_send", "outbox", "direct_many", "outbox_many", "inbox")
    queues = {name: f"bench.{name}.{tag}" for name in names}
    counts = {name: Count(n) for name in queues}
    arrivals: dict[str, float] = {}
    latency_queue = f"bench.latency.{tag}"
    arrived = asyncio.Event()
    inbox = Inbox(pool, schema=schema)
    bus = Bus.from_url(url, service="bench")

    def counter(name: str) -> Any:
        async def handle(body: dict[str, Any]) -> None:
            counts[name].hit()

        return handle

    for name, queue in queues.items():
        bus.consume(queue, concurrency=8, middleware=[inbox] if name == "inbox" else ())(counter(name))

    @bus.consume(latency_queue)
    async def timed(body: dict[str, Any], envelope: Envelope) -> None:
        arrivals[envelope.id] = time.perf_counter()
        arrived.set()

    rows: list[Row] = []
    payload = {"order": "order-42", "total": 59.97, "items": 3}
    async with pool.acquire() as conn:
        await conn.execute("CREATE TABLE orders (id bigserial PRIMARY KEY, body text)")
    order = "INSERT INTO orders (body) VALUES ('order-42')"
    async with bus, Outbox(bus, pool, schema=schema, poll_interval=1.0) as outbox:

        async def timed_rows(name: str, note: str, work: Any) -> None:
            start, cpu = time.perf_counter(), time.process_time()
            await work()
            await asyncio.wait_for(counts[name].done.wait(), 600)
            rows.append(Row(name, n, counts[name].last - start, note, time.process_time() - cpu))

        async def direct() -> None:
            for _ in range(n):
                await bus.send(queues["direct"], payload)

        async def commit_then_send() -> None:
            # What the outbox replaces: the event is lost if the process dies in between.
            for _ in range(n):
                async with pool.acquire() as conn, conn.transaction():
                    await conn.execute(order)
                await bus.send(queues["commit_then_send"], payload)

        async def via_outbox(name: str = "outbox") -> None:
            for _ in range(n):
                async with pool.acquire() as conn, conn.transaction():
                    await conn.execute(order)
                    await outbox.send(conn, queues[name], payload)

        async def direct_many() -> None:
            for _ in range(n // 100):
                await bus.send_many(queues["direct_many"], [payload] * 100)

        async def outbox_many() -> None:
            for _ in range(n // 100):
                async with pool.acquire() as conn, conn.transaction():
                    await outbox.send_many(conn, queues["outbox_many"], [payload] * 100)

        await timed_rows("direct", "bus.send, one by one, no database", direct)
        await timed_rows("commit_then_send", "INSERT + commit, then bus.send (not atomic)", commit_then_send)
        await timed_rows("outbox", "INSERT + outbox.send in one transaction; the relay publishes", via_outbox)
        await timed_rows("direct_many", "bus.send_many, 100 per call", direct_many)
        await timed_rows("outbox_many", "outbox.send_many, 100 per transaction", outbox_many)
        await timed_rows("inbox", "as outbox, with the Inbox on the consumer", lambda: via_outbox("inbox"))

        latencies: dict[str, list[float]] = {"direct": [], "outbox": []}
        # Interleaved, so both paths see the same machine load.
        for i in range(samples * 2):
            arrived.clear()
            if i % 2 == 0:
                start = time.perf_counter()
                await bus.send(latency_queue, payload)
                key = "direct"
                message_id = None
            else:
                async with pool.acquire() as conn:
                    async with conn.transaction():
                        message_id = await outbox.send(conn, latency_queue, payload)
                    start = time.perf_counter()  # the commit returned
                key = "outbox"
            await asyncio.wait_for(arrived.wait(), 30)
            arrival = arrivals[message_id] if message_id else max(arrivals.values())
            latencies[key].append((arrival - start) * 1000)
    await inbox.close()

    lat_lines = [
        "| path | samples | p50 ms | p99 ms |",
        "|---|---:|---:|---:|",
        *(
            f"| {name} | {len(v)} | {statistics.median(v):.2f} | {percentile(v, 0.99):.2f} |"
            for name, v in latencies.items()
        ),
    ]
    return "\n".join(
        [
            "# Outbox vs direct publish",
            "",
            f"Transport `{url.split('?')[0]}`, PostgreSQL at `{DSN.split('@')[-1]}`; {machine()}; "
            f"{versions('asyncpg', 'messagebus-sdk')}.",
            "",
            "Throughput: from the first write to the last message handled (consumer: a plain handler, concurrency 8).",
            "",
            table(rows, baseline="commit_then_send"),
            "",
            "Latency, one message at a time: direct = from the `bus.send` call to the handler; outbox = "
            "from the commit's return to the handler (the relay woken by NOTIFY).",
            "",
            *lat_lines,
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default="memory://bench-outbox")
    parser.add_argument("--dsn", default=DSN)
    parser.add_argument("-n", type=int, default=5000)
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--quick", action="store_true", help="a smoke run (200 messages, 50 samples), no file")
    args = parser.parse_args()
    n, samples = (200, 50) if args.quick else (args.n, args.samples)
    text = asyncio.run(run(args.url, args.dsn, n, samples))
    if args.quick:
        print(text)
    else:
        name = "outbox" if args.url.startswith("memory") else f"outbox-{args.url.split(':')[0]}"
        write(name, text + f"\nCommand: `python -m benchmarks.bench_outbox --url {args.url.split('?')[0]} -n {n}`\n")


if __name__ == "__main__":
    main()
