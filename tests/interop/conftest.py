"""Fixtures of the interop suite: the real brokers foreign clients and messagebus share.

RabbitMQ: ``MESSAGEBUS_TEST_RABBITMQ_URL`` or the server on 127.0.0.1:5672 (guest/guest).
Kafka: ``MESSAGEBUS_TEST_KAFKA_URL`` or a Tansu broker for the session, started the way the
Kafka adapter's own tests start it. A missing broker skips (or, in CI, fails) its tests.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from messagebus.testing import missing_broker, wait_for_port
from messagebus.transports import TransportURL

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "adapters" / "kafka" / "tests"))
from kafka_broker import TEST_OPTIONS, start_tansu

RABBITMQ_DEFAULT = "amqp://guest:guest@127.0.0.1:5672/"


@pytest.fixture(scope="session")
def rabbitmq_url() -> str:
    """URL of a running RabbitMQ broker (skips/fails the test when there is none)."""
    url = os.environ.get("MESSAGEBUS_TEST_RABBITMQ_URL", RABBITMQ_DEFAULT)
    parsed = TransportURL.parse(url)
    host, port = parsed.host or "127.0.0.1", parsed.port or 5672
    if not wait_for_port(host, port, timeout=5.0):
        missing_broker("RabbitMQ", f"nothing listens on {host}:{port} (set MESSAGEBUS_TEST_RABBITMQ_URL)")
    return url


@pytest.fixture(scope="session")
def kafka_url() -> Iterator[str]:
    """``kafka://`` URL of the session's broker, with test-friendly timings."""
    env = os.environ.get("MESSAGEBUS_TEST_KAFKA_URL")
    if env:
        yield env
        return
    broker = start_tansu()
    try:
        yield f"kafka://127.0.0.1:{broker.port}?{TEST_OPTIONS}"
    finally:
        broker.stop()


@pytest.fixture
def name() -> str:
    """A fresh logical name, so tests never share queues, topics or groups."""
    return f"interop.{uuid.uuid4().hex[:10]}"
