"""A service process for the kill tests: writes messages through the outbox in one
transaction, then its relay stops at a chosen point and waits there to be SIGKILLed.

    python outbox_service.py MODE BROKER_URL DSN SCHEMA TOPIC COUNT

MODE ``before-publish``: the relay claimed the committed rows and stops before publishing
(prints ``holding``). MODE ``after-publish``: the broker confirmed the relay's publish and
the relay stops before marking the rows sent (prints ``published``). First it prints
``committed ID,ID,...``.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence

import asyncpg

from messagebus import Bus, OutgoingMessage, PublishFn
from messagebus.outbox import Outbox


async def main(mode: str, url: str, dsn: str, schema: str, topic: str, count: int) -> None:
    forever = asyncio.Event()

    def stop_in_relay(publish: PublishFn) -> PublishFn:
        async def stopping(messages: Sequence[OutgoingMessage]) -> None:
            if mode == "before-publish":
                print("holding", flush=True)
                await forever.wait()
            await publish(messages)
            print("published", flush=True)
            await forever.wait()

        return stopping

    bus = Bus.from_url(url, service="shop", publish_middleware=[stop_in_relay])
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
    async with bus, Outbox(bus, pool, schema=schema, poll_interval=0.2) as outbox:
        async with pool.acquire() as conn, conn.transaction():
            ids = [await outbox.publish(conn, topic, {"n": n}, key="order-1") for n in range(count)]
        print("committed " + ",".join(ids), flush=True)
        await forever.wait()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:6], int(sys.argv[6])))
