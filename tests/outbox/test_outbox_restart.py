"""10,000 messages through the outbox across two relays and a broker restart, with the
inbox on the consumer: lost 0, handled twice 0, order per key kept on the broker. A private
Redis (AOF) is restarted gracefully mid-flow; the shared brokers are never touched."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import pytest
from outbox_helpers import Ledger

from messagebus import Bus, Envelope, Handler, OutgoingMessage, PublishFn
from messagebus.outbox import Inbox, Outbox, connection
from messagebus.testing import free_port, missing_broker
from messagebus.testing._brokers import BrokerProcess

TOTAL = 10_000
KEYS = 40
WRITERS = 4
PER_TRANSACTION = 50
#: The broker restarts once the relays published this many: mid-flow on both sides.
RESTART_AFTER = 3_000
TIMEOUT = 90.0

pytestmark = [pytest.mark.faults, pytest.mark.slow]


@pytest.fixture(scope="module")
def private_redis() -> Iterator[BrokerProcess]:
    """A redis-server of this module's own, restarted by the test."""
    pytest.importorskip("messagebus_redis")
    server = shutil.which("redis-server")
    if server is None:
        missing_broker("Redis", "redis-server is not installed (needed for the restart test)")
    with tempfile.TemporaryDirectory(prefix="messagebus-outbox-redis-") as base:
        port = free_port()
        command = [server, "--port", str(port), "--bind", "127.0.0.1", "--appendonly", "yes"]
        command += ["--appendfsync", "everysec", "--save", "", "--dir", base, "--protected-mode", "no"]
        url = f"redis://127.0.0.1:{port}/0?visibility_timeout=5&socket_timeout=5"
        broker = BrokerProcess(
            "redis (private)", command, port, url, keeps_messages=True, log_path=os.path.join(base, "redis.log")
        )
        try:
            broker.start_sync()
            yield broker
        finally:
            broker.close()


def _first_break(ns: list[int]) -> list[int]:
    """The handled sequence around its first step back."""
    i = next(i for i in range(1, len(ns)) if ns[i] < ns[i - 1])
    return ns[max(0, i - 5) : i + 5]


async def _stream_order_breaks(url: str, topic: str) -> dict[str, list[int]]:
    """Keys whose messages are not in order in the topic's stream (first copies only)."""
    import redis.asyncio as redis

    client = redis.Redis.from_url(url.split("?")[0])
    try:
        entries = await client.xrange(f"mb:t:{{{topic}}}")
    finally:
        await client.aclose()
    order: dict[str, list[int]] = {}
    seen: set[tuple[str, int]] = set()
    for _, fields in entries:
        for value in fields.values():
            try:
                body = json.loads(value)
            except (ValueError, UnicodeDecodeError):
                continue
            if isinstance(body, dict) and "key" in body and (body["key"], body["n"]) not in seen:
                seen.add((body["key"], body["n"]))
                order.setdefault(body["key"], []).append(body["n"])
    assert len(seen) == TOTAL, f"the stream holds {len(seen)} distinct messages"
    return {k: _first_break(ns) for k, ns in order.items() if ns != sorted(ns)}


class Deliveries:
    """Outer middleware: every delivery that reached the inbox (handled or skipped)."""

    def __init__(self) -> None:
        self.total = 0

    def __call__(self, handler: Handler) -> Handler:
        async def count(envelope: Envelope) -> None:
            await handler(envelope)
            self.total += 1

        return count


@pytest.fixture
async def fast_pool(dsn: str, schema: str) -> AsyncIterator[Any]:
    """PostgreSQL is not crashed here: commits need not wait for their WAL flush (an
    inbox commit per message would otherwise make this test fsync-bound)."""
    import asyncpg

    settings = {"search_path": schema, "synchronous_commit": "off"}
    created = await asyncpg.create_pool(dsn, min_size=1, max_size=12, server_settings=settings)
    yield created
    await created.close()


async def test_ten_thousand_across_two_relays_and_a_broker_restart(
    private_redis: BrokerProcess, fast_pool: Any, schema: str
) -> None:
    """Catches: messages lost when the broker goes away under a relay (rows marked sent for
    a publish that failed), duplicates the inbox lets through (handled twice), relays
    publishing the same rows at once, and key order broken across relays or by the
    republished rows after the restart."""
    url = private_redis.url
    pool = fast_pool
    topic = f"ledger.{uuid.uuid4().hex[:8]}"
    ledger, deliveries = Ledger(), Deliveries()
    inbox = Inbox(pool, schema=schema)
    async with pool.acquire() as conn:
        await conn.execute("CREATE TABLE effects (seq bigserial, message_id text, key text, n int)")

    consumer = Bus.from_url(url, service="billing")

    @consumer.subscribe(topic, concurrency=8, middleware=[deliveries, inbox])
    async def book(body: dict[str, Any], envelope: Envelope) -> None:
        await connection().execute(
            "INSERT INTO effects (message_id, key, n) VALUES ($1, $2, $3)", envelope.id, envelope.key, body["n"]
        )
        ledger.handle(envelope.id)

    published = Ledger()

    def counted(publish: PublishFn) -> PublishFn:
        async def count(messages: Sequence[OutgoingMessage]) -> None:
            await publish(messages)
            for message in messages:
                published.handle(message.id)

        return count

    relays = [Bus.from_url(url, service=f"relay{i}", publish_middleware=[counted]) for i in range(2)]
    outboxes = [Outbox(bus, pool, schema=schema, poll_interval=0.2, publish_timeout=10) for bus in relays]
    keys = [f"account-{k}" for k in range(KEYS)]
    seq = dict.fromkeys(keys, 0)

    async def writer(w: int) -> None:
        mine = keys[w::WRITERS]  # one writer per key: the key's order is its commit order
        for t in range(TOTAL // WRITERS // PER_TRANSACTION):
            payloads = []
            for i in range(PER_TRANSACTION):
                key = mine[(t + i) % len(mine)]
                payloads.append({"n": seq[key], "key": key})
                seq[key] += 1
            async with pool.acquire() as conn, conn.transaction():
                ids = await outboxes[w % 2].publish_many(conn, topic, payloads, key=lambda p: p["key"])
            for message_id, payload in zip(ids, payloads, strict=True):
                ledger.expect(message_id, payload["key"], payload["n"])

    await consumer.start()
    try:
        for bus in relays:
            await bus.start()
        for outbox in outboxes:
            await outbox.start()
        writers = [asyncio.create_task(writer(w)) for w in range(WRITERS)]
        await published.wait(lambda led: len(led.handled) >= RESTART_AFTER, f"{RESTART_AFTER} published", TIMEOUT)
        restarted_at = len(published.handled)
        await private_redis.restart()
        await asyncio.gather(*writers)
        assert len(ledger.expected) == TOTAL
        await ledger.wait_all(TIMEOUT)
    finally:
        for outbox in outboxes:
            await outbox.stop()
        for bus in (*relays, consumer):
            await bus.stop(grace=5)
        await inbox.close()
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT message_id, key, n FROM effects ORDER BY seq")
        unsent = await conn.fetchval("SELECT count(*) FROM messagebus_outbox WHERE sent_at IS NULL")
    handled_twice = len(rows) - len({r["message_id"] for r in rows})
    lost = len(set(ledger.expected) - {r["message_id"] for r in rows})
    handled_order: dict[str, list[int]] = {}
    for r in rows:
        handled_order.setdefault(r["key"], []).append(r["n"])
    handled_out_of_order = {k: _first_break(ns) for k, ns in handled_order.items() if ns != sorted(ns)}
    stream_out_of_order = await _stream_order_breaks(url, topic)
    print(
        f"\nFAULT outbox_broker_restart redis: written={TOTAL} handled={len(rows)} lost={lost} "
        f"handled_twice={handled_twice} deliveries={deliveries.total} (duplicates the inbox skipped: "
        f"{deliveries.total - len(rows)}) relay_publishes={len(published.handled)} "
        f"restarted_after_published={restarted_at} unsent_rows={unsent} "
        f"keys_out_of_order: published={len(stream_out_of_order)} handled={len(handled_out_of_order)}"
    )
    assert lost == 0
    assert handled_twice == 0
    assert not ledger.unexpected
    # The outbox's promise: each key's messages reach the broker in commit order (first
    # copies; a copy published again after the restart comes later and is skipped). How
    # the consumer orders them across the restart is the transport's: Redis hands an entry
    # whose delivery the cut interrupted back behind the others (its README says so), so
    # the handled order is reported, not asserted.
    assert not stream_out_of_order, stream_out_of_order
    assert unsent == 0
