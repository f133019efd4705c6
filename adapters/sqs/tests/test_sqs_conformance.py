"""The messagebus conformance kit against moto's SQS/SNS server (standard and FIFO)."""

from __future__ import annotations

import pytest
from sqs_helpers import endpoint_port, make_url

from messagebus.testing.conformance import ConformanceTarget, TransportConformance

# moto answers a few hundred requests a second: the kit's counts are scaled down.
SCALE = 0.05


class TestSqsConformance(TransportConformance):
    """Standard (unordered) SNS topics and SQS queues."""

    @pytest.fixture
    def target(self, moto_endpoint: str, prefix: str) -> ConformanceTarget:
        return ConformanceTarget(
            url=make_url(moto_endpoint, prefix),
            upstream=("127.0.0.1", endpoint_port(moto_endpoint)),
            via_proxy=lambda host, port: make_url(f"http://{host}:{port}", prefix),
            timeout=30.0,
            scale=SCALE,
        )


class TestSqsFifoConformance(TransportConformance):
    """``fifo=true``: FIFO topics and queues, ordering per key through MessageGroupId."""

    @pytest.fixture
    def target(self, moto_endpoint: str, prefix: str) -> ConformanceTarget:
        return ConformanceTarget(
            url=make_url(moto_endpoint, prefix, fifo=True),
            upstream=("127.0.0.1", endpoint_port(moto_endpoint)),
            via_proxy=lambda host, port: make_url(f"http://{host}:{port}", prefix, fifo=True),
            timeout=30.0,
            scale=SCALE,
        )
