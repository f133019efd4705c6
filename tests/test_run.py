"""bus.run() stops gracefully on SIGTERM: in-flight handlers finish and are acked."""

import asyncio
import os
import signal

from messagebus import Bus, BusState
from messagebus.testing import MemoryBroker


async def test_sigterm_stops_gracefully(memory_url: str, memory_broker: MemoryBroker) -> None:
    bus = Bus.from_url(memory_url, service="worker")
    started = asyncio.Event()
    finished: list[int] = []

    @bus.consume("jobs")
    async def job(n: int) -> None:
        started.set()
        await asyncio.sleep(0.05)  # simulated work that the shutdown must wait for
        finished.append(n)

    producer = Bus.from_url(memory_url, service="p")
    async with producer:
        await producer.send("jobs", 1)  # waits in the queue until run() starts the consumer
    runner = asyncio.create_task(bus.run(grace=10))
    await asyncio.wait_for(started.wait(), 5)
    assert bus.state is BusState.RUNNING
    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.wait_for(runner, 10)
    assert finished == [1]
    assert bus.state is BusState.STOPPED
    assert memory_broker.pending("jobs") == 0
    assert memory_broker.is_idle()
