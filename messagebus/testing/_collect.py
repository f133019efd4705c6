"""Collector: records handled messages and lets a test wait for them with a timeout."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import Any, Generic, TypeVar

__all__ = ["Collector", "PeakGate"]

T = TypeVar("T")


class Collector(Generic[T]):
    """A list of received items that tests can await, without sleeping.

    ``await collector.wait_for(n)`` returns once ``n`` items arrived, or raises
    :class:`AssertionError` after ``timeout`` saying how many did. Use from one event loop.
    """

    def __init__(self, timeout: float = 30.0) -> None:
        self.items: list[T] = []
        self.timeout = timeout
        self._changed = asyncio.Event()

    def add(self, item: T) -> None:
        """Record ``item`` and wake waiters."""
        self.items.append(item)
        self._changed.set()

    def __len__(self) -> int:
        return len(self.items)

    async def wait_for(self, count: int, *, timeout: float | None = None) -> list[T]:
        """Wait until at least ``count`` items arrived; return them all."""
        return await self.wait_until(lambda items: len(items) >= count, f"{count} items", timeout=timeout)

    async def wait_until(
        self, predicate: Callable[[list[T]], bool], what: str = "condition", *, timeout: float | None = None
    ) -> list[T]:
        """Wait until ``predicate(items)`` holds; raise :class:`AssertionError` on timeout."""
        limit = self.timeout if timeout is None else timeout
        try:
            async with asyncio.timeout(limit):
                while not predicate(self.items):
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(f"timed out after {limit}s waiting for {what}; got {len(self.items)} items") from None
        return self.items

    def duplicates(self, key: Callable[[T], Any] = lambda x: x) -> dict[Any, int]:
        """Items seen more than once, with their counts."""
        return {k: n for k, n in Counter(key(i) for i in self.items).items() if n > 1}


class PeakGate:
    """Measures how many handler calls run at once: :meth:`hold` counts a call in, keeps it
    until ``target`` calls run together (never longer than ``timeout`` seconds, so a
    consumer that stays below ``target`` shows a low :attr:`peak` instead of hanging), and
    counts it out. Use from one event loop."""

    def __init__(self, target: int, timeout: float) -> None:
        self.target = target
        self.timeout = timeout
        self.running = 0
        self.peak = 0
        self._full = asyncio.Event()

    async def hold(self) -> None:
        """Count this call in, wait for the others (bounded), count it out."""
        self.running += 1
        self.peak = max(self.peak, self.running)
        if self.running >= self.target:
            self._full.set()
        try:
            await asyncio.wait_for(self._full.wait(), self.timeout)
        except TimeoutError:
            self._full.set()  # never reached: let the rest through; the peak check fails
        finally:
            self.running -= 1
