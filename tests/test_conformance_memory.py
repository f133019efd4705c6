"""The conformance kit on the memory transport."""

import uuid

import pytest

from messagebus.testing.conformance import ConformanceTarget, TransportConformance


class TestMemoryConformance(TransportConformance):
    @pytest.fixture
    def target(self) -> ConformanceTarget:
        return ConformanceTarget(url=f"memory://conformance-{uuid.uuid4().hex[:8]}", timeout=10)
