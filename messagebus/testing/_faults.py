"""Fault tests of the conformance kit (pytest marker ``faults``): connections cut, stalled,
half-open, cut repeatedly and refused for an outage, cut while retries and dead letters are
being settled; consumer and producer processes killed; instances joining and leaving a group
mid-stream; poison and fail-once messages in a stream; hanging handlers (broker crashes and
restarts are in :mod:`._crash`, on private brokers).

Every test counts Jepsen's three with a :class:`~messagebus.testing._ledger.Ledger`: lost
(confirmed, never handled), duplicated (handled more than once) and unexpected (never sent by
this run), fails on any lost or unexpected message, and fails on more duplicates than could
have been in flight at its faults: per fault, each consumer's in-flight window
(:func:`~messagebus.testing._ledger.in_flight_window`), plus every message the test itself
published again after a publish failed. Each prints ``FAULT <name> <transport>: ...``; the
figures are collected in docs/faults.md.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest

from .. import Bus, Envelope, MessageBusError, Reject, Retry, TransportError
from ..middleware.timeout import timeout
from ._collect import Collector
from ._ledger import Ledger, in_flight_window, transport_label
from ._proxy import TcpProxy

if TYPE_CHECKING:
    from ._target import ConformanceTarget

__all__ = ["FaultTests"]

BusFactory = Callable[..., Bus]

#: Options that make each transport notice a silent (half-open) connection within seconds
#: rather than its production default (a 60 s AMQP heartbeat, a 30 s HTTP read timeout).
#: Kafka's test URL already carries a 3 s session and a 10 s request timeout.
_QUICK_DETECTION: dict[str, str] = {
    "amqp": "heartbeat=2",
    "amqps": "heartbeat=2",
    "sqs": "read_timeout=5",
    "kafka": "request_timeout_ms=5000",
}

#: How long the outage test keeps the broker unreachable.
OUTAGE_SECONDS = 5.0
#: Messages per publish in the tests' producer loops; a failed batch is sent again whole,
#: so this is also what one publish fault may duplicate.
PUBLISH_BATCH = 100


def _name(prefix: str) -> str:
    return f"fault.{prefix}.{uuid.uuid4().hex[:10]}"


def _with_options(url: str, options: str) -> str:
    """``url`` with the query ``options`` added; one the URL already has takes their value."""
    if not options:
        return url
    base, _, query = url.partition("?")
    merged = dict(urllib.parse.parse_qsl(query, keep_blank_values=True))
    merged.update(urllib.parse.parse_qsl(options, keep_blank_values=True))
    return f"{base}?{urllib.parse.urlencode(merged, safe=':/')}"


def _item(n: int, run: str = "f") -> dict[str, Any]:
    return {"n": n, "run": run}


def _ledger(name: str, target: ConformanceTarget, timeout_factor: float = 4) -> Ledger:
    return Ledger(name, transport_label(target.url), target.timeout * timeout_factor)


def _needs_proxy(target: ConformanceTarget) -> tuple[tuple[str, int], Callable[[str, int], str]]:
    if target.upstream is None or target.via_proxy is None:
        pytest.skip("target gives no upstream/via_proxy for a fault proxy")
    return target.upstream, target.via_proxy


async def _send_all(
    bus: Bus, queue: str, ledger: Ledger, ns: range, deadline: float, *, batch: int = PUBLISH_BATCH
) -> int:
    """Send each message, confirming it in ``ledger``; a send whose confirm was lost in a
    fault raises, so it is sent again (at-least-once publishing: the copy may be handled
    twice, never lost). Returns how many messages were sent again."""
    resent = 0
    for start in range(ns.start, ns.stop, batch):
        chunk = range(start, min(ns.stop, start + batch))
        items = ledger.items(chunk)
        while True:
            try:
                await bus.send_many(queue, items)
                break
            except TransportError:
                if time.monotonic() > deadline:
                    raise
                resent += len(items)
                await asyncio.sleep(0.05)  # back off before publishing again after a fault
        ledger.confirm(chunk)
    return resent


def _report(got: Collector[int], n: int | set[int]) -> None:
    """Lost messages of a plain :class:`Collector` of numbers (tests without a ledger)."""
    expected = set(range(n)) if isinstance(n, int) else n
    missing = expected - set(got.items)
    assert not missing, f"{len(missing)} confirmed messages never handled, e.g. {sorted(missing)[:10]}"
    strange = set(got.items) - expected
    assert not strange, f"{len(strange)} messages handled that were never sent, e.g. {sorted(strange)[:10]}"


async def _bounded(task: asyncio.Task[int], seconds: float, what: str) -> int:
    """``await task``, failing (and cancelling it) after ``seconds``: a client that never
    notices a dead connection hangs in ``publish``, and the test must fail, not hang."""
    try:
        return await asyncio.wait_for(task, seconds)
    except TimeoutError:
        raise AssertionError(f"{what} hung for {seconds:.0f}s: the client never recovered from the fault") from None


@dataclass
class _PublishLog:
    """What each publish of a live publisher did, for the outage test."""

    outcomes: list[tuple[float, float, str]] = field(default_factory=list)  # (start, end, "ok" | error class)
    resent: int = 0


class FaultTests:
    """Mixed into :class:`TransportConformance`; needs its ``target`` and ``buses`` fixtures."""

    async def _through_proxy(
        self,
        target: ConformanceTarget,
        buses: BusFactory,
        fault: Callable[[TcpProxy], Awaitable[None]],
        label: str,
        *,
        options: str = "",
    ) -> None:
        upstream, via_proxy = _needs_proxy(target)
        queue = _name(label)
        n = target.count(10_000, minimum=200)
        ledger = _ledger(label, target)
        concurrency = 8
        with TcpProxy(upstream) as proxy:
            url = _with_options(via_proxy(proxy.host, proxy.port), options)
            consumer = buses("faults", url=url)

            @consumer.consume(queue, concurrency=concurrency)
            async def handle(item: dict[str, Any]) -> None:
                ledger.handle(item)

            producer = buses("producer", url=url)
            async with consumer, producer:
                deadline = time.monotonic() + target.timeout * 4
                sending = asyncio.create_task(_send_all(producer, queue, ledger, range(n), deadline))
                await ledger.wait_count(min(n // 4, 50))
                cuts_before = proxy.cuts
                await fault(proxy)
                resent = await _bounded(sending, target.timeout * 4, f"publishing {n} messages after the {label} fault")
                await ledger.wait_all(range(n))
                # A fault that is not a cut (a stall) may still end in one when a client gives up.
                faults = max(1, proxy.cuts - cuts_before)
        window = in_flight_window(url, concurrency)
        ledger.report(
            faults * (window + PUBLISH_BATCH) + resent,
            why=f"{faults} fault(s) x (in-flight window {window} of the one consumer + one publish batch of "
            f"{PUBLISH_BATCH} the transport may send again) + {resent} sent again by the test",
        )

    @pytest.mark.faults
    async def test_fault_connection_dropped_mid_flow(self, target: ConformanceTarget, buses: BusFactory) -> None:
        """Catches a transport that loses (or floods with) messages when its connection drops
        while messages flow both ways."""

        async def drop(proxy: TcpProxy) -> None:
            proxy.cut()

        await self._through_proxy(target, buses, drop, "drop")

    @pytest.mark.faults
    async def test_fault_connection_stalled_then_resumed(self, target: ConformanceTarget, buses: BusFactory) -> None:
        """Catches a transport that loses messages, or never resumes, after the network held
        every byte for a second."""

        async def stall(proxy: TcpProxy) -> None:
            proxy.stall()
            await asyncio.sleep(1.0)  # the fault itself: the network holds every byte for a second
            proxy.resume()

        await self._through_proxy(target, buses, stall, "stall")

    @pytest.mark.faults
    async def test_fault_connection_cut_after_bytes(self, target: ConformanceTarget, buses: BusFactory) -> None:
        """Catches a transport that mishandles a connection cut in the middle of a frame."""

        async def cut_after(proxy: TcpProxy) -> None:
            proxy.cut_after(7_777)

        await self._through_proxy(target, buses, cut_after, "cutafter")

    @pytest.mark.faults
    async def test_fault_half_open_connection_is_detected(self, target: ConformanceTarget, buses: BusFactory) -> None:
        """Catches a client that never notices a silent peer (no FIN, no RST: a half-open
        connection past the heartbeat or request timeout), so publishing or consuming hangs
        for good, or that loses what was in flight on the dead connection."""
        scheme = transport_label(target.url).split("-")[0]

        async def go_silent(proxy: TcpProxy) -> None:
            proxy.half_open()

        await self._through_proxy(target, buses, go_silent, "halfopen", options=_QUICK_DETECTION.get(scheme, ""))

    @pytest.mark.faults
    async def test_fault_repeated_cuts_at_growing_offsets(self, target: ConformanceTarget, buses: BusFactory) -> None:
        """Catches a transport that survives one cut but not a cut at another point of its
        protocol (handshake, topology, publish, delivery, ack): the connection is cut after 1
        KiB, 4 KiB, 16 KiB, 64 KiB and 256 KiB of traffic, each time after traffic resumed."""
        upstream, via_proxy = _needs_proxy(target)
        queue = _name("offsets")
        ledger = _ledger("growing-offsets", target)
        concurrency = 4
        batch = 20
        offsets = [1 << 10, 4 << 10, 16 << 10, 64 << 10, 256 << 10]
        cuts_done = asyncio.Event()
        with TcpProxy(upstream) as proxy:
            url = via_proxy(proxy.host, proxy.port)
            consumer = buses("faults", url=url)
            consumer.consume(queue, concurrency=concurrency)(ledger.handle_async)
            producer = buses("producer", url=url)

            async def publish_until_done() -> int:
                # Keeps traffic flowing until every cut happened, a few batches ahead of the
                # consumer, so that each armed cut is reached by real traffic.
                resent, n = 0, 0
                deadline = time.monotonic() + target.timeout * 6
                while not cuts_done.is_set():
                    await ledger.wait_count(max(0, n - 5 * batch), timeout=target.timeout * 4)
                    resent += await _send_all(producer, queue, ledger, range(n, n + batch), deadline, batch=batch)
                    n += batch
                return resent

            async with consumer, producer:
                sending = asyncio.create_task(publish_until_done())
                try:
                    await ledger.wait_count(batch)
                    for nbytes in offsets:
                        before = proxy.cuts
                        proxy.cut_after(nbytes)
                        reached = await asyncio.to_thread(proxy.wait_cut, before, target.timeout * 2)
                        assert reached, f"traffic stopped before {nbytes} more bytes flowed (after {before} cuts)"
                        # Traffic resumed: more messages handled after the cut than before it.
                        await ledger.wait_count(len(ledger.handled_ns()) + batch)
                finally:
                    cuts_done.set()
                resent = await _bounded(sending, target.timeout * 4, "publishing after the last cut")
                await ledger.wait_all()
        window = in_flight_window(url, concurrency)
        faults = len(offsets)
        ledger.report(
            faults * (window + batch) + resent,
            why=f"{faults} cuts x (in-flight window {window} of the one consumer + one publish batch of {batch} "
            f"the transport may send again) + {resent} sent again by the test",
        )

    @pytest.mark.faults
    async def test_fault_cut_while_settling_retries_and_dead_letters(
        self, target: ConformanceTarget, buses: BusFactory
    ) -> None:
        """Catches a settle path that loses a message, or dead-letters one by mistake, when
        its retry re-publish (or delay) or its dead-letter publish straddles a connection
        cut: the connection is cut as the first failure of a message is raised, and again a
        few hundred bytes into the first dead-letter publish. Every fail-once message must be
        handled, every rejected one dead-lettered, nothing else dead-lettered."""
        upstream, via_proxy = _needs_proxy(target)
        queue = _name("settle")
        n = target.count(400, minimum=40)
        ledger = _ledger("settle-cut", target)
        dead = _ledger("settle-cut-dlq", target)
        dead.run = ledger.run
        fail_once = {i for i in range(n) if i % 4 == 1}
        rejected = {i for i in range(n) if i % 4 == 3}
        dead.sent = set(rejected)
        dead.confirm(rejected)
        concurrency = 4
        armed = {"retry": False, "dead": False}
        with TcpProxy(upstream) as proxy:
            url = via_proxy(proxy.host, proxy.port)
            bus = buses("faults", url=url, retry=Retry(max_attempts=3, initial_delay=0.05, max_delay=0.2, jitter=0))

            @bus.consume(queue, concurrency=concurrency)
            async def handle(item: dict[str, Any], envelope: Envelope) -> None:
                i = int(item["n"])
                if i in rejected:
                    if not armed["dead"] and i >= n // 2:
                        armed["dead"] = True
                        proxy.cut_after(300)  # lands inside the dead-letter publish and ack
                    raise Reject("rejected by the test")
                if i in fail_once and envelope.attempt == 1:
                    if not armed["retry"] and i >= n // 4:
                        armed["retry"] = True
                        proxy.cut()  # the retry is settled on a connection that just died
                    raise RuntimeError("fails once")
                ledger.handle(item)

            @bus.consume(f"{queue}.dlq", concurrency=concurrency)
            async def dlq(item: dict[str, Any]) -> None:
                dead.handle(item)

            async with bus:
                deadline = time.monotonic() + target.timeout * 4
                resent = await _send_all(bus, queue, ledger, range(n), deadline)
                ledger.confirmed -= rejected
                await ledger.wait_all()
                await dead.wait_all()
                # A barrier: a message wrongly dead-lettered before this one shows up here too
                # (best effort where the dead-letter queue is not ordered).
                await bus.send(f"{queue}.dlq", dead.item(-1))
                dead.confirm([-1])
                await dead.wait_all()
            assert armed["retry"] and armed["dead"], f"the faults never fired: {armed}"
        window = in_flight_window(url, concurrency)
        bound = 2 * (window + PUBLISH_BATCH) + resent
        why = (
            f"2 cuts x (in-flight window {window} of the one consumer + one publish batch of {PUBLISH_BATCH} the "
            f"transport may send again) + {resent} sent again by the test"
        )
        ledger.report(bound, why=why)
        dead.report(bound, why=why)

    @pytest.mark.faults
    async def test_fault_first_and_every_fifth_fail_once(self, target: ConformanceTarget, buses: BusFactory) -> None:
        """Catches retries that dead-letter, drop or duplicate a message that failed only once
        when many fail at once: the 1st, 6th, 11th ... (every 5th from the first) message
        fails on its first attempt under ``Retry(max_attempts=2)``; all are handled exactly
        once successfully and the dead-letter queue stays empty."""
        queue = _name("failfifth")
        n = target.count(500, minimum=60)
        ledger = _ledger("fail-every-fifth", target, 2)
        dead = _ledger("fail-every-fifth-dlq", target, 2)
        dead.run = ledger.run
        bus = buses("faults", retry=Retry(max_attempts=2, initial_delay=0.05, max_delay=0.2, jitter=0))

        @bus.consume(queue, concurrency=8)
        async def handle(item: dict[str, Any], envelope: Envelope) -> None:
            if int(item["n"]) % 5 == 0 and envelope.attempt == 1:
                raise RuntimeError("fails once")
            ledger.handle(item)

        bus.consume(f"{queue}.dlq")(dead.handle_async)
        async with bus:
            await bus.send_many(queue, ledger.items(range(n)))
            ledger.confirm(range(n))
            await ledger.wait_all()
            await bus.send(f"{queue}.dlq", dead.item(-1))  # barrier: anything dead-lettered came first
            dead.confirm([-1])
            await dead.wait_all()
        # No fault touched the connection: nothing may be handled twice.
        ledger.report(0, why="no connection fault, so nothing was in flight to redeliver")
        dead.report(0, why="the dead-letter queue gets only the barrier")

    @pytest.mark.faults
    async def test_fault_outage_with_live_traffic(self, target: ConformanceTarget, buses: BusFactory) -> None:
        """Catches a transport that loses messages across a 5 s outage (the proxy refuses new
        connections and drops the open ones) with a publisher and a consumer running, that
        lets a broker-client error escape ``publish`` instead of a messagebus error, or that
        confirms a publish while no broker can be reached. The documented rule (docs/faults.md):
        a publish made during an outage shorter than the transport's publish timeout waits
        for the broker and returns once it confirmed; it never raises a raw client error."""
        upstream, via_proxy = _needs_proxy(target)
        queue = _name("outage")
        ledger = _ledger("outage", target)
        concurrency = 8
        log = _PublishLog()
        outage: list[float] = []
        stop = asyncio.Event()
        with TcpProxy(upstream) as proxy:
            url = via_proxy(proxy.host, proxy.port)
            consumer = buses("faults", url=url)
            consumer.consume(queue, concurrency=concurrency)(ledger.handle_async)
            producer = buses("producer", url=url)

            async def publish_live() -> None:
                n = 0
                while not stop.is_set():
                    started = time.monotonic()
                    try:
                        await producer.send(queue, ledger.item(n))
                    except MessageBusError as exc:
                        log.outcomes.append((started, time.monotonic(), type(exc).__name__))
                        # the message may still arrive (sent, unconfirmed); back off after the error
                        await asyncio.sleep(0.05)
                    else:
                        log.outcomes.append((started, time.monotonic(), "ok"))
                        ledger.confirm([n])
                    n += 1

            async with consumer, producer:
                publishing = asyncio.create_task(publish_live())
                try:
                    await ledger.wait_count(20)
                    proxy.refuse()  # returns once every open connection is cut
                    outage.append(time.monotonic())
                    await asyncio.sleep(OUTAGE_SECONDS)  # the fault itself: the broker is unreachable
                    proxy.accept()
                    outage.append(time.monotonic())
                    # Live again: 20 more confirmed publishes after the outage, all handled.
                    after = len(ledger.confirmed) + 20
                    await ledger.handled.wait_until(
                        lambda _: len(ledger.confirmed) >= after or publishing.done(), "20 publishes after the outage"
                    )
                finally:
                    stop.set()
                    # A raw client error escaping publish fails the test here; a publish that
                    # never returns fails it after the bound.
                    try:
                        await asyncio.wait_for(publishing, target.timeout * 2)
                    except TimeoutError:
                        raise AssertionError("publish hung after the outage ended") from None
                await ledger.wait_all()
        begin, end = outage
        # Publishes the outage overlapped: started before it ended, not finished before it began.
        caught = [(st, en, what) for st, en, what in log.outcomes if st < end and en > begin]
        early = [(st - begin, en - begin) for st, en, what in caught if what == "ok" and st >= begin and en < end]
        waited = sum(1 for *_, what in caught if what == "ok")
        raised = sorted({what for *_, what in caught if what != "ok"})
        longest = max((en - st for st, en, _ in caught), default=0.0)
        print(
            f"\nOUTAGE {ledger.transport}: {len(caught)} publishes overlapped the {OUTAGE_SECONDS:.0f}s outage: "
            f"{waited} waited and returned after it, {len(caught) - waited} raised {raised or ''}; "
            f"longest call {longest:.1f}s"
        )
        assert not early, f"publish returned during the outage, with no broker to confirm it: {early[:3]}"
        assert caught, "no publish overlapped the outage"
        assert not raised, (
            f"publish raised {raised} during a {OUTAGE_SECONDS:.0f}s outage; the rule is that it waits and "
            "returns once the broker confirmed (docs/faults.md)"
        )
        window = in_flight_window(url, concurrency)
        ledger.report(
            window + 1,
            why=f"1 outage x (in-flight window {window} of the one consumer + the 1 publish in flight)",
        )

    @pytest.mark.faults
    async def test_fault_producer_killed_after_confirmed_sends(
        self, target: ConformanceTarget, buses: BusFactory
    ) -> None:
        """Catches a publish that returns before the broker really has the message: a
        producer process prints each id once ``send`` returned and is SIGKILLed mid-stream;
        every id it printed must be consumed (and nothing it never sent)."""
        if not target.capabilities.network:
            pytest.skip("an in-process transport cannot be shared with another process")
        queue = _name("prodkill")
        n = target.count(2000, minimum=60)
        ledger = _ledger("producer-killed", target)
        producer = buses("producer")
        async with producer:
            # Declares the queue, so that it keeps what the producer sends before any consumer.
            await producer.send(queue, ledger.item(-1))
            ledger.confirm([-1])
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "messagebus.testing._worker",
            target.url,
            queue,
            "--publish",
            str(n),
            "--run",
            ledger.run,
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert proc.stdout is not None
        confirmed: list[int] = []
        async with asyncio.timeout(target.timeout * 2):
            while len(confirmed) < n // 2:
                line = (await proc.stdout.readline()).decode()
                assert line, "producer exited before it was killed"
                if line.startswith("confirmed"):
                    confirmed.append(int(line.split()[1]))
            proc.send_signal(signal.SIGKILL)
            rest = (await proc.stdout.read()).decode().splitlines()
            await proc.wait()
        confirmed.extend(int(line.split()[1]) for line in rest if line.startswith("confirmed"))
        ledger.confirm(confirmed)
        # The producer sends one at a time, in order: the one after its last confirmed id may
        # have reached the broker unconfirmed; anything later was never sent.
        ledger.sent = {-1, *range(max(confirmed) + 2)}
        assert max(confirmed) < n - 1, "the producer finished before it was killed"
        consumer = buses()
        consumer.consume(queue, concurrency=8)(ledger.handle_async)
        async with consumer:
            await ledger.wait_all()
        ledger.report(0, why="one producer sending each message once, no fault on the consumer")

    @pytest.mark.faults
    async def test_fault_instances_join_and_leave_a_group_mid_stream(
        self, target: ConformanceTarget, buses: BusFactory
    ) -> None:
        """Catches a rebalance that breaks per-key order or loses messages: one instance of a
        group handles a keyed stream, a second joins, then the first leaves, while messages
        flow. Per key, in the order handlers started (one event loop, so one order), each
        message must be the next one of its key, or an earlier one (a redelivery of a tail
        the old owner had not acked, after which the replay goes on in order from there); a
        message of a key handled before an earlier one was ever handled fails the test."""
        if not (target.capabilities.ordering and target.capabilities.ordering_across_instances):
            pytest.skip("transport does not declare per-key ordering across the instances of a group")
        topic = _name("rebalance")
        keys = [f"k{k}" for k in range(8)]
        per_key = target.count(150, minimum=15)
        ledger = _ledger("join-leave", target)
        order: list[tuple[str, int, str]] = []
        concurrency = 4

        def instance(name: str) -> Bus:
            bus = buses("rebalance")

            @bus.subscribe(topic, group="g", concurrency=concurrency)
            async def handle(item: dict[str, Any], envelope: Envelope) -> None:
                assert envelope.key is not None
                order.append((envelope.key, int(item["n"]) // len(keys), name))
                await asyncio.sleep(0)  # let other keys interleave
                ledger.handle(item)

            return bus

        first, second = instance("first"), instance("second")
        producer = buses("producer")
        total = per_key * len(keys)
        async with producer:
            await first.start()

            async def publish_stream() -> None:
                # Message n has key n % 8 and is that key's (n // 8)-th. The producer keeps
                # at most 10 rounds ahead of the consumers, so the stream is still flowing
                # when the group changes.
                for rnd in range(per_key):
                    await ledger.wait_count(max(0, (rnd - 10) * len(keys)))
                    ns = range(rnd * len(keys), (rnd + 1) * len(keys))
                    await producer.publish_many(
                        topic, ledger.items(ns), key=lambda item: keys[int(item["n"]) % len(keys)]
                    )
                    ledger.confirm(ns)

            # The group exists once the first instance started: the stream may begin.
            publishing = asyncio.create_task(publish_stream())
            try:
                await ledger.wait_count(total // 3)
                await second.start()
                await ledger.wait_count(2 * total // 3)
                await first.stop(grace=10)
                await publishing
                await ledger.wait_all()
            finally:
                publishing.cancel()
                await second.stop(grace=10)
        window = in_flight_window(target.url, concurrency)
        violations = _order_violations(order, window)
        assert not violations, f"per-key order broken across the rebalance: {violations[:5]}"
        ledger.report(
            2 * 2 * window,
            why=f"2 group changes x 2 instances x in-flight window {window}",
        )

    # -- existing faults, on the ledger -------------------------------------------------------

    @pytest.mark.faults
    async def test_fault_poison_mixed_into_a_stream(self, target: ConformanceTarget, buses: BusFactory) -> None:
        """Catches poison messages that block, loop or take good messages down with them."""
        queue = _name("poison")
        n = target.count(500, minimum=50)
        ledger = _ledger("poison", target, 1)
        dead: Collector[bytes] = Collector(target.timeout)
        bus = buses()

        @bus.consume(queue, concurrency=4)
        async def handle(item: dict[str, Any]) -> None:
            ledger.handle(item)

        @bus.consume(f"{queue}.dlq")
        async def dlq(envelope: Envelope) -> None:
            dead.add(envelope.body)

        async with bus:
            for i in range(n):
                await bus.send(queue, ledger.item(i))
                ledger.confirm([i])
                if i % 10 == 0:
                    await bus.send(queue, b"\x00poison")
            await ledger.wait_all()
            await dead.wait_for(len(range(0, n, 10)))
        assert set(dead.items) == {b"\x00poison"}
        ledger.report(0, why="no connection fault")

    @pytest.mark.faults
    async def test_fault_hanging_handler_is_timed_out_and_retried(
        self, target: ConformanceTarget, buses: BusFactory
    ) -> None:
        """Catches a hanging handler that holds its message forever instead of timing out."""
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
        """Catches a graceful stop under load that loses or duplicates messages."""
        queue = _name("stopload")
        n = target.count(2000, minimum=100)
        ledger = _ledger("stop-under-load", target, 2)
        producer = buses("producer")
        first = buses()

        @first.consume(queue, concurrency=8)
        async def slow(item: dict[str, Any]) -> None:
            await asyncio.sleep(0.001)  # simulated work, so the stop finds handlers in flight
            ledger.handle(item)

        await producer.start()
        await producer.send_many(queue, ledger.items(range(n)))
        ledger.confirm(range(n))
        await first.start()
        await ledger.wait_count(min(n // 10, 20))
        await first.stop(grace=5)
        second = buses()
        second.consume(queue, concurrency=8)(ledger.handle_async)
        async with second:
            await ledger.wait_all()
        await producer.stop()
        ledger.report(0, why="a graceful stop acks every handled message")

    @pytest.mark.faults
    async def test_fault_consumer_process_killed_or_terminated(
        self, target: ConformanceTarget, buses: BusFactory
    ) -> None:
        """Catches a consumer that acks before its handler ran (SIGKILL loses messages) or
        whose SIGTERM stop is not graceful."""
        if not target.capabilities.network:
            pytest.skip("an in-process transport cannot be shared with another process")
        for how in (signal.SIGKILL, signal.SIGTERM):
            queue = _name(f"kill{int(how)}")
            n = target.count(400, minimum=60)
            ledger = _ledger(f"consumer-{how.name}", target, 2)
            producer = buses("producer")
            async with producer:
                await producer.send_many(queue, ledger.items(range(n)))
                ledger.confirm(range(n))
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
            lines: list[str] = []
            async with asyncio.timeout(target.timeout * 2):
                while sum(1 for line in lines if line.startswith("handled")) < n // 4:
                    line = (await proc.stdout.readline()).decode()
                    assert line, "worker exited early"
                    lines.append(line.strip())
                proc.send_signal(how)
                lines += (await proc.stdout.read()).decode().splitlines()
                await proc.wait()
            if how == signal.SIGTERM:
                assert proc.returncode == 0, "SIGTERM must stop the worker gracefully"
                assert "stopped" in lines
            for line in lines:
                if line.startswith("handled"):
                    _, number, run = line.split()
                    ledger.handle({"n": int(number), "run": run})
            second = buses()
            second.consume(queue, concurrency=8)(ledger.handle_async)
            async with second:
                await ledger.wait_all()
            window = in_flight_window(target.url, 8)
            if how == signal.SIGKILL:
                ledger.report(window, why=f"the killed worker's in-flight window {window}")
            else:
                ledger.report(0, why="a graceful stop acks every handled message")


def _order_violations(order: list[tuple[str, int, str]], window: int) -> list[str]:
    """Check per-key order in the order handlers started (``(key, seq, instance)``).

    - A message may start only once its key's previous message started before it: ``#s``
      handled before ``#s-1`` ever was is a reordering (or a loss being papered over).
    - Going back (``#s`` below the highest number of its key handled so far) is a redelivery
      of a tail that was not acked; that tail cannot be longer than what one consumer holds
      unsettled (``window``), so a deeper jump back is a redelivery of acked messages.
    """
    seen: dict[str, set[int]] = {}
    highest: dict[str, int] = {}
    violations: list[str] = []
    for key, seq, who in order:
        done = seen.setdefault(key, set())
        top = highest.get(key, -1)
        if seq > 0 and seq - 1 not in done:
            violations.append(f"{key}: #{seq} handled by {who} before #{seq - 1}")
        if seq < top and top - seq > window:
            violations.append(f"{key}: #{seq} redelivered to {who} after #{top}, deeper than the window {window}")
        done.add(seq)
        highest[key] = max(top, seq)
    return violations


def _collect_to(col: Collector[int]) -> Callable[[dict[str, Any]], Awaitable[None]]:
    async def handle(item: dict[str, Any]) -> None:
        col.add(item["n"])

    return handle
