"""Fixtures: the RabbitMQ broker the tests run against, and helpers to inspect its topology.

``MESSAGEBUS_TEST_RABBITMQ_URL`` points the tests at another broker; otherwise they use the
server on 127.0.0.1:5672 (guest/guest), starting it with ``rabbitmq-server -detached`` when
it is installed but stopped. Without a broker the tests skip (or fail when CI is set).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiormq
import pytest
from messagebus_rabbitmq import RabbitMQTransport, physical_name, queue_name
from messagebus_rabbitmq._topology import TOPICS, Topology, filter_exchange
from rmq_helpers import DEFAULT_URL, private_rabbitmq

from messagebus.testing import missing_broker, wait_for_port
from messagebus.testing._brokers import BrokerProcess
from messagebus.transports import Destination, DestinationKind, TransportURL


@pytest.fixture(scope="session")
def rabbitmq_url() -> str:
    """URL of a running RabbitMQ broker (skips/fails the test when there is none)."""
    url = os.environ.get("MESSAGEBUS_TEST_RABBITMQ_URL", DEFAULT_URL)
    parsed = TransportURL.parse(url)
    host, port = parsed.host or "127.0.0.1", parsed.port or 5672
    if wait_for_port(host, port, timeout=1.0):
        return url
    if url == DEFAULT_URL and shutil.which("rabbitmq-server"):
        subprocess.run(["rabbitmq-server", "-detached"], check=False, capture_output=True)
        if wait_for_port(host, port, timeout=60.0):
            return url
    missing_broker("RabbitMQ", f"nothing listens on {host}:{port} (set MESSAGEBUS_TEST_RABBITMQ_URL)")


@pytest.fixture(scope="session")
def rabbitmq_crash_node() -> Iterator[BrokerProcess]:
    """A private RabbitMQ node for the crash tests, started on first use and killed at the end
    of the session: the shared broker on 5672 is never stopped or restarted by a test."""
    with tempfile.TemporaryDirectory(prefix="messagebus-rmq-") as base:
        node = private_rabbitmq(base)
        try:
            node.start_sync()
            yield node
        finally:
            node.close()


@pytest.fixture(scope="session", autouse=True)
def _delete_test_objects() -> Iterator[None]:
    """Delete the queues and exchanges this test process declared, so durable objects do not
    pile up on the shared broker. Declarations are recorded by wrapping the adapter's
    ``Topology`` methods (the broker client itself is untouched); the shared delay buckets
    and ``messagebus:topics`` are kept. Objects of concurrent sessions on the same broker are never touched."""
    queues: set[str] = set()
    exchanges: set[str] = set()
    originals = {attr: getattr(Topology, attr) for attr in ("exchange", "queue", "subscription")}

    async def exchange(self: Topology, connection: Any, name: str) -> None:
        if name != TOPICS:  # shared by every topic, like the delay buckets: kept
            exchanges.add(name)
        await originals["exchange"](self, connection, name)

    async def queue(self: Topology, connection: Any, name: str) -> None:
        queues.add(name)
        await originals["queue"](self, connection, name)

    async def subscription(self: Topology, connection: Any, source: Destination) -> str:
        if source.kind is DestinationKind.TOPIC:
            exchanges.add(physical_name(source.name))
        if source.filter:
            exchanges.add(filter_exchange(source))
        queues.add(queue_name(source))
        result: str = await originals["subscription"](self, connection, source)
        return result

    Topology.exchange = exchange  # type: ignore[method-assign]
    Topology.queue = queue  # type: ignore[method-assign]
    Topology.subscription = subscription  # type: ignore[method-assign]
    try:
        yield
    finally:
        for attr, fn in originals.items():
            setattr(Topology, attr, fn)

    async def delete() -> None:
        conn = await aiormq.connect(os.environ.get("MESSAGEBUS_TEST_RABBITMQ_URL", DEFAULT_URL))
        try:
            for q in sorted(queues):
                ch = await conn.channel()
                with contextlib.suppress(aiormq.exceptions.AMQPError):
                    await ch.queue_delete(q)
                    await ch.close()
            for e in sorted(exchanges):
                ch = await conn.channel()
                with contextlib.suppress(aiormq.exceptions.AMQPError):
                    await ch.exchange_delete(e)
                    await ch.close()
        finally:
            await conn.close()

    if queues or exchanges:
        with contextlib.suppress(OSError, aiormq.exceptions.AMQPError):
            asyncio.run(delete())


@pytest.fixture
def name() -> str:
    """A unique logical name prefix for one test (the broker is shared)."""
    return f"t.rmq.{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def transport(rabbitmq_url: str) -> AsyncIterator[RabbitMQTransport]:
    """A connected transport on the test broker, closed after the test."""
    t = RabbitMQTransport.from_url(rabbitmq_url)
    await t.connect()
    try:
        yield t
    finally:
        await t.close()


@pytest.fixture
async def admin(rabbitmq_url: str) -> AsyncIterator[Admin]:
    """A plain aiormq connection to inspect and clean up broker objects; every queue and
    exchange registered with :meth:`Admin.cleanup_later` is deleted after the test."""
    conn = await aiormq.connect(rabbitmq_url)
    admin = Admin(conn)
    try:
        yield admin
    finally:
        await admin.cleanup()
        await conn.close()


class Admin:
    """Passive inspection of queues/exchanges through a separate connection."""

    def __init__(self, conn: aiormq.abc.AbstractConnection) -> None:
        self.conn = conn
        self.queues: set[str] = set()
        self.exchanges: set[str] = set()

    def cleanup_later(self, *, queues: tuple[str, ...] = (), exchanges: tuple[str, ...] = ()) -> None:
        """Delete these objects after the test."""
        self.queues.update(queues)
        self.exchanges.update(exchanges)

    async def queue_exists(self, queue: str) -> bool:
        """True when ``queue`` exists (passive declare)."""
        ch = await self.conn.channel()
        try:
            await ch.queue_declare(queue, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            return False
        await ch.close()
        return True

    async def queue_info(self, queue: str) -> tuple[int, int]:
        """``(message_count, consumer_count)`` of an existing queue."""
        ch = await self.conn.channel()
        ok = await ch.queue_declare(queue, passive=True)
        await ch.close()
        return ok.message_count or 0, ok.consumer_count or 0

    async def wait_consumers(self, queues: dict[str, int], timeout: float = 20.0) -> None:
        """Wait until each queue exists with the expected consumer count. Polls the broker
        (its state has no push notification); fails after ``timeout`` seconds."""
        counts: dict[str, int | None] = {}
        try:
            async with asyncio.timeout(timeout):
                while True:
                    counts = {q: (await self.queue_info(q))[1] if await self.queue_exists(q) else None for q in queues}
                    if counts == queues:
                        return
                    await asyncio.sleep(0.05)
        except TimeoutError:
            raise AssertionError(f"consumer counts {counts} never reached {queues} within {timeout}s") from None

    async def exchange_exists(self, exchange: str) -> bool:
        """True when ``exchange`` exists (passive declare)."""
        ch = await self.conn.channel()
        try:
            await ch.exchange_declare(exchange, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            return False
        await ch.close()
        return True

    async def cleanup(self) -> None:
        ch = await self.conn.channel()
        for q in self.queues:
            await ch.queue_delete(q)
        for e in self.exchanges:
            await ch.exchange_delete(e)
        await ch.close()
