"""Middleware types and composition.

Consume middleware wraps the handler chain, publish middleware wraps the publish call; both
see encoded bytes and headers. The first listed runs outermost.

A :data:`Handler` may raise when it is called, before it returns an awaitable (the bus's
innermost handler raises :class:`~messagebus.DecodeError` that way), so middleware calls
and awaits the next handler inside the same ``try``: ``await handler(envelope)``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TypeVar

from ._message import Envelope, OutgoingMessage

__all__ = ["Handler", "Middleware", "PublishFn", "PublishMiddleware", "compose"]

Handler = Callable[[Envelope], Awaitable[None]]
Middleware = Callable[[Handler], Handler]
PublishFn = Callable[[Sequence[OutgoingMessage]], Awaitable[None]]
PublishMiddleware = Callable[[PublishFn], PublishFn]

F = TypeVar("F")


def compose(inner: F, middleware: Iterable[Callable[[F], F]]) -> F:
    """Wrap ``inner`` so that the first middleware listed runs outermost."""
    for mw in reversed(tuple(middleware)):
        inner = mw(inner)
    return inner
