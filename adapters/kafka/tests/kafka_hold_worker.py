"""Subprocess for the killed-consumer test: joins a group, takes messages, never settles them.

    python kafka_hold_worker.py KAFKA_URL TOPIC GROUP

Prints ``got <body>`` for every delivery and blocks its handler forever, so every message it
receives stays uncommitted until the process is killed.
"""

from __future__ import annotations

import asyncio
import sys

from messagebus_kafka import KafkaTransport

from messagebus.transports import Delivery, Destination, DestinationKind


async def main(url: str, topic: str, group: str) -> None:
    transport = KafkaTransport.from_url(url)
    await transport.connect()
    forever = asyncio.Event()

    async def hold(delivery: Delivery) -> None:
        print("got", delivery.body.decode(), flush=True)
        await forever.wait()

    await transport.subscribe(Destination(DestinationKind.TOPIC, topic, group), hold, concurrency=8)
    print("subscribed", flush=True)
    await forever.wait()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
