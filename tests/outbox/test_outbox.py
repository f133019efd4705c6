"""The outbox on real PostgreSQL and real brokers: what commits is published with the same
envelope as a direct publish, what rolls back never is, in order per key, once per relay."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from outbox_helpers import Ledger

from messagebus import (
    Bus,
    ConfigurationError,
    Envelope,
    InvalidDestination,
    InvalidHeaders,
    LifecycleError,
    OutgoingMessage,
    PublishFn,
)
from messagebus.outbox import Outbox

TIMEOUT = 30.0


def unique(prefix: str) -> str:
    return f"{prefix}.{uuid.uuid4().hex[:8]}"


class Boom(Exception):
    pass


@pytest.fixture
async def buses() -> AsyncIterator[list[Bus]]:
    """Buses a test makes; stopped at the end whatever happened."""
    made: list[Bus] = []
    yield made
    for bus in reversed(made):
        await bus.stop(grace=5)


async def test_committed_message_arrives_with_the_envelope_of_a_direct_publish(
    broker_url: str, pool: Any, schema: str, buses: list[Bus]
) -> None:
    """Catches: a relay that rebuilds the message (new id, lost user headers or key, wrong
    type/source), or one that never publishes what committed, on each broker."""
    topic = unique("orders.created")
    seen: asyncio.Queue[Envelope] = asyncio.Queue()
    consumer = Bus.from_url(broker_url, service="billing")
    buses.append(consumer)

    @consumer.subscribe(topic)
    async def bill(order: dict[str, Any], envelope: Envelope) -> None:
        await seen.put(envelope)

    producer = Bus.from_url(broker_url, service="shop")
    buses.append(producer)
    await consumer.start()
    await producer.start()
    async with Outbox(producer, pool, schema=schema, poll_interval=0.2) as outbox:
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("CREATE TABLE orders (id text PRIMARY KEY)")
            await conn.execute("INSERT INTO orders VALUES ('order-42')")
            message_id = await outbox.publish(
                conn, topic, {"order": "order-42", "total": 59.97}, key="order-42", headers={"tenant": "acme"}
            )
        envelope = await asyncio.wait_for(seen.get(), TIMEOUT)
    assert envelope.id == message_id
    assert envelope.key == "order-42"
    assert envelope.headers["tenant"] == "acme"
    assert envelope.source == "shop"
    assert envelope.type == "dict"
    assert envelope.timestamp is not None
    assert envelope.body and b"order-42" in envelope.body
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM messagebus_outbox WHERE sent_at IS NULL") == 0


async def test_rolled_back_transaction_publishes_nothing(
    broker_url: str, pool: Any, schema: str, buses: list[Bus]
) -> None:
    """Catches: an outbox that writes outside the caller's transaction (or publishes before
    the commit), so a rolled-back order still sends its event. A committed marker written
    after it is the proof that the relay ran past it."""
    queue = unique("emails")
    ledger = Ledger()
    bus = Bus.from_url(broker_url, service="shop")
    buses.append(bus)

    @bus.consume(queue)
    async def send_email(body: dict[str, Any], envelope: Envelope) -> None:
        ledger.handle(envelope.id)

    await bus.start()
    async with Outbox(bus, pool, schema=schema, poll_interval=0.2) as outbox:

        async def order_that_fails() -> None:
            async with pool.acquire() as conn, conn.transaction():
                await outbox.send(conn, queue, {"to": "rolled-back"})
                await outbox.publish(conn, unique("other"), {"to": "rolled-back"})
                raise Boom

        with pytest.raises(Boom):
            await order_that_fails()
        async with pool.acquire() as conn, conn.transaction():
            ledger.expect(await outbox.send(conn, queue, {"to": "committed"}))
        await ledger.wait_all(TIMEOUT)
    assert not ledger.unexpected, ledger.report()
    assert not ledger.duplicated, ledger.report()
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM messagebus_outbox") == 1


async def test_notify_wakes_the_relay_at_commit(memory_url: str, pool: Any, schema: str, buses: list[Bus]) -> None:
    """Catches: a missing NOTIFY trigger or LISTEN: with an hour between polls, only the
    notification at commit can get the message out in time."""
    queue = unique("jobs")
    ledger = Ledger()
    bus = Bus.from_url(memory_url)
    buses.append(bus)

    @bus.consume(queue)
    async def job(body: dict[str, Any], envelope: Envelope) -> None:
        ledger.handle(envelope.id)

    await bus.start()
    async with Outbox(bus, pool, schema=schema, poll_interval=3600) as outbox:
        # The relay's first round happens at start; this commit comes after it.
        await asyncio.sleep(0)
        for n in range(3):
            async with pool.acquire() as conn, conn.transaction():
                ledger.expect(await outbox.send(conn, queue, {"n": n}))
            await ledger.wait(lambda led, n=n: len(led.handled) == n + 1, f"job {n}", TIMEOUT)
    assert not ledger.lost and not ledger.duplicated


async def test_delayed_message_waits_and_holds_back_no_other(
    memory_url: str, pool: Any, schema: str, buses: list[Bus]
) -> None:
    """Catches: a delay that is ignored (the delayed message, written first, would arrive
    first) or one that holds back the messages written after it, even of its key."""
    queue = unique("reminders")
    ledger = Ledger()
    bus = Bus.from_url(memory_url)
    buses.append(bus)

    @bus.consume(queue)
    async def remind(body: dict[str, Any], envelope: Envelope) -> None:
        ledger.handle(envelope.id)

    await bus.start()
    async with Outbox(bus, pool, schema=schema, poll_interval=0.2) as outbox:
        async with pool.acquire() as conn, conn.transaction():
            late = await outbox.send(conn, queue, {"n": "late"}, key="k", delay=1.0)
            now = await outbox.send(conn, queue, {"n": "now"}, key="k")
        ledger.expect(late)
        ledger.expect(now)
        await ledger.wait_all(TIMEOUT)
    assert ledger.handled == [now, late]


async def test_two_relays_keep_order_per_key_and_publish_each_row_once(
    memory_url: str, pool: Any, schema: str, buses: list[Bus]
) -> None:
    """Catches: relays that take the same rows (no SKIP LOCKED: duplicates), or that publish
    a later message of a key while another relay still holds an earlier one (order lost).
    2,000 messages over 20 keys, written by 4 concurrent writers while both relays run.
    Order per key is the order of commits: each key has one writer here."""
    queue = unique("ledger")
    ledger = Ledger()
    consumer = Bus.from_url(memory_url, service="consumer")
    buses.append(consumer)

    @consumer.consume(queue, concurrency=8)
    async def book(body: dict[str, Any], envelope: Envelope) -> None:
        ledger.handle(envelope.id)

    # Relay 0 holds each batch until relay 1 published one (or 50 ms passed): relay 1 then
    # claims rows behind relay 0's, of the same keys, while relay 0 still holds those.
    other_published = asyncio.Event()

    def held(publish: PublishFn) -> PublishFn:
        async def hold_then_publish(messages: Sequence[OutgoingMessage]) -> None:
            other_published.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(other_published.wait(), 0.05)
            await publish(messages)

        return hold_then_publish

    def signalled(publish: PublishFn) -> PublishFn:
        async def publish_then_signal(messages: Sequence[OutgoingMessage]) -> None:
            await publish(messages)
            other_published.set()

        return publish_then_signal

    relays = [
        Bus.from_url(memory_url, service=f"relay{i}", publish_middleware=[mw]) for i, mw in enumerate((held, signalled))
    ]
    buses.extend(relays)
    await consumer.start()
    for bus in relays:
        await bus.start()
    outboxes = [Outbox(bus, pool, schema=schema, batch_size=37, poll_interval=0.2) for bus in relays]
    keys = [f"account-{k}" for k in range(20)]
    seq = dict.fromkeys(keys, 0)

    async def writer(w: int) -> None:
        # Each writer owns 5 keys: the order of one key is then the order of one writer's
        # transactions (concurrent transactions have none but their commit order).
        mine = keys[w::4]
        for t in range(25):
            async with pool.acquire() as conn, conn.transaction():
                for i in range(20):
                    key = mine[(t + i) % len(mine)]
                    n = seq[key]
                    seq[key] += 1
                    ledger.expect(await outboxes[w % 2].send(conn, queue, {"n": n}, key=key), key, n)

    for outbox in outboxes:
        await outbox.start()
    try:
        await asyncio.gather(*(writer(w) for w in range(4)))
        await ledger.wait_all(TIMEOUT * 2)
    finally:
        for outbox in outboxes:
            await outbox.stop()
    assert len(ledger.expected) == 2000
    assert not ledger.duplicated, ledger.report()
    assert not ledger.unexpected, ledger.report()
    assert not ledger.out_of_order(), ledger.out_of_order()


async def test_refused_message_is_parked_and_the_others_go_on(pool: Any, schema: str, buses: list[Bus]) -> None:
    """Catches: one message the broker refuses (too large) blocking the whole outbox (a
    relay retrying the same batch forever), or being dropped silently. Its key waits behind
    it (order kept), and its waiting rows never fill a claim and starve the rest; other keys
    go on; the row records the error."""
    queue = unique("big")
    ledger = Ledger()
    bus = Bus.from_url(f"memory://outbox-{uuid.uuid4().hex[:8]}?max_message_size=1000")
    buses.append(bus)

    @bus.consume(queue)
    async def take(body: dict[str, Any], envelope: Envelope) -> None:
        ledger.handle(envelope.id)

    await bus.start()
    async with Outbox(bus, pool, schema=schema, poll_interval=0.2, retry_max=3600, batch_size=8) as outbox:
        async with pool.acquire() as conn, conn.transaction():
            before = [await outbox.send(conn, queue, {"n": n}, key=f"other-{n}") for n in range(5)]
            await outbox.send(conn, queue, {"blob": "x" * 5000}, key="a")
            # More rows behind it than a claim takes: they must not fill every claim.
            blocked = [await outbox.send(conn, queue, {"n": n}, key="a") for n in range(12)]
            after = [await outbox.send(conn, queue, {"n": n}, key=f"other-{n}") for n in range(5, 10)]
        for message_id in before + after:
            ledger.expect(message_id)
        await ledger.wait_all(TIMEOUT)
        async with pool.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT attempts, last_error, retry_at > now() AS parked FROM messagebus_outbox "
                "WHERE message_key = 'a' ORDER BY id LIMIT 1"
            )
    assert row["attempts"] >= 1 and row["parked"]
    assert "MessageTooLarge" in row["last_error"]
    assert not set(blocked) & set(ledger.handled)
    assert not ledger.unexpected and not ledger.duplicated


async def test_cleanup_deletes_only_old_sent_rows(memory_url: str, pool: Any, schema: str) -> None:
    """Catches: a clean-up that deletes unsent rows (lost messages) or keeps sent ones forever."""
    bus = Bus.from_url(memory_url)
    outbox = Outbox(bus, pool, schema=schema, relay=False, retention=60)
    async with pool.acquire() as conn, conn.transaction():
        for n in range(4):
            await outbox.send(conn, "q", {"n": n})
        await conn.execute(
            "UPDATE messagebus_outbox SET sent_at = now() - interval '2 minutes' WHERE id IN "
            "(SELECT id FROM messagebus_outbox ORDER BY id LIMIT 2)"
        )
        await conn.execute(
            "UPDATE messagebus_outbox SET sent_at = now() WHERE id = (SELECT max(id) FROM messagebus_outbox)"
        )
    assert await outbox.cleanup() == 2
    async with pool.acquire() as conn:
        left = await conn.fetch("SELECT sent_at IS NULL AS pending FROM messagebus_outbox ORDER BY id")
    assert [r["pending"] for r in left] == [True, False]


async def test_bad_input_is_refused_at_the_edge(memory_url: str, pool: Any, schema: str, dsn: str) -> None:
    """Catches: a write outside a transaction (not atomic with the caller's), bad arguments
    reaching the table or the relay, and a relay started before its bus or tables."""
    bus = Bus.from_url(memory_url)
    outbox = Outbox(bus, pool, schema=schema)
    async with pool.acquire() as conn:
        with pytest.raises(LifecycleError, match="inside a transaction"):
            await outbox.publish(conn, "t", {})
        async with conn.transaction():
            with pytest.raises(ConfigurationError, match="delay"):
                await outbox.publish(conn, "t", {}, delay=-1)
            with pytest.raises(ConfigurationError, match="key"):
                await outbox.publish(conn, "t", {}, key=42)  # type: ignore[arg-type]
            with pytest.raises(InvalidHeaders):
                await outbox.publish(conn, "t", {}, headers={"ce-id": "spoofed"})
            with pytest.raises(InvalidDestination):
                await outbox.send(conn, "bad name!", {})
            with pytest.raises(ConfigurationError, match="asyncpg connection or a SQLAlchemy"):
                await outbox.publish(object(), "t", {})
        assert await conn.fetchval("SELECT count(*) FROM messagebus_outbox") == 0
    with pytest.raises(ConfigurationError, match="postgresql://"):
        Outbox(bus, "mysql://localhost/db")
    with pytest.raises(ConfigurationError, match="batch_size"):
        Outbox(bus, pool, batch_size=0)
    with pytest.raises(ConfigurationError, match="schema"):
        Outbox(bus, pool, schema="Robert'); DROP TABLE students;--")
    with pytest.raises(LifecycleError, match="start the bus"):
        await outbox.start()
    async with bus:
        with pytest.raises(ConfigurationError, match="messagebus outbox migrate"):
            await Outbox(bus, dsn, schema=f"mbt_missing_{uuid.uuid4().hex[:6]}").start()
