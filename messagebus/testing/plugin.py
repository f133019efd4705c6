"""pytest plugin (entry point ``pytest11``): fixtures to test services on ``memory://``.

- ``memory_broker``: a fresh, uniquely named :class:`MemoryBroker`, reset afterwards.
- ``memory_url``: the ``memory://NAME`` URL of that broker.
- ``manual_clock``: a :class:`ManualClock` installed in ``memory_broker``, so delayed
  redeliveries and retry backoff happen when the test calls ``manual_clock.advance(s)``.
- ``bus_factory``: ``bus_factory(service="x", **kwargs)`` builds buses on ``memory_url``
  and stops them all after the test.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from .._bus import Bus, BusState
from .._clock import ManualClock
from ..transports.memory import MemoryBroker


@pytest.fixture
def memory_broker() -> Iterator[MemoryBroker]:
    """A fresh in-memory broker for one test."""
    broker = MemoryBroker.named(f"test-{uuid.uuid4().hex[:12]}")
    yield broker
    broker.reset()


@pytest.fixture
def memory_url(memory_broker: MemoryBroker) -> str:
    """``memory://NAME`` for :func:`memory_broker`."""
    return f"memory://{memory_broker.name}"


@pytest.fixture
def manual_clock(memory_broker: MemoryBroker) -> ManualClock:
    """A manual clock driving ``memory_broker``'s delayed redeliveries."""
    clock = ManualClock()
    memory_broker.clock = clock
    return clock


@pytest.fixture
async def bus_factory(memory_url: str) -> AsyncIterator[Callable[..., Bus]]:
    """Build buses on the test's memory broker; all are stopped after the test."""
    made: list[Bus] = []

    def make(service: str = "app", **kwargs: Any) -> Bus:
        bus = Bus.from_url(kwargs.pop("url", memory_url), service=service, **kwargs)
        made.append(bus)
        return bus

    yield make
    for bus in reversed(made):
        if bus.state in (BusState.RUNNING, BusState.STOPPING):
            await bus.stop(grace=5)
