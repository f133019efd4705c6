"""What tracing and metrics cost on memory:// end to end (publish -> decode -> handler -> ack).

    python -m benchmarks.bench_tracing            # full: 50k-message runs, 8 rounds
    python -m benchmarks.bench_tracing --quick    # smoke run: 20k messages, 4 rounds

Configurations (all in one child process, as OpenTelemetry providers can be set only once:
``off`` and ``api`` rounds interleaved, then the SDK installed for the ``sdk`` rounds, with
``off`` run again between them as a control):

- ``off``: ``MESSAGEBUS_TELEMETRY=off``, no tracing or metrics middleware (the baseline);
- ``api``: the default (tracing + metrics middleware on) with only ``opentelemetry-api``,
  i.e. no SDK installed: the no-op case, which must stay within 5% of ``off``;
- ``sdk``: the default with the OpenTelemetry SDK installed: a ``TracerProvider`` with a
  ``BatchSpanProcessor`` feeding an exporter that drops everything, and a ``MeterProvider``
  with an in-memory reader; every span and metric is recorded.

Workloads as in ``bench_memory``: small JSON messages (a pydantic model), one subscriber,
``publish_many`` in batches of 1,000 and ``publish`` one at a time; each figure is the median
rate over the rounds. The bare consume and publish chains are also timed with and without
the no-op middleware, which isolates its cost from the noise of a shared machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from benchmarks._common import machine, versions, write

CONFIGS = {
    "off": "telemetry off (MESSAGEBUS_TELEMETRY=off)",
    "api": "tracing + metrics on, API only (no SDK)",
    "sdk": "tracing + metrics on, SDK + no-op exporter",
}
SDK_SHARE = 5

WORKLOADS = {
    "publish_many": "publish_many (batches of 1,000)",
    "publish": "publish (one at a time)",
}


class Tick(BaseModel):
    id: int
    name: str
    price: float


def _install_sdk() -> None:
    from opentelemetry import metrics, trace
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class Drop(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Drop()))
    trace.set_tracer_provider(provider)
    metrics.set_meter_provider(MeterProvider(metric_readers=[InMemoryMetricReader()]))


async def _run(workload: str, n: int) -> float:
    """Messages per second for one workload, publish to last ack."""
    from messagebus import Bus

    bus = Bus.from_url(f"memory://bench-{uuid.uuid4().hex}", service="bench")
    done = asyncio.Event()
    count = 0

    @bus.subscribe("ticks")
    async def handle(tick: Tick) -> None:
        nonlocal count
        count += 1
        if count >= n:
            done.set()

    payloads = [Tick(id=i, name="widget", price=9.99) for i in range(n)]
    async with bus:
        start = time.perf_counter()
        if workload == "publish_many":
            for i in range(0, n, 1000):
                await bus.publish_many("ticks", payloads[i : i + 1000])
        else:
            for p in payloads:
                await bus.publish("ticks", p)
        await done.wait()
        end = time.perf_counter()
    return n / (end - start)


def _set_config(config: str) -> None:
    # The default middleware is chosen when a Bus is built, from MESSAGEBUS_TELEMETRY.
    if config == "off":
        os.environ["MESSAGEBUS_TELEMETRY"] = "off"
    else:
        os.environ.pop("MESSAGEBUS_TELEMETRY", None)


def _chain_overhead(loops: int = 200_000) -> tuple[float, float]:
    """Nanoseconds the default consume and publish middleware add per call with the no-op
    API, measured on the bare chains (no transport), best of 5."""
    from messagebus import Destination, DestinationKind, Envelope, OutgoingMessage
    from messagebus._middleware import Handler, PublishFn, compose
    from messagebus.middleware.metrics import metrics_middleware, metrics_publish_middleware
    from messagebus.middleware.tracing import tracing_middleware, tracing_publish_middleware

    async def handler(envelope: Envelope) -> None:
        return None

    async def publish(messages: Sequence[OutgoingMessage]) -> None:
        return None

    envelope = Envelope(b"{}", {"ce-id": "1"}, "ticks", "bench")
    batch = [OutgoingMessage(Destination(DestinationKind.TOPIC, "ticks"), b"{}", {"ce-id": "1"})]
    bare_h: Handler = handler
    bare_p: PublishFn = publish
    wrapped_h = compose(bare_h, (tracing_middleware("memory"), metrics_middleware("memory")))
    wrapped_p = compose(bare_p, (tracing_publish_middleware("memory"), metrics_publish_middleware("memory")))

    async def loop(call: Callable[[Any], Awaitable[None]], arg: object) -> float:
        best = float("inf")
        for _ in range(5):
            start = time.perf_counter()
            for _ in range(loops):
                await call(arg)
            best = min(best, time.perf_counter() - start)
        return best / loops * 1e9

    async def run() -> tuple[float, float]:
        consume = await loop(wrapped_h, envelope) - await loop(bare_h, envelope)
        produce = await loop(wrapped_p, batch) - await loop(bare_p, batch)
        return consume, produce

    return asyncio.run(run())


def child(rounds: int, n: int) -> None:
    """Run every configuration in this process: off and api interleaved for ``rounds``
    rounds, then the SDK is installed and sdk runs (with off again as a control). Prints
    the samples and the bare-chain overhead as JSON."""
    samples: dict[str, dict[str, list[float]]] = {c: {w: [] for w in WORKLOADS} for c in (*CONFIGS, "off-after-sdk")}

    def run(config: str, bucket: str) -> None:
        _set_config(config)
        for workload in WORKLOADS:
            count = n if workload == "publish_many" else n // 2
            if config == "sdk":
                count //= SDK_SHARE  # the SDK is ~30x slower; a rate needs fewer messages
            samples[bucket][workload].append(asyncio.run(_run(workload, count)))

    for workload in WORKLOADS:  # warm up imports, caches, the allocator
        asyncio.run(_run(workload, max(1000, n // 10)))
    overhead = _chain_overhead()
    for r in range(rounds):
        for config in ("off", "api") if r % 2 == 0 else ("api", "off"):
            run(config, config)
    _install_sdk()
    for r in range(rounds):
        for config, bucket in (
            (("off", "off-after-sdk"), ("sdk", "sdk"))
            if r % 2 == 0
            else (
                ("sdk", "sdk"),
                ("off", "off-after-sdk"),
            )
        ):
            run(config, bucket)
    print(json.dumps({"samples": samples, "overhead_ns": overhead}))


def main(quick: bool, n: int | None, rounds: int | None) -> None:
    n = n or (20_000 if quick else 50_000)
    rounds = rounds or (4 if quick else 8)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "MESSAGEBUS_TELEMETRY"))}
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_tracing", "--child", "-n", str(n), "--rounds", str(rounds)],
        cwd=Path(__file__).resolve().parent.parent,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result = json.loads(out.strip().splitlines()[-1])
    samples: dict[str, dict[str, list[float]]] = result["samples"]
    consume_ns, publish_ns = result["overhead_ns"]
    lines = [
        "| workload | configuration | messages | msg/s (median) | vs off | cost |",
        "|---|---|---:|---:|---:|---:|",
    ]
    summary = []
    for workload, label in WORKLOADS.items():
        base = statistics.median(samples["off"][workload])
        count = n if workload == "publish_many" else n // 2
        added = consume_ns + (publish_ns / 1000 if workload == "publish_many" else publish_ns)
        for config, name in CONFIGS.items():
            rate = statistics.median(samples[config][workload])
            shown = count // SDK_SHARE if config == "sdk" else count
            cost = (1 - rate / base) * 100
            lines.append(f"| {label} | {name} | {shown:,} | {rate:,.0f} | {rate / base:.3f}x | {cost:+.1f}% |")
            if config == "api":
                per_message = 1e9 / base
                summary.append(
                    f"{label}: {cost:+.1f}% measured with the no-op API (budget: at most 5%); "
                    f"the no-op middleware itself adds {added:.0f} ns to the "
                    f"{per_message:,.0f} ns a message takes ({added / per_message * 100:.1f}%)"
                )
        control = statistics.median(samples["off-after-sdk"][workload])
        summary.append(f"{label}: control run with telemetry off after the SDK was installed: {control:,.0f} msg/s")
    command = "python -m benchmarks.bench_tracing" + (" --quick" if quick else "")
    text = (
        "## Tracing and metrics cost on memory:// end to end\n\n"
        f"Machine: {machine()}\n\n"
        f"Versions: {versions('messagebus-sdk', 'opentelemetry-api', 'opentelemetry-sdk', 'pydantic')}\n\n"
        f"Command: `{command}` ({rounds} rounds per configuration, off and api interleaved in one process, "
        "then the SDK installed for the sdk rounds; median of the rounds; cost = throughput lost vs off)\n\n"
        + "\n".join(lines)
        + "\n\n"
        + f"Bare middleware chains with the no-op API (no transport): consume +{consume_ns:.0f} ns, "
        + f"publish +{publish_ns:.0f} ns per call.\n\n"
        + "\n".join(f"- {s}" for s in summary)
        + "\n"
    )
    write("tracing" if not quick else "tracing-quick", text)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small, fast run")
    parser.add_argument("-n", type=int, default=None, help="messages per publish_many run (publish: half)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds per configuration")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.rounds or 4, args.n or 20_000)
    else:
        main(args.quick, args.n, args.rounds)
