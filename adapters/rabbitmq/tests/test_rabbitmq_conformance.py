"""The messagebus conformance kit against RabbitMQ, fault tests included: connections cut,
stalled and broken through a TCP proxy, consumer processes killed, and a broker restart
(``rabbitmqctl stop_app`` / ``start_app`` on the local test broker)."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess

import pytest
from rmq_helpers import DEFAULT_URL

from messagebus.testing import wait_for_port
from messagebus.testing.conformance import ConformanceTarget, TransportConformance
from messagebus.testing.transport_kit import TransportKit
from messagebus.transports import TransportURL


def _restart_local_broker() -> None:
    # stop_app/start_app restarts RabbitMQ inside its Erlang node: every connection drops,
    # durable queues and persistent messages must survive.
    subprocess.run(["rabbitmqctl", "stop_app"], check=True, capture_output=True, timeout=120)
    subprocess.run(["rabbitmqctl", "start_app"], check=True, capture_output=True, timeout=120)
    if not wait_for_port("127.0.0.1", 5672, timeout=60):
        raise RuntimeError("RabbitMQ did not come back after start_app")


async def restart_broker() -> None:
    """Restart the local RabbitMQ test broker; returns once it accepts connections."""
    await asyncio.to_thread(_restart_local_broker)


class TestRabbitMQConformance(TransportConformance):
    """Every conformance test, on the shared RabbitMQ broker."""

    @pytest.fixture
    def target(self, rabbitmq_url: str) -> ConformanceTarget:
        parsed = TransportURL.parse(rabbitmq_url)
        upstream = (parsed.host or "127.0.0.1", parsed.port or 5672)

        def via_proxy(host: str, port: int) -> str:
            return parsed.with_hosts(((host, port),)).render(redact=False)

        # Restart only the local broker we may control (never one given by URL), and let a
        # shared machine opt out.
        can_restart = (
            rabbitmq_url == DEFAULT_URL
            and shutil.which("rabbitmqctl") is not None
            and os.environ.get("MESSAGEBUS_TEST_RABBITMQ_NO_RESTART") != "1"
        )
        return ConformanceTarget(
            url=rabbitmq_url,
            upstream=upstream,
            via_proxy=via_proxy,
            timeout=30.0,
            restart=restart_broker if can_restart else None,
        )


class TestRabbitMQTransportKit(TransportKit):
    """The transport-level kit (the contract without a Bus), on the shared RabbitMQ broker."""

    @pytest.fixture
    def target(self, rabbitmq_url: str) -> ConformanceTarget:
        return ConformanceTarget(url=rabbitmq_url, timeout=30.0)
