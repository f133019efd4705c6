"""A message held unacked by a consumer process killed with SIGKILL goes to another consumer."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest
from messagebus_rabbitmq import RabbitMQTransport
from rmq_helpers import Inbox, message, queue

from messagebus.transports import TransportURL

pytestmark = pytest.mark.faults

HOLDER = Path(__file__).with_name("rmq_hold_consumer.py")


async def _line(proc: asyncio.subprocess.Process) -> str:
    assert proc.stdout is not None
    raw = await asyncio.wait_for(proc.stdout.readline(), 30)
    if not raw:
        assert proc.stderr is not None
        err = await proc.stderr.read()
        raise AssertionError(f"consumer process exited early: {err.decode(errors='replace')}")
    return raw.decode().strip()


async def test_unacked_message_of_killed_process_is_redelivered(rabbitmq_url: str, name: str, admin) -> None:
    admin.cleanup_later(queues=(name,))
    t = RabbitMQTransport.from_url(TransportURL.parse(rabbitmq_url))
    await t.connect()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(HOLDER),
        rabbitmq_url,
        name,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(HOLDER.parent)},
    )
    try:
        assert await _line(proc) == "ready"
        await t.publish([message(queue(name), 42)])
        assert await _line(proc) == "got 42"
        assert await admin.queue_info(name) == (0, 1)  # held, unacked, by the other process
        proc.send_signal(signal.SIGKILL)
        await asyncio.wait_for(proc.wait(), 10)
        inbox = Inbox()
        consumer = await t.subscribe(queue(name), inbox, concurrency=1)
        [delivery] = await inbox.wait_for(1)
        assert delivery.body == b'{"n": 42}'
        assert delivery.attempt == 2, "a redelivery counts as a new attempt"
        assert delivery.messaging_attributes["messaging.rabbitmq.message.redelivered"] is True
        await consumer.stop(1)
        assert await admin.queue_info(name) == (0, 0)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await t.close()
