"""Stopping a NATS consumer: a pull request still open on the server when its consumer
stops loses nothing that is published next (issue 15). Against the shared nats-server."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

from messagebus_nats import NatsTransport

from messagebus.transports import Delivery, Destination, DestinationKind, OutgoingMessage

TIMEOUT = 30.0
#: Far beyond every wait here: a message delivered to a pull request nobody reads any more
#: comes back only after ack_wait (counted lost), and that request stays open this long.
SLOW = {"ack_wait": "600", "pull_expires": "120"}


def slow(url: str) -> str:
    """``url`` with :data:`SLOW` in place of its own ``ack_wait`` and ``pull_expires``."""
    base, _, query = url.partition("?")
    options = dict(part.split("=", 1) for part in query.split("&") if part)
    return base + "?" + "&".join(f"{k}={v}" for k, v in {**options, **SLOW}.items())


def out(dest: Destination, body: bytes) -> OutgoingMessage:
    return OutgoingMessage(dest, body, {"ce-id": uuid.uuid4().hex}, None)


def counts(ids: list[bytes], handled: list[bytes]) -> tuple[int, int, int]:
    """(lost, duplicated, unexpected)."""
    counted = [i for i in handled if i in set(ids)]
    return len(set(ids) - set(counted)), len(counted) - len(set(counted)), len(handled) - len(counted)


async def test_a_consumer_stopped_with_a_pull_request_open_loses_nothing_published_next(nats_url: str) -> None:
    """Catches a consumer stop that leaves its pull request open on the server: JetStream then
    delivers what is published next to an inbox nobody reads, and those messages wait out
    ``ack_wait`` (600 s here: counted lost). Also counts duplicated and unexpected messages."""
    transport = NatsTransport.from_url(slow(nats_url))
    await transport.connect()
    name = f"cut{uuid.uuid4().hex[:8]}"
    topic = Destination(DestinationKind.TOPIC, name)
    group = Destination(DestinationKind.TOPIC, name, "billing")
    ids = [uuid.uuid4().hex.encode() for _ in range(20)]
    handled: list[bytes] = []
    arrived = asyncio.Event()

    async def handle(delivery: Delivery) -> None:
        await delivery.ack()
        handled.append(delivery.body)
        arrived.set()

    async def until(wanted: set[bytes]) -> None:
        while not wanted <= set(handled):
            arrived.clear()
            await arrived.wait()

    try:
        first = await transport.subscribe(group, handle, concurrency=4)
        await transport.publish([out(topic, b"warm")])
        await asyncio.wait_for(until({b"warm"}), TIMEOUT)
        await first.stop(0)
        for i in ids:
            await transport.publish([out(topic, i)])
        second = await transport.subscribe(group, handle, concurrency=4)
        with contextlib.suppress(TimeoutError):  # what is missing by then is counted lost below
            await asyncio.wait_for(until(set(ids)), TIMEOUT)
        await second.stop(5)
    finally:
        await transport.close()
    assert counts(ids, handled) == (0, 0, 1)  # the warm-up is the one not counted
