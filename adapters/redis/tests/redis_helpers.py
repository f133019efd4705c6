"""Helpers of the Redis tests: the shared server's URL, per-test key prefixes, a private
crashable server, and small transport-level utilities."""

from __future__ import annotations

import os
import shutil
import uuid

import redis.asyncio as aredis

from messagebus.testing import missing_broker, wait_for_port
from messagebus.testing._brokers import BrokerProcess
from messagebus.transports import TransportURL

#: The shared server; MESSAGEBUS_TEST_REDIS_URL points the tests elsewhere.
DEFAULT_URL = "redis://127.0.0.1:6379/0"
#: Test timings: a crashed consumer's entries are claimed after 5 s, a silent connection
#: noticed after 5 s.
TEST_OPTIONS = "visibility_timeout=5&socket_timeout=5"
#: Every key of this test session starts with it (deleted at session end).
SESSION_PREFIX = f"mbt{uuid.uuid4().hex[:8]}-"


def shared_url() -> str:
    """The shared server's URL (skips, or fails in CI, when nothing listens there)."""
    url = os.environ.get("MESSAGEBUS_TEST_REDIS_URL", DEFAULT_URL)
    parsed = TransportURL.parse(url)
    host, port = parsed.host or "127.0.0.1", parsed.port or 6379
    if not wait_for_port(host, port, timeout=2.0):
        missing_broker("Redis", f"nothing listens on {host}:{port} (set MESSAGEBUS_TEST_REDIS_URL)")
    return url


def fresh_prefix() -> str:
    """A key prefix of its own for one test: no test sees another's streams."""
    return f"{SESSION_PREFIX}{uuid.uuid4().hex[:8]}:"


def with_options(url: str, options: str) -> str:
    """``url`` with more query options."""
    return f"{url}{'&' if '?' in url else '?'}{options}" if options else url


def url_for(base: str, prefix: str | None = None, extra: str = "") -> str:
    """The URL a test uses: the test timings and a fresh key prefix."""
    return with_options(base, f"{TEST_OPTIONS}&prefix={prefix or fresh_prefix()}" + (f"&{extra}" if extra else ""))


async def keys_of(raw: aredis.Redis, prefix: str) -> set[str]:
    """Every key under ``prefix`` on the server ``raw`` talks to."""
    return {k.decode() async for k in raw.scan_iter(match=f"{prefix}*", count=1000)}


def private_redis(base: str, port: int) -> BrokerProcess:
    """A redis-server of its own on ``port`` with its data in ``base``: AOF with
    ``appendfsync always`` (every write on disk before the reply), no RDB snapshots."""
    server = shutil.which("redis-server")
    if server is None:
        missing_broker("Redis", "redis-server is not installed (needed for the crash tests)")
    command = [server, "--port", str(port), "--bind", "127.0.0.1", "--appendonly", "yes", "--appendfsync", "always"]
    command += ["--save", "", "--dir", base, "--protected-mode", "no"]
    return BrokerProcess(
        "redis",
        command,
        port,
        url_for(f"redis://127.0.0.1:{port}/0"),
        keeps_messages=True,
        log_path=os.path.join(base, "redis.log"),
    )
