"""The shop sample runs end to end on memory://."""

import uuid
from collections.abc import Iterator

import pytest

from samples.shop.__main__ import run_all


async def test_shop_runs_on_memory(capsys: pytest.CaptureFixture[str]) -> None:
    assert await run_all(f"memory://shop-{uuid.uuid4().hex[:8]}", 6, timeout=30) == 0
    out = capsys.readouterr().out
    assert "6 orders" in out
    assert "5 shipped, 1 payment failed" in out
    assert "charged order-3 $59.97 (attempt 2)" in out
    assert "payment failed for order-5 (card ending 0000 declined)" in out


@pytest.fixture
def rabbitmq_vhost_url() -> Iterator[str]:
    """A fresh RabbitMQ vhost on the local server, deleted afterwards."""
    import shutil
    import subprocess

    from messagebus.testing import missing_broker, wait_for_port

    if not shutil.which("rabbitmqctl") or not wait_for_port("127.0.0.1", 5672, timeout=5):
        missing_broker("RabbitMQ", "nothing listens on 127.0.0.1:5672 (start it with 'rabbitmq-server -detached')")
    vhost = f"shop-{uuid.uuid4().hex[:8]}"
    subprocess.run(["rabbitmqctl", "-q", "add_vhost", vhost], check=True, capture_output=True)
    subprocess.run(
        ["rabbitmqctl", "-q", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
        check=True,
        capture_output=True,
    )
    yield f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
    subprocess.run(["rabbitmqctl", "-q", "delete_vhost", vhost], capture_output=True)


async def test_shop_runs_one_process_per_service_on_rabbitmq(rabbitmq_vhost_url: str) -> None:
    pytest.importorskip("messagebus_rabbitmq")
    from samples.shop.multiprocess import run_shop_processes

    outcomes = await run_shop_processes(rabbitmq_vhost_url, orders=6, timeout=120)
    assert outcomes == {
        **{f"order-{i}": "shipped" for i in (1, 2, 3, 4, 6)},
        "order-5": "payment failed",
    }


def test_demo_prints_the_trace_of_one_order() -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "samples.shop", "--trace", "--url", f"memory://trace-{uuid.uuid4().hex[:8]}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    tree = result.stdout.split("The trace of order-3", 1)[1]
    for span in ("place order", "send orders.created", "-> retry(", "attempt 2", "process emails"):
        assert span in tree
    assert "(notifications)" in tree
