"""Default observability wiring: which middleware every bus gets (tracing, metrics).

Owned by the observability work (issue 3); the Bus calls these once at construction.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._middleware import Middleware, PublishMiddleware

if TYPE_CHECKING:
    from ._bus import Bus

__all__ = ["default_consume_middleware", "default_publish_middleware"]


def default_consume_middleware(bus: Bus) -> tuple[Middleware, ...]:
    """Consume middleware every handler of ``bus`` gets, outermost first."""
    return ()


def default_publish_middleware(bus: Bus) -> tuple[PublishMiddleware, ...]:
    """Publish middleware every publish of ``bus`` goes through, outermost first."""
    return ()
