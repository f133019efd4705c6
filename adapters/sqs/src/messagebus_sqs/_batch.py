"""Batcher: turns many single-entry requests into SQS/SNS batch calls of up to 10 entries."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from messagebus import TransportError

from ._errors import map_error

__all__ = ["BATCH_LIMIT", "Batcher"]

logger = logging.getLogger("messagebus.sqs")

#: SQS and SNS batch calls take at most 10 entries.
BATCH_LIMIT = 10

BatchCall = Callable[[list[dict[str, Any]]], Awaitable[dict[str, Any]]]


class Batcher:
    """Collects entries for one batch API of one queue/topic and sends them together.

    :meth:`add` returns a future resolved with the entry's ``Successful`` item, or failed with
    ``error`` (the operation's messagebus error, native error chained). Entries added in the same
    event-loop turn (plus ``linger`` seconds) share a call; a batch is sent as soon as it holds
    10 entries or ``max_bytes``. Entries that failed on the server side (``SenderFault`` false:
    throttling, internal errors) are retried up to ``retries`` times. With ``sequential`` one
    batch is in flight at a time, so the broker sees entries in ``add`` order (FIFO). Not
    thread-safe: use it from its event loop.
    """

    def __init__(
        self,
        call: BatchCall,
        *,
        error: type[TransportError],
        what: str,
        max_bytes: int | None = None,
        linger: float = 0.0,
        sequential: bool = False,
        retries: int = 3,
        track: Callable[[asyncio.Task[None]], None] | None = None,
    ) -> None:
        self._call = call
        self._error = error
        self._what = what
        self._max_bytes = max_bytes
        self._linger = linger
        self._retries = retries
        self._lock = asyncio.Lock() if sequential else None
        self._track = track
        self._pending: list[tuple[dict[str, Any], asyncio.Future[dict[str, Any]]]] = []
        self._pending_ordered = False
        self._bytes = 0
        self._timer: asyncio.Handle | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def add(self, entry: dict[str, Any], size: int = 0, *, ordered: bool = True) -> asyncio.Future[dict[str, Any]]:
        """Queue ``entry`` (without ``Id``; one is assigned) and return its result future.

        With ``sequential``, a batch holding an ``ordered`` entry waits for the batches before
        it; batches of unordered entries only (FIFO messages without a key) go in parallel.
        """
        loop = asyncio.get_running_loop()
        if self._pending and self._max_bytes is not None and self._bytes + size > self._max_bytes:
            self.flush()
        fut: asyncio.Future[dict[str, Any]] = loop.create_future()
        self._pending.append((entry, fut))
        self._pending_ordered = self._pending_ordered or ordered
        self._bytes += size
        if len(self._pending) >= BATCH_LIMIT:
            self.flush()
        elif self._timer is None:
            if self._linger > 0:
                self._timer = loop.call_later(self._linger, self.flush)
            else:
                self._timer = loop.call_soon(self.flush)
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

    async def _send(self, batch: list[tuple[dict[str, Any], asyncio.Future[dict[str, Any]]]], ordered: bool) -> None:
        if self._lock is None or not ordered:
            await self._send_now(batch)
            return
        async with self._lock:
            await self._send_now(batch)

    async def _send_now(self, batch: list[tuple[dict[str, Any], asyncio.Future[dict[str, Any]]]]) -> None:
        todo = {str(i): item for i, item in enumerate(batch)}
        attempt = 0
        while todo:
            attempt += 1
            entries = [{**entry, "Id": i} for i, (entry, _) in todo.items()]
            try:
                response = await self._call(entries)
            except BaseException as exc:
                mapped = map_error(exc, self._error, self._what) if isinstance(exc, Exception) else None
                for _, fut in todo.values():
                    if not fut.done():
                        if mapped is None:
                            fut.cancel()
                        else:
                            fut.set_exception(_chained(mapped, exc))
                if mapped is None:
                    raise
                return
            for ok in response.get("Successful", []):
                item = todo.pop(str(ok.get("Id")), None)
                if item is not None and not item[1].done():
                    item[1].set_result(ok)
            retry: dict[str, tuple[dict[str, Any], asyncio.Future[dict[str, Any]]]] = {}
            for failed in response.get("Failed", []):
                item = todo.pop(str(failed.get("Id")), None)
                if item is None:
                    continue
                if not failed.get("SenderFault", True) and attempt <= self._retries:
                    retry[str(failed.get("Id"))] = item
                elif not item[1].done():
                    code, message = failed.get("Code", "?"), failed.get("Message", "")
                    item[1].set_exception(self._error(f"{self._what}: {code}: {message}".rstrip(": ")))
            for _, fut in todo.values():  # neither successful nor failed: not confirmed
                if not fut.done():
                    fut.set_exception(self._error(f"{self._what}: the batch response did not mention this entry"))
            todo = retry
            if todo:
                logger.info(
                    "messagebus-sqs: %s: retrying %d entries after a server-side failure", self._what, len(todo)
                )
                await asyncio.sleep(0.05 * 2**attempt)


def _chained(mapped: BaseException, cause: BaseException) -> BaseException:
    # One mapped error object is shared by every entry of a failed batch; each waiter gets
    # its own copy so tracebacks do not pile up on one instance.
    try:
        copy = type(mapped)(*mapped.args)
    except Exception:
        copy = mapped
    copy.__cause__ = cause
    return copy
