"""The messagebus conformance kit against Kafka (Tansu unless MESSAGEBUS_TEST_KAFKA_URL is set).

Kafka clients connect to the address the broker *advertises*, not to the bootstrap address, so
a plain TCP proxy only sees the bootstrap connection. For the reconnect test the ``via_proxy``
hook starts a dedicated Tansu that listens on the proxy's upstream port and advertises the
proxy's own port: then every connection (metadata, produce, fetch, group coordinator) goes
through the proxy, and cutting it really cuts the transport.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import cast

import pytest
from kafka_broker import TEST_OPTIONS, Tansu

from messagebus.testing import free_port
from messagebus.testing._brokers import CrashableBroker
from messagebus.testing.conformance import ConformanceTarget, TransportConformance
from messagebus.testing.transport_kit import TransportKit


class TestKafkaConformance(TransportConformance):
    """Every conformance test, on the session's Kafka broker."""

    @pytest.fixture
    def target(
        self, kafka_url: str, tansu_factory: Callable[..., Tansu], request: pytest.FixtureRequest
    ) -> ConformanceTarget:
        def crash_broker() -> CrashableBroker:
            # A Tansu of its own (data in S3), started only when a crash test asks for it.
            return cast(CrashableBroker, request.getfixturevalue("kafka_crash_broker"))

        if os.environ.get("MESSAGEBUS_TEST_KAFKA_URL"):
            # An external cluster advertises its own addresses: no proxy can sit in between.
            return ConformanceTarget(url=kafka_url, timeout=60.0, crash_broker=crash_broker)
        upstream_port = free_port()

        def via_proxy(host: str, port: int) -> str:
            tansu_factory(port=upstream_port, advertised_port=port)
            return f"kafka://{host}:{port}?{TEST_OPTIONS}"

        return ConformanceTarget(
            url=kafka_url,
            upstream=("127.0.0.1", upstream_port),
            via_proxy=via_proxy,
            timeout=60.0,
            crash_broker=crash_broker,
        )


class TestKafkaTransportKit(TransportKit):
    """The transport-level kit (the contract without a Bus), on the session's Kafka broker."""

    @pytest.fixture
    def target(self, kafka_url: str) -> ConformanceTarget:
        return ConformanceTarget(url=kafka_url, timeout=60.0)
