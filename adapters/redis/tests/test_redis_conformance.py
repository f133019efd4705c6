"""Both layers of the conformance kit against Redis: the shared server (faults through a TCP
proxy in front of it) and a private server for the crash tests."""

from __future__ import annotations

from typing import cast

import pytest
from redis_helpers import fresh_prefix, url_for

from messagebus.testing._brokers import CrashableBroker
from messagebus.testing.conformance import ConformanceTarget, TransportConformance
from messagebus.testing.transport_kit import TransportKit


def redis_target(base: str, request: pytest.FixtureRequest | None = None) -> ConformanceTarget:
    """The kit's target: a fresh key prefix per test, the proxy hook, the crash server."""
    prefix = fresh_prefix()

    def crash_broker() -> CrashableBroker:
        assert request is not None
        return cast(CrashableBroker, request.getfixturevalue("redis_crash_server"))

    return ConformanceTarget(
        url=url_for(base, prefix),
        upstream=("127.0.0.1", 6379),
        via_proxy=lambda host, port: url_for(f"redis://{host}:{port}/0", prefix),
        timeout=30.0,
        crash_broker=crash_broker if request is not None else None,
    )


class TestRedisConformance(TransportConformance):
    """Every Bus-level conformance test, faults, crashes and header limits included."""

    @pytest.fixture
    def target(self, redis_url: str, request: pytest.FixtureRequest) -> ConformanceTarget:
        return redis_target(redis_url, request)


class TestRedisTransportKit(TransportKit):
    """The transport-level kit (the contract without a Bus)."""

    @pytest.fixture
    def target(self, redis_url: str) -> ConformanceTarget:
        return redis_target(redis_url)
