"""Small helpers shared by the adapter tests (direct use of the transport contract)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Mapping
from typing import Any

from messagebus.transports import Delivery, Destination, DestinationKind, OutgoingMessage

#: The RabbitMQ server of the project machines.
DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"


def topic(name: str) -> Destination:
    """A topic destination (for publishing)."""
    return Destination(DestinationKind.TOPIC, name)


def group(name: str, group_name: str) -> Destination:
    """A topic subscription group."""
    return Destination(DestinationKind.TOPIC, name, group_name)


def queue(name: str) -> Destination:
    """A work queue."""
    return Destination(DestinationKind.QUEUE, name)


def message(
    dest: Destination, n: int, *, key: str | None = None, headers: Mapping[str, str] | None = None
) -> OutgoingMessage:
    """A small JSON message with a fresh CloudEvents id."""
    hdrs = {"ce-id": uuid.uuid4().hex, "ce-source": "tests", "ce-type": "Item", "ce-specversion": "1.0"}
    hdrs.update(headers or {})
    return OutgoingMessage(dest, json.dumps({"n": n}).encode(), hdrs, key)


def number(delivery: Delivery) -> int:
    """The ``n`` of a test message."""
    value: Any = json.loads(delivery.body)["n"]
    return int(value)


class Inbox:
    """Collects deliveries and lets a test wait for a condition (no sleeping)."""

    def __init__(self, *, ack: bool = True) -> None:
        self.items: list[Delivery] = []
        self.ack = ack
        self._changed = asyncio.Event()

    async def __call__(self, delivery: Delivery) -> None:
        if self.ack:
            await delivery.ack()
        self.items.append(delivery)
        self._changed.set()

    def numbers(self) -> list[int]:
        return [number(d) for d in self.items]

    async def wait_for(self, count: int, timeout: float = 20.0) -> list[Delivery]:
        async with asyncio.timeout(timeout):
            while len(self.items) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.items

    async def wait_numbers(self, wanted: set[int], timeout: float = 20.0) -> None:
        async with asyncio.timeout(timeout):
            while not wanted <= set(self.numbers()):
                self._changed.clear()
                await self._changed.wait()
