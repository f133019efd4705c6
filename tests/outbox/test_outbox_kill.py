"""Kill tests in real processes: SIGKILL a service after its commit and before its relay
published, and after the relay published and before it marked the rows sent. Another
instance's relay must publish what was committed; with the inbox, each message is handled
once. Real PostgreSQL, a real broker (RabbitMQ, Redis), a real process killed."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from outbox_helpers import Ledger, redis_url

from messagebus import Bus, Envelope, Handler
from messagebus.outbox import Inbox, Outbox

SERVICE = Path(__file__).with_name("outbox_service.py")
TIMEOUT = 60.0
COUNT = 5


@pytest.fixture(params=["rabbitmq", "redis"])
def cross_process_url(request: pytest.FixtureRequest) -> str:
    """A broker two processes share (memory:// lives in one process)."""
    if request.param == "rabbitmq":
        pytest.importorskip("messagebus_rabbitmq")
        url: str = request.getfixturevalue("rabbitmq_session_url")
        return url
    pytest.importorskip("messagebus_redis")
    request.getfixturevalue("redis_cleanup")
    return redis_url()


class Deliveries:
    """Outer middleware: deliveries per message id that went through the inbox (handled
    or skipped as seen)."""

    def __init__(self) -> None:
        self.count: Counter[str] = Counter()
        self._changed = asyncio.Event()

    def __call__(self, handler: Handler) -> Handler:
        async def count(envelope: Envelope) -> None:
            await handler(envelope)
            self.count[envelope.id] += 1
            self._changed.set()

        return count

    async def wait_total(self, total: int) -> None:
        async with asyncio.timeout(TIMEOUT):
            while sum(self.count.values()) < total:
                self._changed.clear()
                await self._changed.wait()


@pytest.fixture
async def service(cross_process_url: str, dsn: str, schema: str) -> AsyncIterator[Any]:
    procs: list[asyncio.subprocess.Process] = []

    async def start(mode: str, topic: str) -> tuple[asyncio.subprocess.Process, list[str]]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(SERVICE),
            mode,
            cross_process_url,
            dsn,
            schema,
            topic,
            str(COUNT),
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "PGOPTIONS": f"-c search_path={schema}"},
        )
        procs.append(proc)
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), TIMEOUT)
        assert line.startswith(b"committed "), line
        return proc, line.decode().split()[1].split(",")

    yield start
    for proc in procs:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def _kill_and_recover(
    mode: str, marker: bytes, url: str, pool: Any, schema: str, service: Any, deliveries_expected: int
) -> tuple[Ledger, Deliveries]:
    topic = f"orders.{uuid.uuid4().hex[:8]}"
    ledger, deliveries = Ledger(), Deliveries()
    inbox = Inbox(pool, schema=schema)
    consumer = Bus.from_url(url, service="billing")

    @consumer.subscribe(topic, middleware=[deliveries, inbox])
    async def bill(body: dict[str, int], envelope: Envelope) -> None:
        ledger.handle(envelope.id)

    survivor = Bus.from_url(url, service="shop")
    async with consumer, survivor:
        proc, ids = await service(mode, topic)
        for n, message_id in enumerate(ids):
            ledger.expect(message_id, "order-1", n)
        assert proc.stdout is not None
        assert await asyncio.wait_for(proc.stdout.readline(), TIMEOUT) == marker
        # The killed instance holds the rows' locks until it dies: this relay skips them.
        async with Outbox(survivor, pool, schema=schema, poll_interval=0.2):
            os.kill(proc.pid, signal.SIGKILL)
            await proc.wait()
            await ledger.wait_all(TIMEOUT)
            await deliveries.wait_total(deliveries_expected)
    await inbox.close()
    return ledger, deliveries


async def test_kill_after_commit_before_the_relay_published(
    cross_process_url: str, pool: Any, schema: str, service: Any
) -> None:
    """Catches: a message committed but lost because the instance that wrote it died before
    publishing (a relay that only publishes its own process's messages, rows locked past
    the death of their relay, or no relay on the other instance polling for them)."""
    ledger, deliveries = await _kill_and_recover(
        "before-publish", b"holding\n", cross_process_url, pool, schema, service, COUNT
    )
    assert not ledger.lost and not ledger.duplicated and not ledger.unexpected, ledger.report()
    assert not ledger.out_of_order(), ledger.out_of_order()
    assert set(deliveries.count.values()) == {1}, deliveries.count  # nothing went out before the kill


async def test_kill_after_publish_before_mark_publishes_again_and_the_inbox_handles_once(
    cross_process_url: str, pool: Any, schema: str, service: Any
) -> None:
    """Catches: a relay that marks rows sent before the broker confirmed them (killed in
    between, they would be lost), and an inbox that lets the second copy through."""
    ledger, deliveries = await _kill_and_recover(
        "after-publish", b"published\n", cross_process_url, pool, schema, service, 2 * COUNT
    )
    assert not ledger.lost and not ledger.duplicated and not ledger.unexpected, ledger.report()
    assert not ledger.out_of_order(), ledger.out_of_order()
    # Each message was published twice (by the killed relay, then by the survivor's).
    assert set(deliveries.count) == set(ledger.expected)
    assert all(n == 2 for n in deliveries.count.values()), deliveries.count
