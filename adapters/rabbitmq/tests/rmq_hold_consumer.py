"""Subprocess for test_killed_consumer: consume one queue, report each message, never ack."""

from __future__ import annotations

import asyncio
import json
import sys

from messagebus_rabbitmq import RabbitMQTransport

from messagebus.transports import Delivery, Destination, DestinationKind, TransportURL


async def main(url: str, queue: str) -> None:
    transport = RabbitMQTransport.from_url(TransportURL.parse(url))
    await transport.connect()

    async def hold(delivery: Delivery) -> None:
        print(f"got {json.loads(delivery.body)['n']}", flush=True)
        await asyncio.Event().wait()  # never settles: the process is killed while holding it

    await transport.subscribe(Destination(DestinationKind.QUEUE, queue), hold, concurrency=1)
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
