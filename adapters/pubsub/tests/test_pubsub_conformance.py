"""The messagebus conformance kit against Google's Pub/Sub emulator (reconnect tests go
through a TCP proxy in front of it)."""

from __future__ import annotations

from typing import cast

import pytest
from pubsub_helpers import url_for, url_via

from messagebus.testing._brokers import CrashableBroker
from messagebus.testing.conformance import ConformanceTarget, TransportConformance
from messagebus.testing.transport_kit import TransportKit


class TestPubSubConformance(TransportConformance):
    """Every conformance test, on the session's emulator."""

    @pytest.fixture
    def target(self, pubsub_url: str, pubsub_emulator: str, request: pytest.FixtureRequest) -> ConformanceTarget:
        host, _, port = pubsub_emulator.rpartition(":")
        return ConformanceTarget(
            url=pubsub_url,
            upstream=(host, int(port)),
            via_proxy=url_via,
            timeout=30.0,
            # The emulator is a single JVM sharing two cores with the test process.
            scale=0.2,
            # An emulator of its own that the crash tests kill; started only when they ask.
            crash_broker=lambda: cast(CrashableBroker, request.getfixturevalue("pubsub_crash_emulator")),
            # History needs topic retention; the emulator cannot seek an ordered subscription.
            history_url=url_for(pubsub_emulator, topic_retention="1h", ordering="false"),
        )


class TestPubSubTransportKit(TransportKit):
    """The transport-level kit (the contract without a Bus), on the session's emulator."""

    @pytest.fixture
    def target(self, pubsub_url: str) -> ConformanceTarget:
        return ConformanceTarget(url=pubsub_url, timeout=30.0, scale=0.2)
