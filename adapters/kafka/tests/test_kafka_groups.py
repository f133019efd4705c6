"""Consumer groups: partitions shared, rebalances, a killed member, per-key order."""

from __future__ import annotations

import asyncio
import random
import sys
from pathlib import Path

from messagebus_kafka import KafkaTransport
from test_kafka_transport import TIMEOUT, Collector, msg, topic

from messagebus.transports import Delivery


def url_with(url: str, extra: str) -> str:
    return url + ("&" if "?" in url else "?") + extra


async def publish_range(t: KafkaTransport, dest_name: str, start: int, stop: int) -> list[bytes]:
    dest = topic(dest_name)
    bodies = [f"m{i}".encode() for i in range(start, stop)]
    await t.publish([msg(dest, b, key=f"k{i % 16}") for i, b in zip(range(start, stop), bodies, strict=True)])
    return bodies


async def test_two_consumers_share_partitions_and_a_rebalance_loses_nothing(kafka_url: str, unique: str) -> None:
    url = url_with(kafka_url, "partitions=4")
    producer, ta, tb = (KafkaTransport.from_url(url) for _ in range(3))
    for t in (producer, ta, tb):
        await t.connect()
    try:
        dest = topic(unique, "workers")
        a, b = Collector(), Collector()
        ca = await ta.subscribe(dest, a, concurrency=4)
        sent = await publish_range(producer, unique, 0, 100)
        await a.wait_for(lambda: len(a.items) >= 50)
        cb = await tb.subscribe(dest, b, concurrency=4)
        n = 100
        # Keep publishing until B has joined and taken partitions over from A.
        while not b.items:
            sent += await publish_range(producer, unique, n, n + 20)
            n += 20
            try:
                await b.wait_for(lambda: bool(b.items), timeout=1.0)
            except TimeoutError:
                assert n < 3000, "the second consumer never got a partition"
        shared_a, shared_b = ca.assignment, cb.assignment
        assert shared_a and shared_b and not (shared_a & shared_b), "partitions must be split, never shared"
        await ca.stop(5)  # A leaves: B takes every partition over
        sent += await publish_range(producer, unique, n, n + 100)
        await b.wait_for(lambda: set(a.bodies) | set(b.bodies) >= set(sent), timeout=TIMEOUT * 2)
        assert a.items and b.items
        await cb.stop(5)
    finally:
        for t in (producer, ta, tb):
            await t.close()


async def test_killed_consumers_uncommitted_messages_go_to_the_other(kafka_url: str, unique: str) -> None:
    dest = topic(unique, "workers")
    producer, tb = KafkaTransport.from_url(kafka_url), KafkaTransport.from_url(kafka_url)
    await producer.connect()
    await tb.connect()
    worker = Path(__file__).with_name("kafka_hold_worker.py")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(worker), kafka_url, unique, "workers", stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    try:
        assert (await asyncio.wait_for(proc.stdout.readline(), TIMEOUT)).startswith(b"subscribed")
        b = Collector()
        cb = await tb.subscribe(dest, b, concurrency=4)
        held: list[bytes] = []
        sent: list[bytes] = []
        n = 0
        # Publish until the worker holds messages (it owns some partitions) and B handles others.
        while not held or not b.items:
            sent += await publish_range(producer, unique, n, n + 16)
            n += 16
            try:
                line = await asyncio.wait_for(proc.stdout.readline(), 1.0)
            except TimeoutError:
                assert n < 3000, "the worker never got a partition"
                continue
            if line.startswith(b"got "):
                held.append(line.split()[1])
        proc.kill()  # SIGKILL: no commit, no leave-group
        await proc.wait()
        sent += await publish_range(producer, unique, n, n + 32)
        await b.wait_for(lambda: set(b.bodies) >= set(sent), timeout=TIMEOUT * 2)
        assert set(held) <= set(b.bodies), "a message the killed consumer held was lost"
        await cb.stop(5)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await producer.close()
        await tb.close()


async def test_per_key_order_across_16_keys(kafka_url: str, unique: str) -> None:
    t = KafkaTransport.from_url(url_with(kafka_url, "partitions=4"))
    await t.connect()
    try:
        dest = topic(unique, "g")
        rng = random.Random(5)

        async def jitter(d: Delivery) -> None:
            for _ in range(rng.randrange(3)):
                await asyncio.sleep(0)  # let other keys overtake this one
            await d.ack()

        got = Collector(jitter)
        consumer = await t.subscribe(dest, got, concurrency=8)
        per_key = 40
        messages = [msg(dest, f"{k}:{i}".encode(), key=f"key-{k}") for i in range(per_key) for k in range(16)]
        for start in range(0, len(messages), 100):
            await t.publish(messages[start : start + 100])
        await got.wait_for(lambda: len(got.items) >= 16 * per_key)
        for k in range(16):
            seq = [int(b.split(b":")[1]) for b in got.bodies if b.startswith(f"{k}:".encode())]
            assert seq == list(range(per_key)), f"key-{k} out of order: {seq}"
        await consumer.stop(5)
    finally:
        await t.close()
