"""A memory broker is shared across threads and event loops, like a real broker."""

import asyncio
import threading

from messagebus import Bus
from messagebus.testing import Collector


def test_producer_and_consumer_on_different_threads(memory_url: str) -> None:
    n = 2000
    ready = threading.Event()
    result: list[int] = []

    async def consume() -> None:
        got: Collector[int] = Collector(20)
        bus = Bus.from_url(memory_url, service="c")

        @bus.subscribe("ticks", concurrency=4)
        async def handle(i: int) -> None:
            got.add(i)

        async with bus:
            ready.set()
            result.extend(await got.wait_for(n))

    consumer = threading.Thread(target=asyncio.run, args=(consume(),))
    consumer.start()
    assert ready.wait(10)

    async def produce() -> None:
        async with Bus.from_url(memory_url, service="p") as bus:
            for i in range(0, n, 100):
                await bus.publish_many("ticks", list(range(i, i + 100)))

    asyncio.run(produce())
    consumer.join(30)
    assert sorted(result) == list(range(n))
