"""Fault tests of the conformance kit (pytest marker ``faults``): connections cut, stalled
and broken mid-flow, consumer processes killed or stopped under load, poison in a stream,
hanging handlers, broker restarts. Every test checks that each confirmed message is handled
at least once, and reports duplicates."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import pytest

from .. import Bus, Envelope, Retry, TransportError
from ..middleware.timeout import timeout
from ._collect import Collector
from ._proxy import TcpProxy

if TYPE_CHECKING:
    from .conformance import ConformanceTarget

__all__ = ["FaultTests"]

BusFactory = Callable[..., Bus]


def _name(prefix: str) -> str:
    return f"fault.{prefix}.{uuid.uuid4().hex[:10]}"


def _item(n: int, run: str = "f") -> dict[str, Any]:
    return {"n": n, "run": run}


async def _send_all(bus: Bus, queue: str, ns: range, deadline: float) -> None:
    """Send each item; a send whose confirm was lost in a fault raises, so send it again
    (at-least-once publishing: the duplicate is counted, never a loss)."""
    for start in range(ns.start, ns.stop, 100):
        batch = [_item(n) for n in range(start, min(ns.stop, start + 100))]
        while True:
            try:
                await bus.send_many(queue, batch)
                break
            except TransportError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)  # back off before publishing again after a fault


def _report(got: Collector[int], n: int | set[int]) -> None:
    expected = set(range(n)) if isinstance(n, int) else n
    missing = expected - set(got.items)
    assert not missing, f"{len(missing)} confirmed messages never handled, e.g. {sorted(missing)[:10]}"
    dups = got.duplicates()
    if dups:
        print(f"\n{len(dups)} messages handled more than once (at-least-once delivery)")


class FaultTests:
    """Mixed into :class:`TransportConformance`; needs its ``target`` and ``buses`` fixtures."""

    async def _through_proxy(
        self,
        target: ConformanceTarget,
        buses: BusFactory,
        fault: Callable[[TcpProxy], Awaitable[None]],
        label: str,
    ) -> None:
        if target.upstream is None or target.via_proxy is None:
            pytest.skip("target gives no upstream/via_proxy for a fault proxy")
        queue = _name(label)
        n = target.count(10_000, minimum=200)
        got: Collector[int] = Collector(target.timeout * 4)
        with TcpProxy(target.upstream) as proxy:
            url = target.via_proxy(proxy.host, proxy.port)
            consumer = buses("faults", url=url)

            @consumer.consume(queue, concurrency=8)
            async def handle(item: dict[str, Any]) -> None:
                got.add(item["n"])

            producer = buses("producer", url=url)
            async with consumer, producer:
                deadline = time.monotonic() + target.timeout * 4
                sending = asyncio.create_task(_send_all(producer, queue, range(n), deadline))
                await got.wait_for(min(n // 4, 50))
                await fault(proxy)
                await sending
                await got.wait_until(lambda items: set(items) >= set(range(n)), f"all {n} messages")
        _report(got, n)

    @pytest.mark.faults
    async def test_fault_connection_dropped_mid_flow(self, target: ConformanceTarget, buses: BusFactory) -> None:
        async def drop(proxy: TcpProxy) -> None:
            proxy.cut()

        await self._through_proxy(target, buses, drop, "drop")

    @pytest.mark.faults
    async def test_fault_connection_stalled_then_resumed(self, target: ConformanceTarget, buses: BusFactory) -> None:
        async def stall(proxy: TcpProxy) -> None:
            proxy.stall()
            await asyncio.sleep(1.0)  # the fault itself: the network holds every byte for a second
            proxy.resume()

        await self._through_proxy(target, buses, stall, "stall")

    @pytest.mark.faults
    async def test_fault_connection_cut_after_bytes(self, target: ConformanceTarget, buses: BusFactory) -> None:
        async def cut_after(proxy: TcpProxy) -> None:
            proxy.cut_after(7_777)

        await self._through_proxy(target, buses, cut_after, "cutafter")

    @pytest.mark.faults
    async def test_fault_poison_mixed_into_a_stream(self, target: ConformanceTarget, buses: BusFactory) -> None:
        queue = _name("poison")
        n = target.count(500, minimum=50)
        good: Collector[int] = Collector(target.timeout)
        dead: Collector[bytes] = Collector(target.timeout)
        bus = buses()

        @bus.consume(queue, concurrency=4)
        async def handle(item: dict[str, Any]) -> None:
            good.add(item["n"])

        @bus.consume(f"{queue}.dlq")
        async def dlq(envelope: Envelope) -> None:
            dead.add(envelope.body)

        async with bus:
            for i in range(n):
                await bus.send(queue, {"n": i})
                if i % 10 == 0:
                    await bus.send(queue, b"\x00poison")
            await good.wait_until(lambda items: set(items) >= set(range(n)), f"{n} good messages")
            await dead.wait_for(len(range(0, n, 10)))
        assert set(dead.items) == {b"\x00poison"}

    @pytest.mark.faults
    async def test_fault_hanging_handler_is_timed_out_and_retried(
        self, target: ConformanceTarget, buses: BusFactory
    ) -> None:
        queue = _name("hang")
        attempts: Collector[int] = Collector(target.timeout)
        bus = buses(retry=Retry(max_attempts=3, initial_delay=0.05, jitter=0))

        @bus.consume(queue, middleware=[timeout(0.2)])
        async def handle(item: dict[str, Any], envelope: Envelope) -> None:
            attempts.add(envelope.attempt)
            if envelope.attempt == 1:
                await asyncio.Event().wait()  # hangs forever

        async with bus:
            await bus.send(queue, {"n": 1})
            await attempts.wait_for(2)
        assert attempts.items[:2] == [1, 2]

    @pytest.mark.faults
    async def test_fault_stop_under_load_loses_nothing(self, target: ConformanceTarget, buses: BusFactory) -> None:
        queue = _name("stopload")
        n = target.count(2000, minimum=100)
        got: Collector[int] = Collector(target.timeout * 2)
        producer = buses("producer")
        first = buses()

        @first.consume(queue, concurrency=8)
        async def slow(item: dict[str, Any]) -> None:
            await asyncio.sleep(0.001)  # simulated work, so the stop finds handlers in flight
            got.add(item["n"])

        await producer.start()
        await producer.send_many(queue, [_item(i) for i in range(n)])
        await first.start()
        await got.wait_for(min(n // 10, 20))
        await first.stop(grace=5)
        second = buses()
        second.consume(queue, concurrency=8)(_collect_to(got))
        async with second:
            await got.wait_until(lambda items: set(items) >= set(range(n)), f"all {n}")
        await producer.stop()
        _report(got, n)

    @pytest.mark.faults
    async def test_fault_consumer_process_killed_or_terminated(
        self, target: ConformanceTarget, buses: BusFactory
    ) -> None:
        if not Bus.from_url(target.url).transport.capabilities.network:
            pytest.skip("an in-process transport cannot be shared with another process")
        for how in (signal.SIGKILL, signal.SIGTERM):
            queue = _name(f"kill{int(how)}")
            n = target.count(400, minimum=60)
            producer = buses("producer")
            async with producer:
                await producer.send_many(queue, [_item(i) for i in range(n)])
            handled: set[int] = set()
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "messagebus.testing._worker",
                target.url,
                queue,
                "--delay",
                "0.01",
                stdout=asyncio.subprocess.PIPE,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
            assert proc.stdout is not None
            async with asyncio.timeout(target.timeout * 2):
                while len(handled) < n // 4:
                    line = (await proc.stdout.readline()).decode()
                    assert line, "worker exited early"
                    if line.startswith("handled"):
                        handled.add(int(line.split()[1]))
                proc.send_signal(how)
                rest = (await proc.stdout.read()).decode().splitlines()
                await proc.wait()
            handled.update(int(line.split()[1]) for line in rest if line.startswith("handled"))
            if how == signal.SIGTERM:
                assert proc.returncode == 0, "SIGTERM must stop the worker gracefully"
                assert "stopped" in rest
            got: Collector[int] = Collector(target.timeout * 2)
            for n_ in handled:
                got.add(n_)
            second = buses()
            second.consume(queue, concurrency=8)(_collect_to(got))
            async with second:
                await got.wait_until(_has_all(n), f"all {n} after {how.name}")
            _report(got, n)

    @pytest.mark.faults
    async def test_fault_broker_restart(self, target: ConformanceTarget, buses: BusFactory) -> None:
        if target.restart is None:
            pytest.skip("target gives no way to restart its broker")
        persistent = target.restart_keeps_messages
        if persistent is None:
            persistent = Bus.from_url(target.url).transport.capabilities.persistence
        queue = _name("restart")
        n = target.count(200, minimum=20)
        got: Collector[int] = Collector(target.timeout * 4)
        producer = buses("producer")
        consumer = buses()
        consumer.consume(queue, concurrency=4)(_collect_to(got))
        async with producer:
            await producer.send_many(queue, [_item(i) for i in range(n)])
            await target.restart()
            deadline = time.monotonic() + target.timeout * 4
            await _send_all(producer, queue, range(n, 2 * n), deadline)
            async with consumer:
                expected = set(range(2 * n)) if persistent else set(range(n, 2 * n))
                await got.wait_until(lambda items: set(items) >= expected, f"{len(expected)} messages after restart")
        _report(got, expected)


def _has_all(n: int) -> Callable[[list[int]], bool]:
    everything = set(range(n))
    return lambda items: set(items) >= everything


def _collect_to(col: Collector[int]) -> Callable[[dict[str, Any]], Awaitable[None]]:
    async def handle(item: dict[str, Any]) -> None:
        col.add(item["n"])

    return handle
