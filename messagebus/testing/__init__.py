"""Testing helpers: fixtures (the ``messagebus`` pytest plugin), waiting for a memory bus to
be idle, a fault-injecting TCP proxy, broker helpers, and the conformance kit
(:mod:`messagebus.testing.conformance`)."""

from .._bus import Bus
from .._clock import ManualClock
from .._compat import Mode, SchemaSource, check_compatibility
from ..transports.memory import MemoryBroker, MemoryTransport
from ._brokers import brokers_required, free_port, missing_broker, wait_for_port
from ._collect import Collector
from ._proxy import TcpProxy

__all__ = [
    "Collector",
    "ManualClock",
    "MemoryBroker",
    "TcpProxy",
    "assert_compatible",
    "brokers_required",
    "free_port",
    "missing_broker",
    "wait_for_port",
    "wait_idle",
]


async def wait_idle(bus: Bus, timeout: float = 10.0) -> None:
    """Wait until every message on ``bus``'s memory broker has been handled and settled
    (including what handlers published in turn). Raises :class:`TimeoutError` saying what is
    still busy, or :class:`TypeError` for a bus that is not on ``memory://``."""
    transport = bus.transport
    if not isinstance(transport, MemoryTransport):
        raise TypeError(f"wait_idle needs a memory:// bus; {bus!r} runs on {transport.messaging_system}")
    await transport.broker.wait_idle(timeout)


def assert_compatible(old: SchemaSource, new: SchemaSource, mode: Mode = "backward") -> None:
    """Assert that changing a message model from ``old`` to ``new`` (model classes or JSON
    Schemas) breaks no consumer in ``mode``: ``"backward"`` (consumers on NEW read messages
    written with OLD), ``"forward"`` (consumers on OLD read NEW's) or ``"full"`` (both). Raises
    :class:`AssertionError` listing each breaking change, :class:`ValueError` for another mode.
    See :func:`messagebus._compat.check_compatibility` and docs/evolution.md."""
    report = check_compatibility(old, new)
    if not report.compatible(mode):
        raise AssertionError(report.explain(mode))
