"""Bad input against real servers: nothing listening, refused credentials (a private server
with a password), a message over the limit, a key of another type where a stream goes."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Iterator

import pytest
import redis.asyncio as aredis
from messagebus_redis import RedisTransport, physical_names
from messagebus_redis._options import RedisOptions
from redis_helpers import fresh_prefix, url_for

from messagebus import Bus, ConnectError, MessageTooLarge, TopologyError
from messagebus.testing import free_port, missing_broker
from messagebus.testing._brokers import BrokerProcess
from messagebus.transports import Destination, DestinationKind

PASSWORD = "s3cret-pw-471"


@pytest.fixture(scope="module")
def password_server() -> Iterator[int]:
    """A private redis-server that requires ``PASSWORD``; yields its port."""
    server_bin = shutil.which("redis-server")
    if server_bin is None:
        missing_broker("Redis", "redis-server is not installed")
    with tempfile.TemporaryDirectory(prefix="messagebus-redis-auth-") as base:
        port = free_port()
        command = [server_bin, "--port", str(port), "--requirepass", PASSWORD, "--save", "", "--dir", base]
        server = BrokerProcess(
            "redis", command, port, f"redis://127.0.0.1:{port}", keeps_messages=False, log_path=f"{base}/log"
        )
        server.start_sync()
        try:
            yield port
        finally:
            server.close()


async def test_nothing_listening_gives_a_bounded_connect_error() -> None:
    """Catches connect() hanging or leaking redis-py's error: it gives up after
    ``connect_timeout`` with ConnectError naming the address, the native error chained."""
    port = free_port()
    t = RedisTransport.from_url(f"redis://127.0.0.1:{port}/0?connect_timeout=1")
    with pytest.raises(ConnectError, match=f"127.0.0.1:{port}") as info:
        await asyncio.wait_for(t.connect(), 20)  # a guard only: connect gives up after ~1 s
    assert info.value.__cause__ is not None
    await t.close()


async def test_wrong_password_is_a_clear_error_without_the_password(password_server: int) -> None:
    """Catches refused credentials retried until the timeout, or the password in the error:
    a wrong one fails at once with a hint; the right one connects."""
    t = RedisTransport.from_url(f"redis://:wrong-{PASSWORD}@127.0.0.1:{password_server}/0?connect_timeout=30")
    with pytest.raises(ConnectError, match="refused the credentials") as info:
        await asyncio.wait_for(t.connect(), 10)  # far below connect_timeout: not retried
    assert PASSWORD not in str(info.value) and PASSWORD not in repr(t)
    await t.close()
    ok = RedisTransport.from_url(f"redis://:{PASSWORD}@127.0.0.1:{password_server}/0")
    await ok.connect()
    await ok.close()


async def test_a_batch_with_one_message_over_the_limit_sends_nothing(redis_url: str) -> None:
    """Catches the size check running per message while sending (the first ones stored): the
    batch raises MessageTooLarge naming the limit, and the stream stays empty."""
    prefix = fresh_prefix()
    async with Bus.from_url(url_for(redis_url, prefix, "max_message_size=200"), service="big") as bus:
        with pytest.raises(MessageTooLarge, match="at most 200"):
            await bus.send_many("q", [{"n": 1}, {"blob": "x" * 300}])
    raw = aredis.Redis.from_url(redis_url)
    stream = physical_names(Destination(DestinationKind.QUEUE, "q"), RedisOptions.model_validate({"prefix": prefix}))
    assert await raw.xlen(stream["stream"]) == 0
    await raw.aclose()


async def test_a_key_of_another_type_is_a_topology_error(redis_url: str) -> None:
    """Catches WRONGTYPE surfacing as a raw redis-py error (or a consumer that retries it
    forever): subscribing where a string key sits raises TopologyError naming the key."""
    prefix = fresh_prefix()
    raw = aredis.Redis.from_url(redis_url)
    await raw.set(f"{prefix}q:{{taken}}", "not a stream")
    await raw.aclose()
    bus = Bus.from_url(url_for(redis_url, prefix), service="wrongtype")

    @bus.consume("taken")
    async def handle(item: dict[str, int]) -> None:
        raise AssertionError("nothing can arrive")

    with pytest.raises(TopologyError, match="taken"):
        await bus.start()
    await bus.stop()
