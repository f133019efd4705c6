"""Fixtures of the outbox/inbox tests: real PostgreSQL (a schema of its own per test) and
real brokers (memory, RabbitMQ in a vhost of its own, Redis under a key prefix of its own)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from outbox_helpers import REDIS_PREFIX, drop_vhost, pg_dsn, rabbitmq_vhost, redis_url

asyncpg = pytest.importorskip("asyncpg")

from messagebus.outbox import migrate  # noqa: E402


@pytest.fixture(scope="session")
def dsn() -> str:
    return pg_dsn()


@pytest.fixture
async def schema(dsn: str) -> AsyncIterator[str]:
    """A fresh schema with the outbox tables, dropped afterwards."""
    name = f"mbt_{uuid.uuid4().hex[:10]}"
    await migrate(dsn, schema=name)
    yield name
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP SCHEMA "{name}" CASCADE')
    finally:
        await conn.close()


@pytest.fixture
async def pool(dsn: str, schema: str) -> AsyncIterator[Any]:
    """An asyncpg pool whose search_path is the test's schema (its own tables go there too)."""
    created = await asyncpg.create_pool(dsn, min_size=1, max_size=8, server_settings={"search_path": schema})
    yield created
    await created.close()


@pytest.fixture(scope="session")
def rabbitmq_session_url() -> Iterator[str]:
    url = rabbitmq_vhost()
    yield url
    drop_vhost(url)


@pytest.fixture(scope="session")
def redis_cleanup() -> Iterator[None]:
    yield
    try:
        import redis
    except ImportError:
        return
    client = redis.Redis.from_url("redis://127.0.0.1:6379/0")
    try:
        keys = list(client.scan_iter(match=f"{REDIS_PREFIX}*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
    finally:
        client.close()


@pytest.fixture(params=["memory", "rabbitmq", "redis"])
def broker_url(request: pytest.FixtureRequest) -> str:
    """Each test that takes it runs on memory://, the shared RabbitMQ and the shared Redis."""
    if request.param == "memory":
        return f"memory://outbox-{uuid.uuid4().hex[:8]}"
    if request.param == "rabbitmq":
        pytest.importorskip("messagebus_rabbitmq")
        url: str = request.getfixturevalue("rabbitmq_session_url")
        return url
    pytest.importorskip("messagebus_redis")
    request.getfixturevalue("redis_cleanup")
    return redis_url()


@pytest.fixture
def memory_url() -> str:
    return f"memory://outbox-{uuid.uuid4().hex[:8]}"
