"""Testing helpers: fixtures (the ``messagebus`` pytest plugin), waiting for a memory bus to
be idle, a fault-injecting TCP proxy, broker helpers, and the conformance kit
(:mod:`messagebus.testing.conformance`)."""

from .._bus import Bus
from .._clock import ManualClock
from ..transports.memory import MemoryBroker, MemoryTransport
from ._brokers import brokers_required, free_port, missing_broker, wait_for_port
from ._collect import Collector
from ._proxy import TcpProxy

__all__ = [
    "Collector",
    "ManualClock",
    "MemoryBroker",
    "TcpProxy",
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
