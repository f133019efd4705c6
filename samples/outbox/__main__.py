"""Orders and payments with the transactional outbox and the idempotent inbox.

    python -m samples.outbox                                   # memory:// and the local PostgreSQL
    python -m samples.outbox --url amqp://guest:guest@localhost/ --dsn postgresql://localhost/shop

The orders service writes each order and its OrderPlaced event in one transaction (order 3's
transaction fails and rolls back: no event); the payments service charges each order once,
in the same transaction as the inbox's record of the message, although every event is
delivered twice here (as after a relay died between publishing and marking). The tables
live in a schema of their own, dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import uuid

import asyncpg
from pydantic import BaseModel

from messagebus import Bus, Envelope, Handler
from messagebus.outbox import Inbox, Outbox, connection, migrate

DEFAULT_DSN = os.environ.get("MESSAGEBUS_OUTBOX_DSN", "postgresql://postgres@127.0.0.1:5432/test")


class OrderPlaced(BaseModel):
    order_id: str
    total: float


def twice(handler: Handler) -> Handler:
    """Deliver each message twice, as a relay that died before marking it sent would."""

    async def duplicate(envelope: Envelope) -> None:
        await handler(envelope)
        await handler(envelope)

    return duplicate


async def run(url: str, dsn: str, orders: int = 4, timeout: float = 30.0) -> int:
    schema = f"sample_outbox_{uuid.uuid4().hex[:8]}"
    await migrate(dsn, schema=schema)
    pool = await asyncpg.create_pool(dsn, server_settings={"search_path": schema})
    try:
        async with pool.acquire() as conn:
            await conn.execute("CREATE TABLE orders (id text PRIMARY KEY, total numeric)")
            await conn.execute("CREATE TABLE charges (order_id text, amount numeric)")
        return await _shop(url, pool, schema, orders, timeout)
    finally:
        await pool.close()
        conn = await asyncpg.connect(dsn)
        await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await conn.close()


async def _shop(url: str, pool: asyncpg.Pool, schema: str, orders: int, timeout: float) -> int:
    topic = f"orders.placed.{uuid.uuid4().hex[:6]}"  # a fresh topic: a shared broker may hold old runs
    charged = asyncio.Event()
    shop = Bus.from_url(url, service="orders")
    payments = Bus.from_url(url, service="payments")
    inbox = Inbox(pool, schema=schema)

    @payments.subscribe(topic, middleware=[twice, inbox])
    async def charge(order: OrderPlaced) -> None:
        await connection().execute("INSERT INTO charges VALUES ($1, $2)", order.order_id, order.total)
        print(f"payments | charged {order.order_id} ${order.total:.2f}")
        count = await connection().fetchval("SELECT count(*) FROM charges")
        if count == orders - 1:
            charged.set()

    outbox = Outbox(shop, pool, schema=schema)
    async with payments, shop, outbox:
        for i in range(1, orders + 1):
            order = OrderPlaced(order_id=f"order-{i}", total=round(19.99 * i, 2))
            try:
                async with pool.acquire() as conn, conn.transaction():
                    await conn.execute("INSERT INTO orders VALUES ($1, $2)", order.order_id, order.total)
                    await outbox.publish(conn, topic, order, key=order.order_id)
                    if i == 3:
                        raise RuntimeError("stock check failed")
                print(f"orders   | placed {order.order_id}")
            except RuntimeError as exc:
                print(f"orders   | {order.order_id} rolled back ({exc}): no event")
        await asyncio.wait_for(charged.wait(), timeout)
    await inbox.close()
    async with pool.acquire() as conn:
        charges = await conn.fetchval("SELECT count(*) FROM charges")
        placed = await conn.fetchval("SELECT count(*) FROM orders")
    print(f"{placed} orders placed, {charges} charged once each, every event delivered twice")
    return 0 if charges == placed == orders - 1 else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=os.environ.get("MESSAGEBUS_URL", "memory://"))
    parser.add_argument("--dsn", default=DEFAULT_DSN)
    parser.add_argument("--orders", type=int, default=4)
    args = parser.parse_args()
    return asyncio.run(run(args.url, args.dsn, args.orders))


if __name__ == "__main__":
    sys.exit(main())
