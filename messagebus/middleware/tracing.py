"""OpenTelemetry tracing for publish and consume, on ``opentelemetry-api`` only.

Every bus gets these by default (see :mod:`messagebus._observability`); they cost one global
read per call until an OpenTelemetry SDK tracer provider is installed, and nothing else.

- :func:`tracing_publish_middleware`: one ``send <destination>`` PRODUCER span per publish
  call. A single message carries the ``send`` span's context; a batch (``publish_many``)
  gets one ``create <destination>`` PRODUCER span per message, whose context that message
  carries, and the ``send`` span links to every ``create`` span. The context is injected
  as W3C ``traceparent``/``tracestate`` (whatever the global propagator writes) into the
  message headers; a ``traceparent`` the caller put in ``headers`` is kept unchanged.
- :func:`tracing_middleware`: one ``process <destination>`` CONSUMER span per handled
  message, the child of the context extracted from the message headers (so retries and the
  dead-letter copy, which keep the headers, stay in the producer's trace). A handler error
  sets ``error.type`` and the ERROR status; the settle outcome is a span event (``ack``,
  ``retry`` with delay and next attempt, ``dead_letter`` with the queue), and the span ends
  once the message is settled.

Attributes follow the OpenTelemetry messaging semantic conventions (v1.27+):
``messaging.system``, ``messaging.destination.name``, ``messaging.operation.type``,
``messaging.operation.name``, ``messaging.consumer.group.name``, ``messaging.message.id``,
``messaging.message.body.size``, ``messaging.batch.message_count``,
``messaging.kafka.message.key`` (Kafka), ``messaging.gcp_pubsub.message.ordering_key``
(Pub/Sub), ``server.address``/``server.port`` (when known), plus each transport's own
(:attr:`Envelope.messaging_attributes`) and ``messagebus.delivery.attempt``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import partial

import opentelemetry.trace as _trace_api
from opentelemetry import context as otel_context
from opentelemetry import propagate
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode, Tracer

from .._dead_letter import error_message, error_type_name
from .._destination import Destination
from .._message import AttributeValue, Envelope, OutgoingMessage
from .._middleware import Handler, Middleware, PublishFn, PublishMiddleware
from .._otel_globals import no_tracer_provider, tracer_provider
from .._settle import Outcome, Settlement
from .._signals import Nack

__all__ = [
    "TRACER_NAME",
    "TracerGate",
    "process_attributes",
    "tracing_middleware",
    "tracing_publish_middleware",
]

#: The instrumentation scope name of messagebus spans and metrics.
TRACER_NAME = "messagebus"

_VERSION = "0.1.0"
_TRACEPARENT = "traceparent"

# Attribute names (OpenTelemetry messaging semantic conventions).
SYSTEM = "messaging.system"
DESTINATION = "messaging.destination.name"
OPERATION_TYPE = "messaging.operation.type"
OPERATION_NAME = "messaging.operation.name"
CONSUMER_GROUP = "messaging.consumer.group.name"
MESSAGE_ID = "messaging.message.id"
BODY_SIZE = "messaging.message.body.size"
BATCH_COUNT = "messaging.batch.message_count"
KAFKA_KEY = "messaging.kafka.message.key"
PUBSUB_ORDERING_KEY = "messaging.gcp_pubsub.message.ordering_key"
CLOUDEVENTS_ID = "cloudevents.event_id"
SERVER_ADDRESS = "server.address"
SERVER_PORT = "server.port"

#: Where each system's semantic conventions put the message key.
KEY_ATTRIBUTES = {"kafka": KAFKA_KEY, "gcp_pubsub": PUBSUB_ORDERING_KEY}
ERROR_TYPE = "error.type"
ATTEMPT = "messagebus.delivery.attempt"
RETRY_DELAY = "messagebus.retry.delay"
RETRY_ATTEMPT = "messagebus.retry.attempt"
DEAD_LETTER_QUEUE = "messagebus.dead_letter.queue"
SERVICE = "messagebus.service"

#: Destinations (or sources) whose span attributes a middleware keeps built; past this many
#: (an application inventing destination names) the cache starts over rather than grow.
_MAX_CACHED = 1024


class TracerGate:
    """Hands out the messagebus tracer when a real tracer provider is installed, else ``None``.

    :meth:`tracer` is called once per publish and per delivery: with only the API (no SDK
    provider set) it costs one module-global read. A provider that cannot record (the API's
    ``NoOpTracerProvider``, an SDK disabled by ``OTEL_SDK_DISABLED``) also yields ``None``.
    The global provider can be set only once per process, so the tracer is cached.
    """

    __slots__ = ("_provider", "_tracer")

    def __init__(self) -> None:
        # Resolves OTEL_PYTHON_TRACER_PROVIDER once, so the fast path can read the global.
        _trace_api.get_tracer_provider()
        self._provider: object = None
        self._tracer: Tracer | None = None

    def tracer(self) -> Tracer | None:
        """The tracer to use for this call, or ``None`` to skip tracing entirely."""
        provider = tracer_provider()
        if provider is None:
            return None
        if provider is not self._provider:
            self._provider = provider
            self._tracer = _real_tracer(provider)
        return self._tracer


def _real_tracer(provider: object) -> Tracer | None:
    if not isinstance(provider, _trace_api.TracerProvider) or isinstance(provider, _trace_api.NoOpTracerProvider):
        return None
    tracer = provider.get_tracer(TRACER_NAME, _VERSION)
    if isinstance(tracer, _trace_api.NoOpTracer):
        return None
    return tracer


def _error(span: Span, error: BaseException) -> None:
    kind = error_type_name(error)
    span.set_attribute(ERROR_TYPE, kind)
    message = error_message(error)
    try:
        span.record_exception(error)
    except Exception:  # the SDK calls str(error): an exception that cannot print itself
        span.add_event("exception", {"exception.type": kind, "exception.message": message})
    span.set_status(Status(StatusCode.ERROR, f"{kind}: {message}"[:256]))


def _inject(message: OutgoingMessage) -> None:
    # A traceparent the caller set explicitly wins: they are propagating a context on purpose.
    if _TRACEPARENT not in message.headers:
        propagate.inject(message.headers)


def _server(server: tuple[str, int | None] | None) -> dict[str, AttributeValue]:
    if not server or not server[0]:
        return {}
    out: dict[str, AttributeValue] = {SERVER_ADDRESS: server[0]}
    if server[1] is not None:
        out[SERVER_PORT] = server[1]
    return out


class _SendAttributes:
    """The span names and attributes of one destination's publish spans, built once."""

    __slots__ = ("create", "create_name", "send", "send_name")

    def __init__(self, base: Mapping[str, AttributeValue], name: str) -> None:
        self.send_name = f"send {name}"
        self.create_name = f"create {name}"
        self.send: dict[str, AttributeValue] = {
            **base,
            DESTINATION: name,
            OPERATION_TYPE: "send",
            OPERATION_NAME: "send",
        }
        self.create: dict[str, AttributeValue] = {
            **base,
            DESTINATION: name,
            OPERATION_TYPE: "create",
            OPERATION_NAME: "create",
        }


def _message_attributes(
    attributes: dict[str, AttributeValue], message: OutgoingMessage, key_attribute: str | None
) -> dict[str, AttributeValue]:
    attributes[BODY_SIZE] = len(message.body)
    message_id = message.id
    if message_id:
        attributes[MESSAGE_ID] = message_id
    if key_attribute and message.key is not None:
        attributes[key_attribute] = message.key
    return attributes


def tracing_publish_middleware(
    messaging_system: str,
    *,
    service: str | None = None,
    server: tuple[str, int | None] | None = None,
    gate: TracerGate | None = None,
    attributes_for: Callable[[Destination], Mapping[str, AttributeValue]] | None = None,
) -> PublishMiddleware:
    """Publish middleware: a ``send`` PRODUCER span per publish call (plus a ``create`` span
    per message of a batch, linked from the ``send`` span) and the trace context injected
    into each message's headers. ``messaging_system`` is the transport's
    ``messaging.system`` value; ``service``, if given, is put on every span as
    ``messagebus.service``, and ``server`` (host, port) as ``server.address``/``server.port``.
    ``attributes_for`` (a transport's optional ``publish_attributes(destination)``) adds
    transport attributes per destination and may override ``messaging.system`` (SNS topics
    of the SQS transport are ``aws.sns``); it is called once per destination (the result
    is cached). A span the sampler drops gets no error, event or link work: only its
    context is propagated. Errors of the inner publish are recorded and re-raised.
    Thread-safe (the per-destination cache tolerates concurrent fills)."""
    gate = gate or TracerGate()
    key_attribute = KEY_ATTRIBUTES.get(messaging_system)
    common: dict[str, AttributeValue] = {SYSTEM: messaging_system, **_server(server)}
    if service:
        common[SERVICE] = service
    by_destination: dict[Destination, _SendAttributes] = {}

    def attributes_of(destination: Destination) -> _SendAttributes:
        found = by_destination.get(destination)
        if found is None:
            if len(by_destination) >= _MAX_CACHED:  # many short-lived destinations: start over
                by_destination.clear()
            base = {**common, **attributes_for(destination)} if attributes_for else common
            found = by_destination[destination] = _SendAttributes(base, destination.name)
        return found

    def middleware(inner: PublishFn) -> PublishFn:
        def publish(messages: Sequence[OutgoingMessage]) -> Awaitable[None]:
            # No SDK: hand back the inner call itself, so not even a coroutine frame is added.
            if no_tracer_provider():
                return inner(messages)
            tracer = gate.tracer()
            if tracer is None or not messages:
                return inner(messages)
            return traced(messages, tracer)

        async def traced(messages: Sequence[OutgoingMessage], tracer: Tracer) -> None:
            first = messages[0]
            names = attributes_of(first.destination)
            links: list[Link] = []
            if len(messages) == 1:
                attributes = _message_attributes({**names.send}, first, key_attribute)
            else:
                attributes = {**names.send, BATCH_COUNT: len(messages)}
                for message in messages:
                    create = _message_attributes({**names.create}, message, key_attribute)
                    span = tracer.start_span(names.create_name, kind=SpanKind.PRODUCER, attributes=create)
                    if _TRACEPARENT not in message.headers:
                        propagate.inject(message.headers, context=_trace_api.set_span_in_context(span))
                    if span.is_recording():  # a dropped span is not exported: nothing to link to
                        span.end()
                        links.append(Link(span.get_span_context()))
            parent = None
            if _TRACEPARENT in first.headers and not _trace_api.get_current_span().get_span_context().is_valid:
                # Outside any span (a dead-letter copy sent while settling): the send continues
                # the trace the message already carries instead of starting a new one.
                parent = propagate.extract(first.headers)
            send = tracer.start_span(
                names.send_name, context=parent, kind=SpanKind.PRODUCER, attributes=attributes, links=links
            )
            token = otel_context.attach(_trace_api.set_span_in_context(send))
            try:
                if len(messages) == 1:
                    _inject(first)
                await inner(messages)
            except BaseException as error:
                if send.is_recording():
                    _error(send, error)
                raise
            finally:
                otel_context.detach(token)
                send.end()

        return publish

    return middleware


def _settled(span: Span, settlement: Settlement) -> None:
    outcome = settlement.outcome
    if outcome is Outcome.ACK:
        span.add_event("ack")
    elif outcome is Outcome.RETRY:
        retry: dict[str, AttributeValue] = {RETRY_ATTEMPT: settlement.attempt + 1}
        if settlement.delay is not None:
            retry[RETRY_DELAY] = settlement.delay
        if settlement.error is not None:
            retry[ERROR_TYPE] = error_type_name(settlement.error)
        span.add_event("retry", retry)
    elif outcome is Outcome.DEAD_LETTER:
        dead: dict[str, AttributeValue] = {DEAD_LETTER_QUEUE: settlement.dead_letter_queue or ""}
        if settlement.error is not None:
            dead[ERROR_TYPE] = error_type_name(settlement.error)
        span.add_event("dead_letter", dead)
    else:
        span.add_event("unsettled")
    span.end()


class _ProcessAttributes:
    """The span name and per-source attributes of ``process`` spans, built once."""

    __slots__ = ("attributes", "key_attribute", "name")

    def __init__(self, attributes: dict[str, AttributeValue], key_attribute: str | None, name: str) -> None:
        self.attributes = attributes
        self.key_attribute = key_attribute
        self.name = name


def _process_source(
    where: Mapping[str, AttributeValue], system: str, destination: str, group: str | None, service: str | None
) -> _ProcessAttributes:
    attributes: dict[str, AttributeValue] = {
        **where,
        SYSTEM: system,
        DESTINATION: destination,
        OPERATION_TYPE: "process",
        OPERATION_NAME: "process",
    }
    if service:
        attributes[SERVICE] = service
    if group:
        attributes[CONSUMER_GROUP] = group
    return _ProcessAttributes(attributes, KEY_ATTRIBUTES.get(system), f"process {destination}")


def _delivery_attributes(source: _ProcessAttributes, envelope: Envelope) -> dict[str, AttributeValue]:
    attributes = {**source.attributes, BODY_SIZE: len(envelope.body), ATTEMPT: envelope.attempt}
    message_id = envelope.id
    if message_id:
        attributes[MESSAGE_ID] = message_id
    if envelope.key is not None and source.key_attribute:
        attributes[source.key_attribute] = envelope.key
    extra: Mapping[str, AttributeValue] = envelope.messaging_attributes
    if extra:
        attributes.update(extra)
        if message_id and attributes.get(MESSAGE_ID) != message_id:  # the broker's own id won
            attributes[CLOUDEVENTS_ID] = message_id
    return attributes


def process_attributes(
    envelope: Envelope, messaging_system: str | None = None, service: str | None = None
) -> dict[str, AttributeValue]:
    """The semantic-convention attributes of the ``process`` span of ``envelope``: system,
    destination, operation, group, message id, body size, Kafka key, the delivery attempt,
    ``messagebus.service`` if given and the transport's :attr:`Envelope.messaging_attributes`
    (which win over the defaults; when the transport reports the broker's own
    ``messaging.message.id``, the CloudEvents id goes to ``cloudevents.event_id``). Pure."""
    system = messaging_system or envelope.messaging_system
    return _delivery_attributes(_process_source({}, system, envelope.destination, envelope.group, service), envelope)


def tracing_middleware(
    messaging_system: str | None = None,
    *,
    service: str | None = None,
    server: tuple[str, int | None] | None = None,
    gate: TracerGate | None = None,
) -> Middleware:
    """Consume middleware: a ``process <destination>`` CONSUMER span per delivery, the child
    of the trace context in the message headers and current while the rest of the chain and
    the handler run (so what the handler publishes joins the trace). Handler errors set
    ``error.type`` and the ERROR status (a :class:`~messagebus.Nack` is not an error) and are
    re-raised; the settle outcome is added as an event and the span ends after settling.
    A span the sampler drops is only made current (so the decision propagates): no error,
    event or settle work. ``messaging_system`` defaults to :attr:`Envelope.messaging_system`;
    ``service``, if given, is put on the span as ``messagebus.service``, and ``server``
    (host, port) as ``server.address``/``server.port``. The attributes that do not change
    from message to message are built once per (destination, group, system). Thread-safe."""
    gate = gate or TracerGate()
    where = _server(server)
    by_source: dict[tuple[str, str | None, str], _ProcessAttributes] = {}

    def source_of(envelope: Envelope) -> _ProcessAttributes:
        system = messaging_system or envelope.messaging_system
        key = (envelope.destination, envelope.group, system)
        found = by_source.get(key)
        if found is None:
            if len(by_source) >= _MAX_CACHED:
                by_source.clear()
            found = by_source[key] = _process_source(where, system, envelope.destination, envelope.group, service)
        return found

    def middleware(handler: Handler) -> Handler:
        def entry(envelope: Envelope) -> Awaitable[None]:
            # No SDK: hand back the inner call itself, so not even a coroutine frame is added.
            if no_tracer_provider():
                return handler(envelope)
            tracer = gate.tracer()
            if tracer is None:
                return handler(envelope)
            return traced(envelope, tracer)

        async def traced(envelope: Envelope, tracer: Tracer) -> None:
            parent = propagate.extract(envelope.wire_headers)
            source = source_of(envelope)
            span = tracer.start_span(
                source.name, context=parent, kind=SpanKind.CONSUMER, attributes=_delivery_attributes(source, envelope)
            )
            token = otel_context.attach(_trace_api.set_span_in_context(span, parent))
            if not span.is_recording():
                try:
                    await handler(envelope)
                finally:
                    otel_context.detach(token)
                return
            try:
                await handler(envelope)
            except Nack:
                raise
            except BaseException as error:  # a cancelled handler is never settled: redelivered
                _error(span, error)
                raise
            finally:
                otel_context.detach(token)
                if not envelope.on_settled(partial(_settled, span)):
                    span.end()  # no bus settles this envelope: end now

        return entry

    return middleware
