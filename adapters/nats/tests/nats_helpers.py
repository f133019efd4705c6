"""Servers for the NATS tests: the shared one on 127.0.0.1:4222 and private ones to crash."""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid
from collections.abc import Awaitable, Callable

import nats

from messagebus.testing import free_port, missing_broker, wait_for_port
from messagebus.testing._brokers import BrokerProcess
from messagebus.transports import TransportURL

HOST, PORT = "127.0.0.1", 4222
#: Test timings: a lost ack is redelivered after 5 s, a dead connection noticed within ~6 s.
TEST_OPTIONS = "ack_wait=5&pull_expires=2&ping_interval=2&max_outstanding_pings=2"
#: How long a test waits for the broker or a delivery before it fails.
TIMEOUT = 30.0


def shared_server() -> str:
    """The URL of the shared server (with a fresh name prefix); missing_broker if none."""
    if not wait_for_port(HOST, PORT, timeout=5):
        missing_broker("nats", f"nothing listens on {HOST}:{PORT} (start nats-server -js)")
    return f"nats://{HOST}:{PORT}?prefix=t{uuid.uuid4().hex[:8]}&{TEST_OPTIONS}"


def prefix_of(url: str) -> str:
    """The name prefix of the test URL ``url``."""
    return str(TransportURL.parse(url).query["prefix"])


async def until(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll the broker-side condition ``check()`` until it holds (``TIMEOUT`` at most)."""
    deadline = time.monotonic() + TIMEOUT
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def delete_streams(prefix: str) -> None:
    """Delete every stream whose name starts with ``prefix`` (test clean-up)."""
    nc = await nats.connect(f"nats://{HOST}:{PORT}")
    try:
        js = nc.jetstream()
        for info in await js.streams_info():
            if info.config.name and info.config.name.startswith(prefix):
                await js.delete_stream(info.config.name)
    finally:
        await nc.close()


def private_server(directory: str) -> BrokerProcess:
    """A nats-server of our own with JetStream on a free port, storing in ``directory``:
    the crash tests may SIGKILL it. It survives a kill with every acked message (JetStream
    writes each message to its file before acking; the OS keeps it when the process dies)."""
    binary = shutil.which("nats-server")
    if binary is None:
        missing_broker("nats (private server)", "nats-server is not on PATH")
    port = free_port()
    return BrokerProcess(
        "nats (private server)",
        [binary, "-a", HOST, "-p", str(port), "-js", "-sd", directory],
        port,
        f"nats://{HOST}:{port}?{TEST_OPTIONS}",
        keeps_messages=True,
        log_path=f"{directory}/nats-server.log",
        start_timeout=30.0,
    )
