"""Timeout middleware: end a handler that runs too long, so its message is retried."""

from __future__ import annotations

import asyncio

from .._message import Envelope
from .._middleware import Handler, Middleware

__all__ = ["HandlerTimeout", "timeout"]


class HandlerTimeout(TimeoutError):
    """The handler did not finish within the timeout; retried per the ``Retry`` policy."""


def timeout(seconds: float) -> Middleware:
    """Middleware that cancels the handler after ``seconds`` and raises :class:`HandlerTimeout`."""
    if seconds <= 0:
        raise ValueError(f"timeout must be > 0 seconds, got {seconds}")

    def wrap(handler: Handler) -> Handler:
        async def run(envelope: Envelope) -> None:
            try:
                async with asyncio.timeout(seconds):
                    await handler(envelope)
            except TimeoutError as exc:
                if isinstance(exc, HandlerTimeout):
                    raise
                raise HandlerTimeout(f"handler for {envelope.destination} exceeded {seconds}s") from exc

        return run

    return wrap
