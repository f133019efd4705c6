"""The conformance kit: one pytest suite every transport runs (DESIGN section 6).

An adapter runs it by subclassing :class:`TransportConformance` and providing a ``target``
fixture::

    from messagebus.testing.conformance import ConformanceTarget, TransportConformance

    class TestRabbitMQConformance(TransportConformance):
        @pytest.fixture
        def target(self, rabbitmq_url: str) -> ConformanceTarget:
            return ConformanceTarget(url=rabbitmq_url, upstream=("127.0.0.1", 5672),
                                     via_proxy=lambda host, port: f"amqp://guest:guest@{host}:{port}/")
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["ConformanceTarget", "TransportConformance"]


@dataclass(frozen=True)
class ConformanceTarget:
    """Where the kit finds the transport under test.

    - ``url``: the transport URL buses are built from (``Bus.from_url(url, service=...)``).
    - ``upstream``: the broker's ``(host, port)``; with ``via_proxy`` it enables the reconnect
      tests, which put a :class:`~messagebus.testing.TcpProxy` in between.
    - ``via_proxy``: builds a URL that reaches the broker through ``host:port`` of the proxy.
    - ``timeout``: seconds to wait for an expected message before failing.
    - ``scale``: multiplies the kit's message counts (0.1 for a slow local emulator).
    """

    url: str
    upstream: tuple[str, int] | None = None
    via_proxy: Callable[[str, int], str] | None = None
    timeout: float = 30.0
    scale: float = 1.0


class TransportConformance:
    """Base class holding the conformance tests; subclass it and define a ``target`` fixture."""
