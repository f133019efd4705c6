"""Reconnect: every consumer comes back after the connection is cut, nothing is lost.

aio-pika's robust connection is known to come back with zero consumers in some cases; this
transport restores consumers itself, and these tests check the broker's consumer counts.
"""

from __future__ import annotations

import asyncio

import pytest
from messagebus_rabbitmq import RabbitMQTransport
from rmq_helpers import Inbox, group, message, queue, topic

from messagebus import Bus
from messagebus.testing import TcpProxy
from messagebus.transports import TransportURL

pytestmark = pytest.mark.faults


def proxied(url: str, proxy: TcpProxy) -> RabbitMQTransport:
    parsed = TransportURL.parse(url)
    return RabbitMQTransport.from_url(parsed.with_hosts(((proxy.host, proxy.port),)))


async def test_every_consumer_is_restored_after_repeated_cuts(rabbitmq_url: str, name: str, admin) -> None:
    qa, qb = f"{name}.a", f"{name}.work"
    admin.cleanup_later(queues=(qa, qb), exchanges=(name,))
    parsed = TransportURL.parse(rabbitmq_url)
    with TcpProxy((parsed.host or "127.0.0.1", parsed.port or 5672)) as proxy:
        t = proxied(rabbitmq_url, proxy)
        await t.connect()
        try:
            sub_inbox, work_inbox = Inbox(), Inbox()
            await t.subscribe(group(name, "a"), sub_inbox, concurrency=4)
            await t.subscribe(queue(f"{name}.work"), work_inbox, concurrency=2)
            await admin.wait_consumers({qa: 1, qb: 1})
            n = 0
            for _cut in range(3):
                proxy.cut()
                # Publishing right after the cut waits for the reconnect instead of failing.
                await t.publish([message(topic(name), n), message(queue(f"{name}.work"), n)])
                n += 1
                await admin.wait_consumers({qa: 1, qb: 1})
            await sub_inbox.wait_numbers(set(range(n)))
            await work_inbox.wait_numbers(set(range(n)))
            assert proxy.connections_total >= 4
        finally:
            await t.close()


async def test_refused_broker_then_back_resumes_publish_and_consume(rabbitmq_url: str, name: str, admin) -> None:
    admin.cleanup_later(queues=(name,))
    parsed = TransportURL.parse(rabbitmq_url)
    with TcpProxy((parsed.host or "127.0.0.1", parsed.port or 5672)) as proxy:
        t = proxied(rabbitmq_url, proxy)
        await t.connect()
        try:
            inbox = Inbox()
            await t.subscribe(queue(name), inbox, concurrency=1)
            proxy.refuse()  # cuts the connection and refuses reconnects: the broker "is down"
            publishing = asyncio.ensure_future(t.publish([message(queue(name), i) for i in range(20)]))
            done, _ = await asyncio.wait({publishing}, timeout=0.3)
            assert not done, "publish must wait for the broker, not succeed while it is unreachable"
            assert not t.connected
            proxy.accept()
            await asyncio.wait_for(publishing, 30)
            await inbox.wait_numbers(set(range(20)))
            await admin.wait_consumers({name: 1})
        finally:
            await t.close()


async def test_bus_keeps_flowing_through_cuts_without_loss(rabbitmq_url: str, name: str, admin) -> None:
    """Pipelined publishes in flight while the connection is cut: every message arrives."""
    admin.cleanup_later(queues=(name,))
    parsed = TransportURL.parse(rabbitmq_url)
    with TcpProxy((parsed.host or "127.0.0.1", parsed.port or 5672)) as proxy:
        url = parsed.with_hosts(((proxy.host, proxy.port),)).render(redact=False)
        bus = Bus.from_url(url, service="svc")
        seen: set[int] = set()
        changed = asyncio.Event()

        @bus.consume(name, concurrency=8)
        async def handle(item: dict[str, int]) -> None:
            seen.add(item["n"])
            changed.set()

        total = 2000
        async with bus:

            async def producer() -> None:
                for start in range(0, total, 100):
                    await bus.send_many(name, [{"n": i} for i in range(start, start + 100)])

            task = asyncio.ensure_future(producer())
            for _ in range(3):
                async with asyncio.timeout(20):
                    before = len(seen)
                    while len(seen) < before + 100 and len(seen) < total:
                        changed.clear()
                        await changed.wait()
                proxy.cut()
            await asyncio.wait_for(task, 60)
            async with asyncio.timeout(60):
                while len(seen) < total:
                    changed.clear()
                    await changed.wait()
        assert seen == set(range(total))
        assert proxy.connections_total >= 4
