"""Clocks for scheduling delayed redeliveries; :class:`ManualClock` lets tests skip time."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import threading
import time
from collections.abc import Callable
from typing import Protocol

__all__ = ["Clock", "ManualClock", "SystemClock"]


class Clock(Protocol):
    """Monotonic time and delayed callbacks. Implementations are thread-safe."""

    def now(self) -> float:
        """Monotonic seconds."""
        ...

    def call_later(self, delay: float, callback: Callable[[], None]) -> None:
        """Run ``callback`` (thread-safe, non-blocking) after ``delay`` seconds, best effort."""
        ...


class SystemClock:
    """Real monotonic time; callbacks run on the calling thread's event loop, if any.

    A callback whose loop has closed never runs; the memory broker also releases due
    messages lazily on its next operation, so nothing depends on a timer alone.
    """

    def now(self) -> float:
        """``time.monotonic()``."""
        return time.monotonic()

    def call_later(self, delay: float, callback: Callable[[], None]) -> None:
        """Schedule on the running loop; without one, do nothing (lazy release covers it)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        loop.call_later(max(delay, 0.0), callback)


class ManualClock:
    """A clock that moves only when a test calls :meth:`advance`. Thread-safe.

    Backoff and delayed redelivery on ``memory://`` then run without real sleeps::

        clock = ManualClock()
        broker = MemoryBroker.named("t", clock=clock)
        ...
        clock.advance(30)   # every redelivery due within 30 s is released now
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._lock = threading.Lock()
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        """The current manual time."""
        return self._now

    def call_later(self, delay: float, callback: Callable[[], None]) -> None:
        """Run ``callback`` when :meth:`advance` passes ``now() + delay``."""
        with self._lock:
            heapq.heappush(self._timers, (self._now + max(delay, 0.0), next(self._seq), callback))

    def advance(self, seconds: float) -> None:
        """Move time forward and run every callback that fell due, in due order."""
        if seconds < 0:
            raise ValueError("a clock cannot go backwards")
        with self._lock:
            self._now += seconds
            due = []
            while self._timers and self._timers[0][0] <= self._now:
                due.append(heapq.heappop(self._timers)[2])
        for callback in due:
            callback()
