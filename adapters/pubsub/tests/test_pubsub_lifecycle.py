"""Stopping a Pub/Sub consumer: a stop with a pull pending loses nothing that is published
next (issue 15). Against Google's emulator."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

from messagebus_pubsub import PubSubTransport
from pubsub_helpers import url_for

from messagebus.transports import Delivery, Destination, DestinationKind, OutgoingMessage

TIMEOUT = 30.0


def out(dest: Destination, body: bytes) -> OutgoingMessage:
    return OutgoingMessage(dest, body, {"ce-id": uuid.uuid4().hex}, None)


async def test_stop_with_a_pull_pending_loses_nothing_published_next(pubsub_emulator: str, name: str) -> None:
    """Catches a consumer stop that cancels its pending ``Pull`` instead of letting it run out:
    on the still open channel the emulator keeps handing messages to a cancelled pull, so
    what is published next stays leased to nobody for the whole ack deadline (600 s here:
    counted lost). Also counts messages handled twice and messages never sent."""
    transport = PubSubTransport.from_url(url_for(pubsub_emulator, ack_deadline="600"))
    await transport.connect()
    topic = Destination(DestinationKind.TOPIC, f"{name}.cut")
    group = Destination(DestinationKind.TOPIC, topic.name, "billing")
    # Several stops: whether the emulator hands a message to a cancelled pull is a race.
    rounds = [[uuid.uuid4().hex.encode() for _ in range(5)] for _ in range(4)]
    ids = [i for batch in rounds for i in batch]
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
        for batch in rounds:
            # Concurrency 4: it pulls again while its ack is out, so a pull is pending at stop.
            consumer = await transport.subscribe(group, handle, concurrency=4)
            warm = uuid.uuid4().hex.encode()
            await transport.publish([out(topic, warm)])
            await asyncio.wait_for(until({warm}), TIMEOUT)
            await consumer.stop(0)
            for i in batch:
                await transport.publish([out(topic, i)])
        last = await transport.subscribe(group, handle, concurrency=4)
        with contextlib.suppress(TimeoutError):  # what is missing by then is counted lost below
            await asyncio.wait_for(until(set(ids)), TIMEOUT)
        await last.stop(5)
    finally:
        await transport.close()
    counted = [i for i in handled if i in set(ids)]
    lost = set(ids) - set(counted)
    duplicated = len(counted) - len(set(counted))
    unexpected = len(handled) - len(counted) - len(rounds)  # beyond one warm-up per round
    assert (len(lost), duplicated, unexpected) == (0, 0, 0)
