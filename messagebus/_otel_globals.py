"""The one module that reads OpenTelemetry's private provider globals.

Checking for an installed SDK once per message must cost next to nothing, and the public
getters (``get_tracer_provider``) build proxy objects. So messagebus reads the API's
module globals directly, here and nowhere else; an API version without them falls back to
the public getters. Thread-safe (plain reads).
"""

from __future__ import annotations

import opentelemetry.metrics as _metrics_api
import opentelemetry.metrics._internal as _metrics_internal
import opentelemetry.trace as _trace_api

__all__ = ["meter_provider", "no_meter_provider", "no_provider", "no_tracer_provider", "tracer_provider"]

_HAS_TRACE_GLOBAL = hasattr(_trace_api, "_TRACER_PROVIDER")
_HAS_METER_GLOBAL = hasattr(_metrics_internal, "_METER_PROVIDER")


def tracer_provider() -> object:
    """The tracer provider the application installed, or ``None`` while none is."""
    if _HAS_TRACE_GLOBAL:
        return _trace_api._TRACER_PROVIDER
    provider = _trace_api.get_tracer_provider()
    return None if isinstance(provider, _trace_api.ProxyTracerProvider) else provider


def meter_provider() -> object:
    """The meter provider the application installed, or ``None`` while none is."""
    if _HAS_METER_GLOBAL:
        return _metrics_internal._METER_PROVIDER
    provider = _metrics_api.get_meter_provider()
    return None if type(provider).__name__ == "_ProxyMeterProvider" else provider


def no_tracer_provider() -> bool:
    """True while certainly no tracer provider is installed (the per-message fast check)."""
    return _HAS_TRACE_GLOBAL and _trace_api._TRACER_PROVIDER is None


def no_meter_provider() -> bool:
    """True while certainly no meter provider is installed (the per-message fast check)."""
    return _HAS_METER_GLOBAL and _metrics_internal._METER_PROVIDER is None


def no_provider() -> bool:
    """True while certainly neither a tracer nor a meter provider is installed."""
    return (
        _HAS_TRACE_GLOBAL
        and _HAS_METER_GLOBAL
        and _trace_api._TRACER_PROVIDER is None
        and _metrics_internal._METER_PROVIDER is None
    )
