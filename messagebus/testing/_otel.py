"""OpenTelemetry SDK helpers for tests and demos: capture spans and metrics in memory, and
print a trace as an indented tree. Needs ``opentelemetry-sdk`` (not a messagebus dependency).

OpenTelemetry lets a process set its global tracer and meter providers once, so
:func:`install_telemetry` installs one SDK :class:`~opentelemetry.sdk.trace.TracerProvider`
(with an :class:`InMemorySpanExporter`) and one :class:`~opentelemetry.sdk.metrics.MeterProvider`
(with an :class:`InMemoryMetricReader`, delta temporality) for the whole process, on first
use; later calls return the same :class:`TelemetryCapture`. Spans are only sampled while a
:func:`capture_telemetry` block is open, so tests that do not look at telemetry pay little
and nothing piles up in memory::

    from messagebus.testing.telemetry import capture_telemetry, format_trace_tree

    with capture_telemetry() as telemetry:
        ...  # publish, wait until handled
        print(format_trace_tree(telemetry.spans()))
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TextIO

from opentelemetry import metrics as metrics_api
from opentelemetry import trace as trace_api
from opentelemetry.context import Context
from opentelemetry.sdk.metrics import Counter, Histogram, MeterProvider
from opentelemetry.sdk.metrics.export import AggregationTemporality, InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.trace import Link, SpanKind, StatusCode
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import Attributes

__all__ = [
    "MetricPoint",
    "TelemetryCapture",
    "capture_telemetry",
    "format_trace_tree",
    "install_telemetry",
    "print_trace_tree",
]

MetricPoint = tuple[dict[str, Any], Any]
"""One data point: its attributes and its value (a counter's sum, or a histogram's list
``[count, sum]``)."""


class _Switch(Sampler):
    """Samples every span while the capture records, none otherwise."""

    def __init__(self, capture: TelemetryCapture) -> None:
        self._capture = capture

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        if self._capture.recording:
            return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes)
        return SamplingResult(Decision.DROP)

    def get_description(self) -> str:
        return "messagebus.testing capture switch"


class _NotifyingExporter(InMemorySpanExporter):
    """An in-memory exporter that wakes :meth:`TelemetryCapture.wait_for_span` waiters."""

    def __init__(self) -> None:
        super().__init__()
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()
        self._waiters_lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        result = super().export(spans)
        with self._waiters_lock:
            waiters = list(self._waiters)
        for loop, event in waiters:
            with contextlib.suppress(RuntimeError):  # that loop is closed
                loop.call_soon_threadsafe(event.set)
        return result


class TelemetryCapture:
    """The process-wide in-memory span exporter and metric reader.

    :meth:`spans` returns finished spans (oldest first); :meth:`metrics` the data points
    recorded since the last :meth:`metrics` or :meth:`clear` call. ``recording`` is true
    inside :func:`capture_telemetry`. Thread-safe like the SDK exporter it wraps.
    """

    def __init__(self) -> None:
        self.recording = False
        self.exporter = _NotifyingExporter()
        self.reader: InMemoryMetricReader | None = None

    def spans(self, trace_id: int | None = None) -> list[ReadableSpan]:
        """Finished spans, in the order they ended; only those of ``trace_id`` if given."""
        spans = list(self.exporter.get_finished_spans())
        if trace_id is None:
            return spans
        return [s for s in spans if s.context is not None and s.context.trace_id == trace_id]

    async def wait_for_span(
        self, predicate: Callable[[ReadableSpan], bool], *, timeout: float = 10.0, what: str = "a span"
    ) -> ReadableSpan:
        """Wait until a finished span matches ``predicate`` and return the first such span;
        raise :class:`AssertionError` saying what was captured after ``timeout`` seconds.
        Wakes on every export: no polling sleeps."""
        event = asyncio.Event()
        waiter = (asyncio.get_running_loop(), event)
        exporter = self.exporter
        with exporter._waiters_lock:
            exporter._waiters.add(waiter)
        try:
            async with asyncio.timeout(timeout):
                while True:
                    event.clear()
                    for span in exporter.get_finished_spans():
                        if predicate(span):
                            return span
                    await event.wait()
        except TimeoutError:
            names = sorted({s.name for s in exporter.get_finished_spans()})
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; captured: {names}") from None
        finally:
            with exporter._waiters_lock:
                exporter._waiters.discard(waiter)

    def trace_ids(self) -> list[int]:
        """The trace ids of the finished spans, in order of their earliest start."""
        first: dict[int, int] = {}
        for span in self.exporter.get_finished_spans():
            if span.context is not None:
                tid = span.context.trace_id
                first[tid] = min(first.get(tid, span.start_time or 0), span.start_time or 0)
        return sorted(first, key=first.__getitem__)

    def trace_id_of(self, predicate: Callable[[ReadableSpan], bool]) -> int | None:
        """The trace id of the earliest-starting finished span matching ``predicate`` (for
        example ``lambda s: s.name == "send orders.created"``), or ``None``."""
        matching = [s for s in self.exporter.get_finished_spans() if s.context is not None and predicate(s)]
        if not matching:
            return None
        first = min(matching, key=lambda s: s.start_time or 0)
        return first.context.trace_id if first.context is not None else None

    def metrics(self) -> dict[str, list[MetricPoint]]:
        """Data points recorded since the last call (delta temporality), by metric name.

        Raises :class:`RuntimeError` when another SDK meter provider was installed first."""
        if self.reader is None:
            raise RuntimeError(
                "another OpenTelemetry MeterProvider was installed before install_telemetry(); "
                "metrics cannot be captured in this process"
            )
        out: dict[str, list[MetricPoint]] = defaultdict(list)
        data = self.reader.get_metrics_data()
        if data is None:
            return {}
        for resource_metrics in data.resource_metrics:
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    for point in metric.data.data_points:
                        value: Any = getattr(point, "value", None)
                        if value is None:
                            value = [getattr(point, "count", 0), getattr(point, "sum", 0)]
                        out[metric.name].append((dict(point.attributes or {}), value))
        return dict(out)

    def clear(self) -> None:
        """Forget every finished span and every data point recorded so far."""
        self.exporter.clear()
        if self.reader is not None:
            self.reader.get_metrics_data()


_lock = threading.Lock()
_capture: TelemetryCapture | None = None


def install_telemetry() -> TelemetryCapture:
    """Install the process-wide SDK tracer and meter providers with in-memory export on the
    first call; return the same :class:`TelemetryCapture` every time.

    If an SDK :class:`TracerProvider` is already the global one, the exporter is added to it
    (its sampler then decides what is recorded); if any other tracer provider is, raises
    :class:`RuntimeError`. If another meter provider is already installed, spans are still
    captured but :meth:`TelemetryCapture.metrics` raises.
    """
    global _capture
    with _lock:
        if _capture is not None:
            return _capture
        capture = TelemetryCapture()
        processor = SimpleSpanProcessor(capture.exporter)
        current = trace_api.get_tracer_provider()
        if isinstance(current, TracerProvider):
            current.add_span_processor(processor)
        elif isinstance(current, trace_api.ProxyTracerProvider):
            provider = TracerProvider(sampler=_Switch(capture))
            provider.add_span_processor(processor)
            trace_api.set_tracer_provider(provider)
            if trace_api.get_tracer_provider() is not provider:
                raise RuntimeError("could not install the OpenTelemetry SDK tracer provider")
        else:
            raise RuntimeError(
                f"a non-SDK tracer provider ({type(current).__name__}) is installed; spans cannot be captured"
            )
        meters = metrics_api.get_meter_provider()
        if type(meters).__name__ == "_ProxyMeterProvider":
            reader = InMemoryMetricReader(
                preferred_temporality={
                    Counter: AggregationTemporality.DELTA,
                    Histogram: AggregationTemporality.DELTA,
                }
            )
            meter_provider = MeterProvider(metric_readers=[reader])
            metrics_api.set_meter_provider(meter_provider)
            if metrics_api.get_meter_provider() is meter_provider:
                capture.reader = reader
        _capture = capture
        return capture


@contextmanager
def capture_telemetry() -> Iterator[TelemetryCapture]:
    """Record spans and metrics for the duration of the block, starting from nothing.

    Installs the providers on first use (:func:`install_telemetry`), clears what was
    captured before, and samples every span until the block exits. Not re-entrant: one
    capture at a time per process (pytest runs tests one at a time).
    """
    capture = install_telemetry()
    capture.clear()
    capture.recording = True
    try:
        yield capture
    finally:
        capture.recording = False


# -- the tree printer ----------------------------------------------------------------------

_KINDS = {
    SpanKind.INTERNAL: "internal",
    SpanKind.SERVER: "server",
    SpanKind.CLIENT: "client",
    SpanKind.PRODUCER: "producer",
    SpanKind.CONSUMER: "consumer",
}

_EVENT_KEYS = {
    "messagebus.retry.delay": "delay",
    "messagebus.retry.attempt": "next attempt",
    "messagebus.dead_letter.queue": "to",
    "error.type": "error",
}


def _describe(span: ReadableSpan) -> str:
    attrs: Mapping[str, Any] = span.attributes or {}
    parts = [span.name, f"[{_KINDS.get(span.kind, str(span.kind))}]"]
    service = attrs.get("messagebus.service")
    group = attrs.get("messaging.consumer.group.name")
    who = str(service) if service else ""
    if group and group != service:
        who = f"{who} as {group}" if who else str(group)
    if who:
        parts.append(f"({who})")
    attempt = attrs.get("messagebus.delivery.attempt")
    if attempt is not None and attempt != 1:
        parts.append(f"attempt {attempt}")
    count = attrs.get("messaging.batch.message_count")
    if count is not None:
        parts.append(f"{count} messages")
    if span.start_time is not None and span.end_time is not None:
        parts.append(f"{(span.end_time - span.start_time) / 1e6:.2f} ms")
    if span.status.status_code is StatusCode.ERROR:
        parts.append(f"ERROR {attrs.get('error.type', '')!s}".rstrip())
    for event in span.events:
        details = ", ".join(
            f"{label}={event.attributes[key]!s}"
            for key, label in _EVENT_KEYS.items()
            if event.attributes and key in event.attributes
        )
        parts.append(f"-> {event.name}({details})" if details else f"-> {event.name}")
    if span.links:
        parts.append(f"links: {len(span.links)}")
    return "  ".join(parts)


def format_trace_tree(spans: Iterable[ReadableSpan], *, trace_id: int | None = None) -> str:
    """Render finished spans as indented trees, one per trace (oldest first), children
    under their parent in start order. Each line shows the span name, kind, the service or
    consumer group, the attempt, the duration, an error and the settle events (``ack``,
    ``retry``, ``dead_letter``). Spans whose parent is not among ``spans`` are shown as
    roots. With ``trace_id``, only that trace is rendered."""
    by_trace: dict[int, list[ReadableSpan]] = defaultdict(list)
    for span in spans:
        if span.context is None or (trace_id is not None and span.context.trace_id != trace_id):
            continue
        by_trace[span.context.trace_id].append(span)
    lines: list[str] = []
    for tid, members in sorted(by_trace.items(), key=lambda kv: min(s.start_time or 0 for s in kv[1])):
        ids = {s.context.span_id for s in members if s.context is not None}
        children: dict[int | None, list[ReadableSpan]] = defaultdict(list)
        for span in members:
            parent = span.parent.span_id if span.parent is not None and span.parent.span_id in ids else None
            children[parent].append(span)
        for group in children.values():
            group.sort(key=lambda s: s.start_time or 0)
        lines.append(f"trace {tid:032x}")
        roots = children.get(None, [])
        for i, root in enumerate(roots):
            _walk(root, children, "", i == len(roots) - 1, lines)
    return "\n".join(lines)


def _walk(
    span: ReadableSpan, children: Mapping[int | None, list[ReadableSpan]], prefix: str, last: bool, lines: list[str]
) -> None:
    lines.append(f"{prefix}{'└─ ' if last else '├─ '}{_describe(span)}")
    below = children.get(span.context.span_id, []) if span.context is not None else []
    for i, child in enumerate(below):
        _walk(child, children, prefix + ("   " if last else "│  "), i == len(below) - 1, lines)


def print_trace_tree(spans: Iterable[ReadableSpan], *, trace_id: int | None = None, file: TextIO | None = None) -> None:
    """Print :func:`format_trace_tree` of ``spans`` (to ``file``, default stdout)."""
    print(format_trace_tree(spans, trace_id=trace_id), file=file)
