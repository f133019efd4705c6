"""Routing: an audit log of every ``orders.*`` event, and an EU warehouse that takes only
the orders whose ``region`` header is ``eu``.

    python -m samples.patterns.routing [URL]

The audit service subscribes the pattern ``orders.*`` (``*``: one dot-separated segment)
and prints ``Envelope.destination``, the topic each event was published to. The EU
warehouse subscribes ``orders.created`` as group ``eu`` with ``filter={"region": "eu"}``.
The orders service publishes created, paid and cancelled events for EU and US orders (and
an ``orders.created.v2`` event that ``orders.*`` must not match). On a transport without
wildcard subscriptions the bus raises ``UnsupportedFeature`` when the pattern is
registered: the sample prints its reason and runs the filter part alone.
"""

from __future__ import annotations

import asyncio

from pydantic import BaseModel

from messagebus import Bus, Envelope, UnsupportedFeature

from ._scene import Checks, namespaced, run_cli, say

#: Seconds to wait for the expected events before giving up.
PATIENCE = 30.0


class OrderEvent(BaseModel):
    order_id: str
    region: str


#: (topic, order id, region) in publish order. The EU orders come last, so where the broker
#: keeps publish order, the US ones were seen (and filtered out) before the EU warehouse
#: had both of its orders.
EVENTS = [
    ("orders.created", "order-1", "us"),
    ("orders.created", "order-2", "eu"),
    ("orders.paid", "order-2", "eu"),
    ("orders.created", "order-3", "us"),
    ("orders.cancelled", "order-1", "us"),
    ("orders.created.v2", "order-4", "eu"),
    ("orders.created", "order-5", "eu"),
]


async def main(url: str, *, namespace: str | None = None) -> int:
    """Run the scene on ``url``; 0 when the audit log got every ``orders.<one segment>``
    event with its real topic (where the transport has wildcards) and the EU warehouse only
    the EU ``orders.created`` events."""
    name = namespaced(url, namespace)
    checks = Checks()
    audited: list[tuple[str, str]] = []
    warehouse: list[str] = []
    want_audit = [(name(topic), order) for topic, order, _ in EVENTS if topic.count(".") == 1]
    want_eu = [order for topic, order, region in EVENTS if topic == "orders.created" and region == "eu"]
    audit_done, eu_done = asyncio.Event(), asyncio.Event()

    audit = Bus.from_url(url, service="audit")
    try:

        @audit.subscribe(name("orders.*"), group="audit")
        async def log(event: dict[str, str], envelope: Envelope) -> None:
            audited.append((envelope.destination, event["order_id"]))
            say("audit", f"{envelope.destination}: {event['order_id']} ({event['region']})")
            if len(audited) >= len(want_audit):
                audit_done.set()

    except UnsupportedFeature as error:
        say("audit", f"no wildcard subscription here: {error}")
        say("audit", "running the filter part alone")
        audit_done.set()
        wildcards = False
    else:
        wildcards = True

    warehouses = Bus.from_url(url, service="warehouse")

    @warehouses.subscribe(name("orders.created"), group="eu", filter={"region": "eu"})
    async def ship_from_eu(order: OrderEvent) -> None:
        warehouse.append(order.order_id)
        say("eu", f"picking {order.order_id} in the EU warehouse")
        if len(warehouse) >= len(want_eu):
            eu_done.set()

    shop = Bus.from_url(url, service="orders")
    buses = [audit, warehouses, shop] if wildcards else [warehouses, shop]
    for bus in buses:
        await bus.start()
    try:
        for topic, order, region in EVENTS:
            await shop.publish(name(topic), OrderEvent(order_id=order, region=region), headers={"region": region})
            say("orders", f"published {name(topic)} {order} region={region}")
        try:
            await asyncio.wait_for(asyncio.gather(audit_done.wait(), eu_done.wait()), PATIENCE)
        except TimeoutError:
            checks.expect(False, f"within {PATIENCE:.0f}s: audit {audited}, EU warehouse {warehouse}")
    finally:
        for bus in reversed(buses):
            await bus.stop()
    # Sorted: messages of different keys may come in any order (Kafka partitions, SQS).
    checks.expect(sorted(warehouse) == want_eu, f"the EU warehouse gets only {want_eu}, got {warehouse}")
    if wildcards:
        checks.expect(
            sorted(audited) == sorted(want_audit),
            f"the audit log gets each orders.<segment> event with its topic, got {audited}",
        )
    return checks.result()


if __name__ == "__main__":
    run_cli(main, __doc__)
