"""Fixtures: the shared Redis server (127.0.0.1:6379 unless MESSAGEBUS_TEST_REDIS_URL is
set), a private crashable one, and the cleanup of this session's keys."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Iterator

import pytest
import redis
import redis.asyncio as aredis
from redis_helpers import SESSION_PREFIX, private_redis, shared_url

from messagebus.testing import free_port
from messagebus.testing._brokers import BrokerProcess


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of the shared server; this session's keys are deleted at the end."""
    url = shared_url()
    yield url
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{SESSION_PREFIX}*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
    finally:
        client.close()


@pytest.fixture(scope="session")
def redis_crash_server() -> Iterator[BrokerProcess]:
    """A private redis-server for the crash tests (AOF, fsync on every write), started on
    first use and killed at session end: the shared server is never touched."""
    with tempfile.TemporaryDirectory(prefix="messagebus-redis-") as base:
        server = private_redis(base, free_port())
        try:
            server.start_sync()
            yield server
        finally:
            server.close()


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[aredis.Redis]:
    """A plain client on the shared server, to look at keys the adapter made."""
    client = aredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()
