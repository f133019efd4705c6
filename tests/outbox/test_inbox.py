"""The inbox on real PostgreSQL: a redelivered or duplicated message is acked without
running its handler again, and the handler's writes commit with the "seen" record."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
from outbox_helpers import Ledger

from messagebus import Bus, Envelope, Handler, LifecycleError, OutgoingMessage, Retry
from messagebus.outbox import Inbox, Outbox, connection
from messagebus.transports import Destination, DestinationKind

TIMEOUT = 30.0


def unique(prefix: str) -> str:
    return f"{prefix}.{uuid.uuid4().hex[:8]}"


class Deliveries:
    """Outer middleware: counts deliveries that went through the inbox (handled or skipped)."""

    def __init__(self) -> None:
        self.done: Counter[str] = Counter()
        self._changed = asyncio.Event()

    def __call__(self, handler: Handler) -> Handler:
        async def count(envelope: Envelope) -> None:
            try:
                await handler(envelope)
            finally:
                self.done[envelope.id] += 1
                self._changed.set()

        return count

    async def wait_total(self, total: int) -> None:
        async with asyncio.timeout(TIMEOUT):
            while sum(self.done.values()) < total:
                self._changed.clear()
                await self._changed.wait()


@pytest.fixture
async def bus(memory_url: str) -> AsyncIterator[Bus]:
    made = Bus.from_url(memory_url, service="billing")
    yield made
    await made.stop(grace=5)


async def copies(bus: Bus, queue: str, n: int, times: int) -> list[str]:
    """Send ``n`` messages ``times`` times each with the same ids (what a relay that died
    before marking, or a broker redelivery, produces)."""
    ids = [uuid.uuid4().hex for _ in range(n)]
    destination = Destination(DestinationKind.QUEUE, queue)
    messages = [
        OutgoingMessage(destination, b'{"n": %d}' % i, {"ce-id": ids[i], "ce-type": "dict", "ce-source": "t"})
        for i in range(n)
    ]
    for _ in range(times):
        await bus.transport.publish(messages)
    return ids


async def test_duplicates_are_acked_without_running_the_handler(bus: Bus, pool: Any, schema: str) -> None:
    """Catches: an inbox that does not record what was handled, or keys records so that a
    duplicate does not match (each of 50 messages delivered 3 times, 4 handlers at once so
    copies race each other): the handler's write must exist once per message."""
    queue = unique("charges")
    deliveries = Deliveries()
    ledger = Ledger()
    inbox = Inbox(pool, schema=schema)
    async with pool.acquire() as conn:
        await conn.execute("CREATE TABLE charges (message_id text, n int)")

    @bus.consume(queue, concurrency=4, middleware=[deliveries, inbox])
    async def charge(body: dict[str, int], envelope: Envelope) -> None:
        await connection().execute("INSERT INTO charges VALUES ($1, $2)", envelope.id, body["n"])
        ledger.handle(envelope.id)

    await bus.start()
    for message_id in await copies(bus, queue, 50, 3):
        ledger.expect(message_id)
    await deliveries.wait_total(150)
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT message_id, count(*) AS n FROM charges GROUP BY message_id")
    assert {r["message_id"] for r in rows} == set(ledger.expected)
    assert all(r["n"] == 1 for r in rows), [r for r in rows if r["n"] != 1]
    assert not ledger.lost and not ledger.duplicated and not ledger.unexpected, ledger.report()
    await inbox.close()


async def test_a_failed_handler_rolls_back_its_writes_and_its_record(bus: Bus, pool: Any, schema: str) -> None:
    """Catches: a "seen" record committed although the handler raised (the retry would be
    skipped: the message never handled), or the handler's writes committed on their own
    (the retry would write them twice)."""
    queue = unique("payments")
    attempts: list[int] = []
    done = asyncio.Event()
    inbox = Inbox(pool, schema=schema)
    async with pool.acquire() as conn:
        await conn.execute("CREATE TABLE payments (message_id text)")

    @bus.consume(queue, retry=Retry(max_attempts=3, initial_delay=0.01, jitter=0), middleware=[inbox])
    async def pay(body: dict[str, int], envelope: Envelope) -> None:
        attempts.append(envelope.attempt)
        await connection().execute("INSERT INTO payments VALUES ($1)", envelope.id)
        if envelope.attempt == 1:
            raise RuntimeError("card processor timed out")
        done.set()

    await bus.start()
    [message_id] = await copies(bus, queue, 1, 1)
    await asyncio.wait_for(done.wait(), TIMEOUT)
    await bus.stop()
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM payments") == 1
        assert await conn.fetchval("SELECT count(*) FROM messagebus_inbox WHERE message_id = $1", message_id) == 1
    assert attempts == [1, 2]
    await inbox.close()


async def test_handler_publishes_through_the_outbox_in_the_inbox_transaction(bus: Bus, pool: Any, schema: str) -> None:
    """Catches: an event published by a handler that then failed (consume-transform-produce
    not atomic): the outbox row written on connection() must roll back with the handler."""
    queue, topic = unique("orders"), unique("orders.accepted")
    accepted: asyncio.Queue[Envelope] = asyncio.Queue()
    failed_once = asyncio.Event()
    inbox = Inbox(pool, schema=schema)
    outbox = Outbox(bus, pool, schema=schema, poll_interval=0.2)

    @bus.consume(queue, retry=Retry(max_attempts=3, initial_delay=0.01, jitter=0), middleware=[inbox])
    async def accept(body: dict[str, int], envelope: Envelope) -> None:
        await outbox.publish(connection(), topic, {"n": body["n"], "attempt": envelope.attempt})
        if not failed_once.is_set():
            failed_once.set()
            raise RuntimeError("stock service down")

    @bus.subscribe(topic, group="audit")
    async def audit(body: dict[str, int], envelope: Envelope) -> None:
        await accepted.put(envelope)

    async with bus, outbox:
        await copies(bus, queue, 1, 1)
        first = await asyncio.wait_for(accepted.get(), TIMEOUT)
        # A marker after it: if the failed attempt's event had been written, it came first.
        async with pool.acquire() as conn, conn.transaction():
            marker = await outbox.publish(conn, topic, {"n": -1, "attempt": 0})
        second = await asyncio.wait_for(accepted.get(), TIMEOUT)
    assert b'"attempt":2' in first.body.replace(b" ", b"")
    assert second.id == marker
    await inbox.close()


async def test_expired_records_are_cleaned_up_and_the_window_is_per_handler(pool: Any, schema: str) -> None:
    """Catches: a clean-up that deletes records still inside their window (duplicates then
    run again) or never deletes expired ones (the table grows forever)."""
    inbox = Inbox(pool, schema=schema, window=3600, cleanup_interval=3600)
    short = inbox.dedupe(window=0.001)
    seen: list[str] = []

    async def handler(envelope: Envelope) -> None:
        seen.append(envelope.id)

    long_handler, short_handler = inbox(handler), short(handler)
    await long_handler(Envelope(b"{}", {"ce-id": "kept"}, "q"))
    await short_handler(Envelope(b"{}", {"ce-id": "expired"}, "q"))
    async with pool.acquire() as conn:
        # Expire the short record for certain, without waiting for the clock.
        await conn.execute(
            "UPDATE messagebus_inbox SET expires_at = now() - interval '1 second' WHERE message_id = 'expired'"
        )
    assert await inbox.cleanup() == 1
    await long_handler(Envelope(b"{}", {"ce-id": "kept"}, "q"))
    await short_handler(Envelope(b"{}", {"ce-id": "expired"}, "q"))
    assert seen == ["kept", "expired", "expired"]
    await inbox.close()


def test_connection_outside_an_inbox_handler_says_how_to_get_one() -> None:
    """Catches: connection() returning None (an AttributeError far from the cause) or a
    connection that belongs to no transaction."""
    with pytest.raises(LifecycleError, match="middleware=\\[inbox\\]"):
        connection()
