"""Batcher: turns many single settle or publish requests into batch calls of the broker.

SQS deletes ten messages per call, Pub/Sub acknowledges many ack ids per call, and a
pipelined publish confirms many messages at once; a transport hands its batch API to a
:class:`Batcher` and keeps the one-request-at-a-time shape in its own code.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

__all__ = ["BatchCall", "Batcher"]

E = TypeVar("E")
R = TypeVar("R")

#: Sends one batch; returns one result per entry, in order: a value, or the exception that
#: failed that entry alone. Raising fails every entry of the batch.
BatchCall = Callable[[list[E]], Awaitable[Sequence["R | BaseException"]]]


class Batcher(Generic[E, R]):
    """Collects entries for one batch API and sends them together.

    :meth:`add` returns a future resolved with the entry's result or failed with its error.
    Entries added in the same event-loop turn (plus ``linger`` seconds) share a call; a batch
    is sent at once when it holds ``max_entries`` entries or ``max_bytes``. A call that raises
    fails each of its entries with ``map_error(exc)`` (the native error chained), or with
    the error itself when no ``map_error`` is given. With
    ``sequential`` one batch holding an ``ordered`` entry is in flight at a time, so the
    broker sees those entries in ``add`` order. Not thread-safe: use it from its event loop.
    """

    def __init__(
        self,
        call: Callable[[list[E]], Awaitable[Sequence[R | BaseException]]],
        *,
        max_entries: int,
        map_error: Callable[[Exception], BaseException] | None = None,
        max_bytes: int | None = None,
        linger: float = 0.0,
        sequential: bool = False,
        track: Callable[[asyncio.Task[None]], None] | None = None,
    ) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        self._call = call
        self._max_entries = max_entries
        self._map_error = map_error
        self._max_bytes = max_bytes
        self._linger = linger
        self._lock = asyncio.Lock() if sequential else None
        self._track = track
        self._pending: list[tuple[E, asyncio.Future[R]]] = []
        self._pending_ordered = False
        self._bytes = 0
        self._timer: asyncio.Handle | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def add(self, entry: E, size: int = 0, *, ordered: bool = True) -> asyncio.Future[R]:
        """Queue ``entry`` (``size`` bytes towards ``max_bytes``) and return its result future."""
        loop = asyncio.get_running_loop()
        if self._pending and self._max_bytes is not None and self._bytes + size > self._max_bytes:
            self.flush()
        fut: asyncio.Future[R] = loop.create_future()
        self._pending.append((entry, fut))
        self._pending_ordered = self._pending_ordered or ordered
        self._bytes += size
        if len(self._pending) >= self._max_entries:
            self.flush()
        elif self._timer is None:
            self._timer = loop.call_later(self._linger, self.flush) if self._linger > 0 else loop.call_soon(self.flush)
        return fut

    def flush(self) -> None:
        """Send what is pending now (in the background)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._pending:
            return
        batch, self._pending, self._bytes = self._pending, [], 0
        ordered, self._pending_ordered = self._pending_ordered, False
        task = asyncio.get_running_loop().create_task(self._send(batch, ordered))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if self._track is not None:
            self._track(task)

    async def drain(self) -> None:
        """Flush and wait until every batch sent so far has completed."""
        self.flush()
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def _send(self, batch: list[tuple[E, asyncio.Future[R]]], ordered: bool) -> None:
        if self._lock is None or not ordered:
            await self._send_now(batch)
            return
        async with self._lock:
            await self._send_now(batch)

    async def _send_now(self, batch: list[tuple[E, asyncio.Future[R]]]) -> None:
        try:
            results = await self._call([entry for entry, _ in batch])
        except BaseException as exc:
            if not isinstance(exc, Exception):
                for _, fut in batch:
                    fut.cancel()
                raise
            for _, fut in batch:
                if not fut.done():
                    # Each waiter gets its own error object so tracebacks do not pile up on one.
                    error = self._map_error(exc) if self._map_error is not None else exc
                    if error is exc:  # already ours (or unmapped): a copy per waiter, chained
                        error = _copy(exc)
                    if error is not exc:
                        error.__cause__ = exc
                    fut.set_exception(error)
            return
        for (_, fut), result in zip(batch, results, strict=True):
            if fut.done():
                continue
            if isinstance(result, BaseException):
                fut.set_exception(result)
            else:
                fut.set_result(result)


def _copy(exc: Exception) -> BaseException:
    # Each waiter gets its own error object so tracebacks do not pile up on one.
    try:
        return type(exc)(*exc.args)
    except Exception:
        return exc
