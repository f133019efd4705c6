"""Batch handlers: ``subscribe(..., batch=N, batch_timeout=s)`` with a ``list[T]`` parameter.

The transport delivers and the bus settles message by message, as for any handler: each
delivery runs the middleware chain (one trace span, one metric per message) down to a
:class:`BatchCollector`, which decodes it alone (an undecodable one is dead-lettered alone
and never joins a batch) and parks it in the current batch. The batch is handed to the user
function when it holds N messages or ``batch_timeout`` seconds after its first one came;
its outcome then settles each message of it: returned, each is acked; raised, each fails
with that exception and is retried or dead-lettered by its own ``Retry`` count.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from ._message import Envelope
from ._middleware import Handler

__all__ = ["BatchCall", "BatchCollector", "Decode"]

logger = logging.getLogger("messagebus")

#: Decodes one message's body for the batch (raises :class:`DecodeError`).
Decode = Callable[[Envelope], object]
#: Calls the user's batch function with the decoded items and their envelopes.
BatchCall = Callable[[list[object], list[Envelope]], Awaitable[None]]


class _Batch:
    __slots__ = ("done", "envelopes", "items", "task", "timer")

    def __init__(self, done: asyncio.Future[None]) -> None:
        self.done = done
        self.items: list[object] = []
        self.envelopes: list[Envelope] = []
        self.task: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None


def _observe(done: asyncio.Future[None]) -> None:
    # Every waiter may have been cancelled: the outcome was still seen, so no warning.
    if not done.cancelled():
        done.exception()


class BatchCollector:
    """Gathers messages of one subscription into batches of at most ``size`` and runs
    ``call`` on each, ``timeout`` seconds after a batch's first message at the latest, with
    at most ``concurrency`` calls at once (the transport is given room for one more batch,
    so the next one fills while a call runs).

    :meth:`handler` is the innermost handler of the subscription's chain. A handler call
    that is cancelled (stop's grace ran out) leaves its message unsettled: it is taken out
    of a batch not yet started, or cancels the running batch (whose messages are then all
    redelivered). Not thread-safe: use it from one event loop.
    """

    __slots__ = ("_call", "_current", "_decode", "_running", "_size", "_timeout", "_where")

    def __init__(
        self, decode: Decode, call: BatchCall, size: int, timeout: float, where: str, *, concurrency: int = 1
    ) -> None:
        self._running = asyncio.Semaphore(concurrency)
        self._decode = decode
        self._call = call
        self._size = size
        self._timeout = timeout
        self._where = where
        self._current: _Batch | None = None

    def handler(self) -> Handler:
        """The per-message handler: decode, join the batch, return or raise its outcome."""
        return self._join

    async def _join(self, envelope: Envelope) -> None:
        item = self._decode(envelope)
        batch = self._current
        if batch is None:
            loop = asyncio.get_running_loop()
            batch = self._current = _Batch(loop.create_future())
            batch.done.add_done_callback(_observe)
            batch.timer = loop.call_later(self._timeout, self._flush, batch)
        batch.items.append(item)
        batch.envelopes.append(envelope)
        if len(batch.items) >= self._size:
            self._flush(batch)
        try:
            await asyncio.shield(batch.done)
        except asyncio.CancelledError:
            if batch.task is None:
                # Not started: leave this message out, the rest still go.
                i = next(i for i, e in enumerate(batch.envelopes) if e is envelope)
                del batch.items[i], batch.envelopes[i]
                if not batch.items and self._current is batch:
                    self._current = None
                    if batch.timer is not None:
                        batch.timer.cancel()
            elif not batch.task.done():
                batch.task.cancel()
            raise

    def _flush(self, batch: _Batch) -> None:
        if self._current is batch:
            self._current = None
        if batch.timer is not None:
            batch.timer.cancel()
            batch.timer = None
        if batch.task is not None or not batch.items:
            return
        batch.task = asyncio.get_running_loop().create_task(self._run(batch), name=f"messagebus-batch-{self._where}")

    async def _run(self, batch: _Batch) -> None:
        done = batch.done
        try:
            async with self._running:
                await self._call(list(batch.items), list(batch.envelopes))
        except asyncio.CancelledError:
            if not done.done():
                done.cancel()
        except Exception as exc:
            if not done.done():
                done.set_exception(exc)
        else:
            if not done.done():
                done.set_result(None)
        finally:
            if not done.done():  # anything else ended the call (KeyboardInterrupt ...): no outcome
                done.cancel()
