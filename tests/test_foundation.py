"""The adapter foundation in messagebus.transports: Delivery, ConsumerBase, Backoff, Batcher,
ErrorMap. The kit proves them through memory:// and the skeleton adapter; these tests pin
the edges that a broker rarely hits on cue."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from messagebus import ConfigurationError, ConnectError, ConsumeError, PublishError, TransportError
from messagebus.transports import Backoff, Batcher, BlockingWorker, ConsumerBase, Delivery, DeliveryLike, ErrorMap


class Source(ConsumerBase):
    """A ConsumerBase whose broker primitives record what the consumer asked for."""

    def __init__(self, concurrency: int = 1, *, fail_ack: BaseException | None = None) -> None:
        self.handled: list[int] = []
        self.started = asyncio.Event()
        self.gate = asyncio.Event()
        super().__init__(self._handle, concurrency, name="test")
        self.acked: list[int] = []
        self.redelivered: list[tuple[int, float, Mapping[str, str]]] = []
        self.released: list[int] = []
        self.fail_ack = fail_ack

    async def _handle(self, delivery: DeliveryLike) -> None:
        assert isinstance(delivery, Delivery)
        self.handled.append(delivery.native)
        self.started.set()
        await self.gate.wait()
        await delivery.ack()

    def settle_ack(self, delivery: Delivery) -> None:
        if self.fail_ack is not None:
            raise self.fail_ack
        self.acked.append(delivery.native)

    def settle_redeliver(self, delivery: Delivery, delay: float, headers: Mapping[str, str]) -> None:
        self.redelivered.append((delivery.native, delay, headers))

    def release(self, deliveries: Sequence[Delivery]) -> None:
        self.released.extend(d.native for d in deliveries)

    def describe(self) -> str:
        return "test queue 'q'"


def delivery(source: Source, n: int) -> Delivery:
    return Delivery(source, n, b"{}", {}, None, 1)


async def test_a_delivery_settles_once() -> None:
    """Bug caught: a second settle call (ack after retry) reached the broker twice."""
    source = Source()
    d = delivery(source, 1)
    await d.retry(0.5, {"h": "v"})
    await d.ack()
    await d.retry(1.0, {})
    assert source.redelivered == [(1, 0.5, {"h": "v"})]
    assert source.acked == []
    assert d.settled


async def test_a_failed_settle_is_a_chained_consume_error_and_leaves_it_unsettled() -> None:
    """Bug caught: a native client error escaped the settle bare, and the delivery counted as
    settled so that nothing handed it back."""
    native = OSError("channel closed")
    source = Source(fail_ack=native)
    d = delivery(source, 1)
    with pytest.raises(ConsumeError, match="cannot ack a message from test queue 'q': channel closed") as info:
        await d.ack()
    assert info.value.__cause__ is native
    assert not d.settled


async def test_cancellation_passes_through_a_settle() -> None:
    """Bug caught: a cancelled settle turned into a ConsumeError and the cancel was lost."""
    source = Source(fail_ack=asyncio.CancelledError())
    with pytest.raises(asyncio.CancelledError):
        await delivery(source, 1).ack()


def test_consumer_concurrency_is_checked_with_a_configuration_error() -> None:
    """Bug caught: a concurrency of 0 raised a bare ValueError from the worker pool."""
    with pytest.raises(ConfigurationError, match="concurrency of test must be an int >= 1, got 0"):
        Source(0)


async def test_fetched_deliveries_waiting_for_room_are_handed_back_at_stop() -> None:
    """Bug caught: deliveries a fetch returned while the pool was full were lost from the
    hand-back when stop cancelled the fetch loop (hidden until the broker's lease ran out)."""
    source = Source(concurrency=1)
    source.start()
    fetched = asyncio.Event()
    calls = 0

    async def fetch(room: int) -> list[Delivery]:
        nonlocal calls
        calls += 1
        if calls > 1:
            await asyncio.Event().wait()  # nothing more: block like a long poll
        fetched.set()
        return [delivery(source, n) for n in range(5)]

    source.spawn(source.fetch_loop(fetch, describe_error=str), name="fetch", loop=True)
    await asyncio.wait_for(fetched.wait(), 5)
    await asyncio.wait_for(source.started.wait(), 5)  # the first delivery is in its handler
    await source.stop(0.0)
    # 0 was cancelled in its handler; 1 and 2..4 waited in the pool or the fetch loop.
    assert sorted(source.released) == [0, 1, 2, 3, 4]


async def test_held_deliveries_are_handed_back_at_stop() -> None:
    """Bug caught: a delivery held until due was forgotten by stop (never redelivered)."""
    source = Source()
    source.start()
    source.hold(delivery(source, 7), 3600)
    assert source.held == 1
    await source.stop(1.0)
    assert source.released == [7]


async def test_fetch_errors_back_off_and_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    """Bug caught: a failing fetch killed the consumer silently, or spun without a pause."""
    source = Source()
    source.start()
    failures = 0
    recovered = asyncio.Event()

    async def fetch(room: int) -> list[Delivery]:
        nonlocal failures
        if failures < 3:
            failures += 1
            raise OSError("broker away")
        recovered.set()
        await asyncio.Event().wait()
        return []

    source.spawn(
        source.fetch_loop(fetch, describe_error=lambda e: f"fetch failed: {e}", backoff=Backoff(0.001, 0.01)),
        name="fetch",
        loop=True,
    )
    await asyncio.wait_for(recovered.wait(), 5)
    await source.stop(0.0)
    assert [r.getMessage() for r in caplog.records if "fetch failed" in r.getMessage()] == [
        "fetch failed: broker away; retrying"
    ] * 3


async def test_retry_for_retries_transient_failures_then_returns() -> None:
    """Bug caught: a connect loop that gives up on the first refused connection, or does not
    hand back the attempt's result."""
    calls: list[float] = []

    async def attempt(deadline: float) -> str:
        calls.append(deadline)
        if len(calls) < 3:
            raise OSError("refused")
        return "connected"

    result = await Backoff(0.001, 0.002).retry_for(
        5.0, attempt, transient=lambda e: isinstance(e, OSError), give_up=lambda e, t: ConnectError(str(e))
    )
    assert result == "connected"
    assert len(calls) == 3 and len(set(calls)) == 1, "every attempt sees the same overall deadline"


async def test_retry_for_gives_up_at_once_on_a_permanent_failure() -> None:
    """Bug caught: retrying wrong credentials until the deadline (a slow, misleading failure),
    or losing the native error (it must be chained) and whether retrying was tried."""
    calls = 0

    async def attempt(deadline: float) -> None:
        nonlocal calls
        calls += 1
        raise PermissionError("bad password")

    with pytest.raises(ConnectError, match="permanent") as info:
        await Backoff(0.001, 0.002).retry_for(
            5.0,
            attempt,
            transient=lambda e: not isinstance(e, PermissionError),
            give_up=lambda e, t: ConnectError("transient" if t else "permanent"),
        )
    assert calls == 1
    assert isinstance(info.value.__cause__, PermissionError)


async def test_retry_for_stops_at_its_deadline() -> None:
    """Bug caught: a retry loop with no bound (connect() hanging forever on a dead broker)."""

    async def attempt(deadline: float) -> None:
        raise OSError("unreachable")

    retrying = Backoff(0.01, 0.02).retry_for(
        0.05,
        attempt,
        transient=lambda e: True,
        give_up=lambda e, t: ConnectError("gave up" if t else "permanent"),
    )
    with pytest.raises(ConnectError, match="gave up") as info:
        await asyncio.wait_for(retrying, 10)
    assert isinstance(info.value.__cause__, OSError)


def test_backoff_grows_to_its_cap_and_resets() -> None:
    """Bug caught: a back-off that never grows (hammering a broker) or never comes back down."""
    backoff = Backoff(0.1, 0.5, jitter=0.0)
    assert [backoff.next() for _ in range(5)] == [0.1, 0.2, 0.4, 0.5, 0.5]
    backoff.reset()
    assert backoff.next() == 0.1
    with pytest.raises(ValueError, match="0 < initial <= maximum"):
        Backoff(1.0, 0.5)


async def test_backoff_wait_returns_early_on_stop() -> None:
    """Bug caught: a stop waited out a long back-off."""
    stop = asyncio.Event()
    stop.set()
    assert await Backoff(60, 60).wait(stop) is False


async def test_batcher_groups_entries_and_fails_them_one_by_one() -> None:
    """Bug caught: one failed entry failed its whole batch, or batches exceeded the limit."""
    calls: list[list[int]] = []

    async def call(entries: list[int]) -> list[int | BaseException]:
        calls.append(entries)
        return [PublishError(f"refused {e}") if e == 3 else e * 10 for e in entries]

    batcher: Batcher[int, int] = Batcher(call, max_entries=2)
    futures = [batcher.add(n) for n in range(5)]
    results = await asyncio.gather(*futures, return_exceptions=True)
    await batcher.drain()
    assert calls == [[0, 1], [2, 3], [4]]
    assert results[:3] == [0, 10, 20] and results[4] == 40
    assert isinstance(results[3], PublishError)


async def test_batcher_maps_a_failed_call_for_every_entry() -> None:
    """Bug caught: a batch call that raised left its entries' futures pending for ever."""

    async def call(entries: list[int]) -> list[int]:
        raise OSError("connection reset")

    batcher: Batcher[int, int] = Batcher(call, max_entries=10, map_error=lambda e: ConnectError(f"sending: {e}"))
    futures = [batcher.add(n) for n in range(3)]
    results = await asyncio.gather(*futures, return_exceptions=True)
    assert all(isinstance(r, ConnectError) and isinstance(r.__cause__, OSError) for r in results)
    assert len({id(r) for r in results}) == 3  # one error object per waiter


def test_error_map_uses_the_first_matching_rule_and_chains() -> None:
    """Bug caught: native errors escaping unmapped, or mapped without their cause."""

    def refused(exc: BaseException, what: str, default: type[Any]) -> ConnectError:
        return ConnectError(f"{what}: the broker refused the connection")

    errors = ErrorMap((ConnectionRefusedError, refused), (TimeoutError, ConnectError))
    native = ConnectionRefusedError(111, "refused")
    mapped = errors.map(native, PublishError, "publishing to q")
    assert isinstance(mapped, ConnectError) and mapped.__cause__ is native
    assert str(mapped) == "publishing to q: the broker refused the connection"
    assert str(errors.map(TimeoutError(), PublishError, "x")) == "x: TimeoutError"
    other = errors.map(KeyError("k"), PublishError, "publishing to q")
    assert type(other) is PublishError and str(other) == "publishing to q: KeyError: 'k'"
    ours = TransportError("already ours")
    assert errors.map(ours, PublishError, "x") is ours


async def test_blocking_worker_returns_results_and_raises_errors() -> None:
    """Bug caught: a worker that loses a call's result or swallows its exception."""
    worker = BlockingWorker("test-worker")
    try:
        assert await worker.call(lambda: 42, lambda result: None) == 42

        def fail() -> int:
            raise OSError("boom")

        with pytest.raises(OSError, match="boom"):
            await worker.call(fail, lambda result: None)
    finally:
        worker.close()


async def test_blocking_worker_cancel_returns_at_once_and_hands_the_result_over() -> None:
    """Bug caught: a stop that waits for a blocking call to finish (SQS's 20 s long poll), or
    drops what the abandoned call returned (messages received by an abandoned poll lost
    until their visibility timeout instead of handed back)."""
    release, started, handed_back = threading.Event(), threading.Event(), threading.Event()
    handed: list[str] = []

    def long_poll() -> str:
        started.set()
        release.wait(30)
        return "messages"

    def abandoned(result: str) -> None:
        handed.append(result)
        handed_back.set()

    worker = BlockingWorker("test-worker")
    try:
        call = asyncio.ensure_future(worker.call(long_poll, abandoned))
        assert await asyncio.to_thread(started.wait, 5)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(call, 5)  # returns while long_poll still blocks
        assert not release.is_set() and handed == []
        release.set()
        assert await asyncio.to_thread(handed_back.wait, 5)
        assert handed == ["messages"]
        assert await worker.call(lambda: "next", lambda result: None) == "next"
    finally:
        worker.close()
