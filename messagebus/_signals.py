"""Signals a handler raises to settle a message another way than "done"."""

from __future__ import annotations

__all__ = ["Nack", "Reject"]


class Nack(Exception):
    """Raise from a handler to ask for a redelivery after ``delay`` seconds.

    A ``Nack`` is not a failure: it does not count against ``Retry.max_attempts`` and never
    dead-letters, but the redelivery's ``Envelope.attempt`` is one higher.
    """

    def __init__(self, delay: float = 0.0) -> None:
        if delay < 0:
            raise ValueError(f"Nack delay must be >= 0 seconds, got {delay}")
        super().__init__(f"nack (redeliver after {delay}s)")
        self.delay = delay


class Reject(Exception):
    """Raise from a handler to dead-letter the message at once, with ``reason``; no retries."""

    def __init__(self, reason: str = "rejected by handler") -> None:
        super().__init__(reason)
        self.reason = reason


Nack.__module__ = Reject.__module__ = "messagebus"  # documented and reported as messagebus.X
