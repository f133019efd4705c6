"""Fixtures: the shared NATS server (127.0.0.1:4222, JetStream) and a private one to crash."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator, Iterator

import nats
import pytest
from nats.js import JetStreamContext
from nats_helpers import HOST, PORT, delete_streams, private_server, shared_server

from messagebus.testing._brokers import BrokerProcess
from messagebus.transports import TransportURL


@pytest.fixture(scope="session")
def nats_url() -> Iterator[str]:
    """``nats://`` URL of the shared server with a name prefix of this session; the
    session's streams are deleted at the end."""
    url = shared_server()
    yield url
    prefix = str(TransportURL.parse(url).query["prefix"])
    asyncio.run(delete_streams(prefix))


@pytest.fixture(scope="session")
def nats_crash_server() -> Iterator[BrokerProcess]:
    """A private nats-server the crash tests may kill, started on first use."""
    with tempfile.TemporaryDirectory(prefix="messagebus-nats-") as directory:
        server = private_server(directory)
        server.start_sync()
        try:
            yield server
        finally:
            server.close()


@pytest.fixture
async def js() -> AsyncIterator[JetStreamContext]:
    """JetStream on the shared server through a client of its own, to inspect streams."""
    client = await nats.connect(f"nats://{HOST}:{PORT}")
    yield client.jetstream()
    await client.close()
