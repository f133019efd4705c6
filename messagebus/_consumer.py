"""ConsumerBase: the machinery every transport's running subscription needs, written once.

A worker pool with bounded concurrency and per-key order, background tasks that are
tracked and never die silently, deliveries held until a due time (delayed redelivery), a
fetch loop with back-off for brokers that are polled, and a graceful stop that hands every
unsettled delivery back to the broker. An adapter's consumer subclasses it and supplies the
broker primitives of :class:`~messagebus.transports.DeliverySource` plus two hooks.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import Any, cast

from ._backoff import Backoff, sleep_unless
from ._checks import positive_int
from ._delivery import Delivery
from ._dispatch import WorkerPool
from ._message import AttributeValue
from ._transport import DeliveryHandler, DeliveryLike

__all__ = ["ConsumerBase", "UnorderedHandler", "check_concurrency"]

logger = logging.getLogger("messagebus")

_NO_ATTRIBUTES: Mapping[str, AttributeValue] = {}


def check_concurrency(concurrency: object, what: str) -> int:
    """``concurrency`` if it is an int >= 1 (not a bool); else :class:`ConfigurationError`."""
    return positive_int(concurrency, f"concurrency of {what}")


class UnorderedHandler:
    """Base of a delivery handler that wants no per-key order: every consumer built on
    :class:`ConsumerBase` hands it deliveries of one key without waiting for the earlier ones
    to settle. The dead-letter tools are one: they hold what they read unsettled, and a held
    message must not hide the next message of its key. Subclasses define ``__call__`` as a
    :data:`DeliveryHandler`."""

    async def __call__(self, delivery: DeliveryLike) -> None:
        raise NotImplementedError


class ConsumerBase:
    """Base of a transport's consumer (the :class:`~messagebus.transports.Consumer` that
    ``Transport.subscribe`` returns).

    Subclasses implement ``settle_ack``, ``settle_redeliver``, ``release`` and ``describe``
    (:class:`~messagebus.transports.DeliverySource`), and may override :meth:`stop_fetching`
    (stop receiving: cancel a broker-side consumer, wake a poll loop) and :meth:`close`
    (after the hand-back: drain settle batches, close a channel, leave a group).

    Deliveries reach the handler through :meth:`submit_nowait` / :meth:`submit` (pool) or
    :meth:`hold` (after a delay). A delivery still unsettled after its handler call returned
    (its settle failed) is handed back at once. Not thread-safe: use it from the event loop
    that started it.
    """

    def __init__(
        self,
        handler: DeliveryHandler,
        concurrency: int,
        *,
        name: str,
        ordered: bool = True,
        capacity: int | None = None,
        log: logging.Logger = logger,
    ) -> None:
        """Raises :class:`ConfigurationError` for a concurrency that is not an int >= 1."""
        check_concurrency(concurrency, name)
        self.name = name
        self.handler = handler
        self.log = log
        self.pool = WorkerPool(
            self.pool_handler(handler),
            concurrency,
            ordered=ordered and not isinstance(handler, UnorderedHandler),
            name=name,
            capacity=capacity,
            finished=self._finished,
        )
        self.stopping = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loops: set[asyncio.Task[Any]] = set()
        self._held: dict[Delivery, asyncio.TimerHandle] = {}
        self._stopped: asyncio.Future[None] | None = None

    # -- DeliverySource primitives: the adapter's part ----------------------------------------

    def settle_ack(self, delivery: Delivery) -> Awaitable[None] | None:
        """See :class:`~messagebus.transports.DeliverySource`."""
        raise NotImplementedError

    def settle_redeliver(self, delivery: Delivery, delay: float, headers: Mapping[str, str]) -> Awaitable[None] | None:
        """See :class:`~messagebus.transports.DeliverySource`."""
        raise NotImplementedError

    def release(self, deliveries: Sequence[Delivery]) -> Awaitable[None] | None:
        """See :class:`~messagebus.transports.DeliverySource`."""
        raise NotImplementedError

    def describe(self) -> str:
        """Where deliveries come from, for messages (default: the consumer's name)."""
        return self.name

    def raw_of(self, delivery: Delivery) -> Any:
        """The native message a user sees as ``Envelope.raw`` (default: ``delivery.native``)."""
        return delivery.native

    def attributes_of(self, delivery: Delivery) -> Mapping[str, AttributeValue]:
        """Telemetry attributes of ``delivery`` (default: none)."""
        return _NO_ATTRIBUTES

    # -- hooks ----------------------------------------------------------------------------

    async def stop_fetching(self) -> None:
        """Stop taking new messages from the broker (called first by :meth:`stop`)."""

    async def close(self) -> None:
        """Release broker resources after the hand-back (called last by :meth:`stop`)."""

    # -- running --------------------------------------------------------------------------

    def start(self) -> None:
        """Start the workers on the running loop. Idempotent."""
        self.pool.start()

    @property
    def stopped(self) -> bool:
        """True once :meth:`stop` began."""
        return self.stopping.is_set()

    def spawn(self, coro: Coroutine[Any, Any, Any], *, name: str, loop: bool = False) -> asyncio.Task[Any]:
        """Run ``coro`` in a tracked task: an unexpected exception is logged, never lost.

        A ``loop`` task (a fetch, heartbeat or commit loop) is cancelled by :meth:`stop`
        after the workers finished; other tasks (settle batches in flight) are awaited."""
        task = asyncio.get_running_loop().create_task(coro, name=f"messagebus-{name}")
        (self._loops if loop else self._tasks).add(task)
        task.add_done_callback(self._task_done)
        return task

    def track(self, task: asyncio.Task[Any]) -> None:
        """Track a task made elsewhere (e.g. by a :class:`Batcher` given ``track=``): its
        failure is logged and :meth:`stop` waits for it."""
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        self._loops.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.log.error("background task %s of %s failed", task.get_name(), self.name, exc_info=task.exception())

    def submit_nowait(self, delivery: Delivery) -> bool:
        """Hand ``delivery`` to the workers if there is room; ``False`` (nothing done) if the
        pool is full, so the caller awaits :meth:`submit` instead."""
        pool = self.pool
        if not pool.free:
            return False
        pool.submit_nowait(delivery)
        return True

    async def submit(self, delivery: Delivery) -> None:
        """Hand ``delivery`` to the workers, waiting while the pool is full; once stopping
        (or if cancelled while waiting), it is handed back to the broker instead."""
        try:
            await self.pool.wait_for_space()
        except asyncio.CancelledError:
            self.spawn(self._hand_back([delivery]), name=f"hand-back-{self.name}")
            raise
        if self.stopping.is_set():
            await self._hand_back([delivery])
            return
        self.pool.submit_nowait(delivery)

    def hold(self, delivery: Delivery, delay: float, due: Callable[[Delivery], None] | None = None) -> None:
        """Keep ``delivery`` back for ``delay`` seconds, then call ``due(delivery)`` (default:
        submit it to the workers). Held deliveries still unreleased at :meth:`stop` are
        handed back to the broker. Holding costs one timer, no task."""
        callback = due or self._submit_held
        loop = asyncio.get_running_loop()
        self._held[delivery] = loop.call_later(max(delay, 0.0), self._release_held, delivery, callback)

    @property
    def held(self) -> int:
        """How many deliveries are held until due."""
        return len(self._held)

    def drop_held(self, deliveries: Sequence[Delivery]) -> None:
        """Forget held ``deliveries`` without handing them back (e.g. their partition was
        revoked and the broker redelivers them to the new owner)."""
        for delivery in deliveries:
            handle = self._held.pop(delivery, None)
            if handle is not None:
                handle.cancel()

    def _release_held(self, delivery: Delivery, callback: Callable[[Delivery], None]) -> None:
        if self._held.pop(delivery, None) is not None and not self.stopping.is_set():
            callback(delivery)

    def _submit_held(self, delivery: Delivery) -> None:
        if not self.submit_nowait(delivery):
            self.spawn(self.submit(delivery), name=f"submit-{self.name}")

    async def fetch_loop(
        self,
        fetch: Callable[[int], Awaitable[Sequence[Delivery]]],
        *,
        describe_error: Callable[[Exception], str],
        backoff: Backoff | None = None,
        idle: float = 0.0,
    ) -> None:
        """Poll ``fetch(room)`` until stopping and submit what it returns, waiting for room in
        the pool first. A failed fetch is logged (``describe_error`` says what went wrong)
        and retried with back-off, so the consumer never dies silently nor spins; after an
        empty fetch the loop waits ``idle`` seconds (for a fetch that returns at once when
        there is nothing). What was fetched but not handed to the workers when the stop
        began (or the loop was cancelled) is handed back in a task :meth:`stop` waits for."""
        backoff = backoff or Backoff(0.1, 5.0)
        pool = self.pool
        stopping = self.stopping
        while not stopping.is_set():
            if not pool.free:
                await pool.wait_for_space()
                continue
            try:
                deliveries = await fetch(pool.free)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.log.warning("%s; retrying", describe_error(exc))
                await backoff.wait(stopping)
                continue
            backoff.reset()
            if not deliveries:
                if idle > 0:
                    await sleep_unless(stopping, idle)
                continue
            submitted = 0
            try:
                for delivery in deliveries:
                    if stopping.is_set():
                        break
                    if not self.submit_nowait(delivery):
                        await self.pool.wait_for_space()
                        if stopping.is_set():
                            break
                        self.pool.submit_nowait(delivery)
                    submitted += 1
            finally:
                rest = deliveries[submitted:]
                if rest:
                    self.spawn(self._hand_back(list(rest)), name=f"hand-back-{self.name}")

    def pool_handler(self, handler: DeliveryHandler) -> DeliveryHandler:
        """What the worker pool calls for each delivery: by default the bus's ``handler``
        itself (no wrapper coroutine per message). Override to wrap it, e.g. to skip
        deliveries of a partition that was revoked meanwhile."""
        return handler

    def _finished(self, submitted: DeliveryLike) -> None:
        delivery = cast(Delivery, submitted)  # only Delivery objects are ever submitted
        if not delivery.settled and not self.stopping.is_set():
            # Its settle failed: hand it back now rather than when the broker times it out.
            self.spawn(self._hand_back([delivery]), name=f"hand-back-{self.name}")

    async def _hand_back(self, deliveries: Sequence[Delivery]) -> None:
        todo = [d for d in deliveries if not d.settled]
        if not todo:
            return
        for delivery in todo:
            delivery.settled = True
        try:
            pending = self.release(todo)
            if pending is not None:
                await pending
        except Exception:
            self.log.warning(
                "handing %d unsettled messages of %s back failed; the broker redelivers them later",
                len(todo),
                self.describe(),
                exc_info=True,
            )

    async def stop(self, grace: float) -> None:
        """Stop fetching; give running handler calls ``grace`` seconds; cancel the rest; hand
        every unsettled delivery (queued, held, cancelled) back to the broker; close.
        Idempotent: a second call waits for the first."""
        if self._stopped is not None:
            await asyncio.shield(self._stopped)
            return
        self._stopped = asyncio.get_running_loop().create_future()
        try:
            self.stopping.set()
            await self.stop_fetching()
            unhandled: list[Delivery] = [d for d in await self.pool.stop(grace) if isinstance(d, Delivery)]
            for delivery, handle in list(self._held.items()):
                handle.cancel()
                unhandled.append(delivery)
            self._held.clear()
            loops = list(self._loops)
            for task in loops:
                task.cancel()
            if loops:
                await asyncio.gather(*loops, return_exceptions=True)
            await self._hand_back(unhandled)
            while self._tasks:
                await asyncio.gather(*list(self._tasks), return_exceptions=True)
            await self.close()
        finally:
            self._stopped.set_result(None)
