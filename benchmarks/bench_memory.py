"""memory:// end to end (publish -> decode -> handler -> ack) vs FastStream's test brokers.

    python -m benchmarks.bench_memory            # full: 200k-message runs + 1,000,000 soak
    python -m benchmarks.bench_memory --quick    # smoke run, a few seconds

Workload: small JSON messages (a pydantic model), one subscriber, the handler decodes the
model and counts. Timing starts at the first message handled.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid

from pydantic import BaseModel

from benchmarks._common import Row, current_rss_mib, machine, table, versions, write
from messagebus import Bus, Retry


class Tick(BaseModel):
    id: int
    name: str
    price: float


def ticks(n: int, start: int = 0) -> list[Tick]:
    return [Tick(id=i, name="widget", price=9.99) for i in range(start, start + n)]


class Counter:
    def __init__(self, target: int) -> None:
        self.n = 0
        self.target = target
        self.first = 0.0
        self.done = asyncio.Event()
        self.mark = 0
        self.reached = asyncio.Event()

    async def wait_past(self, mark: int) -> None:
        """Return once more than ``mark`` messages were handled."""
        self.mark = mark
        self.reached.clear()
        if self.n <= mark:
            await self.reached.wait()

    def hit(self) -> None:
        if self.n == 0:
            self.first = time.perf_counter()
        self.n += 1
        if self.n > self.mark:
            self.reached.set()
        if self.n >= self.target:
            self.done.set()


async def messagebus_publish_many(n: int, batch: int = 1000, window: int = 10) -> Row:
    """Steady state: batches are published while at most ``window`` batches wait unhandled
    (a consumer that keeps up), so the figure is throughput, not the cost of a backlog."""
    bus = Bus.from_url(f"memory://bench-{uuid.uuid4().hex}", service="bench", retry=Retry())
    counter = Counter(n)

    @bus.subscribe("ticks")
    async def handle(tick: Tick) -> None:
        counter.hit()

    payloads = ticks(batch)
    async with bus:
        start, cpu0 = time.perf_counter(), time.process_time()
        for i in range(0, n, batch):
            await bus.publish_many("ticks", payloads if n - i >= batch else payloads[: n - i])
            if i >= window * batch:
                await counter.wait_past(i - window * batch)
        await counter.done.wait()
        end, cpu1 = time.perf_counter(), time.process_time()
    return Row(
        "messagebus memory:// publish_many (batches of 1,000)", n, end - start, "publish to last ack", cpu=cpu1 - cpu0
    )


async def messagebus_publish(n: int) -> Row:
    bus = Bus.from_url(f"memory://bench-{uuid.uuid4().hex}", service="bench")
    counter = Counter(n)

    @bus.subscribe("ticks")
    async def handle(tick: Tick) -> None:
        counter.hit()

    payloads = ticks(1000)
    async with bus:
        start, cpu0 = time.perf_counter(), time.process_time()
        for i in range(n):
            await bus.publish("ticks", payloads[i % 1000])
            if i % 1000 == 999:
                await counter.wait_past(i - 10_000)
        await counter.done.wait()
        end, cpu1 = time.perf_counter(), time.process_time()
    return Row("messagebus memory:// publish (one at a time)", n, end - start, "publish to last ack", cpu=cpu1 - cpu0)


async def messagebus_soak(n: int, chunk: int = 10_000) -> tuple[Row, list[tuple[int, float]]]:
    """Process ``n`` messages while the consumer keeps up; sample RSS as it goes."""
    bus = Bus.from_url(f"memory://bench-{uuid.uuid4().hex}", service="bench")
    counter = Counter(n)

    @bus.subscribe("ticks", concurrency=4)
    async def handle(tick: Tick) -> None:
        counter.hit()

    samples: list[tuple[int, float]] = []
    async with bus:
        start, cpu0 = time.perf_counter(), time.process_time()
        for i in range(0, n, chunk):
            await bus.publish_many("ticks", ticks(min(chunk, n - i), i))
            await counter.wait_past(i)  # the consumer keeps up: at most one chunk outstanding
            if (i // chunk) % 10 == 0:
                samples.append((i, current_rss_mib()))
        await counter.done.wait()
        end, cpu1 = time.perf_counter(), time.process_time()
    samples.append((n, current_rss_mib()))
    return Row("messagebus memory:// 1M soak (concurrency 4)", n, end - start, "RSS sampled", cpu=cpu1 - cpu0), samples


async def faststream_broker(kind: str, n: int) -> Row | None:
    try:
        if kind == "kafka":
            from faststream.kafka import KafkaBroker as Broker
            from faststream.kafka import TestKafkaBroker as TestBroker
        else:
            from faststream.rabbit import RabbitBroker as Broker  # type: ignore[assignment]
            from faststream.rabbit import TestRabbitBroker as TestBroker  # type: ignore[assignment]
    except ImportError:
        return None
    broker = Broker()
    counter = Counter(n)

    @broker.subscriber("ticks")
    async def handle(tick: Tick) -> None:
        counter.hit()

    payloads = ticks(n)
    async with TestBroker(broker) as br:
        start, cpu0 = time.perf_counter(), time.process_time()
        for p in payloads:
            await br.publish(p, "ticks")
        await counter.done.wait()
        end, cpu1 = time.perf_counter(), time.process_time()
    return Row(f"FastStream Test{kind.title()}Broker publish", n, end - start, "in-memory test broker", cpu=cpu1 - cpu0)


async def main(quick: bool) -> None:
    n = 20_000 if quick else 200_000
    rows = [await messagebus_publish_many(n), await messagebus_publish(n // 2)]
    for kind in ("kafka", "rabbit"):
        row = await faststream_broker(kind, max(2_000, n // 20))
        if row:
            rows.append(row)
    soak_n = 50_000 if quick else 1_000_000
    soak, samples = await messagebus_soak(soak_n)
    rows.append(soak)
    fast = [r for r in rows if r.name.startswith("FastStream")]
    ratio = ""
    if fast:
        best_peer = max(r.rate for r in fast)
        best_cpu = max(r.cpu_rate or 0 for r in fast)
        ratio = (
            f"\npublish_many vs the best FastStream test broker: {rows[0].rate / best_peer:.1f}x by wall clock, "
            f"{(rows[0].cpu_rate or 0) / best_cpu:.1f}x by CPU time\n"
        )
    mem = "\n".join(f"| {i:,} | {rss:.1f} |" for i, rss in samples)
    text = (
        f"## memory:// end to end\n\nMachine: {machine()}\n\n"
        f"Versions: {versions('messagebus-sdk', 'pydantic', 'faststream')}\n\n"
        f"Command: `python -m benchmarks.bench_memory{' --quick' if quick else ''}`\n\n"
        f"{table(rows, baseline=rows[0].name)}\n{ratio}\n"
        f"RSS while processing {soak_n:,} messages (MiB):\n\n| handled | RSS |\n|---:|---:|\n{mem}\n"
    )
    write("memory" if not quick else "memory-quick", text)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    asyncio.run(main(parser.parse_args().quick))
