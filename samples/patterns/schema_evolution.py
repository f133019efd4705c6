"""Schema evolution: a legacy shop still on v1 of an event, a shop on v2, billing on v2.

    python -m samples.patterns.schema_evolution [URL]

``OrderPlaced`` changed: v1 carried ``amount`` in cents, v2 carries ``total`` as
``{"cents": ..., "currency": ...}`` and declares ``schema_version: ClassVar[int] = 2``. The
legacy shop publishes v1, the new shop v2; billing reads v2 and registers an upcaster
``@bus.upcaster(OrderPlaced, from_version=1)`` that turns a v1 message into a v2 one before
validation, so its handler only ever sees v2. A third producer already on v3 publishes one
order: no upcaster turns v3 into v2, so billing dead-letters it at once (never retried) with
the reason. The compatibility check (``messagebus schema check``) says why the upcaster is
needed: v1 -> v2 is not backward compatible.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

from pydantic import BaseModel

from messagebus import Bus, Envelope, Handler
from messagebus._compat import check_compatibility

from ._scene import Checks, namespaced, run_cli, say

#: Seconds to wait for billing and for the dead letter before giving up.
PATIENCE = 30.0


class OrderPlacedV1(BaseModel):
    """The legacy shop's event (version 1: no schema_version declared)."""

    id: str
    amount: int  # cents, always EUR


class Money(BaseModel):
    cents: int
    currency: str


class OrderPlaced(BaseModel):
    """The current event, as the new shop and billing declare it."""

    schema_version: ClassVar[int] = 2
    id: str
    total: Money


class OrderPlacedV3(BaseModel):
    """A future version some producer already publishes."""

    schema_version: ClassVar[int] = 3
    id: str
    total: Money
    channel: str


def order_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    """v1 -> v2: ``amount`` in cents becomes ``total`` with the currency v1 implied."""
    return {"id": data["id"], "total": {"cents": data["amount"], "currency": "EUR"}}


async def main(url: str, *, namespace: str | None = None) -> int:
    """Run the scene on ``url``; 0 when billing got both orders as v2 and the v3 one went to
    the dead letters, once, with its reason."""
    name = namespaced(url, namespace)
    topic = name("orders.placed")
    dead_letters = f"{topic}.billing.dlq"
    checks = Checks()
    billed: dict[str, OrderPlaced] = {}
    both = asyncio.Event()
    dead_lettered = asyncio.Event()

    def watch(handler: Handler) -> Handler:
        # Peek only once the dead letter is stored: a peek of an empty queue returns at once.
        async def watched(envelope: Envelope) -> None:
            envelope.on_settled(lambda s: dead_lettered.set() if s.outcome == "dead_letter" else None)
            await handler(envelope)

        return watched

    report = check_compatibility(OrderPlacedV1, OrderPlaced)
    say("ci", report.explain("backward").splitlines()[0])
    checks.expect(not report.backward_compatible, "the check says v1 -> v2 needs an upcaster (not backward compatible)")

    billing = Bus.from_url(url, service="billing")

    @billing.upcaster(OrderPlaced, from_version=1)
    def upcast(data: dict[str, Any]) -> dict[str, Any]:
        return order_v1_to_v2(data)

    @billing.subscribe(topic, group="billing", middleware=[watch])
    async def bill(order: OrderPlaced) -> None:
        billed[order.id] = order
        say("billing", f"billed {order.id}: {order.total.cents / 100:.2f} {order.total.currency}")
        if len(billed) == 2:
            both.set()

    legacy = Bus.from_url(url, service="legacy-shop")
    shop = Bus.from_url(url, service="shop")
    future = Bus.from_url(url, service="next-shop")
    async with billing, legacy, shop, future:
        await legacy.publish(topic, OrderPlacedV1(id="o-1", amount=1250))
        say("legacy-shop", "published o-1 as v1 (amount=1250)")
        await shop.publish(topic, OrderPlaced(id="o-2", total=Money(cents=990, currency="USD")))
        say("shop", "published o-2 as v2")
        await future.publish(topic, OrderPlacedV3(id="o-3", total=Money(cents=5, currency="EUR"), channel="app"))
        say("next-shop", "published o-3 as v3")
        try:
            await asyncio.wait_for(asyncio.gather(both.wait(), dead_lettered.wait()), PATIENCE)
        except TimeoutError:
            checks.expect(
                False,
                f"billing handles o-1, o-2 and dead-letters o-3 within {PATIENCE:.0f}s (billed: {sorted(billed)})",
            )
            return checks.result()
        letters = await billing.peek_dead_letters(dead_letters, limit=1, wait=PATIENCE)
        await billing.purge_dead_letters(dead_letters)
    checks.expect(
        billed.get("o-1") == OrderPlaced(id="o-1", total=Money(cents=1250, currency="EUR")),
        "the v1 order reaches the handler upcast to v2",
    )
    checks.expect("o-2" in billed and billed["o-2"].total.currency == "USD", "the v2 order reaches the handler as is")
    checks.expect("o-3" not in billed, "the v3 order never reaches the v2 handler")
    checks.expect(len(letters) == 1, f"the v3 order is dead-lettered (dead letters: {len(letters)})")
    if letters:
        headers = letters[0].wire_headers
        reason = headers.get("dlq-error-message", "")
        say("billing", f"dead letter after attempt {headers.get('dlq-attempts')}: {reason}")
        checks.expect(headers.get("dlq-attempts") == "1", "the v3 order is dead-lettered at once, never retried")
        checks.expect(
            "message is schema version 3, the handler reads version 2" in reason, "the reason names both versions"
        )
    return checks.result()


if __name__ == "__main__":
    run_cli(main, __doc__)
