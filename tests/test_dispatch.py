"""WorkerPool: bounded concurrency, per-key order, graceful stop."""

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from messagebus.transports import Delivery, WorkerPool


@dataclass(eq=False)
class FakeDelivery:
    """A delivery with no broker behind it: the pool never settles, so nothing is faked."""

    n: int
    key: str | None = None
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    attempt: int = 1
    raw: Any = None
    messaging_attributes: Mapping[str, Any] = field(default_factory=dict)
    topic: str | None = None

    async def ack(self) -> None: ...

    async def retry(self, delay: float, headers: Mapping[str, str]) -> None: ...


async def test_per_key_order_with_concurrency() -> None:
    seen: list[tuple[str | None, int]] = []
    running = 0
    peak = 0
    all_done = asyncio.Event()

    async def handler(d: Delivery) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        seen.append((d.key, d.raw))
        running -= 1
        if len(seen) == 200:
            all_done.set()

    pool = WorkerPool(handler, 4)
    pool.start()
    for i in range(200):
        await pool.submit(FakeDelivery(i, key=f"k{i % 5}", raw=i))
    await asyncio.wait_for(all_done.wait(), 5)
    assert await pool.stop(grace=5) == []
    assert len(seen) == 200
    for k in range(5):
        got = [n for key, n in seen if key == f"k{k}"]
        assert got == sorted(got)
    assert 1 < peak <= 4


async def test_stop_returns_queued_and_cancelled_deliveries() -> None:
    started = asyncio.Event()

    async def handler(d: Delivery) -> None:
        started.set()
        await asyncio.Event().wait()

    pool = WorkerPool(handler, 2)
    pool.start()
    items = [FakeDelivery(i) for i in range(2)]
    for d in items:
        pool.submit_nowait(d)
    await started.wait()
    assert pool.free == 0
    unhandled = await pool.stop(grace=0.01)
    assert sorted(d.n for d in unhandled) == [0, 1]  # type: ignore[attr-defined]


async def test_submit_waits_for_space() -> None:
    release = asyncio.Event()

    async def handler(d: Delivery) -> None:
        await release.wait()

    pool = WorkerPool(handler, 1)
    pool.start()
    await pool.submit(FakeDelivery(0))
    waiting = asyncio.create_task(pool.submit(FakeDelivery(1)))
    await asyncio.sleep(0)
    assert not waiting.done()
    release.set()
    await asyncio.wait_for(waiting, 5)
    await pool.stop(grace=5)


async def test_keyless_work_fans_out_to_every_worker_when_handlers_wait() -> None:
    # Workers are woken one at a time for keyless work; each passes the rest on, so
    # handlers that wait still all run at once.
    release = asyncio.Event()
    running = 0
    all_running = asyncio.Event()

    async def handler(d: Delivery) -> None:
        nonlocal running
        running += 1
        if running == 8:
            all_running.set()
        await release.wait()

    pool = WorkerPool(handler, 8)
    pool.start()
    await asyncio.sleep(0)  # every worker idle
    for i in range(8):
        pool.submit_nowait(FakeDelivery(i))
    await asyncio.wait_for(all_running.wait(), 5)
    release.set()
    assert await pool.stop(grace=5) == []


async def test_handlers_that_never_wait_get_every_delivery() -> None:
    handled: list[int] = []
    done = asyncio.Event()

    async def handler(d: Delivery) -> None:
        handled.append(d.raw)
        if len(handled) == 1000:
            done.set()

    pool = WorkerPool(handler, 16)
    pool.start()
    for i in range(1000):
        if i % 7 == 0:
            await asyncio.sleep(0)  # let workers go idle and be woken again in between
        await pool.submit(FakeDelivery(i, raw=i, key=None if i % 3 else f"k{i % 4}"))
    await asyncio.wait_for(done.wait(), 5)
    assert sorted(handled) == list(range(1000))
    assert await pool.stop(grace=5) == []
    assert pool.held == 0


async def test_keyless_work_is_passed_on_by_a_worker_that_takes_keyed_work() -> None:
    # Worker 0 is woken for keyless work but finds a keyed delivery in its own lane first;
    # it must still wake another worker for the keyless ones while its handler waits.
    release = asyncio.Event()
    keyless_done = asyncio.Event()
    key = next(f"k{n}" for n in range(100) if hash(f"k{n}") % 2 == 0)  # worker 0's lane

    async def handler(d: Delivery) -> None:
        if d.key is not None:
            await release.wait()
        else:
            keyless_done.set()

    pool = WorkerPool(handler, 2)
    pool.start()
    await asyncio.sleep(0)  # both workers idle, worker 0 first in line
    pool.submit_nowait(FakeDelivery(0))  # wakes worker 0
    pool.submit_nowait(FakeDelivery(1, key=key))  # lands in worker 0's lane
    await asyncio.wait_for(keyless_done.wait(), 5)
    release.set()
    assert await pool.stop(grace=5) == []
