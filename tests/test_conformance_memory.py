"""Both layers of the conformance kit on the memory transport."""

import uuid

import pytest

from messagebus.testing.conformance import ConformanceTarget, TransportConformance
from messagebus.testing.transport_kit import TransportKit


def _target() -> ConformanceTarget:
    return ConformanceTarget(url=f"memory://conformance-{uuid.uuid4().hex[:8]}", timeout=10)


class TestMemoryConformance(TransportConformance):
    @pytest.fixture
    def target(self) -> ConformanceTarget:
        return _target()


class TestMemoryTransportKit(TransportKit):
    @pytest.fixture
    def target(self) -> ConformanceTarget:
        return _target()
