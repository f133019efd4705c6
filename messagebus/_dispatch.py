"""WorkerPool: runs a delivery handler with bounded concurrency and per-key order.

Every transport needs the same thing between "the broker handed us a message" and "the
handler runs": at most N handler calls in flight, messages with one key handled one after
another in arrival order, back-pressure when full, and a graceful stop that reports what was
never handled. Transports share this one implementation.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable

from ._transport import DeliveryHandler, DeliveryLike

__all__ = ["WorkerPool"]

logger = logging.getLogger("messagebus")


class WorkerPool:
    """Calls ``handler`` for submitted deliveries with at most ``concurrency`` in flight.

    Deliveries with the same key run one at a time in submission order (when ``ordered``);
    keyless ones go to whichever worker is free. Not thread-safe: use it from the event loop
    it was started on.

    Keyless work wakes idle workers one at a time: a woken worker that takes a delivery and
    sees more queued wakes the next one. A handler that never suspends thus drains the queue
    in one worker without a task switch per message, while handlers that wait on I/O still
    fan out to every worker. ``handler`` should not raise (the bus settles every outcome); an
    exception that escapes is logged and the worker goes on.
    """

    __slots__ = (
        "_capacity",
        "_closing",
        "_count",
        "_finished",
        "_handler",
        "_idle",
        "_lanes",
        "_loop",
        "_n",
        "_name",
        "_ordered",
        "_running",
        "_shared",
        "_space",
        "_tasks",
        "_waiters",
        "_waking",
    )

    def __init__(
        self,
        handler: DeliveryHandler,
        concurrency: int,
        *,
        ordered: bool = True,
        name: str = "",
        capacity: int | None = None,
        finished: Callable[[DeliveryLike], None] | None = None,
    ) -> None:
        """``capacity`` is the most deliveries held at once, queued plus running (default and
        minimum: ``concurrency``). A transport that already has a batch in memory may queue it
        whole, so its fetch loop and the workers take turns once per batch, not per message.
        ``finished(delivery)`` is called after each handler call returned (a plain call: no
        coroutine frame per message), e.g. to hand back what the call left unsettled.
        Raises ``ValueError`` for a concurrency below 1."""
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        self._handler = handler
        self._finished = finished
        self._n = concurrency
        self._capacity = max(concurrency, capacity or 0)
        self._ordered = ordered
        self._name = name
        self._lanes: list[deque[DeliveryLike]] = [deque() for _ in range(concurrency)]
        self._shared: deque[DeliveryLike] = deque()
        self._running: list[DeliveryLike | None] = [None] * concurrency
        self._waiters: list[asyncio.Future[bool] | None] = [None] * concurrency
        self._idle: deque[int] = deque()
        self._space: deque[asyncio.Future[None]] = deque()
        self._tasks: list[asyncio.Task[None]] = []
        self._count = 0
        # Workers woken for keyless work that have not yet taken any: while one is on its
        # way, a new keyless delivery needs no further wake-up.
        self._waking = 0
        self._closing = False
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def concurrency(self) -> int:
        """The most handler calls in flight at once."""
        return self._n

    @property
    def free(self) -> int:
        """How many more deliveries can be submitted without waiting."""
        return self._capacity - self._count

    @property
    def held(self) -> int:
        """Deliveries submitted and not yet finished (queued plus running)."""
        return self._count

    def start(self) -> None:
        """Start the workers on the running loop. Idempotent."""
        if self._tasks:
            return
        self._loop = asyncio.get_running_loop()
        self._tasks = [
            self._loop.create_task(self._work(i), name=f"messagebus-worker-{self._name}-{i}") for i in range(self._n)
        ]

    def submit_nowait(self, delivery: DeliveryLike) -> None:
        """Queue ``delivery``; the caller must have checked :attr:`free` (or it overfills)."""
        self._count += 1
        key = delivery.key
        if self._ordered and key is not None and self._n > 1:
            i = hash(key) % self._n
            self._lanes[i].append(delivery)
            waiter = self._waiters[i]
            if waiter is not None:
                self._waiters[i] = None
                self._idle.remove(i)
                if not waiter.done():
                    waiter.set_result(False)
            return
        if self._n == 1:
            self._lanes[0].append(delivery)
        else:
            self._shared.append(delivery)
        if not self._waking:
            self._wake_one()

    def _wake_one(self) -> None:
        while self._idle:
            i = self._idle.popleft()
            waiter = self._waiters[i]
            self._waiters[i] = None
            if waiter is not None and not waiter.done():
                waiter.set_result(True)
                self._waking += 1
                return

    async def submit(self, delivery: DeliveryLike) -> None:
        """Queue ``delivery``, waiting while the pool is full."""
        await self.wait_for_space()
        self.submit_nowait(delivery)

    async def wait_for_space(self) -> None:
        """Return once at least one more delivery can be submitted."""
        while self._count >= self._capacity:
            assert self._loop is not None
            fut = self._loop.create_future()
            self._space.append(fut)
            await fut

    async def stop(self, grace: float) -> list[DeliveryLike]:
        """Stop taking work; let running calls finish for up to ``grace`` seconds; cancel the
        rest. Returns the deliveries that were never finished (queued, or cancelled mid-call),
        so the transport can hand them back to the broker. Idempotent."""
        self._closing = True
        unhandled: list[DeliveryLike] = list(self._shared)
        self._shared.clear()
        for lane in self._lanes:
            unhandled.extend(lane)
            lane.clear()
        for i, waiter in enumerate(self._waiters):
            self._waiters[i] = None
            if waiter is not None and not waiter.done():
                waiter.set_result(False)
        self._idle.clear()
        tasks = [t for t in self._tasks if not t.done()]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=max(grace, 0.0))
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        unhandled.extend(d for d in self._running if d is not None)
        self._running = [None] * self._n
        self._count = 0
        for fut in self._space:
            if not fut.done():
                fut.set_result(None)
        return unhandled

    async def _work(self, i: int) -> None:
        assert self._loop is not None
        loop = self._loop
        handler = self._handler
        finished = self._finished
        lane = self._lanes[i]
        shared = self._shared
        while True:
            # Own lane first (keyed messages), then the shared one (keyless).
            if lane:
                delivery = lane.popleft()
            elif shared:
                delivery = shared.popleft()
            else:
                if self._closing:
                    return
                fut: asyncio.Future[bool] = loop.create_future()
                self._waiters[i] = fut
                self._idle.append(i)
                if await fut:  # woken by _wake_one: no longer on its way once running
                    self._waking -= 1
                continue
            if shared and not self._waking:
                self._wake_one()  # pass keyless work on, in case this handler waits
            self._running[i] = delivery
            try:
                await handler(delivery)
            except Exception:
                # Only a bug in the settling code gets here; the broker redelivers what was not settled.
                logger.exception(
                    "delivery handler failed unexpectedly",
                    extra={"messaging_destination": self._name, "messaging_attempt": delivery.attempt},
                )
            if finished is not None:
                finished(delivery)
            self._running[i] = None
            self._count -= 1
            space = self._space
            while space:
                fut2 = space.popleft()
                if not fut2.done():
                    fut2.set_result(None)
                    break
            if self._closing:
                return
