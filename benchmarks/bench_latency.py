"""One message in flight: publish -> handler latency, messagebus vs the raw client, one run.

    python -m benchmarks.bench_latency            # every transport: RabbitMQ, Redis, NATS on the
                                                  # machine's servers; Tansu, moto, the emulator here
    python -m benchmarks.bench_latency --quick    # a few hundred messages each
    python -m benchmarks.bench_latency kafka      # only some

Each sample: take the time, publish one confirmed message, wait until the handler has it,
take the time again; the handler acks (or commits) after it ran, so the next sample starts on
a settled consumer. Both sides have the same guarantees and default options: messagebus
``bus.send`` + ``bus.consume`` (ack after the handler); raw aio-pika ``publish`` with
publisher confirms + a consumer that acks after the handler; raw aiokafka ``send_and_wait``
(acks=all) + ``getone`` + ``commit``. The first 20 samples of each are a warm-up.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from benchmarks._common import latency_ms, machine, versions, write
from messagebus import Bus

Sample = Callable[[], Awaitable[None]]
WARMUP = 20


async def measure(n: int, one: Sample) -> tuple[float, float]:
    samples: list[float] = []
    for i in range(n + WARMUP):
        start = time.perf_counter()
        await one()
        if i >= WARMUP:
            samples.append(time.perf_counter() - start)
    return latency_ms(samples)


async def bus_latency(url: str, n: int) -> tuple[float, float]:
    """messagebus: ``bus.send`` one message, the handler sets an event."""
    queue = f"lat.{uuid.uuid4().hex[:8]}"
    bus = Bus.from_url(url, service="latency")
    arrived: asyncio.Queue[int] = asyncio.Queue()

    @bus.consume(queue)
    async def handle(data: dict[str, Any]) -> None:
        arrived.put_nowait(data["i"])

    counter = iter(range(1 << 30))

    async def one() -> None:
        i = next(counter)
        await bus.send(queue, {"i": i})
        while await asyncio.wait_for(arrived.get(), 30) != i:
            pass

    async with bus:
        return await measure(n, one)


async def raw_rabbitmq(url: str, n: int) -> tuple[float, float]:
    import aio_pika

    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        await channel.set_qos(prefetch_count=1)
        queue = await channel.declare_queue(f"lat.raw.{uuid.uuid4().hex[:8]}", durable=True, auto_delete=True)
        arrived: asyncio.Queue[bytes] = asyncio.Queue()

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            arrived.put_nowait(message.body)
            await message.ack()

        await queue.consume(on_message)
        counter = iter(range(1 << 30))

        async def one() -> None:
            body = str(next(counter)).encode()
            await channel.default_exchange.publish(
                aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT), routing_key=queue.name
            )
            while await asyncio.wait_for(arrived.get(), 30) != body:
                pass

        return await measure(n, one)
    finally:
        await connection.close()


async def raw_kafka(url: str, n: int, *, loop: bool = False) -> tuple[float, float]:
    """``loop=False``: ``send_and_wait``, then ``getone`` and an awaited ``commit`` in the same
    task. ``loop=True``: the shape of a service (and of messagebus): a consumer task runs a
    ``getmany`` loop and commits in the background after the handler, while another task
    publishes."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    servers = url.split("://", 1)[1].split("?", 1)[0]
    topic = f"lat.raw.{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=servers)
    await admin.start()
    await admin.create_topics([NewTopic(topic, 1, 1)])
    await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=servers, acks="all")
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=servers, group_id=topic, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await producer.start()
    await consumer.start()
    try:
        counter = iter(range(1 << 30))
        arrived: asyncio.Queue[bytes | None] = asyncio.Queue()
        commits: set[asyncio.Task[None]] = set()

        async def consume() -> None:
            while True:
                batch = await consumer.getmany(timeout_ms=500)
                for tp, records in batch.items():
                    for record in records:
                        arrived.put_nowait(record.value)
                    task = asyncio.ensure_future(consumer.commit({tp: records[-1].offset + 1}))
                    commits.add(task)
                    task.add_done_callback(commits.discard)

        async def one() -> None:
            body = str(next(counter)).encode()
            await producer.send_and_wait(topic, body)
            if loop:
                while await asyncio.wait_for(arrived.get(), 30) != body:
                    pass
                return
            while True:
                record = await asyncio.wait_for(consumer.getone(), 30)
                await consumer.commit()
                if record.value == body:
                    return

        consuming = asyncio.ensure_future(consume()) if loop else None
        try:
            return await measure(n, one)
        finally:
            if consuming is not None:
                consuming.cancel()
                await asyncio.gather(consuming, *commits, return_exceptions=True)
    finally:
        await consumer.stop()
        await producer.stop()


async def raw_sqs(endpoint: str, n: int) -> tuple[float, float]:
    """boto3 in threads, as messagebus does: SendMessage, a ReceiveMessage long-poll loop
    (20 s, the SQS maximum, like messagebus's default), DeleteMessage after the handler."""
    from benchmarks.bench_sqs import raw_clients

    sqs, _ = raw_clients(endpoint)
    queue_url = sqs.create_queue(QueueName=f"lat-raw-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    arrived: asyncio.Queue[str] = asyncio.Queue()
    stop = asyncio.Event()

    async def consume() -> None:
        while not stop.is_set():
            reply = await asyncio.to_thread(
                sqs.receive_message, QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1
            )
            for message in reply.get("Messages", []):
                arrived.put_nowait(message["Body"])
                await asyncio.to_thread(sqs.delete_message, QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])

    counter = iter(range(1 << 30))

    async def one() -> None:
        body = str(next(counter))
        await asyncio.to_thread(sqs.send_message, QueueUrl=queue_url, MessageBody=body)
        while await asyncio.wait_for(arrived.get(), 30) != body:
            pass

    task = asyncio.ensure_future(consume())
    try:
        return await measure(n, one)
    finally:
        stop.set()
        await task


async def raw_pubsub(emulator: str, n: int) -> tuple[float, float]:
    """google-cloud-pubsub: ``publish().result()`` (confirmed) and a streaming-pull
    subscriber whose callback acks after the handler."""
    from benchmarks.bench_pubsub import PROJECT, raw_clients

    publisher, subscriber = raw_clients(emulator)
    name = f"lat-raw-{uuid.uuid4().hex[:8]}"
    topic = publisher.topic_path(PROJECT, name)
    subscription = subscriber.subscription_path(PROJECT, name)
    publisher.create_topic(name=topic)
    subscriber.create_subscription(name=subscription, topic=topic)
    loop = asyncio.get_running_loop()
    arrived: asyncio.Queue[bytes] = asyncio.Queue()

    def callback(message: Any) -> None:
        loop.call_soon_threadsafe(arrived.put_nowait, message.data)
        message.ack()

    future = subscriber.subscribe(subscription, callback)
    counter = iter(range(1 << 30))

    async def one() -> None:
        body = str(next(counter)).encode()
        await asyncio.to_thread(lambda: publisher.publish(topic, body).result())
        while await asyncio.wait_for(arrived.get(), 30) != body:
            pass

    try:
        return await measure(n, one)
    finally:
        future.cancel()
        await asyncio.to_thread(future.result)


def row(name: str, figures: tuple[float, float], raw: tuple[float, float] | None) -> str:
    p50, p99 = figures
    if raw is None:
        return f"| {name} | {p50:.3f} | {p99:.3f} | | |"
    return f"| {name} | {p50:.3f} | {p99:.3f} | {p50 / raw[0]:.2f}x | {p99 / raw[1]:.2f}x |"


async def run(names: list[str], n: int) -> str:
    lines = [
        "| contender | p50 ms | p99 ms | p50 vs raw | p99 vs raw |",
        "|---|---:|---:|---:|---:|",
    ]
    if "memory" in names:
        lines.append(row("messagebus memory://", await bus_latency("memory://latency", n), None))
    if "rabbitmq" in names:
        url = "amqp://guest:guest@127.0.0.1:5672/"
        raw = await raw_rabbitmq(url, n)
        lines.append(row("raw aio-pika (confirm, ack after handler)", raw, None))
        lines.append(row("messagebus amqp://", await bus_latency(url, n), raw))
    if "kafka" in names:
        from benchmarks.bench_kafka import tansu

        with tansu() as url:
            raw = await raw_kafka(url, n)
            lines.append(row("raw aiokafka (send_and_wait, getone, awaited commit)", raw, None))
            raw_loop = await raw_kafka(url, n, loop=True)
            lines.append(row("raw aiokafka (consumer task: getmany loop, commit after handler)", raw_loop, raw))
            # Tansu's memory storage has no idempotent producer; every other option is the default.
            lines.append(row("messagebus kafka://", await bus_latency(url + "?idempotence=false", n), raw))
            short = await bus_latency(url + "?idempotence=false&fetch_max_wait_ms=5", n)
            lines.append(row("messagebus kafka:// ?fetch_max_wait_ms=5", short, raw))
    if "sqs" in names:
        import os

        from benchmarks.bench_sqs import FAKE_ENV, start_moto

        for key, value in FAKE_ENV.items():
            os.environ.setdefault(key, value)  # moto takes any credentials
        proc, endpoint = start_moto()
        try:
            raw = await raw_sqs(endpoint, n)
            lines.append(row("raw boto3 (send, long-poll receive, delete after handler) on moto", raw, None))
            url = f"sqs://?region=us-east-1&endpoint_url={endpoint}"
            lines.append(row("messagebus sqs:// on moto", await bus_latency(url, n), raw))
        finally:
            proc.kill()
            proc.wait()
    if "pubsub" in names:
        import os
        import signal

        from benchmarks.bench_pubsub import start_emulator

        emulator, proc = start_emulator()
        try:
            raw = await raw_pubsub(emulator, n)
            lines.append(
                row("raw google-cloud-pubsub (publish().result(), streaming pull, ack) on the emulator", raw, None)
            )
            lines.append(
                row(
                    "messagebus pubsub:// on the emulator",
                    await bus_latency(f"pubsub://latency?emulator_host={emulator}", n),
                    raw,
                )
            )
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if "redis" in names:
        from benchmarks import bench_redis

        url = "redis://127.0.0.1:6379/0"
        raw = await bench_redis.raw_latency(url, n)
        lines.append(row("raw redis-py (XADD, XREADGROUP loop, XACK)", raw, None))
        lines.append(row("messagebus redis://", await bench_redis.bus_latency(url, n), raw))
    if "nats" in names:
        from benchmarks import bench_nats

        url = "nats://127.0.0.1:4222"
        raw = await bench_nats.raw_latency(url, n)
        lines.append(row("raw nats-py (js.publish, fetch(1) loop, ack)", raw, None))
        lines.append(row("messagebus nats://", await bench_nats.bus_latency(url, n), raw))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("names", nargs="*", default=["memory", "rabbitmq", "kafka", "sqs", "pubsub", "redis", "nats"])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("-n", type=int, default=None, help="samples per contender")
    args = parser.parse_args()
    n = args.n or (200 if args.quick else 2000)
    table = asyncio.run(run(args.names, n))
    print(table)
    if not args.quick:
        command = " ".join(["python -m benchmarks.bench_latency", *sys.argv[1:]])
        write(
            "latency",
            f"## Latency, one message in flight\n\n{machine()}; "
            f"{versions('aio-pika', 'aiokafka', 'boto3', 'google-cloud-pubsub', 'redis', 'nats-py')}. "
            f"`{command}`, {n} samples each after {WARMUP} warm-up.\n\n{table}\n",
        )


if __name__ == "__main__":
    main()
