"""Metrics on memory://: counts and durations with the semantic-convention attributes."""

from collections.abc import Callable, Iterator
from typing import Any

import opentelemetry.metrics._internal as metrics_internal
import pytest

from messagebus import Bus, Envelope, MessageTooLarge, Retry
from messagebus._dead_letter import error_type_name
from messagebus.middleware.metrics import MeterGate
from messagebus.testing import Collector, wait_idle
from messagebus.testing._otel import MetricPoint, TelemetryCapture, capture_telemetry

BusFactory = Callable[..., Bus]


@pytest.fixture
def telemetry() -> Iterator[TelemetryCapture]:
    with capture_telemetry() as capture:
        yield capture


def points(metrics: dict[str, list[MetricPoint]], name: str, **where: Any) -> list[MetricPoint]:
    wanted = {k.replace("__", "."): v for k, v in where.items()}
    return [(a, v) for a, v in metrics.get(name, []) if all(a.get(k) == v for k, v in wanted.items())]


def total(metrics: dict[str, list[MetricPoint]], name: str, **where: Any) -> int:
    """Sum of a counter, or the count of a histogram, over the matching points."""
    return sum(v[0] if isinstance(v, list) else v for _, v in points(metrics, name, **where))


async def test_counts_and_durations_after_n_messages_with_failures(
    bus_factory: BusFactory, telemetry: TelemetryCapture
) -> None:
    n, failing = 10, {2, 5, 7}
    got: Collector[int] = Collector(10)
    consumer = bus_factory("billing", retry=Retry(max_attempts=3, initial_delay=0.0, jitter=0.0))

    @consumer.subscribe("orders.created")
    async def bill(order: dict[str, Any], envelope: Envelope) -> None:
        if order["id"] in failing and envelope.attempt == 1:
            raise ValueError("transient")
        got.add(order["id"])

    producer = bus_factory("orders")
    async with consumer, producer:
        for i in range(n - 4):
            await producer.publish("orders.created", {"id": i})
        await producer.publish_many("orders.created", [{"id": i} for i in range(n - 4, n)])
        await got.wait_for(n)
        await wait_idle(producer)

    m = telemetry.metrics()
    sent = points(m, "messaging.client.sent.messages", messaging__destination__name="orders.created")
    assert sum(v for _, v in sent) == n
    assert {a["messaging.system"] for a, _ in sent} == {"memory"}
    assert {a["messaging.operation.name"] for a, _ in sent} == {"send"}
    assert all("error.type" not in a for a, _ in sent)
    # one operation per publish call: 6 single publishes and one batch
    assert total(m, "messaging.client.operation.duration", messaging__destination__name="orders.created") == n - 3

    consumed = points(m, "messaging.client.consumed.messages", messaging__destination__name="orders.created")
    assert sum(v for _, v in consumed) == n + len(failing)  # every redelivery is consumed again
    assert {a["messaging.consumer.group.name"] for a, _ in consumed} == {"billing"}
    assert {a["messaging.operation.name"] for a, _ in consumed} == {"process"}

    process = "messaging.process.duration"
    assert total(m, process, messaging__destination__name="orders.created") == n + len(failing)
    assert total(m, process, error__type="builtins.ValueError") == len(failing)
    for attributes, (count, seconds) in points(m, process):
        assert count > 0 and seconds >= 0
        assert attributes["messaging.system"] == "memory"


async def test_failed_publish_is_counted_with_its_error_type(
    bus_factory: BusFactory, telemetry: TelemetryCapture
) -> None:
    from messagebus.testing import MemoryBroker

    name = f"metrics-small-{id(telemetry)}"
    producer = bus_factory("orders", url=f"memory://{name}?max_message_size=64")
    try:
        async with producer:
            with pytest.raises(MessageTooLarge):
                await producer.send("big", {"blob": "x" * 200})
            await producer.send("big", {"id": 1})
    finally:
        MemoryBroker.named(name).reset()

    m = telemetry.metrics()
    failed = error_type_name(MessageTooLarge("x"))
    assert total(m, "messaging.client.sent.messages", error__type=failed) == 1
    assert total(m, "messaging.client.operation.duration", error__type=failed) == 1
    ok = [a for a, _ in points(m, "messaging.client.sent.messages") if "error.type" not in a]
    assert ok == [
        {
            "messaging.system": "memory",
            "messaging.destination.name": "big",
            "messaging.operation.name": "send",
            "messaging.operation.type": "send",
        }
    ]


def test_no_sdk_means_no_instruments(monkeypatch: pytest.MonkeyPatch) -> None:
    from opentelemetry.metrics import NoOpMeterProvider

    monkeypatch.setattr(metrics_internal, "_METER_PROVIDER", None)
    assert MeterGate().instruments() is None
    monkeypatch.setattr(metrics_internal, "_METER_PROVIDER", NoOpMeterProvider())
    assert MeterGate().instruments() is None


@pytest.mark.parametrize(
    ("value", "spans", "metrics"),
    [("traces", True, False), ("metrics", False, True), (" Traces , METRICS ", True, True), ("on", True, True)],
)
async def test_the_telemetry_env_var_keeps_only_the_signals_it_names(
    bus_factory: BusFactory,
    telemetry: TelemetryCapture,
    monkeypatch: pytest.MonkeyPatch,
    value: str,
    spans: bool,
    metrics: bool,
) -> None:
    """Bug caught: ``MESSAGEBUS_TELEMETRY=traces`` still paying for metrics (or ``metrics``
    still tracing), so a service could not leave one signal on without the other's cost."""
    monkeypatch.setenv("MESSAGEBUS_TELEMETRY", value)
    got: Collector[int] = Collector(10)
    bus = bus_factory("billing")

    @bus.subscribe("orders.created")
    async def bill(order: dict[str, Any]) -> None:
        got.add(order["id"])

    async with bus:
        await bus.publish("orders.created", {"id": 1})
        await got.wait_for(1)
        await wait_idle(bus)

    names = {s.name for s in telemetry.spans()}
    assert (names == {"send orders.created", "process orders.created"}) is spans, names
    m = telemetry.metrics()
    assert (total(m, "messaging.client.sent.messages") == 1) is metrics
    assert (total(m, "messaging.process.duration") == 1) is metrics


def test_a_telemetry_env_var_it_does_not_understand_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bug caught: a typo such as ``MESSAGEBUS_TELEMETRY=trace`` silently meaning "everything
    on" (or off) instead of an error naming the values allowed."""
    from messagebus import ConfigurationError

    monkeypatch.setenv("MESSAGEBUS_TELEMETRY", "trace")
    with pytest.raises(ConfigurationError, match=r"MESSAGEBUS_TELEMETRY='trace'.*on, off, traces, metrics"):
        Bus.from_url("memory://", service="x")
