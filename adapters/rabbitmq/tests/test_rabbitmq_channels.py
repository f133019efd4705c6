"""Channels of the adapter's connection: one cancelled consume must not hang the others."""

from __future__ import annotations

import ast
import asyncio
import contextlib
import uuid
from pathlib import Path

import aiormq
import pytest
from messagebus_rabbitmq._connection import close_quietly, open_channel

pytestmark = pytest.mark.asyncio

SRC = Path(__file__).resolve().parent.parent / "src" / "messagebus_rabbitmq"


async def test_a_channel_closed_after_a_cancelled_consume_does_not_hang_the_connection(rabbitmq_url: str) -> None:
    """Bug caught: aiormq's 10-frame channel buffer. A channel closed after its basic.consume
    was cancelled (a consumer stopped while it was being restored) still receives the
    deliveries sent before the broker's close-ok; nobody reads them, the full buffer blocks
    the connection's one reader, and every other channel hangs until the heartbeat gives up
    minutes later (CI: a dead-letter replay across a connection cut, stuck 183 s)."""
    raw = await aiormq.connect(rabbitmq_url)
    queue = f"test.channels.{uuid.uuid4().hex[:8]}"
    try:
        setup = await open_channel(raw, confirms=True)
        await setup.queue_declare(queue, auto_delete=False)
        for _ in range(300):
            await setup.basic_publish(b"x", routing_key=queue)
        for attempt in range(25):
            channel = await open_channel(raw, confirms=False)
            await channel.basic_qos(prefetch_count=300)
            consume = asyncio.ensure_future(channel.basic_consume(queue, lambda _m: None))
            for _ in range(attempt % 5):  # cancel at different points of the consume's round trip
                await asyncio.sleep(0)
            consume.cancel()
            with contextlib.suppress(BaseException):
                await consume
            await close_quietly(channel)
            other = await asyncio.wait_for(open_channel(raw, confirms=False), 10)
            await other.close()
        await setup.queue_delete(queue)
    finally:
        await close_quietly(raw)


def test_every_channel_of_the_adapter_is_opened_through_open_channel() -> None:
    """Bug caught: a channel opened with aiormq's default buffer somewhere in the adapter
    (the hang above comes back for that channel's consumer)."""
    offenders = []
    for module in SRC.glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "channel"
                and not any(k.arg == "frame_buffer_size" for k in node.keywords)
            ):
                offenders.append(f"{module.name}:{node.lineno}")
    assert not offenders, f"channels opened without open_channel: {offenders}"
