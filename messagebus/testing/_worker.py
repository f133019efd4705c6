"""Worker processes for fault tests: ``python -m messagebus.testing._worker URL QUEUE``.

As a consumer (the default) it prints ``ready`` once consuming, then ``handled N RUN`` for
each message (before it is acked), so a test can SIGKILL it mid-batch or SIGTERM it under
load and see what it had done. ``--delay S`` makes each handler take S seconds.

As a producer (``--publish N --run RUN``) it sends messages ``0 .. N-1`` of run ``RUN`` one
at a time and prints ``confirmed I`` as soon as ``send`` returned for message ``I``, so a
test can SIGKILL it right after confirmed sends and check that each printed id arrives.
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


async def _consume(url: str, queue: str, delay: float, concurrency: int) -> None:
    bus = Bus.from_url(url, service="worker")

    @bus.consume(queue, concurrency=concurrency)
    async def handle(item: _Item) -> None:
        if delay:
            await asyncio.sleep(delay)
        print(f"handled {item['n']} {item['run']}", flush=True)

    await bus.start()
    print("ready", flush=True)
    await bus.run(grace=30)
    print("stopped", flush=True)


async def _publish(url: str, queue: str, count: int, run: str) -> None:
    bus = Bus.from_url(url, service="producer")
    async with bus:
        print("ready", flush=True)
        for n in range(count):
            await bus.send(queue, _Item(n=n, run=run))
            # Printed only after the broker confirmed it: the test's promise to check.
            print(f"confirmed {n}", flush=True)
    print("done", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("queue")
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--publish", type=int, default=0, help="send this many messages instead of consuming")
    parser.add_argument("--run", default="worker", help="run id carried by published messages")
    args = parser.parse_args()
    if args.publish:
        asyncio.run(_publish(args.url, args.queue, args.publish, args.run))
    else:
        asyncio.run(_consume(args.url, args.queue, args.delay, args.concurrency))
    sys.exit(0)


if __name__ == "__main__":
    main()
