"""Capture OpenTelemetry spans and metrics in memory and print traces as trees (for tests
and demos). Needs ``opentelemetry-sdk``, which messagebus itself does not depend on."""

from ._otel import (
    MetricPoint,
    TelemetryCapture,
    capture_telemetry,
    format_trace_tree,
    install_telemetry,
    print_trace_tree,
)

__all__ = [
    "MetricPoint",
    "TelemetryCapture",
    "capture_telemetry",
    "format_trace_tree",
    "install_telemetry",
    "print_trace_tree",
]
