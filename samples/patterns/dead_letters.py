"""Dead letters: billing fails on some orders, the fix ships, the operator replays them.

    python -m samples.patterns.dead_letters [URL]

Six orders are published to ``orders.created``. The audit service records each one. The
billing service has a bug: orders paid in yen make it raise, so after its retries those go to
``orders.created.billing.dlq``. The operator lists the dead-letter queues, peeks at the dead
letters (which removes nothing), "deploys the fix" and replays them: each goes back to
billing only, as attempt 1 with its original id. Audit, which handled every order the first
time, sees none of them again. The same from a shell::

    messagebus dlq list URL
    messagebus dlq show URL orders.created.billing.dlq
    messagebus dlq replay URL orders.created.billing.dlq
"""

from __future__ import annotations

import asyncio

from pydantic import BaseModel

from messagebus import Bus, Envelope, Retry

from ._scene import Checks, namespaced, run_cli, say

#: Seconds to wait for each step before giving up.
PATIENCE = 30.0


class OrderCreated(BaseModel):
    order_id: int
    currency: str


async def _wait(event: asyncio.Event, checks: Checks, what: str) -> bool:
    try:
        await asyncio.wait_for(event.wait(), PATIENCE)
    except TimeoutError:
        checks.expect(False, f"{what} within {PATIENCE:.0f}s")
        return False
    return True


async def main(url: str, *, namespace: str | None = None) -> int:
    """Run the scene on ``url``; 0 when the failed orders were found, replayed to billing
    alone and billed, and audit saw each order once."""
    name = namespaced(url, namespace)
    topic = name("orders.created")
    dlq = f"{topic}.billing.dlq"
    checks = Checks()
    fixed = False
    billed: list[tuple[int, int]] = []
    audited: list[int] = []
    failed: set[int] = set()
    all_audited, first_pass, all_billed, marker = (asyncio.Event() for _ in range(4))
    orders = [OrderCreated(order_id=i, currency="JPY" if i % 3 == 0 else "EUR") for i in range(1, 7)]
    yen = {o.order_id for o in orders if o.currency == "JPY"}

    billing = Bus.from_url(url, service="billing", retry=Retry(max_attempts=2, initial_delay=0.05, jitter=0.0))

    @billing.subscribe(topic, group="billing")
    async def bill(order: OrderCreated, envelope: Envelope) -> None:
        if order.order_id == 0:
            return
        if order.currency == "JPY" and not fixed:
            if envelope.attempt == 2:
                failed.add(order.order_id)
            if len(failed) == len(yen) and len(billed) == len(orders) - len(yen):
                first_pass.set()
            raise ValueError(f"no exchange rate for {order.currency}")
        billed.append((order.order_id, envelope.attempt))
        say("billing", f"billed order {order.order_id} (attempt {envelope.attempt})")
        if len(billed) == len(orders) - len(yen) and len(failed) == len(yen):
            first_pass.set()
        if len(billed) == len(orders):
            all_billed.set()

    @billing.subscribe(topic, group="audit")
    async def audit(order: OrderCreated) -> None:
        if order.order_id == 0:
            marker.set()
            return
        audited.append(order.order_id)
        if len(audited) == len(orders):
            all_audited.set()

    shop = Bus.from_url(url, service="shop")
    operator = Bus.from_url(url, service="operator")
    async with billing, shop, operator:
        for order in orders:
            await shop.publish(topic, order, key=str(order.order_id))
        say("shop", f"published {len(orders)} orders, {len(yen)} of them in yen")
        if not (await _wait(first_pass, checks, "billing's first pass") and await _wait(all_audited, checks, "audit")):
            return checks.result()
        # The copy reaches the dead-letter queue right after the last failure: wait for the broker's count.
        for _ in range(int(PATIENCE / 0.05)):
            depths = {q.name: q.depth for q in await operator.dead_letter_queues()}
            if depths.get(dlq) in (len(yen), None):
                break
            await asyncio.sleep(0.05)
        say("operator", f"{dlq}: {depths.get(dlq)} dead letter(s) ({len(depths)} dead-letter queues on the broker)")
        letters = await operator.peek_dead_letters(dlq)
        for letter in letters:
            say(
                "operator",
                f"dead letter {letter.id[:8]}: {letter.body.decode()} - {letter.headers['dlq-error-message']}",
            )
        checks.expect(len(letters) == len(yen), f"the {len(yen)} yen orders are in {dlq} (found {len(letters)})")
        checks.expect(len(await operator.peek_dead_letters(dlq)) == len(yen), "a peek removes nothing")

        fixed = True
        say("operator", "billing fixed; replaying")
        replayed = await operator.replay_dead_letters(dlq)
        say("operator", f"replayed {replayed} dead letter(s)")
        if not await _wait(all_billed, checks, "billing of the replayed orders"):
            return checks.result()
        # A marker published after the replay: once audit has it, a replay that had gone to the
        # whole topic would have reached audit too.
        await shop.publish(topic, OrderCreated(order_id=0, currency="EUR"))
        if not await _wait(marker, checks, "audit of the marker"):
            return checks.result()
        checks.expect(replayed == len(yen), f"{len(yen)} dead letters replayed (got {replayed})")
        again = sorted(i for i, attempt in billed if i in yen)
        checks.expect(again == sorted(yen), f"billing billed each yen order once after the replay ({again})")
        checks.expect(all(attempt == 1 for i, attempt in billed if i in yen), "replayed orders arrive as attempt 1")
        checks.expect(sorted(audited) == sorted(o.order_id for o in orders), "audit saw each order once")
        checks.expect(await operator.peek_dead_letters(dlq) == [], "the dead-letter queue is empty after the replay")
    return checks.result()


if __name__ == "__main__":
    run_cli(main, __doc__)
