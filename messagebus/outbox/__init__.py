"""Transactional outbox and idempotent inbox on PostgreSQL (extra ``messagebus-sdk[postgres]``).

Make "write and publish" atomic, and "handle" idempotent, on any broker the bus runs on::

    from messagebus.outbox import Inbox, Outbox, connection, migrate

    await migrate(pool)                                # or: messagebus outbox migrate DSN
    outbox = Outbox(bus, pool)
    async with bus, outbox:
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("INSERT INTO orders ...")
            await outbox.publish(conn, "orders.created", event, key="order-42")

    inbox = Inbox(pool)

    @bus.subscribe("orders.created", middleware=[inbox])
    async def bill(order: OrderCreated) -> None:
        await connection().execute("INSERT INTO charges ...")   # commits with the "seen" record

asyncpg is imported on first use: this package imports without it. docs/outbox.md has the
guarantees, the schema and the operations guide.
"""

from ._inbox import Inbox, connection
from ._outbox import Outbox
from ._schema import Tables, migrate, schema_version

__all__ = ["Inbox", "Outbox", "Tables", "connection", "migrate", "schema_version"]
