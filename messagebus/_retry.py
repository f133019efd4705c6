"""Retry policy: exponential backoff with jitter, then dead-letter."""

from __future__ import annotations

import random
from dataclasses import dataclass

from ._errors import ConfigurationError, DecodeError
from ._signals import Reject

__all__ = ["Retry"]


@dataclass(frozen=True, slots=True)
class Retry:
    """How a failed handler is retried before its message is dead-lettered.

    ``max_attempts`` counts the first delivery (``max_attempts=1``: never retry). The n-th
    retry waits ``initial_delay * multiplier ** (n - 1)`` seconds, capped at ``max_delay``,
    spread by ``±jitter`` (a fraction). Only exceptions that are instances of ``retry_on``
    are retried; :class:`Reject` and undecodable payloads never are. Immutable, thread-safe.
    Raises :class:`ConfigurationError` on impossible values.
    """

    max_attempts: int = 5
    initial_delay: float = 0.1
    max_delay: float = 30.0
    multiplier: float = 2.0
    jitter: float = 0.1
    retry_on: tuple[type[BaseException], ...] = (Exception,)

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            problems.append(f"max_attempts must be an int >= 1, got {self.max_attempts!r}")
        if self.initial_delay < 0 or self.max_delay < 0:
            problems.append("initial_delay and max_delay must be >= 0 seconds")
        if self.multiplier < 1:
            problems.append(f"multiplier must be >= 1, got {self.multiplier!r}")
        if not 0 <= self.jitter <= 1:
            problems.append(f"jitter must be a fraction between 0 and 1, got {self.jitter!r}")
        if isinstance(self.retry_on, type):
            object.__setattr__(self, "retry_on", (self.retry_on,))
        elif not all(isinstance(t, type) and issubclass(t, BaseException) for t in self.retry_on):
            problems.append("retry_on must be an exception class or a tuple of them")
        if problems:
            raise ConfigurationError("invalid Retry: " + "; ".join(problems))

    def delay(self, attempt: int) -> float:
        """Seconds to wait before the delivery after failed ``attempt`` (1-based)."""
        base = min(self.initial_delay * self.multiplier ** (attempt - 1), self.max_delay)
        if self.jitter:
            base *= 1 + random.uniform(-self.jitter, self.jitter)
        return max(base, 0.0)

    def should_retry(self, error: BaseException, attempt: int) -> bool:
        """Whether failed ``attempt`` with ``error`` gets another delivery."""
        if isinstance(error, Reject | DecodeError):
            return False
        return attempt < self.max_attempts and isinstance(error, self.retry_on)
