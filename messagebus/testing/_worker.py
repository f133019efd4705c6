"""A consumer process for fault tests: ``python -m messagebus.testing._worker URL QUEUE``.

Prints ``ready`` once consuming, then ``handled N`` for each message (before it is acked),
so a test can SIGKILL it mid-batch or SIGTERM it under load and see what it had done.
``--delay S`` makes each handler take S seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from typing_extensions import TypedDict

from .._bus import Bus


class _Item(TypedDict):
    n: int
    run: str


async def _main(url: str, queue: str, delay: float, concurrency: int) -> None:
    bus = Bus.from_url(url, service="worker")

    @bus.consume(queue, concurrency=concurrency)
    async def handle(item: _Item) -> None:
        if delay:
            await asyncio.sleep(delay)
        print(f"handled {item['n']}", flush=True)

    await bus.start()
    print("ready", flush=True)
    await bus.run(grace=30)
    print("stopped", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("queue")
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    asyncio.run(_main(args.url, args.queue, args.delay, args.concurrency))
    sys.exit(0)


if __name__ == "__main__":
    main()
