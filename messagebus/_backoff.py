"""Backoff: the one exponential back-off with jitter that every retry loop of a transport uses
(reconnects, failed fetches, re-declarations)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

__all__ = ["Backoff", "sleep_unless"]

T = TypeVar("T")


class Backoff:
    """Delays ``initial``, ``initial * multiplier``, ... capped at ``maximum``, each spread by
    ``±jitter`` (a fraction) so that many clients do not retry in step.

    :meth:`next` gives the next delay; :meth:`reset` starts over after a success;
    :meth:`wait` sleeps the next delay unless ``stop`` is set first. Not thread-safe; cheap to
    make (one per loop). Raises ``ValueError`` for impossible settings.
    """

    __slots__ = ("_current", "initial", "jitter", "maximum", "multiplier")

    def __init__(
        self, initial: float = 0.05, maximum: float = 5.0, *, multiplier: float = 2.0, jitter: float = 0.1
    ) -> None:
        if initial <= 0 or maximum < initial or multiplier < 1 or not 0 <= jitter < 1:
            raise ValueError(
                f"Backoff needs 0 < initial <= maximum, multiplier >= 1 and 0 <= jitter < 1; "
                f"got initial={initial}, maximum={maximum}, multiplier={multiplier}, jitter={jitter}"
            )
        self.initial = initial
        self.maximum = maximum
        self.multiplier = multiplier
        self.jitter = jitter
        self._current = 0.0

    @property
    def failures(self) -> bool:
        """True after :meth:`next` was called since the last :meth:`reset`."""
        return self._current > 0

    def next(self) -> float:
        """The delay before the next try, in seconds."""
        current = self._current
        current = self.initial if current == 0 else min(current * self.multiplier, self.maximum)
        self._current = current
        if self.jitter:
            return current * (1 + random.uniform(-self.jitter, self.jitter))
        return current

    def reset(self) -> None:
        """Start over at ``initial`` (call after a success)."""
        self._current = 0.0

    async def wait(self, stop: asyncio.Event | None = None) -> bool:
        """Sleep the next delay; return ``False`` early (without waiting the rest) once
        ``stop`` is set, else ``True``."""
        delay = self.next()
        if stop is None:
            await asyncio.sleep(delay)
            return True
        return await sleep_unless(stop, delay)

    async def retry_for(
        self,
        seconds: float,
        attempt: Callable[[float], Awaitable[T]],
        *,
        transient: Callable[[Exception], bool],
        give_up: Callable[[Exception, bool], BaseException],
        log: logging.Logger | None = None,
        what: str = "connecting",
    ) -> T:
        """``await attempt(deadline)`` until it returns, for at most ``seconds``.

        ``deadline`` is the ``time.monotonic()`` by which the whole retry ends (an attempt
        bounds its own waits with it). After an exception that ``transient`` accepts, sleeps
        the next delay and tries again if the next try can start before the deadline;
        otherwise raises ``give_up(exc, was_transient)`` chained to it. Cancellation and
        any other ``BaseException`` passes through at once. Used for connecting and for
        re-sending through a short outage.
        """
        deadline = time.monotonic() + seconds
        while True:
            try:
                return await attempt(deadline)
            except Exception as exc:
                retry = transient(exc)
                delay = self.next()
                if not retry or time.monotonic() + delay >= deadline:
                    raise give_up(exc, retry) from exc
                if log is not None:
                    log.debug("%s failed (%r); next try in %.2fs", what, exc, delay)
                await asyncio.sleep(delay)


async def sleep_unless(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep ``seconds`` unless ``stop`` is set first; ``True`` when the whole time passed."""
    if stop.is_set():
        return False
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
        return False
    return True
