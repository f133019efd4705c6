"""Soak: steady traffic with failures, retries and dead letters; throughput and memory over time.

    python -m benchmarks.soak --url memory:// --seconds 1800      # the full 30-minute soak
    python -m benchmarks.soak --url amqp://guest:guest@127.0.0.1/ --seconds 60

Each second the producer publishes ``--rate`` messages; 5% of them fail on their first
attempt (retried with backoff) and 0.5% are poison (dead-lettered at once, drained by a DLQ
consumer). Every ``--every`` seconds it prints handled/s, the backlog and RSS. The last line
says whether memory stayed flat: RSS growth between the end of warm-up and the end.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field

from benchmarks._common import current_rss_mib
from messagebus import Bus, Envelope, Retry


@dataclass
class SoakResult:
    """What a soak run measured."""

    url: str
    seconds: float
    published: int = 0
    handled: int = 0
    duplicates: int = 0
    poison: int = 0
    dead: int = 0
    seen: bytearray = field(default_factory=bytearray)  # one byte per message: lost vs duplicate

    @property
    def lost(self) -> int:
        """Published messages never handled."""
        return self.published - self.seen[: self.published].count(1)

    samples: list[tuple[float, int, int, float]] = field(default_factory=list)  # t, handled/s, backlog, rss

    @property
    def rss_growth_mib(self) -> float:
        """RSS at the end minus RSS after the first quarter (warm-up)."""
        if len(self.samples) < 2:
            return 0.0
        warm = self.samples[max(0, len(self.samples) // 4)][3]
        return self.samples[-1][3] - warm

    def table(self) -> str:
        lines = ["| t (s) | handled/s | backlog | RSS (MiB) |", "|---:|---:|---:|---:|"]
        lines += [f"| {t:.0f} | {r:,} | {b:,} | {m:.1f} |" for t, r, b, m in self.samples]
        return "\n".join(lines)


async def soak(url: str, seconds: float, rate: int = 2000, every: float = 5.0, quiet: bool = False) -> SoakResult:
    """Run the soak on ``url`` for ``seconds``; return what it measured."""
    topic = f"soak.{uuid.uuid4().hex[:8]}"
    result = SoakResult(url, seconds)
    consumer = Bus.from_url(url, service="soak", retry=Retry(max_attempts=3, initial_delay=0.05, jitter=0.1))
    producer = Bus.from_url(url, service="producer")
    producer_done = asyncio.Event()
    drained = asyncio.Event()

    @consumer.subscribe(topic, concurrency=16)
    async def handle(item: dict[str, int], envelope: Envelope) -> None:
        n = item["n"]
        if n % 20 == 0 and envelope.attempt == 1:
            raise RuntimeError("transient failure")
        seen = result.seen
        if n >= len(seen):
            seen.extend(bytes(n + 1 - len(seen) + 100_000))
        if seen[n]:
            result.duplicates += 1
            return
        seen[n] = 1
        result.handled += 1
        check_drained()

    @consumer.consume(f"{topic}.soak.dlq", concurrency=4)
    async def dead(envelope: Envelope) -> None:
        result.dead += 1
        check_drained()

    def check_drained() -> None:
        if producer_done.is_set() and result.handled >= result.published and result.dead >= result.poison:
            drained.set()

    async with consumer, producer:
        start = time.monotonic()
        last_t, last_handled = start, 0
        n = 0
        while (now := time.monotonic()) - start < seconds:
            batch = [{"n": n + i} for i in range(rate // 10)]
            n += len(batch)
            await producer.publish_many(topic, batch)
            poison = [b"\xff" for _ in range(max(1, rate // 2000))] if n % rate < rate // 10 else []
            for p in poison:
                await producer.publish(topic, p)
                result.poison += 1
            result.published += len(batch)
            # Pace the producer to ``rate`` per second: the soak is steady traffic, not a flood.
            await asyncio.sleep(max(0.0, start + n / rate - time.monotonic()))
            if now - last_t >= every:
                per_s = int((result.handled - last_handled) / (now - last_t))
                sample = (now - start, per_s, result.published - result.handled, current_rss_mib())
                result.samples.append(sample)
                if not quiet:
                    print(f"t={sample[0]:6.0f}s handled/s={per_s:>8,} backlog={sample[2]:>7,} rss={sample[3]:.1f} MiB")
                last_t, last_handled = now, result.handled
        producer_done.set()
        check_drained()
        await asyncio.wait_for(drained.wait(), 60)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default="memory://soak")
    parser.add_argument("--seconds", type=float, default=1800)
    parser.add_argument("--rate", type=int, default=2000)
    parser.add_argument("--every", type=float, default=10)
    args = parser.parse_args()
    logging.getLogger("messagebus").setLevel(logging.CRITICAL)  # the soak fails on purpose; keep output readable
    result = asyncio.run(soak(args.url, args.seconds, args.rate, args.every))
    print(result.table())
    print(
        f"\n{result.published:,} published, {result.handled:,} handled, {result.lost:,} lost, "
        f"{result.duplicates:,} duplicates, {result.dead:,} dead-lettered; "
        f"RSS growth after warm-up: {result.rss_growth_mib:+.1f} MiB"
    )


if __name__ == "__main__":
    main()
