"""Default observability wiring: which middleware every bus gets (tracing, metrics).

Every bus traces and measures by default, through ``opentelemetry-api`` only: nothing is
recorded, and almost nothing is spent, until the application installs an OpenTelemetry SDK
(``opentelemetry.trace.set_tracer_provider`` / ``opentelemetry.metrics.set_meter_provider``).
Set the environment variable ``MESSAGEBUS_TELEMETRY=off`` (or ``0``, ``false``, ``no``)
before a bus is built to leave the middleware out altogether, ``traces`` or ``metrics`` to
keep only that one. See docs/observability.md.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Mapping

from ._destination import Destination
from ._errors import ConfigurationError
from ._message import AttributeValue, Envelope
from ._middleware import Handler, Middleware, PublishMiddleware

__all__ = [
    "SIGNALS",
    "TELEMETRY_ENV",
    "default_consume_middleware",
    "filtered_counter",
    "default_publish_middleware",
    "telemetry_enabled",
    "telemetry_signals",
]

#: Environment variable that turns the default tracing and metrics middleware off.
TELEMETRY_ENV = "MESSAGEBUS_TELEMETRY"

_OFF = frozenset({"0", "false", "off", "no", "disabled"})
_ON = frozenset({"", "1", "true", "on", "yes", "enabled"})

#: The signals ``MESSAGEBUS_TELEMETRY`` can name.
SIGNALS = frozenset({"traces", "metrics"})

Server = tuple[str, int | None] | None


def telemetry_signals() -> frozenset[str]:
    """The signals new buses instrument, from ``MESSAGEBUS_TELEMETRY`` (any case): none for
    ``off``, ``0``, ``false``, ``no`` or ``disabled``; both when it is unset, empty, ``on``,
    ``1``, ``true``, ``yes`` or ``enabled``; else the comma-separated signals it names
    (``traces``, ``metrics``). Raises :class:`ConfigurationError` naming the allowed values for
    anything else. Reads the environment on each call."""
    raw = os.environ.get(TELEMETRY_ENV, "")
    value = raw.strip().lower()
    if value in _OFF:
        return frozenset()
    if value in _ON:
        return SIGNALS
    named = frozenset(part.strip() for part in value.split(",") if part.strip())
    if not named or named - SIGNALS:
        raise ConfigurationError(
            f"{TELEMETRY_ENV}={raw!r} is not understood: use on, off, traces, metrics or traces,metrics"
        )
    return named


def telemetry_enabled() -> bool:
    """Whether new buses get any telemetry middleware: ``False`` when ``MESSAGEBUS_TELEMETRY``
    is ``off``, ``0``, ``false``, ``no`` or ``disabled`` (any case). Raises like
    :func:`telemetry_signals`."""
    return bool(telemetry_signals())


def default_consume_middleware(system: str, *, service: str, server: Server) -> tuple[Middleware, ...]:
    """Consume middleware every handler of a bus gets: tracing (the ``process`` span) around
    metrics (so the span covers what the metrics time), as one middleware. ``system`` is the
    transport's ``messaging.system``, ``server`` its first broker (host, port) or ``None``.
    Only the signals :func:`telemetry_signals` names; empty when it names none."""
    signals = telemetry_signals()
    if not signals:
        return ()
    from .middleware.metrics import metrics_middleware
    from .middleware.tracing import tracing_middleware

    if signals == SIGNALS:
        traced = tracing_middleware(system, service=service, server=server)
        return (_bypassed_without_sdk(traced, metrics_middleware(system)),)
    if "traces" in signals:
        return (tracing_middleware(system, service=service, server=server),)
    return (metrics_middleware(system),)


def _bypassed_without_sdk(tracing: Middleware, metrics: Middleware) -> Middleware:
    """``tracing`` around ``metrics``, as one middleware whose entry hands a delivery straight
    to the next handler while neither a tracer nor a meter provider is installed: one check
    per message instead of one per middleware (each also checks, for when only one is)."""
    from ._otel_globals import no_provider  # imports OpenTelemetry: only once a bus is built

    def middleware(handler: Handler) -> Handler:
        observed = tracing(metrics(handler))

        def entry(envelope: Envelope) -> Awaitable[None]:
            if no_provider():
                return handler(envelope)
            return observed(envelope)

        return entry

    return middleware


def default_publish_middleware(
    system: str,
    *,
    service: str,
    server: Server,
    attributes_for: Callable[[Destination], Mapping[str, AttributeValue]] | None = None,
) -> tuple[PublishMiddleware, ...]:
    """Publish middleware every publish of a bus goes through, outermost first: tracing (the
    ``send`` span and context injection), then metrics. ``attributes_for`` gives a
    destination's publish attributes (a transport's :class:`PublishAttributes`). Only the
    signals :func:`telemetry_signals` names; empty when it names none."""
    signals = telemetry_signals()
    if not signals:
        return ()
    from .middleware.metrics import metrics_publish_middleware
    from .middleware.tracing import tracing_publish_middleware

    out: list[PublishMiddleware] = []
    if "traces" in signals:
        out.append(tracing_publish_middleware(system, service=service, server=server, attributes_for=attributes_for))
    if "metrics" in signals:
        out.append(metrics_publish_middleware(system))
    return tuple(out)


def filtered_counter(system: str, destination: str, group: str | None) -> Callable[[], None]:
    """What counts a message a subscription's filter left unhandled: the
    ``messagebus.filtered.messages`` counter, or nothing when metrics are off."""
    if "metrics" not in telemetry_signals():
        return _nothing
    from .middleware.metrics import filtered_counter as counter

    return counter(system, destination, group)


def _nothing() -> None:
    return None
