"""Broker crash tests of the conformance kit (pytest marker ``faults``).

A private broker the target provides (``ConformanceTarget.crash_broker``; never a shared one)
is killed with SIGKILL, or stopped gracefully, while publishers and a consumer are running,
then started again on the same ports. Every publish that returned (a confirmed message) must
be handled: all of them when the broker keeps its data across the crash, the ones confirmed
after it came back when it does not. Publishes straddling the crash must either wait and
succeed or raise a :class:`~messagebus.MessageBusError`. Each run prints one line::

    FAULT broker_crash <transport>: sent=N confirmed=M lost=L dup=D unexpected=U (bound B)

and a detail line (publishes straddling the crash, errors they raised, ...).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest

from .. import Bus, MessageBusError
from ._collect import Collector
from ._ledger import Ledger, in_flight_window, transport_label

if TYPE_CHECKING:
    from ._brokers import CrashableBroker
    from ._target import ConformanceTarget

__all__ = ["CrashFaultTests"]

BusFactory = Callable[..., Bus]

#: Phases of a run: the broker is up; the fault is being done (the broker is being killed or
#: stopped); the old broker process is gone and a new one is starting; the new one is up.
BEFORE, FAULT, DOWN, AFTER = 0, 1, 2, 3
#: Publisher tasks, each with one publish in progress at a time.
PUBLISHERS = 4
#: Messages per publish (``send_many``): a few batches in flight, as a real producer has.
BATCH = 10
#: Unless the broker process is gone, publishers wait when this many messages they got
#: confirmed since the last phase change are not handled yet: the volume follows the
#: consumer, so a slow broker (Tansu on S3, moto) is not buried under a backlog it needs
#: minutes to drain, nor flooded while a graceful stop drains its clients.
WINDOW = 100
CONCURRENCY = 4


@dataclass
class _Traffic:
    """What the live publishers and the consumer did, beyond the ledger's counts."""

    ledger: Ledger
    phase: int = BEFORE
    stopped: bool = False
    next_n: int = 0
    in_progress: set[int] = field(default_factory=set)
    straddling: set[int] = field(default_factory=set)  # messages whose publish ran during the fault or downtime
    raised: Counter[str] = field(default_factory=Counter)  # messagebus errors publish raised, by class
    foreign: list[BaseException] = field(default_factory=list)  # anything else a publish raised
    confirmed_after: Collector[int] = field(default_factory=Collector)  # publish began after the restart
    confirmed_by_new: set[int] = field(default_factory=set)  # publish began once the old process was gone
    first_handled_in: dict[int, int] = field(default_factory=dict)  # n -> phase of its first handling
    unhandled: set[int] = field(default_factory=set)  # confirmed in this phase, not handled yet
    progress: asyncio.Event = field(default_factory=asyncio.Event)  # set on every publish and handling
    gate: asyncio.Event = field(default_factory=asyncio.Event)  # handlers wait while it is clear

    def __post_init__(self) -> None:
        self.gate.set()

    async def until(self, predicate: Callable[[], bool], what: str, timeout: float) -> None:
        """Wait for ``predicate`` (checked after each publish and handling)."""
        try:
            async with asyncio.timeout(timeout):
                while not predicate():
                    self.progress.clear()
                    await self.progress.wait()
        except TimeoutError:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}") from None

    def enter(self, phase: int) -> None:
        self.phase = phase
        if phase == FAULT:
            self.straddling.update(self.in_progress)
        self.unhandled.clear()
        self.progress.set()

    def stop(self) -> None:
        self.stopped = True
        self.progress.set()

    async def handle(self, item: dict[str, Any]) -> None:
        await self.gate.wait()
        n = item.get("n", -1)
        if isinstance(n, int):
            self.first_handled_in.setdefault(n, self.phase)
            self.unhandled.discard(n)
        self.ledger.handle(item)
        self.progress.set()

    async def publish(self, bus: Bus, queue: str) -> None:
        """Publish batches until :meth:`stop`; record how each publish ended."""
        while not self.stopped:
            # No window while the old process is gone: publishes then wait or fail on their own.
            while not self.stopped and self.phase != DOWN and len(self.unhandled) >= WINDOW:
                self.progress.clear()
                await self.progress.wait()
            if self.stopped:
                return
            ns = range(self.next_n, self.next_n + BATCH)
            self.next_n += BATCH
            started = self.phase
            self.in_progress.update(ns)
            if started in (FAULT, DOWN):
                self.straddling.update(ns)
            try:
                await bus.send_many(queue, self.ledger.items(ns))
            except MessageBusError as exc:
                self.raised[type(exc).__name__] += 1
                await asyncio.sleep(0.05)  # back off: do not spin on a broker that is down
            except Exception as exc:
                self.foreign.append(exc)
                await asyncio.sleep(0.05)
            else:
                self.ledger.confirm(ns)
                if started == self.phase:
                    self.unhandled.update(n for n in ns if n not in self.first_handled_in)
                if started >= DOWN:
                    self.confirmed_by_new.update(ns)
                if started == AFTER:
                    for n in ns:
                        self.confirmed_after.add(n)
            finally:
                self.in_progress.difference_update(ns)
                self.progress.set()


async def _crash_with_traffic(
    target: ConformanceTarget,
    buses: BusFactory,
    label: str,
    fault: Callable[[CrashableBroker], Awaitable[None]],
) -> None:
    if target.crash_broker is None:
        pytest.skip("target gives no private broker it may crash (ConformanceTarget.crash_broker)")
    broker = target.crash_broker()
    await broker.start()  # a no-op when it runs; brings it back if an earlier test left it down
    queue = f"fault.{label}.{uuid.uuid4().hex[:10]}"
    budget = target.timeout * 4
    traffic = _Traffic(Ledger(label, transport_label(broker.url), budget))
    before = target.count(200, minimum=20)
    after = target.count(200, minimum=20)

    consumer = buses("crash", url=broker.url)
    consumer.consume(queue, concurrency=CONCURRENCY)(traffic.handle)
    producer = buses("crash-producer", url=broker.url)
    publishers: list[asyncio.Task[None]] = []
    hung: set[asyncio.Task[None]] = set()
    confirmed_total = 0
    try:
        async with consumer, producer:
            publishers = [asyncio.create_task(traffic.publish(producer, queue)) for _ in range(PUBLISHERS)]
            await traffic.ledger.wait_count(before, timeout=budget)  # traffic flows end to end
            # Hold the handlers until the broker is back, so the crash finds a backlog of
            # confirmed messages on the broker (what its durability must keep) as well as
            # deliveries in the consumer's hands (what it must deliver again).
            traffic.gate.clear()
            await traffic.until(lambda: len(traffic.unhandled) >= WINDOW, f"a backlog of {WINDOW}", budget)
            traffic.enter(FAULT)
            await fault(broker)
            traffic.enter(DOWN)
            await broker.start()
            traffic.enter(AFTER)
            traffic.gate.set()
            await traffic.confirmed_after.wait_until(
                lambda items: len(items) >= after,
                f"{after} messages confirmed after the restart (none: publish hangs or keeps failing)",
                timeout=budget,
            )
            traffic.stop()
            _, hung = await asyncio.wait(publishers, timeout=target.timeout)
            confirmed_total = len(traffic.ledger.confirmed)
            if not broker.keeps_messages:
                # The crash took what the old process held: the promises that stand are the
                # publishes begun once it was gone, which only the new one can have confirmed.
                traffic.ledger.confirmed = set(traffic.confirmed_by_new)
            with contextlib.suppress(AssertionError):  # the report below names what is missing
                await traffic.ledger.wait_all(timeout=budget)
    finally:
        traffic.stop()
        traffic.gate.set()
        for task in publishers:
            task.cancel()
        await asyncio.gather(*publishers, return_exceptions=True)

    handled_before_back = sum(1 for phase in traffic.first_handled_in.values() if phase < AFTER)
    window = in_flight_window(broker.url, CONCURRENCY)
    print(
        f"\nFAULT {label} {traffic.ledger.transport} detail: keeps_messages={broker.keeps_messages} "
        f"confirmed_total={confirmed_total} confirmed_after_restart={len(traffic.confirmed_after)} "
        f"straddling_publishes={len(traffic.straddling)} publish_raised={dict(traffic.raised)} "
        f"raw_errors={len(traffic.foreign)} handled_before_back={handled_before_back}"
    )
    assert not traffic.foreign, "publish raised errors that are not MessageBusError: " + ", ".join(
        sorted({f"{type(e).__module__}.{type(e).__qualname__}: {e}" for e in traffic.foreign})[:5]
    )
    assert not hung, f"{len(hung)} publishes still hung {target.timeout}s after the broker came back"
    traffic.ledger.report(
        window + len(traffic.straddling),
        why=f"the consumer's in-flight window {window} + {len(traffic.straddling)} publishes straddling the crash",
    )


class CrashFaultTests:
    """Mixed into :class:`TransportConformance`; needs its ``target`` (with ``crash_broker``)
    and ``buses`` fixtures."""

    @pytest.mark.faults
    async def test_fault_broker_crash_with_live_traffic(self, target: ConformanceTarget, buses: BusFactory) -> None:
        """SIGKILL of the broker process mid-traffic, then a start on the same ports and data.

        Catches: a publish that returns before the broker stored the message durably, or an
        ack/commit sent before the handler returned (confirmed messages lost); a transport that
        does not come back after its broker died (no reconnect, consumers not resumed, topology
        not declared again on a fresh server: a timeout); a publish that hangs across the
        crash or leaks a raw broker-client exception; a redelivery flood afterwards."""

        async def crash(broker: CrashableBroker) -> None:
            await broker.crash()

        await _crash_with_traffic(target, buses, "broker_crash", crash)

    @pytest.mark.faults
    async def test_fault_broker_restart_with_live_traffic(self, target: ConformanceTarget, buses: BusFactory) -> None:
        """A graceful broker stop (SIGTERM: connections closed by the broker) and start
        mid-traffic. Catches the same bugs as the crash test on the path where the broker says
        goodbye (connection-close frames, consumer cancel notifications) instead of vanishing."""

        async def stop(broker: CrashableBroker) -> None:
            await broker.restart()  # stop + start; the test's own start() finds it running

        await _crash_with_traffic(target, buses, "broker_restart", stop)
