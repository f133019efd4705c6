"""The messagebus conformance kit against RabbitMQ (reconnect tests go through a TCP proxy)."""

from __future__ import annotations

import pytest

from messagebus.testing.conformance import ConformanceTarget, TransportConformance
from messagebus.transports import TransportURL


class TestRabbitMQConformance(TransportConformance):
    """Every conformance test, on the shared RabbitMQ broker."""

    @pytest.fixture
    def target(self, rabbitmq_url: str) -> ConformanceTarget:
        parsed = TransportURL.parse(rabbitmq_url)
        upstream = (parsed.host or "127.0.0.1", parsed.port or 5672)

        def via_proxy(host: str, port: int) -> str:
            return parsed.with_hosts(((host, port),)).render(redact=False)

        return ConformanceTarget(url=rabbitmq_url, upstream=upstream, via_proxy=via_proxy, timeout=30.0)
