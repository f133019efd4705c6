"""Batch handlers: a bulk indexer takes new orders 50 at a time; a poison message goes to the
dead letters alone.

    python -m samples.patterns.batch [URL]

The search service subscribes ``orders.created`` with ``batch=50, batch_timeout=0.2`` and a
``list[OrderCreated]`` handler that indexes each batch in one bulk call, printing its size
(up to 50; a partial batch 0.2 s after its first order). The orders service publishes 120
orders and, among them, one message that is not an order: it never joins a batch, goes to
the dead letters ``orders.created.search.dlq`` alone (read here by the ops service), and
every one of the 120 orders is indexed.
"""

from __future__ import annotations

import asyncio

from pydantic import BaseModel

from messagebus import Bus, Envelope

from ._scene import Checks, namespaced, run_cli, say

ORDERS = 120
BATCH = 50
#: Seconds to wait for every order and the dead letter before giving up.
PATIENCE = 30.0


class OrderCreated(BaseModel):
    order_id: str
    customer: str
    total: float


async def main(url: str, *, namespace: str | None = None) -> int:
    """Run the scene on ``url``; 0 when each order was indexed once, no batch held more than
    50, and only the poison message was dead-lettered."""
    name = namespaced(url, namespace)
    topic = name("orders.created")
    dead_letters = f"{topic}.search.dlq"
    checks = Checks()
    indexed: list[str] = []
    sizes: list[int] = []
    dead: list[Envelope] = []
    all_indexed, poison_seen = asyncio.Event(), asyncio.Event()

    search = Bus.from_url(url, service="search")

    @search.subscribe(topic, batch=BATCH, batch_timeout=0.2)
    async def index(orders: list[OrderCreated]) -> None:
        sizes.append(len(orders))
        indexed.extend(order.order_id for order in orders)
        say("search", f"bulk-indexed {len(orders):>2} orders ({orders[0].order_id} .. {orders[-1].order_id})")
        if len(indexed) >= ORDERS:
            all_indexed.set()

    ops = Bus.from_url(url, service="ops")

    @ops.consume(dead_letters)
    async def inspect(body: bytes, envelope: Envelope) -> None:
        dead.append(envelope)
        say("ops", f"dead letter {body[:40]!r}: {envelope.headers.get('dlq-error-type')}")
        poison_seen.set()

    shop = Bus.from_url(url, service="orders")
    async with search, ops, shop:
        orders = [OrderCreated(order_id=f"order-{i}", customer="ada", total=9.99 + i) for i in range(1, ORDERS + 1)]
        await shop.publish_many(topic, orders[:60])
        await shop.publish(topic, "garbled: not an order")
        await shop.publish_many(topic, orders[60:])
        say("orders", f"published {ORDERS} orders and one garbled message to {topic}")
        try:
            await asyncio.wait_for(asyncio.gather(all_indexed.wait(), poison_seen.wait()), PATIENCE)
        except TimeoutError:
            checks.expect(
                False, f"within {PATIENCE:.0f}s, every order is indexed ({len(indexed)}) and the poison dead-lettered"
            )
            return checks.result()
    say("sample", f"batch sizes: {sizes}")
    checks.expect(sorted(indexed) == sorted(order.order_id for order in orders), "each order is indexed exactly once")
    checks.expect(max(sizes) <= BATCH, f"no batch holds more than {BATCH}")
    checks.expect(len(dead) == 1, f"only the poison message is dead-lettered, got {len(dead)}")
    checks.expect(
        all(e.headers.get("dlq-error-type") == "messagebus.DecodeError" for e in dead),
        "the dead letter names the DecodeError",
    )
    return checks.result()


if __name__ == "__main__":
    run_cli(main, __doc__)
