"""The messagebus conformance kit against RabbitMQ, fault tests included: connections cut,
stalled and broken through a TCP proxy, consumer processes killed, and broker crashes and
restarts on a private node (``rabbitmq_crash_node``): the shared broker is never stopped."""

from __future__ import annotations

from typing import cast

import pytest
from test_rabbitmq_history import _delete_history_streams  # noqa: F401  (a fixture: streams removed)

from messagebus.testing._brokers import CrashableBroker
from messagebus.testing.conformance import ConformanceTarget, TransportConformance
from messagebus.testing.transport_kit import TransportKit
from messagebus.transports import TransportURL


class TestRabbitMQConformance(TransportConformance):
    """Every conformance test, on the shared RabbitMQ broker (crash tests on a private node)."""

    @pytest.fixture
    def target(self, rabbitmq_url: str, request: pytest.FixtureRequest) -> ConformanceTarget:
        parsed = TransportURL.parse(rabbitmq_url)
        upstream = (parsed.host or "127.0.0.1", parsed.port or 5672)

        def via_proxy(host: str, port: int) -> str:
            return parsed.with_hosts(((host, port),)).render(redact=False)

        return ConformanceTarget(
            url=rabbitmq_url,
            upstream=upstream,
            via_proxy=via_proxy,
            timeout=30.0,
            # History is an opt-in on RabbitMQ: each topic's messages kept in a stream.
            history_url=f"{rabbitmq_url}{'&' if '?' in rabbitmq_url else '?'}history=1h",
            # A private node the crash tests may kill; started only when one of them asks.
            crash_broker=lambda: cast(CrashableBroker, request.getfixturevalue("rabbitmq_crash_node")),
        )


class TestRabbitMQTransportKit(TransportKit):
    """The transport-level kit (the contract without a Bus), on the shared RabbitMQ broker."""

    @pytest.fixture
    def target(self, rabbitmq_url: str) -> ConformanceTarget:
        return ConformanceTarget(url=rabbitmq_url, timeout=30.0)
