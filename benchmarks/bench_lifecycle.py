"""Start-up and shutdown per transport: ``bus.start()`` -> first message handled, ``bus.stop()``
with nothing in flight (issue 15: "stop() under 1 s on every transport").

    python -m benchmarks.bench_lifecycle                 # every transport it can reach or start
    python -m benchmarks.bench_lifecycle --quick         # fewer rounds
    python -m benchmarks.bench_lifecycle sqs pubsub      # only some

Each round builds a new bus with one ``subscribe`` on a fresh topic (a new group: the case a
script that publishes right after ``start()`` hits) and times, with default options:

- ``start()``: connect, declare, start the consumer;
- start -> handled: from calling ``start()`` until the handler has the message published the
  moment ``start()`` returned. A message published before the subscription can receive is
  lost or late: this column shows it (a round that times out counts as lost);
- ``stop()``: the consumer idle (its poll or long poll waiting), nothing in flight.

Medians and maxima of the rounds. The brokers: memory in process; RabbitMQ, Redis and NATS
on this machine (127.0.0.1 default ports); SQS/SNS on a moto server and Pub/Sub on Google's
emulator, both started here; Kafka on Tansu, started here.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from benchmarks._common import machine, versions, write
from messagebus import Bus

#: How long a round waits for its message before counting it lost.
WAIT = 30.0


class Figures:
    """The timings of the rounds of one transport, in seconds."""

    def __init__(self) -> None:
        self.start: list[float] = []
        self.handled: list[float] = []
        self.stop: list[float] = []
        self.lost = 0

    def cell(self, values: list[float]) -> str:
        if not values:
            return "-"
        return f"{statistics.median(values) * 1000:,.1f} / {max(values) * 1000:,.1f}"


async def one_round(url: str, figures: Figures) -> None:
    topic = f"life.{uuid.uuid4().hex[:10]}"
    bus = Bus.from_url(url, service="lifecycle")
    handled = asyncio.Event()

    @bus.subscribe(topic)
    async def handle(data: dict[str, Any]) -> None:
        handled.set()

    began = time.perf_counter()
    await bus.start()
    started = time.perf_counter()
    try:
        await bus.publish(topic, {"hello": 1})
        try:
            await asyncio.wait_for(handled.wait(), WAIT)
            figures.handled.append(time.perf_counter() - began)
        except TimeoutError:
            figures.lost += 1
        # Idle: the consumer is back in its (long) poll when stop() is called.
        await asyncio.sleep(0.2)
    finally:
        stopping = time.perf_counter()
        await bus.stop()
        figures.stop.append(time.perf_counter() - stopping)
    figures.start.append(started - began)


@contextlib.contextmanager
def moto() -> Iterator[str]:
    from benchmarks.bench_sqs import start_moto

    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        os.environ.setdefault(name, value)
    proc, endpoint = start_moto()
    try:
        yield f"sqs://?region=us-east-1&endpoint_url={endpoint}&queue_prefix=life-&topic_prefix=life-"
    finally:
        proc.terminate()
        proc.wait(10)


@contextlib.contextmanager
def pubsub() -> Iterator[str]:
    from benchmarks.bench_pubsub import bus_url, start_emulator

    emulator, proc = start_emulator()
    try:
        yield bus_url(emulator)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)


@contextlib.contextmanager
def fixed(url: str) -> Iterator[str]:
    yield url


@contextlib.contextmanager
def kafka() -> Iterator[str]:
    from benchmarks.bench_kafka import tansu

    with tansu() as url:
        yield url + "?idempotence=false"  # Tansu's memory storage has no idempotent producer


BROKERS: dict[str, Callable[[], contextlib.AbstractContextManager[str]]] = {
    "memory": lambda: fixed("memory://lifecycle"),
    "rabbitmq": lambda: fixed("amqp://guest:guest@127.0.0.1:5672/"),
    "sqs": moto,
    "pubsub": pubsub,
    "redis": lambda: fixed("redis://127.0.0.1:6379/0"),
    "nats": lambda: fixed("nats://127.0.0.1:4222"),
    "kafka": kafka,
}


NOTES = [
    "What bounds each figure:",
    "",
    "- stop(): SQS abandons the long poll in flight (boto3 cannot cancel it; before issue 15 a stop",
    "  waited out the 20 s poll) and its poll thread makes whatever that poll still returns visible",
    "  again. Pub/Sub lets a pending pull run out instead of cancelling it (the emulator keeps",
    "  handing messages to a cancelled pull): the pull deadline is 1.5 s and the emulator answers an",
    "  empty pull about 0.94 s before its deadline, so a stop waits up to ~0.6 s there (Pub/Sub itself",
    "  may hold an empty pull up to 1.5 s). Redis unblocks its XREADGROUP, NATS drops its pull",
    "  inbox, RabbitMQ cancels its consumer: none waits for the broker.",
    "- start(): SQS/SNS declares on moto a topic, a queue, its policy and the raw subscription",
    "  (several HTTP calls to moto). Kafka's start() waits for the partition assignment of the",
    "  new group (the Kafka adapter's own work, not part of this change).",
    "- lost: rounds whose message published the moment start() returned was not handled within",
    f"  {WAIT:.0f} s.",
    "- Before issue 15 (same script, 2 rounds, 2026-11-28): SQS stop() 19,831.8 / 19,844.3 ms (the",
    "  20 s long poll waited out), Pub/Sub stop() 857.9 / 865.1 ms (a 2 s pull deadline).",
]


async def measure(name: str, rounds: int) -> Figures:
    figures = Figures()
    with BROKERS[name]() as url:
        for _ in range(rounds + 1):
            await one_round(url, figures)
    # The first round is a warm-up (imports, the broker's first declarations).
    for values in (figures.start, figures.handled, figures.stop):
        if len(values) > rounds:
            del values[0]
    return figures


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("names", nargs="*", default=list(BROKERS))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=None)
    args = parser.parse_args()
    rounds = args.rounds or (3 if args.quick else 10)
    lines = [
        "## Start-up and shutdown (issue 15)",
        "",
        f"Machine: {machine()} (shared with other work while measured).",
        "",
        f"Versions: {versions('messagebus-sdk')}. Command: "
        f"`python -m benchmarks.bench_lifecycle{' --quick' if args.quick else ''}`; "
        f"{rounds} rounds per transport after a warm-up, each a new bus with one subscription "
        "on a new topic, default options. Figures in ms, median / max.",
        "",
        "| transport | start() | start() -> first message handled | stop(), nothing in flight | lost |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in args.names:
        print(f"... {name}", flush=True)
        try:
            figures = asyncio.run(measure(name, rounds))
        except Exception as exc:  # one broker missing must not hide the others' figures
            lines.append(f"| {name} | not measured: {exc!r} | | | |")
            continue
        lines.append(
            f"| {name} | {figures.cell(figures.start)} | {figures.cell(figures.handled)} | "
            f"{figures.cell(figures.stop)} | {figures.lost} |"
        )
    lines += ["", *NOTES]
    write("lifecycle-quick" if args.quick else "lifecycle", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
