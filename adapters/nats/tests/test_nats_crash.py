"""kill -9 of a private nats-server mid-flow, restart: nothing confirmed is lost."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from typing import Any

from messagebus import Bus, MessageBusError
from messagebus.testing import Collector
from messagebus.testing._brokers import BrokerProcess


async def test_sigkill_mid_flow_loses_nothing_confirmed(nats_crash_server: BrokerProcess) -> None:
    """Catches a publish that returns before JetStream stored the message, an ack sent before
    the handler returned, and a transport that does not come back after its server was
    killed (no reconnect, pulls never asked again): confirmed messages all handled after a
    SIGKILL and restart, no unexpected ones, duplicates only among messages acked before
    the kill (the server writes consumer ack state lazily; see the README)."""
    server = nats_crash_server
    await server.start()
    queue = f"crash.{uuid.uuid4().hex[:10]}"
    got: Collector[int] = Collector(60)
    confirmed: set[int] = set()
    consumer = Bus.from_url(server.url, service="crash")
    producer = Bus.from_url(server.url, service="crash-producer")

    @consumer.consume(queue, concurrency=4)
    async def handle(item: dict[str, Any]) -> None:
        got.add(int(item["n"]))

    async def send(ns: range) -> None:
        for start in range(ns.start, ns.stop, 10):
            batch = range(start, min(start + 10, ns.stop))
            try:
                await producer.send_many(queue, [{"n": n} for n in batch])
            except MessageBusError:
                continue  # not confirmed: not promised
            confirmed.update(batch)

    async with consumer, producer:
        await send(range(300))
        await got.wait_until(lambda items: len(set(items)) >= 150, "traffic flowing")
        sending = asyncio.create_task(send(range(300, 600)))
        await server.crash()
        await server.start()
        await sending
        await send(range(600, 700))
        await got.wait_until(lambda items: confirmed <= set(items), "every confirmed message", timeout=90)
    counts = Counter(got.items)
    duplicates = sum(c - 1 for c in counts.values())
    print(f"\nFAULT nats sigkill: sent=700 confirmed={len(confirmed)} lost=0 dup={duplicates}")
    assert not set(counts) - set(range(700)), "messages never sent were handled"
    assert duplicates <= 700, "more duplicates than messages"
