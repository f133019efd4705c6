"""The messagebus conformance kit against moto's SQS/SNS server (standard and FIFO)."""

from __future__ import annotations

from typing import cast

import pytest
from sqs_helpers import endpoint_port, make_url

from messagebus.testing._brokers import CrashableBroker
from messagebus.testing.conformance import ConformanceTarget, TransportConformance
from messagebus.testing.transport_kit import TransportKit

# moto answers a few hundred requests a second: the kit's counts are scaled down.
SCALE = 0.02


class TestSqsConformance(TransportConformance):
    """Standard (unordered) SNS topics and SQS queues."""

    @pytest.fixture
    def target(self, moto_endpoint: str, prefix: str, request: pytest.FixtureRequest) -> ConformanceTarget:
        return ConformanceTarget(
            url=make_url(moto_endpoint, prefix),
            upstream=("127.0.0.1", endpoint_port(moto_endpoint)),
            via_proxy=lambda host, port: make_url(f"http://{host}:{port}", prefix),
            timeout=30.0,
            scale=SCALE,
            # A moto server of its own that the crash tests kill; started only when they ask.
            crash_broker=lambda: cast(CrashableBroker, request.getfixturevalue("sqs_crash_server")),
        )


# The FIFO run repeats the kit where FIFO behaves differently (ordering, MessageGroupId and
# deduplication ids, retries blocking a group, dead letters to FIFO queues) and leaves out the
# long volume and fault tests, which the standard run covers with the same code paths: moto's
# FIFO queues cost O(queue length) per message and the adapter has a 4-minute test budget.
FIFO_SKIPPED = {
    "test_concurrent_publishes_then_close_lose_nothing",
    "test_continues_after_100_errors",
    "test_fault_connection_dropped_mid_flow",
    "test_fault_connection_stalled_then_resumed",
    "test_fault_connection_cut_after_bytes",
    "test_fault_consumer_process_killed_or_terminated",
    "test_fault_stop_under_load_loses_nothing",
    "test_reconnect_after_connection_cut_mid_flow",
}

#: Tests skipped on FIFO queues for a known, open problem (docs/faults.md, finding 5): not
#: a volume question. The standard-queue class runs them.
FIFO_KNOWN_OPEN = {
    # A publish to a FIFO queue raised PublishError once in a full CI run during the 5 s
    # outage (1 run in about 4; it passed alone and in the porter's runs); the standard
    # queue's outage test passes. Cause not found yet.
    "test_fault_outage_with_live_traffic",
}


class TestSqsFifoConformance(TransportConformance):
    """``fifo=true``: FIFO topics and queues, ordering per key through MessageGroupId."""

    @pytest.fixture(autouse=True)
    def _fifo_subset(self, request: pytest.FixtureRequest) -> None:
        if request.node.originalname in FIFO_SKIPPED:
            pytest.skip("volume/fault test: run by TestSqsConformance; too slow on moto's FIFO queues")
        if request.node.originalname in FIFO_KNOWN_OPEN:
            pytest.skip("open finding 5 of docs/faults.md: intermittent PublishError in a FIFO outage")

    @pytest.fixture
    def target(self, moto_endpoint: str, prefix: str) -> ConformanceTarget:
        return ConformanceTarget(
            url=make_url(moto_endpoint, prefix, fifo=True),
            upstream=("127.0.0.1", endpoint_port(moto_endpoint)),
            via_proxy=lambda host, port: make_url(f"http://{host}:{port}", prefix, fifo=True),
            timeout=30.0,
            scale=SCALE,
        )


class TestSqsTransportKit(TransportKit):
    """The transport-level kit (the contract without a Bus) on standard SNS topics and SQS queues."""

    @pytest.fixture
    def target(self, moto_endpoint: str, prefix: str) -> ConformanceTarget:
        return ConformanceTarget(url=make_url(moto_endpoint, prefix), timeout=30.0, scale=SCALE)


class TestSqsFifoTransportKit(TransportKit):
    """The transport-level kit on FIFO topics and queues (per-key order through MessageGroupId)."""

    @pytest.fixture
    def target(self, moto_endpoint: str, prefix: str) -> ConformanceTarget:
        return ConformanceTarget(url=make_url(moto_endpoint, prefix, fifo=True), timeout=30.0, scale=SCALE)
