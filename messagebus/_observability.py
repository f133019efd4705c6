"""Default observability wiring: which middleware every bus gets (tracing, metrics).

Every bus traces and measures by default, through ``opentelemetry-api`` only: nothing is
recorded, and almost nothing is spent, until the application installs an OpenTelemetry SDK
(``opentelemetry.trace.set_tracer_provider`` / ``opentelemetry.metrics.set_meter_provider``).
Set the environment variable ``MESSAGEBUS_TELEMETRY=off`` (or ``0``, ``false``, ``no``)
before a bus is built to leave the middleware out altogether. See docs/observability.md.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable
from typing import TYPE_CHECKING

from ._message import Envelope
from ._middleware import Handler, Middleware, PublishMiddleware

if TYPE_CHECKING:
    from ._bus import Bus

__all__ = ["TELEMETRY_ENV", "default_consume_middleware", "default_publish_middleware", "telemetry_enabled"]

#: Environment variable that turns the default tracing and metrics middleware off.
TELEMETRY_ENV = "MESSAGEBUS_TELEMETRY"

_OFF = frozenset({"0", "false", "off", "no", "disabled"})


def telemetry_enabled() -> bool:
    """Whether new buses get tracing and metrics: ``False`` when ``MESSAGEBUS_TELEMETRY`` is
    ``off``, ``0``, ``false``, ``no`` or ``disabled`` (any case); ``True`` otherwise."""
    return os.environ.get(TELEMETRY_ENV, "").strip().lower() not in _OFF


def default_consume_middleware(bus: Bus) -> tuple[Middleware, ...]:
    """Consume middleware every handler of ``bus`` gets: tracing (the ``process`` span)
    around metrics (so the span covers what the metrics time), as one middleware. Empty when
    :func:`telemetry_enabled` is false."""
    if not telemetry_enabled():
        return ()
    from .middleware.metrics import metrics_middleware
    from .middleware.tracing import tracing_middleware

    system = bus.transport.messaging_system
    return (
        _bypassed_without_sdk(
            tracing_middleware(system, service=bus.service, server=_server(bus)), metrics_middleware(system)
        ),
    )


def _bypassed_without_sdk(tracing: Middleware, metrics: Middleware) -> Middleware:
    """``tracing`` around ``metrics``, as one middleware whose entry hands a delivery straight
    to the next handler while neither a tracer nor a meter provider is installed: one check
    per message instead of one per middleware (each also checks, for when only one is)."""
    import opentelemetry.metrics._internal as metrics_globals
    import opentelemetry.trace as trace_globals

    from .middleware import metrics as metrics_module
    from .middleware import tracing as tracing_module

    # Whether this API version has the provider globals, as each middleware found out itself.
    if not (tracing_module._HAS_GLOBAL and metrics_module._HAS_GLOBAL):
        return lambda handler: tracing(metrics(handler))

    def middleware(handler: Handler) -> Handler:
        observed = tracing(metrics(handler))

        def entry(envelope: Envelope) -> Awaitable[None]:
            if trace_globals._TRACER_PROVIDER is None and metrics_globals._METER_PROVIDER is None:
                return handler(envelope)
            return observed(envelope)

        return entry

    return middleware


def default_publish_middleware(bus: Bus) -> tuple[PublishMiddleware, ...]:
    """Publish middleware every publish of ``bus`` goes through, outermost first: tracing
    (the ``send`` span and context injection), then metrics. Empty when
    :func:`telemetry_enabled` is false."""
    if not telemetry_enabled():
        return ()
    from .middleware.metrics import metrics_publish_middleware
    from .middleware.tracing import tracing_publish_middleware

    system = bus.transport.messaging_system
    return (
        tracing_publish_middleware(
            system,
            service=bus.service,
            server=_server(bus),
            # Optional transport hook (see Transport): per-destination publish attributes.
            attributes_for=getattr(bus.transport, "publish_attributes", None),
        ),
        metrics_publish_middleware(system),
    )


def _server(bus: Bus) -> tuple[str, int | None] | None:
    """The first broker host and port of the bus's URL (``server.address``/``server.port``);
    none for the in-process memory transport."""
    url = bus.url
    if url is None or not url.hosts or bus.transport.messaging_system == "memory":
        return None
    return url.hosts[0]
