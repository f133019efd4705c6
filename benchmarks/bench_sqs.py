"""SQS/SNS: messagebus vs a raw boto3 loop with the same batching, one run, against moto.

    python -m benchmarks.bench_sqs                 # full run (starts its own moto server)
    python -m benchmarks.bench_sqs --quick         # smoke run, a few seconds
    python -m benchmarks.bench_sqs --endpoint http://127.0.0.1:5000   # an already running server

Workloads (small JSON messages; fake credentials; moto serves a few hundred requests a second,
so requests per message matter as much as messages per second):

- consume: a queue pre-filled by messagebus; raw = a boto3 loop of ReceiveMessage (10, long
  poll) -> JSON decode -> handler -> DeleteMessageBatch; messagebus = ``bus.consume`` with
  concurrency 10 (acks coalesced into DeleteMessageBatch). Timing starts at the first message
  handled and ends at the last.
- send_many: SQS queue; raw = sequential SendMessageBatch calls of 10; messagebus =
  ``bus.send_many`` (batches of 10, sent on its thread pool).
- publish_many: SNS topic with one subscribed queue; raw = sequential PublishBatch of 10;
  messagebus = ``bus.publish_many``.

Requests are counted on the boto3 clients (botocore ``before-call`` events).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from benchmarks._common import Count, Row, machine, table, versions, write
from messagebus import Bus

FAKE_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def payload(i: int) -> dict[str, Any]:
    return {"id": i, "name": "widget", "price": 9.99}


def counter(client: Any, service: str) -> collections.Counter[str]:
    calls: collections.Counter[str] = collections.Counter()
    client.meta.events.register(f"before-call.{service}.*", lambda model, **_: calls.update([model.name]))
    return calls


def raw_clients(endpoint: str) -> tuple[Any, Any]:
    import boto3

    kw = {"region_name": "us-east-1", "endpoint_url": endpoint}
    return boto3.client("sqs", **kw), boto3.client("sns", **kw)


def bus_url(endpoint: str, prefix: str) -> str:
    return f"sqs://?region=us-east-1&endpoint_url={endpoint}&wait_time=1&queue_prefix={prefix}&topic_prefix={prefix}"


def per_message(calls: collections.Counter[str], n: int, *names: str) -> str:
    total = sum(calls[name] for name in names)
    parts = ", ".join(f"{calls[name]} {name}" for name in names if calls[name])
    return f"{total / n:.3f} req/msg ({parts})"


# -- consume ---------------------------------------------------------------------------------


async def fill(endpoint: str, prefix: str, queue: str, n: int) -> None:
    bus = Bus.from_url(bus_url(endpoint, prefix), service="bench")
    async with bus:
        await bus.send_many(queue, [payload(i) for i in range(n)])


def raw_consume(endpoint: str, queue_url: str, n: int) -> Row:
    sqs, _ = raw_clients(endpoint)
    calls = counter(sqs, "sqs")
    seen = 0
    first = 0.0

    def handler(data: dict[str, Any]) -> None:
        nonlocal seen, first
        if seen == 0:
            first = time.perf_counter()
        seen += 1

    while seen < n:
        response = sqs.receive_message(
            QueueUrl=queue_url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=1,
            MessageAttributeNames=["All"],
            MessageSystemAttributeNames=["All"],
        )
        messages = response.get("Messages", [])
        for m in messages:
            handler(json.loads(m["Body"]))
        if messages:
            sqs.delete_message_batch(
                QueueUrl=queue_url,
                Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)],
            )
    seconds = time.perf_counter() - first
    note = "decode + handler + delete; " + per_message(calls, n, "ReceiveMessage", "DeleteMessageBatch")
    return Row("boto3 raw loop: Receive(10) -> DeleteMessageBatch", n, seconds, note)


async def bus_consume(endpoint: str, prefix: str, queue: str, n: int, concurrency: int) -> Row:
    count = Count(n)
    bus = Bus.from_url(bus_url(endpoint, prefix), service="bench")

    @bus.consume(queue, concurrency=concurrency)
    async def handle(data: dict[str, Any]) -> None:
        count.hit()

    calls: collections.Counter[str] = collections.Counter()
    original = bus.transport.connect

    async def connect_and_count() -> None:
        await original()
        bus.transport.sqs_client.meta.events.register(
            "before-call.sqs.*", lambda model, **_: calls.update([model.name])
        )

    # Count from the first request on: register on the client as soon as it exists.
    bus.transport.connect = connect_and_count  # type: ignore[method-assign]
    async with bus:
        await asyncio.wait_for(count.done.wait(), 600)
    note = "decode + handler + ack; " + per_message(calls, n, "ReceiveMessage", "DeleteMessageBatch")
    return Row(f"messagebus consume (concurrency {concurrency}, prefetch 10)", n, count.last - count.first, note)


# -- publish ---------------------------------------------------------------------------------


def _attributes(with_attributes: bool) -> dict[str, Any]:
    if not with_attributes:
        return {}
    return {"MessageAttributes": {k: {"DataType": "String", "StringValue": v} for k, v in CE_ATTRIBUTES.items()}}


def raw_send_many(endpoint: str, queue_url: str, n: int, with_attributes: bool = False) -> Row:
    sqs, _ = raw_clients(endpoint)
    calls = counter(sqs, "sqs")
    bodies = [json.dumps(payload(i)) for i in range(n)]
    extra = _attributes(with_attributes)
    start = time.perf_counter()
    for i in range(0, n, 10):
        r = sqs.send_message_batch(
            QueueUrl=queue_url,
            Entries=[{"Id": str(j), "MessageBody": b, **extra} for j, b in enumerate(bodies[i : i + 10])],
        )
        assert not r.get("Failed"), r["Failed"]
    seconds = time.perf_counter() - start
    name = "boto3 raw loop: SendMessageBatch(10)" + (" + the same 6 ce- attributes" if with_attributes else "")
    return Row(name, n, seconds, "confirmed; " + per_message(calls, n, "SendMessageBatch"))


async def bus_send_many(endpoint: str, prefix: str, queue: str, n: int) -> Row:
    bus = Bus.from_url(bus_url(endpoint, prefix), service="bench")
    async with bus:
        await bus.send(queue, payload(-1))  # declare the queue outside the timing
        calls = counter(bus.transport.sqs_client, "sqs")
        start = time.perf_counter()
        await bus.send_many(queue, [payload(i) for i in range(n)])
        seconds = time.perf_counter() - start
    note = "encode + CloudEvents attributes, confirmed; " + per_message(calls, n, "SendMessageBatch")
    return Row("messagebus send_many", n, seconds, note)


def raw_publish_many(endpoint: str, topic_arn: str, n: int, with_attributes: bool = False) -> Row:
    _, sns = raw_clients(endpoint)
    calls = counter(sns, "sns")
    bodies = [json.dumps(payload(i)) for i in range(n)]
    extra = _attributes(with_attributes)
    start = time.perf_counter()
    for i in range(0, n, 10):
        r = sns.publish_batch(
            TopicArn=topic_arn,
            PublishBatchRequestEntries=[
                {"Id": str(j), "Message": b, **extra} for j, b in enumerate(bodies[i : i + 10])
            ],
        )
        assert not r.get("Failed"), r["Failed"]
    seconds = time.perf_counter() - start
    name = "boto3 raw loop: PublishBatch(10)" + (" + the same 6 ce- attributes" if with_attributes else "")
    return Row(name, n, seconds, "confirmed; " + per_message(calls, n, "PublishBatch"))


async def bus_publish_many(endpoint: str, prefix: str, topic: str, n: int) -> Row:
    bus = Bus.from_url(bus_url(endpoint, prefix), service="bench")
    async with bus:
        await bus.publish(topic, payload(-1))  # declare the topic outside the timing
        calls = counter(bus.transport.sns_client, "sns")
        start = time.perf_counter()
        await bus.publish_many(topic, [payload(i) for i in range(n)])
        seconds = time.perf_counter() - start
    note = "encode + CloudEvents attributes, confirmed; " + per_message(calls, n, "PublishBatch")
    return Row("messagebus publish_many", n, seconds, note)


# -- main ------------------------------------------------------------------------------------


def start_moto() -> tuple[subprocess.Popen[bytes], str]:
    from messagebus.testing import free_port, wait_for_port

    port = free_port()
    binary = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen(
        [str(binary), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    if not wait_for_port("127.0.0.1", port, 30):
        proc.kill()
        raise SystemExit("moto_server did not start")
    return proc, f"http://127.0.0.1:{port}"


def merge(rows: list[Row]) -> Row:
    """One row from the repeats of a variant: total messages over total seconds."""
    first = rows[0]
    return Row(first.name, sum(r.messages for r in rows), sum(r.seconds for r in rows), first.note)


CE_ATTRIBUTES = {
    "ce-id": "0123456789abcdef0123456789abcdef",
    "ce-source": "bench",
    "ce-type": "dict",
    "ce-specversion": "1.0",
    "ce-time": "2026-11-24T22:00:00.000000+00:00",
    "ce-datacontenttype": "application/json",
}


async def run(endpoint: str, n: int, pub_n: int) -> tuple[list[Row], list[Row], list[Row]]:
    """Each variant runs twice in the order A B B A on fresh queues, which cancels the drift of
    a shared, loaded machine and of moto slowing down as it stores more messages."""
    sqs, sns = raw_clients(endpoint)

    async def consume_once(variant: str) -> Row:
        prefix = "b" + uuid.uuid4().hex[:6] + "-"
        await fill(endpoint, prefix, "consume", n)
        url = sqs.get_queue_url(QueueName=prefix + "consume")["QueueUrl"]
        try:
            if variant == "raw":
                return await asyncio.to_thread(raw_consume, endpoint, url, n)
            return await bus_consume(endpoint, prefix, "consume", n, concurrency=10)
        finally:
            sqs.delete_queue(QueueUrl=url)

    async def send_once(variant: str) -> Row:
        prefix = "b" + uuid.uuid4().hex[:6] + "-"
        if variant == "bus":
            row = await bus_send_many(endpoint, prefix, "send", pub_n)
        else:
            url = sqs.create_queue(QueueName=prefix + "send")["QueueUrl"]
            row = await asyncio.to_thread(raw_send_many, endpoint, url, pub_n, variant == "raw+attrs")
        sqs.delete_queue(QueueUrl=sqs.get_queue_url(QueueName=prefix + "send")["QueueUrl"])
        return row

    async def publish_once(variant: str) -> Row:
        # One subscribed queue per topic, so SNS does the same fan-out work in every run.
        prefix = "b" + uuid.uuid4().hex[:6] + "-"
        if variant == "bus":
            sink = Bus.from_url(bus_url(endpoint, prefix), service="sink")
            sink.subscribe("pub")(_ignore)
            async with sink:  # declares the group queue and its subscription, consumes nothing
                pass
            row = await bus_publish_many(endpoint, prefix, "pub", pub_n)
        else:
            arn = sns.create_topic(Name=prefix + "pub")["TopicArn"]
            queue_url = sqs.create_queue(QueueName=prefix + "pub-sink")["QueueUrl"]
            queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"][
                "QueueArn"
            ]
            sns.subscribe(TopicArn=arn, Protocol="sqs", Endpoint=queue_arn, Attributes={"RawMessageDelivery": "true"})
            row = await asyncio.to_thread(raw_publish_many, endpoint, arn, pub_n, variant == "raw+attrs")
        for url in sqs.list_queues(QueueNamePrefix=prefix).get("QueueUrls", []):
            sqs.delete_queue(QueueUrl=url)
        return row

    async def abba(once: Any, variants: list[str]) -> list[Row]:
        runs: dict[str, list[Row]] = {v: [] for v in variants}
        for v in [*variants, *reversed(variants)]:
            runs[v].append(await once(v))
        return [merge(rows) for rows in runs.values()]

    consume = await abba(consume_once, ["raw", "bus"])
    sends = await abba(send_once, ["raw", "raw+attrs", "bus"])
    pubs = await abba(publish_once, ["raw", "raw+attrs", "bus"])
    return consume, sends, pubs


async def _ignore(data: dict[str, Any]) -> None:
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small counts, a few seconds")
    parser.add_argument("--endpoint", help="use this SQS/SNS endpoint instead of starting moto")
    parser.add_argument("--messages", type=int, help="messages per workload")
    args = parser.parse_args()
    for key, value in FAKE_ENV.items():
        os.environ.setdefault(key, value)
    # moto's ReceiveMessage and DeleteMessage cost O(queue length), so consume counts stay
    # modest; publishing does not slow down with queue length as much.
    n = args.messages or (200 if args.quick else 500)
    pub_n = args.messages or (200 if args.quick else 1000)
    proc = None
    endpoint = args.endpoint
    if endpoint is None:
        proc, endpoint = start_moto()
    try:
        consume, sends, pubs = asyncio.run(run(endpoint, n, pub_n))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)
    command = "python -m benchmarks.bench_sqs" + (" --quick" if args.quick else "")
    ratio = [
        ("consume", consume[1].rate / consume[0].rate, ""),
        (
            "send_many (SQS)",
            sends[2].rate / sends[0].rate,
            f"; {sends[2].rate / sends[1].rate * 100:.0f}% of raw with the same attributes",
        ),
        (
            "publish_many (SNS)",
            pubs[2].rate / pubs[0].rate,
            f"; {pubs[2].rate / pubs[1].rate * 100:.0f}% of raw with the same attributes",
        ),
    ]
    text = "\n".join(
        [
            "## SQS/SNS (messagebus-sqs vs boto3), against moto_server",
            "",
            f"Machine: {machine()}",
            "",
            f"Versions: {versions('messagebus-sdk', 'messagebus-sqs', 'boto3', 'botocore', 'moto')}",
            "",
            f"Command: `{command}`",
            "",
            "moto serves a few hundred requests a second on this machine, so throughput is bounded by",
            "the server; requests per message show the batching. Every variant ran twice (order A B B A,",
            "fresh queues each time) and the table sums both runs. messagebus messages carry the six",
            "CloudEvents attributes (ce-id, ce-source ...), which cost moto work per message, so the",
            "publish tables also show a raw loop sending the same attributes. On a shared machine single",
            "runs vary a lot; requests per message are the stable figure.",
            "",
            "### consume",
            "",
            table(consume, consume[0].name),
            "",
            "### send_many (SQS queue)",
            "",
            table(sends, sends[0].name),
            "",
            "### publish_many (SNS topic, one subscribed queue)",
            "",
            table(pubs, pubs[0].name),
            "",
            "### ratios",
            "",
            *[
                f"- {name}: messagebus {r * 100:.0f}% of the raw boto3 loop (target >= 90%){extra}"
                for name, r, extra in ratio
            ],
            "",
        ]
    )
    write("sqs-quick" if args.quick else "sqs", text)


if __name__ == "__main__":
    main()
