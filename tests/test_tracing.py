"""Tracing on memory://: span names, kinds, parent/child, links, attributes, settle events."""

from collections.abc import Callable, Iterator
from typing import Any

import opentelemetry.trace as trace_api
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode

from messagebus import Bus, Envelope, Nack, Reject, Retry
from messagebus._dead_letter import error_type_name
from messagebus._observability import default_consume_middleware, default_publish_middleware
from messagebus.middleware.tracing import TracerGate, tracing_middleware, tracing_publish_middleware
from messagebus.testing import Collector, wait_idle
from messagebus.testing._otel import TelemetryCapture, capture_telemetry, format_trace_tree

BusFactory = Callable[..., Bus]

FAST_RETRY = Retry(max_attempts=3, initial_delay=0.0, jitter=0.0)


@pytest.fixture
def telemetry() -> Iterator[TelemetryCapture]:
    with capture_telemetry() as capture:
        yield capture


def named(spans: list[ReadableSpan], name: str) -> list[ReadableSpan]:
    return sorted((s for s in spans if s.name == name), key=lambda s: s.start_time or 0)


def one(spans: list[ReadableSpan], name: str) -> ReadableSpan:
    found = named(spans, name)
    assert len(found) == 1, f"expected one {name!r} span, got {[s.name for s in spans]}"
    return found[0]


def parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.span_id


def trace_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.trace_id


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def events(span: ReadableSpan) -> dict[str, dict[str, Any]]:
    return {e.name: dict(e.attributes or {}) for e in span.events}


async def test_publish_and_process_spans_are_parent_and_child(
    bus_factory: BusFactory, telemetry: TelemetryCapture
) -> None:
    got: Collector[Envelope] = Collector(10)
    consumer = bus_factory("billing")

    @consumer.subscribe("orders.created")
    async def bill(order: dict[str, Any], envelope: Envelope) -> None:
        got.add(envelope)

    producer = bus_factory("orders")
    async with consumer, producer:
        with trace.get_tracer("test").start_as_current_span("place order") as root:
            await producer.publish("orders.created", {"id": 42}, key="order-42")
        [envelope] = await got.wait_for(1)
        await wait_idle(producer)

    spans = telemetry.spans(root.get_span_context().trace_id)
    send = one(spans, "send orders.created")
    process = one(spans, "process orders.created")
    place = one(spans, "place order")

    assert send.kind is SpanKind.PRODUCER
    assert process.kind is SpanKind.CONSUMER
    assert parent_id(send) == span_id(place)
    assert parent_id(process) == span_id(send)
    assert "traceparent" in envelope.wire_headers
    assert f"{span_id(send):016x}" in envelope.wire_headers["traceparent"]

    assert attrs(send) == {
        "messaging.system": "memory",
        "messaging.destination.name": "orders.created",
        "messaging.operation.type": "send",
        "messaging.operation.name": "send",
        "messaging.message.id": envelope.id,
        "messaging.message.body.size": len(envelope.body),
        "messagebus.service": "orders",
    }
    assert attrs(process) == {
        "messaging.system": "memory",
        "messaging.destination.name": "orders.created",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.consumer.group.name": "billing",
        "messaging.message.id": envelope.id,
        "messaging.message.body.size": len(envelope.body),
        "messagebus.delivery.attempt": 1,
        "messagebus.service": "billing",
    }
    assert "ack" in events(process)
    assert process.status.status_code is StatusCode.UNSET
    assert process.end_time is not None


async def test_publish_from_a_handler_continues_the_trace(bus_factory: BusFactory, telemetry: TelemetryCapture) -> None:
    got: Collector[int] = Collector(10)
    billing = bus_factory("billing")
    shipping = bus_factory("shipping")

    @billing.subscribe("orders.created")
    async def bill(order: dict[str, Any]) -> None:
        await billing.send("shipments", {"id": order["id"]})

    @shipping.consume("shipments")
    async def ship(shipment: dict[str, Any]) -> None:
        got.add(shipment["id"])

    orders = bus_factory("orders")
    async with billing, shipping, orders:
        await orders.publish("orders.created", {"id": 7})
        await got.wait_for(1)
        await wait_idle(orders)

    [tid] = telemetry.trace_ids()
    assert telemetry.trace_id_of(lambda s: s.name == "process shipments") == tid
    assert telemetry.trace_id_of(lambda s: s.name == "no such span") is None
    spans = telemetry.spans(tid)
    first_process = one(spans, "process orders.created")
    send_shipment = one(spans, "send shipments")
    process_shipment = one(spans, "process shipments")
    assert parent_id(send_shipment) == span_id(first_process)
    assert parent_id(process_shipment) == span_id(send_shipment)
    assert "messaging.consumer.group.name" not in attrs(process_shipment)  # a queue has no group


async def test_publish_many_creates_linked_create_spans(bus_factory: BusFactory, telemetry: TelemetryCapture) -> None:
    got: Collector[Envelope] = Collector(10)
    consumer = bus_factory("billing")

    @consumer.subscribe("orders.created")
    async def bill(order: dict[str, Any], envelope: Envelope) -> None:
        got.add(envelope)

    producer = bus_factory("orders")
    async with consumer, producer:
        with trace.get_tracer("test").start_as_current_span("import batch") as root:
            await producer.publish_many("orders.created", [{"id": i} for i in range(3)])
        await got.wait_for(3)
        await wait_idle(producer)

    spans = telemetry.spans(root.get_span_context().trace_id)
    send = one(spans, "send orders.created")
    creates = named(spans, "create orders.created")
    processes = named(spans, "process orders.created")
    assert len(creates) == 3 and len(processes) == 3
    assert send.kind is SpanKind.PRODUCER
    assert all(c.kind is SpanKind.PRODUCER for c in creates)
    assert attrs(send)["messaging.batch.message_count"] == 3
    assert attrs(send)["messaging.operation.type"] == "send"
    assert "messaging.message.id" not in attrs(send)
    assert {attrs(c)["messaging.operation.type"] for c in creates} == {"create"}
    root_id = span_id(one(spans, "import batch"))
    assert parent_id(send) == root_id
    assert all(parent_id(c) == root_id for c in creates)
    assert {link.context.span_id for link in send.links} == {span_id(c) for c in creates}
    # Each message carries its own create span's context; its process span is that span's child.
    by_message = {attrs(c)["messaging.message.id"]: span_id(c) for c in creates}
    for process in processes:
        assert parent_id(process) == by_message[attrs(process)["messaging.message.id"]]
    assert {e.id for e in got.items} == set(by_message)


async def test_retry_then_success_records_events_on_each_attempt(
    bus_factory: BusFactory, telemetry: TelemetryCapture
) -> None:
    got: Collector[int] = Collector(10)
    consumer = bus_factory("billing", retry=FAST_RETRY)

    @consumer.subscribe("orders.created")
    async def bill(order: dict[str, Any], envelope: Envelope) -> None:
        if envelope.attempt < 3:
            raise ValueError("card declined")
        got.add(envelope.attempt)

    producer = bus_factory("orders")
    async with consumer, producer:
        await producer.publish("orders.created", {"id": 1})
        await got.wait_for(1)
        await wait_idle(producer)

    [tid] = telemetry.trace_ids()
    spans = telemetry.spans(tid)
    send = one(spans, "send orders.created")
    attempts = named(spans, "process orders.created")
    assert [attrs(s)["messagebus.delivery.attempt"] for s in attempts] == [1, 2, 3]
    assert all(parent_id(s) == span_id(send) for s in attempts), "retries stay children of the send span"
    for number, failed in enumerate(attempts[:2], start=1):
        assert failed.status.status_code is StatusCode.ERROR
        assert attrs(failed)["error.type"] == "builtins.ValueError"
        retry = events(failed)["retry"]
        assert retry["messagebus.retry.attempt"] == number + 1
        assert retry["messagebus.retry.delay"] == 0.0
        assert retry["error.type"] == "builtins.ValueError"
        assert "exception" in events(failed)
    assert attempts[2].status.status_code is StatusCode.UNSET
    assert "ack" in events(attempts[2])


async def test_dead_letter_event_and_the_dead_letter_hop_keeps_the_trace(
    bus_factory: BusFactory, telemetry: TelemetryCapture
) -> None:
    dead: Collector[Envelope] = Collector(10)
    consumer = bus_factory("billing", retry=Retry(max_attempts=2, initial_delay=0.0, jitter=0.0))

    @consumer.subscribe("orders.created")
    async def bill(order: dict[str, Any]) -> None:
        raise ValueError("always fails")

    @consumer.consume("orders.created.billing.dlq")
    async def inspect(order: dict[str, Any], envelope: Envelope) -> None:
        dead.add(envelope)

    producer = bus_factory("orders")
    async with consumer, producer:
        await producer.publish("orders.created", {"id": 1})
        await dead.wait_for(1)
        await wait_idle(producer)

    [tid] = telemetry.trace_ids()
    spans = telemetry.spans(tid)
    send = one(spans, "send orders.created")
    first, last = named(spans, "process orders.created")
    assert "retry" in events(first)
    dead_letter = events(last)["dead_letter"]
    assert dead_letter["messagebus.dead_letter.queue"] == "orders.created.billing.dlq"
    assert dead_letter["error.type"] == "builtins.ValueError"
    assert last.status.status_code is StatusCode.ERROR
    dlq = one(spans, "process orders.created.billing.dlq")
    assert parent_id(dlq) == span_id(send)
    assert "ack" in events(dlq)
    # Bug caught: the dead-letter copy bypassed the publish middleware (no send span, no metric).
    dlq_send = one(spans, "send orders.created.billing.dlq")
    assert parent_id(dlq_send) == span_id(send)  # continues the message's trace


async def test_reject_is_dead_lettered_and_nack_is_not_an_error(
    bus_factory: BusFactory, telemetry: TelemetryCapture
) -> None:
    done: Collector[str] = Collector(10)
    consumer = bus_factory("billing")

    @consumer.consume("rejects")
    async def reject(item: dict[str, Any]) -> None:
        done.add("reject")
        raise Reject("bad order")

    @consumer.consume("nacks")
    async def nack(item: dict[str, Any], envelope: Envelope) -> None:
        if envelope.attempt == 1:
            raise Nack(delay=0.0)
        done.add("nack")

    producer = bus_factory("orders")
    async with consumer, producer:
        await producer.send("rejects", {"id": 1})
        await producer.send("nacks", {"id": 2})
        await done.wait_for(2)
        await wait_idle(producer)

    spans = telemetry.spans()
    rejected = one(spans, "process rejects")
    assert rejected.status.status_code is StatusCode.ERROR
    assert attrs(rejected)["error.type"] == error_type_name(Reject("x"))
    assert events(rejected)["dead_letter"]["messagebus.dead_letter.queue"] == "rejects.dlq"
    first, second = named(spans, "process nacks")
    assert first.status.status_code is StatusCode.UNSET
    assert "error.type" not in attrs(first)
    assert events(first)["retry"]["messagebus.retry.attempt"] == 2
    assert "ack" in events(second)


async def test_raising_handler_called_directly_still_ends_its_span(telemetry: TelemetryCapture) -> None:
    handled = tracing_middleware("kafka")

    async def handler(envelope: Envelope) -> None:
        raise KeyError("missing")

    envelope = Envelope(
        b"{}",
        {"ce-id": "m-1"},
        "payments",
        "ledger",
        key="acct-9",
        attempt=2,
        messaging_system="kafka",
        messaging_attributes={"messaging.destination.partition.id": "3", "messaging.kafka.offset": 17},
    )
    with pytest.raises(KeyError):
        await handled(handler)(envelope)

    span = one(telemetry.spans(), "process payments")
    assert span.end_time is not None, "no settler here, so the middleware ends the span itself"
    assert span.status.status_code is StatusCode.ERROR
    a = attrs(span)
    assert a["error.type"] == "builtins.KeyError"
    assert a["messaging.system"] == "kafka"
    assert a["messaging.kafka.message.key"] == "acct-9"
    assert a["messaging.destination.partition.id"] == "3"
    assert a["messaging.kafka.offset"] == 17
    assert a["messagebus.delivery.attempt"] == 2
    assert a["messaging.message.id"] == "m-1"


async def test_publish_error_ends_the_send_span_with_the_error(telemetry: TelemetryCapture) -> None:
    from messagebus import Destination, DestinationKind, OutgoingMessage, PublishError

    async def broken(messages: Any) -> None:
        raise PublishError("broker said no")

    publish = tracing_publish_middleware("kafka", service="orders")(broken)
    message = OutgoingMessage(Destination(DestinationKind.TOPIC, "orders"), b"{}", {"ce-id": "x"}, key="k")
    with pytest.raises(PublishError):
        await publish([message])
    span = one(telemetry.spans(), "send orders")
    assert span.status.status_code is StatusCode.ERROR
    assert attrs(span)["error.type"] == error_type_name(PublishError("x"))
    assert attrs(span)["messaging.kafka.message.key"] == "k"
    assert "traceparent" in message.headers


async def test_an_explicit_traceparent_header_is_kept(bus_factory: BusFactory, telemetry: TelemetryCapture) -> None:
    given = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    got: Collector[Envelope] = Collector(10)
    consumer = bus_factory("billing")

    @consumer.subscribe("relayed")
    async def handle(item: dict[str, Any], envelope: Envelope) -> None:
        got.add(envelope)

    producer = bus_factory("orders")
    async with consumer, producer:
        await producer.publish("relayed", {"id": 1}, headers={"traceparent": given})
        [envelope] = await got.wait_for(1)
        await wait_idle(producer)
    assert envelope.headers["traceparent"] == given
    process = one(telemetry.spans(), "process relayed")
    assert trace_id(process) == 0x0AF7651916CD43DD8448EB211C80319C
    assert parent_id(process) == 0xB7AD6B7169203331


def test_trace_tree_printer_renders_the_hierarchy() -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("place order"):
        with tracer.start_as_current_span(
            "send orders", kind=SpanKind.PRODUCER, attributes={"messagebus.service": "o"}
        ):
            pass
        with tracer.start_as_current_span(
            "process orders",
            kind=SpanKind.CONSUMER,
            attributes={"messagebus.service": "b", "messagebus.delivery.attempt": 2},
        ) as span:
            span.add_event("retry", {"messagebus.retry.delay": 0.5, "messagebus.retry.attempt": 3})
    text = format_trace_tree(exporter.get_finished_spans())
    lines = text.splitlines()
    assert lines[0].startswith("trace ")
    assert lines[1].startswith("└─ place order  [internal]")
    assert lines[2].startswith("   ├─ send orders  [producer]  (o)")
    assert lines[3].startswith("   └─ process orders  [consumer]  (b)  attempt 2")
    assert "-> retry(delay=0.5, next attempt=3)" in lines[3]


# -- zero cost and turning it off --------------------------------------------------------------


def test_no_sdk_means_no_tracer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trace_api, "_TRACER_PROVIDER", None)
    assert TracerGate().tracer() is None
    monkeypatch.setattr(trace_api, "_TRACER_PROVIDER", trace_api.NoOpTracerProvider())
    assert TracerGate().tracer() is None


async def test_without_an_sdk_nothing_is_touched(monkeypatch: pytest.MonkeyPatch) -> None:
    from messagebus import Destination, DestinationKind, OutgoingMessage

    monkeypatch.setattr(trace_api, "_TRACER_PROVIDER", None)
    sent: list[dict[str, str]] = []

    async def inner(messages: Any) -> None:
        sent.extend(m.headers for m in messages)

    publish = tracing_publish_middleware("memory")(inner)
    await publish([OutgoingMessage(Destination(DestinationKind.QUEUE, "q"), b"{}", {"ce-id": "1"})])
    assert sent == [{"ce-id": "1"}]


def test_telemetry_env_var_turns_the_default_middleware_off(monkeypatch: pytest.MonkeyPatch) -> None:
    assert len(default_consume_middleware("memory", service="x", server=None)) == 1  # one bypass for both
    assert len(default_publish_middleware("memory", service="x", server=None)) == 2
    monkeypatch.setenv("MESSAGEBUS_TELEMETRY", "off")
    assert default_consume_middleware("memory", service="x", server=None) == ()
    assert default_publish_middleware("memory", service="x", server=None) == ()
    bus = Bus.from_url("memory://", service="x")  # and a bus built now has none
    assert bus._middleware == ()


async def test_system_specific_key_and_server_attributes(telemetry: TelemetryCapture) -> None:
    from messagebus import Destination, DestinationKind, OutgoingMessage

    async def handler(envelope: Envelope) -> None:
        return None

    async def sent(messages: Any) -> None:
        return None

    envelope = Envelope(
        b"{}",
        {"ce-id": "m"},
        "payments",
        "ledger",
        key="acct-1",
        messaging_system="gcp_pubsub",
        messaging_attributes={"messaging.message.id": "ps-1"},
    )
    await tracing_middleware(server=("pubsub.local", 8085))(handler)(envelope)
    message = OutgoingMessage(Destination(DestinationKind.TOPIC, "payments"), b"{}", {"ce-id": "m"}, key="acct-1")
    await tracing_publish_middleware("gcp_pubsub", server=("pubsub.local", None))(sent)([message])

    process = attrs(one(telemetry.spans(), "process payments"))
    send = attrs(one(telemetry.spans(), "send payments"))
    for a in (process, send):
        assert a["messaging.system"] == "gcp_pubsub"
        assert a["messaging.gcp_pubsub.message.ordering_key"] == "acct-1"
        assert a["server.address"] == "pubsub.local"
        assert "messaging.kafka.message.key" not in a
    assert process["server.port"] == 8085
    assert process["messaging.message.id"] == "ps-1", "the broker's own message id wins"
    assert process["cloudevents.event_id"] == "m"
    assert send["messaging.message.id"] == "m"
    assert "server.port" not in send


async def test_handler_cancelled_at_stop_ends_its_span_unsettled(
    bus_factory: BusFactory, telemetry: TelemetryCapture
) -> None:
    import asyncio

    started: Collector[int] = Collector(10)
    never = asyncio.Event()
    consumer = bus_factory("billing")

    @consumer.consume("slow")
    async def hang(item: dict[str, Any]) -> None:
        started.add(1)
        await never.wait()

    await consumer.start()
    await consumer.send("slow", {"id": 1})
    await started.wait_for(1)
    await consumer.stop(grace=0.01)  # the grace runs out: the handler is cancelled, never acked

    span = one(telemetry.spans(), "process slow")
    assert span.end_time is not None
    assert span.status.status_code is StatusCode.ERROR
    assert attrs(span)["error.type"] == "asyncio.exceptions.CancelledError"
    assert "unsettled" in events(span)


# -- work only when sampled, attributes once per destination, nothing dropped ------------------


async def test_a_span_the_sampler_drops_gets_no_settle_work_but_still_propagates(
    bus_factory: BusFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bug caught: the process middleware registering a settle callback (and building events)
    for spans the sampler dropped, so unsampled messages paid for tracing; or it not making
    the dropped context current, so what the handler publishes started a new, sampled trace
    instead of carrying the unsampled decision on."""
    from messagebus.testing._otel import install_telemetry

    capture = install_telemetry()
    capture.clear()  # not recording: the capture's sampler drops every span
    registered: list[object] = []
    original = Envelope.on_settled

    def counting(self: Envelope, observer: Any) -> bool:
        registered.append(observer)
        return original(self, observer)

    monkeypatch.setattr(Envelope, "on_settled", counting)
    got: Collector[Envelope] = Collector(10)
    billing = bus_factory("billing")

    @billing.subscribe("orders.created")
    async def bill(order: dict[str, Any], envelope: Envelope) -> None:
        got.add(envelope)
        await billing.send("invoices", order)

    @billing.consume("invoices")
    async def invoice(order: dict[str, Any], envelope: Envelope) -> None:
        got.add(envelope)

    async with billing:
        await billing.publish("orders.created", {"id": 1})
        first, second = await got.wait_for(2)
        await wait_idle(billing)

    assert capture.spans() == []
    assert registered == [], "no settle callback for a dropped span"
    _, trace_id, _, flags = first.wire_headers["traceparent"].split("-")
    _, second_trace_id, _, second_flags = second.wire_headers["traceparent"].split("-")
    assert second_trace_id == trace_id, "the handler's publish continues the (unsampled) trace"
    assert int(flags, 16) & 1 == 0 and int(second_flags, 16) & 1 == 0, "and carries the unsampled decision"


async def test_publish_attributes_are_built_once_per_destination(telemetry: TelemetryCapture) -> None:
    """Bug caught: the transport's publish attributes (and the span's fixed attributes) built
    again on every publish call instead of once per destination."""
    from messagebus import Destination, DestinationKind, OutgoingMessage

    asked: list[Destination] = []

    def attributes_for(destination: Destination) -> dict[str, str]:
        asked.append(destination)
        return {"messaging.system": "aws.sns"} if destination.kind is DestinationKind.TOPIC else {}

    async def sent(messages: Any) -> None:
        return None

    publish = tracing_publish_middleware("aws_sqs", attributes_for=attributes_for)(sent)
    topic = Destination(DestinationKind.TOPIC, "orders")
    queue = Destination(DestinationKind.QUEUE, "orders")
    for i in range(5):
        for destination in (topic, queue):
            await publish([OutgoingMessage(destination, b"{}", {"ce-id": f"{destination.kind}-{i}"})])
    await publish([OutgoingMessage(topic, b"{}", {"ce-id": f"b-{i}"}) for i in range(3)])

    assert asked == [topic, queue]
    spans = telemetry.spans()
    single = [attrs(s) for s in spans if s.name == "send orders" and "messaging.message.id" in attrs(s)]
    systems = {a["messaging.message.id"]: a["messaging.system"] for a in single}
    assert systems == {**{f"topic-{i}": "aws.sns" for i in range(5)}, **{f"queue-{i}": "aws_sqs" for i in range(5)}}
    assert {attrs(c)["messaging.message.id"] for c in named(spans, "create orders")} == {"b-0", "b-1", "b-2"}


_BURST_SCRIPT = r"""
import asyncio, collections, json, logging, sys, threading, uuid
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

class Counting(SpanExporter):
    def __init__(self):
        self.ids = collections.Counter()
        self.names = collections.Counter()
        self.lock = threading.Lock()

    def export(self, spans):
        with self.lock:
            for span in spans:
                self.ids[span.context.span_id] += 1
                self.names[span.name] += 1
        return SpanExportResult.SUCCESS

warnings = []
class Warnings(logging.Handler):
    def emit(self, record):
        warnings.append(record.getMessage())
logging.getLogger("opentelemetry").addHandler(Warnings(logging.WARNING))

exporter = Counting()
provider = TracerProvider()
provider.add_span_processor(BatchSpanProcessor(exporter))  # the SDK's default settings
trace.set_tracer_provider(provider)

from messagebus import Bus

N = int(sys.argv[1])

async def phase(bus, seen, batch):
    done = asyncio.Event()
    start = len(seen)
    bus.__dict__.setdefault("_burst_waiters", []).append((start + N, done))
    if batch:
        await bus.publish_many("ticks", [{"id": start + i} for i in range(N)])
    else:
        for i in range(N):
            await bus.publish("ticks", {"id": start + i})
    await asyncio.wait_for(done.wait(), 120)

async def main():
    bus = Bus.from_url(f"memory://burst-{uuid.uuid4().hex}", service="burst")
    seen = collections.Counter()

    @bus.subscribe("ticks")
    async def handle(tick: dict) -> None:
        seen[tick["id"]] += 1
        for target, done in bus.__dict__.get("_burst_waiters", []):
            if len(seen) >= target:
                done.set()

    out = {}
    async with bus:
        for name, batch in (("single", False), ("batch", True)):
            await phase(bus, seen, batch)
            # Each phase stays under the processor's queue (2,048 spans): what is checked is
            # that every span is ended and exported exactly once, not how fast the SDK drains.
            await asyncio.to_thread(provider.force_flush)
    provider.force_flush()
    out["handled"] = dict(collections.Counter(seen.values()))
    out["names"] = dict(exporter.names)
    out["duplicated"] = sum(1 for c in exporter.ids.values() if c > 1)
    out["warnings"] = warnings
    print(json.dumps(out))

asyncio.run(main())
"""


def test_no_span_lost_or_duplicated_through_the_default_batch_processor() -> None:
    """Bug caught: a span never ended (a settle path that forgets ``end``), ended twice, or
    spans nobody asked for, counted at a real SDK ``BatchSpanProcessor`` with its default
    settings and a counting exporter, in a fresh process (the global provider is set once)."""
    import json
    import subprocess
    import sys

    n = 900  # per phase: about 2n spans, under the default queue of 2,048
    result = subprocess.run(
        [sys.executable, "-c", _BURST_SCRIPT, str(n)], capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["handled"] == {"1": 2 * n}, "every message handled once"
    assert out["names"] == {"send ticks": n + 1, "create ticks": n, "process ticks": 2 * n}
    assert out["duplicated"] == 0
    assert out["warnings"] == [], "the SDK dropped or refused spans"


async def test_the_sampler_sees_the_attributes_and_send_links_only_sampled_creates(
    telemetry: TelemetryCapture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bug caught: attributes set only after the span started (a sampler deciding on
    ``messaging.destination.name`` or the operation sees nothing), a ``send`` span linking to
    ``create`` spans that were never recorded, or the ``process`` attributes that do not
    change per message built again for every delivery."""
    from collections.abc import Sequence

    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
    from opentelemetry.trace import Link, Tracer
    from opentelemetry.trace.span import TraceState
    from opentelemetry.util.types import Attributes

    import messagebus.middleware.tracing as tracing_module
    from messagebus import Destination, DestinationKind, OutgoingMessage

    seen: list[tuple[str, dict[str, Any]]] = []

    class OddCreatesDropped(Sampler):
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
            given = dict(attributes or {})
            seen.append((name, given))
            if name.startswith("create") and str(given.get("messaging.message.id", "")).endswith(("1", "3")):
                return SamplingResult(Decision.DROP)
            return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes)

        def get_description(self) -> str:
            return "odd creates dropped"

    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=OddCreatesDropped())
    provider.add_span_processor(SimpleSpanProcessor(exporter))

    class Private(TracerGate):
        def tracer(self) -> Tracer | None:
            return provider.get_tracer("test")

    built: list[str] = []
    original = tracing_module._process_source

    def counting(*args: Any) -> Any:
        built.append(args[2])
        return original(*args)

    monkeypatch.setattr(tracing_module, "_process_source", counting)

    async def sent(messages: Any) -> None:
        return None

    async def handler(envelope: Envelope) -> None:
        return None

    publish = tracing_publish_middleware("memory", gate=Private())(sent)
    topic = Destination(DestinationKind.TOPIC, "orders")
    await publish([OutgoingMessage(topic, b"{}", {"ce-id": f"m-{i}"}) for i in range(4)])
    handle = tracing_middleware("memory", gate=Private())(handler)
    for i in range(3):
        await handle(Envelope(b"{}", {"ce-id": f"p-{i}"}, "orders", "billing"))

    by_name = {name: attributes for name, attributes in seen}
    assert by_name["send orders"]["messaging.destination.name"] == "orders"
    assert by_name["send orders"]["messaging.batch.message_count"] == 4
    assert by_name["create orders"]["messaging.operation.type"] == "create"
    assert by_name["process orders"]["messaging.consumer.group.name"] == "billing"
    spans = exporter.get_finished_spans()
    creates = {span_id(s) for s in spans if s.name == "create orders"}
    assert len(creates) == 2, "m-1 and m-3 were dropped"
    [send] = [s for s in spans if s.name == "send orders"]
    assert {link.context.span_id for link in send.links} == creates
    assert built == ["orders"], "the per-source attributes are built once"
    assert len([s for s in spans if s.name == "process orders"]) == 3
