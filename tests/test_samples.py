"""The shop sample runs end to end on memory://."""

import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

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


README = Path(__file__).resolve().parent.parent / "README.md"


def readme_quick_start() -> str:
    """The first ``python`` code block under README's quick start heading, verbatim."""
    section = README.read_text(encoding="utf-8").split("## Five-minute quick start", 1)[1]
    match = re.search(r"^```python\n(.*?)^```", section, re.MULTILINE | re.DOTALL)
    assert match, "README's quick start has no python code block"
    return match.group(1)


def run_quick_start(tmp_path: Path, url: str | None) -> subprocess.CompletedProcess[str]:
    (tmp_path / "quickstart.py").write_text(readme_quick_start())
    env = {k: v for k, v in os.environ.items() if k != "MESSAGEBUS_URL"}
    if url is not None:
        env["MESSAGEBUS_URL"] = url
    return subprocess.run(
        [sys.executable, "quickstart.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=90
    )


def test_readme_quick_start_prints_on_memory(tmp_path: Path) -> None:
    """Catches a README quick start that does not run as printed, or that ends before its handler
    ran (it slept 0.1 s and exited: nothing printed where consumers take longer to start); the
    default URL is memory://."""
    result = run_quick_start(tmp_path, None)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "attempt 1: Billed 42\n"
    assert "attempt 1: Billed 42" in README.read_text(encoding="utf-8"), "README must say what it prints"


def test_readme_quick_start_prints_on_rabbitmq(tmp_path: Path, rabbitmq_vhost_url: str) -> None:
    """Catches a quick start that prints on memory:// only: the same block, verbatim, with
    MESSAGEBUS_URL pointing at RabbitMQ (a fresh vhost)."""
    pytest.importorskip("messagebus_rabbitmq")
    result = run_quick_start(tmp_path, rabbitmq_vhost_url)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "attempt 1: Billed 42\n"


def test_readme_quick_start_prints_on_kafka(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Catches the quick start that printed nothing on Kafka: it slept 0.1 s and left while the
    new consumer group was still joining (seconds). Runs the block verbatim on a Tansu broker."""
    pytest.importorskip("messagebus_kafka")
    import importlib.util

    # The Kafka tests' own broker starter (adapters/kafka/tests is not a package on sys.path).
    spec = importlib.util.spec_from_file_location(
        "kafka_broker", README.parent / "adapters" / "kafka" / "tests" / "kafka_broker.py"
    )
    assert spec and spec.loader
    kafka_broker = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, kafka_broker)  # its dataclasses look their module up
    spec.loader.exec_module(kafka_broker)
    broker = kafka_broker.start_tansu()
    try:
        # Tansu's memory storage has no idempotent producer; nothing else differs from the README.
        result = run_quick_start(tmp_path, f"kafka://127.0.0.1:{broker.port}?idempotence=false")
    finally:
        broker.stop()
    assert result.returncode == 0, result.stderr
    assert result.stdout == "attempt 1: Billed 42\n"
