"""What tracing and metrics cost on memory:// end to end (publish -> decode -> handler -> ack).

    python -m benchmarks.bench_tracing            # full: 10k-message runs, 30 paired rounds (~3 min)
    python -m benchmarks.bench_tracing --quick    # smoke run: 4 paired rounds (~30 s)

Configurations (all in one child process, as OpenTelemetry providers can be set only once;
each run of a configuration is paired with an ``off`` run just before or after it):

- ``off``: ``MESSAGEBUS_TELEMETRY=off``, no tracing or metrics middleware (the baseline);
- ``api``: the default (tracing + metrics middleware on) with only ``opentelemetry-api``,
  i.e. no SDK installed: the no-op case, which must stay within 5% of ``off``;
- ``traces``: the SDK tracer provider (``BatchSpanProcessor``, exporter that drops
  everything) but no meter provider: what the spans alone cost;
- ``sdk``: the default with the OpenTelemetry SDK installed: a ``TracerProvider`` with a
  ``BatchSpanProcessor`` feeding an exporter that drops everything, and a ``MeterProvider``
  with an in-memory reader; every span and metric is recorded.

Workloads as in ``bench_memory``: small JSON messages (a pydantic model), one subscriber,
``publish_many`` in batches of 1,000 and ``publish`` one at a time; each figure is the median
rate (messages per CPU second of the process, so that other load on a shared machine counts
less) over the rounds, the cost the median of the paired ratios. The bare consume and
publish chains are also timed with and without the no-op middleware, which isolates its cost.
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
    "traces": "SDK tracer provider only (no-op exporter), no meter provider",
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


def _install_tracer_provider() -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class Drop(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Drop()))
    trace.set_tracer_provider(provider)


def _install_meter_provider() -> None:
    from opentelemetry import metrics
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    metrics.set_meter_provider(MeterProvider(metric_readers=[InMemoryMetricReader()]))


async def _run(workload: str, n: int) -> float:
    """Messages per CPU second of this process (all its threads) for one workload, publish
    to last ack. CPU time, not wall time: the machine may be shared, and other processes'
    load would otherwise swamp a 5% difference."""
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
        start = time.process_time()
        if workload == "publish_many":
            for i in range(0, n, 1000):
                await bus.publish_many("ticks", payloads[i : i + 1000])
        else:
            for p in payloads:
                await bus.publish("ticks", p)
        await done.wait()
        end = time.process_time()
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


#: Each measured configuration and the baseline it is paired with, round by round.
PAIRS = {"off": "off", "api": "off", "traces": "off-traces", "sdk": "off-sdk"}


def child(rounds: int, n: int) -> None:
    """Run every configuration in this process, each round pairing it with a baseline run
    (telemetry off) right before or after it, in alternating order: ``api`` first, then
    ``traces`` once the SDK tracer provider is installed, then ``sdk`` once the SDK meter
    provider is installed too. Prints the samples and the bare-chain overhead as JSON."""
    buckets = ("off", "api", "off-traces", "traces", "off-sdk", "sdk")
    samples: dict[str, dict[str, list[float]]] = {b: {w: [] for w in WORKLOADS} for b in buckets}

    def run(config: str, bucket: str) -> None:
        _set_config(config)
        for workload in WORKLOADS:
            count = n if workload == "publish_many" else n // 2
            if config in ("sdk", "traces"):
                count //= SDK_SHARE  # the SDK is ~30x slower; a rate needs fewer messages
            samples[bucket][workload].append(asyncio.run(_run(workload, count)))

    def paired(config: str) -> None:
        pair = [(config, config), ("off", PAIRS[config])]
        for r in range(rounds):
            for name, bucket in pair if r % 2 == 0 else reversed(pair):
                run(name, bucket)

    for workload in WORKLOADS:  # warm up imports, caches, the allocator
        asyncio.run(_run(workload, max(1000, n // 10)))
    overhead = _chain_overhead()
    paired("api")
    _install_tracer_provider()
    paired("traces")
    _install_meter_provider()
    paired("sdk")
    print(json.dumps({"samples": samples, "overhead_ns": overhead}))


def main(quick: bool, n: int | None, rounds: int | None) -> None:
    command = "python -m benchmarks.bench_tracing" + (" --quick" if quick else "")
    command += f" -n {n}" if n else ""
    command += f" --rounds {rounds}" if rounds else ""
    n = n or 10_000
    rounds = rounds or (4 if quick else 30)
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
        "| workload | configuration | messages per run | msg per CPU s (median) | vs off (paired median) | cost |",
        "|---|---|---:|---:|---:|---:|",
    ]
    summary = []
    for workload, label in WORKLOADS.items():
        count = n if workload == "publish_many" else n // 2
        base = statistics.median(samples["off"][workload])
        added = consume_ns + (publish_ns / 1000 if workload == "publish_many" else publish_ns)
        for config, name in CONFIGS.items():
            rates = samples[config][workload]
            rate = statistics.median(rates)
            shown = count // SDK_SHARE if config in ("sdk", "traces") else count
            ratios = sorted(r / b for r, b in zip(rates, samples[PAIRS[config]][workload], strict=True))
            ratio = statistics.median(ratios)
            cost = (1 - ratio) * 100
            lines.append(f"| {label} | {name} | {shown:,} | {rate:,.0f} | {ratio:.3f}x | {cost:+.1f}% |")
            if config == "api":
                per_message = 1e9 / base
                q1, q3 = ratios[len(ratios) // 4], ratios[(3 * len(ratios)) // 4]
                summary.append(
                    f"{label}: {cost:+.1f}% with the no-op API (budget: at most 5%; the paired ratios' "
                    f"interquartile range, {q1:.3f}x to {q3:.3f}x, shows this machine's noise); the no-op "
                    f"middleware itself adds {added:.0f} ns to the {per_message:,.0f} ns a message takes "
                    f"({added / per_message * 100:.1f}%)"
                )
    text = (
        "## Tracing and metrics cost on memory:// end to end\n\n"
        f"Machine: {machine()}\n\n"
        f"Versions: {versions('messagebus-sdk', 'opentelemetry-api', 'opentelemetry-sdk', 'pydantic')}\n\n"
        f"Command: `{command}`: {rounds} rounds per configuration in one process, each round paired with "
        "a run with telemetry off just before or after it (alternating); the ratio is the median of "
        "the per-round ratios, which cancels most of the drift of a shared machine. The SDK "
        "configurations run after the providers were installed (they can be set only once).\n\n"
        + "\n".join(lines)
        + "\n\n"
        + f"Bare middleware chains with the no-op API (no transport, best of 5): consume +{consume_ns:.0f} ns, "
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
