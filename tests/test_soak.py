"""The soak benchmark in its short CI mode: steady traffic with failures, retries and dead
letters on memory:// and on RabbitMQ; nothing lost and memory flat. The full 30-minute run
is ``python -m benchmarks.soak``."""

import pytest

from benchmarks.soak import soak
from messagebus.testing import missing_broker, wait_for_port

SECONDS = 30


@pytest.mark.slow
async def test_soak_memory() -> None:
    result = await soak("memory://soak-test", SECONDS, rate=2000, every=3, quiet=True)
    assert result.lost == 0
    assert result.poison > 0
    assert result.dead == result.poison
    assert result.rss_growth_mib < 20, result.table()


@pytest.mark.slow
async def test_soak_rabbitmq() -> None:
    pytest.importorskip("messagebus_rabbitmq")
    if not wait_for_port("127.0.0.1", 5672, timeout=5):
        missing_broker("RabbitMQ", "nothing listens on 127.0.0.1:5672")
    result = await soak("amqp://guest:guest@127.0.0.1:5672/", SECONDS, rate=500, every=3, quiet=True)
    assert result.lost == 0
    assert result.poison > 0
    assert result.dead == result.poison
    assert result.rss_growth_mib < 20, result.table()
