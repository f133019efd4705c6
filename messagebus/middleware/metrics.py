"""OpenTelemetry metrics for publish and consume, on ``opentelemetry-api`` only.

Every bus gets these by default (see :mod:`messagebus._observability`); until an
OpenTelemetry SDK meter provider is installed they cost one global read per call.

Instruments (OpenTelemetry messaging semantic conventions):

- ``messaging.client.sent.messages`` (counter, ``{message}``): messages the producer tried
  to send, by ``messaging.system``, ``messaging.destination.name``,
  ``messaging.operation.name`` (``send``) and ``error.type`` when the publish failed.
- ``messaging.client.operation.duration`` (histogram, ``s``): duration of each publish call
  (one per batch), same attributes plus ``messaging.operation.type``.
- ``messaging.client.consumed.messages`` (counter, ``{message}``): messages delivered to a
  handler (each redelivery counts), by system, destination, ``messaging.consumer.group.name``
  and ``messaging.operation.name`` (``process``).
- ``messaging.process.duration`` (histogram, ``s``): duration of the handler chain, same
  attributes plus ``error.type`` when the handler raised (a ``Nack`` is not an error).
- ``messagebus.filtered.messages`` (counter, ``{message}``): messages a subscription's
  ``filter=`` left unhandled (acked at the client, where the broker cannot filter), by
  system, destination and group.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence

import opentelemetry.metrics as _metrics_api
from opentelemetry.metrics import Counter, Histogram, Meter

from .._dead_letter import error_type_name
from .._message import AttributeValue, Envelope, OutgoingMessage
from .._middleware import Handler, Middleware, PublishFn, PublishMiddleware
from .._otel_globals import meter_provider, no_meter_provider
from .._signals import Nack
from .tracing import (
    CONSUMER_GROUP,
    DESTINATION,
    ERROR_TYPE,
    OPERATION_NAME,
    OPERATION_TYPE,
    SYSTEM,
    TRACER_NAME,
)

__all__ = [
    "DURATION_BUCKETS",
    "MessagingInstruments",
    "MeterGate",
    "filtered_counter",
    "metrics_middleware",
    "metrics_publish_middleware",
]

_VERSION = "0.1.0"

#: Histogram bucket boundaries (seconds) the semantic conventions advise for durations.
DURATION_BUCKETS: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
)


class MessagingInstruments:
    """The four messaging instruments, created once from ``meter``."""

    __slots__ = ("consumed", "filtered", "operation_duration", "process_duration", "sent")

    def __init__(self, meter: Meter) -> None:
        self.sent: Counter = meter.create_counter(
            "messaging.client.sent.messages",
            unit="{message}",
            description="Number of messages the producer attempted to send to the broker.",
        )
        self.consumed: Counter = meter.create_counter(
            "messaging.client.consumed.messages",
            unit="{message}",
            description="Number of messages delivered to the application.",
        )
        self.operation_duration: Histogram = meter.create_histogram(
            "messaging.client.operation.duration",
            unit="s",
            description="Duration of a messaging operation initiated by a producer or consumer client.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self.process_duration: Histogram = meter.create_histogram(
            "messaging.process.duration",
            unit="s",
            description="Duration of processing operation.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self.filtered: Counter = meter.create_counter(
            "messagebus.filtered.messages",
            unit="{message}",
            description="Messages acked unhandled because they did not match the subscription's filter.",
        )


class MeterGate:
    """Hands out the messagebus instruments when a real meter provider is installed, else
    ``None``: with only the API it costs one module-global read per call. The global
    provider can be set only once per process, so the instruments are cached."""

    __slots__ = ("_instruments", "_provider")

    def __init__(self) -> None:
        _metrics_api.get_meter_provider()  # resolve OTEL_PYTHON_METER_PROVIDER once
        self._provider: object = None
        self._instruments: MessagingInstruments | None = None

    def instruments(self) -> MessagingInstruments | None:
        """The instruments to record on for this call, or ``None`` to skip metrics."""
        provider = meter_provider()
        if provider is None:
            return None
        if provider is not self._provider:
            self._provider = provider
            self._instruments = _real_instruments(provider)
        return self._instruments


def _real_instruments(provider: object) -> MessagingInstruments | None:
    if not isinstance(provider, _metrics_api.MeterProvider) or isinstance(provider, _metrics_api.NoOpMeterProvider):
        return None
    meter = provider.get_meter(TRACER_NAME, _VERSION)
    if isinstance(meter, _metrics_api.NoOpMeter):
        return None
    return MessagingInstruments(meter)


def metrics_publish_middleware(messaging_system: str, gate: MeterGate | None = None) -> PublishMiddleware:
    """Publish middleware recording ``messaging.client.sent.messages`` (one per message) and
    ``messaging.client.operation.duration`` (one per publish call), with ``error.type`` when
    the publish raised. ``messaging_system`` is the transport's ``messaging.system`` value."""
    gate = gate or MeterGate()
    by_destination: dict[str, dict[str, AttributeValue]] = {}

    def middleware(inner: PublishFn) -> PublishFn:
        def publish(messages: Sequence[OutgoingMessage]) -> Awaitable[None]:
            # No SDK: hand back the inner call itself, so not even a coroutine frame is added.
            if no_meter_provider():
                return inner(messages)
            instruments = gate.instruments()
            if instruments is None or not messages:
                return inner(messages)
            return measured(messages, instruments)

        async def measured(messages: Sequence[OutgoingMessage], instruments: MessagingInstruments) -> None:
            name = messages[0].destination.name
            attributes = by_destination.get(name)
            if attributes is None:
                attributes = by_destination[name] = {
                    SYSTEM: messaging_system,
                    DESTINATION: name,
                    OPERATION_NAME: "send",
                    OPERATION_TYPE: "send",
                }
            start = time.perf_counter()
            try:
                await inner(messages)
            except BaseException as error:
                failed = {**attributes, ERROR_TYPE: error_type_name(error)}
                instruments.operation_duration.record(time.perf_counter() - start, failed)
                instruments.sent.add(len(messages), failed)
                raise
            instruments.operation_duration.record(time.perf_counter() - start, attributes)
            instruments.sent.add(len(messages), attributes)

        return publish

    return middleware


def metrics_middleware(messaging_system: str | None = None, gate: MeterGate | None = None) -> Middleware:
    """Consume middleware counting ``messaging.client.consumed.messages`` per delivery and
    timing the rest of the chain as ``messaging.process.duration`` (``error.type`` when it
    raised; a ``Nack`` is not an error). ``messaging_system`` defaults to the envelope's."""
    gate = gate or MeterGate()
    by_source: dict[tuple[str, str | None], dict[str, AttributeValue]] = {}

    def middleware(handler: Handler) -> Handler:
        def entry(envelope: Envelope) -> Awaitable[None]:
            # No SDK: hand back the inner call itself, so not even a coroutine frame is added.
            if no_meter_provider():
                return handler(envelope)
            instruments = gate.instruments()
            if instruments is None:
                return handler(envelope)
            return measured(envelope, instruments)

        async def measured(envelope: Envelope, instruments: MessagingInstruments) -> None:
            source = (envelope.destination, envelope.group)
            attributes = by_source.get(source)
            if attributes is None:
                attributes = {
                    SYSTEM: messaging_system or envelope.messaging_system,
                    DESTINATION: envelope.destination,
                    OPERATION_NAME: "process",
                    OPERATION_TYPE: "process",
                }
                if envelope.group:
                    attributes[CONSUMER_GROUP] = envelope.group
                by_source[source] = attributes
            instruments.consumed.add(1, attributes)
            start = time.perf_counter()
            try:
                await handler(envelope)
            except Nack:
                instruments.process_duration.record(time.perf_counter() - start, attributes)
                raise
            except BaseException as error:
                failed = {**attributes, ERROR_TYPE: error_type_name(error)}
                instruments.process_duration.record(time.perf_counter() - start, failed)
                raise
            instruments.process_duration.record(time.perf_counter() - start, attributes)

        return entry

    return middleware


def filtered_counter(
    messaging_system: str, destination: str, group: str | None, gate: MeterGate | None = None
) -> Callable[[], None]:
    """A callable that adds one to ``messagebus.filtered.messages`` for this subscription
    (nothing while no meter provider is installed). Cheap; call it from the event loop."""
    gate = gate or MeterGate()
    attributes: dict[str, AttributeValue] = {SYSTEM: messaging_system, DESTINATION: destination}
    if group:
        attributes[CONSUMER_GROUP] = group

    def count() -> None:
        instruments = gate.instruments()
        if instruments is not None:
            instruments.filtered.add(1, attributes)

    return count
