"""Google Cloud Pub/Sub: messagebus vs the raw google-cloud-pubsub client, same emulator, one run.

    python -m benchmarks.bench_pubsub                     # starts an emulator on a free port
    python -m benchmarks.bench_pubsub --quick             # smoke run, a few seconds
    python -m benchmarks.bench_pubsub --emulator 127.0.0.1:8085

Workloads (small JSON messages, against Google's Pub/Sub emulator):

- publish_many: N messages handed to the client at once; done when every message id is back.
  Raw = ``PublisherClient.publish`` for each message, then every future's ``result()``, with
  the same batch settings (100 messages / 10 ms). messagebus = ``bus.send_many``.
- consume: a subscription pre-filled with N messages; per message JSON decode, a counting
  handler, ack. Raw = ``SubscriberClient.subscribe`` with a callback (its default flow
  control). Timing starts at the first message handled and ends at the last.

Each contender runs ``--rounds`` times; the table shows the median.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import grpc  # type: ignore[import-untyped]
from google.cloud import pubsub_v1
from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport
from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport

from benchmarks._common import Row, machine, table, versions, write
from messagebus import Bus
from messagebus.testing import free_port, wait_for_port

PROJECT = "messagebus-bench"
# Queue names below are legal Pub/Sub ids, which messagebus-pubsub keeps unchanged, so the
# raw client addresses the same topic and subscription by the same name.
_OPTIONS = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
_SCRIPT = "/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator"


def payload(i: int) -> dict[str, Any]:
    return {"id": i, "name": "widget", "price": 9.99}


def bus_url(emulator: str) -> str:
    return f"pubsub://{PROJECT}?emulator_host={emulator}"


class Count:
    """Counts handled messages; records the first and last handling time."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.n = 0
        self.first = 0.0
        self.last = 0.0
        self.done = threading.Event()
        self.lock = threading.Lock()

    def hit(self) -> None:
        with self.lock:
            now = time.perf_counter()
            if self.n == 0:
                self.first = now
            self.n += 1
            if self.n >= self.target:
                self.last = now
                self.done.set()


async def fill(emulator: str, queue: str, n: int) -> None:
    """Fill ``queue`` (topic + subscription) with ``n`` messages written by messagebus."""
    bus = Bus.from_url(bus_url(emulator), service="bench")
    async with bus:
        for start in range(0, n, 1000):
            await bus.send_many(queue, [payload(i) for i in range(start, min(start + 1000, n))])


def raw_clients(emulator: str) -> tuple[pubsub_v1.PublisherClient, pubsub_v1.SubscriberClient]:
    publisher = pubsub_v1.PublisherClient(
        transport=PublisherGrpcTransport(channel=grpc.insecure_channel(emulator, options=_OPTIONS))
    )
    subscriber = pubsub_v1.SubscriberClient(
        transport=SubscriberGrpcTransport(channel=grpc.insecure_channel(emulator, options=_OPTIONS))
    )
    return publisher, subscriber


async def raw_consume(emulator: str, n: int) -> Row:
    queue = f"bench.raw.{uuid.uuid4().hex[:8]}"
    await fill(emulator, queue, n)
    _, subscriber = raw_clients(emulator)
    count = Count(n)

    def callback(message: Any) -> None:
        json.loads(message.data)
        count.hit()
        message.ack()

    future = subscriber.subscribe(f"projects/{PROJECT}/subscriptions/{queue}", callback)
    await asyncio.to_thread(count.done.wait, 120)
    future.cancel()
    await asyncio.to_thread(future.result, 30)
    subscriber.close()
    return Row("google-cloud-pubsub raw subscribe callback", n, count.last - count.first, "decode + handler + ack")


async def bus_consume(emulator: str, n: int, concurrency: int) -> Row:
    queue = f"bench.bus.{uuid.uuid4().hex[:8]}"
    await fill(emulator, queue, n)
    bus = Bus.from_url(bus_url(emulator), service="bench")
    count = Count(n)
    finished = asyncio.Event()

    @bus.consume(queue, concurrency=concurrency)
    async def handle(data: dict[str, Any]) -> None:
        count.hit()
        if count.n >= n:
            finished.set()

    async with bus:
        await asyncio.wait_for(finished.wait(), 120)
    return Row(f"messagebus consume (concurrency {concurrency})", n, count.last - count.first, "decode + handler + ack")


async def raw_publish_many(emulator: str, n: int) -> Row:
    queue = f"bench.rawpub.{uuid.uuid4().hex[:8]}"
    bus = Bus.from_url(bus_url(emulator), service="bench")
    async with bus:  # declare the same topic + subscription messagebus would
        await bus.send(queue, payload(-1))
    publisher, _ = raw_clients(emulator)
    topic = f"projects/{PROJECT}/topics/{queue}"
    bodies = [json.dumps(payload(i)).encode() for i in range(n)]

    def run() -> float:
        start = time.perf_counter()
        futures = [publisher.publish(topic, body, **{"ce-id": uuid.uuid4().hex}) for body in bodies]
        for future in futures:
            future.result()
        return time.perf_counter() - start

    seconds = await asyncio.to_thread(run)
    publisher.stop()
    return Row("google-cloud-pubsub raw publish + futures", n, seconds, "batches of 100 / 10 ms")


async def bus_publish_many(emulator: str, n: int) -> Row:
    queue = f"bench.buspub.{uuid.uuid4().hex[:8]}"
    bus = Bus.from_url(bus_url(emulator), service="bench")
    items = [payload(i) for i in range(n)]
    async with bus:
        await bus.send(queue, payload(-1))  # declare outside the timing, like the raw run
        start = time.perf_counter()
        await bus.send_many(queue, items)
        seconds = time.perf_counter() - start
    return Row("messagebus send_many", n, seconds, "encode + CloudEvents headers, confirmed")


Runner = Callable[[], Awaitable[Row]]


async def rounds(runner: Runner, count: int) -> Row:
    rows = [await runner() for _ in range(count)]
    rates = [r.rate for r in rows]
    median = statistics.median(rates)
    first = rows[0]
    note = first.note + (
        f"; median of {count} rounds, range {min(rates):,.0f}-{max(rates):,.0f} msg/s" if count > 1 else ""
    )
    return Row(first.name, first.messages, first.messages / median, note)


def start_emulator() -> tuple[str, subprocess.Popen[bytes]]:
    port = free_port()
    if os.path.isfile(_SCRIPT):
        cmd = [_SCRIPT, "--host=127.0.0.1", f"--port={port}"]
    elif shutil.which("gcloud"):
        cmd = ["gcloud", "beta", "emulators", "pubsub", "start", f"--host-port=127.0.0.1:{port}"]
    else:
        raise SystemExit("no Pub/Sub emulator found: install the gcloud emulator or pass --emulator HOST:PORT")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    if not wait_for_port("127.0.0.1", port, timeout=60):
        os.killpg(proc.pid, signal.SIGKILL)
        raise SystemExit("the Pub/Sub emulator did not start within 60 s")
    return f"127.0.0.1:{port}", proc


def ratio(a: Row, b: Row) -> str:
    return f"{b.rate / a.rate:.0%}"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--emulator", help="HOST:PORT of a running emulator (default: start one)")
    parser.add_argument("--quick", action="store_true", help="small counts, one round (smoke test)")
    parser.add_argument("--messages", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=None)
    args = parser.parse_args()
    n = args.messages or (300 if args.quick else 2000)
    count = args.rounds or (1 if args.quick else 3)
    proc = None
    emulator = args.emulator
    if emulator is None:
        emulator, proc = start_emulator()
    try:
        many = [
            await rounds(lambda: raw_publish_many(emulator, n), count),
            await rounds(lambda: bus_publish_many(emulator, n), count),
        ]
        consume = [
            await rounds(lambda: raw_consume(emulator, n), count),
            await rounds(lambda: bus_consume(emulator, n, 1), count),
            await rounds(lambda: bus_consume(emulator, n, 16), count),
        ]
    finally:
        if proc is not None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
    name = "pubsub-quick" if args.quick else "pubsub"
    parts = [
        "## Google Cloud Pub/Sub (messagebus-pubsub vs google-cloud-pubsub)",
        "",
        f"Machine: {machine()} (shared with other workloads while measured)",
        "",
        f"Versions: {versions('messagebus-sdk', 'messagebus-pubsub', 'google-cloud-pubsub', 'grpcio')}; "
        "broker: Google's Pub/Sub emulator 0.8.20 (same JVM for both)",
        "",
        f"Command: `python -m benchmarks.bench_pubsub{' --quick' if args.quick else ''}`",
        "",
        "### publish_many (confirmed)",
        "",
        table(many, many[0].name),
        "",
        f"messagebus send_many reaches {ratio(many[0], many[1])} of the raw client.",
        "",
        "### consume a pre-filled subscription",
        "",
        table(consume, consume[0].name),
        "",
        f"messagebus consume reaches {ratio(consume[0], consume[1])} (concurrency 1) and "
        f"{ratio(consume[0], consume[2])} (concurrency 16) of the raw client.",
        "",
    ]
    write(name, "\n".join(parts))


if __name__ == "__main__":
    asyncio.run(main())
